#!/usr/bin/env python
"""What a training step costs: MASF (first/second order) relative to DeepAll, data delivery vs consumption,
preprocessing throughput and peak memory, in one process so that the ratios are like-for-like.

    python experiments/bench.py --json bench.json          # CPU: small (48 px, 3×24) and alexnet (227 px, 3×16); + averaging's cost
    python experiments/bench.py --quick                    # small only, 3 rounds: a smoke test
    python experiments/bench.py --backbones alexnet --ablations --baseline 1b6fef8   # + what each change gained
    python experiments/bench.py --backbones alexnet --rounds 0 --profile deepall,second_order   # torch.profiler
    python experiments/bench.py --device cuda              # on a GPU (alexnet 3×64)
    python experiments/bench.py --search-only              # only embedding throughput and archive search (bench_search.py)
    python experiments/bench.py --foundation-only          # only a timm ViT end to end against frozen features (bench_foundation.py)

Variants are interleaved round by round (the order rotates every round) on the same images, and each
figure is the median over rounds of that round's ratio to DeepAll: machine noise that lasts longer than
one round hits both sides of a ratio alike. docs/performance.md holds the measured figures.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

# This file: the CLI and the report. The measurements live beside it (so their folder goes on the path):
# bench_steps (the timed training steps), bench_profile (torch.profiler over one step), bench_data
# (preprocessing and batch delivery), bench_env (the machine, the allocator setting, device sync).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_averaging import bench_averaging, print_averaging  # noqa: E402
from bench_data import bench_data_path  # noqa: E402
from bench_env import ensure_malloc, machine  # noqa: E402
from bench_foundation import add_arguments as add_foundation_arguments  # noqa: E402
from bench_foundation import print_report as print_foundation_report  # noqa: E402
from bench_foundation import run as bench_foundation  # noqa: E402
from bench_main_job import bench_main_job, print_main_job  # noqa: E402
from bench_manifest import bench_manifest  # noqa: E402
from bench_profile import print_profile, profile_step  # noqa: E402
from bench_search import print_search_report  # noqa: E402
from bench_search import run as bench_use  # noqa: E402
from bench_steps import METHODS, backbone_specs, bench_steps, make_variants  # noqa: E402


# -- report -------------------------------------------------------------------------------------
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
          f"memory_format={report['memory_format']}  malloc={m['malloc']}")
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
                    help="tuned = glibc keeps freed memory, as train.py sets it (masf_lightning/memory.py); default = glibc's; inherit = as launched")
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
    ap.add_argument("--precision", choices=["32", "bf16", "both"], default="32", help="bf16/both: + every method under bf16 autocast")
    ap.add_argument("--baseline", default=None, metavar="REV", help="+ MASF as masf.py was at git revision REV")
    ap.add_argument("--search-only", action="store_true", help="only embedding throughput and search (experiments/bench_search.py)")
    ap.add_argument("--no-search", action="store_true", help="skip embedding throughput and search")
    ap.add_argument("--embed-images", type=int, default=128, help="700×460 PNGs to embed per backbone")
    ap.add_argument("--embed-batch", type=int, default=64)
    ap.add_argument("--archive", type=int, default=100_000, help="archive vectors to search")
    ap.add_argument("--queries", type=int, default=1_000)
    ap.add_argument("-k", type=int, default=10, help="neighbours per query")
    ap.add_argument("--no-main-job", action="store_true", help="skip timing `python train.py` (about 90 s) phase by phase")
    ap.add_argument("--foundation-only", action="store_true", help="only a timm ViT end to end against frozen features (bench_foundation.py)")
    ap.add_argument("--no-foundation", action="store_true", help="skip the foundation-model comparison")
    add_foundation_arguments(ap)
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
        args.embed_images, args.archive, args.queries = 64, 20_000, 200
    if args.search_only or args.foundation_only:
        args.rounds, args.profile = 0, ""
        args.no_search = args.no_search or args.foundation_only
        args.no_foundation = args.no_foundation or args.search_only
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
        print(f"{spec.name}: DeepAll's step with and without weight averaging …", flush=True)
        report.setdefault("averaging", {})[spec.name] = bench_averaging(spec, args, device)

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

    if not (args.no_data or args.search_only or args.foundation_only):
        print("a user's manifest: checking and indexing 100,000 rows …", flush=True)
        report["manifest"] = bench_manifest(10_000 if args.quick else 100_000)
        print(f"manifest check  {report['manifest']['rows']:,} rows in {report['manifest']['seconds']:.2f} s (goal ≤ 10 s)")

    if not (args.no_data or args.search_only or args.foundation_only or args.quick):
        from bench_tile import run_apart

        print("whole slides: tiling 2 pyramids at 4 µm/px against a naive reader …", flush=True)
        report["tile"] = run_apart()  # its own process: its workers must not re-import this torch-laden script

    by_key = {v.key: v for v in variants}
    for key in filter(None, args.profile.split(",")):
        print(f"profiling one {key} {specs[-1].name} step …", flush=True)
        prof = profile_step(specs[-1], by_key[key], device, top=20)
        print_profile(prof)
        report.setdefault("profile", {})[key] = prof

    if not args.no_search:
        print("using a trained model: embedding throughput, archive search …", flush=True)
        report["use"] = bench_use(args)

    if not (args.no_foundation or args.quick):
        print("a foundation model end to end against frozen features …", flush=True)
        report["foundation"] = bench_foundation(args)

    if not (args.no_main_job or args.quick or args.search_only or args.foundation_only or args.device != "cpu"):
        print("the main job: python train.py, phase by phase …", flush=True)
        report["main_job"] = bench_main_job()
    report["machine"]["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report["peak_rss_mb"] = self_kb / 1024  # Linux reports kilobytes
    report["figures"] = {k: v for k, v in flatten(report).items() if not k.startswith(("profile.", "machine."))}
    print_table(report)
    print_averaging(report.get("averaging", {}))
    print_search_report(report.get("use", {}))
    print_foundation_report(report.get("foundation", {}), args.fm_steps, args.fm_images)
    if "main_job" in report:
        print_main_job(report["main_job"])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
