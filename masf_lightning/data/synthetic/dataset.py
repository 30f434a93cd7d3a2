"""The dataset: which slide each patient gets, the fields of view of its images, and their names."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from masf_lightning.data.breakhis import BENIGN_TYPES, MAGNIFICATIONS, SUBTYPE_FOLDERS, TUMOR_TYPES
from masf_lightning.data.synthetic.benign import _Adenosis, _Fibroadenoma, _Phyllodes, _TubularAdenoma
from masf_lightning.data.synthetic.malignant import (
    _DuctalCarcinoma,
    _LobularCarcinoma,
    _MucinousCarcinoma,
    _PapillaryCarcinoma,
)
from masf_lightning.data.synthetic.primitives import _Gradients, _Pts, _View
from masf_lightning.data.synthetic.slide import _Slide
from masf_lightning.errors import ConfigError

# The generator's view of the canonical dataset constants: type → (malignancy folder, subtype folder).
_TYPES: dict[str, tuple[str, str]] = {
    t: ("benign" if t in BENIGN_TYPES else "malignant", SUBTYPE_FOLDERS[t]) for t in TUMOR_TYPES
}
_MAGNIFICATIONS: tuple[int, ...] = MAGNIFICATIONS

# Field of view at 40x (micrometres across the image width); BreaKHis 700 px at 40x is ~1.6 mm.
_FOV_40X_UM = 1600.0
# Region of the slide the regions of interest are drawn from (um); wide enough for distinct views.
_SLIDE_UM = 9000.0


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
    *, seed: int = 0, patients_per_type: int, images_per_magnification: int
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
