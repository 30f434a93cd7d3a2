"""Differentiable cross-process reductions: under DDP, MASF's inner gradient, class means and triplet
set are those of the global batch, so two processes make the same update as one."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over DDP processes (identity in one process)."""
    if world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def mean_across_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-tensor mean over processes, flattened into one all-reduce (identity in one process)."""
    if world_size() == 1:
        return tensors
    flat = sum_across_ranks(torch.cat([g.reshape(-1) for g in tensors])) / world_size()
    return [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in tensors]), tensors, strict=True)]


def gather_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable concatenation of every process's rows, in rank order (identity in one process)."""
    if world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t))
