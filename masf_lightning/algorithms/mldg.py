"""MLDG (Li et al., "Learning to Generalize: Meta-Learning for Domain Generalization", AAAI 2018): MASF's ancestor.

Each step splits the source magnifications as MASF does (meta-train / meta-test) and minimizes
    L_tr(θ) + β · L_te(θ − α ∇L_tr(θ))            (Li et al., Eq. 3 / Alg. 1)
with L_tr, L_te the cross-entropy on the meta-train / meta-test batches: where MASF asks the fast weights
for aligned soft labels and a metric space (L_gen, L_tri), MLDG asks them for the meta-test labels.
The inner step is MASF's (`autodiff.inner_step`); `first_order=True` is DomainBed's variant (∇L_te taken
at the fast weights, no gradient through ∇L_tr). One Adam on (ψ, θ) at η, as in DomainBed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from masf_lightning.algorithms.base import Batches, DGModule, Step
from masf_lightning.autodiff import inner_step
from masf_lightning.losses import cross_entropy


class MLDG(DGModule):
    """Meta-train → fast weights → meta-test cross-entropy, on F_θ(F_ψ(x)); no embedder."""

    needs_meta_split = True
    conv_double_backward_by_convs: bool = True  # as MASF: cheaper exact double backward of convs

    def __init__(self, *args: Any, inner_lr: float, mldg_beta: float, first_order: bool, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.inner_lr, self.beta, self.first_order = inner_lr, mldg_beta, first_order

    def meta_objective(self, batches: Batches, meta_train: Sequence[str], meta_test: Sequence[str]) -> dict[str, Any]:
        x_tr, y_tr = (torch.cat([batches[d][i] for d in meta_train]) for i in (0, 1))
        x_te, y_te = (torch.cat([batches[d][i] for d in meta_test]) for i in (0, 1))
        # θ′ = θ − α ∇L_tr(θ): the same functional step as MASF's Eq. 9
        step = inner_step(self.featurizer, self.classifier, x_tr, y_tr, self.inner_lr, self.first_order,
                          convs_double_backward=self.conv_double_backward_by_convs)  # fmt: skip
        te = cross_entropy(step.logits(self.featurizer, self.classifier, x_te), y_te)  # L_te(θ′)
        return {"tr": step.loss.detach(), "te": te, "tr_grads": [g.detach() for g in step.grads]}

    def meta_gradient(self, out: dict[str, Any]) -> list[torch.Tensor]:
        """∇_θ [L_tr(θ) + β L_te(θ′)] = ∇L_tr (in hand from the inner step) + β ∇_θ L_te(θ′), one backward."""
        (te_grads,) = self.gradients(self.beta * out["te"], list(self.parameters()))
        return [g + t for g, t in zip(out["tr_grads"], te_grads, strict=True)]

    def update(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Step]]:
        out = self.meta_objective(batch["domains"], batch["meta_train"], batch["meta_test"])
        grads = self.meta_gradient(out)
        losses = {"cr": out["tr"], "te": out["te"].detach()}
        return {"loss": out["tr"] + self.beta * losses["te"], **losses}, [Step(0, list(self.parameters()), grads)]
