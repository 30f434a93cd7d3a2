"""A run's folder as the unit of work: claimed by one configuration (so a sweep re-run skips what is finished and
resumes what was interrupted, and never mixes two configs' results), and the step its `last.ckpt` holds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from masf_lightning.checkpoints import load_checkpoint
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.io import METRICS_FILE, RUN_CONFIG_FILE, write_json_atomic


def last_checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"



# Keys that may differ between a run and its resumption without changing its result.
NON_RESULT_KEYS = ("paths", "progress", "trainer", "gpu_pool", "logger")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def claim_run_dir(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """Make `run_dir` this config's own: refuse one that holds another config's run; return finished metrics.

    A run dir is reused only by the same configuration (that is how an interrupted run resumes and a
    finished one is skipped); anything else would mix or overwrite results.
    """
    wanted = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in NON_RESULT_KEYS}
    path = run_dir / RUN_CONFIG_FILE
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except json.JSONDecodeError:
            have = None
        a, b = _flat(have or {}), _flat(json.loads(json.dumps(wanted, default=str)))
        if "averaging" not in (have or {}) and b.get("averaging.name") == "none":  # a run from before the group: none
            b = {k: v for k, v in b.items() if not k.startswith("averaging.")}
        # a key added to the configs since (absent there, null here) changes nothing: same run
        key = next((k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)), None)
        if have is not None and key is not None:
            raise ConfigError(
                f"{run_dir} already holds a run with {key}={a.get(key)!r} (now {b.get(key)!r}); "
                "choose another hydra.run.dir or delete that folder"
            )
        metrics = run_dir / METRICS_FILE
        if metrics.is_file():
            try:
                return json.loads(metrics.read_text())
            except json.JSONDecodeError:
                pass  # written atomically, so this is a foreign file: recompute
    else:
        write_json_atomic(path, wanted)
    return None


def resume_step(last: Path) -> int | None:
    """The step `last.ckpt` holds, or None for a fresh run; mmap reads the step without loading the weights."""
    if not last.is_file():
        return None
    try:
        return int(load_checkpoint(last, mmap=True)["global_step"])
    except (DataError, KeyError, TypeError, ValueError) as exc:
        reason = str(exc) if isinstance(exc, DataError) else f"{last}: no global_step ({type(exc).__name__})"
        raise DataError(f"{reason}; delete it to restart this run from step 0") from None
