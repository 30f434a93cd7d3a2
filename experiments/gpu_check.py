"""`make gpu-check`: what this project needs to know from a GPU, in one script sized for a short lease (under
8 minutes on one H100), written to results/gpu.json part by part. Without CUDA it says so in one line, runs
its CPU parts (the mixed-precision tests) and exits 0.

    python experiments/gpu_check.py [--out results/gpu.json] [--budget-s 450]

Parts, in order; each is timed, a failure is recorded and the next part runs, and a part that would not fit
the budget left is skipped and says so:
1. tests    the CUDA-only tests (stain and cache on the GPU against the CPU) and tests/test_precision.py
2. steps    experiments/bench.py's step ratios on the GPU: AlexNet 227 px, 3×64 images, DeepAll against MASF
            first and second order, fp32 and bf16 autocast
3. runs     200-step runs of the paper's recipe (AlexNet, random init, on the synthetic data, 3×24 images) for
            every method in fp32 and bf16-mixed, MASF also in 16-mixed (the GradScaler path): finite losses,
            steps/s, peak GPU memory
4. pool     the MASF run k = 1, 2, 4 at once on the one GPU (what hydra/launcher=gpu_pool does when a GPU is
            listed k times): aggregate steps/s, and the projected time of the paper's 48 runs (Tables 1 and 2:
            2 tasks × 4 targets × 3 seeds × MASF, DeepAll) of 4,000 steps each — an upper bound, since early
            stopping ends most runs sooner
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ["tests/test_cache.py::test_gpu_stain_step_matches_cpu", "tests/test_stain.py::test_gpu_matches_cpu"]
PRECISION_TESTS = ["tests/test_precision.py"]
RECIPE = ["experiment=paper_tumor_type", "data=synthetic", "backbone.weights=null", "steps=200", "val_every=100",
          "early_stopping_patience=null", "trainer=gpu", "progress=false"]  # fmt: skip
METHODS = ("deepall", "masf", "mldg", "coral")
PAPER_RUNS, PAPER_STEPS = 48, 4000


class Report:
    """results/gpu.json, rewritten after every part so a lease that ends early still leaves what ran."""

    def __init__(self, path: Path, budget_s: float):
        self.path, self.deadline, self.data = path, time.time() + budget_s, {"started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def left(self) -> float:
        return self.deadline - time.time()

    def part(self, name: str, needs_s: float, fn: Any) -> None:
        if self.left() < needs_s:
            self.data[name] = {"skipped": f"needs ~{needs_s:.0f} s, {self.left():.0f} s of the budget left"}
        else:
            started = time.time()
            try:
                self.data[name] = fn()
            except Exception as exc:  # noqa: BLE001 - recorded, and the next part runs
                self.data[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            self.data[name]["seconds"] = round(time.time() - started, 1)
        print(f"gpu-check: {name}: {json.dumps(self.data[name])[:300]}", flush=True)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2) + "\n")


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def pytest_part(tests: list[str]) -> dict[str, Any]:
    proc = _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *tests], timeout=240)
    counts = [line for line in proc.stdout.splitlines() if " passed" in line or " failed" in line or " error" in line]
    tail = counts[-1] if counts else (proc.stdout + proc.stderr)[-500:]
    return {"ok": proc.returncode == 0, "summary": tail, "skipped": [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]}


def steps_part() -> dict[str, Any]:
    out = Path(tempfile.mkdtemp()) / "bench.json"
    cmd = [sys.executable, "experiments/bench.py", "--device", "cuda", "--backbones", "alexnet", "--no-data", "--no-search",
           "--precision", "both", "--rounds", "3", "--warmup", "1", "--json", str(out)]  # fmt: skip
    proc = _run(cmd, timeout=240)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    bench = json.loads(out.read_text())
    return {"figures": bench.get("figures", {}), "alexnet": bench.get("alexnet", {})}


def _metrics(run_dir: Path) -> dict[str, Any]:
    m = json.loads((run_dir / "metrics.json").read_text())
    steps = m.get("steps_done") or 0
    return {
        "target_test_acc": m.get("target_test_acc"), "failed": m.get("failed"), "time_s": m.get("time_s"),
        "steps_per_s": round(steps / m["time_s"]["steps"], 2) if m.get("time_s") and m["time_s"]["steps"] else None,
        "peak_gpu_memory_mb": m.get("peak_gpu_memory_mb"),
    }  # fmt: skip


def runs_part(work: Path, seconds_left: float) -> dict[str, Any]:
    """One Hydra sweep (imports once): every method × fp32, bf16; MASF in 16-mixed too."""
    sweep = work / "runs"
    jobs = [("method=" + ",".join(METHODS), "trainer.precision=32-true,bf16-mixed"), ("method=masf", "trainer.precision=16-mixed")]
    out: dict[str, Any] = {}
    for i, (methods, precisions) in enumerate(jobs):
        cmd = [sys.executable, "train.py", "-m", *RECIPE, methods, precisions, f"hydra.sweep.dir={sweep}/{i}",
               "hydra.sweep.subdir=${method.name}_${trainer.precision}", f"paths.data={work / 'data'}"]  # fmt: skip
        proc = _run(cmd, timeout=max(60.0, 0.9 * seconds_left))
        for run_dir in sorted((sweep / str(i)).glob("*")):
            if (run_dir / "metrics.json").is_file():
                out[run_dir.name] = _metrics(run_dir)
        if proc.returncode != 0:
            out[f"error_{i}"] = proc.stderr[-1500:]
    return out


def pool_part(work: Path) -> dict[str, Any]:
    """k MASF runs at once on the GPU: aggregate steps/s, and the 48-run projection at each k."""
    out: dict[str, Any] = {}
    for k in (1, 2, 4):
        procs, dirs, started = [], [], time.time()
        for j in range(k):
            d = work / f"pool{k}_{j}"
            dirs.append(d)
            cmd = [sys.executable, "train.py", *RECIPE, "method=masf", f"seed={j}", f"hydra.run.dir={d}", f"paths.data={work / 'data'}"]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for p in procs:
            p.wait(timeout=300)
        wall = time.time() - started
        got = [_metrics(d) for d in dirs if (d / "metrics.json").is_file()]
        if len(got) < k:
            out[f"k={k}"] = {"error": "a run did not finish", "wall_s": round(wall, 1)}
            continue
        rate = sum(200 / g["time_s"]["steps"] for g in got)  # aggregate training steps per second
        overhead = sum(g["time_s"]["total"] - g["time_s"]["steps"] for g in got) / k  # setup, validation, evaluation
        projected = PAPER_RUNS * PAPER_STEPS / rate + PAPER_RUNS * overhead / k
        out[f"k={k}"] = {"aggregate_steps_per_s": round(rate, 2), "wall_s": round(wall, 1), "per_run_overhead_s": round(overhead, 1),
                         "peak_gpu_memory_mb": [g["peak_gpu_memory_mb"] for g in got],
                         "projected_48_runs_min": round(projected / 60, 1)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu.json")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting parts after this long (the lease is ~8 min)")
    args = ap.parse_args(argv)
    report = Report(args.out, args.budget_s)
    report.data["torch"] = torch.__version__
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device found; running the CPU parts only (mixed precision on CPU autocast)", flush=True)
        report.data["cuda"] = False
        report.part("tests", 30, lambda: pytest_part(PRECISION_TESTS))
        print(f"gpu-check: wrote {args.out}")
        return 0
    report.data["cuda"] = True
    report.data["device"] = torch.cuda.get_device_name(0)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    report.part("tests", 60, lambda: pytest_part(CUDA_TESTS + PRECISION_TESTS))
    report.part("steps", 90, steps_part)
    report.part("runs", 120, lambda: runs_part(work, report.left()))
    report.part("pool", 90, lambda: pool_part(work))
    print(f"gpu-check: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
