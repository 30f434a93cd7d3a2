#!/usr/bin/env python
"""Data-path throughput: preprocessing (decode + Reinhard + geometry) and cached-batch delivery, images/s.

    python experiments/bench_data.py                 # 256 synthetic 700×460 PNGs, center_crop 227
    python experiments/bench_data.py --images 400 --workers 2 --json bench_data.json

Also experiments/bench.py's data path (`bench_data_path`): the same two measurements per backbone
geometry, with episodes moved to the device first, so that delivery can be set against what a
training step consumes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from bench_env import sync

from masf_lightning.data.datamodule import MagnificationDataModule
from masf_lightning.data.stain import ReinhardNormalizer
from masf_lightning.data.synthetic import generate_synthetic_breakhis

if TYPE_CHECKING:
    from bench_steps import BackboneSpec


def build(root: Path, cache_dir: Path, workers: int, size: int, batch: int) -> tuple[MagnificationDataModule, float]:
    """The real path: index, split, decode + Reinhard + center crop into the cache (timed)."""
    dm = MagnificationDataModule(
        str(root),
        stain=ReinhardNormalizer(),
        geometry={"mode": "center_crop", "size": size},
        input_size=size,
        split={"protocol": "paper", "seed": 0},
        cache_dir=str(cache_dir),
        batch_size_per_domain=batch,
        num_workers=workers,
        progress=False,
    )
    t = time.perf_counter()
    dm.prepare_data()
    return dm, time.perf_counter() - t


def bench_delivery(dm: MagnificationDataModule, steps: int) -> dict[str, float]:
    """Episodes from the in-RAM cache: sampling, gather, crop/flip/rot90, normalize — what a training step waits on."""
    stream = iter(dm.train_dataloader())
    for _ in range(3):
        dm.on_after_batch_transfer(next(stream), 0)
    t = time.perf_counter()
    n = 0
    for _ in range(steps):
        batch = dm.on_after_batch_transfer(next(stream), 0)
        n += sum(len(y) for _, y in batch["domains"].values())
    dt = time.perf_counter() - t
    return {"images_per_s": n / dt, "ms_per_episode": 1000 * dt / steps}


# -- experiments/bench.py's data path ------------------------------------------------------------
class _EpisodesOn:
    """bench_data.bench_delivery's view of a datamodule whose episodes are first moved to `device` (Lightning's transfer)."""

    def __init__(self, dm: Any, device: torch.device):
        self.dm, self.device = dm, device

    def train_dataloader(self) -> Iterator[dict[str, Any]]:
        for ep in self.dm.train_dataloader():
            ep["domains"] = {d: {k: v.to(self.device) for k, v in parts.items()} for d, parts in ep["domains"].items()}
            yield ep

    def on_after_batch_transfer(self, batch: Any, idx: int) -> Any:
        out = self.dm.on_after_batch_transfer(batch, idx)
        sync(self.device)
        return out


@contextmanager
def coverage_check_off() -> Iterator[None]:
    """A throughput set of ~100 images cannot give every class images in every split, and need not:
    the split's class coverage changes nothing in what preprocessing or delivery costs."""
    import masf_lightning.data.datamodule as datamodule

    check = datamodule.check_split_covers
    datamodule.check_split_covers = lambda *a, **k: None
    try:
        yield
    finally:
        datamodule.check_split_covers = check


def bench_data_path(specs: list[BackboneSpec], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Preprocessing of 700×460 PNGs (the last backbone's geometry: the paper's 227 px when alexnet is in)
    and cached delivery for each backbone."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, coverage_check_off():
        root = generate_synthetic_breakhis(
            Path(tmp) / "syn", patients_per_type=1, images_per_magnification=max(1, args.images // 32), size=(700, 460), progress=False
        )
        for spec in reversed(specs):
            dm, seconds = build(root, Path(tmp) / f"cache-{spec.name}", args.workers, spec.input_size, spec.batch)
            if spec is specs[-1]:
                n = len(dm.index)
                out["preprocessing"] = {
                    "images": n,
                    "size": spec.input_size,
                    "workers": args.workers,
                    "seconds": seconds,
                    "images_per_s": n / seconds,
                    "projected_breakhis_s": 7909 * seconds / n,
                }
            source = dm if device.type == "cpu" else _EpisodesOn(dm, device)
            out[spec.name] = bench_delivery(source, args.delivery_steps)
    return out



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="700×460 synthetic images to preprocess (multiple of 32)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=227)
    ap.add_argument("--batch", type=int, default=24, help="images per domain per episode")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    per_mag = max(1, args.images // 32)
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_synthetic_breakhis(Path(tmp) / "syn", patients_per_type=1, images_per_magnification=per_mag, size=(700, 460), progress=False)
        dm, seconds = build(root, Path(tmp) / "cache", args.workers, args.size, args.batch)
        n = len(dm.index)
        pre = {"images": n, "seconds": seconds, "images_per_s": n / seconds, "projected_breakhis_s": 7909 * seconds / n}
        dlv = bench_delivery(dm, 30)
    print(f"preprocessing  {pre['images_per_s']:8.1f} images/s  ({n} PNGs 700×460 → Reinhard → center_crop {args.size}, {args.workers} workers; 7,909 images ≈ {pre['projected_breakhis_s']:.0f} s)")
    print(f"delivery       {dlv['images_per_s']:8.1f} images/s  (episodes of 3×{args.batch} from the cache: crop+flip+rot90+normalize, {dlv['ms_per_episode']:.1f} ms each)")
    if args.json:
        args.json.write_text(json.dumps({"preprocessing": pre, "delivery": dlv}, indent=2))


if __name__ == "__main__":
    main()
