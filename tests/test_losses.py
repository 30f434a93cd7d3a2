"""Tests for masf_lightning.losses: every value is checked against an independent computation
(hand-derived numbers, python loops over floats, or torch.nn.functional), never the same code path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from masf_lightning.losses import (
    class_soft_labels,
    cross_entropy,
    global_alignment_loss,
    symmetric_kl,
    triplet_semihard_loss,
)

DT = torch.float64


# --------------------------------------------------------------------------- cross_entropy (Eq. 3)


def test_cross_entropy_hand_computed_2x3() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], dtype=DT)
    labels = torch.tensor([2, 0])
    # -log(e^3 / (e + e^2 + e^3)) = log(1 + e^-1 + e^-2); uniform row: log 3.
    expected = (math.log(1 + math.exp(-1) + math.exp(-2)) + math.log(3)) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, abs=1e-12)


def test_cross_entropy_matches_torch() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(17, 8, generator=g, dtype=DT) * 5
    labels = torch.randint(0, 8, (17,), generator=g)
    torch.testing.assert_close(cross_entropy(logits, labels), F.cross_entropy(logits, labels))


def test_cross_entropy_equals_per_domain_average_for_equal_sizes() -> None:
    g = torch.Generator().manual_seed(1)
    domains = [
        (torch.randn(6, 4, generator=g, dtype=DT), torch.randint(0, 4, (6,), generator=g)) for _ in range(3)
    ]
    per_domain = sum(F.cross_entropy(lg, lb).item() for lg, lb in domains) / 3
    joint = cross_entropy(torch.cat([d[0] for d in domains]), torch.cat([d[1] for d in domains]))
    assert joint.item() == pytest.approx(per_domain, abs=1e-12)


# --------------------------------------------------------------------------- class_soft_labels (Eqs. 4-5)


def _linear(num_features: int, num_classes: int, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(num_features, num_classes).to(DT)


def test_class_soft_labels_means_softmax_and_mask() -> None:
    g = torch.Generator().manual_seed(2)
    num_classes, dim, tau = 4, 5, 2.0
    features = torch.randn(11, dim, generator=g, dtype=DT)
    labels = torch.tensor([0, 1, 1, 0, 2, 2, 2, 0, 1, 0, 2])  # class 3 absent
    head = _linear(dim, num_classes, seed=3)
    soft, present = class_soft_labels(features, labels, head, num_classes, temperature=tau)

    assert present.dtype == torch.bool
    assert present.tolist() == [True, True, True, False]
    assert soft.shape == (num_classes, num_classes)
    w, b = head.weight.detach().tolist(), head.bias.detach().tolist()
    for c in range(3):
        rows = [features[i].tolist() for i in range(len(labels)) if labels[i].item() == c]
        mean = [sum(r[d] for r in rows) / len(rows) for d in range(dim)]
        logits = [sum(w[k][d] * mean[d] for d in range(dim)) + b[k] for k in range(num_classes)]
        exps = [math.exp(v / tau) for v in logits]
        expected = [max(e / sum(exps), 1e-8) for e in exps]
        assert soft[c].tolist() == pytest.approx(expected, abs=1e-12)
    assert torch.isfinite(soft[3]).all()


def test_class_soft_labels_calls_classify_once_on_all_class_means() -> None:
    calls: list[tuple[int, ...]] = []

    def classify(means: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(means.shape))
        return means[:, :3]

    class_soft_labels(torch.randn(6, 7, dtype=DT), torch.tensor([0, 0, 1, 1, 2, 2]), classify, 3)
    assert calls == [(3, 7)]


def test_class_soft_labels_clips_at_eps() -> None:
    features = torch.tensor([[0.0], [1.0]], dtype=DT)
    labels = torch.tensor([0, 1])

    def classify(means: torch.Tensor) -> torch.Tensor:
        # A 2000-logit gap at tau = 2 puts exp(-1000) ~ 0 on the losing class.
        return torch.tensor([[1000.0, -1000.0], [0.0, 0.0]], dtype=DT) + 0 * means

    soft, _ = class_soft_labels(features, labels, classify, 2, temperature=2.0, eps=1e-8)
    assert soft[0, 1].item() == 1e-8
    assert soft[0, 0].item() == pytest.approx(1.0, abs=1e-15)
    assert soft[1].tolist() == pytest.approx([0.5, 0.5], abs=1e-15)


def test_class_soft_labels_absent_classes_give_finite_grads() -> None:
    g = torch.Generator().manual_seed(4)
    features = torch.randn(5, 3, generator=g, dtype=DT, requires_grad=True)
    labels = torch.tensor([0, 0, 2, 2, 2])
    head = _linear(3, 4, seed=5)
    soft, present = class_soft_labels(features, labels, head, 4)
    assert present.tolist() == [True, False, True, False]
    # Backprop through every row, absent ones included: nothing may turn into NaN.
    (soft.log() * torch.arange(16, dtype=DT).reshape(4, 4)).sum().backward()
    assert torch.isfinite(features.grad).all()
    assert torch.isfinite(head.weight.grad).all()


# --------------------------------------------------------------------------- symmetric_kl (Eq. 6 term)


def _sym_kl_py(p: list[float], q: list[float]) -> float:
    kl_pq = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    kl_qp = sum(b * math.log(b / a) for a, b in zip(p, q, strict=True))
    return 0.5 * (kl_pq + kl_qp)


def test_symmetric_kl_two_class_hand_value() -> None:
    p = torch.tensor([[0.2, 0.8]], dtype=DT)
    q = torch.tensor([[0.5, 0.5]], dtype=DT)
    expected = 0.5 * (0.2 * math.log(0.4) + 0.8 * math.log(1.6) + 0.5 * math.log(2.5) + 0.5 * math.log(0.625))
    out = symmetric_kl(p, q)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, abs=1e-14)


def test_symmetric_kl_symmetric_zero_and_positive() -> None:
    g = torch.Generator().manual_seed(6)
    p = torch.softmax(torch.randn(5, 4, generator=g, dtype=DT), -1)
    q = torch.softmax(torch.randn(5, 4, generator=g, dtype=DT), -1)
    torch.testing.assert_close(symmetric_kl(p, q), symmetric_kl(q, p))
    assert torch.equal(symmetric_kl(p, p), torch.zeros(5, dtype=DT))
    assert (symmetric_kl(p, q) > 0).all()
    for r in range(5):
        assert symmetric_kl(p, q)[r].item() == pytest.approx(
            _sym_kl_py(p[r].tolist(), q[r].tolist()), abs=1e-12
        )


# --------------------------------------------------------------------------- global_alignment_loss (Eqs. 6-7)


def _probs(rows: list[list[float]]) -> torch.Tensor:
    t = torch.tensor(rows, dtype=DT)
    return t / t.sum(-1, keepdim=True)


def _mask(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.bool)


def test_global_alignment_hand_computed_two_train_one_test() -> None:
    a = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]
    b = [[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [1 / 3, 1 / 3, 1 / 3]]
    t = [[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]]
    soft = {
        "40x": (_probs(a), _mask([1, 1, 1])),
        "100x": (_probs(b), _mask([1, 1, 0])),  # class 2 absent in 100x
        "400x": (_probs(t), _mask([1, 1, 1])),
    }
    pair_a = sum(_sym_kl_py(a[c], t[c]) for c in range(3)) / 3
    pair_b = sum(_sym_kl_py(b[c], t[c]) for c in range(2)) / 2
    out = global_alignment_loss(soft, ["40x", "100x"], ["400x"])
    assert out.item() == pytest.approx((pair_a + pair_b) / 2, abs=1e-12)
    # "all" divides each pair's sum by C = 3, whatever the overlap (MASF's TF code).
    pair_b_all = sum(_sym_kl_py(b[c], t[c]) for c in range(2)) / 3
    out_all = global_alignment_loss(soft, ["40x", "100x"], ["400x"], class_average="all")
    assert out_all.item() == pytest.approx((pair_a + pair_b_all) / 2, abs=1e-12)


def test_global_alignment_present_vs_all_factor() -> None:
    g = torch.Generator().manual_seed(7)
    num_classes = 5
    common = _mask([1, 0, 1, 1, 0])  # 3 of 5 classes shared by every pair
    soft = {
        name: (torch.softmax(torch.randn(num_classes, num_classes, generator=g, dtype=DT), -1), mask)
        for name, mask in [("a", common), ("b", _mask([1, 1, 1, 1, 0])), ("t", _mask([1, 0, 1, 1, 1]))]
    }
    present = global_alignment_loss(soft, ["a", "b"], ["t"], class_average="present")
    all_classes = global_alignment_loss(soft, ["a", "b"], ["t"], class_average="all")
    assert present.item() > 0
    assert all_classes.item() == pytest.approx(present.item() * 3 / num_classes, rel=1e-12)


def test_global_alignment_identical_domains_is_zero() -> None:
    p = torch.softmax(torch.randn(4, 4, dtype=DT), -1)
    soft = {"a": (p, _mask([1, 1, 0, 1])), "b": (p.clone(), _mask([1, 1, 1, 1]))}
    assert global_alignment_loss(soft, ["a"], ["b"]).item() == 0.0


def test_global_alignment_no_common_class_is_zero_with_finite_grad() -> None:
    p = torch.softmax(torch.randn(3, 3, dtype=DT), -1).requires_grad_()
    q = torch.softmax(torch.randn(3, 3, dtype=DT), -1).requires_grad_()
    soft = {"a": (p, _mask([1, 0, 0])), "b": (q, _mask([0, 1, 1]))}
    for mode in ("present", "all"):
        out = global_alignment_loss(soft, ["a"], ["b"], class_average=mode)
        assert out.item() == 0.0 and out.requires_grad
        (gp, gq) = torch.autograd.grad(out, [p, q])
        assert torch.isfinite(gp).all() and torch.isfinite(gq).all()


def test_global_alignment_averages_over_all_pairs() -> None:
    g = torch.Generator().manual_seed(8)
    names = ["a", "b", "t", "u"]
    masks = [_mask([1, 1, 0]), _mask([1, 0, 0]), _mask([0, 1, 1]), _mask([1, 1, 1])]
    soft = {
        n: (torch.softmax(torch.randn(3, 3, generator=g, dtype=DT), -1), m)
        for n, m in zip(names, masks, strict=True)
    }
    # Pair (b, t) shares no class: it contributes 0 but still counts as one of the four pairs (Eq. 7).
    singles = [
        global_alignment_loss(soft, [i], [j]).item() for i, j in itertools.product(["a", "b"], ["t", "u"])
    ]
    assert singles[2] == 0.0
    out = global_alignment_loss(soft, ["a", "b"], ["t", "u"])
    assert out.item() == pytest.approx(sum(singles) / 4, abs=1e-12)


def test_global_alignment_rejects_unknown_class_average() -> None:
    soft = {"a": (torch.full((2, 2), 0.5), _mask([1, 1]))}
    with pytest.raises(ValueError, match="'mean'"):
        global_alignment_loss(soft, ["a"], ["a"], class_average="mean")


def test_global_alignment_end_to_end_gradients_reach_features_and_head() -> None:
    g = torch.Generator().manual_seed(9)
    head = _linear(4, 3, seed=10)
    feats = {n: torch.randn(6, 4, generator=g, dtype=DT, requires_grad=True) for n in ("a", "b", "t")}
    labels = {
        "a": torch.tensor([0, 0, 1, 1, 2, 2]),
        "b": torch.tensor([0, 0, 0, 1, 1, 1]),
        "t": torch.tensor([2] * 6),
    }
    soft = {n: class_soft_labels(feats[n], labels[n], head, 3) for n in feats}
    out = global_alignment_loss(soft, ["a", "b"], ["t"])  # pair (b, t) shares nothing
    out.backward()
    for n in feats:
        assert torch.isfinite(feats[n].grad).all()
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0
    assert feats["b"].grad.abs().sum() == 0  # b only enters through the empty pair


# --------------------------------------------------------------------------- triplet_semihard_loss (Eq. 8)


def _triplet_brute_force(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """TF triplet_semihard_loss semantics, one (anchor, positive) at a time over python floats."""
    x, y = emb.tolist(), labels.tolist()
    n = len(y)

    def d(i: int, j: int) -> float:
        return sum((u - v) ** 2 for u, v in zip(x[i], x[j], strict=True))

    losses = []
    for a in range(n):
        negatives = [d(a, k) for k in range(n) if y[k] != y[a]]
        if not negatives:
            continue
        for p in range(n):
            if p == a or y[p] != y[a]:
                continue
            d_ap = d(a, p)
            semihard = [v for v in negatives if v > d_ap]
            d_an = min(semihard) if semihard else max(negatives)
            losses.append(max(0.0, d_ap - d_an + margin))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("margin", [0.5, 10.0])
def test_triplet_matches_brute_force(seed: int, margin: float) -> None:
    g = torch.Generator().manual_seed(seed)
    size = 10 + 3 * seed
    # Continuous float64 embeddings: distance ties have probability zero.
    emb = torch.randn(size, 3, generator=g, dtype=DT) * 1.5
    labels = torch.randint(0, 3 + seed % 2, (size,), generator=g)
    out = triplet_semihard_loss(emb, labels, margin=margin)
    assert out.item() == pytest.approx(_triplet_brute_force(emb, labels, margin), abs=1e-10)


def test_triplet_1d_semihard_case_with_strict_inequality() -> None:
    emb = torch.tensor([[0.0], [1.0], [3.0], [5.0]], dtype=DT)
    labels = torch.tensor([0, 0, 1, 1])
    # (a,p)=(0,1): d_ap=1, negatives {9,25} -> 9, hinge 2.  (1,0): d_ap=1, {4,16} -> 4, hinge 7.
    # (2,3): d_ap=4, {9, 4}: 4 is not > 4, so 9, hinge 5.  (3,2): d_ap=4, {25,16} -> 16, hinge 0.
    assert triplet_semihard_loss(emb, labels).item() == pytest.approx((2 + 7 + 5 + 0) / 4, abs=1e-12)


def test_triplet_1d_falls_back_to_farthest_negative() -> None:
    emb = torch.tensor([[0.0], [10.0], [1.0], [2.0]], dtype=DT)
    labels = torch.tensor([0, 0, 1, 1])
    # (0,1): d_ap=100, negatives {1,4}, none > 100 -> farthest 4: 100-4+10 = 106 (hardest, 1, would give 109).
    # (1,0): d_ap=100, negatives {81,64} -> farthest 81: 29.  (2,3): d_ap=1, {1,81} -> 81: 0.  (3,2): {4,64} -> 4: 7.
    assert triplet_semihard_loss(emb, labels).item() == pytest.approx((106 + 29 + 0 + 7) / 4, abs=1e-12)
    assert triplet_semihard_loss(emb, labels, margin=1.0).item() == pytest.approx(
        (97 + 20 + 0 + 0) / 4, abs=1e-12
    )


def test_triplet_single_sample_class_anchor_contributes_nothing() -> None:
    emb = torch.tensor([[0.0], [1.0], [3.0]], dtype=DT)
    labels = torch.tensor([0, 0, 1])
    # Only (0,1): 1-9+10 = 2 and (1,0): 1-4+10 = 7; anchor 2 has no positive, so the mean is over 2 pairs.
    assert triplet_semihard_loss(emb, labels).item() == pytest.approx(4.5, abs=1e-12)


@pytest.mark.parametrize("labels", [[3, 3, 3, 3, 3], [0, 1, 2, 3, 4]], ids=["one-class", "all-distinct"])
def test_triplet_empty_cases_are_zero_with_grad(labels: list[int]) -> None:
    emb = torch.randn(5, 4, dtype=DT, requires_grad=True)
    out = triplet_semihard_loss(emb, torch.tensor(labels))
    assert out.item() == 0.0 and out.requires_grad
    (grad,) = torch.autograd.grad(out, emb)
    assert torch.equal(grad, torch.zeros_like(emb))


def test_triplet_finite_grad_with_duplicate_embeddings() -> None:
    base = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    emb = base.clone().requires_grad_()
    out = triplet_semihard_loss(emb, torch.tensor([0, 0, 1, 1, 0]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(emb.grad).all()
    assert out.item() == pytest.approx(
        _triplet_brute_force(base, torch.tensor([0, 0, 1, 1, 0]), 10.0), abs=1e-5
    )


def test_triplet_gradcheck() -> None:
    g = torch.Generator().manual_seed(11)
    emb = torch.randn(7, 3, generator=g, dtype=DT, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: triplet_semihard_loss(e, labels, margin=2.0), (emb,))
    assert torch.autograd.gradcheck(lambda e: triplet_semihard_loss(e, labels), (emb,))
