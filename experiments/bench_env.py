"""The process and machine a benchmark's figures come from, and the allocator setting they assume.

Step times on a CPU depend on glibc's malloc (large buffers unmapped on free are page-faulted back in
on every step), on threads and on load; experiments/bench.py re-executes itself with the Makefile's
allocator setting and records the machine (device, threads, GLIBC_TUNABLES, load) in every report.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

# The Makefile's allocator setting: without it glibc unmaps every >32 MB buffer on free and page-faults
# it back in on the next step (AlexNet's fc6 gradient alone is 151 MB).
TUNED_MALLOC = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=34359738368"


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
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    try:
        info["loadavg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


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

