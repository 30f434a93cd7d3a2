"""Stain normalizers for H&E images: uint8 N×3×H×W (or 3×H×W) in, uint8 out, on CPU or GPU.

The paper preprocesses BreaKHis with Reinhard colour transfer (Reinhard et al., IEEE CG&A 2001) as done
by staintools: brightness standardization, then per-channel CIELAB mean/std matching. Every normalizer has
`fit(reference)`, `__call__(images)` and `fingerprint()`; the fingerprint is part of the image-cache key,
so it must name every setting that changes the output.
"""

from __future__ import annotations

import copy
import math
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from kornia.color import lab_to_rgb, rgb_to_linear_rgb, rgb_to_xyz

from masf_lightning.data.decode import decode_rgb_file
from masf_lightning.errors import ConfigError

__all__ = [
    "PAPER_TARGET_MEANS",
    "PAPER_TARGET_STDS",
    "StainNormalizer",
    "ReinhardNormalizer",
    "MacenkoNormalizer",
    "IdentityNormalizer",
    "lab_statistics",
    "uint8_percentile",
]

# Statistics of the paper's reference image (CIELAB, L in 0..100, after brightness standardization).
PAPER_TARGET_MEANS = (74.809, 16.142, -11.705)
PAPER_TARGET_STDS = (15.599, 10.487, 6.999)

# A channel whose std is below this (Lab units; uint8 quantization steps are ~0.4) is only shifted, not
# scaled: dividing by a near-zero std would blow float noise up to the target std.
_MIN_STD = 1e-2


def _as_batch(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return (N×3×H×W view, whether the input was a single 3×H×W image)."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.ndim == 3 and images.shape[0] == 3:
        return images.unsqueeze(0), True
    if images.ndim == 4 and images.shape[1] == 3:
        return images, False
    raise ValueError(f"expected 3×H×W or N×3×H×W RGB images, got shape {tuple(images.shape)}")


def _load_reference(path: str | Path) -> torch.Tensor:
    """Decode a reference image with the cache's policy: missing/corrupt/grayscale file → DataError naming it."""
    image, had_alpha = decode_rgb_file(Path(path))
    if had_alpha:
        warnings.warn(f"{path}: dropped the alpha channel of the stain reference image", stacklevel=3)
    return image


class StainNormalizer:
    """Base class: subclasses implement `__call__`; `transform_region` may be overridden to save work."""

    method: str = "base"

    def fit(self, reference: torch.Tensor) -> StainNormalizer:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def transform_region(
        self, images: torch.Tensor, top: int, left: int, height: int, width: int
    ) -> torch.Tensor:
        """Normalize with whole-image statistics but return only a region; equals cropping `__call__`'s output.

        The cache crops 227×227 out of 700×460 images, so a normalizer that is pixel-wise once its per-image
        statistics are known (Reinhard) can skip converting the 84% of pixels that are thrown away.
        """
        return self(images)[..., top : top + height, left : left + width]

    def fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.fingerprint()})"


class IdentityNormalizer(StainNormalizer):
    """No stain normalization (method "none"), for ablations."""

    method = "none"

    def fit(self, reference: torch.Tensor) -> IdentityNormalizer:
        _as_batch(reference)
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _as_batch(images)
        return images

    def transform_region(
        self, images: torch.Tensor, top: int, left: int, height: int, width: int
    ) -> torch.Tensor:
        _as_batch(images)
        return images[..., top : top + height, left : left + width]

    def fingerprint(self) -> dict[str, Any]:
        return {"method": self.method}


# ---------------------------------------------------------------------------------------------------------
# CIELAB forward conversion for uint8 input.
#
# kornia.color.rgb_to_lab costs ~18 ms for one 700×460 image on one core, too slow for the 90 s budget of
# 7,909 images, and Reinhard needs Lab of every pixel only for the statistics. Because the input is uint8
# and brightness standardization is a per-image scalar, sRGB→linear is a 256-entry lookup table per image
# (built with kornia's own companding), and the RGB→XYZ matrix and white point are read off
# kornia.color.rgb_to_xyz, so no conversion matrix is typed here. What remains is the CIE 15 definition
# of L*a*b* from XYZ, checked against kornia and skimage in tests/test_stain.py. The inverse (Lab→RGB, run
# only on the kept region) is kornia.color.lab_to_rgb.
# ---------------------------------------------------------------------------------------------------------

_CIE_DELTA = 6.0 / 29.0  # CIE 15:2004 L*a*b*: f(t) = t^(1/3) above delta^3, linear below.


def _xyz_matrix_normalized() -> torch.Tensor:
    """kornia's linear-RGB→XYZ matrix with rows divided by the XYZ of RGB white (the D65 white point)."""
    basis = torch.eye(3, dtype=torch.float64).view(3, 3, 1, 1)
    matrix = rgb_to_xyz(basis)[..., 0, 0].T  # column j = XYZ of primary j
    white = matrix.sum(dim=1, keepdim=True)  # XYZ of (1, 1, 1): D65 by construction of sRGB
    return (matrix / white).to(torch.float32)


_XYZ_NORMALIZED = _xyz_matrix_normalized()


def _linear_lut(scale: torch.Tensor) -> torch.Tensor:
    """(N, 256) linear-RGB value of each uint8 level after multiplying by the per-image `scale` and clipping."""
    levels = torch.arange(256, device=scale.device, dtype=torch.float32)
    srgb = (levels[None, :] * scale[:, None].to(torch.float32)).clamp_(0.0, 255.0).div_(255.0)
    return rgb_to_linear_rgb(srgb[:, None, None, :].expand(-1, 3, 1, -1))[:, 0, 0, :].contiguous()


def uint8_percentile(images: torch.Tensor, q: float) -> torch.Tensor:
    """Per-image q-th percentile of all values of uint8 N×… images, as numpy's default (linear) method.

    A 256-bin histogram is exact for uint8 and ~30× cheaper than torch.quantile's sort.
    """
    n = images.shape[0]
    flat = images.reshape(n, -1)
    hist = torch.stack([torch.bincount(row, minlength=256) for row in flat])
    cdf = hist.cumsum(dim=1)
    count = flat.shape[1]
    pos = (count - 1) * q / 100.0
    lo = math.floor(pos)
    frac = pos - lo
    hi = min(lo + 1, count - 1)
    probes = torch.tensor([lo, hi], device=images.device, dtype=cdf.dtype).expand(n, 2).contiguous()
    # searchsorted(right=True) on the cdf gives the value at a 0-based sorted position.
    values = torch.searchsorted(cdf, probes, right=True).to(torch.float64)
    return values[:, 0] + frac * (values[:, 1] - values[:, 0])


# Pixels per step of the statistics pass on CPU. What matters for speed is that the step's buffers are
# reused across steps and images: fresh ~4 MB temporaries per op page-fault and cost ~25% of the throughput
# with two worker threads. Chunking only bounds the buffers for large images. On GPU the whole image is one step.
_CPU_CHUNK = 65536


class _LabWorkspace:
    """Reusable buffers for converting C pixels at a time (one per call, so threads never share one)."""

    def __init__(self, chunk: int, device: torch.device) -> None:
        self.index = torch.empty(3 * chunk, dtype=torch.int32, device=device)
        self.linear = torch.empty(3 * chunk, dtype=torch.float32, device=device)
        self.xyz = torch.empty(3 * chunk, dtype=torch.float32, device=device)
        self.f = torch.empty(3 * chunk, dtype=torch.float32, device=device)
        self.lab = torch.empty(3 * chunk, dtype=torch.float32, device=device)

    def convert(self, pixels: torch.Tensor, lut: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """CIELAB 3×c (a view into the workspace, valid until the next call) of uint8 3×c pixels."""
        c = pixels.shape[1]
        index = self.index[: 3 * c].view(3, c)
        index.copy_(pixels)
        linear = self.linear[: 3 * c].view(3, c)
        torch.index_select(lut, 0, self.index[: 3 * c], out=self.linear[: 3 * c])
        xyz = self.xyz[: 3 * c].view(3, c)
        torch.matmul(matrix, linear, out=xyz)  # XYZ / white, so D65 white → (1, 1, 1)
        f = self.f[: 3 * c].view(3, c)
        torch.pow(xyz, 1.0 / 3.0, out=f)  # xyz ≥ 0: linear RGB and the matrix are non-negative
        # Only near-black pixels take the linear branch; on CPU skip the costly where when there are none.
        if xyz.device.type != "cpu" or float(xyz.amin()) <= _CIE_DELTA**3:
            f.copy_(torch.where(xyz > _CIE_DELTA**3, f, xyz / (3 * _CIE_DELTA**2) + 4.0 / 29.0))
        lab = self.lab[: 3 * c].view(3, c)
        torch.mul(f[1], 116.0, out=lab[0]).sub_(16.0)
        torch.sub(f[0], f[1], out=lab[1]).mul_(500.0)
        torch.sub(f[1], f[2], out=lab[2]).mul_(200.0)
        return lab


def _lab(images: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CIELAB (L 0..100) float32 N×3×H×W of uint8 images brightness-scaled by a per-image factor."""
    n, _, h, w = images.shape
    luts = _linear_lut(scale)
    matrix = _XYZ_NORMALIZED.to(images.device)
    work = _LabWorkspace(h * w, images.device)
    out = torch.empty((n, 3, h, w), dtype=torch.float32, device=images.device)
    for i in range(n):
        out[i] = work.convert(images[i].reshape(3, -1), luts[i], matrix).view(3, h, w)
    return out


def _lab_mean_std(images: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image CIELAB means and population stds (as cv2.meanStdDev), N×3 float32, without keeping the Lab.

    Chunk statistics are combined with Chan et al.'s pairwise update in float64, so the result matches a
    two-pass computation over the whole image.
    """
    n = images.shape[0]
    pixels = images.shape[-2] * images.shape[-1]
    chunk = min(pixels, _CPU_CHUNK) if images.device.type == "cpu" else pixels
    luts = _linear_lut(scale)
    matrix = _XYZ_NORMALIZED.to(images.device)
    work = _LabWorkspace(chunk, images.device)
    means = torch.empty((n, 3), dtype=torch.float64, device=images.device)
    stds = torch.empty_like(means)
    for i in range(n):
        flat = images[i].reshape(3, -1)
        part_means, part_m2, part_n = [], [], []
        for start in range(0, pixels, chunk):
            lab = work.convert(flat[:, start : start + chunk], luts[i], matrix)
            m = lab.mean(dim=1, keepdim=True)
            centred = work.f[: lab.numel()].view_as(lab)  # f is spent once lab exists; reuse it
            torch.sub(lab, m, out=centred)
            part_means.append(m[:, 0])
            part_m2.append(torch.linalg.vector_norm(centred, dim=1).square())
            part_n.append(lab.shape[1])
        counts = torch.tensor(part_n, dtype=torch.float64, device=images.device)[:, None]
        m_parts = torch.stack(part_means).double()
        mean = (m_parts * counts).sum(0) / pixels
        m2 = torch.stack(part_m2).double().sum(0) + (counts * (m_parts - mean).square()).sum(0)
        means[i], stds[i] = mean, (m2 / pixels).sqrt()
    return means.float(), stds.float()


class ReinhardNormalizer(StainNormalizer):
    """Reinhard colour transfer in CIELAB with staintools-style brightness standardization (the paper's).

    Per image: scale all values so the `brightness_percentile`-th percentile of all pixel values maps to
    255 and clip (kept in float; staintools truncates to uint8 here), convert to CIELAB (L in 0..100), map
    each channel's own mean/std to the target mean/std, clip L to 0..100 and a, b to -128..127 as
    staintools' uint8 Lab does, convert back to RGB uint8. Each image of a batch uses its own statistics.
    """

    method = "reinhard"

    def __init__(
        self,
        target_means: Sequence[float] = PAPER_TARGET_MEANS,
        target_stds: Sequence[float] = PAPER_TARGET_STDS,
        reference: str | Path | None = None,
        brightness_percentile: float = 90.0,
        standardize_brightness: bool = True,
    ) -> None:
        means = tuple(float(v) for v in target_means)
        stds = tuple(float(v) for v in target_stds)
        if len(means) != 3 or len(stds) != 3:
            raise ConfigError("stain.target_means and stain.target_stds need 3 values each (L, a, b)")
        if not all(s > 0 and math.isfinite(s) for s in stds) or not all(math.isfinite(m) for m in means):
            raise ConfigError(f"stain.target_stds must be positive and finite, got {list(stds)}")
        if not 0.0 < float(brightness_percentile) <= 100.0:
            raise ConfigError(f"stain.brightness_percentile must be in (0, 100], got {brightness_percentile}")
        self.target_means = torch.tensor(means, dtype=torch.float64)
        self.target_stds = torch.tensor(stds, dtype=torch.float64)
        self.brightness_percentile = float(brightness_percentile)
        self.standardize_brightness = bool(standardize_brightness)
        if reference is not None:
            self.fit(_load_reference(reference))

    def _scale(self, images: torch.Tensor) -> torch.Tensor:
        if not self.standardize_brightness:
            return torch.ones(images.shape[0], device=images.device, dtype=torch.float64)
        p = uint8_percentile(images, self.brightness_percentile)
        # An all-black image has p = 0: leave it as is rather than divide by zero.
        return torch.where(p > 0, 255.0 / p.clamp(min=1e-12), torch.ones_like(p))

    def lab_statistics(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image CIELAB (means, stds), N×3 each, after brightness standardization: what gets matched."""
        batch, _ = _as_batch(images)
        return _lab_mean_std(batch, self._scale(batch))

    @torch.no_grad()
    def fit(self, reference: torch.Tensor) -> ReinhardNormalizer:
        """Take the targets from a reference image's own statistics (after brightness standardization)."""
        batch, single = _as_batch(reference)
        if not single and batch.shape[0] != 1:
            raise ValueError("fit() takes one reference image")
        mean, std = self.lab_statistics(batch)
        self.target_means = mean[0].double().cpu()
        self.target_stds = std[0].double().clamp(min=_MIN_STD).cpu()
        return self

    @torch.no_grad()
    def transform_region(
        self, images: torch.Tensor, top: int, left: int, height: int, width: int
    ) -> torch.Tensor:
        batch, single = _as_batch(images)
        scale = self._scale(batch)
        mean, std = _lab_mean_std(batch, scale)
        # Reinhard is pixel-wise once the statistics are known: convert only the kept region.
        region = _lab(batch[..., top : top + height, left : left + width].contiguous(), scale)
        device = batch.device
        t_mean = self.target_means.to(device, torch.float32)[None, :, None, None]
        t_std = self.target_stds.to(device, torch.float32)[None, :, None, None]
        ratio = torch.where(std > _MIN_STD, t_std[..., 0, 0] / std.clamp(min=_MIN_STD), torch.ones_like(std))
        out = (region - mean[..., None, None]) * ratio[..., None, None] + t_mean
        out[:, 0].clamp_(0.0, 100.0)
        out[:, 1:].clamp_(-128.0, 127.0)
        rgb = lab_to_rgb(out, clip=True).mul_(255.0).round_().to(torch.uint8)
        return rgb[0] if single else rgb

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch, _ = _as_batch(images)
        return self.transform_region(images, 0, 0, batch.shape[-2], batch.shape[-1])

    def fingerprint(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "target_means": [round(float(v), 6) for v in self.target_means],
            "target_stds": [round(float(v), 6) for v in self.target_stds],
            "brightness_percentile": self.brightness_percentile,
            "standardize_brightness": self.standardize_brightness,
            "lab": "cie15-d65",
        }


class MacenkoNormalizer(StainNormalizer):
    """Macenko et al. (ISBI 2009) stain-vector normalization via torchstain's torch backend, one image at a time.

    Without `reference` the targets are torchstain's defaults (the reference stain matrix and maximum
    concentrations of the original Macenko implementation). An image with too little tissue to estimate
    stain vectors (e.g. blank background) is passed through unchanged with a warning, because one blank
    tile should not abort preprocessing of the whole dataset.
    """

    method = "macenko"

    def __init__(
        self, reference: str | Path | None = None, Io: float = 240.0, alpha: float = 1.0, beta: float = 0.15
    ) -> None:
        import torchstain

        self._impl = torchstain.normalizers.MacenkoNormalizer(backend="torch")
        self.Io, self.alpha, self.beta = float(Io), float(alpha), float(beta)
        # torchstain keeps its targets as CPU tensors on the object; worker threads each need a copy on their
        # device, made once here instead of swapping the shared object's tensors during a call.
        self._per_device: dict[torch.device, Any] = {}
        self._lock = threading.Lock()
        if reference is not None:
            self.fit(_load_reference(reference))

    @torch.no_grad()
    def fit(self, reference: torch.Tensor) -> MacenkoNormalizer:
        batch, _ = _as_batch(reference)
        self._impl.fit(batch[0].cpu(), Io=self.Io, alpha=self.alpha, beta=self.beta)
        with self._lock:
            self._per_device.clear()
        return self

    def _impl_on(self, device: torch.device) -> Any:
        if device.type == "cpu":
            return self._impl
        with self._lock:
            if device not in self._per_device:
                impl = copy.copy(self._impl)
                impl.HERef, impl.maxCRef = self._impl.HERef.to(device), self._impl.maxCRef.to(device)
                self._per_device[device] = impl
            return self._per_device[device]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch, single = _as_batch(images)
        impl = self._impl_on(batch.device)
        out = torch.empty_like(batch)
        skipped = 0
        for i, image in enumerate(batch):
            try:
                norm, _, _ = impl.normalize(image, Io=self.Io, alpha=self.alpha, beta=self.beta, stains=False)
            except (IndexError, torch.linalg.LinAlgError):  # (almost) no tissue pixels: no stain vectors
                out[i] = image
                skipped += 1
                continue
            out[i] = norm.clamp(0, 255).to(torch.uint8).permute(2, 0, 1)
        if skipped:
            warnings.warn(
                f"Macenko: {skipped} image(s) without enough tissue were left unnormalized", stacklevel=2
            )
        return out[0] if single else out

    def fingerprint(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "he_ref": [[round(float(v), 6) for v in row] for row in self._impl.HERef.tolist()],
            "max_c_ref": [round(float(v), 6) for v in self._impl.maxCRef.tolist()],
            "Io": self.Io,
            "alpha": self.alpha,
            "beta": self.beta,
        }


def lab_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image CIELAB (means, stds), N×3 each, without brightness standardization (for diagnostics)."""
    batch, _ = _as_batch(images)
    return _lab_mean_std(batch, torch.ones(batch.shape[0], device=batch.device, dtype=torch.float64))
