"""A trained run applied to new images, for predict, embed and search.

The images go through the run's own code: `preprocess_images` (decode, the run's stain normalizer with its
reference statistics, the run's geometry) builds the same uint8 S×S images the training cache holds, and
the datamodule's `to_input` (centre crop, mean/std) and `eval.embeddings.outputs` make what evaluation makes
of them. A file that cannot be read is skipped with one line; the others go on.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pandas as pd
import torch

from masf_lightning.checkpoints import weights_fingerprint
from masf_lightning.data.breakhis import parse_file_name
from masf_lightning.data.cache import preprocess_images
from masf_lightning.errors import DataError, MasfError
from masf_lightning.eval.embeddings import outputs
from masf_lightning.io import METRICS_FILE, check_writable_dir
from masf_lightning.runs import LoadedRun, load_run

# What a folder is searched for (torchvision's decoders); a file named on the command line is tried whatever its name.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# An image's domain, patient and class (under the run's task) when the run's table knows it: its split_manifest.csv
# by path, else by file name; else what a BreaKHis file name says; else empty.
METADATA_COLUMNS = ("domain", "patient", "label")


@dataclass
class Skipped:
    """Inputs left out, each reported on one line as it happens and listed again at the end."""

    stream: IO[str] = field(default_factory=lambda: sys.stderr)
    paths: list[str] = field(default_factory=list)

    def add(self, path: Path | str, reason: str) -> None:
        print(f"skipped: {reason}", file=self.stream, flush=True)
        self.paths.append(str(path))


def gather_images(inputs: Sequence[Path], skipped: Skipped) -> list[Path]:
    """Files as given and the image files below each folder (sorted), each once; a missing path or an empty folder is skipped."""
    files: dict[Path, None] = {}
    for item in inputs:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                skipped.add(item, f"{item}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            files.update(dict.fromkeys(found))
        elif item.is_file():
            files[item] = None
        else:
            skipped.add(item, f"{item}: no such file or folder")
    return list(files)


def model_id(module: torch.nn.Module) -> str:
    """A fingerprint of the weights (names, shapes, dtypes, values): an index built with one model is queried with it only."""
    return weights_fingerprint(module)


@dataclass
class TrainedModel:
    """A finished run ready for new images: its model (eval mode) and preprocessing, without its data."""

    run_dir: Path
    run: LoadedRun
    id: str
    class_names: tuple[str, ...] = ()
    _known: dict[str, dict[str, str]] | None = field(default=None, repr=False)

    def metadata(self, path: Path) -> dict[str, str | None]:
        """The image's domain, patient and class from the run's own table, else from a BreaKHis file name."""
        if self._known is None:
            self._known = _run_table(self.run_dir, self.run.dm.root, str(self.run.cfg.task))
        row = self._known.get(str(path.resolve())) or self._known.get(path.name)
        if row is None:
            fields = parse_file_name(path.name) or {}
            mag, task = fields.get("magnification"), str(self.run.cfg.task)
            row = {"domain": f"{mag}x" if mag else None, "patient": fields.get("patient"), "label": fields.get(task)}
        return {k: (None if row.get(k) is None else str(row[k])) for k in METADATA_COLUMNS}

    @property
    def has_embedder(self) -> bool:
        return getattr(self.run.module, "embedder", None) is not None

    @property
    def device(self) -> torch.device:
        return self.run.module.device


def open_run(run_dir: Path, device: str | None = None, overrides: Sequence[str] = ()) -> TrainedModel:
    """The run's selected checkpoint (read with weights_only=True) on its rebuilt model; no training data needed."""
    run = load_run(run_dir, overrides, device, data=False)
    run.module.eval()
    return TrainedModel(run_dir, run, model_id(run.module), run_classes(run_dir, str(run.cfg.task)))


def run_classes(run_dir: Path, task: str) -> tuple[str, ...]:
    """The class names a run trained on, in class-id order: its metrics.json (runs before that key: BreaKHis's)."""
    from masf_lightning.data.breakhis import CLASS_ORDERS

    try:
        classes = json.loads((run_dir / METRICS_FILE).read_text()).get("classes")
    except (OSError, ValueError):
        classes = None
    return tuple(classes) if classes else CLASS_ORDERS.get(task, ())


def _run_table(run_dir: Path, root: Path, task: str) -> dict[str, dict[str, str]]:
    """The run's split_manifest.csv rows by absolute path and by file name (a name found twice: by path only)."""
    try:
        table = pd.read_csv(run_dir / "split_manifest.csv", dtype=str, keep_default_na=False)
    except (OSError, ValueError):
        return {}
    if "domain" not in table.columns and "magnification" in table.columns:
        table["domain"] = table["magnification"] + "x"
    rows = [{"domain": r.get("domain"), "patient": r.get("patient"), "label": r.get(task), "path": r["path"]} for r in table.to_dict("records")]
    known = {str((root / r["path"]).resolve()): r for r in rows}
    names = pd.Series([Path(r["path"]).name for r in rows])
    unique = set(names[~names.duplicated(keep=False)])
    known.update({Path(r["path"]).name: r for r in rows if Path(r["path"]).name in unique})
    return known


@dataclass
class Batch:
    """What the model made of some images, in their order (on the CPU, float32)."""

    paths: list[Path]
    features: torch.Tensor
    logits: torch.Tensor
    embeddings: torch.Tensor | None


def preprocess(model: TrainedModel, paths: list[Path], skipped: Skipped) -> tuple[list[Path], torch.Tensor]:
    """uint8 N×3×S×S as the run's cache would hold them; a chunk with a bad file is redone file by file."""
    dm = model.run.dm
    try:
        return paths, preprocess_images(paths, dm.stain, dm.geometry, num_workers=dm.num_workers, progress=False)
    except DataError:
        pass
    good: list[Path] = []
    images: list[torch.Tensor] = []
    for p in paths:
        try:
            images.append(preprocess_images([p], dm.stain, dm.geometry, num_workers=1, progress=False))
            good.append(p)
        except DataError as exc:
            skipped.add(p, str(exc))
    size = dm.geometry.size
    return good, torch.cat(images) if images else torch.empty((0, 3, size, size), dtype=torch.uint8)


def run_images(model: TrainedModel, paths: Sequence[Path], skipped: Skipped, batch_size: int = 64) -> Iterator[Batch]:
    """Batches of features, logits and (when the model has F_φ) embeddings of every readable image."""
    module, dm = model.run.module, model.run.dm
    for start in range(0, len(paths), batch_size):
        good, images = preprocess(model, list(paths[start : start + batch_size]), skipped)
        if not good:
            continue
        with torch.no_grad():  # not inference_mode: preprocess_images' worker threads write into its output tensor
            out = outputs(module, dm.to_input(images.to(model.device)))
        emb = out["embeddings"]
        yield Batch(good, out["features"].float().cpu(), out["logits"].float().cpu(), emb.float().cpu() if emb is not None else None)


def refuse_output(processed: int, skipped: Skipped, strict: bool) -> int | None:
    """After the images: list what was skipped; the exit code when nothing may be written (nothing processed, or
    anything skipped under --strict), None when the output is written for the processed images."""
    if skipped.paths:
        print(f"skipped {len(skipped.paths)} input(s): {', '.join(skipped.paths)}", file=sys.stderr)
    if processed == 0:
        print("error: no image was processed; nothing written", file=sys.stderr)
        return 2
    if strict and skipped.paths:
        print(f"error: {len(skipped.paths)} input(s) skipped under --strict; nothing written", file=sys.stderr)
        return 2
    return None


def add_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments predict and embed share (and search query, but for RUN_DIR)."""
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder (run_config.json, checkpoints/)")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE_OR_FOLDER", help=f"image files, or folders searched for {', '.join(IMAGE_SUFFIXES)}")
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    add_run_options(parser)


def open_inputs(args: argparse.Namespace) -> tuple[TrainedModel, list[Path], Skipped]:
    """What `add_arguments` named, opened in the order that fails cheapest: --out's folder, the run, the images."""
    check_writable_dir(args.out.absolute().parent, "--out")
    skipped = Skipped()
    return open_run(args.run_dir, args.device, args.overrides), gather_images(args.inputs, skipped), skipped


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default 64)")
    parser.add_argument("--strict", action="store_true", help="write nothing and exit 2 if any input is skipped")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="patch the run's config, e.g. --set stain.reference=/new/place/ref.png")


def cli(body: Callable[[argparse.Namespace], int], parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse, run, and turn a user error (no checkpoint, a refused one, ...) into one `error:` line and its exit code."""
    args = parser.parse_args(argv)
    try:
        return body(args)
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
