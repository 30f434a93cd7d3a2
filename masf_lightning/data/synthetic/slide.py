"""One patient's slide: the base class every tumour type fills in, from potentials to an RGB image."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from masf_lightning.data.synthetic.nuclei import _expected_od, _nucleus_params, _NucSpec, _render_nuclei
from masf_lightning.data.synthetic.optics import _optics, _Stain
from masf_lightning.data.synthetic.primitives import (
    _F32,
    _Cells,
    _Gradients,
    _lod,
    _name_key,
    _Pts,
    _thread,
    _View,
)


# ---------------------------------------------------------------------------------------------
# Slides: one class per tumour type; each defines its architecture as smooth potentials (cheap
# to sample coarsely) and a pointwise map from potentials to compartments (sharp, full resolution).
# ---------------------------------------------------------------------------------------------
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
