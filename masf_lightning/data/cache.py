"""Preprocess BreaKHis once (decode PNG, stain-normalize the full image, crop/resize) into one uint8 tensor file.

Training then reads a single N×3×S×S tensor instead of decoding 7,909 PNGs every epoch. The file is keyed by
the file list, the stain normalizer's fingerprint, the geometry and a format version, so changing any of them
rebuilds and an unchanged config reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from masf_lightning.checkpoints import load_checkpoint
from masf_lightning.choices import GEOMETRIES
from masf_lightning.data.decode import decode_rgb_file
from masf_lightning.data.stain import IdentityNormalizer, StainNormalizer
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.io import atomic_path
from masf_lightning.relations import require_choice

__all__ = [
    "CACHE_FORMAT_VERSION",
    "CachedImages",
    "Geometry",
    "build_cache",
    "cache_key",
    "decode_rgb_file",
    "preprocess_images",
]

log = logging.getLogger(__name__)

# Bump when the stored layout or the preprocessing code changes what a given config produces.
CACHE_FORMAT_VERSION = 1
CACHE_PREFIX = "breakhis-"
# Temp files older than this are leftovers of a killed build; younger ones may belong to a concurrent run
# (e.g. a Hydra multirun sharing the cache folder) and are left alone.
STALE_TEMP_SECONDS = 600.0
# Images per worker task: enough to batch the stain step, small enough to keep the progress bar live.
CHUNK_SIZE = 8


@dataclass(frozen=True)
class Geometry:
    """How the stain-normalized image becomes a size×size network input.

    resize: the whole image resized to size×size (antialiased).
    center_crop (the paper's code): the central min(H, W) square (460×460 of a 700×460 image), then its central
    size×size; if size exceeds the square's side, the square is resized to size×size instead.
    square: the central min(H, W) square resized to size×size: timm's evaluation view (shorter side resized to
    size, centre crop), which the datamodule's centre crop of input_size then completes.
    `interpolation` (bilinear or bicubic, antialiased): a pretrained model's own (its pretrained_cfg).
    """

    mode: Literal["resize", "center_crop", "square"] = "center_crop"
    size: int = 227
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        require_choice("data.geometry.mode", self.mode, GEOMETRIES)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigError(f"geometry.size must be a positive integer, got {self.size!r}")

    def region(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the original image that the output is made from."""
        if self.mode == "resize":
            return 0, 0, height, width
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        if self.mode == "center_crop" and self.size <= side:
            return top + (side - self.size) // 2, left + (side - self.size) // 2, self.size, self.size
        return top, left, side, side

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Crop/resize uint8 N×3×H×W (no stain step); the cache uses `region` + `finish` instead."""
        top, left, h, w = self.region(images.shape[-2], images.shape[-1])
        return self.finish(images[..., top : top + h, left : left + w])

    def finish(self, region: torch.Tensor) -> torch.Tensor:
        """Resize a region to size×size unless it already is."""
        if region.shape[-2:] == (self.size, self.size):
            return region
        mode = TF.InterpolationMode(self.interpolation)
        if mode == TF.InterpolationMode.BICUBIC:  # bicubic overshoots: clamp back into uint8's range
            return TF.resize(region.float(), [self.size, self.size], mode, antialias=True).round_().clamp_(0, 255).to(region.dtype)
        return TF.resize(region, [self.size, self.size], mode, antialias=True)


@dataclass
class CachedImages:
    """Preprocessed images; row i of `images` belongs to row i of `index`."""

    images: torch.Tensor
    index: pd.DataFrame
    key: str
    path: Path


def _or_identity(normalizer: StainNormalizer | None) -> StainNormalizer:
    """None means no stain normalization (a config with `stain: null`)."""
    return normalizer if normalizer is not None else IdentityNormalizer()


def _normalize_region(images: torch.Tensor, normalizer: StainNormalizer, geometry: Geometry) -> torch.Tensor:
    top, left, h, w = geometry.region(images.shape[-2], images.shape[-1])
    return geometry.finish(normalizer.transform_region(images, top, left, h, w))


def preprocess_images(
    paths: Sequence[str | os.PathLike[str]],
    normalizer: StainNormalizer | None,
    geometry: Geometry,
    num_workers: int = 2,
    progress: bool = True,
    *,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Decode, stain-normalize (statistics of the full image) and crop/resize; uint8 N×3×S×S on CPU.

    Each worker thread handles a chunk of CHUNK_SIZE files end to end (decode, then the stain step batched over
    same-size images). Threads, not DataLoader processes: decode and torch kernels release the GIL, so two
    threads reach ~93 images/s on 2 cores (700×460 → 227², Reinhard) with no process start-up or pickling of
    decoded images; a 2-process DataLoader measured no faster. On CPU torch's intra-op pool is set to one
    thread for the build, so `num_workers` is the number of cores used: intra-op threads on top of the
    workers oversubscribe the cores, and on a machine shared with other jobs OpenMP's spin-waiting made a
    one-worker build with two intra-op threads ~20× slower.
    `device` (e.g. "cuda") runs the stain step there; decoding stays on the CPU.
    """
    normalizer = _or_identity(normalizer)
    paths = [Path(p) for p in paths]
    n = len(paths)
    size = geometry.size
    out = torch.empty((n, 3, size, size), dtype=torch.uint8)
    if n == 0:
        return out
    target = torch.device(device) if device is not None else torch.device("cpu")
    alpha_files: list[Path] = []

    def run_chunk(start: int) -> int:
        indices = range(start, min(start + CHUNK_SIZE, n))
        by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = defaultdict(list)
        for i in indices:
            image, had_alpha = decode_rgb_file(paths[i])
            if had_alpha:
                alpha_files.append(paths[i])  # list.append is atomic under the GIL
            by_shape[tuple(image.shape)].append((i, image))
        for group in by_shape.values():
            rows = [i for i, _ in group]
            batch = torch.stack([img for _, img in group]).to(target, non_blocking=True)
            try:
                result = _normalize_region(batch, normalizer, geometry)
            except DataError:
                raise
            except Exception as exc:  # name the files: a bare kernel error would not say which image
                names = ", ".join(str(paths[i]) for i in rows[:3])
                raise DataError(f"{names}: stain normalization failed ({type(exc).__name__}: {exc})") from exc
            out[rows] = result.cpu()
        return len(indices)

    starts = list(range(0, n, CHUNK_SIZE))
    workers = max(1, int(num_workers))
    bar = tqdm(total=n, desc="preprocess", unit="img", disable=not progress, dynamic_ncols=True)
    previous_threads = torch.get_num_threads()
    try:
        if target.type == "cpu":
            torch.set_num_threads(1)
        if workers == 1:
            for start in starts:
                bar.update(run_chunk(start))
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess") as pool:
                futures = [pool.submit(run_chunk, s) for s in starts]
                try:
                    for fut in as_completed(futures):
                        bar.update(fut.result())  # re-raises the first worker error
                except BaseException:
                    for fut in futures:  # don't start the rest; running chunks finish on exit
                        fut.cancel()
                    raise
    finally:
        torch.set_num_threads(previous_threads)
        bar.close()
    if alpha_files:
        warnings.warn(
            f"{len(alpha_files)} image(s) had an alpha channel, dropped (first: {alpha_files[0]})",
            stacklevel=2,
        )
    return out


def _relative_key(path: Any) -> str:
    return Path(str(path)).as_posix()


def cache_key(
    root: str | os.PathLike[str], rel_paths: Sequence[str], normalizer: StainNormalizer, geometry: Geometry
) -> str:
    """SHA-256 over (sorted relative paths + file sizes, stain fingerprint, geometry, format version)."""
    root = Path(root)
    files = []
    for rel in sorted(rel_paths):
        try:
            files.append([rel, (root / rel).stat().st_size])
        except FileNotFoundError:
            raise DataError(f"{root / rel}: image file not found") from None
    shape = asdict(geometry)
    if shape["interpolation"] == "bilinear":
        del shape["interpolation"]  # the resize every cache had before the key existed: their keys stay valid
    return digest({"format_version": CACHE_FORMAT_VERSION, "files": files, "stain": normalizer.fingerprint(), "geometry": shape})


def digest(payload: Any) -> str:
    """SHA-256 of a JSON payload, keys sorted: what a cache file is named and checked by."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{CACHE_PREFIX}{key[:16]}.pt"


def clean_stale_temps(cache_dir: Path, prefix: str = CACHE_PREFIX) -> None:
    """Remove temporary files of killed writes (`atomic_path`'s .tmp files) older than STALE_TEMP_SECONDS."""
    now = time.time()
    for tmp in cache_dir.glob(f".{prefix}*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_SECONDS:
                tmp.unlink()
                log.info("removed stale cache temp file %s", tmp)
        except FileNotFoundError:
            pass  # a concurrent run renamed or removed it


def _try_load(path: Path, key: str, rel_paths: list[str], size: int) -> torch.Tensor | None:
    """Stored images reordered to `rel_paths`, or None (with a warning) when the file is unusable."""
    if not path.is_file():
        return None
    try:
        blob = load_checkpoint(path)
        if not isinstance(blob, dict) or blob.get("key") != key:
            # Same 16-hex-digit prefix but another key: practically impossible, handled as absent.
            raise ValueError("stored key does not match")
        images, stored = blob["images"], list(blob["paths"])
        if (
            not isinstance(images, torch.Tensor)
            or images.dtype != torch.uint8
            or tuple(images.shape) != (len(stored), 3, size, size)
            or sorted(stored) != sorted(rel_paths)
        ):
            raise ValueError(
                f"unexpected contents (images {getattr(images, 'shape', None)}, {len(stored)} paths)"
            )
    except Exception as exc:  # unpickling errors come in many types; any of them means "rebuild"
        warnings.warn(f"{path}: unusable image cache, rebuilding ({type(exc).__name__}: {exc})", stacklevel=3)
        return None
    if stored == rel_paths:
        return images
    position = {p: i for i, p in enumerate(stored)}
    return images[torch.tensor([position[p] for p in rel_paths])]


def build_cache(
    root: str | os.PathLike[str],
    index: pd.DataFrame,
    normalizer: StainNormalizer | None,
    geometry: Geometry,
    cache_dir: str | os.PathLike[str],
    *,
    num_workers: int = 2,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> CachedImages:
    """Load the cached tensor for this (files, stain, geometry), or build and atomically write it.

    `index` needs a `path` column relative to `root`; row order is kept (a cache built for the same files in
    another order is reused and reordered). The file is written through a temp file renamed on success, so
    an interrupted build never leaves a cache that loads; stale temps are removed by the next build.
    """
    root, cache_dir = Path(root), Path(cache_dir)
    normalizer = _or_identity(normalizer)
    if "path" not in index.columns:
        raise DataError(f"image index for {root} has no 'path' column")
    rel_paths = [_relative_key(p) for p in index["path"]]
    duplicated = index["path"][pd.Series(rel_paths, index=index.index).duplicated()]
    if len(duplicated):
        raise DataError(f"{root / _relative_key(duplicated.iloc[0])}: listed twice in the image index")
    key = cache_key(root, rel_paths, normalizer, geometry)
    path = _cache_file(cache_dir, key)

    images = _try_load(path, key, rel_paths, geometry.size)
    if images is not None:
        log.info("reusing image cache %s (%d images)", path, len(rel_paths))
        return CachedImages(images=images, index=index, key=key, path=path)

    cache_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(cache_dir)
    log.info(
        "building image cache %s (%d images, %s, %s)",
        path,
        len(rel_paths),
        normalizer.fingerprint(),
        geometry,
    )
    started = time.perf_counter()
    images = preprocess_images(
        [root / p for p in rel_paths],
        normalizer,
        geometry,
        num_workers=num_workers,
        progress=progress,
        device=device,
    )
    seconds = time.perf_counter() - started
    blob = {
        "key": key,
        "images": images,
        "paths": rel_paths,
        "index_json": index.to_json(orient="records", default_handler=str),
        "meta": json.dumps(
            {
                "format_version": CACHE_FORMAT_VERSION,
                "stain": normalizer.fingerprint(),
                "geometry": asdict(geometry),
                "root": str(root),
                "build_seconds": round(seconds, 2),
                "torch": torch.__version__,
            },
            sort_keys=True,
        ),
    }
    with atomic_path(path) as tmp:
        torch.save(blob, tmp)
    log.info("wrote %s in %.1f s (%.0f images/s)", path, seconds, len(rel_paths) / max(seconds, 1e-9))
    return CachedImages(images=images, index=index, key=key, path=path)
