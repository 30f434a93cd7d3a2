"""The magnification transfer map: test accuracy on every magnification after training on some of them.

    python experiments/plot_transfer.py multirun/transfer [more dirs...] [--out results/transfer]

Reads finished runs (masf_lightning/eval/results.py) and draws, per method, a heatmap of training
magnification(s) × test magnification, accuracy in %, mean over seeds: DeepAll trained on one
magnification (the 4×4 map), and the leave-one-out runs (row = the magnification left out, trained on
the other three). Cells of a magnification the run trained on are framed: that accuracy is in-domain.
Writes PREFIX.png, PREFIX.pdf, PREFIX.md and PREFIX.csv (default PREFIX = results/transfer).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from masf_lightning.eval.results import Group, Run, find_runs  # noqa: E402
from masf_lightning.eval.stats import mean_std  # noqa: E402
from masf_lightning.io import atomic_path, write_text_atomic  # noqa: E402

TITLES = {"deepall": "DeepAll", "masf": "MASF", "masf_joint": "MASF (joint)"}


def mag(d: str) -> str:
    """'40x' → '40×' as the paper writes it; other domain names as they are."""
    return d[:-1] + "×" if d.endswith("x") and d[:-1].replace(".", "", 1).isdigit() else d


@dataclass
class Panel:
    """One heatmap: rows are training sets, columns the four test magnifications, cells accuracies by seed."""

    title: str
    domains: tuple[str, ...]  # the test columns: the runs' dataset's domains, coarse to fine
    row_names: list[str]
    row_sources: list[tuple[str, ...]]
    cells: dict[tuple[int, str], list[float]] = field(default_factory=dict)

    def mean(self, i: int, d: str) -> float:
        values = self.cells.get((i, d), [])
        return float(np.mean(values)) if values else float("nan")


def panels(runs: Sequence[Run]) -> list[Panel]:
    """Single-source panels first (the 4×4 map), then leave-one-out, one per method present."""
    out = []
    order = max((r.domains for r in runs), key=len, default=())
    single = [r for r in runs if len(r.sources) == 1]
    loo = [r for r in runs if len(r.sources) == len(order) - 1]
    for kind, chosen in (("one magnification", single), ("leave one out", loo)):
        for method in sorted({r.method for r in chosen}, key=lambda m: (m != "deepall", m)):
            mine = [r for r in chosen if r.method == method]
            # every panel has all four rows, so the maps line up; a row without runs stays blank
            if kind == "one magnification":
                sources = [(d,) for d in order]
                names = [f"{mag(d)} only" for d in order]
            else:
                sources = [tuple(s for s in order if s != d) for d in order]
                names = [f"all but {mag(d)}" for d in order]
            panel = Panel(f"{TITLES.get(method, method)}: {kind}", order, names, sources)
            for r in mine:  # a leave-one-out run's sources are the others, in the domains' order
                i = sources.index(tuple(sorted(r.sources, key=order.index)))
                for d, acc in (r.metrics.get("test_acc_by_domain") or {}).items():
                    if d in order and acc is not None:
                        panel.cells.setdefault((i, d), []).append(100.0 * acc)
            out.append(panel)
    return out


def figure(ps: Sequence[Panel], title: str) -> plt.Figure:
    """Heatmaps side by side on one colour scale; framed cells = magnifications trained on."""
    values = [v for p in ps for vs in p.cells.values() for v in vs]
    lo, hi = (min(values), max(values)) if values else (0.0, 100.0)
    lo, hi = (lo - 1, hi + 1) if hi - lo < 1e-6 else (lo, hi)  # one value everywhere: still one colour for all
    fig, axes = plt.subplots(1, len(ps), figsize=(3.9 * len(ps) + 1.0, 4.2), squeeze=False, layout="constrained")
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")  # blank: no run
    for ax, p in zip(axes[0], ps, strict=True):
        grid = np.array([[p.mean(i, d) for d in p.domains] for i in range(len(p.row_names))])
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=lo, vmax=hi)
        ax.set_xticks(range(len(p.domains)), [mag(d) for d in p.domains])
        ax.set_yticks(range(len(p.row_names)), p.row_names)
        ax.set_xlabel("test magnification")
        ax.set_ylabel("trained on")
        ax.set_title(p.title, fontsize=10)
        for i, src in enumerate(p.row_sources):
            for j, d in enumerate(p.domains):
                if not p.cells.get((i, d)):
                    continue
                dark = grid[i, j] < lo + 0.6 * (hi - lo)
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=9, color="white" if dark else "black")
                if d in src:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", lw=2))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.85, label="test accuracy (%)")
    fig.suptitle(title + "\nframed: a magnification the run trained on (in-domain)", fontsize=9)
    return fig


def table(ps: Sequence[Panel]) -> tuple[str, str]:
    """(Markdown, CSV): mean ± sample std over seeds (n) per panel, training set and test magnification."""
    md, buf = [], io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["panel", "trained_on", "test", "seen", "n", "mean", "std"])
    for p in ps:
        md += [f"#### {p.title}", "", "| trained on | " + " | ".join(mag(d) for d in p.domains) + " |", "|---" * (len(p.domains) + 1) + "|"]
        for i, name in enumerate(p.row_names):
            cells = []
            for d in p.domains:
                vals = p.cells.get((i, d), [])
                mean, std = mean_std(vals) if vals else (None, None)
                seen = d in p.row_sources[i]
                cells.append("–" if mean is None else f"{mean:.2f} ± {'–' if std is None else f'{std:.2f}'} (n={len(vals)}){' *' if seen else ''}")
                w.writerow([p.title, " ".join(p.row_sources[i]), d, int(seen), len(vals), "" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}"])
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        md.append("")
    md.append("Test accuracy (%), mean ± sample std over seeds (n); * = a magnification the run trained on (in-domain).")
    return "\n".join(md) + "\n", buf.getvalue()


def hardest(p: Panel) -> str | None:
    """The unseen (train, test) pair with the lowest accuracy, as a sentence."""
    pairs = [(p.mean(i, d), i, d) for i in range(len(p.row_names)) for d in p.domains if d not in p.row_sources[i] and p.cells.get((i, d))]
    if not pairs:
        return None
    acc, i, d = min(pairs)
    return f"{p.title}: hardest transfer {p.row_names[i]} → {mag(d)} ({acc:.1f}%)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched recursively for finished runs")
    parser.add_argument("--out", type=Path, default=Path("results/transfer"), metavar="PREFIX", help="write PREFIX.png/.pdf/.md/.csv")
    args = parser.parse_args(argv)
    runs = [r for r in find_runs(args.dirs) if r.status == "ok" and r.group is not None]
    groups = sorted({r.group for r in runs}, key=Group.sort_key)
    if not groups:
        print(f"error: no finished run under {', '.join(args.dirs)}", file=sys.stderr)
        return 2
    if len(groups) > 1:
        listed = "; ".join(g.title() for g in groups)
        print(f"error: runs of {len(groups)} settings under {', '.join(args.dirs)} ({listed}): give one setting's folder", file=sys.stderr)
        return 2
    ps = [p for p in panels(runs) if p.cells]
    if not ps:
        print("error: no single-source or leave-one-out run with test_acc_by_domain: nothing to map", file=sys.stderr)
        return 2
    fig = figure(ps, groups[0].title())
    prefix = args.out
    for fmt in ("png", "pdf"):
        with atomic_path(prefix.with_name(f"{prefix.name}.{fmt}")) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150 if fmt == "png" else None, bbox_inches="tight")
    plt.close(fig)
    md, csv_text = table(ps)
    write_text_atomic(prefix.with_name(prefix.name + ".md"), f"### Transfer map · {groups[0].title()}\n\n{md}")
    write_text_atomic(prefix.with_name(prefix.name + ".csv"), csv_text)
    print(md, end="")
    for p in ps:
        line = hardest(p)
        if line:
            print(line)
    print(f"wrote {prefix}.png, {prefix}.pdf, {prefix}.md, {prefix}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
