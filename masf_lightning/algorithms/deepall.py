"""DeepAll: the baseline that pools all source magnifications and minimizes cross-entropy (Eq. 3)."""

from __future__ import annotations

from typing import Any

import torch

from masf_lightning.algorithms.base import DGModule
from masf_lightning.losses import cross_entropy


class DeepAll(DGModule):
    """Adam on L_cr over the concatenated source batches; no meta-learning, no embedder."""

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x = torch.cat([x for x, _ in batch["domains"].values()])
        y = torch.cat([y for _, y in batch["domains"].values()])
        loss = cross_entropy(self(x), y)  # Eq. 3 over all source domains
        self.check_finite({"cr": loss}, batch)
        self.log("train/cr", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.adam(self.parameters())
