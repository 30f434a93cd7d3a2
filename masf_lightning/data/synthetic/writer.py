"""Writing the tree: parameters checked, staged, moved into place whole and recorded; threads render in parallel."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from masf_lightning.choices import SYNTHETIC_MAX_SIZE, SYNTHETIC_MIN_SIDE
from masf_lightning.data.synthetic.dataset import _gradients, _slide, expected_files, render_image
from masf_lightning.data.synthetic.slide import _Slide
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.io import write_json_atomic

MARKER_NAME = ".synthetic_breakhis.json"
_STAGING_PREFIX = ".synthetic_breakhis.partial-"
# Bump whenever the pixels a given seed produces change: an old tree then no longer matches.
_FORMAT_VERSION = 1


def _write_png(path: Path, img: np.ndarray) -> None:
    try:
        from PIL import Image
    except ImportError:  # pillow comes with torchvision; keep a path that needs only torch
        import torch
        from torchvision.io import write_png

        write_png(
            torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), str(path), compression_level=1
        )
        return
    # level 1: noisy microscopy barely compresses better at 6, and encodes twice as fast
    Image.fromarray(img, "RGB").save(path, format="PNG", compress_level=1)


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------
def _params(seed: Any, patients_per_type: Any, images_per_magnification: Any, size: Any) -> dict[str, Any]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ConfigError(f"synthetic size must be (width, height), got {size!r}") from None
    if not (SYNTHETIC_MIN_SIDE <= w <= SYNTHETIC_MAX_SIZE[0] and SYNTHETIC_MIN_SIDE <= h <= SYNTHETIC_MAX_SIZE[1]):
        raise ConfigError(
            f"synthetic size {w}x{h} out of range: width {SYNTHETIC_MIN_SIDE}..{SYNTHETIC_MAX_SIZE[0]}, height {SYNTHETIC_MIN_SIDE}..{SYNTHETIC_MAX_SIZE[1]}"
        )
    for name, v, lo in (
        ("patients_per_type", patients_per_type, 1),
        ("images_per_magnification", images_per_magnification, 1),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo or v > 999:
            raise ConfigError(f"synthetic {name} must be an integer in 1..999, got {v!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"synthetic seed must be a non-negative integer, got {seed!r}")
    return {
        "generator": "masf_lightning.data.synthetic",
        "format_version": _FORMAT_VERSION,
        "seed": int(seed),
        "patients_per_type": int(patients_per_type),
        "images_per_magnification": int(images_per_magnification),
        "size": [w, h],
    }


def _read_json(path: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _same(record: dict[str, Any] | None, params: dict[str, Any]) -> bool:
    return record is not None and all(record.get(k) == v for k, v in params.items())


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "unreadable parameters"
    keys = ("seed", "patients_per_type", "images_per_magnification", "size", "format_version")
    return ", ".join(f"{k}={record.get(k)}" for k in keys)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Delete staging folders left by generators that were killed (never one whose process still runs)."""
    for d in out.glob(_STAGING_PREFIX + "*"):
        try:
            pid = int(d.name[len(_STAGING_PREFIX) :])
        except ValueError:
            continue
        if pid == os.getpid() or not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


def _complete(tree_parent: Path, params: dict[str, Any]) -> bool:
    files = expected_files(
        seed=params["seed"],
        patients_per_type=params["patients_per_type"],
        images_per_magnification=params["images_per_magnification"],
    )
    return all((tree_parent / f[-1]).is_file() for f in files)


def generate_synthetic_breakhis(
    out: str | os.PathLike[str],
    *,
    seed: int = 0,
    patients_per_type: int,
    images_per_magnification: int,
    size: tuple[int, int],
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the synthetic BreaKHis under out/BreaKHis_v1 (once) and return `out`.

    No defaults here: the one default set is conf/data/synthetic.yaml's, which the CLI and train.py both read.

    The tree is built in a staging folder and moved into place whole, then the marker
    out/.synthetic_breakhis.json records the parameters: an interrupted run leaves no half tree, a
    second call with the same parameters returns at once, and different parameters are refused
    rather than mixed with (or written over) what is there. `workers` threads render in parallel
    (default: one per core, up to 8); the output does not depend on it.
    """
    params = _params(seed, patients_per_type, images_per_magnification, size)
    out = Path(out)
    marker = out / MARKER_NAME
    tree = out / "BreaKHis_v1"
    inner = tree / MARKER_NAME  # the same record inside the tree: proves a marker-less tree is ours

    if marker.exists():
        record = _read_json(marker)
        if not _same(record, params):
            raise DataError(
                f"{out} already holds a synthetic BreaKHis made with {_describe(record)}; it differs from the "
                f"requested {_describe(params)}. Choose another folder (data.root=...) for these parameters."
            )
        if tree.is_dir():
            return out
        marker.unlink()  # our marker without its tree (the tree was deleted): make it again
    if tree.exists():
        record = _read_json(inner)
        if record is None:
            raise DataError(
                f"{tree} exists and was not written by the synthetic generator; it is left untouched. "
                f"Choose another folder for the synthetic data, or use data=breakhis data.root={out}."
            )
        if not _same(record, params):
            raise DataError(
                f"{tree} is a synthetic BreaKHis made with {_describe(record)}, not the requested "
                f"{_describe(params)}. Choose another folder (data.root=...) for these parameters."
            )
        if _complete(out, params):
            write_json_atomic(marker, record)
            return out
        shutil.rmtree(tree)  # our own tree (it carries our record) with files missing: rebuild it

    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    staging = out / f"{_STAGING_PREFIX}{os.getpid()}"
    files = expected_files(
        seed=params["seed"],
        patients_per_type=params["patients_per_type"],
        images_per_magnification=params["images_per_magnification"],
    )
    record = {**params, "n_images": len(files)}
    try:
        _write_all(
            staging, files, params, progress, workers if workers is not None else _default_workers(len(files))
        )
        write_json_atomic(staging / "BreaKHis_v1" / MARKER_NAME, record)
        try:
            os.rename(staging / "BreaKHis_v1", tree)
        except OSError:
            # another process finished the same job first; accept its tree if it is the same data
            if not _same(_read_json(inner), params):
                raise DataError(f"{tree} appeared while generating and is not the requested data") from None
        write_json_atomic(marker, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _write_group(
    staging: str, seed: int, size: tuple[int, int], jobs: list[tuple[str, int, int, int, str]]
) -> int:
    """Render and write the images of one patient (a unit of work for a worker process)."""
    slide: _Slide | None = None
    for code, p, mag, i, rel in jobs:
        if slide is None:
            slide = _slide(seed, code, p)
        path = Path(staging) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_png(path, render_image(code, mag, seed=seed, patient=p, index=i, size=size, slide=slide))
    return len(jobs)


def _default_workers(n_images: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8, n_images // 40))


def _write_all(
    staging: Path,
    files: list[tuple[str, int, int, int, Path]],
    params: dict[str, Any],
    progress: bool,
    workers: int,
) -> None:
    from tqdm.auto import tqdm

    seed, size = params["seed"], (params["size"][0], params["size"][1])
    groups: dict[tuple[str, int], list[tuple[str, int, int, int, str]]] = {}
    for code, p, mag, i, rel in files:
        groups.setdefault((code, p), []).append((code, p, mag, i, str(rel)))
    _gradients(seed)  # build the shared lattice once, before any thread reads it
    bar = tqdm(total=len(files), desc="synthetic BreaKHis", unit="img", disable=not progress, leave=False)
    try:
        if workers <= 1:
            for jobs in groups.values():
                bar.update(_write_group(str(staging), seed, size, jobs))
            return
        from concurrent.futures import ThreadPoolExecutor, as_completed

        # threads, not processes: numpy and the PNG encoder release the GIL for the heavy parts, and
        # threads need neither a __main__ guard in the caller (spawn) nor a fork of a threaded process
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synthetic") as pool:
            futures = [pool.submit(_write_group, str(staging), seed, size, jobs) for jobs in groups.values()]
            try:
                for f in as_completed(futures):
                    bar.update(f.result())
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    finally:
        bar.close()
