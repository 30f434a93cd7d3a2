"""Model files from the Hugging Face hub, as huggingface_hub caches them, with one-line errors for what users hit.

Everything a hub user expects holds: files live in huggingface_hub's cache (`HF_HOME`, `HF_HUB_CACHE`), `HF_TOKEN`
opens gated models, `HF_HUB_OFFLINE=1` never touches the network, `HF_ENDPOINT` names a mirror (tests serve one on
127.0.0.1). The variables are read at each call, not at import, so a test or a launcher may set them late.
Torch-free: the config check (`config/callback.py`) fetches a run's model files before Hydra writes anything.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masf_lightning.errors import ConfigError

HUB_PREFIX = "hf-hub:"  # timm's spelling of a hub model: hf-hub:<org>/<model>
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # the first the repository has is used
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubSettings:
    endpoint: str
    cache: Path
    token: str | None
    offline: bool


def settings() -> HubSettings:
    """huggingface_hub's environment variables, read now."""
    home = Path(os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface").expanduser()
    cache = Path(os.environ.get("HF_HUB_CACHE") or home / "hub").expanduser()
    offline = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().upper() in ("1", "ON", "YES", "TRUE")
    endpoint = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return HubSettings(endpoint, cache, os.environ.get("HF_TOKEN") or None, offline)


@dataclass(frozen=True)
class ModelFiles:
    """A hub model's files in the local cache: `folder` is the snapshot folder holding them all."""

    repo_id: str
    folder: Path
    files: dict[str, Path]

    @property
    def weights(self) -> Path | None:
        return next((self.files[f] for f in WEIGHT_FILES if f in self.files), None)


def repo_id(name: str) -> str:
    """`hf-hub:org/model` (timm's form) or `org/model` → `org/model`."""
    return name[len(HUB_PREFIX) :] if name.startswith(HUB_PREFIX) else name


def model_files(name: str, weights: str | None, library: str) -> ModelFiles | None:
    """What a foundation backbone reads from the hub: the architecture's config (a hub model; transformers: and its
    preprocessor config) and, for `weights: pretrained`, the weight file. None: nothing (a timm registry model at
    random weights). A timm registry name with weights is read from its timm/ repository on the hub."""
    if library == "transformers":
        files: list[str | tuple[str, ...]] = ["config.json", "preprocessor_config.json"]
        repo = repo_id(name)
    elif name.startswith(HUB_PREFIX):
        files, repo = ["config.json"], repo_id(name)
    elif weights is None:
        return None
    else:
        files, repo = ["config.json"], _timm_registry_repo(name)
    if weights is not None:
        files.append(WEIGHT_FILES)
    return fetch(repo, files, name)


def _timm_registry_repo(name: str) -> str:
    """The hub repository timm keeps a registry model's pretrained weights in (timm/<model>.<tag>)."""
    import timm

    if not timm.is_model(name.split(".")[0]):
        raise ConfigError(f"backbone.name={name}: not a timm model (timm.list_models() lists them; a hub model is hf-hub:<org>/<model>)")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise ConfigError(f"backbone.name={name}: timm keeps no hub weights for it; use backbone.weights=null or an hf-hub:<org>/<model> name")
    return str(cfg.hf_hub_id)


def fetch(repo: str, files: Sequence[str | tuple[str, ...]], what: str = "") -> ModelFiles:
    """Each of `files` (a tuple: the first of these the repository holds) from the cache, downloaded if missing.

    A cached file is used as is when offline or when the hub cannot be reached; a gated, missing or unreachable
    model is one ConfigError naming the hub id and what to do. Nothing half-downloaded is ever returned
    (huggingface_hub writes to a temporary file and renames it).
    """
    import logging

    from huggingface_hub import hf_hub_download

    s = settings()
    got: dict[str, Path] = {}
    hub_log = logging.getLogger("huggingface_hub")
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry warnings: our one line says what failed
    try:
        for wanted in files:
            _fetch_one(repo, wanted, what, s, got, hf_hub_download)
    finally:
        hub_log.setLevel(level)
    folder = next(iter(got.values())).parent if got else s.cache
    return ModelFiles(repo, folder, got)


def _fetch_one(repo: str, wanted: str | tuple[str, ...], what: str, s: HubSettings, got: dict[str, Path], download: Any) -> None:
    """One file, or the first of the alternatives the repository holds, into `got`."""
    options = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    for i, filename in enumerate(options):
        try:
            path = download(repo, filename, cache_dir=s.cache, token=s.token, local_files_only=s.offline, endpoint=s.endpoint)
        except Exception as exc:  # noqa: BLE001 - huggingface_hub's errors, told apart by name below
            if _missing_file(exc) and i < len(options) - 1:
                continue  # try the next alternative (model.safetensors, then pytorch_model.bin)
            raise _error(exc, repo, filename, what, s) from None
        got[filename] = Path(path)
        return


def _missing_file(exc: Exception) -> bool:
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    return isinstance(exc, EntryNotFoundError) and not isinstance(exc, LocalEntryNotFoundError)


def _error(exc: Exception, repo: str, filename: str, what: str, s: HubSettings) -> ConfigError:
    """The one line a user needs, by what went wrong."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    model = what if what and repo in what else f"{what} ({repo})" if what else repo
    page = f"{s.endpoint}/{repo}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, GatedRepoError) or (isinstance(exc, HfHubHTTPError) and status == 403):
        who = "HF_TOKEN's account has not been granted access" if s.token else "no HF_TOKEN is set"
        return ConfigError(
            f"{model} is gated and {who}: accept its licence on {page} (logged in), then set HF_TOKEN to a read token of that account"
        )
    if isinstance(exc, RepositoryNotFoundError) or (isinstance(exc, HfHubHTTPError) and status in (401, 404) and not _missing_file(exc)):
        private = "" if s.token else " (a private model needs HF_TOKEN)"
        return ConfigError(f"{model}: no such model on {s.endpoint}{private}; check backbone.name")
    if _missing_file(exc):
        return ConfigError(f"{model} has no file {filename} on {s.endpoint}: is it a model of the library the backbone config names?")
    if isinstance(exc, LocalEntryNotFoundError):
        if s.offline:
            return ConfigError(
                f"{model}: {filename} is not in the Hugging Face cache {s.cache} and HF_HUB_OFFLINE=1; "
                "fetch it once with network access (same HF_HOME), or unset HF_HUB_OFFLINE"
            )
        return ConfigError(
            f"{model}: cannot reach {s.endpoint} and {filename} is not in the Hugging Face cache {s.cache}; "
            "fetch it where there is network access (same HF_HOME), then run with HF_HUB_OFFLINE=1"
        )
    reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"{model}: downloading {filename} from {s.endpoint} failed ({reason})")
