#!/usr/bin/env python
"""How MASF's losses share ψ: per run, the gradient norms each term puts on F_ψ and the embedding scale.

    python experiments/loss_balance.py RUN_DIR [RUN_DIR ...] [--from-step 200]

Reads the TensorBoard scalars MASF logs every `hparams.grad_norm_every` steps (grad_norm/psi_cr,
grad_norm/psi_gen, grad_norm/psi_tri: ‖∇_ψ L_cr‖, ‖∇_ψ β1 L_gen‖, ‖∇_ψ β2 L_tri‖) and
diag/embedding_sq_dist_over_margin (mean squared distance between T's embeddings over ζ), and prints one
Markdown row per run: medians (and the maximum) over the logged steps from --from-step on, the training
cross-entropy late in training (the fit), beside the run's source-val, source-test and target-test accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TAGS = ("grad_norm/psi_cr", "grad_norm/psi_gen", "grad_norm/psi_tri", "diag/embedding_sq_dist_over_margin")


def scalars(run: Path) -> dict[str, dict[int, float]]:
    """step → value per tag, at the steps where the norms were computed. Runs logged before the logging fix
    repeated each value at every later flush; a step whose ‖∇ψ L_cr‖ equals the one before is such a repeat."""
    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    have = set(acc.Tags()["scalars"])
    full = {t: {e.step: e.value for e in acc.Scalars(t)} for t in TAGS if t in have}
    if "train/cr" in have:  # every flush is a fresh value here: the fit, late in training
        full["train/cr"] = {e.step: e.value for e in acc.Scalars("train/cr")}
    if TAGS[0] not in full:
        return full
    cr = sorted(full[TAGS[0]].items())
    fresh = {k for i, (k, v) in enumerate(cr) if i == 0 or v != cr[i - 1][1]}
    return {t: (values if t == "train/cr" else {k: v for k, v in values.items() if k in fresh}) for t, values in full.items()}


def row(run: Path, from_step: int) -> str:
    s = scalars(run)
    m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    late = sorted(s.get("train/cr", {}).items())[-10:]  # the last 10 flushes (100 steps)
    cr_late = f"{statistics.mean(v for _, v in late):.2f}" if late else "–"

    def pct(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}"

    accs = f"{cr_late} | {pct(m.get('source_val_acc'))} | {pct(m.get('source_test_acc'))} | {pct(m.get('target_test_acc'))} |"
    steps = sorted(k for k in s.get("grad_norm/psi_cr", {}) if k >= from_step)
    if not steps:  # DeepAll, or MASF with hparams.grad_norm_every=0: the fit and accuracies only
        return f"| {run} | 0 | – | – | – | {accs}"
    cr = [s["grad_norm/psi_cr"][k] for k in steps]
    gen = [s["grad_norm/psi_gen"][k] / c for k, c in zip(steps, cr, strict=True)]
    tri = [s["grad_norm/psi_tri"][k] / c for k, c in zip(steps, cr, strict=True)]
    scale = [s["diag/embedding_sq_dist_over_margin"][k] for k in steps if k in s.get("diag/embedding_sq_dist_over_margin", {})]
    return (
        f"| {run} | {len(steps)} | {statistics.median(gen):.3f} (max {max(gen):.2f}) | {statistics.median(tri):.3f} "
        f"(max {max(tri):.2f}) | {statistics.median(scale):.3g} (max {max(scale):.3g}) | {accs}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--from-step", type=int, default=200, help="ignore the logged steps before this one")
    args = ap.parse_args(argv)
    print("| run | logged steps | ‖∇ψ β1 L_gen‖ / ‖∇ψ L_cr‖ | ‖∇ψ β2 L_tri‖ / ‖∇ψ L_cr‖ | mean d² / ζ | L_cr, last 100 steps "
          "| source val % | source test % | target test % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in args.runs:
        if not (run / "tb").is_dir():
            print(f"error: {run} has no tb/ folder: is it a run folder?", file=sys.stderr)
            return 2
        print(row(run, args.from_step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
