"""Heads on top of F_ψ: the classifier F_θ (a fresh fc8) and the metric embedder F_φ."""

from __future__ import annotations

import torch
from torch import nn


def make_classifier(feature_dim: int, num_classes: int) -> nn.Module:
    """F_θ: one linear layer, as fc8 in the paper's AlexNet."""
    return nn.Linear(feature_dim, num_classes)


class L2Normalize(nn.Module):
    """Embeddings on the unit sphere (FaceNet, the paper's ref. [12]): Eq. 8's squared distances lie in [0, 4]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, dim=-1)


class FullPrecision(nn.Sequential):
    """A Sequential that runs in float32 under any autocast. For F_φ: Eq. 8 works on differences of squared
    distances between embeddings that nearly coincide early in training, which bf16's 8 mantissa bits blur
    (tests/test_precision.py: 24 % error in ∇_φ L_tri in bf16, 11 % in fp32 F_φ on bf16 features). A small MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return super().forward(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)


def make_embedder(feature_dim: int, hidden_dim: int, embedding_dim: int, final_activation: bool, normalize: bool) -> nn.Module:
    """F_φ: 4096 → 1024 → LeakyReLU(0.2) → 256 → LeakyReLU(0.2), as MASF's public code builds its metric net
    (`masf_func.py`: both fully connected layers are followed by a leaky ReLU, slope 0.2, so the 256-d
    embedding is LeakyReLU'd too); `final_activation=False` leaves the embedding linear.

    `normalize=True` puts the embedding on the unit sphere. Unnormalized (the paper and its code), Eq. 8 has
    an escape: F_φ can meet any margin by scaling embeddings up, and the triplet gradient reaching ψ grows
    with that scale (docs/results.md, "loss balance").
    """
    layers: list[nn.Module] = [nn.Linear(feature_dim, hidden_dim), nn.LeakyReLU(0.2), nn.Linear(hidden_dim, embedding_dim)]
    if final_activation:
        layers.append(nn.LeakyReLU(0.2))
    if normalize:
        layers.append(L2Normalize())
    return FullPrecision(*layers)
