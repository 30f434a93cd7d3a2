"""Figures people would rather look at than read: confusion matrix and reliability diagram.

Sized for TensorBoard's image card, which scales every image to about 340 CSS px wide: 3.4 inches
at 150 dpi keeps 9-point text about 12 px high there, and sharp on a high-density screen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

FIGSIZE, DPI = (3.4, 3.4), 150


def confusion_figure(confusion: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> plt.Figure:
    """Row-normalized confusion matrix with counts, rows = true class."""
    cm = np.asarray(confusion, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    small = n <= 4
    ax.set_xticks(range(n), class_names, fontsize=9, rotation=0 if small else 90)
    ax.set_yticks(range(n), class_names, fontsize=9)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j] or i == j:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=11 if small else 8,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig


def reliability_figure(bins: Mapping[str, Sequence[float]], ece: float, title: str = "") -> plt.Figure:
    """Accuracy against confidence per bin (bar width = bin), the diagonal = perfect calibration."""
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    lower, upper = np.asarray(bins["lower"]), np.asarray(bins["upper"])
    ax.bar(lower, bins["accuracy"], width=upper - lower, align="edge", color="#4c72b0", edgecolor="white", label="accuracy")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    ax.scatter(bins["confidence"], bins["accuracy"], s=12, color="black", zorder=3, label="mean confidence")
    for lo, up, acc, count in zip(lower, upper, bins["accuracy"], bins["count"], strict=True):
        ax.text((lo + up) / 2, acc + 0.02, str(count), ha="center", fontsize=7, color="#333333")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence", fontsize=9)
    ax.set_ylabel("accuracy", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    ax.set_title(f"{title}\nECE {100 * ece:.1f}% · images per bar on top", fontsize=9)
    fig.tight_layout(pad=0.3)
    return fig
