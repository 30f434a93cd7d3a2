"""Procedural "synthetic BreaKHis": the embedded default dataset and the test data.

Each patient is one procedurally drawn H&E slide (glands, ducts, nests, mucin, papillae, stroma
and nuclei defined at every point of a continuous slide in micrometres). An image is a field of
view of that slide: 40x sees 1.6 mm, 400x a 10x narrower window of it, so the class cues shift
with magnification exactly as in the real data: architecture at 40x, nuclei at 400x. The slide
is rendered through a Beer-Lambert H&E model with per-patient stain vectors, intensities and
illumination, so stain normalization has work to do. Everything derives from `seed`: the same
seed gives byte-identical PNGs.

The tree follows the official BreaKHis layout and naming, so the same index code reads both.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from masf_lightning.data.breakhis import BENIGN_TYPES, MAGNIFICATIONS, SUBTYPE_FOLDERS, TUMOR_TYPES
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.io import write_json_atomic

__all__ = ["MARKER_NAME", "generate_synthetic_breakhis", "expected_files", "render_image", "main"]

# The generator's view of the canonical dataset constants: type → (malignancy folder, subtype folder).
_TYPES: dict[str, tuple[str, str]] = {
    t: ("benign" if t in BENIGN_TYPES else "malignant", SUBTYPE_FOLDERS[t]) for t in TUMOR_TYPES
}
_MAGNIFICATIONS: tuple[int, ...] = MAGNIFICATIONS

MARKER_NAME = ".synthetic_breakhis.json"
_STAGING_PREFIX = ".synthetic_breakhis.partial-"
# Bump whenever the pixels a given seed produces change: an old tree then no longer matches.
_FORMAT_VERSION = 1
_MAX_SIZE = (700, 460)
_MIN_SIDE = 16
# Field of view at 40x (micrometres across the image width); BreaKHis 700 px at 40x is ~1.6 mm.
_FOV_40X_UM = 1600.0
# Region of the slide the regions of interest are drawn from (um); wide enough for distinct views.
_SLIDE_UM = 9000.0

_F32 = np.float32


# ---------------------------------------------------------------------------------------------
# Hashing and noise: every random quantity of a slide is a pure function of position and seed,
# which is what makes the four magnifications views of one consistent slide.
# ---------------------------------------------------------------------------------------------
def _mix32(h: np.ndarray) -> np.ndarray:
    """Avalanche a uint32 array (lowbias32): nearby cell indices get unrelated random draws."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def _hash_cells(i: np.ndarray, j: np.ndarray, key: int) -> np.ndarray:
    h = _mix32(i.astype(np.uint32) * np.uint32(0x9E3779B1) ^ np.uint32(key & 0xFFFFFFFF))
    return _mix32(h ^ (j.astype(np.uint32) * np.uint32(0x85EBCA77)))


def _name_key(name: str) -> int:
    # crc32, not hash(): Python salts str hashes per process, which would break determinism
    return zlib.crc32(name.encode())


class _Gradients:
    """A periodic lattice of unit gradients (Perlin noise); each field reads it rotated and shifted."""

    SHIFT = 10
    N = 1 << SHIFT
    # measured: the raw noise has std 0.215; scaled to unit variance, its gradient norm near the
    # zero line averages 4.2 per lattice unit (turns |noise| into a distance to that line)
    NORM = 1.0 / 0.215
    GRAD = 4.2

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x6E6F6973]))
        angle = rng.uniform(0.0, 2.0 * np.pi, self.N * self.N)
        self.gx = np.cos(angle).astype(_F32)
        self.gy = np.sin(angle).astype(_F32)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Unit-variance gradient noise at lattice coordinates (x, y)."""
        m = self.N - 1
        xf = np.floor(x)
        yf = np.floor(y)
        fx = x - xf
        fy = y - yf
        ix = xf.astype(np.int32) & m
        iy = yf.astype(np.int32) & m
        ix1 = (ix + 1) & m
        r0 = iy << self.SHIFT
        r1 = ((iy + 1) & m) << self.SHIFT
        gx, gy = self.gx, self.gy
        fx1 = fx - 1
        fy1 = fy - 1
        i = r0 + ix
        n00 = gx[i] * fx + gy[i] * fy
        i = r0 + ix1
        n10 = gx[i] * fx1 + gy[i] * fy
        i = r1 + ix
        n01 = gx[i] * fx + gy[i] * fy1
        i = r1 + ix1
        n11 = gx[i] * fx1 + gy[i] * fy1
        sx = fx * fx * fx * (fx * (fx * 6 - 15) + 10)
        sy = fy * fy * fy * (fy * (fy * 6 - 15) + 10)
        a = n00 + sx * (n10 - n00)
        b = n01 + sx * (n11 - n01)
        return (a + sy * (b - a)) * _F32(self.NORM)


class _Pts(NamedTuple):
    """Points on the slide as an exact float64 origin plus float32 offsets (keeps um precision far out)."""

    cx: float
    cy: float
    dx: np.ndarray
    dy: np.ndarray

    def shifted(self, ddx: np.ndarray | float, ddy: np.ndarray | float) -> _Pts:
        return _Pts(self.cx, self.cy, self.dx + ddx, self.dy + ddy)


def _ramp(v: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a pixel by the region v > 0 (v a signed distance in um): a cheap anti-aliased edge."""
    return np.clip(v * _F32(1.0 / width) + _F32(0.5), 0.0, 1.0)


def _lod(feature_um: float, u: float, lo: float = 0.7, hi: float = 2.0) -> float:
    """How much of a texture of size feature_um survives at u um/pixel (0: below the pixel, averaged out)."""
    return float(np.clip((feature_um / u - lo) / (hi - lo), 0.0, 1.0))


# ---------------------------------------------------------------------------------------------
# Fields of view
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _View:
    """One image: centre (um on the slide), rotation, um per pixel, size in pixels."""

    cx: float
    cy: float
    theta: float
    u: float
    w: int
    h: int

    def offsets(self, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """Slide offsets from the centre of every `stride`-th pixel (one extra row/column for interpolation)."""
        nx = (self.w - 1) // stride + 2 if stride > 1 else self.w
        ny = (self.h - 1) // stride + 2 if stride > 1 else self.h
        a = ((np.arange(nx) * stride + 0.5 - self.w / 2) * self.u).astype(_F32)
        b = ((np.arange(ny) * stride + 0.5 - self.h / 2) * self.u).astype(_F32)
        c, s = _F32(math.cos(self.theta)), _F32(math.sin(self.theta))
        dx = a[None, :] * c - b[:, None] * s
        dy = a[None, :] * s + b[:, None] * c
        return dx, dy

    def upsample(self, coarse: np.ndarray, stride: int, to: int = 1) -> np.ndarray:
        """Bilinear interpolation of a field sampled by offsets(stride) onto the grid of offsets(to)."""
        if stride == to:
            return coarse
        ny, nx = (self.h, self.w) if to == 1 else ((self.h - 1) // to + 2, (self.w - 1) // to + 2)
        py = np.minimum(np.arange(ny) * (to / stride), coarse.shape[0] - 1.001)
        px = np.minimum(np.arange(nx) * (to / stride), coarse.shape[1] - 1.001)
        iy = py.astype(np.int64)
        ix = px.astype(np.int64)
        fy = (py - iy).astype(_F32)[:, None]
        fx = (px - ix).astype(_F32)[None, :]
        rows = coarse[iy] * (1 - fy) + coarse[iy + 1] * fy
        return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx

    def pixel_of(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (column, row) of slide offsets from the centre: the inverse of offsets()."""
        c, s = _F32(math.cos(self.theta)), _F32(math.sin(self.theta))
        return (dx * c + dy * s) / _F32(self.u) + _F32(self.w / 2 - 0.5), (dy * c - dx * s) / _F32(
            self.u
        ) + _F32(self.h / 2 - 0.5)

    def half_extent(self, margin: float) -> tuple[float, float]:
        c, s = abs(math.cos(self.theta)), abs(math.sin(self.theta))
        hw, hh = self.w * self.u / 2, self.h * self.u / 2
        return c * hw + s * hh + margin, s * hw + c * hh + margin


# ---------------------------------------------------------------------------------------------
# Jittered cell grids: glands, clusters and nuclei are one object per cell of a grid, with the
# object's random draws hashed from the cell index (so every view sees the same objects).
# ---------------------------------------------------------------------------------------------
class _Cells:
    """The cells of one grid covering a view's bounding box, with per-cell random draws."""

    def __init__(self, key: int, view: _View, spacing: float, jitter: float, margin: float) -> None:
        self.s = spacing
        self.jitter = jitter
        hx, hy = view.half_extent(margin)
        i0 = math.floor((view.cx - hx) / spacing) - 2
        i1 = math.floor((view.cx + hx) / spacing) + 2
        j0 = math.floor((view.cy - hy) / spacing) - 2
        j1 = math.floor((view.cy + hy) / spacing) + 2
        self.nx, self.ny = i1 - i0 + 1, j1 - j0 + 1
        ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1))
        self.h = _hash_cells(ii.ravel(), jj.ravel(), key)
        jx = (self.rand(101) - 0.5) * jitter
        jy = (self.rand(102) - 0.5) * jitter
        self.x = ((ii.ravel() + 0.5 + jx) * spacing - view.cx).astype(_F32)
        self.y = ((jj.ravel() + 0.5 + jy) * spacing - view.cy).astype(_F32)
        self.x0 = i0 * spacing - view.cx
        self.y0 = j0 * spacing - view.cy
        self.cx, self.cy = view.cx, view.cy

    @property
    def n(self) -> int:
        return self.h.size

    @property
    def reach(self) -> float:
        """Largest object radius for which the 2x2 nearest cells are the only ones that can cover a point."""
        return (1.0 - self.jitter / 2) * self.s * 0.98

    def pts(self) -> _Pts:
        return _Pts(self.cx, self.cy, self.x, self.y)

    def rand(self, k: int) -> np.ndarray:
        """Uniform [0, 1) per cell, stream k."""
        h = _mix32(self.h ^ np.uint32((k * 0x27D4EB2F) & 0xFFFFFFFF))
        return (h >> np.uint32(8)).astype(_F32) * _F32(2.0**-24)

    def normal(self, k: int) -> np.ndarray:
        u1 = self.rand(k) + _F32(2.0**-25)
        u2 = self.rand(k + 7919)
        return np.sqrt(-2 * np.log(u1)) * np.cos(_F32(2 * np.pi) * u2)

    def candidates(self, dx: np.ndarray, dy: np.ndarray) -> Iterator[np.ndarray]:
        """Flat indices of the 2x2 cells nearest to each point (the only ones that can reach it)."""
        qx = (dx - _F32(self.x0)) * _F32(1 / self.s) - _F32(0.5)
        qy = (dy - _F32(self.y0)) * _F32(1 / self.s) - _F32(0.5)
        ix = np.clip(np.floor(qx).astype(np.int32), 0, self.nx - 2)
        iy = np.clip(np.floor(qy).astype(np.int32), 0, self.ny - 2)
        base = iy * self.nx + ix
        yield base
        yield base + 1
        yield base + self.nx
        yield base + self.nx + 1


class _Ellipses:
    """Gland-like objects on a cell grid: nearest normalized elliptical radius plus one per-object value."""

    def __init__(
        self,
        cells: _Cells,
        a: np.ndarray,
        b: np.ndarray,
        angle: np.ndarray,
        present: np.ndarray,
        extra: np.ndarray,
    ) -> None:
        scale = np.minimum(1.0, cells.reach / np.maximum(a, b))
        a, b = a * scale, b * scale
        self.cells = cells
        c, s = np.cos(angle).astype(_F32), np.sin(angle).astype(_F32)
        ia, ib = _F32(1) / a, _F32(1) / b
        # rows of the matrix mapping an offset to normalized ellipse coordinates
        self.m = [(c * ia).astype(_F32), (s * ia).astype(_F32), (-s * ib).astype(_F32), (c * ib).astype(_F32)]
        self.pen = np.where(present, 0.0, 1e6).astype(_F32)
        self.extra = extra.astype(_F32)

    def nearest(self, p: _Pts) -> tuple[np.ndarray, np.ndarray]:
        best = None
        extra = None
        for ci in self.cells.candidates(p.dx, p.dy):
            ex = p.dx - self.cells.x[ci]
            ey = p.dy - self.cells.y[ci]
            u = ex * self.m[0][ci] + ey * self.m[1][ci]
            v = ex * self.m[2][ci] + ey * self.m[3][ci]
            r2 = u * u + v * v + self.pen[ci]
            if best is None:
                best, extra = r2, self.extra[ci]
            else:
                closer = r2 < best
                best = np.where(closer, r2, best)
                extra = np.where(closer, self.extra[ci], extra)
        assert best is not None and extra is not None
        return np.sqrt(best), extra


# ---------------------------------------------------------------------------------------------
# Nuclei
# ---------------------------------------------------------------------------------------------
@dataclass
class _NucSpec:
    """A population of nuclei: size, shape, chromatin and how densely it fills its compartment."""

    spacing: float  # um between cells
    density: float  # probability a cell of the compartment shows a nucleus
    r: float  # mean equivalent radius (um)
    r_cv: float = 0.08  # pleomorphism of size
    aspect: tuple[float, float] = (0.75, 1.0)  # minor/major axis
    irregular: float = 0.02  # contour harmonics amplitude
    od: float = 1.2  # hematoxylin optical density
    od_cv: float = 0.08
    vesicular: float = 0.1  # 0 solid dark chromatin .. 1 pale centre, dark rim
    texture: float = 0.15  # chromatin granularity gain
    grain: float = 1.0  # chromatin grain size (um)
    nucleolus_p: float = 0.05
    nucleolus_r: float = 0.5
    mitosis_p: float = 0.0
    lymph_p: float = 0.0  # small round dark lymphocytes among stromal cells
    jitter: float = 0.55  # of cell centres, in cell widths: 0 a lattice, 1 nearly random
    expected: float = 0.0  # mean OD x area / cell area, filled in by _expected_od

    def lod(self, u: float) -> float:
        """Weight of explicitly drawn nuclei vs their averaged density (nuclei below ~1.5 px blur into tone)."""
        return float(np.clip((2 * self.r / u - 1.5) / 2.0, 0.0, 1.0))


def _nucleus_params(
    spec: _NucSpec,
    rand: Callable[[int], np.ndarray],
    normal: Callable[[int], np.ndarray],
    present: np.ndarray,
    angle: np.ndarray | None,
    reach: float,
) -> dict[str, np.ndarray]:
    """Per-nucleus shape and stain from per-cell random streams (shared by rendering and expectations)."""
    n = present.size
    r = spec.r * np.exp(spec.r_cv * normal(1) - spec.r_cv**2 / 2)
    asp = spec.aspect[0] + (spec.aspect[1] - spec.aspect[0]) * rand(2)
    if angle is None:
        angle = np.pi * rand(3)
    od = spec.od * np.exp(spec.od_cv * normal(4))
    ves = spec.vesicular * rand(5)
    irr = np.full(n, spec.irregular, _F32)
    has_nucleolus = rand(6) < spec.nucleolus_p
    mitosis = rand(7) < spec.mitosis_p
    lymph = rand(8) < spec.lymph_p
    # mitotic figures: a dense, ragged chromosome plate
    asp = np.where(mitosis, 0.3, asp)
    r = np.where(mitosis, r * 0.8, r)
    od = np.where(mitosis, od * 1.6, od)
    ves = np.where(mitosis, 0.0, ves)
    irr = np.where(mitosis, 0.12, irr)
    has_nucleolus &= ~mitosis
    # lymphocytes: small, round, very dark
    r = np.where(lymph, 2.3, r)
    asp = np.where(lymph, 0.92, asp)
    od = np.where(lymph, spec.od * 1.45, od)
    ves = np.where(lymph, 0.0, ves)
    a = r / np.sqrt(asp)
    b = r * np.sqrt(asp)
    bound = a * (1 + 2.2 * irr)
    shrink = np.minimum(1.0, reach / bound)
    a, b, r, bound = a * shrink, b * shrink, r * shrink, bound * shrink
    nr = spec.nucleolus_r * (0.7 + 0.6 * rand(9)) * np.sqrt(r / spec.r)
    ang_n = 2 * np.pi * rand(10)
    off = 0.35 * rand(11) * b
    return {
        "a": a.astype(_F32),
        "b": b.astype(_F32),
        "r": r.astype(_F32),
        "angle": np.asarray(angle, _F32),
        "od": od.astype(_F32),
        "ves": ves.astype(_F32),
        "harm": np.stack([irr * normal(12 + k) for k in range(4)]).astype(_F32),
        "bound": np.where(present, bound, 0.0).astype(_F32),
        "nuc_r": np.where(has_nucleolus, nr, 0.0).astype(_F32),
        "nuc_dx": (off * np.cos(ang_n)).astype(_F32),
        "nuc_dy": (off * np.sin(ang_n)).astype(_F32),
    }


def _expected_od(spec: _NucSpec, seed: int) -> float:
    """Mean hematoxylin OD x area per cell area: the tone of a compartment whose nuclei are below a pixel."""
    rng = np.random.default_rng(seed)
    n = 4096
    streams: dict[int, np.ndarray] = {}

    def rand(k: int) -> np.ndarray:
        if k not in streams:
            streams[k] = rng.random(n).astype(_F32)
        return streams[k]

    def normal(k: int) -> np.ndarray:
        return rng.standard_normal(n).astype(_F32)

    p = _nucleus_params(spec, rand, normal, np.ones(n, bool), None, (1 - spec.jitter / 2) * spec.spacing)
    area = np.pi * p["a"] * p["b"]
    return float(spec.density * np.mean(area * p["od"]) / spec.spacing**2)


def _render_nuclei(
    cells: _Cells,
    p: dict[str, np.ndarray],
    view: _View,
    grain: Callable[[np.ndarray, np.ndarray], np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin OD and coverage of explicitly drawn nuclei, splatted into their pixel boxes.

    Cells two apart on both axes can never overlap (each nucleus stays within its cell's reach), so
    the four parity classes of the grid are drawn one after another with plain indexed writes, and
    overlapping nuclei of different classes are max-composited.
    """
    u, w, h = view.u, view.w, view.h
    od = np.zeros(h * w, _F32)
    cover = np.zeros(h * w, _F32)
    c, s = math.cos(view.theta), math.sin(view.theta)
    px, py = view.pixel_of(cells.x, cells.y)
    rad = p["bound"] / _F32(u)
    visible = (rad > 0) & (px + rad > -1) & (px - rad < w) & (py + rad > -1) & (py - rad < h)
    idx = np.arange(cells.n)
    parity = (idx % cells.nx & 1) + 2 * (idx // cells.nx & 1)
    cs, sn = np.cos(p["angle"]).astype(_F32), np.sin(p["angle"]).astype(_F32)
    ia, ib = _F32(1) / p["a"], _F32(1) / p["b"]
    m0, m1, m2, m3 = cs * ia, sn * ia, -sn * ib, cs * ib
    rpx = p["r"] / _F32(u)
    for cls in range(4):
        k = np.flatnonzero(visible & (parity == cls))
        if k.size == 0:
            continue
        b = int(math.ceil(float(rad[k].max()))) + 1
        offs = np.arange(-b, b + 1, dtype=np.int32)
        bx = np.rint(px[k]).astype(np.int32)[:, None, None] + offs[None, None, :]
        by = np.rint(py[k]).astype(np.int32)[:, None, None] + offs[None, :, None]
        ax = (bx - px[k][:, None, None]) * _F32(u)  # image-plane offsets from the centre (um)
        ay = (by - py[k][:, None, None]) * _F32(u)
        inside = (
            (ax * ax + ay * ay < (p["bound"][k] ** 2)[:, None, None])
            & (bx >= 0)
            & (bx < w)
            & (by >= 0)
            & (by < h)
        )
        n_i, y_i, x_i = np.nonzero(inside)
        kk = k[n_i]
        pix = by[n_i, y_i, 0] * w + bx[n_i, 0, x_i]
        a_, b_ = ax[n_i, 0, x_i], ay[n_i, y_i, 0]
        ex = a_ * _F32(c) - b_ * _F32(s)  # slide offsets from the nucleus centre
        ey = a_ * _F32(s) + b_ * _F32(c)
        xa = ex * m0[kk] + ey * m1[kk]
        yb = ex * m2[kk] + ey * m3[kk]
        rho2 = xa * xa + yb * yb
        rho = np.sqrt(rho2) + _F32(1e-6)
        cx_, sy_ = xa / rho, yb / rho
        hm = p["harm"][:, kk]
        # boundary radius in normalized units: low angular harmonics make the contour irregular
        rb = (
            1
            + hm[0] * (cx_ * cx_ - sy_ * sy_)
            + hm[1] * (2 * cx_ * sy_)
            + hm[2] * cx_ * (4 * cx_ * cx_ - 3)
            + hm[3] * sy_ * (3 - 4 * sy_ * sy_)
        )
        m = np.clip((rb - rho) * rpx[kk] + _F32(0.5), 0.0, 1.0)
        prof = p["od"][kk] * (1 + p["ves"][kk] * (rho2 / (rb * rb) * _F32(1.6) - _F32(0.8)))
        if grain is not None:
            prof = prof * (1 + grain(cells.x[kk] + ex, cells.y[kk] + ey))
        nr = p["nuc_r"][kk]
        withn = nr > 0
        if withn.any():
            nd = np.sqrt((ex - p["nuc_dx"][kk]) ** 2 + (ey - p["nuc_dy"][kk]) ** 2)
            prof = prof + np.where(withn, np.clip((nr - nd) / _F32(u) + _F32(0.5), 0.0, 1.0), 0.0) * _F32(0.9)
        od[pix] = np.maximum(od[pix], m * prof)
        cover[pix] = np.maximum(cover[pix], m)
    return od.reshape(h, w), cover.reshape(h, w)


# ---------------------------------------------------------------------------------------------
# Stain: Beer-Lambert, I = I0 * exp(-(c_H * OD_H * v_H + c_E * OD_E * v_E))
# ---------------------------------------------------------------------------------------------
# Reference H&E optical-density vectors (R, G, B) that common Macenko implementations normalize
# to, measured on real slides; each patient's vectors are perturbed around them.
_H_VEC = np.array([0.5626, 0.7201, 0.4062])
_E_VEC = np.array([0.2159, 0.8012, 0.5581])


@dataclass(frozen=True)
class _Stain:
    """One slide's staining and illumination: what Reinhard/Macenko normalization has to undo."""

    v_h: np.ndarray
    v_e: np.ndarray
    c_h: float
    c_e: float
    i0: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator) -> _Stain:
        def vec(base: np.ndarray) -> np.ndarray:
            v = np.clip(base + rng.normal(0.0, 0.05, 3), 0.02, None)
            return v / np.linalg.norm(v)

        i0 = 244.0 * math.exp(rng.normal(0.0, 0.025)) * np.exp(rng.normal(0.0, 0.015, 3))
        return _Stain(
            v_h=vec(_H_VEC),
            v_e=vec(_E_VEC),
            c_h=math.exp(rng.normal(0.0, 0.2)),
            c_e=math.exp(rng.normal(0.0, 0.22)),
            i0=np.minimum(i0, 254.0),
        )


# ---------------------------------------------------------------------------------------------
# Slides: one class per tumour type; each defines its architecture as smooth potentials (cheap
# to sample coarsely) and a pointwise map from potentials to compartments (sharp, full resolution).
# ---------------------------------------------------------------------------------------------
def _benign_epithelium(rng: np.random.Generator) -> _NucSpec:
    return _NucSpec(
        spacing=rng.uniform(7.5, 8.5),
        density=0.9,
        r=rng.uniform(2.6, 3.1),
        r_cv=0.08,
        aspect=(0.7, 0.95),
        irregular=0.015,
        od=rng.uniform(1.05, 1.25),
        vesicular=0.15,
        texture=0.1,
        grain=0.8,
        nucleolus_p=0.03,
        nucleolus_r=0.4,
    )


def _stromal(
    rng: np.random.Generator,
    spacing: float,
    density: float,
    *,
    r: float = 2.3,
    aspect: tuple[float, float] = (0.18, 0.32),
    lymph: float = 0.08,
    od: float = 1.15,
) -> _NucSpec:
    return _NucSpec(
        spacing=spacing,
        density=density,
        r=r,
        r_cv=0.12,
        aspect=aspect,
        irregular=0.02,
        od=od * rng.uniform(0.95, 1.05),
        vesicular=0.0,
        texture=0.05,
        lymph_p=lymph,
    )


class _Slide:
    """One patient's slide: architecture, nucleus populations, stroma and stain, all from its seed."""

    code = ""
    arch_scale = 20.0  # smallest length (um) over which the potentials bend: sets the sampling stride
    e_cyto = 0.24  # eosin of epithelial cytoplasm
    h_cyto = 0.12
    h_muc = 0.14
    polarity: str | None = None  # potential whose gradient orients epithelial nuclei (columnar cells)

    epi: _NucSpec
    strn: _NucSpec

    def __init__(self, grad: _Gradients, seed_words: Sequence[int]) -> None:
        self.grad = grad
        ss = np.random.SeedSequence(list(seed_words))
        self.key = int(ss.generate_state(1)[0])
        rng = np.random.default_rng(ss)
        self._xf: dict[str, tuple[float, float, float, float]] = {}
        self.focus_cache: dict[tuple[int, ...], tuple[float, float, float, float]] = {}
        self.fibre_angle = float(rng.uniform(0.0, np.pi))
        self.theta = float(rng.uniform(0.0, 2 * np.pi))
        self.stain = _Stain.draw(rng)
        self.stroma_e = rng.uniform(0.42, 0.55)
        self.stroma_h = 0.03
        self.fibre_gain = 0.2
        self.setup(rng)
        self.epi.expected = _expected_od(self.epi, self.key)
        self.strn.expected = _expected_od(self.strn, self.key + 1)

    # -- to override ---------------------------------------------------------------------------
    def setup(self, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def tables(self, view: _View) -> dict[str, Any]:
        return {}

    def pots(self, p: _Pts, tables: dict[str, Any]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def tissue(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- noise helpers -------------------------------------------------------------------------
    def _transform(self, name: str) -> tuple[float, float, float, float]:
        t = self._xf.get(name)
        if t is None:
            r = np.random.default_rng([self.key, _name_key(name)])
            a = r.uniform(0.0, 2 * np.pi)
            ox, oy = r.uniform(0.0, self.grad.N, 2)
            t = self._xf[name] = (math.cos(a), math.sin(a), float(ox), float(oy))
        return t

    def noise(
        self, p: _Pts, scale: float, name: str, *, along: float | None = None, angle: float | None = None
    ) -> np.ndarray:
        """Unit-variance noise of feature size `scale` um (stretched to `along` um in direction `angle`)."""
        c, s, ox, oy = self._transform(name)
        if angle is not None:
            c, s = math.cos(angle), math.sin(angle)
        kx, ky = 1.0 / (along or scale), 1.0 / scale
        n = self.grad.N
        bx = ((c * p.cx + s * p.cy) * kx + ox) % n
        by = ((-s * p.cx + c * p.cy) * ky + oy) % n
        x = (p.dx * _F32(c * kx) + p.dy * _F32(s * kx)) + _F32(bx)
        y = (p.dy * _F32(c * ky) - p.dx * _F32(s * ky)) + _F32(by)
        return self.grad(x, y)

    def fbm(self, p: _Pts, scale: float, name: str, octaves: int = 3) -> np.ndarray:
        total = self.noise(p, scale, f"{name}.0")
        amp, norm = 1.0, 1.0
        for k in range(1, octaves):
            amp *= 0.5
            norm += amp * amp
            total = total + _F32(amp) * self.noise(p, scale / 2**k, f"{name}.{k}")
        return total * _F32(1 / math.sqrt(norm))

    def warp(self, p: _Pts, scale: float, amp: float, name: str) -> _Pts:
        return p.shifted(
            _F32(amp) * self.noise(p, scale, name + ".x"), _F32(amp) * self.noise(p, scale, name + ".y")
        )

    def cells(self, view: _View, spacing: float, jitter: float, name: str, margin: float = 40.0) -> _Cells:
        return _Cells(self.key ^ _name_key(name), view, spacing, jitter, margin)

    # -- rendering -----------------------------------------------------------------------------
    def compartments(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        t = self.tissue(q, aa)
        muc = t.get("muc")
        rest = 1 - t["lum"] - t["epi"] - (muc if muc is not None else 0)
        t["str"] = np.clip(rest, 0.0, 1.0)
        return t

    def _nuclei(
        self,
        spec: _NucSpec,
        name: str,
        view: _View,
        t: dict[str, np.ndarray],
        q: dict[str, np.ndarray],
        comp: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Nuclear OD and coverage for one population: explicit where resolved, averaged tone where not."""
        u = view.u
        w = spec.lod(u)
        od = np.zeros_like(comp)
        cover = np.zeros_like(comp)
        if w < 1:
            # unresolved nuclei: their mean OD, with the pixel-to-pixel spread of counting few of them
            sigma = min(0.8, 0.6 * spec.spacing / u) * (1 - w)
            speckle = np.exp(rng.standard_normal(comp.shape, dtype=_F32) * _F32(sigma) - _F32(sigma**2 / 2))
            od = comp * _F32(spec.expected * (1 - w)) * speckle
        if w > 0:
            cells = self.cells(view, spec.spacing, spec.jitter, name, margin=0.0)
            # a cell has a nucleus if its centre lies in the compartment (read off the pixel maps,
            # whose anti-aliased edges put the 0.5 level on the true boundary)
            ix, iy = view.pixel_of(cells.x, cells.y)
            ix = np.clip(np.rint(ix).astype(np.int64), 0, view.w - 1)
            iy = np.clip(np.rint(iy).astype(np.int64), 0, view.h - 1)
            angle = None
            if name == "epi":
                gate = t["epi"][iy, ix] > 0.5
                if self.polarity is not None:
                    # columnar cells stand perpendicular to their basement membrane: along the gradient
                    f = q[self.polarity]
                    gx = f[iy, np.minimum(ix + 1, view.w - 1)] - f[iy, np.maximum(ix - 1, 0)]
                    gy = f[np.minimum(iy + 1, view.h - 1), ix] - f[np.maximum(iy - 1, 0), ix]
                    angle = np.arctan2(gy, gx) + _F32(view.theta)
            else:
                cell = t["cell"][iy, ix] if "cell" in t else 1.0
                gate = (t["str"][iy, ix] > 0.5) & (cells.rand(21) < cell)
                angle = self.fibre_angle + 0.25 * cells.normal(22)
            present = gate & (cells.rand(20) < spec.density)
            p = _nucleus_params(spec, cells.rand, cells.normal, present, angle, cells.reach)
            tex = spec.texture * _lod(spec.grain, u, 0.6, 1.6)
            grain = None
            if tex > 0.02:

                def grain(gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
                    return _F32(tex) * self.noise(_Pts(view.cx, view.cy, gx, gy), spec.grain, "chromatin")

            e_od, e_cover = _render_nuclei(cells, p, view, grain)
            od = od + _F32(w) * e_od
            cover = _F32(w) * e_cover
        return od, cover

    def texture(
        self,
        view: _View,
        scale: float,
        name: str,
        *,
        along: float | None = None,
        warp: tuple[int, np.ndarray, np.ndarray] | None = None,
        fine: bool = False,
    ) -> np.ndarray:
        """Full-resolution noise texture, sampled no finer than it varies and interpolated up.

        `fine`: sample densely, for textures whose zero lines are drawn (coarse linear interpolation
        of a value hovering near zero would break the lines into dashes).
        """
        stride = int(np.clip(scale / ((8.0 if fine else 2.5) * view.u), 1, 16))
        dx, dy = view.offsets(stride)
        p = _Pts(view.cx, view.cy, dx, dy)
        if warp is not None:  # collagen and mucin strands meander
            ws, wx, wy = warp
            p = p.shifted(view.upsample(wx, ws, stride), view.upsample(wy, ws, stride))
        angle = self.fibre_angle if along else None
        return view.upsample(self.noise(p, scale, name, along=along, angle=angle), stride)

    def render(self, view: _View, rng: np.random.Generator) -> np.ndarray:
        """The RGB uint8 image (h, w, 3) of one field of view."""
        u = view.u
        tables = self.tables(view)
        stride = int(np.clip(self.arch_scale / (3 * u), 1, 16))
        cdx, cdy = view.offsets(stride)
        q = {
            k: view.upsample(v, stride)
            for k, v in self.pots(_Pts(view.cx, view.cy, cdx, cdy), tables).items()
        }
        t = self.compartments(q, max(u, 0.35))
        epi, strm, lum = t["epi"], t["str"], t["lum"]
        muc = t.get("muc")
        cell = t.get("cell")

        h_epi, c_epi = self._nuclei(self.epi, "epi", view, t, q, epi, rng)
        s_comp = strm * cell if cell is not None else strm
        h_str, c_str = self._nuclei(self.strn, "str", view, t, q, s_comp, rng)

        # collagen: coarse bundles visible at every magnification, fine fibres only when resolved
        ws = int(np.clip(120.0 / (3 * u), 1, 16))
        wp = _Pts(view.cx, view.cy, *view.offsets(ws))
        warp = (ws, _F32(10) * self.noise(wp, 120.0, "fibre.x"), _F32(10) * self.noise(wp, 120.0, "fibre.y"))
        fib = np.ones_like(epi)
        if _lod(10.0, u) > 0.2:
            bundles = self.texture(view, 10.0, "bundles", along=30.0, warp=warp)
            fib += _F32(self.fibre_gain * _lod(10.0, u)) * bundles
        if _lod(5.0, u) > 0.2:
            # thin pale clefts between collagen fibres
            fibres = self.texture(view, 5.0, "fibres", along=35.0, warp=warp, fine=True)
            fib *= 1 - _F32(2.0 * self.fibre_gain * _lod(5.0, u)) * _thread(fibres, 5.0, 0.3, u)
        fib = np.maximum(fib, _F32(0.15))

        h_od = h_epi + h_str + epi * _F32(self.h_cyto) * (1 - c_epi) + strm * _F32(self.stroma_h)
        e_od = (
            strm * _F32(self.stroma_e) * fib * (1 - _F32(0.7) * c_str)
            + epi * _F32(self.e_cyto) * (1 - _F32(0.7) * c_epi)
            + lum * _F32(0.03)
        )
        if muc is not None:
            # pale blue-grey mucin with faint wispy strands
            wisp = 1 + _F32(0.15 * _lod(40.0, u)) * self.texture(view, 40.0, "mucin")
            if _lod(8.0, u) > 0.2:
                strands = _thread(
                    self.texture(view, 8.0, "strands", along=20.0, warp=warp, fine=True), 8.0, 0.35, u
                )
                broken = np.clip(self.texture(view, 15.0, "strandgaps") + _F32(0.3), 0.0, 1.0)
                wisp += _F32(0.5 * _lod(8.0, u)) * strands * broken
            h_od += muc * _F32(self.h_muc) * wisp
            e_od += muc * _F32(0.05) * wisp
        rbc = t.get("rbc")
        if rbc is not None:
            e_od += rbc * _F32(1.1)
            h_od += rbc * _F32(0.05)

        # slow stain drift across the slide, on top of the per-slide and per-image stain draw
        slow = int(np.clip(300.0 / (3 * u), 1, 16))
        sdx, sdy = view.offsets(slow)
        drift = 1 + _F32(0.07) * view.upsample(
            self.fbm(_Pts(view.cx, view.cy, sdx, sdy), 900.0, "drift", 2), slow
        )
        st = self.stain
        h_od *= _F32(st.c_h * math.exp(rng.normal(0.0, 0.04))) * drift
        e_od *= _F32(st.c_e * math.exp(rng.normal(0.0, 0.04))) / drift
        i0 = st.i0 * math.exp(rng.normal(0.0, 0.012))
        return _optics(h_od, e_od, st, i0, rng)


def _blur3(a: np.ndarray, k0: float) -> np.ndarray:
    """Separable 3-tap blur [k0, 1-2k0, k0] with replicated edges."""
    k0 = _F32(k0)
    k1 = _F32(1) - 2 * k0
    out = a * k1
    out[1:] += a[:-1] * k0
    out[:-1] += a[1:] * k0
    out[0] += a[0] * k0
    out[-1] += a[-1] * k0
    res = out * k1
    res[:, 1:] += out[:, :-1] * k0
    res[:, :-1] += out[:, 1:] * k0
    res[:, 0] += out[:, 0] * k0
    res[:, -1] += out[:, -1] * k0
    return res


def _optics(
    h_od: np.ndarray, e_od: np.ndarray, st: _Stain, i0: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Beer-Lambert light through the section, then the camera: slight defocus, vignetting, sensor noise."""
    h, w = h_od.shape
    sigma = rng.uniform(0.35, 0.75)
    k0 = math.exp(-0.5 / sigma**2)
    k0 = k0 / (1 + 2 * k0)
    # defocus blurs the stain maps (a close stand-in for blurring intensities at this sub-pixel scale)
    h_od = _blur3(h_od, k0)
    e_od = _blur3(e_od, k0)
    yy = (np.arange(h, dtype=_F32) - (h - 1) / 2) / _F32(h / 2)
    xx = (np.arange(w, dtype=_F32) - (w - 1) / 2) / _F32(w / 2)
    vig = 1 - _F32(rng.uniform(0.0, 0.08) / 2) * (yy[:, None] ** 2 + xx[None, :] ** 2)
    noise = rng.standard_normal((h, w), dtype=_F32) * _F32(rng.uniform(1.0, 2.5))
    img = np.empty((h, w, 3), np.uint8)
    ch = np.empty((h, w), _F32)
    for c in range(3):
        np.multiply(h_od, _F32(st.v_h[c]), out=ch)
        ch += e_od * _F32(st.v_e[c]) + _F32(0.01)
        np.negative(ch, out=ch)
        np.exp(ch, out=ch)
        ch *= vig
        ch *= _F32(i0[c])
        ch += noise
        ch += _F32(0.5)
        np.clip(ch, 0, 255, out=ch)
        img[..., c] = ch
    return img


def _thread(n: np.ndarray, scale: float, width: float, u: float) -> np.ndarray:
    """Thin lines (half-width `width` um) along the zero lines of a noise, kept as wide as a pixel."""
    seen = max(width, 0.6 * u)
    d = _ridge(n, scale) * _F32(1 / seen)
    # widening to a pixel keeps the line's total ink, so it fades instead of aliasing
    return np.exp(-d * d) * _F32(width / seen)


def _ridge(n: np.ndarray, scale: float) -> np.ndarray:
    """Approximate distance (um) to the zero line of a noise of feature size `scale`: curvilinear structures."""
    return np.abs(n) * _F32(scale / _Gradients.GRAD)


class _Glandular(_Slide):
    """Benign glands on a jittered grid: adenosis (crowded, irregular, in lobules) and tubular adenoma."""

    def setup(self, rng: np.random.Generator) -> None:
        self.epi = _benign_epithelium(rng)
        self.strn = _stromal(rng, 18.0, 0.45)

    def tables(self, view: _View) -> dict[str, Any]:
        c = self.cells(view, self.sg, self.jitter, "glands")
        lobule = self.fbm(c.pts(), self.lob_scale, "lobule", 2)
        present = (lobule > self.lob_t) & (c.rand(4) < self.fill)
        a, b, angle, lr = self.gland_shapes(c)
        return {"g": _Ellipses(c, a, b, angle, present, lr)}

    def pots(self, p: _Pts, tables: dict[str, Any]) -> dict[str, np.ndarray]:
        d, lr = tables["g"].nearest(p)
        return {"d": d, "lr": lr}

    def tissue(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        rg = self.sg * 0.38
        lum = _ramp((q["lr"] - q["d"]) * _F32(rg), aa)
        return {"lum": lum, "epi": _ramp((1 - q["d"]) * _F32(rg), aa) - lum}


class _Adenosis(_Glandular):
    code = "A"

    def setup(self, rng: np.random.Generator) -> None:
        super().setup(rng)
        self.sg = rng.uniform(44.0, 56.0)
        self.jitter = 0.75
        self.lob_scale = 380.0
        self.lob_t = rng.uniform(-0.45, 0.1)
        self.fill = 0.9
        self.arch_scale = self.sg * 0.3
        self.stroma_e = rng.uniform(0.52, 0.64)

    def gland_shapes(self, c: _Cells) -> tuple[np.ndarray, ...]:
        a = self.sg * (0.28 + 0.15 * c.rand(1))
        b = a * (0.35 + 0.6 * c.rand(2))
        # sclerosing adenosis: glands swirl and many are compressed shut
        angle = 1.6 * self.noise(c.pts(), 260.0, "swirl") + 0.35 * c.normal(5)
        lr = np.where(c.rand(3) < 0.35, 0.0, 0.3 + 0.25 * c.rand(6))
        return a, b, angle, lr


class _TubularAdenoma(_Glandular):
    code = "TA"

    def setup(self, rng: np.random.Generator) -> None:
        super().setup(rng)
        self.sg = rng.uniform(44.0, 54.0)
        self.jitter = 0.55
        self.lob_scale = 650.0
        self.lob_t = rng.uniform(-1.4, -0.9)
        self.fill = 0.97
        self.arch_scale = self.sg * 0.38
        self.stroma_e = rng.uniform(0.45, 0.58)

    def gland_shapes(self, c: _Cells) -> tuple[np.ndarray, ...]:
        a = self.sg * (0.38 + 0.05 * c.rand(1))
        b = a * (0.8 + 0.2 * c.rand(2))
        return a, b, np.pi * c.rand(5), 0.42 + 0.15 * c.rand(3)


class _Fibroepithelial(_Slide):
    """Ducts or clefts as the zero lines of a stretched noise, tapering out where the duct field fades."""

    def pots(self, p: _Pts, tables: dict[str, Any]) -> dict[str, np.ndarray]:
        pw = self.warp(p, 90.0, 30.0, "ductwarp")
        n = self.noise(pw, self.ld, "duct", along=self.ld * self.stretch, angle=self.fibre_angle)
        return {"n": n, "R": self.fbm(p, 450.0, "ductfield", 2)}

    def tissue(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        dist = _ridge(q["n"], self.ld)
        taper = np.clip((q["R"] - _F32(self.reg_t)) * _F32(2.0), 0.0, 1.0)
        on = np.minimum(taper * _F32(4), _F32(1))
        lum = _ramp(_F32(self.wl) * taper - dist, aa) * on
        epi = _ramp(_F32(self.wl + self.we) * taper - dist, aa) * on - lum
        out = {"lum": lum, "epi": epi}
        if self.condense:
            # periductal stromal condensation: the stroma is most cellular around the clefts
            out["cell"] = _F32(0.5) + _F32(0.5) * _ramp(_F32(45.0) - dist, 40.0)
        return out


class _Fibroadenoma(_Fibroepithelial):
    code = "F"
    condense = False

    def setup(self, rng: np.random.Generator) -> None:
        self.ld = rng.uniform(110.0, 160.0)
        self.stretch = rng.uniform(1.8, 2.6)
        self.wl = rng.uniform(1.5, 3.5)
        self.we = rng.uniform(9.0, 12.0)
        self.reg_t = rng.uniform(-0.2, 0.35)
        self.arch_scale = 60.0
        # loose, pale, slightly myxoid stroma with few cells
        self.stroma_e = rng.uniform(0.26, 0.36)
        self.stroma_h = rng.uniform(0.05, 0.09)
        self.fibre_gain = 0.5
        self.epi = _benign_epithelium(rng)
        self.strn = _stromal(rng, 22.0, 0.35, lymph=0.03)


class _Phyllodes(_Fibroepithelial):
    code = "PT"
    condense = True

    def setup(self, rng: np.random.Generator) -> None:
        self.ld = rng.uniform(150.0, 240.0)
        self.stretch = rng.uniform(2.5, 4.0)
        self.wl = rng.uniform(5.0, 14.0)
        self.we = rng.uniform(7.0, 10.0)
        self.reg_t = rng.uniform(-0.6, -0.1)
        self.arch_scale = 60.0
        self.stroma_e = rng.uniform(0.38, 0.48)
        self.stroma_h = 0.04
        self.epi = _benign_epithelium(rng)
        # hypercellular stroma of plump, mildly atypical spindle cells: the defining feature
        self.strn = _stromal(
            rng,
            rng.uniform(11.0, 13.0),
            0.9,
            r=rng.uniform(2.9, 3.4),
            aspect=(0.35, 0.65),
            lymph=0.03,
            od=1.3,
        )


class _DuctalCarcinoma(_Slide):
    code = "DC"
    e_cyto = 0.34

    def setup(self, rng: np.random.Generator) -> None:
        self.ln = rng.uniform(80.0, 130.0)
        self.nest_t = rng.uniform(-0.05, 0.4)
        self.lc = rng.uniform(45.0, 70.0)
        self.wc = rng.uniform(3.5, 6.5)
        self.crib_p = rng.uniform(0.0, 0.5)
        self.arch_scale = 16.0
        self.stroma_e = rng.uniform(0.55, 0.68)
        self.epi = _NucSpec(
            spacing=11.0,
            density=0.95,
            r=rng.uniform(4.6, 5.6),
            r_cv=0.25,
            aspect=(0.55, 1.0),
            irregular=0.07,
            od=rng.uniform(1.35, 1.6),
            od_cv=0.2,
            vesicular=0.7,
            texture=0.35,
            grain=1.4,
            nucleolus_p=0.55,
            nucleolus_r=0.8,
            mitosis_p=0.03,
            jitter=0.4,
        )
        self.strn = _stromal(rng, 20.0, 0.35, lymph=0.25)

    def tables(self, view: _View) -> dict[str, Any]:
        # cribriform spaces: round punched-out lumens inside the larger nests
        c = self.cells(view, 28.0, 0.6, "crib")
        nest = self.fbm(self.warp(c.pts(), 70.0, 25.0, "nestwarp"), self.ln, "nest", 3)
        present = (nest > self.nest_t + 0.35) & (c.rand(1) < self.crib_p)
        a = 5.0 + 5.0 * c.rand(2)
        return {"crib": _Ellipses(c, a, a * (0.7 + 0.3 * c.rand(3)), np.pi * c.rand(4), present, a)}

    def pots(self, p: _Pts, tables: dict[str, Any]) -> dict[str, np.ndarray]:
        pw = self.warp(p, 70.0, 25.0, "nestwarp")
        d, r = tables["crib"].nearest(p)
        return {
            "N": self.fbm(pw, self.ln, "nest", 3),
            "c": self.noise(pw, self.lc, "cord"),
            "hole": (1 - d) * r,
        }

    def tissue(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        nest = _ramp((q["N"] - _F32(self.nest_t)) * _F32(self.ln / (1.6 * _Gradients.GRAD)), aa)
        # infiltrating cords, one or two cells wide, around the nests
        near = np.clip((q["N"] - _F32(self.nest_t - 0.9)) * _F32(1.5), 0.0, 1.0)
        cord = _ramp(_F32(self.wc) * near - _ridge(q["c"], self.lc), aa) * (near > 0)
        hole = _ramp(q["hole"], aa) * nest
        return {"lum": hole, "epi": np.maximum(nest, cord) - hole}


class _LobularCarcinoma(_Slide):
    code = "LC"
    e_cyto = 0.22

    def setup(self, rng: np.random.Generator) -> None:
        self.ll = rng.uniform(38.0, 55.0)
        self.w = rng.uniform(3.2, 4.5)
        self.stretch = rng.uniform(1.3, 2.0)
        self.reg_t = rng.uniform(-1.0, -0.4)
        self.sheet_t = rng.uniform(1.1, 1.6)
        self.arch_scale = 30.0
        self.stroma_e = rng.uniform(0.55, 0.68)
        self.epi = _NucSpec(
            spacing=9.5,
            density=0.85,
            r=rng.uniform(3.4, 3.9),
            r_cv=0.1,
            aspect=(0.75, 1.0),
            irregular=0.03,
            od=rng.uniform(1.3, 1.45),
            vesicular=0.15,
            texture=0.2,
            grain=1.1,
            nucleolus_p=0.15,
            nucleolus_r=0.5,
            mitosis_p=0.01,
        )
        self.strn = _stromal(rng, 20.0, 0.3, lymph=0.15)

    def pots(self, p: _Pts, tables: dict[str, Any]) -> dict[str, np.ndarray]:
        pw = self.warp(p, 60.0, 15.0, "filewarp")
        return {
            "n": self.noise(pw, self.ll, "file", along=self.ll * self.stretch, angle=self.fibre_angle),
            "R": self.fbm(p, 300.0, "filefield", 2),
            "S": self.fbm(p, 180.0, "sheet", 2),
        }

    def tissue(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        # single-file lines of discohesive cells, plus occasional loose sheets
        region = np.clip((q["R"] - _F32(self.reg_t)) * _F32(3.0), 0.0, 1.0)
        lines = _ramp(_F32(self.w) - _ridge(q["n"], self.ll), aa) * region
        sheet = _ramp((q["S"] - _F32(self.sheet_t)) * _F32(180.0 / (1.3 * _Gradients.GRAD)), aa)
        return {"lum": np.zeros_like(lines), "epi": np.maximum(lines, sheet)}


class _MucinousCarcinoma(_Slide):
    code = "MC"

    def setup(self, rng: np.random.Generator) -> None:
        self.lm = rng.uniform(150.0, 230.0)
        self.lake_t = rng.uniform(-0.9, -0.35)
        self.sc = rng.uniform(50.0, 75.0)
        self.clus_p = rng.uniform(0.4, 0.75)
        self.h_muc = rng.uniform(0.2, 0.3)
        self.arch_scale = 18.0
        self.epi = _NucSpec(
            spacing=9.0,
            density=0.9,
            r=rng.uniform(3.6, 4.3),
            r_cv=0.15,
            aspect=(0.65, 1.0),
            irregular=0.04,
            od=rng.uniform(1.3, 1.45),
            vesicular=0.35,
            texture=0.25,
            grain=1.2,
            nucleolus_p=0.35,
            nucleolus_r=0.6,
            mitosis_p=0.01,
        )
        self.strn = _stromal(rng, 20.0, 0.4, lymph=0.05)

    def _lake(self, p: _Pts) -> np.ndarray:
        return self.fbm(self.warp(p, 120.0, 45.0, "lakewarp"), self.lm, "lake", 2)

    def tables(self, view: _View) -> dict[str, Any]:
        # tumour-cell clusters floating in the mucin
        c = self.cells(view, self.sc, 0.8, "clusters")
        present = (self._lake(c.pts()) > self.lake_t + 0.35) & (c.rand(1) < self.clus_p)
        a = self.sc * (0.12 + 0.16 * c.rand(2))
        return {"cl": _Ellipses(c, a, a * (0.45 + 0.55 * c.rand(3)), np.pi * c.rand(4), present, a)}

    def pots(self, p: _Pts, tables: dict[str, Any]) -> dict[str, np.ndarray]:
        d, r = tables["cl"].nearest(self.warp(p, 35.0, 7.0, "clusterwarp"))
        return {"M": self._lake(p), "cl": (1 - d) * r}

    def tissue(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        lake = _ramp((q["M"] - _F32(self.lake_t)) * _F32(self.lm / (1.3 * _Gradients.GRAD)), aa)
        epi = _ramp(q["cl"], aa) * lake
        return {"lum": np.zeros_like(lake), "epi": epi, "muc": lake - epi}


class _PapillaryCarcinoma(_Slide):
    code = "PC"
    e_cyto = 0.3
    polarity = "n"

    def setup(self, rng: np.random.Generator) -> None:
        self.lp = rng.uniform(80.0, 120.0)
        self.wc = rng.uniform(5.0, 9.0)
        self.we = rng.uniform(11.0, 16.0)
        self.reg_t = rng.uniform(-1.3, -0.7)
        self.taper_t = rng.uniform(-0.6, -0.2)
        self.arch_scale = 50.0
        self.stroma_e = rng.uniform(0.42, 0.52)
        self.epi = _NucSpec(
            spacing=8.0,
            density=0.85,
            r=rng.uniform(3.6, 4.2),
            r_cv=0.15,
            aspect=(0.45, 0.7),
            irregular=0.04,
            od=rng.uniform(1.15, 1.3),
            vesicular=0.1,
            texture=0.25,
            grain=1.1,
            nucleolus_p=0.25,
            nucleolus_r=0.55,
            mitosis_p=0.02,
            jitter=0.4,
        )
        self.strn = _stromal(rng, 16.0, 0.6, lymph=0.05)

    def _frond(self, p: _Pts) -> np.ndarray:
        return self.noise(self.warp(p, 70.0, 30.0, "frondwarp"), self.lp, "frond")

    def pots(self, p: _Pts, tables: dict[str, Any]) -> dict[str, np.ndarray]:
        return {
            "n": self._frond(p),
            "R": self.fbm(p, 500.0, "papfield", 2),
            "T": self.fbm(p, 160.0, "taper", 2),
        }

    def tissue(self, q: dict[str, np.ndarray], aa: float) -> dict[str, np.ndarray]:
        # fibrovascular cores lined by stratified columnar cells, floating in a cystic space;
        # the taper field gives the fronds free, finger-like ends
        dist = _ridge(q["n"], self.lp)
        taper = np.clip((q["T"] - _F32(self.taper_t)) * _F32(2.5), 0.0, 1.0)
        on = taper > 0
        # the cyst: a sharp-walled space, fibrous wall outside
        region = _ramp((q["R"] - _F32(self.reg_t)) * _F32(500.0 / (1.3 * _Gradients.GRAD)), aa)
        core = _ramp(_F32(self.wc) * taper - dist, aa) * on
        frond = _ramp(_F32(self.wc + self.we) * taper - dist, aa) * on
        rbc = _ramp(_F32(self.wc * 0.35) * taper - dist, aa) * on * region
        return {"lum": (1 - frond) * region, "epi": (frond - core) * region, "rbc": rbc}


_SLIDES: dict[str, type[_Slide]] = {
    cls.code: cls
    for cls in (
        _Adenosis,
        _Fibroadenoma,
        _Phyllodes,
        _TubularAdenoma,
        _DuctalCarcinoma,
        _LobularCarcinoma,
        _MucinousCarcinoma,
        _PapillaryCarcinoma,
    )
}


# ---------------------------------------------------------------------------------------------
# The dataset: patients, fields of view, names
# ---------------------------------------------------------------------------------------------
_GRADIENTS: dict[int, _Gradients] = {}


def _gradients(seed: int) -> _Gradients:
    if seed not in _GRADIENTS:
        _GRADIENTS.clear()  # one seed at a time is the normal use; keep memory flat
        _GRADIENTS[seed] = _Gradients(seed)
    return _GRADIENTS[seed]


def _slide(seed: int, code: str, patient: int) -> _Slide:
    t = list(_TYPES).index(code)
    return _SLIDES[code](_gradients(seed), [seed, t, patient, 0x534C4944])


def _focus(seed: int, slide: _Slide, t: int, patient: int, index: int) -> tuple[float, float, float, float]:
    """Region of interest `index`: a 40x centre, and the lesion point inside it that higher zooms look at.

    Like a pathologist choosing what to photograph, the zoom point favours epithelium (or mucin)
    over plain stroma, so 400x views show the lesion rather than whatever lay at the centre.
    """
    key = (seed, t, patient, index)
    hit = slide.focus_cache.get(key)
    if hit is None:
        rng = np.random.default_rng([seed, t, patient, index, 0x524F49])
        cx, cy = rng.uniform(0.0, _SLIDE_UM, 2) + 5000.0
        probe = _View(float(cx), float(cy), slide.theta, _FOV_40X_UM * 0.7 / 48, 48, 32)
        dx, dy = probe.offsets(1)
        tis = slide.compartments(slide.pots(_Pts(probe.cx, probe.cy, dx, dy), slide.tables(probe)), 3.0)
        weight = (0.005 + tis["epi"] ** 2 + 0.3 * tis.get("muc", 0.0)).astype(np.float64).ravel()
        k = int(rng.choice(weight.size, p=weight / weight.sum()))
        hit = slide.focus_cache[key] = (float(cx), float(cy), float(cx + dx.flat[k]), float(cy + dy.flat[k]))
    return hit


def _view(
    seed: int, slide: _Slide, code: str, patient: int, mag: int, index: int, size: tuple[int, int]
) -> _View:
    """Image `index` at every magnification looks at the same region of interest, zoomed."""
    t = list(_TYPES).index(code)
    cx, cy, fx, fy = _focus(seed, slide, t, patient, index)
    if mag != _MAGNIFICATIONS[0]:
        cx, cy = fx, fy
    fov = _FOV_40X_UM * 40.0 / mag
    jitter = np.random.default_rng([seed, t, patient, index, mag, 0x4A4954]).normal(0.0, 0.1 * fov, 2)
    w, h = size
    return _View(float(cx + jitter[0]), float(cy + jitter[1]), slide.theta, fov / w, w, h)


def render_image(
    code: str,
    magnification: int,
    *,
    seed: int = 0,
    patient: int = 0,
    index: int = 0,
    size: tuple[int, int] = (175, 115),
    slide: _Slide | None = None,
) -> np.ndarray:
    """One synthetic image as RGB uint8 (height, width, 3), exactly as the generator writes it.

    `patient` and `index` number the patient within its type and the image within its
    magnification from 0 (the file's sequence number is index + 1). `slide` lets the generator
    reuse one patient's slide across its images; it must be that patient's.
    """
    if code not in _TYPES:
        raise ConfigError(f"unknown tumour type {code!r}; expected one of {', '.join(_TYPES)}")
    if magnification not in _MAGNIFICATIONS:
        raise ConfigError(f"magnification must be one of {_MAGNIFICATIONS}, got {magnification}")
    slide = slide or _slide(seed, code, patient)
    view = _view(seed, slide, code, patient, magnification, index, size)
    t = list(_TYPES).index(code)
    rng = np.random.default_rng([seed, t, patient, magnification, index, 0x494D47])
    return slide.render(view, rng)


def _patient_ids(seed: int, patients_per_type: int) -> dict[tuple[str, int], str]:
    """Unique, real-looking patient IDs (YY-digits[LETTERS]), independent of generation order."""
    ids: dict[tuple[str, int], str] = {}
    used: set[str] = set()
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    for t, code in enumerate(_TYPES):
        for p in range(patients_per_type):
            rng = np.random.default_rng([seed, t, p, 0x4944])
            yy = int(rng.choice([13, 14, 15], p=[0.1, 0.8, 0.1]))
            num = int(rng.integers(100, 30000))
            suffix = "".join(rng.choice(letters, size=int(rng.integers(1, 3)))) if rng.random() < 0.3 else ""
            pid = f"{yy}-{num}{suffix}"
            while pid in used:  # rare; bump the number deterministically
                num += 1
                pid = f"{yy}-{num}{suffix}"
            used.add(pid)
            ids[(code, p)] = pid
    return ids


def expected_files(
    *, seed: int = 0, patients_per_type: int = 4, images_per_magnification: int = 10
) -> list[tuple[str, int, int, int, Path]]:
    """(type, patient, magnification, index, path relative to the folder holding BreaKHis_v1) of every image."""
    ids = _patient_ids(seed, patients_per_type)
    out = []
    for code, (cls, folder) in _TYPES.items():
        bm = "B" if cls == "benign" else "M"
        for p in range(patients_per_type):
            pid = ids[(code, p)]
            pdir = Path(
                "BreaKHis_v1", "histology_slides", "breast", cls, "SOB", folder, f"SOB_{bm}_{code}_{pid}"
            )
            for mag in _MAGNIFICATIONS:
                for i in range(images_per_magnification):
                    name = f"SOB_{bm}_{code}-{pid}-{mag}-{i + 1:03d}.png"
                    out.append((code, p, mag, i, pdir / f"{mag}X" / name))
    return out


def _write_png(path: Path, img: np.ndarray) -> None:
    try:
        from PIL import Image
    except ImportError:  # pillow comes with torchvision; keep a path that needs only torch
        import torch
        from torchvision.io import write_png

        write_png(
            torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), str(path), compression_level=1
        )
        return
    # level 1: noisy microscopy barely compresses better at 6, and encodes twice as fast
    Image.fromarray(img, "RGB").save(path, format="PNG", compress_level=1)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def _params(seed: Any, patients_per_type: Any, images_per_magnification: Any, size: Any) -> dict[str, Any]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic size must be (width, height), got {size!r}") from None
    if not (_MIN_SIDE <= w <= _MAX_SIZE[0] and _MIN_SIDE <= h <= _MAX_SIZE[1]):
        raise ConfigError(
            f"synthetic size {w}x{h} out of range: width {_MIN_SIDE}..{_MAX_SIZE[0]}, height {_MIN_SIDE}..{_MAX_SIZE[1]}"
        )
    for name, v, lo in (
        ("patients_per_type", patients_per_type, 1),
        ("images_per_magnification", images_per_magnification, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or v > 999:
            raise ConfigError(f"synthetic {name} must be an integer in 1..999, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    return {
        "generator": "masf_lightning.data.synthetic",
        "format_version": _FORMAT_VERSION,
        "seed": int(seed),
        "patients_per_type": int(patients_per_type),
        "images_per_magnification": int(images_per_magnification),
        "size": [w, h],
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _same(record: dict[str, Any] | None, params: dict[str, Any]) -> bool:
    return record is not None and all(record.get(k) == v for k, v in params.items())


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "unreadable parameters"
    keys = ("seed", "patients_per_type", "images_per_magnification", "size", "format_version")
    return ", ".join(f"{k}={record.get(k)}" for k in keys)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Delete staging folders left by generators that were killed (never one whose process still runs)."""
    for d in out.glob(_STAGING_PREFIX + "*"):
        try:
            pid = int(d.name[len(_STAGING_PREFIX) :])
        except ValueError:
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _complete(tree_parent: Path, params: dict[str, Any]) -> bool:
    files = expected_files(
        seed=params["seed"],
        patients_per_type=params["patients_per_type"],
        images_per_magnification=params["images_per_magnification"],
    )
    return all((tree_parent / f[-1]).is_file() for f in files)


def generate_synthetic_breakhis(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    patients_per_type: int = 4,
    images_per_magnification: int = 10,
    size: tuple[int, int] = (175, 115),
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the synthetic BreaKHis under out/BreaKHis_v1 (once) and return `out`.

    The tree is built in a staging folder and moved into place whole, then the marker
    out/.synthetic_breakhis.json records the parameters: an interrupted run leaves no half tree, a
    second call with the same parameters returns at once, and different parameters are refused
    rather than mixed with (or written over) what is there. `workers` threads render in parallel
    (default: one per core, up to 8); the output does not depend on it.
    """
    params = _params(seed, patients_per_type, images_per_magnification, size)
    out = Path(out)
    marker = out / MARKER_NAME
    tree = out / "BreaKHis_v1"
    inner = tree / MARKER_NAME  # the same record inside the tree: proves a marker-less tree is ours

    if marker.exists():
        record = _read_json(marker)
        if not _same(record, params):
            raise DataError(
                f"{out} already holds a synthetic BreaKHis made with {_describe(record)}; it differs from the "
                f"requested {_describe(params)}. Choose another folder (data.root=...) for these parameters."
            )
        if tree.is_dir():
            return out
        marker.unlink()  # our marker without its tree (the tree was deleted): make it again
    if tree.exists():
        record = _read_json(inner)
        if record is None:
            raise DataError(
                f"{tree} exists and was not written by the synthetic generator; it is left untouched. "
                f"Choose another folder for the synthetic data, or use data=breakhis data.root={out}."
            )
        if not _same(record, params):
            raise DataError(
                f"{tree} is a synthetic BreaKHis made with {_describe(record)}, not the requested "
                f"{_describe(params)}. Choose another folder (data.root=...) for these parameters."
            )
        if _complete(out, params):
            write_json_atomic(marker, record)
            return out
        shutil.rmtree(tree)  # our own tree (it carries our record) with files missing: rebuild it

    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out / f"{_STAGING_PREFIX}{os.getpid()}"
    files = expected_files(
        seed=params["seed"],
        patients_per_type=params["patients_per_type"],
        images_per_magnification=params["images_per_magnification"],
    )
    record = {**params, "n_images": len(files)}
    try:
        _write_all(
            staging, files, params, progress, workers if workers is not None else _default_workers(len(files))
        )
        write_json_atomic(staging / "BreaKHis_v1" / MARKER_NAME, record)
        try:
            os.rename(staging / "BreaKHis_v1", tree)
        except OSError:
            # another process finished the same job first; accept its tree if it is the same data
            if not _same(_read_json(inner), params):
                raise DataError(f"{tree} appeared while generating and is not the requested data") from None
        write_json_atomic(marker, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_group(
    staging: str, seed: int, size: tuple[int, int], jobs: list[tuple[str, int, int, int, str]]
) -> int:
    """Render and write the images of one patient (a unit of work for a worker process)."""
    slide: _Slide | None = None
    for code, p, mag, i, rel in jobs:
        if slide is None:
            slide = _slide(seed, code, p)
        path = Path(staging) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_png(path, render_image(code, mag, seed=seed, patient=p, index=i, size=size, slide=slide))
    return len(jobs)


def _default_workers(n_images: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8, n_images // 40))


def _write_all(
    staging: Path,
    files: list[tuple[str, int, int, int, Path]],
    params: dict[str, Any],
    progress: bool,
    workers: int,
) -> None:
    from tqdm.auto import tqdm

    seed, size = params["seed"], (params["size"][0], params["size"][1])
    groups: dict[tuple[str, int], list[tuple[str, int, int, int, str]]] = {}
    for code, p, mag, i, rel in files:
        groups.setdefault((code, p), []).append((code, p, mag, i, str(rel)))
    _gradients(seed)  # build the shared lattice once, before any thread reads it
    bar = tqdm(total=len(files), desc="synthetic BreaKHis", unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1:
            for jobs in groups.values():
                bar.update(_write_group(str(staging), seed, size, jobs))
            return
        from concurrent.futures import ThreadPoolExecutor, as_completed

        # threads, not processes: numpy and the PNG encoder release the GIL for the heavy parts, and
        # threads need neither a __main__ guard in the caller (spawn) nor a fork of a threaded process
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthetic") as pool:
            futures = [pool.submit(_write_group, str(staging), seed, size, jobs) for jobs in groups.values()]
            try:
                for f in as_completed(futures):
                    bar.update(f.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m masf_lightning.data.synthetic",
        description="Write the procedural synthetic BreaKHis (official layout) under OUT/BreaKHis_v1.",
    )
    parser.add_argument("out", help="folder that will hold BreaKHis_v1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patients-per-type", type=int, default=4)
    parser.add_argument("--images-per-magnification", type=int, default=10)
    parser.add_argument("--size", default="175x115", help="WIDTHxHEIGHT, at most 700x460 (default 175x115)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must look like 175x115, got {args.size!r}")
    from masf_lightning.errors import MasfError

    start = time.perf_counter()
    existed = (Path(args.out) / MARKER_NAME).exists()
    try:
        out = generate_synthetic_breakhis(
            args.out,
            seed=args.seed,
            patients_per_type=args.patients_per_type,
            images_per_magnification=args.images_per_magnification,
            size=(w, h),
            progress=not args.no_progress,
        )
    except MasfError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    n = len(list((out / "BreaKHis_v1").rglob("*.png")))
    verb = "already present" if existed else f"wrote in {time.perf_counter() - start:.1f} s"
    print(
        f"{out / 'BreaKHis_v1'}: {n} images ({len(_TYPES)} types x {args.patients_per_type} patients x "
        f"{len(_MAGNIFICATIONS)} magnifications x {args.images_per_magnification}), {w}x{h} px, {verb}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
