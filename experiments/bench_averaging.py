"""What weight averaging adds to a training step (issue 29's budget: ≤ 5 %): DeepAll's step, the cheapest one and
so the worst case for the ratio, alone and followed by the SWAD or the EMA callback's per-step update (one fused
in-place add or lerp per trained parameter), interleaved round by round, median of the per-round ratios."""

from __future__ import annotations

import argparse
import math
import statistics
import time
from types import SimpleNamespace
from typing import Any

import torch
from bench_env import sync
from bench_steps import BackboneSpec, Variant, make_batches, make_module, make_step

from masf_lightning.averaging import EMA, SWAD

KINDS = ("plain", "swad", "ema")


def bench_averaging(spec: BackboneSpec, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    variant = Variant("deepall", "deepall")
    batches = make_batches(spec, device, variant.memory_format)
    trainer = SimpleNamespace(global_step=0, sanity_checking=False, callback_metrics={})
    steps, updates = {}, {}
    for kind in KINDS:
        module = make_module(spec, variant, device)
        step = make_step(module, "deepall", batches)
        callback = {"plain": None, "swad": SWAD(3, 6, 0.3, bn_batches=0), "ema": EMA(0.999, bn_batches=0)}[kind]
        if callback is not None:
            callback.on_train_start(trainer, module)

        def run(step: Any = step, callback: Any = callback, module: torch.nn.Module = module) -> None:
            step()
            if callback is not None:
                callback.on_train_batch_end(trainer, module, None, None, 0)

        steps[kind] = run
        if callback is not None:
            updates[kind] = lambda callback=callback, module=module: callback.on_train_batch_end(trainer, module, None, None, 0)

    def timed(kind: str, n: int) -> float:
        sync(device)
        t = time.perf_counter()
        for _ in range(n):
            steps[kind]()
        sync(device)
        return (time.perf_counter() - t) / n

    for _ in range(args.warmup):
        for kind in KINDS:
            timed(kind, 1)
    n = max(1, math.ceil(args.min_round_s / timed("plain", 1)))
    ms: dict[str, list[float]] = {k: [] for k in KINDS}
    for r in range(args.rounds):
        for kind in KINDS[r % 3 :] + KINDS[: r % 3]:
            ms[kind].append(1000 * timed(kind, n))
    out: dict[str, Any] = {"plain_ms": statistics.median(ms["plain"]), "steps_per_round": n}
    for kind in KINDS[1:]:
        ratios = [a / b for a, b in zip(ms[kind], ms["plain"], strict=True)]
        # the update alone, many times: load blurs a step-vs-step ratio far more than this small a difference
        alone = []
        for _ in range(args.rounds):
            sync(device)
            t = time.perf_counter()
            for _ in range(n):
                updates[kind]()
            sync(device)
            alone.append(1000 * (time.perf_counter() - t) / n)
        share = statistics.median(alone) / statistics.median(ms["plain"])
        out[kind] = {"ms": statistics.median(ms[kind]), "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "update_ms": statistics.median(alone), "update_share": share}  # fmt: skip
    return out


def print_averaging(report: dict[str, Any]) -> None:
    for name, r in report.items():
        for kind in KINDS[1:]:
            e = r[kind]
            print(f"averaging {name:8} DeepAll step {r['plain_ms']:.1f} ms; {kind}: the update alone {e['update_ms']:.2f} ms = "
                  f"+{100 * e['update_share']:.2f} % of a step (budget ≤ 5 %); step + update × {e['ratio']:.3f} "
                  f"({e['ratio_min']:.3f}–{e['ratio_max']:.3f} over rounds)")
