"""Where the main job's time goes: `python train.py` as a newcomer runs it (MASF, second order, small CNN, 800 steps,
a validation check every 50), in a subprocess, read back from its metrics.json `time_s` (masf_lightning/timing.py):
process start to training (imports, data, cache, model), the training steps, the validation checks, the rest of
fit (batch delivery, checkpoints, logs), the final evaluation — and the whole command's wall clock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def bench_main_job(overrides: list[str] | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """One `python train.py [overrides]` into a fresh run folder; its phases in seconds and per step / per check.
    The synthetic data and its cache are generated first (not timed), as a second `make train` finds them."""
    run_dir = Path(tempfile.mkdtemp(prefix="main_job_")) / "run"
    env = {**os.environ, **({"MASF_DATA": data_dir} if data_dir else {})}
    cmd = [sys.executable, str(ROOT / "train.py"), "progress=false", *(overrides or [])]
    # data and cache in place first, as on every `python train.py` after the first
    subprocess.run([*cmd, "steps=1", "val_every=1", f"hydra.run.dir={run_dir}_warm"], cwd=ROOT, env=env, check=True, capture_output=True)
    started = time.perf_counter()
    proc = subprocess.run([*cmd, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    m = json.loads((run_dir / "metrics.json").read_text())
    t, steps = m["time_s"], m["steps_done"]
    checks = steps // json.loads((run_dir / "run_config.json").read_text())["val_every"]
    return {
        "command": "python train.py " + " ".join(["progress=false", *(overrides or [])]),
        "wall_s": round(wall, 1),
        "phases_s": t,
        "before_training_s": round(wall - t["total"] + t["setup"], 1),  # interpreter, imports, Hydra, data, model
        "ms_per_step": round(1000 * t["steps"] / steps, 1),
        "validation_checks": checks,
        "target_test_acc": m["target_test_acc"],
    }


def print_main_job(r: dict[str, Any]) -> None:
    if not r or "error" in r:
        print(f"main job: {r.get('error', 'not run')[:300] if r else 'not run'}")
        return
    p = r["phases_s"]
    print(f"\nmain job ({r['command']}): {r['wall_s']:.1f} s wall")
    for name, label in (("setup", "data, cache, model"), ("steps", f"training steps ({r['ms_per_step']:.0f} ms each)"),
                        ("validation", "validation checks"), ("other_fit", "batch delivery, checkpoints, logs"),
                        ("evaluation", "final evaluation")):  # fmt: skip
        print(f"  {p[name]:7.1f} s  {label}")
    print(f"  {r['before_training_s']:7.1f} s  before training (interpreter, imports, Hydra, setup)")
