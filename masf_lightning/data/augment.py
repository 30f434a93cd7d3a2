"""Label-preserving image augmentations, applied to batches on the device that trains.

`augment` / `center_crop` are every method's training / evaluation views of a cached image. `zoom` is the
magnification-aware augmentation of `method=deepall_zoom`: it rescales the field of view, so a model trained
on some magnifications also sees tissue at the scale of their neighbours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, out_size: int, params: torch.Tensor) -> torch.Tensor:
    """Per-sample crop to out_size at (oy, ox), horizontal flip and k·90° rotation (params rows: oy, ox, flip, k).

    Histology has no canonical orientation, so flips and right-angle rotations are label-preserving.
    Slicing per sample keeps this a memory copy (a 4-D gather index was ~40× slower on CPU).
    """
    p = params.tolist()
    crops = [x[i, :, oy : oy + out_size, ox : ox + out_size] for i, (oy, ox, _, _) in enumerate(p)]
    out = []
    for crop, (_, _, flip, k) in zip(crops, p, strict=True):
        if flip:
            crop = crop.flip(-1)
        if k:
            crop = torch.rot90(crop, k, dims=(-2, -1))
        out.append(crop)
    return torch.stack(out)


def center_crop(x: torch.Tensor, out_size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - out_size) // 2, (w - out_size) // 2
    return x[..., top : top + out_size, left : left + out_size]


def draw_zoom(n: int, scale_range: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """n rows (s, u, v): window side s·L, s log-uniform in scale_range (zoom is multiplicative, so 0.5 and 2 are
    equally likely), and the window's centre as fractions u, v ∈ [0, 1) of the room it has to move."""
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise ValueError(f"zoom range must satisfy 0 < low <= high, got {list(scale_range)}")
    r = torch.rand(n, 3, generator=generator, dtype=torch.float64)
    s = torch.exp(math.log(lo) + r[:, 0] * (math.log(hi) - math.log(lo)))
    return torch.stack([s, r[:, 1], r[:, 2]], 1)


def zoom(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Show each image's window of side s·L (rows of `params`: s, u, v from `draw_zoom`) resized back to L×L.

    s < 1 zooms in (a higher magnification: the window moves by u, v within the image); s > 1 zooms out, the
    missing border filled by reflection (mirrored tissue is still tissue) around the centred image. One batched
    bilinear resampling; zooming out by s > 2 aliases (no low-pass first), so keep s ≤ 2.
    """
    s, u, v = (params[:, i].to(x.device, x.dtype) for i in range(3))
    room = (1 - s).clamp_min(0)  # how far the window's centre may move, in the [-1, 1] coordinates of the image
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = s
    theta[:, 0, 2] = room * (2 * u - 1)
    theta[:, 1, 2] = room * (2 * v - 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
