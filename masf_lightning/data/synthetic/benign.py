"""The four benign tumour types: glandular (adenosis, tubular adenoma) and fibroepithelial (fibroadenoma, phyllodes)."""

from __future__ import annotations

from typing import Any

import numpy as np

from masf_lightning.data.synthetic.nuclei import _NucSpec
from masf_lightning.data.synthetic.primitives import _F32, _Cells, _Ellipses, _Pts, _ramp, _ridge, _View
from masf_lightning.data.synthetic.slide import _Slide, _stromal


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
