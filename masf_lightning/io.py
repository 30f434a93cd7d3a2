"""Atomic file writes: a crash never leaves a half-written file that a later run reads as good; and the names
of the files a run folder holds, which training writes and every reader of finished runs opens."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"  # a finished (or failed) run's numbers and identity
RUN_CONFIG_FILE = "run_config.json"  # the resolved config the run trained with
SPLIT_MANIFEST = "split_manifest.csv"  # which image sat in which split


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def check_writable_dir(path: str | os.PathLike[str], key: str) -> None:
    """Fail early, with the config key named, when `path` cannot become a writable folder."""
    from masf_lightning.errors import ConfigError

    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} is not writable ({probe} denies writing); choose another {key}")
