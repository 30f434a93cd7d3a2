"""Runs where teams keep them: the `logger` group's loggers (TensorBoard, CSV, MLflow, W&B) for the pipeline, what
each tracker gets from a run (`record.py`), and `python -m masf_lightning.track RUN_OR_SWEEP --to mlflow|wandb` for
runs that finished without a tracker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger

from masf_lightning.track import record
from masf_lightning.track.loggers import build_loggers, trackers

__all__ = ["build_loggers", "grouping", "send_finished", "send_identity"]


def grouping(run_dir: Path) -> tuple[str | None, str]:
    """(group, run name): in a sweep, the sweep folder's name and the run's folder below it; else (None, the run dir)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        sweep = Path(HydraConfig.get().sweep.dir)
        try:
            return sweep.name, run_dir.relative_to(sweep).as_posix()
        except ValueError:
            return sweep.name, run_dir.as_posix()
    try:
        return None, run_dir.relative_to(Path.cwd()).as_posix()
    except ValueError:
        return None, run_dir.as_posix()


def send_identity(loggers: Sequence[Logger], identity: Mapping[str, Any]) -> None:
    """At start: what the run is (tags) and its hyperparameters (params), so a tracker lists it while it trains."""
    for t in trackers(loggers):
        t.send_identity(record.identity(identity), record.params(identity))


def send_finished(loggers: Sequence[Logger], run_dir: Path, metrics: Mapping[str, Any], step: int, checkpoints: bool) -> None:
    """At the end, after metrics.json is written: its numbers, then its files as artifacts; then the run is closed."""
    files = record.artifacts(run_dir, checkpoints)
    for t in trackers(loggers):
        t.send_result(record.final_metrics(metrics), step, files, run_dir)
        t.close()
