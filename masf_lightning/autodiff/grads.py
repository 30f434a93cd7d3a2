"""Small gradient tools used by MASF's step."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def straight_through(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """A tensor with the value of `value` and the gradient of `carrier`."""
    return value.detach() + (carrier - carrier.detach())


def clip_per_tensor(grads: Sequence[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """Scale each tensor to norm ≤ max_norm, as MASF's code clips (per tensor, 2.0); differentiable."""
    if max_norm is None:
        return list(grads)
    return [g * (max_norm / (g.norm() + 1e-12)).clamp(max=1.0) for g in grads]
