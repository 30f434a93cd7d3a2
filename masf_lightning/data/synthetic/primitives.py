"""Primitives of the synthetic slides: hashed noise, points and fields of view, jittered cell grids."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

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
# Curvilinear structures: the zero lines of a noise
# ---------------------------------------------------------------------------------------------
def _thread(n: np.ndarray, scale: float, width: float, u: float) -> np.ndarray:
    """Thin lines (half-width `width` um) along the zero lines of a noise, kept as wide as a pixel."""
    seen = max(width, 0.6 * u)
    d = _ridge(n, scale) * _F32(1 / seen)
    # widening to a pixel keeps the line's total ink, so it fades instead of aliasing
    return np.exp(-d * d) * _F32(width / seen)


def _ridge(n: np.ndarray, scale: float) -> np.ndarray:
    """Approximate distance (um) to the zero line of a noise of feature size `scale`: curvilinear structures."""
    return np.abs(n) * _F32(scale / _Gradients.GRAD)
