"""Tiling one slide into patch files, and the output folder a killed run resumes from.

DIR/patches/<slide>/<domain>/<slide>_x<X>_y<Y>.png (X, Y: the region centre in level-0 px), DIR/thumbnails/
<slide>.png (the regions drawn), DIR/.tile/<slide>.csv (the slide's manifest rows, written atomically after
its last patch: the slide's done marker), DIR/manifest.csv (every done slide's rows, in slide-name order).
A slide without a marker is redone from scratch, so a re-run after a kill writes the same manifest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from masf_lightning.data.tile.grid import domain_name, plan_levels, read_patches, region_centres
from masf_lightning.data.tile.labels import ANNOTATION_COLUMN, Annotations
from masf_lightning.data.tile.slides import open_slide, positive_number
from masf_lightning.data.tile.tissue import THUMB_SIDE, TissueMask
from masf_lightning.errors import ConfigError

STATE = ".tile"
SETTINGS = "settings.json"


@dataclass
class TileJob:
    """One slide's work: where it is, how to tile it, and its labels."""

    path: Path
    name: str
    out: Path
    mpps: tuple[float, ...]
    size: int
    stride_um: float | None = None
    min_tissue: float = 0.5
    max_per_slide: int | None = None
    seed: int = 0
    reader: str = "tiffslide"
    tolerance: float = 0.02
    slide_mpp: float | None = None
    labels: dict[str, Any] = field(default_factory=dict)
    annotations: Path | None = None
    keep_unlabelled: bool = False
    progress: bool = False
    position: int = 0


@dataclass
class SlideResult:
    name: str
    rows: int = 0
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)


def marker(out: Path, name: str) -> Path:
    return out / STATE / f"{name}.csv"


def _atomic_write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def check_settings(out: Path, settings: dict[str, Any]) -> None:
    """A folder resumes only runs of the same settings; a new folder records them."""
    state = out / STATE
    state.mkdir(parents=True, exist_ok=True)
    path = state / SETTINGS
    if path.exists():
        before = json.loads(path.read_text())
        if before != settings:
            changed = ", ".join(k for k in sorted(set(before) | set(settings)) if before.get(k) != settings.get(k))
            raise ConfigError(f"--out {out}: holds patches tiled with other settings ({changed}); use another --out or remove it")
        return
    path.write_text(json.dumps(settings, indent=1, sort_keys=True))


def init_worker(lock: Any) -> None:
    """A --workers process: its per-slide bars share the parent's lock (no garbled lines)."""
    from tqdm.auto import tqdm

    tqdm.set_lock(lock)


def tile_slide(job: TileJob) -> SlideResult:
    """Tile one slide (or find it done); any failure to read it is a `skipped` result, never an exception."""
    result = SlideResult(job.name)
    done = marker(job.out, job.name)
    if done.exists():
        result.rows = len(pd.read_csv(done))
        return result
    patch_dir = job.out / "patches" / job.name
    shutil.rmtree(patch_dir, ignore_errors=True)  # a half-written slide is redone whole
    try:
        slide = open_slide(job.path, job.reader)
    except Exception as exc:  # unreadable or corrupt: skip it, the others go on
        result.skipped = f"{job.path} (cannot open: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        return result
    try:
        return _tile_open_slide(job, slide, result, patch_dir, done)
    except Exception as exc:  # a corrupt tile mid-way: the slide is skipped, its partial patches removed
        shutil.rmtree(patch_dir, ignore_errors=True)
        result.skipped = f"{job.path} (unreadable: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        return result
    finally:
        slide.close()


def _tile_open_slide(job: TileJob, slide, result: SlideResult, patch_dir: Path, done: Path) -> SlideResult:
    base_mpp = job.slide_mpp or positive_number(job.labels.get("mpp")) or slide.mpp
    if base_mpp is None:
        result.skipped = f"{job.path} (no µm per pixel in the file: give --slide-mpp or an mpp column in --labels)"
        return result
    plan = plan_levels(slide, base_mpp, job.mpps, job.tolerance)
    finer = [domain_name(m) for m, lv in plan.items() if lv is None]
    if finer:
        result.notes.append(f"note: {job.name} is {base_mpp:g} µm/px: {', '.join(finer)} finer than that, not tiled for it (never upsampled)")
    reachable = [m for m, lv in plan.items() if lv is not None]
    if not reachable:
        result.skipped = f"{job.path} (every requested µm/px is finer than its {base_mpp:g})"
        return result
    thumb, thumb_ds = slide.thumbnail(THUMB_SIDE)
    tissue = TissueMask(thumb, thumb_ds)
    snap = max(1, int(round(max(slide.level_downsample(plan[m]) for m in reachable))))
    centres = region_centres(
        slide, job.name, base_mpp, size=job.size, footprint_mpp=max(reachable), stride_um=job.stride_um,
        tissue=tissue, min_tissue=job.min_tissue, max_per_slide=job.max_per_slide, seed=job.seed, snap=snap,
    )  # fmt: skip
    notes = Annotations(job.annotations) if job.annotations else None
    extra = {k: v for k, v in job.labels.items() if k not in ("patient", "mpp")}
    rows, drawn = [], []
    from tqdm.auto import tqdm

    bar = tqdm(centres, desc=job.name, unit="region", position=job.position, leave=False, disable=not job.progress)
    for x, y, frac in bar:
        label = notes.label(x, y) if notes else None
        if notes and label is None and not job.keep_unlabelled:
            drawn.append((x, y, False))
            continue
        drawn.append((x, y, True))
        for m, patch in read_patches(slide, base_mpp, {m: plan[m] for m in reachable}, x, y, job.size).items():
            rel = Path("patches", job.name, domain_name(m), f"{job.name}_x{x}_y{y}.png")
            (job.out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(patch).save(job.out / rel, compress_level=1)
            row = {"path": rel.as_posix(), "domain": domain_name(m), "mpp": m, "patient": str(job.labels.get("patient") or job.name),
                   "slide": job.name, "x": x, "y": y, "tissue": round(frac, 3), **extra}  # fmt: skip
            if notes:
                row[ANNOTATION_COLUMN] = label if label is not None else "unlabelled"
            rows.append(row)
    bar.close()
    _thumbnail(job, thumb, thumb_ds, base_mpp, max(reachable), drawn)
    frame = pd.DataFrame(rows, columns=None if rows else ["path", "domain", "mpp", "patient", "slide", "x", "y"])
    _atomic_write_csv(frame, done)
    result.rows = len(frame)
    if not rows:
        result.notes.append(f"note: {job.name}: no region kept (tissue below --min-tissue {job.min_tissue}, or outside every annotation)")
    return result


def _thumbnail(job: TileJob, thumb: np.ndarray, ds: float, base_mpp: float, coarse: float, drawn: list) -> None:
    """The slide's thumbnail with each region's coarsest patch drawn: green kept, orange outside every annotation."""
    image = Image.fromarray(thumb)
    draw = ImageDraw.Draw(image)
    half = job.size * coarse / base_mpp / 2 / ds
    for x, y, kept in drawn:
        cx, cy = x / ds, y / ds
        draw.rectangle((cx - half, cy - half, cx + half, cy + half), outline=(0, 170, 0) if kept else (255, 140, 0), width=2)
    path = job.out / "thumbnails" / f"{job.name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def write_manifest(out: Path, names: list[str]) -> pd.DataFrame:
    """DIR/manifest.csv from the done slides among `names`, in name order (atomic); returns it."""
    frames = [pd.read_csv(marker(out, n), dtype={"patient": str, "slide": str}) for n in sorted(names) if marker(out, n).exists()]
    frames = [f for f in frames if len(f)]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "domain", "mpp", "patient", "slide", "x", "y"])
    _atomic_write_csv(frame, out / "manifest.csv")
    return frame
