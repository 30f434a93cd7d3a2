"""CIE L*a*b* maths for uint8 RGB images: what the Reinhard normalizer and the reference statistics share.

Reinhard matches each image's per-channel Lab means/stds to targets, and the targets are measured from a
reference image (`ReinhardNormalizer.fit`, `lab_statistics`) with the same conversion; it lives here, apart
from the normalizers in `stain.py`, so both use one implementation.
"""

from __future__ import annotations

import math

import torch
from kornia.color import rgb_to_linear_rgb, rgb_to_xyz

__all__ = ["lab_statistics", "uint8_percentile"]


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


def lab_statistics(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image CIELAB (means, stds), N×3 each, without brightness standardization (for diagnostics)."""
    batch, _ = _as_batch(images)
    return _lab_mean_std(batch, torch.ones(batch.shape[0], device=batch.device, dtype=torch.float64))
