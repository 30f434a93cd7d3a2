"""MASF's gradients are the contract, checked against naive per-domain nested autograd (float64):
task ∇L_cr, meta ∇L_meta through the fast weights (Eq. 11's two terms) and metric ∇_φ L_tri (Eq. 12);
then what each optimizer layout does with them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from masf_lightning.algorithms import MASF
from masf_lightning.config.hparams import constructor_defaults
from masf_lightning.losses import triplet_semihard_loss
from masf_lightning.models import Backbone

C = 3
DOMAINS = ["40x", "100x", "200x"]
META_TRAIN, META_TEST = ["100x", "40x"], ["200x"]


def tiny_masf(featurizer: nn.Module | None = None, dim: int = 6, **kw: Any) -> MASF:
    torch.manual_seed(0)
    featurizer = featurizer or nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh())
    defaults = dict(constructor_defaults(MASF, "small"), num_classes=C, lr=1e-3, inner_lr=0.5, beta_gen=1.0, beta_tri=0.3, margin=1.0,
                    normalize_embeddings=False, triplet_fraction=0.5, embedder={"hidden_dim": 5, "embedding_dim": 4, "final_activation": True},
                    grad_norm_every=0, meta_lr=None)  # fmt: skip
    defaults.update(kw)
    return MASF(backbone=Backbone(featurizer, dim, "tiny"), **defaults).double()


def batches(seed: int = 1, n: int = 6) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, d in enumerate(DOMAINS):
        y = torch.tensor([0, 1, 2, 0, 1, 2][:n])
        x = torch.randn(n, 5, generator=g, dtype=torch.double) + 0.3 * y[:, None] * (i + 1)
        out[d] = (x, y)
    return out


def naive_losses(model: MASF, b, first_order: bool, reduction: str = "mean", inner_clip: float | None = None):
    """Eqs. 3–10 the slow, obvious way: per-domain forwards, python loops, explicit KL. Returns (L_cr, L_gen, L_tri)."""
    psi = dict(model.featurizer.named_parameters())
    theta = dict(model.classifier.named_parameters())
    phi = dict(model.embedder.named_parameters())

    def net(p_psi, p_theta, x):
        return functional_call(model.classifier, p_theta, functional_call(model.featurizer, p_psi, x))

    names = list(psi) + list(theta)
    params = list(psi.values()) + list(theta.values())
    cr = sum(F.cross_entropy(net(psi, theta, b[d][0]), b[d][1]) for d in META_TRAIN) / len(META_TRAIN)
    # the public code's inner loss: per-domain sum of per-example losses, averaged over the domains
    inner_loss = cr if reduction == "mean" else sum(F.cross_entropy(net(psi, theta, b[d][0]), b[d][1], reduction="sum") for d in META_TRAIN) / len(META_TRAIN)
    g = torch.autograd.grad(inner_loss, params, create_graph=True)
    if first_order:
        g = [gi.detach() for gi in g]
    if inner_clip is not None:
        g = [gi * min(1.0, inner_clip / float(gi.norm())) if float(gi.norm()) > inner_clip else gi for gi in g]
    fast = {n: p - model.inner_lr * gi for n, p, gi in zip(names, params, g, strict=True)}
    psi_f = {n: fast[n] for n in psi}
    theta_f = {n: fast[n] for n in theta}

    def soft(d):
        f = functional_call(model.featurizer, psi_f, b[d][0])
        rows, present = [], []
        for c in range(C):
            m = b[d][1] == c
            present.append(bool(m.any()))
            z = f[m].mean(0) if m.any() else torch.zeros(f.shape[1], dtype=f.dtype)
            rows.append(torch.softmax(functional_call(model.classifier, theta_f, z) / model.temperature, -1).clamp(min=1e-8))
        return rows, present

    gen = 0
    for i in META_TRAIN:
        for j in META_TEST:
            (si, pi), (sj, pj) = soft(i), soft(j)
            common = [c for c in range(C) if pi[c] and pj[c]]
            kl = [0.5 * ((si[c] * (si[c] / sj[c]).log()).sum() + (sj[c] * (sj[c] / si[c]).log()).sum()) for c in common]
            gen = gen + sum(kl) / len(common)
    gen = gen / (len(META_TRAIN) * len(META_TEST))

    k = round(model.triplet_fraction * len(b[DOMAINS[0]][0]))
    order = META_TRAIN + META_TEST
    f_t = torch.cat([functional_call(model.featurizer, psi_f, b[d][0][:k]) for d in order])
    y_t = torch.cat([b[d][1][:k] for d in order])
    tri = triplet_semihard_loss(functional_call(model.embedder, phi, f_t), y_t, model.margin)
    return cr, gen, tri


def grads_of(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, retain_graph=True))


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=True)))
    den = torch.sqrt(sum((y**2).sum() for y in b))
    return float(num / den)


def ours(model: MASF, b) -> tuple[dict[str, Any], dict[str, list[torch.Tensor]]]:
    out = model.meta_objective(b, META_TRAIN, META_TEST)
    return out, {k: [g.clone() for g in v] for k, v in model.meta_gradients(out).items()}


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_three_gradients_equal_naive_nested_autograd(first_order: bool, reduction: str) -> None:
    """task = ∇L_cr, meta = ∇(β1 L_gen + β2 L_tri) through (ψ′, θ′), metric = ∇_φ L_tri (Eq. 12, unscaled)."""
    model = tiny_masf(first_order=first_order, inner_reduction=reduction, inner_lr=0.5 if reduction == "mean" else 0.05)
    b = batches()
    out, g = ours(model, b)
    cr, gen, tri = naive_losses(model, b, first_order, reduction)
    pt, phi = model.psi_theta(), list(model.embedder.parameters())
    assert torch.allclose(out["cr"], cr) and torch.allclose(out["gen"], gen) and torch.allclose(out["tri"], tri)
    assert float(tri.detach()) > 0 and float(gen.detach()) > 0, "the case must exercise every term"
    assert rel_err(g["task"], grads_of(cr, pt)) < 1e-10
    assert rel_err(g["meta"], grads_of(model.beta_gen * gen + model.beta_tri * tri, pt)) < 1e-8
    assert rel_err(g["metric"], grads_of(tri, phi)) < 1e-10


def test_sum_reduction_scales_the_inner_step_by_the_domain_batch() -> None:
    """sum differs from mean exactly as α·B does (B = 6 per domain here), and is clipped after scaling."""
    b = batches()
    m_sum = tiny_masf(inner_reduction="sum", inner_lr=0.05, first_order=True)
    m_mean = tiny_masf(inner_reduction="mean", inner_lr=0.3, first_order=True)
    assert rel_err(ours(m_sum, b)[1]["meta"], ours(m_mean, b)[1]["meta"]) < 1e-10
    clipped = tiny_masf(inner_reduction="sum", inner_lr=0.05, first_order=True, inner_clip=0.5)
    cr, gen, tri = naive_losses(clipped, b, True, "sum", inner_clip=0.5)
    assert rel_err(ours(clipped, b)[1]["meta"], grads_of(gen + clipped.beta_tri * tri, clipped.psi_theta())) < 1e-10
    assert rel_err(ours(clipped, b)[1]["meta"], ours(m_sum, b)[1]["meta"]) > 1e-3, "the clip must be active here"


def test_second_order_meta_gradient_matches_finite_differences() -> None:
    """Independent of autograd's double backward: central differences of the naive L_meta."""
    model = tiny_masf()
    b = batches()
    _, g = ours(model, b)
    w = model.featurizer[0].weight
    gw = g["meta"][0]

    def meta() -> float:
        _, gen, tri = naive_losses(model, b, False)
        return float(model.beta_gen * gen + model.beta_tri * tri)

    eps = 1e-6
    for idx in [(0, 0), (3, 2), (6, 4)]:
        with torch.no_grad():
            w[idx] += eps
        plus = meta()
        with torch.no_grad():
            w[idx] -= 2 * eps
        minus = meta()
        with torch.no_grad():
            w[idx] += eps
        fd = (plus - minus) / (2 * eps)
        assert abs(fd - gw[idx].item()) <= 1e-6 * max(1.0, abs(fd)), (idx, fd, gw[idx].item())


def test_first_order_differs_from_exact_with_large_inner_lr() -> None:
    b = batches()
    g = {fo: ours(tiny_masf(first_order=fo, inner_lr=2.0), b)[1]["meta"] for fo in (False, True)}
    assert rel_err(g[True], g[False]) > 1e-3


def test_no_triplet_weight_leaves_psi_without_triplet_gradient_and_phi_on_eq12() -> None:
    model = tiny_masf(beta_tri=0.0)
    b = batches()
    _, g = ours(model, b)
    _, gen, tri = naive_losses(model, b, False)
    assert rel_err(g["meta"], grads_of(model.beta_gen * gen, model.psi_theta())) < 1e-8
    assert rel_err(g["metric"], grads_of(tri, list(model.embedder.parameters()))) < 1e-10


def test_conv_featurizer_gradients_equal_naive() -> None:
    """The conv path (double backward by plain convolutions) against the same naive Eqs. 9–11."""
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
    )  # fmt: skip
    model = tiny_masf(f)
    g = torch.Generator().manual_seed(3)
    b = {d: (torch.randn(6, 3, 17, 17, generator=g, dtype=torch.double), torch.tensor([0, 1, 2, 0, 1, 2])) for d in DOMAINS}
    _, ours_g = ours(model, b)
    cr, gen, tri = naive_losses(model, b, False)
    assert rel_err(ours_g["meta"], grads_of(gen + model.beta_tri * tri, model.psi_theta())) < 1e-9


# -- the optimizer layouts -------------------------------------------------------------------------
class Counted:
    """Stands in for Lightning's optimizer wrapper: `.optimizer` is the raw one, `.step()` counts a global step."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer, self.steps = optimizer, 0

    def step(self) -> None:
        self.steps += 1
        self.optimizer.step()


def one_step(model: MASF, b) -> tuple[list[Counted], dict[str, torch.Tensor]]:
    opts = model.configure_optimizers()
    wrapped = [Counted(o) for o in (opts if isinstance(opts, list) else [opts])]
    model.optimizers = lambda: wrapped if len(wrapped) > 1 else wrapped[0]  # type: ignore[method-assign]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.training_step({"domains": b, "meta_train": META_TRAIN, "meta_test": META_TEST, "step": 1}, 0)
    return wrapped, {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_layouts_differ_as_adam_first_steps_do() -> None:
    """Adam's first step is ±lr per element: separate moves ψ by two such steps (≈ 0 or ≈ 2η), joint by one (≈ η)."""
    eta = 1e-3
    b = batches()
    sep_opts, sep = one_step(tiny_masf(lr=eta, metric_lr=1e-2, optimizers="separate", meta_clip=None), b)
    joint_opts, joint = one_step(tiny_masf(lr=eta, metric_lr=1e-2, optimizers="joint"), b)
    psi_theta = [n for n in sep if not n.startswith("embedder")]
    mags = torch.cat([sep[n].abs().flatten() for n in psi_theta]) / eta
    assert bool(((mags < 0.02) | ((mags - 2).abs() < 0.02)).all()), mags
    assert bool(((mags - 2).abs() < 0.02).any()) and bool((mags < 0.02).any()), "both cases should occur"
    joint_mags = torch.cat([joint[n].abs().flatten() for n in psi_theta]) / eta
    assert torch.allclose(joint_mags, torch.ones_like(joint_mags), atol=0.02)
    # φ: one Adam step at γ in both layouts (Eq. 12)
    for d in (sep, joint):
        assert torch.allclose(d["embedder.0.weight"].abs(), torch.full_like(d["embedder.0.weight"], 1e-2), rtol=0.02)
    # exactly one counted step per meta-iteration: trainer.global_step counts meta-iterations
    assert [o.steps for o in sep_opts] == [0, 1, 0] and [o.steps for o in joint_opts] == [1]


def test_separate_signs_follow_each_gradient() -> None:
    """Where ψ moved by 2η both gradients agreed in sign; where it stayed, they disagreed."""
    eta = 1e-3
    b = batches()
    model = tiny_masf(lr=eta, optimizers="separate", meta_clip=None)
    _, g = ours(model, b)
    _, delta = one_step(model, b)
    names = [n for n in delta if not n.startswith("embedder")]
    task, meta = (torch.cat([t.flatten() for t in g[k]]) for k in ("task", "meta"))
    d = torch.cat([delta[n].flatten() for n in names])
    moved = d.abs() > eta
    assert torch.equal(moved, torch.sign(task) == torch.sign(meta))
    assert torch.equal(torch.sign(d[moved]), -torch.sign(task[moved]))


def test_meta_updates_embedder_slip_steps_phi_twice() -> None:
    b = batches()
    opts, delta = one_step(tiny_masf(lr=1e-3, metric_lr=1e-2, meta_updates_embedder=True, meta_clip=None), b)
    assert len(opts[1].optimizer.param_groups[0]["params"]) == len(list(tiny_masf().parameters()))
    step = delta["embedder.0.weight"].abs()
    # γ-step ± η-step per element
    assert bool((((step - 1.1e-2).abs() < 2e-4) | ((step - 0.9e-2).abs() < 2e-4)).all())


def test_grad_norm_logging_matches_naive() -> None:
    model = tiny_masf()
    b = batches()
    logged = model.log_diagnostics(model.meta_objective(b, META_TRAIN, META_TEST))
    cr, gen, tri = naive_losses(model, b, False)
    psi = list(model.featurizer.parameters())

    def norm(gs: list[torch.Tensor]) -> float:
        return float(torch.sqrt(sum((x**2).sum() for x in gs)))

    assert logged["grad_norm/psi_cr"] == pytest.approx(norm(grads_of(cr, psi)), rel=1e-6)
    assert logged["grad_norm/psi_gen"] == pytest.approx(norm(grads_of(model.beta_gen * gen, psi)), rel=1e-6)
    assert logged["grad_norm/psi_tri"] == pytest.approx(norm(grads_of(model.beta_tri * tri, psi)), rel=1e-6)


def test_joint_steps_along_the_sum_of_both_gradients() -> None:
    """Joint (Eq. 11 literal): Adam's first step is −η·sign(∇L_cr + ∇L_meta), per element."""
    eta = 1e-3
    b = batches()
    model = tiny_masf(lr=eta, optimizers="joint")
    _, g = ours(model, b)
    _, delta = one_step(model, b)
    names = [n for n in delta if not n.startswith("embedder")]
    task, meta = (torch.cat([t.flatten() for t in g[k]]) for k in ("task", "meta"))
    d = torch.cat([delta[n].flatten() for n in names])
    assert bool((torch.sign(task + meta) != torch.sign(meta)).any()), "the case must tell the sum from L_meta alone"
    assert torch.equal(torch.sign(d), -torch.sign(task + meta))
