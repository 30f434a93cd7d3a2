"""Weight averaging along the training trajectory, for every method: SWAD's window and an EMA, as callbacks.

Both average every trained parameter (ψ, θ, and φ where the method has it; `requires_grad` ones, so a
frozen encoder is never copied) with one fused in-place op per step. Training, validation and checkpoint
selection see the online weights, exactly as with averaging=none (so a run's online result is the
averaging=none run's); the pipeline evaluates `averaged()` after training. The state (sums, losses, the
EMA) is callback state in last.ckpt, so a resumed run ends with the same averaged weights.

Lightning's WeightAveraging/EMAWeightAveraging do not fit here: they swap the average into every
validation (SWAD needs the online model's loss; selection would no longer be the online model's), put it in
the checkpoints' `state_dict` (resume and the selected checkpoint would change meaning), and copy the
whole module, a frozen foundation encoder included.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch

from masf_lightning.averaging.window import SwadWindow

LOSS_KEY = "val/source_loss"  # the online model's mean cross-entropy on the sources' validation images (DGModule)


def trained(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class Averager(pl.Callback):
    """What the pipeline asks of an averaging callback: its config, and the averaged weights with their window."""

    name = "?"

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def averaged(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """The averaged trained parameters (in `trained(module)` order) and the window: first/last step, steps, note."""
        raise NotImplementedError

    @staticmethod
    def _to(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        return [t.to(device) for t in tensors]


class SWAD(Averager):
    """SWAD (Cha et al., 2021): the uniform average of the weights at every step of the loss-valley window."""

    name = "swad"

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float, bn_batches: int, name: str = "swad") -> None:
        self.window = SwadWindow(n_converge, n_tolerance, tolerance_ratio)
        self.bn_batches = bn_batches
        self.check_steps: list[int] = []  # the step of each check: segment i is check_steps[i-1]+1 … check_steps[i]
        self.segment: list[torch.Tensor] | None = None  # sum of the weights over the current segment's steps
        self.segment_steps = 0
        self.pending: dict[int, list[torch.Tensor]] = {}  # segment → its sum, while its fate is open
        self.kept: list[torch.Tensor] | None = None  # sum over the decided window segments
        self.kept_segments: list[int] = []
        self.done = False  # the window has closed: nothing after it is averaged

    def config(self) -> dict[str, Any]:
        w = self.window
        return {"name": self.name, "n_converge": w.n_converge, "n_tolerance": w.n_tolerance, "tolerance_ratio": w.tolerance_ratio, "bn_batches": self.bn_batches}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = trained(pl_module)
        if self.segment is None:
            self.segment = [torch.zeros_like(p) for p in params]
        dev = params[0].device
        self.segment = self._to(self.segment, dev)
        self.pending = {i: self._to(v, dev) for i, v in self.pending.items()}
        self.kept = None if self.kept is None else self._to(self.kept, dev)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.done or self.segment is None:
            return
        with torch.no_grad():
            torch._foreach_add_(self.segment, [p.detach() for p in trained(pl_module)])
        self.segment_steps += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.segment is None or self.done:
            return
        loss = trainer.callback_metrics.get(LOSS_KEY)
        if loss is None:
            return
        index = len(self.check_steps)
        self.check_steps.append(int(trainer.global_step))
        self.pending[index] = self.segment
        self.segment, self.segment_steps = [torch.zeros_like(t) for t in self.segment], 0
        self.window.record(float(loss))
        for s in self.window.decided():
            if s in self.pending and s not in self.kept_segments:
                seg = self.pending.pop(s)
                self.kept = seg if self.kept is None else torch._foreach_add(self.kept, seg)
                self.kept_segments.append(s)
        first_open = self.window.undecided_from()
        self.pending = {s: v for s, v in self.pending.items() if s >= first_open}
        self.done = self.window.closed

    def span(self, segments: list[int]) -> tuple[int, int, int]:
        first = self.check_steps[segments[0] - 1] + 1 if segments[0] > 0 else 1
        last = self.check_steps[segments[-1]]
        return first, last, last - first + 1

    def averaged(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        segments, opened = self.window.final()
        if not segments:
            raise RuntimeError("SWAD: no validation check happened, nothing to average (steps < val_every?)")
        parts = [self.pending[s] for s in segments if s not in self.kept_segments]
        total = self.kept if self.kept is not None else None
        for p in parts:
            total = p if total is None else torch._foreach_add(total, p)
        assert total is not None
        first, last, n = self.span(segments)
        note = None if opened else (
            f"SWAD's window never opened (the loss kept improving within every {self.window.n_converge} checks): "
            f"the average of the last {len(segments)} checks' steps is used"
        )
        window = {"first_step": first, "last_step": last, "steps": n, "opened": opened, "closed": self.window.closed,
                  "threshold": self.window.threshold, "note": note}  # fmt: skip
        return torch._foreach_div(total, float(n)), window

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.window.losses), "check_steps": list(self.check_steps), "segment": self.segment,
            "segment_steps": self.segment_steps, "pending": {str(k): v for k, v in self.pending.items()},
            "kept": self.kept, "kept_segments": list(self.kept_segments),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.losses = list(state["losses"])
        self.check_steps = list(state["check_steps"])
        self.segment, self.segment_steps = state["segment"], int(state["segment_steps"])
        self.pending = {int(k): v for k, v in state["pending"].items()}
        self.kept, self.kept_segments = state["kept"], list(state["kept_segments"])
        self.done = self.window.closed


class EMA(Averager):
    """An exponential moving average of the weights, decay min(`decay`, (1 + n) / (10 + n)) at update n (timm's
    ModelEmaV3 warm-up: without it, at 800 steps a 0.999 average would still hold 45 % of the step-1 weights)."""

    name = "ema"

    def __init__(self, decay: float, bn_batches: int, name: str = "ema") -> None:
        self.decay, self.bn_batches = decay, bn_batches
        self.ema: list[torch.Tensor] | None = None
        self.updates = 0
        self.last_step = 0

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "decay": self.decay, "bn_batches": self.bn_batches}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.ema is not None:
            self.ema = self._to(self.ema, trained(pl_module)[0].device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            params = [p.detach() for p in trained(pl_module)]
            if self.ema is None:
                self.ema = [p.clone() for p in params]
            else:
                decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
                torch._foreach_lerp_(self.ema, params, 1.0 - decay)
        self.updates += 1
        self.last_step = int(trainer.global_step)

    def averaged(self) -> tuple[list[torch.Tensor], dict[str, Any]]:
        if self.ema is None:
            raise RuntimeError("EMA: no training step happened, nothing to average")
        window = {"first_step": self.last_step - self.updates + 1, "last_step": self.last_step, "steps": self.updates, "opened": True, "note": None}
        return [t.clone() for t in self.ema], window

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "updates": self.updates, "last_step": self.last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ema, self.updates, self.last_step = state["ema"], int(state["updates"]), int(state["last_step"])
