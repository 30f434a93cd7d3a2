"""Fig. 2 of the paper for one finished run: 2-D map of the test images of all four magnifications.

    python experiments/plot_embeddings.py RUN_DIR [--out PREFIX] [--method tsne|umap] [--max-per-domain N] [KEY=VALUE ...]

Rebuilds the run's datamodule and model from its resolved config with the pipeline's own builders
(the image cache is reused, nothing is retrained), loads the checkpoint the run selected, embeds the
test images of every magnification (F_φ embeddings for MASF, F_ψ features for DeepAll) and draws
(a) classes (tumour type or malignancy, as the run's task) and (b) magnifications, with the unseen
target magnification's points drawn as black-edged stars. Writes PREFIX.png, PREFIX.pdf and PREFIX.csv
(the 2-D points; default PREFIX = RUN_DIR/fig2_embedding) and the same vectors to TensorBoard's
projector under RUN_DIR/tb/fig2_embedding. Trailing KEY=VALUE overrides (e.g. data.root=/new/place)
patch the loaded config when the data has moved since training.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from masf_lightning.data.breakhis import SUBTYPE_FOLDERS  # noqa: E402
from masf_lightning.errors import DataError, MasfError  # noqa: E402
from masf_lightning.eval.embeddings import collect  # noqa: E402
from masf_lightning.eval.tensorboard import PROJECTOR_HEADER, projector_rows  # noqa: E402  (the training projector's columns)
from masf_lightning.io import atomic_path  # noqa: E402
from masf_lightning.runs import load_run  # noqa: E402
from masf_lightning.track.record import EMBEDDING_PLOT  # noqa: E402  (what a tracker sends when it exists)

PROJECTOR_DIR = "fig2_embedding"  # own TensorBoard run: rewriting tb/projector_config.pbtxt would hide the training one
MAG_COLOURS = ("#1b9e77", "#7570b3", "#d95f02", "#e7298a")
CLASS_COLOURS = {"benign": "#2166ac", "malignant": "#b2182b"}


# -- embedding ----------------------------------------------------------------------------------
@dataclass
class Embedded:
    """Test images of all magnifications: one vector per image plus what the plots colour by."""

    vectors: np.ndarray
    space: str  # "F_φ embeddings" | "F_ψ features"
    labels: np.ndarray  # class id in the run's task
    domains: list[str]
    meta: pd.DataFrame  # rows of the dataset table: path, domain, patient, the labels, split
    target: str

    @property
    def is_target(self) -> np.ndarray:
        return np.array([d == self.target for d in self.domains])


def embed_test_sets(module: torch.nn.Module, dm: object, max_per_domain: int | None, device: torch.device) -> Embedded:
    """Embed every magnification's test split, at most `max_per_domain` images each (a fixed random subset)."""
    vectors, labels, rows, domains = [], [], [], []
    space = "F_ψ features"
    for d in dm.domains:  # type: ignore[attr-defined]
        res = collect(module, dm, d, "test", device)
        if len(res["labels"]) == 0:
            continue
        has_embedder = len(res["embeddings"]) > 0
        space = "F_φ embeddings" if has_embedder else "F_ψ features"
        x = res["embeddings"] if has_embedder else res["features"]
        keep = torch.arange(len(x))
        if max_per_domain and len(x) > max_per_domain:
            # the same subset on every call: figures of two runs with the same split are comparable
            keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:max_per_domain].sort().values
        vectors.append(x[keep])
        labels.append(res["labels"][keep])
        rows.append(res["rows"][keep])
        domains += [d] * len(keep)
    if not vectors:
        raise DataError("no test images at any magnification: nothing to plot")
    meta = dm.index.iloc[torch.cat(rows).numpy()].reset_index(drop=True)  # type: ignore[attr-defined]
    target = dm.target  # type: ignore[attr-defined]
    return Embedded(torch.cat(vectors).numpy().astype(np.float64), space, torch.cat(labels).numpy(), domains, meta, target)


def project(x: np.ndarray, method: str) -> tuple[np.ndarray, str]:
    """2-D map; returns the points and the name of what made them (t-SNE, UMAP, or PCA for tiny sets)."""
    n = len(x)
    if n < 10:  # t-SNE's perplexity needs more neighbours than this; PCA at least shows something
        from sklearn.decomposition import PCA

        pts = PCA(n_components=min(2, n, x.shape[1]), random_state=0).fit_transform(x)
        return np.pad(pts, ((0, 0), (0, 2 - pts.shape[1]))), "PCA"
    if method == "umap":
        try:
            import umap  # optional: `pip install umap-learn`
        except ImportError:
            print("umap-learn is not installed; using t-SNE", file=sys.stderr)
        else:
            return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=0).fit_transform(x), "UMAP"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=0).fit_transform(x), "t-SNE"


# -- the figure ---------------------------------------------------------------------------------
def _class_label(name: str) -> str:
    return f"{name}: {SUBTYPE_FOLDERS[name].replace('_', ' ')}" if name in SUBTYPE_FOLDERS else name


def figure(points: np.ndarray, emb: Embedded, class_names: Sequence[str], title: str, domains: Sequence[str], task: str = "") -> plt.Figure:
    """(a) coloured by class, (b) by magnification; the target magnification as black-edged stars in both."""
    is_target = emb.is_target
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    cmap = plt.get_cmap("tab10")
    class_colours = [CLASS_COLOURS.get(c, cmap(i % 10)) for i, c in enumerate(class_names)]
    domains = list(domains)
    mag_colours = [*MAG_COLOURS, *(cmap(i % 10) for i in range(max(0, len(domains) - len(MAG_COLOURS))))]

    def scatter(ax: plt.Axes, colour_of: np.ndarray, colours: Sequence[object]) -> None:
        # sources first, then the target on top so the unseen magnification is never hidden
        for tgt in (False, True):
            sel = is_target == tgt
            for k, colour in enumerate(colours):
                s = sel & (colour_of == k)
                if s.any():
                    ax.scatter(
                        points[s, 0], points[s, 1], c=[colour], s=46 if tgt else 14, marker="*" if tgt else "o",
                        edgecolors="black" if tgt else "none", linewidths=0.5, alpha=0.95 if tgt else 0.7,
                    )  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])

    def handle(colour: object, label: str, tgt: bool = False) -> Line2D:
        return Line2D([], [], ls="", marker="*" if tgt else "o", markersize=10 if tgt else 6, markerfacecolor=colour,
                      markeredgecolor="black" if tgt else colour, label=label)  # fmt: skip

    present = sorted(set(emb.labels.tolist()))
    scatter(axes[0], emb.labels, class_colours)
    axes[0].set_title("(a) " + {"tumor_type": "tumour type", "malignancy": "malignancy"}.get(task, task or "class"), fontsize=10)
    hs = [handle(class_colours[k], _class_label(class_names[k])) for k in present]
    hs.append(handle("white", f"{emb.target.replace('x', '×')} (target)", tgt=True))
    axes[0].legend(handles=hs, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)

    mag_of = np.array([domains.index(d) for d in emb.domains])
    scatter(axes[1], mag_of, mag_colours)
    axes[1].set_title("(b) magnification", fontsize=10)
    hs = [handle(mag_colours[k], d.replace("x", "×") + (" (target)" if d == emb.target else ""), tgt=d == emb.target)
          for k, d in enumerate(domains) if d in emb.domains]  # fmt: skip
    axes[1].legend(handles=hs, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def log_projector(run_dir: Path, emb: Embedded, step: int, task: str) -> Path:
    """The same vectors in TensorBoard's projector, with the pipeline's metadata columns.

    eval/tensorboard.log_projector embeds the training-time sets (target test, source val); this writes
    the test sets of all magnifications as its own TensorBoard run beside the training one.
    """
    from torch.utils.tensorboard import SummaryWriter

    log_dir = run_dir / "tb" / PROJECTOR_DIR
    # the folder is this script's alone: start clean so a re-plot leaves no stale tensors or event files
    shutil.rmtree(log_dir, ignore_errors=True)
    meta = projector_rows(emb.meta, task, np.where(emb.is_target, "target", "source").tolist())
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.add_embedding(torch.from_numpy(emb.vectors).float(), metadata=meta, metadata_header=PROJECTOR_HEADER,
                             tag="test_all_magnifications", global_step=step)  # fmt: skip
    return log_dir


# -- entry point --------------------------------------------------------------------------------
def plot_run(run_dir: Path, out: Path | None = None, method: str = "tsne", max_per_domain: int | None = 1000,
             overrides: Sequence[str] = (), device: str | None = None) -> dict[str, Path]:  # fmt: skip
    """Everything main() does, callable from Python; returns the written artefacts."""
    run = load_run(run_dir, overrides, device)
    cfg, dm = run.cfg, run.dm
    emb = embed_test_sets(run.module, dm, max_per_domain, run.module.device)
    points, made_by = project(emb.vectors, method)

    name = cfg.method.name if "name" in cfg.method else "?"
    title = (
        f"{name} · {cfg.task} · target {dm.target.replace('x', '×')} unseen in training\n"
        f"test images of all magnifications (n={len(points)}) · {made_by} of {emb.space} · checkpoint step {run.step}"
    )
    fig = figure(points, emb, dm.class_names, title, dm.domains, str(cfg.task))
    prefix = out or run_dir / EMBEDDING_PLOT
    paths = {"png": prefix.with_name(prefix.name + ".png"), "pdf": prefix.with_name(prefix.name + ".pdf"),
             "csv": prefix.with_name(prefix.name + ".csv")}  # fmt: skip
    for fmt in ("png", "pdf"):
        with atomic_path(paths[fmt]) as tmp:
            fig.savefig(tmp, format=fmt, dpi=200 if fmt == "png" else None, bbox_inches="tight")
    plt.close(fig)
    columns = ["path", "domain", "patient", *dict.fromkeys(c for c in (str(cfg.task), *dm.table.label_columns) if c in emb.meta), "split"]
    table = emb.meta.loc[:, columns].assign(
        x=points[:, 0], y=points[:, 1], role=np.where(emb.is_target, "target", "source")
    )
    with atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")
    paths["tensorboard"] = log_projector(run_dir, emb, run.step, str(cfg.task))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (holds run_config.json and checkpoints/)")
    parser.add_argument("--out", type=Path, metavar="PREFIX", help="write PREFIX.png/.pdf/.csv (default RUN_DIR/fig2_embedding)")
    parser.add_argument("--method", choices=("tsne", "umap"), default="tsne", help="2-D map; umap needs umap-learn")
    parser.add_argument("--max-per-domain", type=int, default=1000, metavar="N", help="at most N test images per magnification (0 = all)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="patch the run's config, e.g. data.root=/new/place")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    try:
        paths = plot_run(args.run_dir, args.out, args.method, args.max_per_domain or None, args.overrides, args.device)
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"figure: {paths['png']}")
    print(f"figure: {paths['pdf']}")
    print(f"points: {paths['csv']}")
    print(f"projector: {paths['tensorboard']}  (tensorboard --logdir {args.run_dir / 'tb'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
