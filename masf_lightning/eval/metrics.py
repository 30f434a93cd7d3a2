"""Metrics on the unseen magnification: the paper's accuracy plus what a pathology reader asks next."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, object]:
    """Accuracy (the paper's metric), balanced accuracy (mean per-class recall), macro-F1, confusion matrix.

    Classes absent from `labels` are left out of the balanced/macro averages rather than counted as 0.
    """
    preds = logits.argmax(1)
    present = torch.bincount(labels, minlength=num_classes) > 0
    recall = multiclass_accuracy(preds, labels, num_classes, average="none")
    f1 = multiclass_f1_score(preds, labels, num_classes, average="none")
    return {
        "acc": float((preds == labels).float().mean()) if len(labels) else float("nan"),
        "balanced_acc": float(recall[present].mean()) if present.any() else float("nan"),
        "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
        "confusion": multiclass_confusion_matrix(preds, labels, num_classes).tolist(),
        "n": len(labels),
    }


def knn_accuracy(
    query: torch.Tensor, query_labels: torch.Tensor, reference: torch.Tensor, reference_labels: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """k-NN retrieval accuracy (Euclidean): does an unseen-magnification image find its class among source images?

    Majority vote over the k nearest; a tie goes to the class of the nearest tied neighbour.
    """
    if len(query) == 0 or len(reference) == 0:
        return {k: float("nan") for k in ks}
    dist = torch.cdist(query.double(), reference.double())
    kmax = min(max(ks), len(reference))
    nearest = dist.topk(kmax, largest=False).indices  # sorted nearest first
    neighbour_labels = reference_labels[nearest]
    num_classes = int(max(reference_labels.max(), query_labels.max())) + 1
    out = {}
    for k in ks:
        lab = neighbour_labels[:, : min(k, kmax)]
        votes = torch.nn.functional.one_hot(lab, num_classes).double()
        # earlier (closer) neighbours get a tiny bonus that only matters for ties
        weights = 1.0 + 1e-6 * torch.arange(lab.shape[1], 0, -1, dtype=torch.double)
        pred = (votes * weights[None, :, None]).sum(1).argmax(1)
        out[k] = float((pred == query_labels).double().mean())
    return out
