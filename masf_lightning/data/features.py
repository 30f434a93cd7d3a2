"""The offline feature mode (`backbone.trainable=none`): each cached image's features from a frozen encoder, computed
once into a memory-mapped file beside the image cache, as eva's offline mode does.

Features are of the evaluation view of each image-cache row (centre crop, the model's mean/std): no augmentation
in this mode, every step sees the same vector of an image. The file is keyed by the image cache's key (files,
stain, geometry) and the encoder's id (model, kwargs, pooling, preprocessing, a fingerprint of its weights), so
changing any of them computes new features and an unchanged setup reuses them across runs and seeds. Rows are
written chunk by chunk into a partial file whose progress is recorded after each chunk: a killed build resumes
where it stopped; the finished file is renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from masf_lightning.data.cache import CachedImages, clean_stale_temps, digest
from masf_lightning.io import write_json_atomic

FEATURE_FORMAT_VERSION = 1  # bump when the stored layout or what a row holds changes
FEATURE_PREFIX = "features-"


@dataclass
class CachedFeatures:
    """Row i of `features` (N × D float32) belongs to row i of the image cache's index."""

    features: torch.Tensor
    key: str
    path: Path
    reused: bool


def feature_key(image_key: str, encoder_id: str) -> str:
    """SHA-256 over (the image cache's key, the encoder's id, the format version)."""
    return digest({"format_version": FEATURE_FORMAT_VERSION, "images": image_key, "encoder": encoder_id})


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path, Path, Path]:
    """(features, their description, the partial features, the partial's progress)."""
    stem = f"{FEATURE_PREFIX}{key[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json", cache_dir / f".{stem}.partial.npy", cache_dir / f".{stem}.partial.json"


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def build_features(
    cached: CachedImages,
    encode: Callable[[torch.Tensor], torch.Tensor],
    encoder_id: str,
    cache_dir: str | os.PathLike[str],
    *,
    batch_size: int = 256,
    progress: bool = True,
    what: str = "",
) -> CachedFeatures:
    """Load this (image cache, encoder)'s features, or compute the missing rows (all, or what a killed build left) and
    write them; `encode` maps uint8 image-cache rows to feature rows (float, any device)."""
    cache_dir = Path(cache_dir)
    key = feature_key(cached.key, encoder_id)
    final, meta_path, _, _ = _paths(cache_dir, key)
    # rows are stored in the order of the sorted file paths, like the image cache's key: any index order reuses them
    names = [Path(str(p)).as_posix() for p in cached.index["path"]]
    order = torch.tensor(sorted(range(len(names)), key=names.__getitem__), dtype=torch.long)
    if (found := _reuse(final, meta_path, key, order, what)) is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock_path = cache_dir / f".{final.stem}.lock"
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run (a joblib sweep) waits for the one computing, then reuses
        if (found := _reuse(final, meta_path, key, order, what)) is not None:
            return found
        built = _compute(cached, encode, encoder_id, key, order, cache_dir, batch_size, progress, what)
        lock_path.unlink(missing_ok=True)  # whoever waits on it finds the features on waking; later runs never lock
        return built


def _reuse(final: Path, meta_path: Path, key: str, order: torch.Tensor, what: str) -> CachedFeatures | None:
    meta = _read_json(meta_path)
    if not final.is_file() or meta is None or meta.get("key") != key:
        return None
    stored = np.load(final, mmap_mode="r", allow_pickle=False)
    if stored.shape[0] != len(order) or stored.dtype != np.float32:
        return None
    print(f"feature cache: reusing {final} ({len(order)} × {stored.shape[1]}{f', {what}' if what else ''})", flush=True)
    return CachedFeatures(_in_index_order(stored, order), key, final, reused=True)


def _compute(cached: CachedImages, encode: Callable[[torch.Tensor], torch.Tensor], encoder_id: str, key: str, order: torch.Tensor,
             cache_dir: Path, batch_size: int, progress: bool, what: str) -> CachedFeatures:  # fmt: skip
    """The rows a previous build did not finish (all of them at first), chunk by chunk, then the file renamed into place."""
    final, meta_path, partial, progress_path = _paths(cache_dir, key)
    n = len(order)
    clean_stale_temps(cache_dir, FEATURE_PREFIX)
    state = _read_json(progress_path)
    done = int(state["done"]) if state and state.get("key") == key and state.get("n") == n and partial.is_file() else 0
    started = time.perf_counter()
    print(f"feature cache: {'resuming at row ' + str(done) + ' of ' if done else 'computing '}{n} images{f' ({what})' if what else ''} → {final}", flush=True)
    out = np.load(partial, mmap_mode="r+", allow_pickle=False) if done else None
    bar = tqdm(total=n, initial=done, desc="features", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(done, n, batch_size):
            rows = order[start : start + batch_size]
            feats = encode(cached.images[rows]).detach().float().cpu().numpy()
            if out is None:  # the width is known once the encoder has answered
                out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, feats.shape[1]))
            out[start : start + len(rows)] = feats
            out.flush()
            write_json_atomic(progress_path, {"key": key, "n": n, "done": start + len(rows)})  # after the rows are on disk
            bar.update(len(rows))
    finally:
        bar.close()
    assert out is not None or n == 0, "no rows to compute"
    out = out if out is not None else np.zeros((0, 0), dtype=np.float32)
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    seconds = time.perf_counter() - started
    write_json_atomic(meta_path, {"key": key, "format_version": FEATURE_FORMAT_VERSION, "images": cached.key, "encoder": encoder_id,
                                  "what": what, "n": n, "dim": int(out.shape[1]), "seconds": round(seconds, 2)})  # fmt: skip
    os.replace(partial, final)
    progress_path.unlink(missing_ok=True)
    print(f"feature cache: wrote {final} in {seconds:.1f} s ({(n - done) / max(seconds, 1e-9):.0f} images/s)", flush=True)
    stored = np.load(final, mmap_mode="r", allow_pickle=False)
    return CachedFeatures(_in_index_order(stored, order), key, final, reused=False)


def _in_index_order(stored: np.ndarray, order: torch.Tensor) -> torch.Tensor:
    """Stored row j is index row order[j]: read into memory in the index's order."""
    out = torch.empty((len(order), stored.shape[1]), dtype=torch.float32)
    out[order] = torch.from_numpy(np.array(stored))  # a copy: the memory map is read-only
    return out


class FrozenEncoder:
    """The datamodule's side of the feature mode: the frozen encoder (for new images) and the cached features of the
    training images, on each device that asks for them."""

    def __init__(self, encoder: nn.Module, encoder_id: str, what: str = ""):
        self.encoder, self.encoder_id, self.what = encoder.eval(), encoder_id, what
        self.cached: CachedFeatures | None = None
        self._on: dict[torch.device, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images → the encoder's features, on the images' device (not inference mode: they feed training)."""
        return self.encoder.to(x.device)(x.float()).float()

    def build(self, cached: CachedImages, to_input: Callable[[torch.Tensor], torch.Tensor], cache_dir: Path, batch_size: int, progress: bool) -> None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.cached = build_features(cached, lambda x: to_input(x.to(device)), self.encoder_id, cache_dir,
                                     batch_size=batch_size, progress=progress, what=self.what)  # fmt: skip
        self.encoder.cpu()  # training reads the cache: the encoder leaves the GPU (new images bring it back)
        self._on.clear()

    def rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Cached features of image-cache rows, on the rows' device."""
        assert self.cached is not None, "features are built in prepare_data"
        if rows.device not in self._on:
            self._on[rows.device] = self.cached.features.to(rows.device)
        return self._on[rows.device][rows]
