"""`python -m masf_lightning.data.tile SLIDES_OR_FOLDERS... --mpp 2 1 0.5 0.25 --size 224 --out DIR`.

Writes DIR/manifest.csv (path, domain = <mpp>mpp, mpp, patient, slide, x, y, tissue, label columns) and the
patches, for `python train.py data=manifest data.manifest=DIR/manifest.csv`. Re-running resumes: finished
slides are kept, a half-written one is redone. An unreadable slide is skipped with one `skipped:` line; the
exit code is non-zero only when nothing was written (or with --strict).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections.abc import Sequence
from pathlib import Path

from masf_lightning.data.tile.labels import SLIDE_SUFFIXES, read_slide_table
from masf_lightning.data.tile.slides import READERS
from masf_lightning.data.tile.writer import TileJob, check_settings, init_worker, tile_slide, write_manifest
from masf_lightning.errors import ConfigError, MasfError

BESIDE = "beside each slide"  # --annotations without a folder


def find_slides(inputs: Sequence[Path]) -> list[Path]:
    """Slide files named, and those in folders named (recursively, by extension), in path order."""
    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(SLIDE_SUFFIXES))
        elif p.exists():
            found.append(p)
        else:
            raise ConfigError(f"{p}: no such file or folder")
    return found


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m masf_lightning.data.tile", description=__doc__.splitlines()[0])
    p.add_argument("slides", nargs="+", type=Path, help="slide files, or folders searched for them")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumed if it holds an earlier run)")
    p.add_argument("--mpp", type=float, nargs="+", default=[2.0, 1.0, 0.5, 0.25], help="µm per pixel of the patches")
    p.add_argument("--size", type=int, default=224, help="patch side in pixels")
    p.add_argument("--stride-um", type=float, help="grid step in µm (default: the coarsest patch's width)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="tissue fraction of the coarsest patch to keep a region")
    p.add_argument("--max-per-slide", type=int, help="at most this many regions per slide (a seeded draw)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reader", choices=READERS, default="tiffslide")
    p.add_argument("--mpp-tolerance", type=float, default=0.02, help="a level this fraction coarser than asked still counts")
    p.add_argument("--slide-mpp", type=float, help="µm/px of the base level for slides whose file does not say")
    p.add_argument("--labels", type=Path, help="slide table: slide, patient, mpp (optional), label columns")
    p.add_argument("--annotations", nargs="?", const=BESIDE,
                   help="QuPath GeoJSON per slide: <slide>.geojson in this folder (no folder: beside each slide)")  # fmt: skip
    p.add_argument("--keep-unlabelled", action="store_true", help="keep patches outside every annotation (class 'unlabelled')")
    p.add_argument("--workers", type=int, default=1, help="slides tiled in parallel processes")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any slide is skipped")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    for key, value in (("--size", args.size), ("--workers", args.workers)):
        if value < 1:
            raise ConfigError(f"{key} {value}: must be at least 1")
    if any(m <= 0 for m in args.mpp):
        raise ConfigError(f"--mpp {' '.join(map(str, args.mpp))}: every value must be > 0")
    if args.labels is not None and not args.labels.is_file():
        raise ConfigError(f"--labels {args.labels}: no such file")
    if not 0 <= args.min_tissue <= 1:
        raise ConfigError(f"--min-tissue {args.min_tissue}: must be in [0, 1]")
    return args


def _jobs(args: argparse.Namespace, slides: list[Path]) -> tuple[list[TileJob], list[str]]:
    table = read_slide_table(args.labels) if args.labels else None
    jobs, skipped, names = [], [], {}
    mpps = tuple(sorted(set(args.mpp), reverse=True))
    for path in slides:
        name = path.name[: -len(".ome.tif")] if path.name.lower().endswith(".ome.tif") else path.stem
        if name in names:
            raise ConfigError(f"{path}: two slides named {name} ({names[name]}); rename one")
        names[name] = path
        labels = {}
        if table is not None:
            if name not in table.index:
                skipped.append(f"{path} (not in --labels {args.labels})")
                continue
            labels = {k: v for k, v in table.loc[name].to_dict().items() if v == v}  # NaN cells dropped
        annotations = None
        if args.annotations is not None:
            folder = path.parent if args.annotations == BESIDE else Path(args.annotations)
            annotations = folder / f"{name}.geojson"
            if not annotations.exists():
                skipped.append(f"{path} (no annotations {annotations})")
                continue
        jobs.append(TileJob(
            path=path, name=name, out=args.out, mpps=mpps, size=args.size, stride_um=args.stride_um,
            min_tissue=args.min_tissue, max_per_slide=args.max_per_slide, seed=args.seed, reader=args.reader,
            tolerance=args.mpp_tolerance, slide_mpp=args.slide_mpp, labels=labels, annotations=annotations,
            keep_unlabelled=args.keep_unlabelled, progress=not args.no_progress,
        ))  # fmt: skip
    return jobs, skipped


def _settings(args: argparse.Namespace) -> dict:
    keys = ("mpp", "size", "stride_um", "min_tissue", "max_per_slide", "seed", "reader", "mpp_tolerance", "slide_mpp", "keep_unlabelled")
    out = {k: getattr(args, k) for k in keys}
    out["mpp"] = sorted(set(out["mpp"]), reverse=True)
    out["labels"] = args.labels.read_text() if args.labels else None
    out["annotations"] = None if args.annotations is None else str(args.annotations)
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    slides = find_slides(args.slides)
    if not slides:
        raise ConfigError(f"{' '.join(map(str, args.slides))}: no slide files ({', '.join(SLIDE_SUFFIXES)})")
    args.out.mkdir(parents=True, exist_ok=True)
    check_settings(args.out, _settings(args))
    jobs, skipped = _jobs(args, slides)
    for line in skipped:
        print(f"skipped: {line}", file=sys.stderr)
    workers = min(args.workers, max(len(jobs), 1))
    for i, job in enumerate(jobs):
        job.position = 1 + i % workers
    overall = tqdm(total=len(jobs), desc="slides", unit="slide", position=0, disable=args.no_progress)
    patches = 0

    def report(result) -> None:  # noqa: ANN001
        nonlocal patches
        for line in result.notes:
            tqdm.write(line, file=sys.stderr)
        if result.skipped:
            skipped.append(result.skipped)
            tqdm.write(f"skipped: {result.skipped}", file=sys.stderr)
        patches += result.rows
        overall.set_postfix(patches=patches)
        overall.update()

    if workers > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold threads (torch, tqdm's monitor)
        lock = ctx.RLock()
        tqdm.set_lock(lock)
        with ctx.Pool(workers, initializer=init_worker, initargs=(lock,)) as pool:
            for result in pool.imap_unordered(tile_slide, jobs):
                report(result)
    else:
        for job in jobs:
            report(tile_slide(job))
    overall.close()
    frame = write_manifest(args.out, [j.name for j in jobs])
    if skipped:
        print(f"{len(skipped)} slide(s) skipped:\n" + "\n".join(f"  {s}" for s in skipped), file=sys.stderr)
    domains = ", ".join(f"{d} {n}" for d, n in frame["domain"].value_counts(sort=False).items()) if len(frame) else "none"
    print(f"{len(frame)} patches from {frame['slide'].nunique() if len(frame) else 0} slide(s) ({domains}): {args.out / 'manifest.csv'}")
    if len(frame) == 0:
        return 1
    return 1 if args.strict and skipped else 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
