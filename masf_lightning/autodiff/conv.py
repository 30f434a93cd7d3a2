"""Conv's double backward as plain convolutions: the same values as autograd's, cheaper on oneDNN.

Eq. 11 (second order) differentiates through ∇L_cr, i.e. through conv's backward. Autograd's generic
double backward (ConvolutionBackwardBackward0) gets the weight-gradient term from a convolution with the
batch as channels and the feature map as kernel, which oneDNN runs ~1.5× slower than the ordinary
primitives that compute the same products. Here conv's backward is written with two differentiable
nodes whose own backwards are exactly those primitives (conv forward, backward-data, backward-weight).
Tested against naive nested autograd in tests/test_autodiff.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

ConvConf = tuple[tuple[int, int], tuple[int, int], tuple[int, int], int]  # stride, padding, dilation, groups


def _conv_backward(
    gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, conf: ConvConf, mask: tuple[bool, bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """aten's conv backward (oneDNN / cuDNN primitives) for the outputs `mask` asks for."""
    stride, padding, dilation, groups = conf
    bias_sizes = [w.shape[0]] if mask[2] else None
    return torch.ops.aten.convolution_backward(gy, x, w, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask)


class _ConvGradInput(torch.autograd.Function):
    """∂L/∂x = backward-data(gy, w); differentiable in gy and w."""

    @staticmethod
    def forward(ctx: Any, gy: torch.Tensor, w: torch.Tensor, x: torch.Tensor, conf: ConvConf) -> torch.Tensor:
        ctx.save_for_backward(gy, w, x)
        ctx.conf = conf
        return _conv_backward(gy, x, w, conf, (True, False, False))[0]

    @staticmethod
    def backward(ctx: Any, u: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gy, w, x = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        g_gy = F.conv2d(u, w, None, stride, padding, dilation, groups) if ctx.needs_input_grad[0] else None
        g_w = _conv_backward(gy, u, w, ctx.conf, (False, True, False))[1] if ctx.needs_input_grad[1] else None
        return g_gy, g_w, None, None


class _ConvGradWeight(torch.autograd.Function):
    """(∂L/∂w, ∂L/∂b) = backward-weight(gy, x); differentiable in gy and x."""

    @staticmethod
    def forward(
        ctx: Any, gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, conf: ConvConf, bias: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        ctx.save_for_backward(gy, x, w)
        ctx.conf = conf
        _, gw, gb = _conv_backward(gy, x, w, conf, (False, True, bias))
        return gw, gb

    @staticmethod
    def backward(ctx: Any, v: torch.Tensor, vb: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        gy, x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        # ∂/∂gy of <v, gw> + <vb, gb> is a conv of x with kernel v and bias vb.
        g_gy = F.conv2d(x, v, vb, stride, padding, dilation, groups) if ctx.needs_input_grad[0] else None
        g_x = _conv_backward(gy, x, v, ctx.conf, (True, False, False))[0] if ctx.needs_input_grad[1] else None
        return g_gy, g_x, None, None, None


class _Conv2d(torch.autograd.Function):
    """F.conv2d whose backward, taken with create_graph, records the two nodes above."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, conf: ConvConf) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.conf, ctx.bias = conf, b is not None
        stride, padding, dilation, groups = conf
        return F.conv2d(x, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w = ctx.saved_tensors
        gx = _ConvGradInput.apply(gy, w, x, ctx.conf) if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gw, gb = _ConvGradWeight.apply(gy, x, w, ctx.conf, ctx.bias)
        return gx, gw, gb, None


def _conv2d_args(input: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1) -> tuple:
    """torch.conv2d's signature, to read its arguments however they were passed."""
    return input, weight, bias, stride, padding, dilation, groups


class _ConvByConvs(TorchFunctionMode):
    """Routes torch.conv2d (what nn.Conv2d calls) to _Conv2d; everything else, and string padding, as is."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.conv2d:
            x, w, b, stride, padding, dilation, groups = _conv2d_args(*args, **kwargs)
            if not isinstance(padding, str):
                pair = torch.nn.modules.utils._pair
                return _Conv2d.apply(x, w, b, (pair(stride), pair(padding), pair(dilation), groups))
        return func(*args, **kwargs)


@contextmanager
def conv_double_backward_by_convs(enabled: bool = True, device_type: str = "cpu") -> Iterator[None]:
    """Convs run inside get the double backward above. Not under autocast, whose casts would happen
    inside _Conv2d.forward, out of autograd's sight."""
    if not enabled or torch.is_autocast_enabled(device_type):
        yield
        return
    with _ConvByConvs():
        yield
