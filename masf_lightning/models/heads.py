"""Heads on top of F_ψ: the classifier F_θ (a fresh fc8) and the metric embedder F_φ."""

from __future__ import annotations

from torch import nn


def make_classifier(feature_dim: int, num_classes: int) -> nn.Module:
    """F_θ: one linear layer, as fc8 in the paper's AlexNet."""
    return nn.Linear(feature_dim, num_classes)


def make_embedder(feature_dim: int, hidden_dim: int = 1024, embedding_dim: int = 256, final_activation: bool = True) -> nn.Module:
    """F_φ: 4096 → 1024 → LeakyReLU(0.2) → 256 → LeakyReLU(0.2), as MASF's public code builds its metric net
    (`masf_func.py`: both fully connected layers are followed by a leaky ReLU, slope 0.2, so the 256-d
    embedding is LeakyReLU'd too); `final_activation=False` leaves the embedding linear."""
    layers: list[nn.Module] = [nn.Linear(feature_dim, hidden_dim), nn.LeakyReLU(0.2), nn.Linear(hidden_dim, embedding_dim)]
    return nn.Sequential(*layers, *([nn.LeakyReLU(0.2)] if final_activation else []))
