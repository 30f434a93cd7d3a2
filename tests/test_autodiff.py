"""The numerical machinery under MASF's step, tested on its own."""

from __future__ import annotations

import torch
from torch import nn

from masf_lightning.autodiff import (
    clip_per_tensor,
    conv_double_backward_by_convs,
    mean_across_ranks,
    straight_through,
)


def _second_order(net: nn.Module, x: torch.Tensor, by_convs: bool) -> list[torch.Tensor]:
    """∇_w ‖∇_w L(w)‖² — the shape of Eq. 11's dependence on ∇L_cr: a double backward through every conv."""
    params = list(net.parameters())
    with conv_double_backward_by_convs(by_convs):
        loss = (net(x) ** 2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
    penalty = sum((g**2).sum() for g in grads)
    return list(torch.autograd.grad(penalty, params))


def test_conv_double_backward_by_convs_equals_autograds_own() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2, padding=2, dilation=2, bias=False), nn.Tanh(),
        nn.Conv2d(5, 6, 3, groups=1, padding="same"), nn.Tanh(),  # string padding stays on autograd's path
        nn.Flatten(1),
    ).double()  # fmt: skip
    x = torch.randn(4, 3, 15, 15, dtype=torch.double)
    ours, ref = _second_order(net, x, True), _second_order(net, x, False)
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_conv_routing_is_active_only_inside_the_context() -> None:
    net = nn.Conv2d(2, 2, 3).double()
    x = torch.randn(1, 2, 5, 5, dtype=torch.double, requires_grad=True)
    with conv_double_backward_by_convs(True):
        inside = net(x)
    outside = net(x)
    assert "_Conv2d" in type(inside.grad_fn).__name__ or "BackwardCFunction" in type(inside.grad_fn).__name__
    assert "Convolution" in type(outside.grad_fn).__name__
    assert torch.allclose(inside, outside)


def test_clip_per_tensor_scales_each_tensor_to_at_most_max_norm() -> None:
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4])
    ca, cb = clip_per_tensor([a, b], 2.0)
    assert torch.allclose(ca, a * 2.0 / 5.0) and torch.equal(cb, b)
    assert clip_per_tensor([a], None)[0] is a


def test_straight_through_has_value_of_one_and_gradient_of_other() -> None:
    w = torch.tensor(2.0, requires_grad=True)
    y = straight_through(torch.tensor(7.0), w**2)
    (g,) = torch.autograd.grad(y, [w])
    assert float(y) == 7.0 and float(g) == 4.0


def test_mean_across_ranks_is_identity_in_one_process() -> None:
    t = [torch.ones(2, 3), torch.zeros(4)]
    assert all(torch.equal(a, b) for a, b in zip(mean_across_ranks(t), t, strict=True))


def test_in_place_clip_equals_the_differentiable_one() -> None:
    from masf_lightning.autodiff import clip_per_tensor_

    g = [torch.tensor([3.0, 4.0]), torch.tensor([0.3, 0.4]), torch.zeros(3)]
    want = clip_per_tensor([t.clone() for t in g], 2.0)
    got = clip_per_tensor_(g, 2.0)
    assert all(torch.allclose(a, b) for a, b in zip(got, want, strict=True))
    assert got[0] is g[0] and torch.allclose(g[0], torch.tensor([1.2, 1.6])), "in place"
