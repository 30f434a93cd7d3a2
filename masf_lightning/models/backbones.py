"""Featurizers F_ψ. Each builder returns a `Backbone`: the network up to the layer whose output the
classifier (fc8 in the paper) and the metric embedder read, plus the geometry it expects."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from masf_lightning.checkpoints import load_checkpoint
from masf_lightning.errors import ConfigError, DataError

# Base address of a mirror holding torchvision's weight files under their own names (tests serve one on 127.0.0.1).
WEIGHTS_URL_ENV = "MASF_WEIGHTS_URL"


@dataclass(frozen=True)
class Preprocessing:
    """What a pretrained model was fed, from its own config (timm's pretrained_cfg): the centre `input_size` crop of
    the image resized to `resize` (shorter side), normalized by mean/std."""

    input_size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"


@dataclass
class Backbone:
    """F_ψ. `encoder` (frozen foundation models): a network outside F_ψ whose outputs F_ψ reads, computed once per
    image into the feature cache (`encoder_id` keys it); `preprocessing`: the model's own input geometry and mean/std."""

    featurizer: nn.Module
    feature_dim: int
    name: str
    encoder: nn.Module | None = None
    encoder_id: str | None = None
    preprocessing: Preprocessing | None = None


def weights_url(arch: str, weights: str) -> str:
    """Address of a torchvision weight file: its own URL, or the same file name under $MASF_WEIGHTS_URL (a mirror)."""
    url = torchvision.models.get_model_weights(arch)[weights].url
    mirror = os.environ.get(WEIGHTS_URL_ENV)
    return f"{mirror.rstrip('/')}/{os.path.basename(url)}" if mirror else url


def fetch_weights(url: str, label: str | None = None, progress: bool = True) -> Path:
    """The torch hub cache's copy of `url`; if absent, downloaded by torch.hub, which checks the SHA-256 prefix
    that torchvision puts in the file name, so a damaged download or a wrong mirror never lands in the cache."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / os.path.basename(urlparse(url).path)
    if path.is_file():
        return path
    label = label or f"weights {path.name}"
    match = torch.hub.HASH_REGEX.search(path.name)
    prefix = match.group(1) if match else None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=progress)
    except RuntimeError as exc:
        if "hash" not in str(exc):
            raise
        raise ConfigError(
            f"{label}: downloaded {url} but its SHA-256 does not start with {prefix} as {path.name} says "
            f"(damaged download or a wrong mirror); nothing saved in {folder}/"
        ) from None
    except (OSError, HTTPException, ValueError) as exc:  # URLError and HTTPError are OSErrors
        reason = f"HTTP {exc.code} {exc.reason}" if isinstance(exc, HTTPError) else getattr(exc, "reason", None) or exc
        raise ConfigError(
            f"{label} are not available: {path.name} is not in {folder}/ and downloading {url} failed ({reason}); "
            f"put the file there (or set TORCH_HOME), run `make weights` where there is internet, "
            "or use backbone.weights=null"
        ) from None
    return path


def _load_weights(arch: str, weights: str | None) -> dict[str, torch.Tensor] | None:
    """ImageNet weights through torchvision's weight registry: from the torch hub cache, downloaded if absent."""
    if weights in (None, "none", "null"):
        return None
    enum = torchvision.models.get_model_weights(arch)
    if weights not in enum.__members__:
        valid = ", ".join(m.name for m in enum)
        raise ConfigError(f"backbone.weights={weights!r} is not a {arch} weight set (valid: {valid}, null)")
    path = fetch_weights(weights_url(arch, weights), f"ImageNet weights for {arch} ({weights})")
    try:
        return load_checkpoint(path)
    except DataError as exc:  # unreadable, or refused (it would run code)
        raise ConfigError(f"ImageNet weights {exc}; delete it and place a fresh copy") from None


def download_main() -> int:
    """`make weights`: put the ImageNet AlexNet and ResNet-18 files in the torch hub cache (for offline compute nodes)."""
    try:
        for arch in ("alexnet", "resnet18"):
            print(f"{arch}: {fetch_weights(weights_url(arch, 'IMAGENET1K_V1'), f'ImageNet weights for {arch}')}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def alexnet(weights: str | None = "IMAGENET1K_V1") -> Backbone:
    """F_ψ = conv1 … fc7 (4096-d) of torchvision's AlexNet: the paper's architecture family, not its network.

    torchvision's (64-192-384-256-256 filters, no LRN, no grouped convs, dropout 0.5 before fc6 and fc7, RGB
    input with ImageNet mean/std) differs from the paper's Caffe ``bvlc_alexnet`` (96-256-384-384-256, LRN,
    groups=2, dropout after fc6 and fc7, BGR input with mean subtraction), and so do their ImageNet weights.
    """
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
