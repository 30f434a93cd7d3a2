"""Classification on the unseen magnification: the paper's accuracy plus what a pathology reader asks next."""

from __future__ import annotations

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
