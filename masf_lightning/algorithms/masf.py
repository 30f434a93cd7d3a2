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

from masf_lightning.algorithms.base import Batches, DGModule, Step
from masf_lightning.autodiff import (
    clip_per_tensor_,
    gather_across_ranks,
    inner_step,
    straight_through,
    sum_across_ranks,
    sum_scale,
    world_size,
)  # fmt: skip
from masf_lightning.autodiff.grads import term_grad_norms
from masf_lightning.choices import LAYOUTS, REDUCTIONS
from masf_lightning.losses import class_soft_labels, global_alignment_loss, triplet_semihard_loss
from masf_lightning.relations import require_choice

TASK, META, METRIC = 0, 1, 2  # the separate layout's optimizers, as configure_optimizers lists them


class MASF(DGModule):
    """Meta-learning over magnifications: featurizer F_ψ, classifier F_θ, embedder F_φ (paper Fig. 1)."""

    needs_meta_split = True
    conv_double_backward_by_convs: bool = True  # False = autograd's own double backward of conv (same values, slower)

    def __init__(self, *args: Any, inner_lr: float, metric_lr: float, beta_gen: float, beta_tri: float, temperature: float,
                 margin: float, normalize_embeddings: bool, first_order: bool, optimizers: str, inner_reduction: str,
                 inner_clip: float | None, meta_clip: float | None, meta_lr: float | None, meta_updates_embedder: bool,
                 outer_clip: float | None, class_average: str, triplet_fraction: float, grad_norm_every: int,
                 embedder: dict[str, Any], **kwargs: Any):  # fmt: skip
        """α, γ, β1, β2, τ, ζ of Eqs. 3–12 and the public code's knobs; what each means: `python -m masf_lightning.config --hparams`."""
        super().__init__(*args, embedder={**embedder, "normalize": normalize_embeddings}, **kwargs)
        require_choice("hparams.optimizers", optimizers, LAYOUTS)
        require_choice("hparams.inner_reduction", inner_reduction, REDUCTIONS)
        self.inner_lr, self.metric_lr, self.meta_lr = inner_lr, metric_lr, self.lr if meta_lr is None else meta_lr
        self.beta_gen, self.beta_tri, self.temperature, self.margin = beta_gen, beta_tri, temperature, margin
        self.first_order, self.layout, self.inner_reduction, self.class_average = first_order, optimizers, inner_reduction, class_average
        self.inner_clip, self.meta_clip, self.outer_clip, self.meta_updates_embedder = inner_clip, meta_clip, outer_clip, meta_updates_embedder
        self.triplet_fraction, self.grad_norm_every = triplet_fraction, grad_norm_every

    def psi_theta(self) -> list[torch.nn.Parameter]:
        return [*self.featurizer.parameters(), *self.classifier.parameters()]

    def meta_objective(self, batches: Batches, meta_train: Sequence[str], meta_test: Sequence[str]) -> dict[str, Any]:
        """One episode, Eqs. 3–10. `carrier`'s gradient is ∇L_meta through (ψ′, θ′) for (ψ, θ) and ∇_φ L_tri for φ."""
        names = list(meta_train) + [d for d in batches if d not in meta_train]
        x_tr, y_tr = (torch.cat([batches[d][i] for d in meta_train]) for i in (0, 1))
        # Eq. 3 on the meta-train magnifications, Eq. 9: (ψ′, θ′) = (ψ, θ) − α ∇L_cr (public code: the gradient of the
        # per-example loss vector, i.e. the batch sum; first order stops the gradient through ∇L_cr)
        step = inner_step(self.featurizer, self.classifier, x_tr, y_tr, self.inner_lr, self.first_order,
                          sum_scale(len(x_tr), len(meta_train), self.inner_reduction), self.inner_clip,
                          self.conv_double_backward_by_convs)  # fmt: skip
        sizes = [len(batches[d][0]) for d in names]  # one ψ′ forward of every source magnification, split back
        feats = dict(zip(names, functional_call(self.featurizer, step.psi, torch.cat([batches[d][0] for d in names])).split(sizes), strict=True))

        # Eqs. 4–7: class-mean soft labels through F_θ′ at temperature τ, symmetric KL over meta-train × meta-test
        def classify(z: torch.Tensor) -> torch.Tensor:
            return functional_call(self.classifier, step.theta, z)

        soft = {d: class_soft_labels(feats[d], batches[d][1], classify, self.num_classes, self.temperature, all_reduce=sum_across_ranks) for d in names}
        gen = global_alignment_loss(soft, meta_train, meta_test, class_average=self.class_average)

        # Eq. 8 on T, the first part of every source batch, embedded by F_φ(F_ψ′): the features carry β2 of the
        # gradient (Eq. 11 sees β2 L_tri), φ gets ∇_φ L_tri unscaled (Eq. 12)
        k = [max(2, round(self.triplet_fraction * n)) for n in sizes]
        f_t = torch.cat([feats[d][:m] for d, m in zip(names, k, strict=True)])
        y_t = torch.cat([batches[d][1][:m] for d, m in zip(names, k, strict=True)])
        emb = self.embedder(self.beta_tri * f_t + (1 - self.beta_tri) * f_t.detach())
        tri_graph = triplet_semihard_loss(gather_across_ranks(emb), gather_across_ranks(y_t), self.margin)

        tri = tri_graph.detach()
        meta = self.beta_gen * gen + self.beta_tri * tri  # Eq. 10
        return {"cr": step.loss.detach(), "gen": gen, "tri": tri, "meta": meta, "cr_grads": [g.detach() for g in step.grads],
                "carrier": self.beta_gen * gen + straight_through(self.beta_tri * tri, tri_graph), "tri_graph": tri_graph, "embeddings": emb.detach()}  # fmt: skip

    def meta_gradients(self, out: dict[str, Any]) -> dict[str, list[torch.Tensor]]:
        """The three gradients of one episode from one backward: task ∇L_cr, meta ∇L_meta (ψ, θ), metric ∇_φ L_tri."""
        meta, metric = self.gradients(out["carrier"], self.psi_theta(), list(self.embedder.parameters()))
        return {"task": out["cr_grads"], "meta": meta, "metric": metric}

    def optimizer_steps(self, g: dict[str, list[torch.Tensor]]) -> list[Step]:
        """Eqs. 11–12 in the chosen layout; the last step is the one trainer.global_step counts."""
        psi_theta, phi = self.psi_theta(), list(self.embedder.parameters())
        if self.layout == "joint":  # Eq. 11 as written: one Adam on ∇(L_cr + L_meta); Eq. 12 for φ in its own group
            return [Step(0, psi_theta + phi, clip_per_tensor_(torch._foreach_add(g["task"], g["meta"]), self.outer_clip) + g["metric"])]
        meta_params, meta_grads = psi_theta, g["meta"]
        if self.meta_updates_embedder:
            meta_params, meta_grads = psi_theta + phi, meta_grads + [self.beta_tri * m for m in g["metric"]]
        # the public code: Eq. 11's L_cr term at η, Eq. 12 at γ, Eq. 11's L_meta term at the meta lr, clipped per tensor
        return [Step(TASK, psi_theta, g["task"]), Step(METRIC, phi, g["metric"]), Step(META, meta_params, clip_per_tensor_(meta_grads, self.meta_clip))]

    def update(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Step]]:
        out = self.meta_objective(batch["domains"], batch["meta_train"], batch["meta_test"])
        if self.grad_norm_every and int(batch["step"]) % self.grad_norm_every == 0 and world_size() == 1:
            self.log_diagnostics(out)
        losses = {k: out[k].detach() for k in ("cr", "gen", "tri", "meta")}
        return {"loss": losses["cr"] + losses["meta"], **losses}, self.optimizer_steps(self.meta_gradients(out))

    def configure_optimizers(self) -> Any:
        psi_theta, phi = self.psi_theta(), list(self.embedder.parameters())
        if self.layout == "joint":
            return self.adam([{"params": psi_theta, "lr": self.lr}, {"params": phi, "lr": self.metric_lr}])
        meta_params = psi_theta + phi if self.meta_updates_embedder else psi_theta
        return [self.adam(psi_theta, self.lr), self.adam(meta_params, self.meta_lr), self.adam(phi, self.metric_lr)]  # TASK, META, METRIC

    def log_diagnostics(self, out: dict[str, Any]) -> dict[str, float]:
        """‖∇_ψ‖ of L_cr, β1 L_gen, β2 L_tri as the optimizers see them, and the embedding scale against ζ (TensorBoard)."""
        values = term_grad_norms(list(self.featurizer.parameters()), out["cr_grads"], self.beta_gen * out["gen"], out["tri_graph"], out["embeddings"], self.margin)
        if self._trainer is not None and self.logger is not None:  # straight to the logger at this step: self.log would repeat it
            self.logger.log_metrics(values, step=self.global_step)
        return values
