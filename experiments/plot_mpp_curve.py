"""Accuracy along the magnification axis over a sweep: test accuracy against µm per pixel, one line per method.

    python experiments/plot_mpp_curve.py multirun/mpp_curve [more dirs...] [--out results/mpp_curve]

Reads the finished runs below the folders (masf_lightning/eval/results.py), each evaluated on every domain of
its table, and draws accuracy and balanced accuracy against µm/px on a log axis (masf_lightning/eval/mpp_curve.py):
the mean over seeds, their min–max as a band, the resolutions trained on marked. Writes PREFIX.png, PREFIX.pdf,
PREFIX.csv (one row per run × domain) and PREFIX_summary.csv (per method × domain: seeds, mean, std, min, max).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from masf_lightning.eval.mpp_curve import curve_figure, curve_rows, summarize
from masf_lightning.eval.results import find_runs
from masf_lightning.io import atomic_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="sweep folders holding finished runs")
    parser.add_argument("--out", type=Path, default=Path("results/mpp_curve"), help="output prefix")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    runs = [r for r in find_runs(args.dirs) if r.status == "ok"]
    rows = curve_rows(r.metrics for r in runs)
    if rows.empty:
        print(f"error: no finished run with µm per pixel per domain below {' '.join(map(str, args.dirs))}", file=sys.stderr)
        return 1
    fig = curve_figure(rows, title=args.title)
    for ext in ("png", "pdf"):
        with atomic_path(args.out.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, bbox_inches="tight")
    with atomic_path(args.out.with_suffix(".csv")) as tmp:
        rows.to_csv(tmp, index=False)
    summary = summarize(rows)
    with atomic_path(args.out.with_name(args.out.name + "_summary.csv")) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.4f")
    shown = summary[["method", "domain", "trained", "seeds", "acc_mean", "acc_min", "acc_max", "balanced_acc_mean"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{len(runs)} runs: {args.out.with_suffix('.png')} (.pdf, .csv, _summary.csv)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
