"""Where a run's time goes: setup (data, cache, model), training steps, validation checks, the rest of fit
(batch delivery, checkpoints, logging) and the final evaluation, as metrics.json's `time_s`. Wall clock of
this invocation only (a resumed run counts what it ran), synchronized with the GPU where there is one."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch


def _now(module: pl.LightningModule | None = None) -> float:
    if module is not None and module.device.type == "cuda":
        torch.cuda.synchronize(module.device)
    return time.perf_counter()


class PhaseTimer(pl.Callback):
    """Seconds inside training steps (update and optimizer steps) and inside validation checks."""

    def __init__(self) -> None:
        self.steps = self.validation = 0.0
        self._started: float | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._started = _now(pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._started is not None:
            self.steps += _now(pl_module) - self._started

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = _now(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._started is not None and not trainer.sanity_checking:
            self.validation += _now(pl_module) - self._started


def phases(setup: float, fit: float, timer: PhaseTimer, evaluation: float) -> dict[str, float]:
    """metrics.json's `time_s`: each phase in seconds; `other_fit` is fit minus steps and validation."""
    out = {"setup": setup, "steps": timer.steps, "validation": timer.validation,
           "other_fit": max(0.0, fit - timer.steps - timer.validation), "evaluation": evaluation}  # fmt: skip
    return {k: round(v, 2) for k, v in {**out, "total": setup + fit + evaluation}.items()}
