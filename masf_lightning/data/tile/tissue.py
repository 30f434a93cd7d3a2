"""Where the tissue is: Otsu's threshold on the saturation of a low-resolution thumbnail.

Saturation, not grey: stained tissue is coloured and glass is grey-white however bright the scan. Holes,
folds and pen marks are left to the user's annotations (GeoJSON). The mask's integral image gives the
tissue fraction of any rectangle in O(1).
"""

from __future__ import annotations

import numpy as np

THUMB_SIDE = 1024  # the thumbnail's longer side is at least this where the pyramid has such a level


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation in [0, 1]."""
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximum between-class variance)."""
    hist, edges = np.histogram(values.ravel(), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


class TissueMask:
    """Tissue mask of a thumbnail taken at `downsample` (level-0 px per thumbnail px)."""

    def __init__(self, thumb: np.ndarray, downsample: float) -> None:
        sat = saturation(thumb)
        self.threshold = otsu(sat)
        self.mask = sat > self.threshold
        self.downsample = downsample
        self._integral = np.pad(self.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def fraction(self, x0: float, y0: float, x1: float, y1: float) -> float:
        """Tissue fraction of the level-0 rectangle [x0, x1) × [y0, y1)."""
        h, w = self.mask.shape
        c0, r0 = int(np.clip(round(x0 / self.downsample), 0, w)), int(np.clip(round(y0 / self.downsample), 0, h))
        c1, r1 = int(np.clip(round(x1 / self.downsample), 0, w)), int(np.clip(round(y1 / self.downsample), 0, h))
        if c1 <= c0 or r1 <= r0:
            return 0.0
        ii = self._integral
        return float(ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]) / ((r1 - r0) * (c1 - c0))
