"""Regions and patches: where the regions of a slide lie, and one patch per µm/px centred on each.

A region is a point of a grid over the slide (level-0 px); its patch at m µm/px covers size × m µm, read
from the pyramid level with the largest µm/px not above m and reduced with Lanczos (anti-aliased), never
upsampled: an m finer than the slide's own is skipped for that slide. Patches of one region share a centre.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from masf_lightning.data.tile.slides import Slide
from masf_lightning.data.tile.tissue import TissueMask

MARGIN = 3  # level px read around a box, the Lanczos filter's support


def domain_name(mpp: float) -> str:
    """The domain a patch at `mpp` µm/px belongs to: 0.25mpp, 2mpp."""
    return f"{mpp:g}mpp"


def plan_levels(slide: Slide, base_mpp: float, mpps: Sequence[float], tolerance: float) -> dict[float, int | None]:
    """Each requested µm/px → the level read for it (the coarsest not finer than it), or None when the slide is
    coarser than it. `tolerance`: a level up to that fraction coarser than asked still counts (0.252 for 0.25)."""
    plan: dict[float, int | None] = {}
    for m in mpps:
        ok = [lv for lv in range(len(slide.level_dimensions)) if base_mpp * slide.level_downsample(lv) <= m * (1 + tolerance)]
        plan[m] = max(ok, key=lambda lv: slide.level_downsample(lv)) if ok else None
    return plan


def region_centres(
    slide: Slide,
    name: str,
    base_mpp: float,
    *,
    size: int,
    footprint_mpp: float,
    stride_um: float | None,
    tissue: TissueMask,
    min_tissue: float,
    max_per_slide: int | None,
    seed: int,
    snap: int,
) -> list[tuple[int, int, float]]:
    """(x, y, tissue fraction) of the kept region centres (level-0 px), row by row: a grid whose step is
    `stride_um` (default: the coarsest patch's width, so those do not overlap), the coarsest patch inside the
    slide and at least `min_tissue` tissue; at most `max_per_slide`, drawn with `seed` and the slide's name."""
    w0, h0 = slide.level_dimensions[0]
    half = size * footprint_mpp / base_mpp / 2
    step = (stride_um or size * footprint_mpp) / base_mpp
    axes = []
    for extent in (w0, h0):
        n = int(math.floor((extent - 2 * half) / step)) + 1 if extent >= 2 * half else 0
        start = (extent - (n - 1) * step) / 2
        centres = [int(round((start + i * step) / snap)) * snap for i in range(n)]
        axes.append([c for c in centres if c - half >= 0 and c + half <= extent])
    kept = []
    for y in axes[1]:
        for x in axes[0]:
            frac = tissue.fraction(x - half, y - half, x + half, y + half)
            if frac >= min_tissue:
                kept.append((x, y, frac))
    if max_per_slide is not None and len(kept) > max_per_slide:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        chosen = np.sort(rng.choice(len(kept), max_per_slide, replace=False))
        kept = [kept[i] for i in chosen]
    return kept


def read_patches(
    slide: Slide, base_mpp: float, plan: dict[float, int | None], x: int, y: int, size: int
) -> dict[float, np.ndarray]:
    """The patches (size × size RGB) of the region centred at level-0 (x, y), one per planned µm/px; each level
    is read once, as the box of its largest µm/px, and the others cut from it."""
    by_level: dict[int, list[float]] = {}
    for m, level in plan.items():
        if level is not None:
            by_level.setdefault(level, []).append(m)
    out: dict[float, np.ndarray] = {}
    for level, ms in by_level.items():
        ds = slide.level_downsample(level)
        lmpp = base_mpp * ds
        cx, cy = x / ds, y / ds
        big = size * max(ms) / lmpp
        x0, y0 = int(math.floor(cx - big / 2)) - MARGIN, int(math.floor(cy - big / 2)) - MARGIN
        n = int(math.ceil(big)) + 2 * MARGIN + 2
        region = slide.read(level, x0, y0, n, n)
        image = None
        for m in ms:
            width = size * m / lmpp
            bx, by = cx - width / 2 - x0, cy - width / 2 - y0
            if abs(width - size) < 1e-6 and bx == int(bx) and by == int(by):
                out[m] = np.ascontiguousarray(region[int(by) : int(by) + size, int(bx) : int(bx) + size])
                continue
            image = image or Image.fromarray(region)
            box = (bx, by, bx + width, by + width)
            out[m] = np.asarray(image.resize((size, size), Image.Resampling.LANCZOS, box=box))
    return out
