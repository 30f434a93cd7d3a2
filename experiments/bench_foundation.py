#!/usr/bin/env python
"""A foundation model end to end against the offline feature mode: the same timm backbone, the same method, one
training step each, side by side.

    python experiments/bench_foundation.py                          # vit_tiny_patch16_224, DeepAll and MASF, CPU
    python experiments/bench_foundation.py --fm-model vit_small_patch16_224 --json fm.json
    python experiments/bench.py --foundation-only                   # the same, as part of `make bench`'s report

End to end (`backbone.trainable=all`): a step forwards and backwards the 3 × B images (224 px) through the ViT and the
adapter. Frozen (`backbone.trainable=none`): the step reads the cached features and trains the adapter and heads.
Random weights (the cost does not depend on the values). Rounds interleave the two, each frozen round repeated to
`--min-round-s`; every figure is a median over rounds. The run projection adds what the frozen mode pays once: the
features of every image (`--fm-images`, the synthetic set's 1,536), then `--fm-steps` steps per run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_steps import NUM_CLASSES, SOURCES, make_step  # noqa: E402

from masf_lightning.algorithms import MASF, DeepAll  # noqa: E402
from masf_lightning.config.hparams import constructor_defaults  # noqa: E402
from masf_lightning.models.foundation import BUILDER, foundation  # noqa: E402

METHODS = {"deepall": DeepAll, "masf": MASF}  # MASF as `python train.py` runs it: second order, three Adams


def _module(cls: type, trainable: str, name: str) -> Any:
    torch.manual_seed(0)
    backbone = foundation(name, weights=None, trainable=trainable)
    extra = {"embedder": {"hidden_dim": 1024, "embedding_dim": 256, "final_activation": True}, "grad_norm_every": 0} if cls is MASF else {}
    return cls(backbone=backbone, num_classes=NUM_CLASSES, **{**constructor_defaults(cls, BUILDER), **extra}).train(), backbone


def run(args: argparse.Namespace) -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    out: dict[str, Any] = {"model": args.fm_model, "batch_per_domain": args.fm_batch, "threads": torch.get_num_threads()}
    for method, cls in METHODS.items():
        e2e, _ = _module(cls, "all", args.fm_model)
        frozen, backbone = _module(cls, "none", args.fm_model)
        size = backbone.preprocessing.input_size
        images = {d: (torch.randn(args.fm_batch, 3, size, size, generator=g), torch.randint(NUM_CLASSES, (args.fm_batch,), generator=g)) for d in SOURCES}
        with torch.no_grad():
            started = time.perf_counter()
            features = {d: (backbone.encoder(x), y) for d, (x, y) in images.items()}  # what the feature cache holds
            extract_ms = 1000 * (time.perf_counter() - started) / (len(SOURCES) * args.fm_batch)
        steps = {"end_to_end": make_step(e2e, method, images), "frozen": make_step(frozen, method, features)}
        for step in steps.values():
            step()  # warm-up
        started = time.perf_counter()
        steps["frozen"]()
        n = max(1, int(args.min_round_s / max(time.perf_counter() - started, 1e-6)))
        ms: dict[str, list[float]] = {"end_to_end": [], "frozen": []}
        for r in range(args.fm_rounds):
            for key in (("end_to_end", "frozen") if r % 2 == 0 else ("frozen", "end_to_end")):
                reps = 1 if key == "end_to_end" else n
                started = time.perf_counter()
                for _ in range(reps):
                    steps[key]()
                ms[key].append(1000 * (time.perf_counter() - started) / reps)
        ratios = [a / b for a, b in zip(ms["end_to_end"], ms["frozen"], strict=True)]
        e2e_ms, frozen_ms = statistics.median(ms["end_to_end"]), statistics.median(ms["frozen"])
        e2e_run = args.fm_steps * e2e_ms / 1000
        first_run = (args.fm_images * extract_ms + args.fm_steps * frozen_ms) / 1000
        out[method] = {
            "end_to_end_ms": e2e_ms, "frozen_ms": frozen_ms, "step_ratio": statistics.median(ratios),
            "step_ratio_min": min(ratios), "step_ratio_max": max(ratios), "extract_ms_per_image": extract_ms,
            "run_end_to_end_s": e2e_run, "run_frozen_first_s": first_run, "run_frozen_cached_s": args.fm_steps * frozen_ms / 1000,
            "run_ratio_first": e2e_run / first_run, "run_ratio_cached": e2e_run / (args.fm_steps * frozen_ms / 1000),
        }  # fmt: skip
    return out


def print_report(r: dict[str, Any], steps: int, images: int) -> None:
    if not r:
        return
    print(f"\nfoundation model {r['model']} (random weights), 3×{r['batch_per_domain']} images, {r['threads']} threads: end to end against frozen features")
    for method in METHODS:
        e = r[method]
        print(f"  {method:8} step {e['end_to_end_ms']:8.0f} ms end to end, {e['frozen_ms']:6.2f} ms frozen → {e['step_ratio']:.0f}× "
              f"({e['step_ratio_min']:.0f}–{e['step_ratio_max']:.0f}); {steps}-step run {e['run_end_to_end_s']:.0f} s against "
              f"{e['run_frozen_first_s']:.0f} s with {images} images' features ({e['extract_ms_per_image']:.0f} ms each) → "
              f"{e['run_ratio_first']:.0f}×, {e['run_frozen_cached_s']:.1f} s once cached → {e['run_ratio_cached']:.0f}×")  # fmt: skip


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--fm-model", default="vit_tiny_patch16_224", help="timm model benchmarked end to end and frozen")
    ap.add_argument("--fm-batch", type=int, default=24, help="images per source magnification (conf/data: 24)")
    ap.add_argument("--fm-rounds", type=int, default=3, help="interleaved rounds (an end-to-end step each)")
    ap.add_argument("--fm-steps", type=int, default=800, help="steps of the projected run (`python train.py`: 800)")
    ap.add_argument("--fm-images", type=int, default=1536, help="images whose features a first frozen run computes (synthetic set)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--min-round-s", type=float, default=0.5, help="repeat frozen steps within a round up to this long")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    report = run(args)
    print_report(report, args.fm_steps, args.fm_images)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
