"""MASF (Dou et al. 2019) for magnification generalization, as Eqs. 3–12 of the paper."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.func import functional_call

from masf_lightning.algorithms.base import DGModule
from masf_lightning.losses import class_soft_labels, cross_entropy, global_alignment_loss, triplet_semihard_loss

Batches = dict[str, tuple[torch.Tensor, torch.Tensor]]


def straight_through(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """A tensor with the value of `value` and the gradient of `carrier`."""
    return value.detach() + (carrier - carrier.detach())


def clip_per_tensor(grads: Sequence[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """Scale each tensor to norm ≤ max_norm (MASF's code clips per tensor at 2.0); differentiable."""
    if max_norm is None:
        return list(grads)
    return [g * (max_norm / (g.norm() + 1e-12)).clamp(max=1.0) for g in grads]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over DDP processes (identity in one process)."""
    if _world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def gather_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable concatenation of every process's rows, in rank order (identity in one process)."""
    if _world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t))


class MASF(DGModule):
    """Meta-learning over magnifications: featurizer F_ψ, classifier F_θ, embedder F_φ (paper Fig. 1)."""

    def __init__(
        self,
        *args: Any,
        inner_lr: float = 1e-5,  # α, Eq. 9
        metric_lr: float = 1e-5,  # γ, Eq. 12 (η is `lr`, Eq. 11)
        beta_gen: float = 1.0,  # β1, Eq. 10
        beta_tri: float = 0.005,  # β2, Eq. 10
        temperature: float = 2.0,  # τ, Eq. 5
        margin: float = 10.0,  # ζ, Eq. 8 (MASF code's value)
        first_order: bool = False,  # True = stop-gradient through ∇L_cr, as both public TF codes
        inner_clip: float | None = None,  # per-tensor norm clip of the inner gradient (MASF code: 2.0)
        outer_clip: float | None = None,  # per-tensor norm clip of the final gradient, after all-reduce
        class_average: str = "present",  # Eq. 6 over classes present in both domains, or "all" (MASF code)
        triplet_fraction: float = 1 / 3,  # share of each domain's batch in T (MASF code: first third)
        embedder: dict[str, int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, embedder=embedder or {}, **kwargs)
        self.automatic_optimization = False
        self.inner_lr, self.metric_lr = inner_lr, metric_lr
        self.beta_gen, self.beta_tri = beta_gen, beta_tri
        self.temperature, self.margin = temperature, margin
        self.first_order = first_order
        self.inner_clip, self.outer_clip = inner_clip, outer_clip
        self.class_average = class_average
        self.triplet_fraction = triplet_fraction

    def meta_objective(self, batches: Batches, meta_train: Sequence[str], meta_test: Sequence[str]) -> dict[str, torch.Tensor]:
        """One MASF episode. `total` has value L_cr + L_meta, its gradient is Eq. 11 for (ψ, θ) and Eq. 12 for φ."""
        psi = dict(self.featurizer.named_parameters())
        theta = dict(self.classifier.named_parameters())
        names = list(meta_train) + [d for d in batches if d not in meta_train]
        x_tr = torch.cat([batches[d][0] for d in meta_train])
        y_tr = torch.cat([batches[d][1] for d in meta_train])

        # Eq. 3: L_cr on the meta-train magnifications with (ψ, θ), one forward for all of them.
        cr = cross_entropy(functional_call(self.classifier, theta, functional_call(self.featurizer, psi, x_tr)), y_tr)
        params = [*psi.values(), *theta.values()]
        grads = torch.autograd.grad(cr, params, create_graph=not self.first_order)
        if _world_size() > 1:  # under DDP every rank steps with the global batch's ∇L_cr
            flat = sum_across_ranks(torch.cat([g.reshape(-1) for g in grads])) / _world_size()
            grads = [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads)]

        # Eq. 9: (ψ', θ') = (ψ, θ) − α ∇L_cr; first-order drops the inner gradient's own dependence on (ψ, θ).
        inner = clip_per_tensor(grads if not self.first_order else [g.detach() for g in grads], self.inner_clip)
        fast = [p - self.inner_lr * g for p, g in zip(params, inner)]
        psi_f = dict(zip(psi, fast[: len(psi)]))
        theta_f = dict(zip(theta, fast[len(psi) :]))

        # One forward of every source magnification with ψ'; split back per domain.
        sizes = [len(batches[d][0]) for d in names]
        feats = functional_call(self.featurizer, psi_f, torch.cat([batches[d][0] for d in names])).split(sizes)
        feats = dict(zip(names, feats))

        # Eqs. 4–7: class-mean soft labels through F_θ' at temperature τ, symmetric KL over tr × te pairs.
        soft = {
            d: class_soft_labels(
                feats[d],
                batches[d][1],
                lambda z: functional_call(self.classifier, theta_f, z),
                self.num_classes,
                self.temperature,
                all_reduce=sum_across_ranks,
            )
            for d in names
        }
        gen = global_alignment_loss(soft, meta_train, meta_test, class_average=self.class_average)

        # Eq. 8 on T: the first part of every source batch, embedded with (ψ', φ). The features carry
        # β2 of the gradient (Eq. 11 sees β2 L_tri) while φ gets ∇_φ L_tri unscaled (Eq. 12).
        k = [max(2, round(self.triplet_fraction * n)) for n in sizes]
        f_t = torch.cat([feats[d][:m] for d, m in zip(names, k)])
        y_t = torch.cat([batches[d][1][:m] for d, m in zip(names, k)])
        f_scaled = self.beta_tri * f_t + (1 - self.beta_tri) * f_t.detach()
        tri_carrier = triplet_semihard_loss(gather_across_ranks(self.embedder(f_scaled)), gather_across_ranks(y_t), self.margin)
        tri = tri_carrier.detach()

        meta = self.beta_gen * gen + self.beta_tri * tri  # Eq. 10
        # ∇_(ψ,θ) L_cr is the inner gradient itself: reuse it instead of back-propagating L_cr again.
        cr_carrier = sum((p * g.detach()).sum() for p, g in zip(params, grads))
        total = straight_through(cr, cr_carrier) + self.beta_gen * gen + straight_through(self.beta_tri * tri, tri_carrier)
        return {"cr": cr.detach(), "gen": gen, "tri": tri, "meta": meta, "total": total}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.meta_objective(batch["domains"], batch["meta_train"], batch["meta_test"])
        self.check_finite({k: out[k] for k in ("cr", "gen", "tri")}, batch)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out["total"])  # one backward: DDP all-reduces once
        if self.outer_clip is not None:
            for p in self.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], self.outer_clip)
        opt.step()  # Eq. 11 on (ψ, θ) at lr η, Eq. 12 on φ at lr γ: one Adam, two parameter groups
        self.log_dict({f"train/{k}": out[k].detach() for k in ("cr", "gen", "tri", "total")}, prog_bar=False)
        self.log("loss", out["total"].detach(), prog_bar=True, logger=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Adam is per-parameter, so one Adam with two groups is two Adams — and one optimizer step per
        # meta-iteration keeps trainer.global_step equal to the paper's iteration count.
        return torch.optim.Adam(
            [
                {"params": [*self.featurizer.parameters(), *self.classifier.parameters()], "lr": self.lr},
                {"params": list(self.embedder.parameters()), "lr": self.metric_lr},
            ],
            weight_decay=self.weight_decay,
        )
