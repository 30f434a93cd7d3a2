"""Numerical machinery the meta-learners' steps are built from, kept apart so the algorithm file reads like its equations."""

from masf_lightning.autodiff.conv import conv_double_backward_by_convs
from masf_lightning.autodiff.distributed import (
    gather_across_ranks,
    mean_across_ranks,
    sum_across_ranks,
    world_size,
)
from masf_lightning.autodiff.grads import clip_per_tensor, clip_per_tensor_, straight_through
from masf_lightning.autodiff.inner import InnerStep, inner_step, sum_scale

__all__ = [
    "InnerStep",
    "clip_per_tensor",
    "clip_per_tensor_",
    "conv_double_backward_by_convs",
    "gather_across_ranks",
    "inner_step",
    "mean_across_ranks",
    "straight_through",
    "sum_scale",
    "sum_across_ranks",
    "world_size",
]
