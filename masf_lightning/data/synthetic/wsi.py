"""Whole-slide images for tests and studies: pyramidal JPEG-tiled TIFFs of the synthetic tissue.

The base level is rendered once from the procedural slide (so the same cells appear at every level, each
level a 2× box reduction of the one above), on a white background outside an irregular tissue outline.
A slide holds two tumour types, one each side of a wavy boundary; the GeoJSON beside it (QuPath's export
format: polygons in level-0 pixels with a classification name) outlines most of each, leaving a strip
unannotated between them. µm per pixel goes into the TIFF resolution tags (centimetres), and optionally
an Aperio-style ImageDescription (`...|MPP = 0.25`); `mpp=None` writes neither (a slide a user must give
--slide-mpp for). `python -m masf_lightning.data.synthetic.wsi OUT --slides 4` writes a folder of them.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from masf_lightning.data.breakhis import BENIGN_TYPES, TUMOR_TYPES
from masf_lightning.data.synthetic.dataset import _slide
from masf_lightning.data.synthetic.primitives import _View

TILE = 256  # TIFF tile side (px)
BACKGROUND = 240  # the glass: near white, as a scanner sees it
_MALIGNANT = tuple(t for t in TUMOR_TYPES if t not in BENIGN_TYPES)


def _render(code: str, seed: int, patient: int, size: int, mpp: float) -> np.ndarray:
    slide = _slide(seed, code, patient)
    view = _View(6000.0, 6000.0, slide.theta, mpp, size, size)
    return slide.render(view, np.random.default_rng([seed, patient, 0x575349]))


def _smooth_noise(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """A smooth random curve on [0, 1] (n control points, cosine-interpolated to `size` samples)."""
    ctrl = rng.uniform(-1.0, 1.0, n + 1)
    t = np.linspace(0.0, n, size)
    i = np.minimum(t.astype(int), n - 1)
    f = (1 - np.cos((t - i) * math.pi)) / 2
    return ctrl[i] * (1 - f) + ctrl[i + 1] * f


def render_wsi(size: int, *, seed: int = 0, patient: int = 0, mpp: float = 0.25) -> tuple[np.ndarray, dict, str, str]:
    """The base level (size × size RGB) and its GeoJSON: benign tissue on the left, malignant on the right."""
    rng = np.random.default_rng([seed, patient, 0x57534A])
    left = BENIGN_TYPES[patient % len(BENIGN_TYPES)]
    right = _MALIGNANT[patient % len(_MALIGNANT)]
    img = _render(left, seed, patient, size, mpp)
    other = _render(right, seed, patient, size, mpp)
    yy = np.arange(size)
    boundary = (0.5 + 0.06 * _smooth_noise(rng, 3, size)) * size  # x of the boundary per row
    right_side = np.arange(size)[None, :] >= boundary[:, None]
    img[right_side] = other[right_side]
    # tissue: a wobbly disc covering most of the slide; glass outside
    ang = np.linspace(0, 2 * math.pi, 360, endpoint=False)
    radius = (0.40 + 0.05 * _smooth_noise(rng, 6, 361)[:360]) * size
    cy, cx = np.mgrid[0:size, 0:size]
    r = np.hypot(cx - size / 2, cy - size / 2)
    a = np.mod(np.arctan2(cy - size / 2, cx - size / 2), 2 * math.pi)
    outside = r > np.interp(a, ang, radius, period=2 * math.pi)
    glass = BACKGROUND + rng.normal(0.0, 2.0, (int(outside.sum()), 3))
    img[outside] = np.clip(glass, 0, 255).astype(np.uint8)
    # annotations: each side minus a strip of 4 % of the width along the boundary, as polygons in level-0 px
    step = max(size // 32, 1)
    rows = np.append(yy[::step], size - 1)
    gap = 0.04 * size
    left_poly = [[0.0, 0.0]] + [[float(boundary[y] - gap), float(y)] for y in rows] + [[0.0, float(size - 1)], [0.0, 0.0]]
    right_poly = [[float(size - 1), 0.0]] + [[float(boundary[y] + gap), float(y)] for y in rows]
    right_poly += [[float(size - 1), float(size - 1)], [float(size - 1), 0.0]]
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [poly]},
            "properties": {"objectType": "annotation", "classification": {"name": name, "color": color}},
        }
        for poly, name, color in ((left_poly, "benign", [0, 160, 0]), (right_poly, "malignant", [200, 0, 0]))
    ]
    return img, {"type": "FeatureCollection", "features": features}, left, right


def write_wsi(
    path: str | Path,
    size: int = 2048,
    *,
    seed: int = 0,
    patient: int = 0,
    mpp: float | None = 0.25,
    levels: int = 4,
    aperio: bool = False,
    quality: int = 90,
    repeat: int = 1,
) -> Path:
    """A pyramidal JPEG-tiled TIFF at `path` (levels 2× apart) and its GeoJSON beside it (`<stem>.geojson`).
    `repeat` > 1: a large slide quickly (benchmarks), the base rendered at size / repeat and tiled repeat × repeat
    (the GeoJSON then outlines the first copy only)."""
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base, geojson, _, _ = render_wsi(size // repeat, seed=seed, patient=patient, mpp=mpp or 0.25)
    base = np.tile(base, (repeat, repeat, 1)) if repeat > 1 else base
    size = base.shape[0]
    pyramid = [base]
    for _ in range(levels - 1):
        im = Image.fromarray(pyramid[-1])
        pyramid.append(np.asarray(im.reduce(2)))
    desc = ""
    if aperio and mpp:
        desc = f"Aperio Image Library v12.0.0 \n{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE}) JPEG/RGB Q={quality}|AppMag = {10 / mpp:g}|MPP = {mpp}"
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp) as tif:
        for i, level in enumerate(pyramid):
            kw = {}
            if mpp:
                per_cm = 1e4 / (mpp * 2**i)
                kw = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(
                level,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": quality},
                subfiletype=0 if i == 0 or desc else 1,  # SVS levels are not flagged reduced
                description=desc if i == 0 else None,
                metadata=None,
                **kw,
            )
            if i == 0 and desc:  # an SVS has its thumbnail (stripped, not tiled) as the second page
                thumb = Image.fromarray(pyramid[0]).reduce(max(size // 256, 1))
                tif.write(np.asarray(thumb), photometric="rgb", compression="jpeg", subfiletype=0, description=desc, metadata=None)
    tmp.replace(path)
    path.with_suffix(".geojson").write_text(json.dumps(geojson))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m masf_lightning.data.synthetic.wsi", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--size", type=int, default=2048, help="base level side (px)")
    parser.add_argument("--mpp", type=float, default=0.25, help="base level µm per pixel")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aperio", action="store_true", help="also write an Aperio-style ImageDescription with MPP")
    args = parser.parse_args(argv)
    from tqdm.auto import tqdm

    rows = ["slide,patient"]
    for p in tqdm(range(args.slides), desc="slides", unit="slide"):
        name = f"slide{p:03d}"
        write_wsi(args.out / f"{name}.tif", args.size, seed=args.seed, patient=p, mpp=args.mpp, levels=args.levels, aperio=args.aperio)
        rows.append(f"{name},P{p:03d}")
    (args.out / "slides.csv").write_text("\n".join(rows) + "\n")
    print(f"{args.slides} slides, their GeoJSON and slides.csv in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
