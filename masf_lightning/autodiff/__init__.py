"""Numerical machinery MASF's step is built from, kept apart so the algorithm file reads like its equations."""

from masf_lightning.autodiff.conv import conv_double_backward_by_convs
from masf_lightning.autodiff.distributed import (
    gather_across_ranks,
    mean_across_ranks,
    sum_across_ranks,
    world_size,
)
from masf_lightning.autodiff.grads import clip_per_tensor, clip_per_tensor_, straight_through

__all__ = [
    "clip_per_tensor",
    "clip_per_tensor_",
    "conv_double_backward_by_convs",
    "gather_across_ranks",
    "mean_across_ranks",
    "straight_through",
    "sum_across_ranks",
    "world_size",
]
