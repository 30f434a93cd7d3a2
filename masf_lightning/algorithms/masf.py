"""MASF (Dou et al. 2019) for magnification generalization, as Eqs. 3–12 of the paper."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from masf_lightning.algorithms.base import DGModule
from masf_lightning.losses import (
    class_soft_labels,
    cross_entropy,
    global_alignment_loss,
    triplet_semihard_loss,
)

Batches = dict[str, tuple[torch.Tensor, torch.Tensor]]


def straight_through(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """A tensor with the value of `value` and the gradient of `carrier`."""
    return value.detach() + (carrier - carrier.detach())


def clip_per_tensor(grads: Sequence[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """Scale each tensor to norm ≤ max_norm (MASF's code clips per tensor at 2.0); differentiable."""
    if max_norm is None:
        return list(grads)
    return [g * (max_norm / (g.norm() + 1e-12)).clamp(max=1.0) for g in grads]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def sum_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over DDP processes (identity in one process)."""
    if _world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t)


def gather_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Differentiable concatenation of every process's rows, in rank order (identity in one process)."""
    if _world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t))


# -- Eq. 9 as one autograd node ------------------------------------------------------------------
class _InnerStep(torch.autograd.Function):
    """(ψ', θ') = (ψ, θ) − α·step (Eq. 9), whose backward also hands ∇L_cr to (ψ, θ) (Eq. 11's first term).

    ∇L_cr *is* the inner gradient, so L_cr need not be back-propagated again; delivering it here rather
    than through a Σ p·g carrier saves ~5 passes over every parameter (AlexNet: 57 M) per step. One node
    for all tensors: its backward runs as soon as any fast weight is used, so ∇L_cr always arrives.
    """

    @staticmethod
    def forward(ctx: Any, alpha: float, n: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params, steps, cr_grads = tensors[:n], tensors[n : 2 * n], tensors[2 * n :]
        ctx.alpha, ctx.n = alpha, n
        ctx.save_for_backward(*cr_grads)
        return tuple(torch.add(p, s, alpha=-alpha) for p, s in zip(params, steps, strict=True))

    @staticmethod
    def backward(ctx: Any, *grad_fast: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n, cr_grads = ctx.n, ctx.saved_tensors
        need_p, need_s = ctx.needs_input_grad[2 : 2 + n], ctx.needs_input_grad[2 + n : 2 + 2 * n]
        g_params = [g + c if need else None for g, c, need in zip(grad_fast, cr_grads, need_p, strict=True)]
        g_steps = [g * -ctx.alpha if need else None for g, need in zip(grad_fast, need_s, strict=True)]
        return (None, None, *g_params, *g_steps, *([None] * n))


# -- conv's double backward as plain convolutions --------------------------------------------------
# Eq. 11 differentiates through ∇L_cr, i.e. through conv's backward. Autograd's generic double backward
# (ConvolutionBackwardBackward0) gets the weight-gradient term from a convolution with the batch as
# channels and the feature map as kernel, which oneDNN runs ~1.5× slower than the ordinary primitives
# that compute the same products. Below, conv's backward is written with two differentiable nodes
# whose own backwards are exactly those primitives (conv forward, backward-data, backward-weight).
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


class MASF(DGModule):
    """Meta-learning over magnifications: featurizer F_ψ, classifier F_θ, embedder F_φ (paper Fig. 1)."""

    # False = autograd's own double backward of conv (same values, slower; experiments/bench.py --ablations).
    conv_double_backward_by_convs: bool = True

    def __init__(
        self,
        *args: Any,
        inner_lr: float = 1e-5,  # α, Eq. 9
        metric_lr: float = 1e-5,  # γ, Eq. 12 (η is `lr`, Eq. 11)
        beta_gen: float = 1.0,  # β1, Eq. 10
        beta_tri: float = 0.005,  # β2, Eq. 10
        temperature: float = 2.0,  # τ, Eq. 5
        margin: float = 10.0,  # ζ, Eq. 8 (MASF code's value)
        first_order: bool = False,  # True = stop-gradient through ∇L_cr, as both public TF codes
        inner_clip: float | None = None,  # per-tensor norm clip of the inner gradient (MASF code: 2.0)
        outer_clip: float | None = None,  # per-tensor norm clip of the final gradient, after all-reduce
        class_average: str = "present",  # Eq. 6 over classes present in both domains, or "all" (MASF code)
        triplet_fraction: float = 1 / 3,  # share of each domain's batch in T (MASF code: first third)
        embedder: dict[str, int] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, embedder=embedder or {}, **kwargs)
        self.automatic_optimization = False
        self.inner_lr, self.metric_lr = inner_lr, metric_lr
        self.beta_gen, self.beta_tri = beta_gen, beta_tri
        self.temperature, self.margin = temperature, margin
        self.first_order = first_order
        self.inner_clip, self.outer_clip = inner_clip, outer_clip
        self.class_average = class_average
        self.triplet_fraction = triplet_fraction

    def meta_objective(self, batches: Batches, meta_train: Sequence[str], meta_test: Sequence[str]) -> dict[str, torch.Tensor]:
        """One MASF episode. `total` has value L_cr + L_meta, its gradient is Eq. 11 for (ψ, θ) and Eq. 12 for φ."""
        psi = dict(self.featurizer.named_parameters())
        theta = dict(self.classifier.named_parameters())
        names = list(meta_train) + [d for d in batches if d not in meta_train]
        x_tr = torch.cat([batches[d][0] for d in meta_train])
        y_tr = torch.cat([batches[d][1] for d in meta_train])

        # Eq. 3: L_cr on the meta-train magnifications with (ψ, θ), one forward for all of them; its convs
        # get a cheaper double backward when Eq. 11 differentiates through ∇L_cr (exactly the same values).
        by_convs = self.conv_double_backward_by_convs and not self.first_order
        with conv_double_backward_by_convs(by_convs, x_tr.device.type):
            logits = functional_call(self.classifier, theta, functional_call(self.featurizer, psi, x_tr))
        cr = cross_entropy(logits, y_tr)
        params = [*psi.values(), *theta.values()]
        grads = torch.autograd.grad(cr, params, create_graph=not self.first_order)
        if _world_size() > 1:  # under DDP every rank steps with the global batch's ∇L_cr
            flat = sum_across_ranks(torch.cat([g.reshape(-1) for g in grads])) / _world_size()
            grads = [f.view_as(g) for f, g in zip(flat.split([g.numel() for g in grads]), grads, strict=True)]

        # Eq. 9: (ψ', θ') = (ψ, θ) − α ∇L_cr; first-order drops the inner gradient's own dependence on (ψ, θ).
        # The node also carries ∇L_cr itself (unclipped) back to (ψ, θ): Eq. 11's first term.
        inner = clip_per_tensor(grads if not self.first_order else [g.detach() for g in grads], self.inner_clip)
        cr_grads = [g.detach() for g in grads]
        fast = _InnerStep.apply(self.inner_lr, len(params), *params, *inner, *cr_grads)
        psi_f = dict(zip(psi, fast[: len(psi)], strict=True))
        theta_f = dict(zip(theta, fast[len(psi) :], strict=True))

        # One forward of every source magnification with ψ'; split back per domain.
        sizes = [len(batches[d][0]) for d in names]
        feats = functional_call(self.featurizer, psi_f, torch.cat([batches[d][0] for d in names])).split(sizes)
        feats = dict(zip(names, feats, strict=True))

        # Eqs. 4–7: class-mean soft labels through F_θ' at temperature τ, symmetric KL over tr × te pairs.
        soft = {
            d: class_soft_labels(
                feats[d],
                batches[d][1],
                lambda z: functional_call(self.classifier, theta_f, z),
                self.num_classes,
                self.temperature,
                all_reduce=sum_across_ranks,
            )
            for d in names
        }
        gen = global_alignment_loss(soft, meta_train, meta_test, class_average=self.class_average)

        # Eq. 8 on T: the first part of every source batch, embedded with (ψ', φ). The features carry
        # β2 of the gradient (Eq. 11 sees β2 L_tri) while φ gets ∇_φ L_tri unscaled (Eq. 12).
        k = [max(2, round(self.triplet_fraction * n)) for n in sizes]
        f_t = torch.cat([feats[d][:m] for d, m in zip(names, k, strict=True)])
        y_t = torch.cat([batches[d][1][:m] for d, m in zip(names, k, strict=True)])
        f_scaled = self.beta_tri * f_t + (1 - self.beta_tri) * f_t.detach()
        tri_carrier = triplet_semihard_loss(gather_across_ranks(self.embedder(f_scaled)), gather_across_ranks(y_t), self.margin)
        tri = tri_carrier.detach()

        meta = self.beta_gen * gen + self.beta_tri * tri  # Eq. 10
        # L_cr enters by value only: its gradient reaches (ψ, θ) through _InnerStep.
        total = cr.detach() + self.beta_gen * gen + straight_through(self.beta_tri * tri, tri_carrier)
        return {"cr": cr.detach(), "gen": gen, "tri": tri, "meta": meta, "total": total}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.meta_objective(batch["domains"], batch["meta_train"], batch["meta_test"])
        self.check_finite({k: out[k] for k in ("cr", "gen", "tri")}, batch)
        opt = self.optimizers()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(out["total"])  # one backward: DDP all-reduces once
        if self.outer_clip is not None:
            for p in self.parameters():
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], self.outer_clip)
        opt.step()  # Eq. 11 on (ψ, θ) at lr η, Eq. 12 on φ at lr γ: one Adam, two parameter groups
        self.log_dict({f"train/{k}": out[k].detach() for k in ("cr", "gen", "tri", "total")}, prog_bar=False)
        self.log("loss", out["total"].detach(), prog_bar=True, logger=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Adam is per-parameter, so one Adam with two groups is two Adams — and one optimizer step per
        # meta-iteration keeps trainer.global_step equal to the paper's iteration count.
        return torch.optim.Adam(
            [
                {"params": [*self.featurizer.parameters(), *self.classifier.parameters()], "lr": self.lr},
                {"params": list(self.embedder.parameters()), "lr": self.metric_lr},
            ],
            weight_decay=self.weight_decay,
        )
