"""Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV-W 2016) for
domain generalization as in DomainBed (Gulrajani & Lopez-Paz, ICLR 2021): feature alignment without meta-learning.

    L = L_cr(all sources) + λ · mean over source pairs (i, j) of coral_penalty(F_ψ(x_i), F_ψ(x_j))
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch

from masf_lightning.algorithms.base import DGModule, Step
from masf_lightning.losses import coral_penalty, cross_entropy


class CORAL(DGModule):
    """Cross-entropy on the pooled sources plus λ × the CORAL penalty between every two magnifications' F_ψ features.
    Under DDP each process aligns the statistics of its own shard (DomainBed's choice)."""

    def __init__(self, *args: Any, coral_weight: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.coral_weight = coral_weight

    def update(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Step]]:
        xs, ys = zip(*batch["domains"].values(), strict=True)
        feats = self.featurizer(torch.cat(xs))
        cr = cross_entropy(self.classifier(feats), torch.cat(ys))  # Eq. 3 over all source domains
        pairs = list(combinations(feats.split([len(x) for x in xs]), 2))
        penalty = sum(coral_penalty(a, b) for a, b in pairs) / len(pairs) if pairs else cr.new_zeros(())
        loss = cr + self.coral_weight * penalty
        params = list(self.parameters())
        (grads,) = self.gradients(loss, params)
        return {"loss": loss, "cr": cr, "coral": penalty}, [Step(0, params, grads)]
