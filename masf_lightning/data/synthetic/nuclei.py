"""Nuclei: populations, their per-nucleus draws, their mean tone, and drawing them into a view."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from masf_lightning.data.synthetic.primitives import _F32, _Cells, _View


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
