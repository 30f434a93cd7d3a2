"""Figures people would rather look at than read: confusion matrix and reliability diagram.

Sized for TensorBoard's image card (~500 px wide, shown at 100 dpi without zoom): large fonts,
few words, so they are legible where users first meet them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> plt.Figure:
    """Row-normalized confusion matrix with counts, rows = true class."""
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=100)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    small = n <= 4
    ax.set_xticks(range(n), class_names, fontsize=12, rotation=0 if small else 45)
    ax.set_yticks(range(n), class_names, fontsize=12)
    ax.set_xlabel("predicted", fontsize=12)
    ax.set_ylabel("true", fontsize=12)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j] or i == j:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=14 if small else 11,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    if title:
        ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def reliability_figure(bins: Mapping[str, Sequence[float]], ece: float, title: str = "") -> plt.Figure:
    """Accuracy against confidence per bin (bar width = bin), the diagonal = perfect calibration."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=100)
    lower, upper = np.asarray(bins["lower"]), np.asarray(bins["upper"])
    ax.bar(lower, bins["accuracy"], width=upper - lower, align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.scatter(bins["confidence"], bins["accuracy"], s=12, color="black", zorder=3, label="mean confidence")
    for lo, up, acc, count in zip(lower, upper, bins["accuracy"], bins["count"], strict=True):
        ax.text((lo + up) / 2, acc + 0.02, str(count), ha="center", fontsize=8, color="#333333")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence (top-class probability)", fontsize=12)
    ax.set_ylabel("accuracy", fontsize=12)
    ax.tick_params(labelsize=11)
    ax.legend(fontsize=10, loc="upper left", frameon=False)
    ax.set_title(f"{title}{' · ' if title else ''}ECE {100 * ece:.1f}% (n per bar)", fontsize=11)
    fig.tight_layout()
    return fig
