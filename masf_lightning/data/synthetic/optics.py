"""Optics: the H&E stain model (Beer-Lambert), defocus blur, vignetting and sensor noise."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from masf_lightning.data.synthetic.primitives import _F32

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
