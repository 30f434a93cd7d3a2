"""What every method shares: the three sub-networks, one training step (update → NaN guard → optimizer steps →
logs), validation per magnification. A method writes `update(batch)`: its equations, then which optimizer
steps with which gradients (DomainBed's `update`, with Lightning doing devices, DDP and precision)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from masf_lightning.errors import TrainingError
from masf_lightning.models import Backbone, make_classifier, make_embedder
from masf_lightning.seeding import step_seed

Batches = dict[str, tuple[torch.Tensor, torch.Tensor]]  # magnification → (images, labels)


@dataclass
class Step:
    """Optimizer `optimizer` (an index into configure_optimizers' list) steps `params` on `grads`."""

    optimizer: int
    params: Sequence[torch.nn.Parameter]
    grads: Sequence[torch.Tensor]


class DGModule(pl.LightningModule):
    """F_ψ (featurizer) → F_θ (classifier), optionally F_φ (embedder), validated per magnification.

    Validation loaders are the datamodule's `val_sets`, (magnification, split) pairs; we log
    `val/<magnification>/acc`, their source mean `val/source_acc` (the honest selection monitor),
    `val/target_acc` (what the paper's code effectively selected on) and `oracle/target_test_acc`
    (what the paper's code reported).
    """

    needs_meta_split: bool = False  # True: each episode splits the sources into meta-train / meta-test (≥ 2 needed)

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        lr: float,  # hyperparameters: no defaults here, the registry (masf_lightning/config/hparams.py) has them
        weight_decay: float,
        fused_adam: bool,
        embedder: dict[str, Any] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.automatic_optimization = False  # every method steps its optimizers itself, in `update`
        self.seed = seed
        self.featurizer = backbone.featurizer
        self.classifier = make_classifier(backbone.feature_dim, num_classes)
        self.embedder = make_embedder(backbone.feature_dim, **embedder) if embedder is not None else None
        self.num_classes = num_classes
        self.lr = lr
        self.weight_decay = weight_decay
        self.fused_adam = fused_adam
        self._val_counts: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.featurizer(x))

    # -- what a method writes -------------------------------------------------------------------
    def update(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Step]]:
        """One training step's losses (`loss`: the objective shown in the progress bar; the others are logged
        as train/<name>) and the optimizer steps they call for, in order."""
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        return self.adam(self.parameters())

    # -- the plumbing ---------------------------------------------------------------------------
    def on_train_batch_start(self, batch: dict[str, Any], batch_idx: int) -> None:
        # Dropout (and any torch randomness) of step k depends only on (seed, k): a run resumed from
        # last.ckpt repeats exactly what the uninterrupted run would have drawn.
        torch.manual_seed(step_seed(self.seed, int(batch["step"]), "module"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        losses, steps = self.update(batch)
        self.check_finite({k: v for k, v in losses.items() if k != "loss"}, batch)
        self.apply(steps)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"}, prog_bar=False)
        self.log("loss", losses["loss"].detach(), prog_bar=True, logger=False)

    def adam(self, params: Any, lr: float | None = None) -> torch.optim.Adam:
        """Adam as every method here builds it; fused = one kernel over all tensors (~8× faster on 57 M
        AlexNet weights on CPU than foreach, experiments/bench.py), the same arithmetic."""
        return torch.optim.Adam(params, lr=self.lr if lr is None else lr, weight_decay=self.weight_decay, fused=self.fused_adam or None)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """Lightning's GradScaler under `trainer.precision=16-mixed`; None in fp32 and bf16 (which need none)."""
        plugin = getattr(self._trainer, "precision_plugin", None) if self._trainer is not None else None
        return getattr(plugin, "scaler", None)

    def gradients(self, loss: torch.Tensor, *groups: Sequence[torch.nn.Parameter]) -> list[list[torch.Tensor]]:
        """One backward of `loss` (Lightning's manual_backward inside a Trainer: DDP all-reduce, precision);
        each group's true gradients (unscaled under 16-mixed), zeros where `loss` does not reach a parameter."""
        self.zero_grad(set_to_none=True)
        scaler = self.grad_scaler()
        if self._trainer is not None:
            self.manual_backward(loss)  # under 16-mixed: of the loss times the scaler's factor
        else:
            (loss if scaler is None else scaler.scale(loss)).backward()
        grads = [[p.grad if p.grad is not None else torch.zeros_like(p) for p in group] for group in groups]
        if scaler is not None:
            torch._foreach_mul_([g for group in grads for g in group], 1.0 / scaler.get_scale())
        return grads

    def apply(self, steps: Sequence[Step]) -> None:
        """Each optimizer steps on its gradients, in order. Only the last goes through Lightning's wrapper, so
        trainer.global_step counts one per training step whatever the number of optimizers. Under 16-mixed an
        overflow anywhere skips every step, and the last one tells the GradScaler (which then lowers its scale)."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        scaler = self.grad_scaler()
        overflow = scaler is not None and not bool(torch.isfinite(torch.stack(torch._foreach_norm([g for s in steps for g in s.grads]))).all())
        for i, step in enumerate(steps):
            last, grads = i == len(steps) - 1, list(step.grads)
            if last and scaler is not None:  # Lightning's 16-mixed step unscales these, skips on inf, updates the scale
                grads = list(torch._foreach_mul(grads, scaler.get_scale()))
                if overflow:
                    grads[0] = torch.full_like(grads[0], float("inf"))
            elif overflow:
                continue
            for p, g in zip(step.params, grads, strict=True):
                p.grad = g
            opt = optimizers[step.optimizer]
            (opt if last else getattr(opt, "optimizer", opt)).step()

    def check_finite(self, losses: dict[str, torch.Tensor], batch: dict[str, Any]) -> None:
        """Stop at the first NaN/Inf with the step, the loss term and the domains named (one sync per step)."""
        values = torch.stack([v.detach().float() for v in losses.values()])
        if not bool(torch.isfinite(values).all()):
            bad = [k for k, v in zip(losses, values.tolist(), strict=False) if not torch.isfinite(torch.tensor(v))]
            raise TrainingError(
                f"non-finite loss at step {batch['step']}: {', '.join(f'{k}={losses[k].item()}' for k in bad)} "
                f"(meta-train {'+'.join(batch['meta_train'])}, meta-test {'+'.join(batch['meta_test'])}); "
                "last good checkpoint kept; lower the learning rates or enable clipping"
            )

    # -- validation: accuracy per (magnification, split) ------------------------------------------
    def on_validation_epoch_start(self) -> None:
        n = len(self.trainer.datamodule.val_sets)
        self._val_counts = torch.zeros(n, 3, device=self.device, dtype=torch.float64)  # correct, images, summed loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y, _ = batch
        logits = self(x)
        self._val_counts[dataloader_idx, 0] += (logits.argmax(1) == y).sum()
        self._val_counts[dataloader_idx, 1] += len(y)
        self._val_counts[dataloader_idx, 2] += torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum")

    def on_validation_epoch_end(self) -> None:
        dm = self.trainer.datamodule
        counts = self.trainer.strategy.reduce(self._val_counts, reduce_op="sum")
        acc = dict(zip(dm.val_sets, (counts[:, 0] / counts[:, 1].clamp_min(1)).float(), strict=True))
        metrics = {f"val/{d}/acc": acc[(d, "val")] for d in dm.sources}
        metrics["val/source_acc"] = torch.stack([acc[(d, "val")] for d in dm.sources]).mean()
        # SWAD's window monitor (masf_lightning/averaging): the mean over sources of their mean cross-entropy
        loss = dict(zip(dm.val_sets, (counts[:, 2] / counts[:, 1].clamp_min(1)).float(), strict=True))
        metrics["val/source_loss"] = torch.stack([loss[(d, "val")] for d in dm.sources]).mean()
        metrics["val/target_acc"] = acc[(dm.target, "val")]
        # What the paper's code printed (best test accuracy so far); logged apart, never a selection monitor.
        metrics["oracle/target_test_acc"] = acc[(dm.target, "test")]
        self.log_dict(metrics, prog_bar=False, sync_dist=False)
        self.log("val_src", metrics["val/source_acc"], prog_bar=True, logger=False)
