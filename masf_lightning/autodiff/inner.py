"""The functional inner step the meta-learners share: (ψ′, θ′) = (ψ, θ) − α ∇L_cr(ψ, θ) on the meta-train batch.

MASF's Eq. 9 and MLDG's θ − α∇L_tr(θ) are the same computation: cross-entropy of F_θ(F_ψ(x)) on the
meta-train magnifications, its gradient (kept in the graph for the exact second-order meta gradient, or
stopped for the first-order variant), and fast weights the meta-test loss is then evaluated at.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from masf_lightning.autodiff.conv import conv_double_backward_by_convs
from masf_lightning.autodiff.distributed import mean_across_ranks, world_size
from masf_lightning.autodiff.grads import clip_per_tensor
from masf_lightning.losses import cross_entropy


@dataclass
class InnerStep:
    loss: torch.Tensor  # L_cr on the meta-train batch, in the graph
    grads: list[torch.Tensor]  # ∇_(ψ,θ) L_cr (mean over DDP ranks), with graph unless first order
    psi: dict[str, torch.Tensor]  # ψ′, fast featurizer weights by name
    theta: dict[str, torch.Tensor]  # θ′, fast classifier weights by name

    def logits(self, featurizer: nn.Module, classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """F_θ′(F_ψ′(x)): the network at the fast weights."""
        return functional_call(classifier, self.theta, functional_call(featurizer, self.psi, x))


def inner_step(
    featurizer: nn.Module,
    classifier: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: float,
    first_order: bool = False,
    sum_scale: float = 1.0,
    clip: float | None = None,
    convs_double_backward: bool = True,
) -> InnerStep:
    """One gradient step of cross-entropy from the current weights, functionally (the modules are not changed).

    `sum_scale` ≠ 1 turns the batch-mean gradient into a per-domain batch sum (MASF's public code);
    `clip` is a per-tensor norm clip of the step's gradient (MASF code: 2.0). One forward for all of x:
    convs then get the cheaper double backward of `conv_double_backward_by_convs`.
    """
    psi, theta = dict(featurizer.named_parameters()), dict(classifier.named_parameters())
    params = [*psi.values(), *theta.values()]
    # second order differentiates the gradient: attention (a ViT's) must run SDPA's math kernel, whose backward is
    # itself differentiable (the fused CPU/GPU kernels have no double backward)
    attention = sdpa_kernel(SDPBackend.MATH) if not first_order else contextlib.nullcontext()
    with conv_double_backward_by_convs(convs_double_backward and not first_order, x.device.type), attention:
        loss = cross_entropy(functional_call(classifier, theta, functional_call(featurizer, psi, x)), y)
    grads = mean_across_ranks(list(torch.autograd.grad(loss, params, create_graph=not first_order)))
    step = [g.detach() if first_order else g for g in grads]
    step = clip_per_tensor([sum_scale * g for g in step] if sum_scale != 1.0 else step, clip)
    fast = [p - lr * g for p, g in zip(params, step, strict=True)]
    return InnerStep(
        loss,
        grads,
        dict(zip(psi, fast[: len(psi)], strict=True)),
        dict(zip(theta, fast[len(psi) :], strict=True)),
    )


def sum_scale(batch_rows: int, domains: int, reduction: str) -> float:
    """The factor from the batch mean to MASF code's per-domain batch sum (the global batch under DDP)."""
    return batch_rows * world_size() / domains if reduction == "sum" else 1.0
