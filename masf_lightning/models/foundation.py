"""Pathology foundation models as F_ψ: any timm model (timm's registry, or `hf-hub:<org>/<model>`), or a transformers
model (Phikon-v2), frozen or fine-tuned, with the preprocessing its own config prescribes.

F_ψ = adapter ∘ encoder, the adapter a small trainable layer (LayerNorm → Linear → GELU) so that MASF's inner step,
MLDG's and CORAL's feature statistics act on something trainable whatever the encoder does.
    trainable=all   every weight trains (end to end, through images)
    trainable=k     the encoder's last k blocks (timm's `group_matcher`, as for layer-wise lr decay) and the adapter;
                    the other weights become buffers: constants no optimizer, inner step or gradient sees
    trainable=none  the encoder is frozen and lives outside F_ψ: it runs once per image into the feature cache
                    (data/features.py) and F_ψ is the adapter alone (the offline feature mode)
Weight files come through `masf_lightning.hub` (huggingface_hub's cache) and are read with safetensors or
`load_checkpoint` (weights_only=True), never by unpickling code.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from masf_lightning import hub
from masf_lightning.checkpoints import load_checkpoint, weights_fingerprint
from masf_lightning.choices import FOUNDATION_LIBRARIES, POOLS
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.models.backbones import Backbone, Preprocessing
from masf_lightning.relations import require_choice

BUILDER = "foundation"  # the registry's key for these backbones (config/hparams.py)
RANDOM_INIT_SEED = 0  # weights=null: the same random network in every run, so its features cache like any others
LAYER_MODULES = ("torch.nn.", "timm.layers.")  # where a `*_layer` kwarg may name a class (Virchow2's SwiGLUPacked, SiLU)
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # a transformers preprocessor's `resample`


class Pooled(nn.Module):
    """One vector per image: the model's pooled embedding (`default`: timm's pre-logits, transformers' pooler-free
    class token), its class token (`cls`), or class token ⊕ mean patch token (`cls_mean`, Virchow2's model card)."""

    def __init__(self, model: nn.Module, pool: str, prefix_tokens: int, library: str):
        super().__init__()
        self.model, self.pool, self.prefix_tokens, self.library = model, pool, prefix_tokens, library

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.library == "transformers":
            tokens = self.model(pixel_values=x).last_hidden_state
        elif self.pool == "default":
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        else:
            tokens = self.model.forward_features(x)
        if self.pool in ("default", "cls"):
            return tokens[:, 0]
        return torch.cat([tokens[:, 0], tokens[:, self.prefix_tokens :].mean(1)], dim=-1)


def make_adapter(feature_dim: int, adapter_dim: int) -> nn.Module:
    """ψ's trainable part: the encoder's embedding, layer-normalized (foundation models' scales differ by orders of
    magnitude), to `adapter_dim` features."""
    return nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, adapter_dim), nn.GELU())


def foundation(
    name: str,
    library: str = "timm",
    weights: str | None = "pretrained",
    trainable: str | int = "all",
    kwargs: dict[str, Any] | None = None,
    pool: str = "default",
    adapter_dim: int = 512,
    card: dict[str, Any] | None = None,
) -> Backbone:
    """A foundation model as F_ψ (module docstring); `card` (named configs): the model card's facts (`_with_card`)."""
    require_choice("backbone.library", library, FOUNDATION_LIBRARIES)
    require_choice("backbone.pool", pool, POOLS)
    if weights not in (None, "pretrained"):
        raise ConfigError(f"backbone.weights={weights}: must be pretrained (the model's own weights) or null (random)")
    if library == "transformers":
        _require_transformers(name)  # before any download: say what to install first
    files = hub.model_files(name, weights, library)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        build = _transformers_model if library == "transformers" else _timm_model
        net, prep, prefix_tokens, width = build(name, files, dict(kwargs or {}), pool)
    if library == "timm" and files is not None and files.weights is not None:
        _load_weights(net, files.weights, name)
    if library == "timm" and pool == "default":
        net.reset_classifier(0)  # a registry model's ImageNet head: F_θ is the classifier here
    encoder = Pooled(net, pool, prefix_tokens, library)
    dim = width * (2 if pool == "cls_mean" else 1)
    if card:
        prep = _with_card(card, name, dim, prep)
    adapter = make_adapter(dim, adapter_dim)
    if trainable == "none":
        encoder.requires_grad_(False).eval()
        spec = {"name": name, "library": library, "kwargs": kwargs or {}, "pool": pool, "preprocessing": prep.__dict__, "weights": weights_fingerprint(net)}
        encoder_id = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
        return Backbone(adapter, adapter_dim, BUILDER, encoder=encoder, encoder_id=encoder_id, preprocessing=prep)
    if trainable != "all":
        freeze_all_but_last_blocks(net, _blocks(net, library), int(trainable))
    return Backbone(nn.Sequential(encoder, adapter), adapter_dim, BUILDER, preprocessing=prep)


# -- timm ---------------------------------------------------------------------------------------------------------
def _timm_model(name: str, files: hub.ModelFiles | None, kwargs: dict[str, Any], pool: str) -> tuple[nn.Module, Preprocessing, int, int]:
    """timm builds the network from the hub repository's config.json (or its registry), kwargs on top; preprocessing
    from the model's pretrained_cfg (timm's `resolve_data_config`)."""
    import timm

    source = f"local-dir:{files.folder}" if files is not None else name
    if files is None and (name.startswith(hub.HUB_PREFIX) or not timm.is_model(name.split(".")[0])):
        raise ConfigError(f"backbone.name={name}: not a timm model (timm.list_models() lists them; a hub model is hf-hub:<org>/<model>)")
    try:
        net = timm.create_model(source, pretrained=False, **{k: _layer(k, v) for k, v in kwargs.items()})
    except (TypeError, ValueError, RuntimeError, AssertionError, KeyError) as exc:  # KeyError: a config.json not timm's
        raise ConfigError(f"backbone.name={name}: timm cannot build it with backbone.kwargs={kwargs} ({_first_line(exc)}); "
                          "a transformers model needs backbone.library=transformers") from None  # fmt: skip
    data = timm.data.resolve_data_config(model=net)
    size = int(data["input_size"][-1])
    crop_pct = float(data.get("crop_pct") or 1.0)
    prep = Preprocessing(size, int(size / crop_pct), tuple(data["mean"]), tuple(data["std"]), str(data.get("interpolation") or "bilinear"))
    if pool != "default" and not getattr(net, "num_prefix_tokens", 0):
        raise ConfigError(f"backbone.pool={pool}: {name} has no class token (a ViT has); use backbone.pool=default")
    width = int(getattr(net, "head_hidden_size", net.num_features)) if pool == "default" else int(net.num_features)
    return net, prep, int(getattr(net, "num_prefix_tokens", 0)), width


def _layer(key: str, value: Any) -> Any:
    """A `*_layer` kwarg written as a class name (mlp_layer: timm.layers.SwiGLUPacked) → that class; only from
    torch.nn and timm.layers, so a config cannot name arbitrary code."""
    if not (key.endswith("_layer") and isinstance(value, str)):
        return value
    module, _, attr = value.rpartition(".")
    found = getattr(importlib.import_module(module), attr, None) if value.startswith(LAYER_MODULES) else None
    if not isinstance(found, type):
        raise ConfigError(f"backbone.kwargs.{key}={value}: must name a class in torch.nn or timm.layers")
    return found


def _load_weights(net: nn.Module, path: Path, name: str) -> None:
    """The weight file into the network: safetensors, or a torch file read with weights_only=True; timm's own
    checkpoint filter of the model's family when the names need it (e.g. position embeddings of another size)."""
    try:
        if path.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_checkpoint(path)
    except DataError as exc:
        raise ConfigError(f"backbone.name={name}: its weights {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged safetensors file raises the reader's own error
        raise ConfigError(f"backbone.name={name}: its weight file {path} cannot be read ({_first_line(exc)}); delete it from the cache") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        net.load_state_dict(state)
        return
    except RuntimeError as exc:
        problem = exc
    family_filter = getattr(sys.modules.get(type(net).__module__), "checkpoint_filter_fn", None)
    try:
        if family_filter is None:
            raise problem
        net.load_state_dict(family_filter(state, net))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"backbone.name={name}: its weights do not fit the network built from its config and backbone.kwargs ({_first_line(exc)})") from None


# -- transformers (Phikon-v2) ------------------------------------------------------------------------------------
def _transformers_model(name: str, files: hub.ModelFiles | None, kwargs: dict[str, Any], pool: str) -> tuple[nn.Module, Preprocessing, int, int]:
    """transformers builds the network from config.json and reads the weights from model.safetensors itself (it renames
    legacy keys on load); preprocessing from preprocessor_config.json."""
    transformers = _require_transformers(name)
    assert files is not None  # hub.model_files always fetches a transformers model's configs
    config = transformers.AutoConfig.from_pretrained(str(files.folder), **kwargs)
    if files.weights is None:
        net = transformers.AutoModel.from_config(config)
    elif files.weights.name.endswith(".safetensors"):
        net = transformers.AutoModel.from_pretrained(str(files.folder), config=config, use_safetensors=True)
    else:
        raise ConfigError(f"backbone.name={name}: has no model.safetensors; a transformers model is read from safetensors only (no pickled weights)")
    proc = json.loads(files.files["preprocessor_config.json"].read_text())
    size = proc.get("crop_size") if proc.get("do_center_crop", True) else proc.get("size")
    size = int(size.get("height", size.get("shortest_edge", 224)) if isinstance(size, dict) else size)
    resize = proc.get("size", {})
    resize = int(resize.get("shortest_edge", resize.get("height", size)) if isinstance(resize, dict) else resize)
    prep = Preprocessing(size, resize, tuple(proc["image_mean"]), tuple(proc["image_std"]), PIL_RESAMPLE.get(int(proc.get("resample", 2)), "bilinear"))
    return net, prep, 1 + int(getattr(config, "num_register_tokens", 0) or 0), int(config.hidden_size)


def _require_transformers(name: str) -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"backbone.name={name} loads through transformers, which is not installed: pip install 'masf-lightning[foundation]'") from None
    return transformers


# -- what trains ----------------------------------------------------------------------------------------------------
def _blocks(net: nn.Module, library: str) -> list[list[str]]:
    """The encoder's parameter names block by block, the stem left out, what follows the last block in it."""
    if library == "timm":
        from timm.models import group_parameters

        groups = group_parameters(net, net.group_matcher(coarse=False))
        return [names for _, names in sorted(groups.items())][1:]
    blocks: dict[int, list[str]] = {}
    tail: list[str] = []
    for n, _ in net.named_parameters():
        m = re.search(r"(?:^|\.)layer\.(\d+)\.", n)
        if m:
            blocks.setdefault(int(m[1]), []).append(n)
        elif blocks:
            tail.append(n)
    ordered = [blocks[i] for i in sorted(blocks)]
    if ordered:
        ordered[-1] += tail
    return ordered


def freeze_all_but_last_blocks(net: nn.Module, blocks: list[list[str]], k: int) -> None:
    """Every weight outside the last k blocks becomes a buffer: saved and moved with the network, never trained."""
    keep = {n for block in blocks[-k:] for n in block}
    for n, p in list(net.named_parameters()):
        if n not in keep:
            owner, _, attr = n.rpartition(".")
            module = net.get_submodule(owner)
            del module._parameters[attr]
            module.register_buffer(attr, p.detach())


def _with_card(card: dict[str, Any], name: str, dim: int, prep: Preprocessing) -> Preprocessing:
    """A named config's model-card facts: the embedding size must be the model's (else the kwargs or the pooling are not
    the card's); the card's normalization is what the model was trained with, used even where the hub config says
    otherwise (H-optimus-0's card prescribes its own mean/std), with a warning line when they differ."""
    if card.get("embedding_dim") not in (None, dim):
        raise ConfigError(f"backbone.card.embedding_dim={card['embedding_dim']} (its model card) but {name} gives {dim}: the hub model changed or the card is wrong")
    size = int(card.get("input_size") or prep.input_size)
    mean, std = tuple(card.get("mean") or prep.mean), tuple(card.get("std") or prep.std)
    if max(abs(a - b) for a, b in zip((*mean, *std), (*prep.mean, *prep.std), strict=True)) > 1e-4 or size != prep.input_size:
        print(f"warning: {name}: its config says {prep.input_size} px, mean {list(prep.mean)}, std {list(prep.std)}; "
              f"using its model card's {size} px, mean {list(mean)}, std {list(std)}", file=sys.stderr)  # fmt: skip
    return Preprocessing(size, round(prep.resize * size / prep.input_size), mean, std, prep.interpolation)  # type: ignore[arg-type]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
