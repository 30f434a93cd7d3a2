"""MASF's gradient is the contract: Eq. 11 for (ψ, θ), Eq. 12 for φ, checked against naive computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from masf_lightning.algorithms import MASF
from masf_lightning.losses import triplet_semihard_loss
from masf_lightning.models import Backbone

C = 3
DOMAINS = ["40x", "100x", "200x"]
META_TRAIN, META_TEST = ["100x", "40x"], ["200x"]


def tiny_masf(**kw) -> MASF:
    torch.manual_seed(0)
    featurizer = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 6), nn.Tanh())
    defaults = dict(num_classes=C, lr=1e-3, inner_lr=0.5, beta_gen=1.0, beta_tri=0.3, margin=1.0, triplet_fraction=0.5, embedder={"hidden_dim": 5, "embedding_dim": 4})
    defaults.update(kw)
    return MASF(backbone=Backbone(featurizer, 6, "tiny"), **defaults).double()


def batches(seed: int = 1, n: int = 6) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, d in enumerate(DOMAINS):
        y = torch.tensor([0, 1, 2, 0, 1, 2][:n])
        x = torch.randn(n, 5, generator=g, dtype=torch.double) + 0.3 * y[:, None] * (i + 1)
        out[d] = (x, y)
    return out


def naive_losses(model: MASF, b, first_order: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 3–10 written the slow, obvious way: per-domain forwards, python loops, explicit KL."""
    psi = dict(model.featurizer.named_parameters())
    theta = dict(model.classifier.named_parameters())
    phi = dict(model.embedder.named_parameters())

    def net(p_psi, p_theta, x):
        return functional_call(model.classifier, p_theta, functional_call(model.featurizer, p_psi, x))

    cr = sum(F.cross_entropy(net(psi, theta, b[d][0]), b[d][1]) for d in META_TRAIN) / len(META_TRAIN)
    names = list(psi) + list(theta)
    params = list(psi.values()) + list(theta.values())
    g = torch.autograd.grad(cr, params, create_graph=True)
    if first_order:
        g = [gi.detach() for gi in g]
    fast = {n: p - model.inner_lr * gi for n, p, gi in zip(names, params, g, strict=False)}
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
    return cr + model.beta_gen * gen + model.beta_tri * tri, tri


def grads_of(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, params, allow_unused=False, retain_graph=True))


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b, strict=False)))
    den = torch.sqrt(sum((y**2).sum() for y in b))
    return float(num / den)


@pytest.mark.parametrize("first_order", [False, True])
def test_total_gradient_equals_eq11_and_phi_equals_eq12(first_order: bool) -> None:
    model = tiny_masf(first_order=first_order)
    b = batches()
    out = model.meta_objective(b, META_TRAIN, META_TEST)
    psitheta = [*model.featurizer.parameters(), *model.classifier.parameters()]
    phi = list(model.embedder.parameters())
    ours = grads_of(out["total"], psitheta + phi)

    ref_total, ref_tri = naive_losses(model, b, first_order)
    assert torch.allclose(out["total"], ref_total, rtol=1e-10), "total must have the value L_cr + L_meta"
    ref_psitheta = grads_of(ref_total, psitheta)
    ref_phi = grads_of(ref_tri, phi)  # Eq. 12: ∇_φ L_tri, not scaled by β2
    assert rel_err(ours[: len(psitheta)], ref_psitheta) < 1e-6
    assert rel_err(ours[len(psitheta) :], ref_phi) < 1e-6
    assert float(ref_tri.detach()) > 0, "the test case must exercise the triplet term"


def test_second_order_gradient_matches_finite_differences() -> None:
    """Independent of autograd's double backward: central differences of the naive objective."""
    model = tiny_masf()
    b = batches()
    out = model.meta_objective(b, META_TRAIN, META_TEST)
    w = model.featurizer[0].weight
    (g,) = torch.autograd.grad(out["total"], [w])
    eps = 1e-6
    for idx in [(0, 0), (3, 2), (6, 4)]:
        with torch.no_grad():
            w[idx] += eps
        plus = naive_losses(model, b, False)[0].item()
        with torch.no_grad():
            w[idx] -= 2 * eps
        minus = naive_losses(model, b, False)[0].item()
        with torch.no_grad():
            w[idx] += eps
        fd = (plus - minus) / (2 * eps)
        assert abs(fd - g[idx].item()) <= 1e-6 * max(1.0, abs(fd)), (idx, fd, g[idx].item())


def test_first_order_differs_from_exact_with_large_inner_lr() -> None:
    b = batches()
    grads = {}
    for fo in (False, True):
        model = tiny_masf(first_order=fo, inner_lr=2.0)
        out = model.meta_objective(b, META_TRAIN, META_TEST)
        grads[fo] = grads_of(out["total"], list(model.featurizer.parameters()))
    assert rel_err(grads[True], grads[False]) > 1e-3


def test_meta_objective_keys_and_eq10() -> None:
    model = tiny_masf()
    out = model.meta_objective(batches(), META_TRAIN, META_TEST)
    assert set(out) >= {"cr", "gen", "tri", "meta", "total"}
    assert torch.allclose(out["meta"], model.beta_gen * out["gen"] + model.beta_tri * out["tri"])
    assert torch.allclose(out["total"], out["cr"] + out["meta"])


def test_no_triplet_weight_still_trains_embedder_only_from_tri() -> None:
    """β2 = 0 (ablation): ψ gets no triplet gradient, φ still follows Eq. 12."""
    model = tiny_masf(beta_tri=0.0)
    b = batches()
    out = model.meta_objective(b, META_TRAIN, META_TEST)
    phi = list(model.embedder.parameters())
    psitheta = [*model.featurizer.parameters(), *model.classifier.parameters()]
    ours = grads_of(out["total"], psitheta + phi)
    ref_total, ref_tri = naive_losses(model, b, False)
    assert rel_err(ours[: len(psitheta)], grads_of(ref_total, psitheta)) < 1e-6
    assert rel_err(ours[len(psitheta) :], grads_of(ref_tri, phi)) < 1e-6


def test_conv_featurizer_gradient_equals_eq11() -> None:
    """The conv path (double backward by plain convolutions) against the same naive Eq. 11."""
    torch.manual_seed(0)
    f = nn.Sequential(
        nn.Conv2d(3, 4, 5, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
    )  # fmt: skip
    model = MASF(
        backbone=Backbone(f, 6, "conv"), num_classes=C, lr=1e-3, inner_lr=0.5, beta_tri=0.3, margin=1.0,
        triplet_fraction=0.5, embedder={"hidden_dim": 5, "embedding_dim": 4},
    ).double()  # fmt: skip
    g = torch.Generator().manual_seed(3)
    b = {d: (torch.randn(6, 3, 17, 17, generator=g, dtype=torch.double), torch.tensor([0, 1, 2, 0, 1, 2])) for d in DOMAINS}
    out = model.meta_objective(b, META_TRAIN, META_TEST)
    pt = [*model.featurizer.parameters(), *model.classifier.parameters()]
    assert rel_err(grads_of(out["total"], pt), grads_of(naive_losses(model, b, False)[0], pt)) < 1e-9
