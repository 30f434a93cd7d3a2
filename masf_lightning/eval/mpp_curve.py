"""Accuracy along a continuous magnification axis: test accuracy (and balanced accuracy) against µm per pixel.

With a table of many resolutions (the slide tiler's, e.g. 8 log-spaced from 0.25 to 2 µm/px) and a model
trained on a subset (`data.sources`), every run already evaluates every domain; this turns runs'
`metrics.json` into one row per (run, domain) and draws the curve on a log µm/px axis: one line per
method (the mean over seeds, the band their min–max), the resolutions trained on marked. Used per run
(TensorBoard) and over a sweep (experiments/plot_mpp_curve.py). Domains without µm/px are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

METRICS = {"acc": "test_acc_by_domain", "balanced_acc": "test_balanced_acc_by_domain"}
COLUMNS = ["method", "seed", "sources", "domain", "mpp", "trained", "acc", "balanced_acc"]


def curve_rows(runs: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (run, domain with µm/px) of runs' metrics.json dicts: COLUMNS."""
    rows = []
    for m in runs:
        mpp = m.get("mpp_by_domain") or {}
        sources = list(m.get("sources") or [])
        for domain, value in mpp.items():
            rows.append({
                "method": m.get("method"), "seed": m.get("seed"), "sources": "+".join(sources), "domain": domain,
                "mpp": float(value), "trained": domain in sources,
                **{k: (m.get(key) or {}).get(domain, np.nan) for k, key in METRICS.items()},
            })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["method", "sources", "seed", "mpp"], ignore_index=True)


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (method, sources, domain): seeds, mean, std, min and max of accuracy and balanced accuracy."""
    keys = ["method", "sources", "domain", "mpp", "trained"]
    out = rows.groupby(keys, sort=False).agg(
        seeds=("seed", "nunique"),
        **{f"{k}_{f}": (k, f) for k in METRICS for f in ("mean", "std", "min", "max")},
    )
    return out.reset_index().sort_values(["method", "sources", "mpp"], ignore_index=True)


def curve_figure(rows: pd.DataFrame, metrics: Sequence[str] = ("acc", "balanced_acc"), title: str = "") -> plt.Figure:
    """Accuracy against µm/px (log axis), one panel per metric: a line per method (and training set), the seeds'
    min–max as a band, filled markers where the resolution was trained on, dotted lines at those resolutions."""
    summary = summarize(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.2), dpi=150, squeeze=False)
    groups = list(summary.groupby(["method", "sources"], sort=False))
    ticks = sorted(summary["mpp"].unique())
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, ((method, sources), g) in enumerate(groups):
            color = f"C{i}"
            label = f"{method}" if summary["sources"].nunique() == 1 else f"{method} ({sources})"
            n = int(g["seeds"].max())
            ax.plot(g["mpp"], g[f"{metric}_mean"], "-", color=color, label=f"{label}, {n} seed{'s' * (n > 1)}")
            if n > 1:
                ax.fill_between(g["mpp"], g[f"{metric}_min"], g[f"{metric}_max"], color=color, alpha=0.18, lw=0)
            tr = g["trained"].to_numpy()
            ax.plot(g["mpp"][tr], g[f"{metric}_mean"][tr], "o", color=color, ms=5)
            ax.plot(g["mpp"][~tr], g[f"{metric}_mean"][~tr], "o", mfc="white", color=color, ms=5)
        for m in sorted(summary.loc[summary["trained"], "mpp"].unique()):
            ax.axvline(m, color="0.6", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("µm per pixel (log; dotted, filled: trained on)", fontsize=8)
        ax.set_ylabel({"acc": "test accuracy", "balanced_acc": "test balanced accuracy"}.get(metric, metric), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
