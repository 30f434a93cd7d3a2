"""DeepAll with magnification zoom: what a pathologist tries before any domain-generalization method.

Every training image is shown through a window of side s·L resized back to L (`data.augment.zoom`), s drawn
log-uniformly from `zoom_range` per image, so the sources are also seen at the scales of the magnifications
around them. The default [0.5, 2] spans one BreaKHis step (×2 or ×2.5) in either direction: 200× tissue
zoomed in by 2 looks like 400×, 100× zoomed out by 2 like 50×. The draw is a pure function of (seed, step,
magnification), for the whole global batch, so it is the same on resume and under any DDP sharding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from masf_lightning.algorithms.base import Step
from masf_lightning.algorithms.deepall import DeepAll
from masf_lightning.autodiff import world_size
from masf_lightning.data.augment import draw_zoom, zoom
from masf_lightning.seeding import step_generator


class DeepAllZoom(DeepAll):
    """DeepAll (Eq. 3 on all sources) on randomly zoomed batches; evaluation sees the images unzoomed."""

    def __init__(self, *args: Any, zoom_range: tuple[float, float], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.zoom_range = (float(zoom_range[0]), float(zoom_range[1]))
        draw_zoom(0, self.zoom_range, torch.Generator())  # a bad range fails here, before any training

    def zoom_params(self, step: int, domain: str, n: int) -> torch.Tensor:
        """This rank's rows of the global batch's (s, u, v) draws: ranks keep rows r, r+W, … as the sampler does."""
        w = world_size()
        rank = dist.get_rank() if w > 1 else 0
        return draw_zoom(n * w, self.zoom_range, step_generator(self.seed, step, f"zoom/{domain}"))[rank::w]

    def update(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[Step]]:
        step = int(batch["step"])
        domains = {d: (zoom(x, self.zoom_params(step, d, len(x))), y) for d, (x, y) in batch["domains"].items()}
        return super().update({**batch, "domains": domains})
