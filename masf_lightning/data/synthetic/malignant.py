"""The four malignant tumour types: ductal, lobular, mucinous and papillary carcinoma."""

from __future__ import annotations

from typing import Any

import numpy as np

from masf_lightning.data.synthetic.nuclei import _NucSpec
from masf_lightning.data.synthetic.primitives import _F32, _Ellipses, _Gradients, _Pts, _ramp, _ridge, _View
from masf_lightning.data.synthetic.slide import _Slide, _stromal


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
