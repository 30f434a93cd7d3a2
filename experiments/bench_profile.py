"""Where a step's time goes: torch.profiler over one step of a variant (experiments/bench.py --profile).

Each op's self time is attributed to the phase it ran in (objective, backward, optimizer_step) and to
the autograd node that ran it, so that MASF's extra cost can be read off as Eq. 9's inner gradient,
conv's double backward (Eq. 11's second-order term) and the optimizer; ops are also summed per input
shape (which matmuls are fc6's).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
from bench_env import sync
from bench_steps import BackboneSpec, Variant, make_batches, make_module, make_step


def profile_step(spec: BackboneSpec, variant: Variant, device: torch.device, top: int) -> dict[str, Any]:
    """torch.profiler over one step (after two unprofiled ones): self time per op, per phase, per autograd node."""
    from torch.profiler import ProfilerActivity, profile, record_function

    phases = ("objective", "backward", "optimizer_step")
    module = make_module(spec, variant, device)
    step = make_step(module, variant.method, make_batches(spec, device, variant.memory_format), record_function, autocast=variant.bf16)
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
