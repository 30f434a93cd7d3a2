"""Magnification robustness: PathoROB's robustness index with magnification as the confounder and the class as the
biology (de Jong, Marcus & Teuwen 2025, arXiv:2501.18055; Kömen et al., "Towards robust foundation models for digital
pathology", Nature Communications 2026, arXiv:2507.17845), computed by the `croma` package's RI.

For each image, its k nearest neighbours (cosine distance) from other patients: SO = those of the same class at
another magnification, OS = those of another class at the same magnification. RI = ΣSO / (ΣSO + ΣOS) pooled over the
images that have either: 1 when neighbourhoods follow the class across magnifications, 0 when they follow the
magnification across classes, 0.5 when neither wins. k is chosen among `ks` by the k-NN balanced accuracy of the
class (croma's rule), so the index is read where the space is best for its biology.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence

import torch

ROBUSTNESS_KS = (1, 3, 5, 10, 20)  # candidate k; croma keeps the one whose k-NN classifies the class best


def magnification_robustness(
    x: torch.Tensor, labels: torch.Tensor, magnification: torch.Tensor, patients: torch.Tensor, ks: Sequence[int] = ROBUSTNESS_KS
) -> dict[str, float | int | None]:
    """{"index": RI, "k": the k used, "support": share of images with any SO or OS neighbour}; a patient's own images
    never count as neighbours (the same tissue at another magnification would be robustness for free). NaN index
    when fewer than two patients, classes or magnifications."""
    import numpy as np
    import pandas as pd
    from croma import RI

    n = len(labels)
    usable = [k for k in ks if k < n]
    if n < 3 or not usable or min(len(torch.unique(t)) for t in (labels, magnification, patients)) < 2:
        return {"index": math.nan, "k": None, "support": 0.0}
    manifest = pd.DataFrame({
        "sample_id": [str(i) for i in range(n)], "image_path": [str(i) for i in range(n)],
        "label": labels.numpy().astype(str), "group_id": [f"p{p}" for p in patients.tolist()],
        "magnification": magnification.numpy().astype(str),
    })  # fmt: skip
    croma_log = logging.getLogger("croma")
    level = croma_log.level
    croma_log.setLevel(logging.ERROR)  # it logs neighbour coverage per call; the report keeps `support`
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = RI.compute(np.ascontiguousarray(x.double().numpy()), manifest, confounder_column="magnification", k_candidates=list(usable))
    except (ValueError, RuntimeError):  # no image has a neighbour from another patient of the kind counted
        return {"index": math.nan, "k": None, "support": 0.0}
    finally:
        croma_log.setLevel(level)
    return {"index": float(result.value), "k": int(result.k), "support": float(result.support)}
