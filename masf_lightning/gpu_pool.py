"""Spread sweep jobs over the visible GPUs, one job per GPU at a time.

Parallel sweep workers (Hydra's joblib launcher) each claim a free GPU by taking an exclusive,
non-blocking `flock` on `<lock_dir>/slot<i>-gpu<k>.lock`, and hold it for the whole run; a worker that finds
none free waits. The OS drops a lock when its process dies, so a killed job never blocks a GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what `nvidia-smi -L` lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


@contextlib.contextmanager
def claim_gpu(gpus: list[str], lock_dir: str | os.PathLike[str], poll_s: float = 2.0) -> Iterator[str | None]:
    """Hold one GPU of `gpus` exclusively (across processes) for the duration of the block; None if no GPU."""
    if not gpus:
        yield None
        return
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for slot, gpu in enumerate(gpus):  # a GPU listed twice has two slots: two jobs may share it
            fh = open(lock_dir / f"slot{slot}-gpu{gpu}.lock", "a+")  # noqa: SIM115 - held until the block ends
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                continue
            try:
                yield gpu
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
                fh.close()
            return
        time.sleep(poll_s)


@contextlib.contextmanager
def gpu_for_this_job(lock_dir: str | os.PathLike[str]) -> Iterator[str | None]:
    """Claim a GPU and make it the only one this job sees (before CUDA is initialised)."""
    with claim_gpu(visible_gpus(), lock_dir) as gpu:
        if gpu is None:
            yield None
            return
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        try:
            yield gpu
        finally:
            if previous is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = previous
