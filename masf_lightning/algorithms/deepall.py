"""DeepAll: the baseline that pools all source magnifications and minimizes cross-entropy (Eq. 3)."""

from __future__ import annotations

from typing import Any

import torch

from masf_lightning.algorithms.base import DGModule, Step
from masf_lightning.losses import cross_entropy


class DeepAll(DGModule):
    """Adam on L_cr over the concatenated source batches; no meta-learning, no embedder."""

    def update(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Step]]:
        x = torch.cat([x for x, _ in batch["domains"].values()])
        y = torch.cat([y for _, y in batch["domains"].values()])
        cr = cross_entropy(self(x), y)  # Eq. 3 over all source domains
        params = list(self.parameters())
        (grads,) = self.gradients(cr, params)
        return {"loss": cr, "cr": cr}, [Step(0, params, grads)]
