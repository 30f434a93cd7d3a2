"""The training steps being timed: DeepAll against MASF (first and second order), built as
`python train.py method=…` builds them, on one fixed episode, interleaved round by round.

What a step costs is the question experiments/bench.py answers; this module builds the variants
(memory format, optimizer layout, fused Adam, an old revision's MASF, torch.compile), times them in
rotating rounds and reports each as the median of its per-round ratio to DeepAll, so that machine
noise longer than a round hits both sides of a ratio alike. Page faults per step are counted beside
the times: the allocator's cost, which load does not blur.
"""

from __future__ import annotations

import argparse
import inspect
import math
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bench_env import sync

from masf_lightning.algorithms import MASF, DeepAll
from masf_lightning.algorithms.base import DGModule
from masf_lightning.config.hparams import constructor_defaults
from masf_lightning.losses import cross_entropy
from masf_lightning.models import Backbone, alexnet, small

NUM_CLASSES = 8  # tumor_type, the paper's Table 1 task
SOURCES = ["40x", "100x", "200x"]  # target 400x, as `python train.py`
META_TRAIN, META_TEST = ["40x", "100x"], ["200x"]
METHODS = ("deepall", "first_order", "second_order")


@dataclass(frozen=True)
class BackboneSpec:
    """A backbone as its config builds it, with the input side and per-domain batch that go with it."""

    name: str
    make: Callable[[], Backbone]
    input_size: int
    batch: int


def backbone_specs(args: argparse.Namespace) -> dict[str, BackboneSpec]:
    return {
        # conf/backbone/small.yaml + conf/data/synthetic.yaml: the default `python train.py` job.
        "small": BackboneSpec("small", lambda: small(width=16, feature_dim=128, dropout=0.1), 48, args.small_batch),
        # conf/backbone/alexnet.yaml without ImageNet weights (none offline; the cost is the same).
        "alexnet": BackboneSpec("alexnet", lambda: alexnet(weights=None), 227, args.batch),
    }


# -- the steps being compared -------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One timed configuration; its ratio is taken to the DeepAll variant with the same memory format."""

    key: str  # where it lands in the report, dotted: "second_order", "contiguous.deepall", "baseline.first_order"
    method: str  # deepall | first_order | second_order
    memory_format: str = "channels_last"
    masf_class: type[MASF] = MASF  # another implementation of MASF (--baseline REV)
    conv_by_convs: bool = True  # MASF.conv_double_backward_by_convs
    reference: str = "deepall"  # the key of the DeepAll variant its ratio is taken to
    compiled: bool = False  # torch.compile(featurizer) (--compile; DeepAll only: compiled graphs cannot double-backward)
    layout: str = "separate"  # MASF's optimizer layout: separate (three Adams, the default) | joint (Eq. 11 literal)
    fused: bool = True  # fused Adam (the default) or torch's foreach Adam (--ablations)
    bf16: bool = False  # under bf16 autocast, as trainer.precision=bf16-mixed runs it (--precision bf16|both)


def memory_format_of(name: str) -> torch.memory_format:
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def load_masf_at(rev: str) -> type[MASF]:
    """MASF as masf.py was at git revision `rev`, imported beside today's (for --baseline)."""
    import subprocess
    import types

    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(
        ["git", "show", f"{rev}:masf_lightning/algorithms/masf.py"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(f"masf_at_{rev}")
    module.__file__ = f"{rev}:masf_lightning/algorithms/masf.py"
    sys.modules[module.__name__] = module  # dataclasses and pickling look their module up
    exec(compile(src, module.__file__, "exec"), module.__dict__)  # noqa: S102 - our own file, at a revision
    return module.MASF


def make_module(spec: BackboneSpec, variant: Variant, device: torch.device) -> DGModule:
    """The module `python train.py method=…` builds (conf/method/*.yaml values), with the same initial weights."""
    torch.manual_seed(0)
    cls = DeepAll if variant.method == "deepall" else variant.masf_class
    # AlexNet's registry defaults (an old revision's MASF takes fewer keys and has its own defaults)
    hp = {**constructor_defaults(cls, "alexnet"), "lr": 1e-5, "fused_adam": variant.fused}
    if cls is not DeepAll:
        hp.update(inner_lr=1e-5, metric_lr=1e-5, margin=10.0, first_order=variant.method == "first_order", grad_norm_every=0,
                  optimizers=variant.layout, embedder={"hidden_dim": 1024, "embedding_dim": 256, "final_activation": True})  # fmt: skip
    takes = {p for k in cls.__mro__ if "__init__" in vars(k) for p in inspect.signature(k.__init__).parameters}
    module: DGModule = cls(backbone=spec.make(), num_classes=NUM_CLASSES, **{k: v for k, v in hp.items() if k in takes})
    if cls is not DeepAll:
        module.conv_double_backward_by_convs = variant.conv_by_convs
    if variant.compiled:
        module.featurizer = torch.compile(module.featurizer)
    return module.to(device=device, memory_format=memory_format_of(variant.memory_format)).train()


def make_batches(spec: BackboneSpec, device: torch.device, memory_format: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One fixed episode of normalized-looking images, the same for every variant."""
    g = torch.Generator().manual_seed(1)
    out = {}
    for d in SOURCES:
        x = torch.randn(spec.batch, 3, spec.input_size, spec.input_size, generator=g)
        y = torch.randint(NUM_CLASSES, (spec.batch,), generator=g)
        out[d] = (x.to(device).contiguous(memory_format=memory_format_of(memory_format)), y.to(device))
    return out


def make_step(
    module: DGModule,
    method: str,
    batches: dict[str, tuple[torch.Tensor, torch.Tensor]],
    phase: Callable[[str], AbstractContextManager[Any]] = lambda name: nullcontext(),
    autocast: bool = False,
) -> Callable[[], None]:
    """The optimization part of each training_step (no logging, no NaN guard): loss, one backward, the step(s).

    MASF runs its own meta_objective → meta_gradients → optimizer_steps; `phase` wraps the three parts
    (the profiler labels them with it).
    """
    opt = module.configure_optimizers()
    module.optimizers = lambda: opt  # type: ignore[method-assign]  # what Lightning hands DGModule.apply
    y_all = torch.cat([y for _, y in batches.values()])
    current = isinstance(module, MASF) and hasattr(module, "optimizer_steps")

    def step() -> None:
        with torch.autocast(module.device.type, dtype=torch.bfloat16, enabled=autocast):
            run()

    def run() -> None:
        if current:
            with phase("objective"):
                out = module.meta_objective(batches, META_TRAIN, META_TEST)
            with phase("backward"):
                grads = module.meta_gradients(out)
            with phase("optimizer_step"):
                module.apply(module.optimizer_steps(grads))
            return
        with phase("objective"):
            if method == "deepall":
                # DeepAll.training_step concatenates the domains each step; so do we (it is part of its cost).
                loss = cross_entropy(module(torch.cat([x for x, _ in batches.values()])), y_all)
            else:  # an old revision (--baseline): its objective's gradient is the whole update
                loss = module.meta_objective(batches, META_TRAIN, META_TEST)["total"]
        opt.zero_grad(set_to_none=True)
        with phase("backward"):
            loss.backward()
        with phase("optimizer_step"):
            opt.step()

    return step


def make_variants(args: argparse.Namespace) -> list[Variant]:
    fmt = "channels_last" if args.memory_format in ("channels_last", "both") else "contiguous"
    variants = [Variant(m, m, fmt) for m in METHODS]  # MASF in its default (separate) layout
    variants += [Variant(f"joint.{m}", m, fmt, layout="joint") for m in METHODS[1:]]
    if args.memory_format == "both":
        variants += [Variant(f"contiguous.{m}", m, "contiguous", reference="contiguous.deepall") for m in METHODS]
    if args.precision in ("bf16", "both"):
        variants += [Variant(f"bf16.{m}", m, fmt, bf16=True, reference="bf16.deepall") for m in METHODS]
    if args.ablations:
        variants.append(Variant("second_order_autograd_conv", "second_order", fmt, conv_by_convs=False))
        variants += [Variant(f"foreach.{m}", m, fmt, fused=False, reference="foreach.deepall") for m in METHODS]
    if args.compile:
        variants.append(Variant("compiled.deepall", "deepall", fmt, compiled=True))
    if args.baseline:
        cls = load_masf_at(args.baseline)
        variants += [Variant(f"baseline.{m}", m, fmt, masf_class=cls) for m in METHODS[1:]]
    return variants


def bench_steps(spec: BackboneSpec, variants: list[Variant], args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Rounds of interleaved steps; per round each variant's ms/step and its ratio to DeepAll's."""
    batches = {f: make_batches(spec, device, f) for f in {v.memory_format for v in variants}}
    steps = {v.key: make_step(make_module(spec, v, device), v.method, batches[v.memory_format], autocast=v.bf16) for v in variants}

    faults: dict[str, list[float]] = defaultdict(list)  # minor page faults per step: the allocator's cost, load-proof

    def timed(key: str, n: int) -> float:
        sync(device)
        f0, t = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        for _ in range(n):
            steps[key]()
        sync(device)
        dt_s = (time.perf_counter() - t) / n
        faults[key].append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n)
        return dt_s

    # Warm-up (allocator, oneDNN primitive caches, lazy inits), then size a round so that the cheapest
    # variant runs ≥ --min-round-s: small-backbone steps last milliseconds, timer jitter would dominate.
    for _ in range(args.warmup):
        for key in steps:
            timed(key, 1)
    n = max(1, math.ceil(args.min_round_s / timed("deepall", 1)))

    keys = list(steps)
    ms: dict[str, list[float]] = defaultdict(list)
    for r in range(args.rounds):
        # Rotate the order so that no variant always runs right after the same one.
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
            ms[key].append(1000 * timed(key, n))
        if args.verbose:
            print(f"  {spec.name} round {r}: " + "  ".join(f"{k} {ms[k][-1]:.1f}" for k in keys) + " ms", flush=True)

    images = len(SOURCES) * spec.batch
    result: dict[str, Any] = {"batch_per_domain": spec.batch, "input_size": spec.input_size, "steps_per_round": n}
    for v in variants:
        t = ms[v.key]
        entry = {
            "ms": statistics.median(t),
            "ms_min": min(t),
            "ms_max": max(t),
            "images_per_s": 1000 * images / statistics.median(t),
            "page_faults_per_step": statistics.median(faults[v.key][-args.rounds :]),
        }
        if v.method != "deepall":
            ratios = [a / b for a, b in zip(t, ms[v.reference], strict=True)]
            entry.update(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
        if v.key != v.method:  # another format, the old code, an ablation: its time relative to ours
            ratios = [a / b for a, b in zip(t, ms[v.method], strict=True)]
            entry.update(vs_primary=statistics.median(ratios))
        node = result
        *path, leaf = v.key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = entry
    if args.baseline:
        result["baseline"]["rev"] = args.baseline
    return result
