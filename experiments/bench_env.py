"""The process and machine a benchmark's figures come from, and the allocator setting they assume.

Step times on a CPU depend on glibc's malloc (large buffers unmapped on free are page-faulted back in
on every step), on threads and on load; experiments/bench.py sets the allocator as train.py does
(masf_lightning/memory.py) and records the machine (device, threads, allocator, load) in every report.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from masf_lightning.memory import keep_freed_memory

MALLOC = {"mode": "default"}  # what ensure_malloc did, for the report


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
        "malloc": MALLOC["mode"],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


def ensure_malloc(mode: str) -> None:
    """tuned: glibc keeps freed memory, as train.py sets it (masf_lightning/memory.py); default: glibc as it is
    (re-executed without GLIBC_TUNABLES if the shell set it); inherit: whatever the process started with."""
    if mode == "tuned":
        MALLOC["mode"] = "tuned (mallopt)" if keep_freed_memory() else "default (not glibc)"
    elif mode == "default" and os.environ.get("GLIBC_TUNABLES") and sys.platform.startswith("linux"):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    else:
        MALLOC["mode"] = mode
