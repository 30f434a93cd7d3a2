"""Calibration on the unseen magnification: is a 90 %-confident prediction right 90 % of the time there?"""

from __future__ import annotations

import torch


def reliability(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> dict[str, object]:
    """Expected calibration error (Guo et al. 2017) and the reliability table it is computed from.

    Equal-width bins [lower, upper) of the top-class probability; ECE = Σ_b (n_b / N)·|accuracy_b −
    confidence_b|. torchmetrics' multiclass_calibration_error gives the same number (tested) but not
    the bins the diagram needs; unlike it, a confidence of exactly 1 falls in the top bin, not one of its own.
    """
    bins: dict[str, list[float]] = {"lower": [], "upper": [], "confidence": [], "accuracy": [], "count": []}
    if len(labels) == 0:
        return {"ece": float("nan"), "bins": bins}
    conf, pred = logits.double().softmax(1).max(1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.double)
    which = torch.bucketize(conf, edges[1:-1], right=True)  # b such that edges[b] <= conf < edges[b+1]
    for b in range(n_bins):
        sel = which == b
        if sel.any():
            bins["lower"].append(float(edges[b]))
            bins["upper"].append(float(edges[b + 1]))
            bins["confidence"].append(float(conf[sel].mean()))
            bins["accuracy"].append(float((pred[sel] == labels[sel]).double().mean()))
            bins["count"].append(int(sel.sum()))
    n = len(labels)
    ece = sum(c / n * abs(a - p) for c, a, p in zip(bins["count"], bins["accuracy"], bins["confidence"], strict=True))
    return {"ece": ece, "bins": bins}
