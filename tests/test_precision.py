"""Mixed precision keeps every method's gradients right: bf16 autocast (CPU) against fp32 on a small conv net,
second order included (the fp32 reference through our conv double backward); the losses, F_φ and Adam's state
stay fp32; under fp16 the GradScaler unscales, steps every optimizer and skips them all on an overflow.

Tolerances (bf16 keeps 8 mantissa bits, unit roundoff 2^-9):
- gradients that start at a cross-entropy (DeepAll, CORAL, MLDG, MASF's task term): relative L2 error < 3 %
  (measured 1.2–1.7 %);
- MASF's meta (β1 L_gen + β2 L_tri) and metric (∇_φ L_tri) gradients: cosine > 0.99, relative error < 15 %
  (measured 0.999 / 4 % and 0.994 / 11 %): both depend on differences between class means and embeddings that
  nearly coincide at initialization, which bf16 features blur; running F_φ in fp32 halves the error (the
  losses are fp32 already), what is left comes from the bf16 convolutions that are the point of autocast.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from masf_lightning.algorithms import CORAL, MASF, MLDG, DeepAll
from masf_lightning.algorithms.base import Step
from masf_lightning.config.hparams import constructor_defaults
from masf_lightning.losses import (
    class_soft_labels,
    coral_penalty,
    cross_entropy,
    global_alignment_loss,
    triplet_semihard_loss,
)
from masf_lightning.models import Backbone

DOMAINS = ("40x", "100x", "200x")
CE_TOL, META_TOL, META_COS = 0.03, 0.15, 0.99


def batch() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    domains = {}
    for i, d in enumerate(DOMAINS):
        y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
        domains[d] = (torch.randn(8, 3, 8, 8, generator=g) + 0.3 * y.view(-1, 1, 1, 1) * (i + 1), y)
    return {"domains": domains, "step": 1, "meta_train": ["100x", "40x"], "meta_test": ["200x"]}


def build(cls: type, **kw: Any) -> Any:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    args = {**constructor_defaults(cls, "small"), "lr": 1e-3}
    if cls in (MASF, MLDG):
        args["inner_lr"] = 0.5  # a large α, so the second-order term matters
    if cls is MASF:
        args.update(embedder={"hidden_dim": 16, "embedding_dim": 8, "final_activation": True}, grad_norm_every=0,
                    meta_clip=None, beta_tri=0.3, normalize_embeddings=False)  # fmt: skip
    return cls(backbone=Backbone(conv, 8, "tiny"), num_classes=3, **{**args, **kw})


def step_grads(cls: type, bf16: bool, **kw: Any) -> list[torch.Tensor]:
    """Each optimizer step's gradient of one update, flattened (MASF separate: task, metric, meta)."""
    model = build(cls, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses, steps = model.update(batch())
    assert all(v.dtype == torch.float32 for v in losses.values())
    return [torch.cat([g.flatten() for g in s.grads]) for s in steps]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize(("cls", "kw"), [(DeepAll, {}), (CORAL, {}), (MLDG, {"first_order": False}), (MLDG, {"first_order": True})])
def test_bf16_gradients_of_cross_entropy_methods_match_fp32(cls: type, kw: dict[str, Any]) -> None:
    (bf16,), (fp32,) = step_grads(cls, True, **kw), step_grads(cls, False, **kw)
    assert rel(bf16, fp32) < CE_TOL


@pytest.mark.parametrize("first_order", [False, True])
def test_bf16_masf_gradients_match_fp32(first_order: bool) -> None:
    bf16, fp32 = step_grads(MASF, True, first_order=first_order), step_grads(MASF, False, first_order=first_order)
    task, metric, meta = zip(bf16, fp32, strict=True)
    assert rel(*task) < CE_TOL
    for got, want in (metric, meta):
        assert cos(got, want) > META_COS and rel(got, want) < META_TOL


def test_bf16_keeps_the_second_order_term() -> None:
    """The part of the gradient second order adds (exact minus first order) survives autocast. The fp32 side
    takes it through our conv double backward (autodiff/conv.py), the bf16 side through autograd's own, which
    conv.py switches to under autocast (its casts would happen inside ours, out of autograd's sight)."""
    from masf_lightning.autodiff import conv

    for cls, i in ((MLDG, 0), (MASF, 2)):
        second = {bf: step_grads(cls, bf, first_order=False)[i] - step_grads(cls, bf, first_order=True)[i] for bf in (True, False)}
        assert second[False].norm() > 1e-3 * step_grads(cls, False, first_order=False)[i].norm(), "the case must exercise it"
        assert cos(second[True], second[False]) > 0.98, cls.__name__
    x, w = torch.randn(2, 3, 5, 5, requires_grad=True), torch.randn(4, 3, 3, 3, requires_grad=True)
    with conv.conv_double_backward_by_convs(True):
        assert torch.conv2d(x, w).grad_fn.name().endswith("_Conv2dBackward")
    with torch.autocast("cpu", dtype=torch.bfloat16), conv.conv_double_backward_by_convs(True):
        assert "_Conv2d" not in torch.conv2d(x, w).grad_fn.name()


def test_losses_and_embedder_run_in_fp32_under_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    feats, y = torch.randn(12, 5, generator=g), torch.tensor([0, 1, 2] * 4)
    lin = nn.Linear(5, 3)
    half = feats.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = {
            "ce": cross_entropy(lin(half), y),
            "tri": triplet_semihard_loss(half, y, 1.0),
            "coral": coral_penalty(half[:6], half[6:]),
            "gen": global_alignment_loss({d: class_soft_labels(half[i::3], y[i::3], lin, 3, 2.0) for i, d in enumerate(DOMAINS)}, DOMAINS[:2], DOMAINS[2:]),
        }
    up = half.float()
    want = {
        "ce": cross_entropy(lin(up), y), "tri": triplet_semihard_loss(up, y, 1.0), "coral": coral_penalty(up[:6], up[6:]),
        "gen": global_alignment_loss({d: class_soft_labels(up[i::3], y[i::3], lin, 3, 2.0) for i, d in enumerate(DOMAINS)}, DOMAINS[:2], DOMAINS[2:]),
    }  # fmt: skip
    for k in got:
        assert got[k].dtype == torch.float32, k
        if k != "ce":  # the classifier's matmul is the caller's, in bf16 under autocast; the loss itself is fp32
            torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    model = build(MASF)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.embedder(half[:, :1].expand(-1, 8)).dtype == torch.float32


def test_adam_state_and_weights_stay_fp32_after_a_bf16_step() -> None:
    model = build(MASF)
    opts = model.configure_optimizers()
    model.optimizers = lambda: opts  # type: ignore[method-assign]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.training_step(batch(), 0)
    for opt in opts:
        for state in opt.state.values():
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


class _LightningLike:
    """Lightning's optimizer wrapper under 16-mixed: its step unscales, steps through the scaler and updates it."""

    def __init__(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler):
        self.optimizer, self.scaler = optimizer, scaler

    def step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        self.scaler.step(self.optimizer)
        self.scaler.update()


def fp16_step(init_scale: float) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.amp.GradScaler]:
    model = build(MASF, lr=1e-2, metric_lr=1e-2, meta_lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    opts = model.configure_optimizers()
    model.optimizers = lambda: [_LightningLike(o, scaler) for o in opts]  # type: ignore[method-assign]
    model.grad_scaler = lambda: scaler  # type: ignore[method-assign]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.autocast("cpu", dtype=torch.float16):
        model.training_step(batch(), 0)
    return before, {n: p.detach() for n, p in model.named_parameters()}, scaler


def test_fp16_scaler_unscales_and_steps_every_optimizer() -> None:
    before, after, scaler = fp16_step(2.0**10)
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert any(n.startswith("embedder") for n in moved) and any(n.startswith("featurizer") for n in moved)
    # Adam's first step moves an element by about lr (task or meta alone) or 2 lr (both): unscaled gradients,
    # the scale (1024) nowhere in the step
    delta = torch.cat([(after[n] - before[n]).abs().flatten() for n in moved])
    assert float(delta.max()) < 2.05e-2 and scaler.get_scale() == 2.0**10


def test_fp16_overflow_skips_every_optimizer_and_lowers_the_scale() -> None:
    before, after, scaler = fp16_step(2.0**120)  # the scaled loss overflows: inf gradients everywhere
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert scaler.get_scale() == 2.0**119


def test_training_step_gradients_are_the_unscaled_ones() -> None:
    model = build(DeepAll)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    model.grad_scaler = lambda: scaler  # type: ignore[method-assign]
    _, (step,) = model.update(batch())
    (want,) = step_grads(DeepAll, False)
    torch.testing.assert_close(torch.cat([g.flatten() for g in step.grads]), want, rtol=1e-5, atol=1e-7)
    assert isinstance(step, Step)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the same comparisons on cuDNN's bf16 kernels; run by make gpu-check")
def test_cuda_bf16_gradients_match_fp32() -> None:
    def on_cuda(cls: type, bf16: bool, **kw: Any) -> list[torch.Tensor]:
        model = build(cls, **kw).cuda()
        b = batch()
        b["domains"] = {d: (x.cuda(), y.cuda()) for d, (x, y) in b["domains"].items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            _, steps = model.update(b)
        return [torch.cat([g.flatten() for g in s.grads]).float().cpu() for s in steps]

    for cls in (DeepAll, CORAL, MLDG):
        (got,), (want,) = on_cuda(cls, True), on_cuda(cls, False)
        assert rel(got, want) < CE_TOL, cls.__name__
    task, metric, meta = zip(on_cuda(MASF, True, first_order=False), on_cuda(MASF, False, first_order=False), strict=True)
    assert rel(*task) < CE_TOL
    for got, want in (metric, meta):
        assert cos(got, want) > META_COS and rel(got, want) < META_TOL

