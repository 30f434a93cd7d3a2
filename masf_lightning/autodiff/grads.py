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


@torch.no_grad()
def clip_per_tensor_(grads: Sequence[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """clip_per_tensor in place, for gradients that carry no graph: one fused pass (torch._foreach_*), no copies
    of the 57 M AlexNet gradients."""
    grads = list(grads)
    if max_norm is None or not grads:
        return grads
    norms = torch._foreach_norm(grads)
    factors = [(max_norm / (n + 1e-12)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, factors)
    return grads
