"""How magnification-invariant an embedding is: the aim of MASF, measured rather than assumed."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def magnification_predictability(x: torch.Tensor, magnification: torch.Tensor, patients: torch.Tensor, folds: int = 5) -> float:
    """Cross-validated balanced accuracy of a logistic regression predicting the magnification from x.

    Chance is 1 / #magnifications (25 % for four) whatever the counts; lower = more invariant. Folds
    are by patient (StratifiedGroupKFold), so a patient's look cannot stand in for its magnification.
    NaN when fewer than two patients or magnifications.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y, groups = magnification.numpy(), patients.numpy()
    n_splits = min(folds, len(np.unique(groups)))
    if n_splits < 2 or len(np.unique(y)) < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=0)
    with warnings.catch_warnings():  # with few patients a test fold may lack a magnification: expected, not news
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        scores = cross_val_score(model, x.double().numpy(), y, groups=groups, cv=cv, scoring="balanced_accuracy")
    return float(np.mean(scores))


def class_gap(source: torch.Tensor, source_labels: torch.Tensor, target: torch.Tensor, target_labels: torch.Tensor) -> dict[str, object]:
    """Distance between a class's source and target means, in units of that class's spread; mean over classes.

    gap_c = ‖μ_c^source − μ_c^target‖ / s_c with s_c² the mean squared distance of the class's points to
    their own domain's class mean (pooled over both domains). 0 = the two magnifications coincide;
    scale-free, so spaces of different size compare. Classes missing from either side, or with s_c = 0, are left out.
    """
    per_class: dict[int, float] = {}
    for c in sorted(set(source_labels.tolist()) & set(target_labels.tolist())):
        s, t = source[source_labels == c].double(), target[target_labels == c].double()
        mu_s, mu_t = s.mean(0), t.mean(0)
        spread = torch.sqrt((((s - mu_s) ** 2).sum() + ((t - mu_t) ** 2).sum()) / (len(s) + len(t)))
        if spread > 0:
            per_class[c] = float((mu_s - mu_t).norm() / spread)
    mean = sum(per_class.values()) / len(per_class) if per_class else float("nan")
    return {"mean": mean, "per_class": per_class}
