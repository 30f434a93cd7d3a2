"""Featurizers F_ψ. Each builder returns a `Backbone`: the network up to the layer whose output the
classifier (fc8 in the paper) and the metric embedder read, plus the geometry it expects."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from masf_lightning.errors import ConfigError


@dataclass
class Backbone:
    featurizer: nn.Module
    feature_dim: int
    name: str


def _load_weights(arch: str, weights: str | None) -> dict[str, torch.Tensor] | None:
    """ImageNet weights from the torch hub cache only: we never download at run time."""
    if weights in (None, "none", "null"):
        return None
    enum = torchvision.models.get_model_weights(arch)
    try:
        w = enum[weights]
    except KeyError:
        valid = ", ".join(m.name for m in enum)
        raise ConfigError(f"backbone.weights={weights!r} is not a {arch} weight set (valid: {valid}, null)") from None
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(w.url)
    if not path.is_file():
        raise ConfigError(
            f"ImageNet weights for {arch} ({weights}) are not available offline: put {path.name} "
            f"(from {w.url}) in {folder}/ or set TORCH_HOME, or run with backbone.weights=null"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ConfigError(f"cannot read ImageNet weights {path}: {exc.__class__.__name__}; delete it and place a fresh copy") from None


def alexnet(weights: str | None = "IMAGENET1K_V1") -> Backbone:
    """F_ψ = conv1 … fc7 (4096-d) of torchvision's AlexNet, dropout 0.5 before fc6 and fc7 (paper Fig. 1)."""
    net = torchvision.models.alexnet(weights=None)
    state = _load_weights("alexnet", weights)
    if state is not None:
        net.load_state_dict(state)
    # classifier = [Dropout, fc6, ReLU, Dropout, fc7, ReLU, fc8]: drop ImageNet's fc8, F_θ is a fresh one.
    featurizer = nn.Sequential(net.features, net.avgpool, nn.Flatten(1), *list(net.classifier.children())[:6])
    return Backbone(featurizer, 4096, "alexnet")


def resnet18(weights: str | None = "IMAGENET1K_V1") -> Backbone:
    """F_ψ = everything before ResNet-18's `fc` (512-d)."""
    net = torchvision.models.resnet18(weights=None)
    state = _load_weights("resnet18", weights)
    if state is not None:
        net.load_state_dict(state)
    net.fc = nn.Identity()
    return Backbone(net, 512, "resnet18")


def small(width: int = 16, feature_dim: int = 128, dropout: float = 0.1) -> Backbone:
    """A compact CNN for the embedded synthetic data and tests: trains in minutes on a laptop CPU.

    No normalization layers: no running buffers, so functional inner steps and concatenated
    multi-domain forwards are exact, and the double backward of Eq. 11 stays cheap (GroupNorm's
    made a second-order step ~4× dearer on CPU).
    """

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2))

    featurizer = nn.Sequential(
        block(3, width),
        block(width, width * 2),
        block(width * 2, width * 4),
        block(width * 4, width * 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Dropout(dropout),
        nn.Linear(width * 4, feature_dim),
        nn.ReLU(inplace=True),
    )
    return Backbone(featurizer, feature_dim, "small")
