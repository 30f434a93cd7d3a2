"""The neighbours MASF is compared with: MLDG's gradient against naive nested autograd (both orders), CORAL's
penalty against hand-computed cases, and the magnification zoom's geometry, range and determinism."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from masf_lightning.algorithms import CORAL, MLDG, DeepAll, DeepAllZoom
from masf_lightning.algorithms.base import Step
from masf_lightning.config.hparams import constructor_defaults
from masf_lightning.data.augment import draw_zoom, zoom
from masf_lightning.losses import coral_penalty
from masf_lightning.models import Backbone

C = 3
DOMAINS = ["40x", "100x", "200x"]
META_TRAIN, META_TEST = ["100x", "40x"], ["200x"]


def batches(seed: int = 1, n: int = 6, shape: tuple[int, ...] = (5,)) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, d in enumerate(DOMAINS):
        y = torch.tensor([0, 1, 2, 0, 1, 2][:n])
        x = torch.randn(n, *shape, generator=g, dtype=torch.double) + 0.3 * y.view(-1, *[1] * len(shape)) * (i + 1)
        out[d] = (x, y)
    return out


def tiny(cls: type, featurizer: nn.Module | None = None, dim: int = 6, **kw: Any) -> Any:
    torch.manual_seed(0)
    featurizer = featurizer or nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, dim), nn.Tanh())
    kw = {**constructor_defaults(cls, "small"), "lr": 1e-3, **kw}
    return cls(backbone=Backbone(featurizer, dim, "tiny"), num_classes=C, **kw).double()


# -- MLDG ----------------------------------------------------------------------------------------
def naive_mldg_gradient(model: MLDG, b, alpha: float, beta: float, first_order: bool) -> list[torch.Tensor]:
    """Li et al.'s objective the obvious way: per-domain losses, nested autograd, one grad of the whole sum."""
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]

    def loss(weights: list[torch.Tensor], d: str) -> torch.Tensor:
        x, y = b[d]
        return F.cross_entropy(functional_call(model, dict(zip(names, weights, strict=True)), (x,)), y)

    l_tr = sum(loss(params, d) for d in META_TRAIN) / len(META_TRAIN)
    g = torch.autograd.grad(l_tr, params, create_graph=True)
    if first_order:
        g = [gi.detach() for gi in g]
    fast = [p - alpha * gi for p, gi in zip(params, g, strict=True)]
    l_te = sum(loss(fast, d) for d in META_TEST) / len(META_TEST)
    return list(torch.autograd.grad(l_tr + beta * l_te, params))


def ours_mldg(model: MLDG, b) -> list[torch.Tensor]:
    return model.meta_gradient(model.meta_objective(b, META_TRAIN, META_TEST))


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    num = sum(float((x - y).norm() ** 2) for x, y in zip(a, b, strict=True))
    return math.sqrt(num / sum(float(y.norm() ** 2) for y in b))


@pytest.mark.parametrize("first_order", [False, True])
def test_mldg_gradient_equals_naive_nested_autograd(first_order: bool) -> None:
    model = tiny(MLDG, inner_lr=0.7, mldg_beta=1.3, first_order=first_order)
    b = batches()
    assert rel_err(ours_mldg(model, b), naive_mldg_gradient(model, b, 0.7, 1.3, first_order)) < 1e-10


def test_mldg_orders_differ_so_the_second_order_test_can_fail() -> None:
    """Without create_graph the second-order gradient would be the first-order one; they are far apart here."""
    model, b = tiny(MLDG, inner_lr=0.7), batches()
    exact, first = naive_mldg_gradient(model, b, 0.7, 1.0, False), naive_mldg_gradient(model, b, 0.7, 1.0, True)
    assert rel_err(first, exact) > 1e-2
    assert rel_err(ours_mldg(model, b), first) > 1e-2


def test_mldg_conv_featurizer_second_order_equals_naive() -> None:
    """Convs take the cheaper double backward (autodiff/conv.py); MLDG's exact gradient must not change."""
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = tiny(MLDG, featurizer=conv, dim=4, inner_lr=0.5)
    b = batches(shape=(3, 6, 6))
    assert rel_err(ours_mldg(model, b), naive_mldg_gradient(model, b, 0.5, 1.0, False)) < 1e-10


def test_mldg_step_moves_weights_against_the_gradient() -> None:
    model, b = tiny(MLDG, inner_lr=0.1), batches()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    grads = [g.clone() for g in ours_mldg(model, b)]
    model.optimizers = lambda: opt  # type: ignore[method-assign]  # as Lightning hands it over
    model.apply([Step(0, list(model.parameters()), grads)])
    for p, p0, g in zip(model.parameters(), before, grads, strict=True):
        torch.testing.assert_close(p.detach(), p0 - 1e-2 * g)


# -- CORAL ---------------------------------------------------------------------------------------
def test_coral_penalty_hand_computed() -> None:
    a = torch.tensor([[0.0], [2.0]])  # mean 1, unbiased variance 2
    b = torch.tensor([[1.0], [1.0]])  # mean 1, variance 0
    assert float(coral_penalty(a, b)) == pytest.approx(4.0)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # cov diag(2/3), mean 0
    b = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])  # cov [[2, 2], [2, 2]], mean 0
    assert float(coral_penalty(a, b)) == pytest.approx(26 / 9)  # (16/9 + 4 + 4 + 16/9) / 4
    shifted = b + torch.tensor([3.0, 0.0])  # mean term ((-3)² + 0²) / 2
    assert float(coral_penalty(a, shifted)) == pytest.approx(26 / 9 + 4.5)


def test_coral_penalty_zero_for_identical_sets_and_symmetric() -> None:
    a = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    assert float(coral_penalty(a, a)) == 0.0
    assert float(coral_penalty(a, a.flip(0))) == pytest.approx(0.0, abs=1e-12)
    b = a * 2 + 1
    assert float(coral_penalty(a, b)) == pytest.approx(float(coral_penalty(b, a)))
    assert float(coral_penalty(a, b)) > 0


def test_coral_loss_is_cross_entropy_plus_weighted_mean_pair_penalty() -> None:
    b = batches()
    batch = {"domains": b, "step": 0, "meta_train": DOMAINS, "meta_test": []}
    plain = tiny(DeepAll).update(dict(batch))[0]["loss"]
    assert float(tiny(CORAL, coral_weight=0.0).update(dict(batch))[0]["loss"]) == pytest.approx(float(plain))
    model = tiny(CORAL, coral_weight=2.5)
    feats = {d: model.featurizer(x) for d, (x, _) in b.items()}
    pairs = [("40x", "100x"), ("40x", "200x"), ("100x", "200x")]
    expected = float(plain) + 2.5 * sum(float(coral_penalty(feats[p], feats[q])) for p, q in pairs) / 3
    assert float(model.update(dict(batch))[0]["loss"]) == pytest.approx(expected)


# -- zoom ------------------------------------------------------------------------------------------
def ramp(side: int = 32) -> torch.Tensor:
    """One image whose value is the column index (channel 0) and the row index (channel 1)."""
    cols = torch.arange(side, dtype=torch.float64).expand(side, side)
    return torch.stack([cols, cols.T, torch.zeros_like(cols)])[None]


def test_zoom_identity_at_scale_one() -> None:
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    params = torch.tensor([[1.0, 0.1, 0.9]] * 4, dtype=torch.float64)
    torch.testing.assert_close(zoom(x, params), x)


def test_zoom_in_shows_the_centre_half_at_twice_the_scale() -> None:
    out = zoom(ramp(), torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64))[0]
    row = out[0, 16]
    assert float((row[20] - row[10]) / 10) == pytest.approx(0.5, abs=1e-6)  # features twice as large
    assert float(row[:16].mean() + row[16:].mean()) / 2 == pytest.approx(15.5, abs=1e-6)  # centred window
    assert 7.0 <= float(row.min()) and float(row.max()) <= 24.0  # the image's central half only
    left = zoom(ramp(), torch.tensor([[0.5, 0.0, 0.5]], dtype=torch.float64))[0, 0, 16]
    assert float(left.min()) <= 0.0 + 1e-6 and float(left.max()) <= 16.0  # u = 0: the window at the left edge


def test_zoom_out_shrinks_and_reflects_inside_the_image() -> None:
    out = zoom(ramp(), torch.tensor([[2.0, 0.3, 0.8]], dtype=torch.float64))[0, 0, 16]
    assert float((out[18] - out[14]) / 4) == pytest.approx(2.0, abs=1e-6)  # features half as large
    assert float(out.min()) >= -1e-9 and float(out.max()) <= 31 + 1e-9  # the border is mirrored image, not zeros


def test_draw_zoom_is_log_uniform_over_the_configured_range() -> None:
    s = draw_zoom(20000, (0.5, 2.0), torch.Generator().manual_seed(0))[:, 0]
    assert float(s.min()) >= 0.5 and float(s.max()) <= 2.0
    q = torch.quantile(torch.log(s), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    expected = torch.tensor([-0.5, 0.0, 0.5], dtype=torch.float64) * math.log(2.0)  # log s uniform on ±log 2
    torch.testing.assert_close(q, expected, atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="0 < low <= high"):
        draw_zoom(1, (2.0, 0.5), torch.Generator())


def test_zoom_method_keeps_labels_draws_the_range_and_is_deterministic_per_seed_and_step() -> None:
    featurizer = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = tiny(DeepAllZoom, featurizer=featurizer, dim=4, zoom_range=(0.8, 1.25), seed=3)
    p = model.zoom_params(step=7, domain="40x", n=64)
    assert float(p[:, 0].min()) >= 0.8 and float(p[:, 0].max()) <= 1.25
    torch.testing.assert_close(model.zoom_params(7, "40x", 64), p)  # same (seed, step, domain): same draw
    assert not torch.equal(model.zoom_params(8, "40x", 64), p)
    assert not torch.equal(model.zoom_params(7, "100x", 64), p)
    other_seed = tiny(DeepAllZoom, featurizer=featurizer, dim=4, zoom_range=(0.8, 1.25), seed=4)
    assert not torch.equal(other_seed.zoom_params(7, "40x", 64), p)

    b = batches(shape=(3, 8, 8))
    seen = {}
    update_of = DeepAll.update  # the zoom is applied in DeepAllZoom.update, then DeepAll's loss sees the batch

    def spy(self: DeepAll, batch: dict[str, Any]) -> Any:
        seen.update(batch["domains"])
        return update_of(self, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DeepAll, "update", spy)
        model.update({"domains": dict(b), "step": 7, "meta_train": DOMAINS, "meta_test": []})
    for d, (x, y) in b.items():
        assert seen[d][1] is y  # labels untouched
        assert seen[d][0].shape == x.shape and not torch.equal(seen[d][0], x)
        torch.testing.assert_close(seen[d][0], zoom(x, model.zoom_params(7, d, len(x))))


def test_zoom_draws_are_the_global_batch_sharded_like_the_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    import masf_lightning.algorithms.deepall_zoom as mod

    model = tiny(DeepAllZoom, zoom_range=(0.5, 2.0))
    whole = model.zoom_params(5, "200x", 8)
    monkeypatch.setattr(mod, "world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(mod.dist, "get_rank", lambda rank=rank: rank)
        shards.append(model.zoom_params(5, "200x", 4))
    torch.testing.assert_close(torch.stack(shards, 1).reshape(8, 3), whole)
