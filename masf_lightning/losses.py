"""Loss functions: MASF's (paper Sections 3.1-3.3: cross-entropy, global class alignment, semi-hard triplet) and
CORAL's feature-statistics penalty.

All functions are pure: tensors in, tensors out, no module state, and run in float32 under any autocast
(`full_precision`). Equation numbers refer to Sikaroudi et al.,
"Magnification Generalization for Histopathology Image Embedding" (IEEE ISBI 2021), which follows MASF (Dou et al.,
"Domain Generalization via Model-Agnostic Learning of Semantic Features", NeurIPS 2019).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from masf_lightning.choices import CLASS_AVERAGES

F = TypeVar("F", bound=Callable[..., Tensor])


HALF = (torch.float16, torch.bfloat16)


def _upcast(x: Any) -> Any:
    if isinstance(x, Tensor) and x.dtype in HALF:
        return x.float()
    if isinstance(x, Mapping):
        return {k: _upcast(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_upcast(v) for v in x)
    return x


def full_precision(fn: F) -> F:
    """Run a loss in float32 whatever autocast is on (bf16-mixed, 16-mixed): softmax at τ, logs of clipped
    probabilities, squared distances by the Gram expansion (a difference of large numbers) and covariances lose
    too much in 8–11 mantissa bits, and their gradients start every backward. Inputs are upcast, autocast is
    off inside; the graph back to the half-precision features stays intact."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Tensor:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*_upcast(args), **_upcast(kwargs))

    return wrapper  # type: ignore[return-value]


@full_precision
def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 3: mean over samples of -log p(y | x), p = softmax(logits) (the paper's "log I(y_hat = c)").

    The paper averages per domain, then over domains; the mean over the concatenated batch equals that
    when every domain contributes the same batch size (our sampler's case), so no domain sizes are needed.
    """
    # log_softmax is the numerically stable log-probability; the paper's Eq. 3 omits the minus sign.
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1).mean()


@full_precision
def class_soft_labels(
    features: Tensor,
    labels: Tensor,
    classify: Callable[[Tensor], Tensor],
    num_classes: int,
    temperature: float = 2.0,
    eps: float = 1e-8,
    all_reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Eqs. 4-5 for one domain: s_c = clip(softmax(F_theta(z_c) / tau), eps), z_c the class-c feature mean.

    Returns (soft labels [C, C], present mask [C] bool). Rows of absent classes are uniform 1/C.
    `all_reduce` (a differentiable cross-process sum) makes the class means those of the global batch under DDP.
    """
    labels = labels.long()
    counts = torch.bincount(labels, minlength=num_classes)[:num_classes].to(features.dtype)
    # index_add sums each class's features in one pass (no python loop over classes).
    sums = features.new_zeros(num_classes, features.shape[-1]).index_add(0, labels, features)
    if all_reduce is not None:
        sums, counts = all_reduce(sums), all_reduce(counts)
    present = counts > 0
    # clamp(min=1) keeps absent classes at a zero mean instead of 0/0 = NaN (their rows are replaced below).
    means = sums / counts.clamp(min=1).unsqueeze(-1)
    probs = torch.softmax(classify(means) / temperature, dim=-1)
    # MASF clips at eps so that log(p) in the KL (Eq. 6) stays finite.
    probs = probs.clamp(min=eps)
    uniform = torch.full_like(probs, 1.0 / probs.shape[-1])
    # torch.where routes zero gradient into absent rows, so they can never leak NaN or signal.
    return torch.where(present.unsqueeze(-1), probs, uniform), present


def symmetric_kl(p: Tensor, q: Tensor) -> Tensor:
    """Eq. 6's per-class term: 1/2 [KL(p||q) + KL(q||p)] for each row of already clipped probabilities.

    Uses the identity KL(p||q) + KL(q||p) = sum (p - q)(log p - log q), which needs one log per input.
    """
    return 0.5 * ((p - q) * (p.log() - q.log())).sum(dim=-1)


@full_precision
def global_alignment_loss(
    soft_labels: Mapping[str, tuple[Tensor, Tensor]],
    meta_train: Sequence[str],
    meta_test: Sequence[str],
    class_average: str = "present",
) -> Tensor:
    """Eqs. 6-7: mean over (i in meta-train, j in meta-test) of the per-class symmetric KL of s^(i), s^(j).

    Eq. 6 averages over the classes present in both domains ("present"), or sums them and divides by C
    ("all", as MASF's public TF code does). A pair sharing no class contributes 0 but still counts in Eq. 7.
    """
    if class_average not in CLASS_AVERAGES:
        raise ValueError(f"class_average must be one of {CLASS_AVERAGES}, got {class_average!r}")
    if not meta_train or not meta_test:
        raise ValueError(
            f"global_alignment_loss needs non-empty meta_train and meta_test, got {list(meta_train)} and {list(meta_test)}"
        )
    pair_losses = []
    for i in meta_train:
        s_i, present_i = soft_labels[i]
        for j in meta_test:
            s_j, present_j = soft_labels[j]
            common = present_i & present_j
            per_class = symmetric_kl(s_i, s_j)
            # where (not multiply) so a non-finite value in an unused row cannot turn into NaN.
            total = torch.where(common, per_class, torch.zeros_like(per_class)).sum()
            if class_average == "present":
                # clamp(min=1): a pair with no common class yields 0 / 1 = 0, keeping the graph intact.
                denom = common.sum().clamp(min=1).to(total.dtype)
            else:
                denom = torch.tensor(float(per_class.shape[-1]), dtype=total.dtype, device=total.device)
            pair_losses.append(total / denom)
    return torch.stack(pair_losses).mean()


def pairwise_squared_distances(embeddings: Tensor) -> Tensor:
    """Squared Euclidean distance matrix ||e_a - e_b||^2 used by Eq. 8, clamped at 0 with an exact-zero diagonal.

    The Gram expansion avoids sqrt, whose gradient is infinite when two embeddings coincide.
    """
    sq_norms = (embeddings * embeddings).sum(dim=-1)
    dist = sq_norms.unsqueeze(1) + sq_norms.unsqueeze(0) - 2.0 * embeddings @ embeddings.transpose(0, 1)
    # Round-off can make the expansion slightly negative; distances are >= 0 by definition.
    dist = dist.clamp(min=0.0)
    eye = torch.eye(dist.shape[0], dtype=torch.bool, device=dist.device)
    return torch.where(eye, torch.zeros_like(dist), dist)


@full_precision
def triplet_semihard_loss(embeddings: Tensor, labels: Tensor, margin: float = 10.0) -> Tensor:
    """Eq. 8 (sign typo fixed): mean over positive pairs (a, p) of [d(a,p) - d(a,n) + margin]_+, d squared L2.

    n follows TF's triplet_semihard_loss: the closest negative with d(a,n) > d(a,p), else a's farthest negative.
    Returns 0 (with a graph to `embeddings`) when the batch has no positive pair or only one class.
    """
    labels = labels.reshape(-1)
    dist = pairwise_squared_distances(embeddings)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(labels.shape[0], dtype=torch.bool, device=labels.device)
    positive = same & ~eye
    negative = ~same

    # [a, p, n]: n is a negative of a lying strictly farther from a than p (semi-hard).
    d_ap = dist.unsqueeze(2)
    d_an = dist.unsqueeze(1)
    semihard = negative.unsqueeze(1) & (d_an > d_ap)
    inf = torch.full((), float("inf"), dtype=dist.dtype, device=dist.device)
    closest_semihard = torch.where(semihard, d_an, inf).amin(dim=2)
    has_semihard = semihard.any(dim=2)

    # Fallback when no semi-hard negative exists: the hardest-to-violate (farthest) negative of a.
    farthest = torch.where(negative, dist, -inf).amax(dim=1, keepdim=True)
    has_negative = negative.any(dim=1, keepdim=True)
    # Rows without any negative (one-class batch) get a finite placeholder; they are dropped below.
    farthest = torch.where(has_negative, farthest, torch.zeros_like(farthest))
    closest_semihard = torch.where(has_semihard, closest_semihard, torch.zeros_like(closest_semihard))
    d_neg = torch.where(has_semihard, closest_semihard, farthest.expand_as(closest_semihard))

    hinge = torch.relu(dist - d_neg + margin)
    # Anchors with no negative at all contribute nothing (TF would add margin + d(a,p) here instead).
    valid = positive & has_negative
    total = torch.where(valid, hinge, torch.zeros_like(hinge)).sum()
    # clamp(min=1): no valid pair gives 0 / 1 = 0 rather than TF's 0 / 0 = NaN; no host sync needed.
    return total / valid.sum().clamp(min=1).to(total.dtype)


@full_precision
def coral_penalty(a: Tensor, b: Tensor) -> Tensor:
    """CORAL (Sun & Saenko, ECCV-W 2016) as DomainBed trains it: the mean squared difference of two feature sets'
    means plus the mean squared difference of their covariances (unbiased), entry-wise over [D] and [D, D].

    Sun & Saenko's ‖C_a − C_b‖²_F / 4D² is the covariance term up to a constant; DomainBed adds the mean term.
    Zero for feature sets with equal first and second moments, e.g. a permutation of the same rows.
    """
    mean_a, mean_b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    cent_a, cent_b = a - mean_a, b - mean_b
    cov_a = cent_a.T @ cent_a / (len(a) - 1)
    cov_b = cent_b.T @ cent_b / (len(b) - 1)
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()
