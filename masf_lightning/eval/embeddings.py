"""Run a trained model over one (magnification, split) subset and keep what evaluation needs."""

from __future__ import annotations

import torch
from torch import nn

from masf_lightning.data.datamodule import MagnificationDataModule


def outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
    """F_ψ(x) features, F_θ logits and F_φ embeddings (None when the model has no embedder): what is kept of a batch."""
    f = model.featurizer(x)
    embedder = getattr(model, "embedder", None)
    return {"features": f, "logits": model.classifier(f), "embeddings": embedder(f) if embedder is not None else None}


@torch.no_grad()
def collect(model: nn.Module, dm: MagnificationDataModule, domain: str, split: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Features F_ψ(x), embeddings F_φ(F_ψ(x)) (when the model has an embedder), logits, labels and cache rows."""
    was_training = model.training
    model.eval()
    out: dict[str, list[torch.Tensor]] = {"features": [], "embeddings": [], "logits": [], "labels": [], "rows": []}
    for rows in dm.eval_loader(domain, split):
        rows = rows.to(device)
        x, y, rows = dm.on_after_batch_transfer(rows, 0)
        for key, value in outputs(model, x).items():
            if value is not None:
                out[key].append(value.float().cpu())
        out["labels"].append(y.cpu())
        out["rows"].append(rows.cpu())
    model.train(was_training)
    empty = {"labels": torch.empty(0, dtype=torch.long), "rows": torch.empty(0, dtype=torch.long)}
    return {k: (torch.cat(v) if v else empty.get(k, torch.empty(0))) for k, v in out.items()}
