"""The end of a sweep: say which runs failed, once, and exit non-zero.

A run of a sweep that diverges (a random-search draw can) writes metrics.json with `failed` and lets the
other jobs go on (train.py). Jobs may run in other processes (joblib, SLURM), so the failures are read back
from the sweep folder when the last job has ended. Registered under `hydra.callbacks` in conf/train.yaml.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from masf_lightning.io import METRICS_FILE

FAILED_EXIT_CODE = 3  # as TrainingError's


def failed_runs(sweep_dir: Path) -> list[tuple[Path, str]]:
    """(run folder, reason) of every run below `sweep_dir` whose metrics.json records a failure."""
    out = []
    for path in sorted(sweep_dir.rglob(METRICS_FILE)):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict) and m.get("failed"):
            out.append((path.parent, str(m["failed"])))
    return out


class ReportFailures(Callback):
    """After a multirun: one `error:` line per failed run and a count, exit code 3; nothing when all finished."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed = failed_runs(Path(config.hydra.sweep.dir))
        if not failed:
            return
        for folder, reason in failed:
            print(f"error: {folder}: {reason}", file=sys.stderr)
        share = "run" if len(failed) == 1 else "runs"
        print(f"error: {len(failed)} {share} of this sweep failed (listed above; collect.py shows them apart, never averaged)", file=sys.stderr)
        sys.exit(FAILED_EXIT_CODE)
