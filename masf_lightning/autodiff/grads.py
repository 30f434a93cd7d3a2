"""Small gradient tools used by MASF's step, and the norms of its terms (a diagnostic)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def straight_through(value: torch.Tensor, carrier: torch.Tensor) -> torch.Tensor:
    """A tensor with the value of `value` and the gradient of `carrier`."""
    return value.detach() + (carrier - carrier.detach())


def clip_per_tensor(grads: Sequence[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """Scale each tensor to norm ≤ max_norm, as MASF's code clips (per tensor, 2.0); differentiable."""
    if max_norm is None:
        return list(grads)
    return [g * (max_norm / (g.norm() + 1e-12)).clamp(max=1.0) for g in grads]


@torch.no_grad()
def clip_per_tensor_(grads: Sequence[torch.Tensor], max_norm: float | None) -> list[torch.Tensor]:
    """clip_per_tensor in place, for gradients that carry no graph: one fused pass (torch._foreach_*), no copies
    of the 57 M AlexNet gradients."""
    grads = list(grads)
    if max_norm is None or not grads:
        return grads
    norms = torch._foreach_norm(grads)
    factors = [(max_norm / (n + 1e-12)).clamp(max=1.0) for n in norms]
    torch._foreach_mul_(grads, factors)
    return grads


def _norm(grads: Sequence[torch.Tensor | None]) -> float:
    return float(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads if g is not None)))


def term_grad_norms(
    psi: Sequence[torch.Tensor], cr_grads: Sequence[torch.Tensor], gen_term: torch.Tensor, tri_term: torch.Tensor,
    embeddings: torch.Tensor, margin: float,
) -> dict[str, float]:  # fmt: skip
    """‖∇_ψ‖ of each MASF term as its optimizer sees it (L_cr from the inner step; β1 L_gen; β2 L_tri, whose graph
    reaches ψ through β2-scaled features already), and the scale Eq. 8 works at: mean squared distance in T over ζ.
    Two extra backwards (graphs kept for the step's own); the loss-balance diagnostics of docs/results.md."""
    gen = torch.autograd.grad(gen_term, psi, retain_graph=True, allow_unused=True)
    tri = torch.autograd.grad(tri_term, psi, retain_graph=True, allow_unused=True)
    e = embeddings.float()
    return {
        "grad_norm/psi_cr": _norm(cr_grads[: len(psi)]),
        "grad_norm/psi_gen": _norm(gen),
        "grad_norm/psi_tri": _norm(tri),
        "diag/embedding_sq_dist_over_margin": float(torch.cdist(e, e).pow(2).mean() / margin),
    }
