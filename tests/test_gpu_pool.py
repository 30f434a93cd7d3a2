"""The GPU-pool assignment: each concurrent job holds a distinct GPU; extra jobs wait; a dead job frees its GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from masf_lightning.gpu_pool import claim_gpu, gpu_for_this_job, visible_gpus


def test_concurrent_jobs_get_distinct_gpus_and_the_extra_one_waits(tmp_path: Path) -> None:
    gpus = ["0", "1"]
    held: list[str] = []
    active: list[str] = []
    overlap: list[tuple[str, ...]] = []
    lock = threading.Lock()

    def job() -> None:
        with claim_gpu(gpus, tmp_path, poll_s=0.01) as gpu:
            with lock:
                assert gpu not in active, f"GPU {gpu} given to two jobs at once"
                active.append(gpu)
                held.append(gpu)
                overlap.append(tuple(sorted(active)))
            time.sleep(0.15)
            with lock:
                active.remove(gpu)

    threads = [threading.Thread(target=job) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(held) == 5 and set(held) == {"0", "1"}
    assert max(len(o) for o in overlap) == 2, "never more jobs at once than GPUs"


def test_a_gpu_listed_twice_takes_two_jobs(tmp_path: Path) -> None:
    with claim_gpu(["0", "0"], tmp_path) as a, claim_gpu(["0", "0"], tmp_path) as b:
        assert a == b == "0"


def test_no_gpu_means_no_claim(tmp_path: Path) -> None:
    with claim_gpu([], tmp_path) as gpu:
        assert gpu is None


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert visible_gpus() == ["3", "5"]
    with gpu_for_this_job(tmp_path) as gpu:
        assert gpu == "3" and os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5"


def test_killed_job_releases_its_gpu(tmp_path: Path) -> None:
    code = (
        "import sys, time; from masf_lightning.gpu_pool import claim_gpu\n"
        f"with claim_gpu(['0'], {str(tmp_path)!r}) as g:\n    print(g, flush=True); time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "0"
    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(next(iter([_claim(tmp_path)]))))
    waiter.start()
    time.sleep(0.2)
    assert not got, "the GPU is still held by the live job"
    proc.kill()
    proc.wait()
    waiter.join(5)
    assert got == ["0"]


def _claim(lock_dir: Path) -> str | None:
    with claim_gpu(["0"], lock_dir, poll_s=0.02) as gpu:
        return gpu
