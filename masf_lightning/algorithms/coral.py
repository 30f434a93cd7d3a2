"""Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation", ECCV-W 2016) for
domain generalization as in DomainBed (Gulrajani & Lopez-Paz, ICLR 2021): feature alignment without meta-learning.

    L = L_cr(all sources) + λ · mean over source pairs (i, j) of coral_penalty(F_ψ(x_i), F_ψ(x_j))
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import torch

from masf_lightning.algorithms.base import DGModule
from masf_lightning.losses import coral_penalty, cross_entropy


class CORAL(DGModule):
    """Cross-entropy on the pooled sources plus λ × the CORAL penalty between every two magnifications' F_ψ features.
    Under DDP each process aligns the statistics of its own shard (DomainBed's choice)."""

    def __init__(self, *args: Any, coral_weight: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.coral_weight = coral_weight

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        xs, ys = zip(*batch["domains"].values(), strict=True)
        feats = self.featurizer(torch.cat(xs))
        cr = cross_entropy(self.classifier(feats), torch.cat(ys))  # Eq. 3 over all source domains
        per_domain = feats.split([len(x) for x in xs])
        pairs = list(combinations(per_domain, 2))
        penalty = sum(coral_penalty(a, b) for a, b in pairs) / max(1, len(pairs)) if pairs else cr.new_zeros(())
        self.check_finite({"cr": cr, "coral": penalty}, batch)
        self.log_dict({"train/cr": cr.detach(), "train/coral": penalty.detach()}, prog_bar=False)
        loss = cr + self.coral_weight * penalty
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.adam(self.parameters())
