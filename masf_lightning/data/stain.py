"""Stain normalizers for H&E images: uint8 N×3×H×W (or 3×H×W) in, uint8 out, on CPU or GPU.

The paper preprocesses BreaKHis with Reinhard colour transfer (Reinhard et al., IEEE CG&A 2001) as done
by staintools: brightness standardization, then per-channel CIELAB mean/std matching. Every normalizer has
`fit(reference)`, `__call__(images)` and `fingerprint()`; the fingerprint is part of the image-cache key,
so it must name every setting that changes the output.
The CIELAB conversion itself is in `color.py`.
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
from kornia.color import lab_to_rgb

from masf_lightning.data.color import _as_batch, _lab, _lab_mean_std, uint8_percentile
from masf_lightning.data.decode import decode_rgb_file
from masf_lightning.errors import ConfigError

__all__ = [
    "PAPER_TARGET_MEANS",
    "PAPER_TARGET_STDS",
    "StainNormalizer",
    "ReinhardNormalizer",
    "MacenkoNormalizer",
    "IdentityNormalizer",
]

# Statistics of the paper's reference image (CIELAB, L in 0..100, after brightness standardization).
PAPER_TARGET_MEANS = (74.809, 16.142, -11.705)
PAPER_TARGET_STDS = (15.599, 10.487, 6.999)

# A channel whose std is below this (Lab units; uint8 quantization steps are ~0.4) is only shifted, not
# scaled: dividing by a near-zero std would blow float noise up to the target std.
_MIN_STD = 1e-2


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
