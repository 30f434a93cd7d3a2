"""Heads on top of F_ψ: the classifier F_θ (a fresh fc8) and the metric embedder F_φ."""

from __future__ import annotations

from torch import nn


def make_classifier(feature_dim: int, num_classes: int) -> nn.Module:
    """F_θ: one linear layer, as fc8 in the paper's AlexNet."""
    return nn.Linear(feature_dim, num_classes)


def make_embedder(feature_dim: int, hidden_dim: int = 1024, embedding_dim: int = 256) -> nn.Module:
    """F_φ: 4096 → 1024 → LeakyReLU(0.2) → 256, as MASF's public code builds its metric net."""
    return nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.LeakyReLU(0.2), nn.Linear(hidden_dim, embedding_dim))
