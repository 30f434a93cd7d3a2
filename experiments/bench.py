#!/usr/bin/env python
"""What a training step costs: MASF (first/second order) relative to DeepAll, data delivery vs consumption,
preprocessing throughput and peak memory, in one process so that the ratios are like-for-like.

    python experiments/bench.py --json bench.json          # CPU: small (48 px, 3×24) and alexnet (227 px, 3×16)
    python experiments/bench.py --quick                    # small only, 3 rounds: a smoke test
    python experiments/bench.py --backbones alexnet --ablations --baseline 1b6fef8   # + what each change gained
    python experiments/bench.py --backbones alexnet --rounds 0 --profile deepall,second_order   # torch.profiler
    python experiments/bench.py --device cuda              # on a GPU (alexnet 3×64)

Variants are interleaved round by round (the order rotates every round) on the same images, and each
figure is the median over rounds of that round's ratio to DeepAll: machine noise that lasts longer than
one round hits both sides of a ratio alike. docs/performance.md holds the measured figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_data lives beside this file

from bench_data import bench_delivery, build  # noqa: E402

from masf_lightning.algorithms import MASF, DeepAll  # noqa: E402
from masf_lightning.algorithms.base import DGModule  # noqa: E402
from masf_lightning.config.hparams import constructor_defaults  # noqa: E402
from masf_lightning.losses import cross_entropy  # noqa: E402
from masf_lightning.models import Backbone, alexnet, small  # noqa: E402

# The Makefile's allocator setting: without it glibc unmaps every >32 MB buffer on free and page-faults
# it back in on the next step (AlexNet's fc6 gradient alone is 151 MB).
TUNED_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=34359738368"
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
) -> Callable[[], None]:
    """The optimization part of each training_step (no logging, no NaN guard): loss, one backward, the step(s).

    MASF runs its own meta_objective → meta_gradients → apply_gradients; `phase` wraps the three parts
    (the profiler labels them with it).
    """
    opt = module.configure_optimizers()
    y_all = torch.cat([y for _, y in batches.values()])
    current = isinstance(module, MASF) and hasattr(module, "apply_gradients")

    def step() -> None:
        if current:
            with phase("objective"):
                out = module.meta_objective(batches, META_TRAIN, META_TEST)
            with phase("backward"):
                grads = module.meta_gradients(out)
            with phase("optimizer_step"):
                module.apply_gradients(grads, opt)
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_variants(args: argparse.Namespace) -> list[Variant]:
    fmt = "channels_last" if args.memory_format in ("channels_last", "both") else "contiguous"
    variants = [Variant(m, m, fmt) for m in METHODS]  # MASF in its default (separate) layout
    variants += [Variant(f"joint.{m}", m, fmt, layout="joint") for m in METHODS[1:]]
    if args.memory_format == "both":
        variants += [Variant(f"contiguous.{m}", m, "contiguous", reference="contiguous.deepall") for m in METHODS]
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
    steps = {v.key: make_step(make_module(spec, v, device), v.method, batches[v.memory_format]) for v in variants}

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


# -- where the time goes --------------------------------------------------------------------------
def profile_step(spec: BackboneSpec, variant: Variant, device: torch.device, top: int) -> dict[str, Any]:
    """torch.profiler over one step (after two unprofiled ones): self time per op, per phase, per autograd node."""
    from torch.profiler import ProfilerActivity, profile, record_function

    phases = ("objective", "backward", "optimizer_step")
    module = make_module(spec, variant, device)
    step = make_step(module, variant.method, make_batches(spec, device, variant.memory_format), record_function)
    for _ in range(2):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        step()
        sync(device)

    # Attribute each op's self time to its phase and to the autograd node that ran it. In MASF's
    # `backward` phase ConvolutionBackwardBackward0 is the double backward of conv (Eq. 11's second-order
    # term) and ConvolutionBackward0 conv's ordinary backward (of both forwards); ConvolutionBackward0 in
    # the `objective` phase is the inner gradient ∇L_cr (Eq. 9), taken with create_graph.
    by_op: dict[tuple[str, str], float] = defaultdict(float)
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    by_shape: dict[tuple[str, str], float] = defaultdict(float)  # e.g. which matmuls are fc6's
    for ev in prof.events():
        if ev.name in phases or ev.name.startswith("autograd::engine::evaluate_function"):
            continue  # containers: their time is their children's
        phase, node, parent = "other", "forward", ev.cpu_parent
        while parent is not None:
            if parent.name.startswith("autograd::engine::evaluate_function: ") and node == "forward":
                node = parent.name.split(": ", 1)[1]
            if parent.name in phases:
                phase = parent.name
            parent = parent.cpu_parent
        by_op[(phase, ev.name)] += ev.self_cpu_time_total / 1000  # ms
        by_node[(phase, node)] += ev.self_cpu_time_total / 1000
        by_shape[(ev.name, str([list(s) for s in ev.input_shapes if s]))] += ev.self_cpu_time_total / 1000
    return {
        "backbone": spec.name,
        "method": variant.key,
        "total_self_ms": sum(by_op.values()),
        "phases_ms": {p: sum(v for (ph, _), v in by_op.items() if ph == p) for p in (*phases, "other")},
        "top_ops": [{"phase": p, "op": o, "ms": v} for (p, o), v in sorted(by_op.items(), key=lambda kv: -kv[1])[:top]],
        "top_autograd_nodes": [{"phase": p, "node": n, "ms": v} for (p, n), v in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]],
        "autograd_nodes": [{"phase": p, "node": n, "ms": v} for (p, n), v in sorted(by_node.items(), key=lambda kv: -kv[1])],
        "ops_by_shape": [{"op": o, "shapes": sh, "ms": v} for (o, sh), v in sorted(by_shape.items(), key=lambda kv: -kv[1])],
    }


def print_profile(prof: dict[str, Any]) -> None:
    print(f"\nprofile: one {prof['method']} {prof['backbone']} step, {prof['total_self_ms']:.0f} ms self time: "
          + ", ".join(f"{k} {v:.0f}" for k, v in prof["phases_ms"].items() if v))
    print(f"  {'phase':15} {'autograd node (forward = not in a backward)':45} {'ms':>8}")
    for e in prof["top_autograd_nodes"]:
        print(f"  {e['phase']:15} {e['node']:45} {e['ms']:8.1f}")
    print(f"  {'phase':15} {'op':45} {'ms':>8}")
    for e in prof["top_ops"]:
        print(f"  {e['phase']:15} {e['op']:45} {e['ms']:8.1f}")
    print(f"  {'op':30} {'input shapes':60} {'ms':>8}")
    for e in prof["ops_by_shape"][: len(prof["top_ops"])]:
        print(f"  {e['op']:30} {e['shapes'][:60]:60} {e['ms']:8.1f}")


# -- data path ----------------------------------------------------------------------------------
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
    from masf_lightning.data.synthetic import generate_synthetic_breakhis

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


# -- report -------------------------------------------------------------------------------------
def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, int | float):
            out[f"{prefix}{k}"] = v
    return out


def step_entries(result: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(variant key, its figures) for every timed variant of one backbone, nested ones included."""
    for k, v in result.items():
        if isinstance(v, dict) and "ms" in v:
            yield prefix + k, v
        elif isinstance(v, dict):
            yield from step_entries(v, f"{prefix}{k}.")


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\n{m['date']}  torch {m['torch']}  {m['device_name']} ({m['device']}, {m['threads']} threads)  "
          f"memory_format={report['memory_format']}  GLIBC_TUNABLES={m['glibc_tunables'] or '-'}")
    print(f"{'backbone':9} {'batch':>5}  {'variant':34} {'ms/step (min–max)':>24} {'× DeepAll (min–max)':>21} {'faults/step':>12}")
    for name in ("small", "alexnet"):
        if name not in report:
            continue
        r = report[name]
        for key, e in step_entries(r):
            ms = f"{e['ms']:.0f} ({e['ms_min']:.0f}–{e['ms_max']:.0f})" if e["ms"] >= 100 else f"{e['ms']:.1f} ({e['ms_min']:.1f}–{e['ms_max']:.1f})"
            ratio = f"{e['ratio']:.2f} ({e['ratio_min']:.2f}–{e['ratio_max']:.2f})" if "ratio" in e else ""
            print(f"{name:9} {'3×' + str(r['batch_per_domain']):>5}  {key:34} {ms:>24} {ratio:>21} {e['page_faults_per_step']:12.0f}")
    d = report.get("delivery")
    if d:
        print(f"delivery  {d['images_per_s']:8.0f} images/s ({d['backbone']} episodes from the cache) vs "
              f"{d['consumption_images_per_s']:.0f} images/s consumed by DeepAll → ratio {d['ratio']:.1f}")
        p = report["preprocessing"]
        print(f"preprocessing {p['images_per_s']:6.1f} images/s ({p['images']} PNGs 700×460 → {p['size']} px, {p['workers']} workers)"
              f" → 7,909 BreaKHis images ≈ {p['projected_breakhis_s']:.0f} s")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB")


def ensure_malloc(mode: str) -> None:
    """glibc reads GLIBC_TUNABLES at start-up only: re-execute this script with the requested setting."""
    want = {"tuned": TUNED_MALLOC, "default": None}.get(mode, os.environ.get("GLIBC_TUNABLES"))
    if os.environ.get("GLIBC_TUNABLES") == want or not sys.platform.startswith("linux"):
        return
    env = dict(os.environ)
    if want is None:
        env.pop("GLIBC_TUNABLES", None)
    else:
        env["GLIBC_TUNABLES"] = want
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backbones", default="small,alexnet", help="comma-separated: small, alexnet")
    ap.add_argument("--batch", type=int, default=None, help="alexnet images per domain (default 16 on CPU, 64 on CUDA)")
    ap.add_argument("--small-batch", type=int, default=24, help="small images per domain (conf/data: 24)")
    ap.add_argument("--rounds", type=int, default=7, help="measured rounds (0: only --profile)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured rounds first")
    ap.add_argument("--min-round-s", type=float, default=0.5, help="repeat steps within a round up to this long")
    ap.add_argument("--memory-format", choices=["channels_last", "contiguous", "both"], default="channels_last",
                    help="for every variant's weights and images alike; both = channels_last + contiguous variants")
    ap.add_argument("--malloc", choices=["tuned", "default", "inherit"], default="tuned",
                    help="tuned = the Makefile's GLIBC_TUNABLES, default = glibc's, inherit = as launched")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--images", type=int, default=96, help="700×460 PNGs to preprocess (multiple of 32)")
    ap.add_argument("--workers", type=int, default=2, help="preprocessing workers")
    ap.add_argument("--delivery-steps", type=int, default=30)
    ap.add_argument("--no-data", action="store_true", help="skip preprocessing and delivery")
    ap.add_argument("--profile", default="", help="comma-separated variants to profile one step of, on the last backbone "
                    "(deepall, first_order, second_order, second_order_autograd_conv with --ablations, …)")
    ap.add_argument("--ablations", action="store_true",
                    help="+ second order with autograd's own conv double backward (MASF.conv_double_backward_by_convs=False)")
    ap.add_argument("--compile", action="store_true", help="+ DeepAll with torch.compile(featurizer)")
    ap.add_argument("--baseline", default=None, metavar="REV", help="+ MASF as masf.py was at git revision REV")
    ap.add_argument("--quick", action="store_true", help="small only, 3 rounds, 1 warm-up")
    ap.add_argument("--verbose", action="store_true", help="print every round")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ensure_malloc(args.malloc)

    device = torch.device(args.device)
    if args.batch is None:
        args.batch = 64 if device.type == "cuda" else 16
    if args.quick:
        args.backbones, args.rounds, args.warmup, args.images, args.min_round_s = "small", 3, 1, 96, 0.2
    if args.threads:
        torch.set_num_threads(args.threads)
    all_specs = backbone_specs(args)
    specs = [all_specs[b.strip()] for b in args.backbones.split(",") if b.strip()]
    variants = make_variants(args)

    report: dict[str, Any] = {"machine": machine(device), "memory_format": args.memory_format}
    for spec in specs if args.rounds > 0 else []:
        print(f"{spec.name}: 3×{spec.batch} images of {spec.input_size} px, {len(variants)} variants, "
              f"{args.rounds} rounds after {args.warmup} warm-up …", flush=True)
        report[spec.name] = bench_steps(spec, variants, args, device)

    if not args.no_data and args.rounds > 0:
        print("data path: preprocessing + delivery …", flush=True)
        data = bench_data_path(specs, args, device)
        report["preprocessing"] = data["preprocessing"]
        main_spec = specs[-1]  # the paper's geometry when alexnet is benchmarked
        consumption = report[main_spec.name]["deepall"]["images_per_s"]  # the fastest consumer
        report["delivery"] = {
            "backbone": main_spec.name,
            "images_per_s": data[main_spec.name]["images_per_s"],
            "ms_per_episode": data[main_spec.name]["ms_per_episode"],
            "consumption_images_per_s": consumption,
            "ratio": data[main_spec.name]["images_per_s"] / consumption,
            "per_backbone": {
                s.name: {
                    "images_per_s": data[s.name]["images_per_s"],
                    **{f"ratio_{m}": data[s.name]["images_per_s"] / report[s.name][m]["images_per_s"] for m in METHODS},
                }
                for s in specs
            },
        }

    by_key = {v.key: v for v in variants}
    for key in filter(None, args.profile.split(",")):
        print(f"profiling one {key} {specs[-1].name} step …", flush=True)
        prof = profile_step(specs[-1], by_key[key], device, top=20)
        print_profile(prof)
        report.setdefault("profile", {})[key] = prof

    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report["peak_rss_mb"] = self_kb / 1024  # Linux reports kilobytes
    report["figures"] = {k: v for k, v in flatten(report).items() if not k.startswith(("profile.", "machine."))}
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
