"""MASF (Dou et al. 2019) for magnification generalization: Eqs. 3–12 of the paper, two optimizer layouts.

`joint` is Eq. 11 as written: one Adam on ∇(L_cr + L_meta) for (ψ, θ), and Eq. 12 for φ.
`separate` is how both public TF1 codes (MASF's and the paper's) train, and what produced the paper's
numbers: three Adams stepping on gradients taken at the same weights —
    task   ∇L_cr                        → (ψ, θ), lr η, unclipped
    meta   ∇(β1 L_gen + β2 L_tri)       → (ψ, θ) [+ φ, the code's name-filter slip, off by default], lr η, clipped per tensor
    metric ∇_φ L_tri                    → φ, lr γ
Adam divides each gradient by its own running scale, so each term gets its own η-sized step whatever
the magnitudes; summed into one Adam, whichever term has the larger gradient steers. (The code's metric op
minimizes 0.005·L_tri; a constant factor changes an Adam step only through ε, so φ gets ∇_φ L_tri, Eq. 12.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.func import functional_call

from masf_lightning.algorithms.base import DGModule
from masf_lightning.autodiff import (
    clip_per_tensor_,
    gather_across_ranks,
    inner_step,
    straight_through,
    sum_across_ranks,
    sum_scale,
    world_size,
)
from masf_lightning.errors import ConfigError
from masf_lightning.losses import (
    class_soft_labels,
    global_alignment_loss,
    triplet_semihard_loss,
)

Batches = dict[str, tuple[torch.Tensor, torch.Tensor]]
Grads = list[torch.Tensor]
LAYOUTS = ("separate", "joint")
REDUCTIONS = ("mean", "sum")


class MASF(DGModule):
    """Meta-learning over magnifications: featurizer F_ψ, classifier F_θ, embedder F_φ (paper Fig. 1)."""

    needs_meta_split = True
    # False = autograd's own double backward of conv (same values, slower; experiments/bench.py --ablations).
    conv_double_backward_by_convs: bool = True

    def __init__(
        self,
        *args: Any,
        inner_lr: float,  # α, Eq. 9
        metric_lr: float,  # γ, Eq. 12 (η is `lr`, Eq. 11)
        beta_gen: float,  # β1, Eq. 10
        beta_tri: float,  # β2, Eq. 10
        temperature: float,  # τ, Eq. 5
        margin: float,  # ζ, Eq. 8
        normalize_embeddings: bool,  # F_φ on the unit sphere
        first_order: bool,  # True = stop-gradient through ∇L_cr, as both public TF codes
        optimizers: str,  # separate (public code) | joint (Eq. 11 as written)
        inner_reduction: str,  # Eq. 9's gradient of the batch mean, or of the sum (public code)
        inner_clip: float | None,  # per-tensor norm clip of the inner gradient (MASF code: 2.0)
        meta_clip: float | None,  # separate: per-tensor norm clip of the meta gradient (MASF code: 2.0)
        meta_lr: float | None,  # separate: the meta Adam's lr; None = η (MASF code)
        meta_updates_embedder: bool,  # separate: the code's meta op also steps φ (a name-filter slip)
        outer_clip: float | None,  # joint: per-tensor norm clip of the applied gradient
        class_average: str,  # Eq. 6 over classes present in both domains, or "all" (MASF code)
        triplet_fraction: float,  # share of each domain's batch in T (MASF code: first third)
        grad_norm_every: int,  # log ‖∇ψ‖ of each loss every N steps (costs two extra backwards then)
        embedder: dict[str, Any],  # F_φ's layer sizes (conf/method/masf.yaml)
        **kwargs: Any,
    ):
        super().__init__(*args, embedder={**embedder, "normalize": normalize_embeddings}, **kwargs)
        if optimizers not in LAYOUTS:
            raise ConfigError(f"hparams.optimizers={optimizers!r} is not one of {', '.join(LAYOUTS)}")
        if inner_reduction not in REDUCTIONS:
            raise ConfigError(f"hparams.inner_reduction={inner_reduction!r} is not one of {', '.join(REDUCTIONS)}")
        self.automatic_optimization = False
        self.inner_lr, self.metric_lr = inner_lr, metric_lr
        self.beta_gen, self.beta_tri = beta_gen, beta_tri
        self.temperature, self.margin = temperature, margin
        self.first_order, self.layout, self.inner_reduction = first_order, optimizers, inner_reduction
        self.inner_clip, self.meta_clip, self.outer_clip = inner_clip, meta_clip, outer_clip
        self.meta_updates_embedder = meta_updates_embedder
        self.meta_lr = self.lr if meta_lr is None else meta_lr
        self.class_average, self.triplet_fraction = class_average, triplet_fraction
        self.grad_norm_every = grad_norm_every

    def psi_theta(self) -> list[torch.nn.Parameter]:
        return [*self.featurizer.parameters(), *self.classifier.parameters()]

    def meta_objective(self, batches: Batches, meta_train: Sequence[str], meta_test: Sequence[str]) -> dict[str, Any]:
        """One episode, Eqs. 3–10. `carrier`'s gradient is ∇L_meta through (ψ′, θ′) for (ψ, θ) and ∇_φ L_tri for φ;
        `cr_grads` is ∇_(ψ,θ) L_cr, already in hand from the inner step."""
        names = list(meta_train) + [d for d in batches if d not in meta_train]
        x_tr = torch.cat([batches[d][0] for d in meta_train])
        y_tr = torch.cat([batches[d][1] for d in meta_train])

        # Eq. 3 on the meta-train magnifications and Eq. 9: (ψ′, θ′) = (ψ, θ) − α ∇L_cr. The public code differentiates
        # the per-example loss vector, i.e. the sum over each domain's batch (averaged over domains); first order stops
        # the gradient through ∇L_cr.
        step = inner_step(self.featurizer, self.classifier, x_tr, y_tr, self.inner_lr, self.first_order,
                          sum_scale(len(x_tr), len(meta_train), self.inner_reduction), self.inner_clip,
                          self.conv_double_backward_by_convs)  # fmt: skip
        cr, grads, psi_f, theta_f = step.loss, step.grads, step.psi, step.theta

        # One ψ′ forward of every source magnification, split back per domain.
        sizes = [len(batches[d][0]) for d in names]
        feats = functional_call(self.featurizer, psi_f, torch.cat([batches[d][0] for d in names])).split(sizes)
        feats = dict(zip(names, feats, strict=True))

        # Eqs. 4–7: class-mean soft labels through F_θ′ at temperature τ, symmetric KL over meta-train × meta-test.
        def classify(z: torch.Tensor) -> torch.Tensor:
            return functional_call(self.classifier, theta_f, z)

        soft = {d: class_soft_labels(feats[d], batches[d][1], classify, self.num_classes, self.temperature, all_reduce=sum_across_ranks) for d in names}
        gen = global_alignment_loss(soft, meta_train, meta_test, class_average=self.class_average)

        # Eq. 8 on T, the first part of every source batch, embedded by F_φ(F_ψ′). The features carry β2 of the
        # gradient (Eq. 11 sees β2 L_tri); φ gets ∇_φ L_tri unscaled (Eq. 12).
        k = [max(2, round(self.triplet_fraction * n)) for n in sizes]
        f_t = torch.cat([feats[d][:m] for d, m in zip(names, k, strict=True)])
        y_t = torch.cat([batches[d][1][:m] for d, m in zip(names, k, strict=True)])
        f_scaled = self.beta_tri * f_t + (1 - self.beta_tri) * f_t.detach()
        emb = self.embedder(f_scaled)
        tri_carrier = triplet_semihard_loss(gather_across_ranks(emb), gather_across_ranks(y_t), self.margin)
        tri = tri_carrier.detach()

        meta = self.beta_gen * gen + self.beta_tri * tri  # Eq. 10
        carrier = self.beta_gen * gen + straight_through(self.beta_tri * tri, tri_carrier)
        return {"cr": cr.detach(), "gen": gen.detach(), "tri": tri, "meta": meta.detach(), "carrier": carrier,
                "cr_grads": [g.detach() for g in grads], "gen_graph": gen, "tri_graph": tri_carrier, "embeddings": emb.detach()}  # fmt: skip

    def meta_gradients(self, out: dict[str, Any]) -> dict[str, Grads]:
        """The three gradients of one episode from one backward: task ∇L_cr, meta ∇L_meta (ψ, θ), metric ∇_φ L_tri."""
        self.zero_grad(set_to_none=True)
        self.backward_(out["carrier"])
        meta = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.psi_theta()]
        metric = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.embedder.parameters()]
        return {"task": out["cr_grads"], "meta": meta, "metric": metric}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.meta_objective(batch["domains"], batch["meta_train"], batch["meta_test"])
        self.check_finite({k: out[k] for k in ("cr", "gen", "tri")}, batch)
        if self.grad_norm_every and int(batch["step"]) % self.grad_norm_every == 0 and world_size() == 1:
            self.log_grad_norms(out)
        self.apply_gradients(self.meta_gradients(out), self.optimizers())
        self.log_dict({f"train/{k}": out[k] for k in ("cr", "gen", "tri", "meta")}, prog_bar=False)
        self.log("loss", out["cr"] + out["meta"], prog_bar=True, logger=False)

    def apply_gradients(self, g: dict[str, Grads], optimizers: Any) -> None:
        """Eqs. 11–12 in the chosen layout. Raw torch steps (`.optimizer`) do not count in trainer.global_step;
        the one Lightning step per call does, so global_step counts meta-iterations."""
        psi_theta, phi = self.psi_theta(), list(self.embedder.parameters())
        if self.layout == "joint":  # Eq. 11 as written: one Adam on ∇(L_cr + L_meta); Eq. 12 for φ in its own group
            joint = clip_per_tensor_(torch._foreach_add(g["task"], g["meta"]), self.outer_clip)
            self.step_with(optimizers, psi_theta + phi, joint + g["metric"])
            return
        task, meta, metric = optimizers  # the public code: three Adams, each on its own gradient
        self.step_with(getattr(task, "optimizer", task), psi_theta, g["task"])  # Eq. 11's L_cr term, lr η
        self.step_with(getattr(metric, "optimizer", metric), phi, g["metric"])  # Eq. 12, lr γ
        meta_params, meta_grads = psi_theta, g["meta"]  # Eq. 11's L_meta term, lr η, clipped per tensor
        if self.meta_updates_embedder:
            meta_params, meta_grads = psi_theta + phi, meta_grads + [self.beta_tri * m for m in g["metric"]]
        self.step_with(meta, meta_params, clip_per_tensor_(meta_grads, self.meta_clip))

    def configure_optimizers(self) -> Any:
        # separate: only `meta` steps through Lightning (apply_gradients), so global_step counts meta-iterations.
        psi_theta, phi = self.psi_theta(), list(self.embedder.parameters())
        if self.layout == "joint":
            return self.adam([{"params": psi_theta, "lr": self.lr}, {"params": phi, "lr": self.metric_lr}])
        meta_params = psi_theta + phi if self.meta_updates_embedder else psi_theta
        return [self.adam(psi_theta, self.lr), self.adam(meta_params, self.meta_lr), self.adam(phi, self.metric_lr)]  # task, meta, metric

    # -- diagnostics ------------------------------------------------------------------------------
    @torch.no_grad()
    def _norm(self, grads: Sequence[torch.Tensor | None]) -> torch.Tensor:
        return torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None))

    def log_grad_norms(self, out: dict[str, Any]) -> dict[str, float]:
        """‖∇_ψ‖ of each term as the optimizers see it: L_cr, β1 L_gen, β2 L_tri (the balance Adam steers by)."""
        psi = list(self.featurizer.parameters())
        gen = torch.autograd.grad(self.beta_gen * out["gen_graph"], psi, retain_graph=True, allow_unused=True)
        # tri_graph reaches ψ through β2-scaled features already (meta_objective), φ unscaled
        tri = torch.autograd.grad(out["tri_graph"], psi, retain_graph=True, allow_unused=True)
        cr = self._norm(out["cr_grads"][: len(psi)])
        norms = {"cr": cr, "gen": self._norm(gen), "tri": self._norm(tri)}
        e = out["embeddings"].float()  # the scale Eq. 8 works at: mean squared distance in T, against the margin ζ
        values = {f"grad_norm/psi_{k}": float(v) for k, v in norms.items()}
        values["diag/embedding_sq_dist_over_margin"] = float(torch.cdist(e, e).pow(2).mean() / self.margin)
        # straight to the logger at this step: self.log would repeat the value at every later flush
        if self._trainer is not None and self.logger is not None:
            self.logger.log_metrics(values, step=self.global_step)
        return values
