"""A killed run resumes from its last check to the same numbers, a repeated run gives the same numbers, a NaN stops cleanly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from masf_lightning.checkpoints import load_checkpoint
from tests.test_train_e2e import ROOT, run_train, tiny_overrides

VOLATILE = {"wall_time_s", "time_s", "resumed", "resumed_from_step"}  # clocks, and how the run got there
VAL_EVERY = 4


def numbers(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in m.items() if k not in VOLATILE}


def overrides(tmp_path: Path, run_dir: Path) -> list[str]:
    return [*tiny_overrides(tmp_path / "data"), "steps=24", f"val_every={VAL_EVERY}", f"hydra.run.dir={run_dir}"]


# train.py in a process that SIGKILLs itself right after validation check KILL_AFTER_CHECKS, once every
# checkpoint callback of that check has run: a kill at a known point, not a race with a polling test.
KILL_AFTER_CHECKS = """
import os, runpy, signal, sys
import pytorch_lightning as pl
from masf_lightning import pipeline

class Kill(pl.Callback):
    checks = int(os.environ["KILL_AFTER_CHECKS"])

    def on_validation_end(self, trainer, pl_module):
        self.checks -= 1
        if self.checks == 0:
            os.kill(os.getpid(), signal.SIGKILL)

build_trainer = pipeline.build_trainer

def build_trainer_then_kill(cfg, run_dir):
    trainer, *rest = build_trainer(cfg, run_dir)
    trainer.callbacks.append(Kill())  # last, after the checkpoint callbacks
    return (trainer, *rest)

pipeline.build_trainer = build_trainer_then_kill
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_same_config_same_numbers_and_kill_resume(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_train(overrides(tmp_path, a)).returncode == 0
    assert run_train(overrides(tmp_path, b)).returncode == 0
    assert numbers(a) == numbers(b), "same config and seed must give identical metrics on CPU"

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASF_DATA": "/nonexistent-do-not-use", "KILL_AFTER_CHECKS": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_CHECKS, str(ROOT / "train.py"), *overrides(tmp_path, killed)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / "metrics.json").exists()
    third = 3 * VAL_EVERY
    best = [p.name for p in (killed / "checkpoints").glob("best-*.ckpt")]
    assert best and best != [f"best-{third}.ckpt"], "the third check must not be the best so far, or 'last' = 'best' there"

    resumed = run_train(overrides(tmp_path, killed))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert resumed.stdout.splitlines()[0] == f"resuming from step {third}: {last}", resumed.stdout[:500]
    m = json.loads((killed / "metrics.json").read_text())
    assert m["resumed"] is True and m["resumed_from_step"] == third, "last.ckpt must hold the latest check, not the best"
    assert numbers(killed) == numbers(a), "a resumed run must end with the uninterrupted run's numbers"

    again = run_train(overrides(tmp_path, killed))  # finished: skipped, nothing rewritten
    assert again.returncode == 0 and "already finished" in again.stdout


@pytest.mark.parametrize("method", ["masf", "deepall"])
def test_last_ckpt_is_the_latest_step_when_validation_never_improves(tmp_path: Path, method: str) -> None:
    run_dir = tmp_path / method
    frozen = ["hparams.lr=1e-12", "hparams.inner_lr=1e-12", "hparams.metric_lr=1e-12"]
    args = [*tiny_overrides(tmp_path / "data"), f"method={method}", "steps=40", "val_every=10", *frozen]
    proc = run_train([*args, f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    assert load_checkpoint(checkpoints / "last.ckpt")["global_step"] == 40
    # selection unchanged: the first check stays the best; no temporary file left behind
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best-10.ckpt", "last.ckpt"]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["selected_step"] == 10 and m["resumed"] is False and m["resumed_from_step"] is None


def test_unreadable_last_ckpt_is_one_clear_error(tmp_path: Path) -> None:
    from masf_lightning.errors import DataError
    from masf_lightning.run_folder import resume_step

    last = tmp_path / "last.ckpt"
    last.write_bytes(b"half a checkpoint")
    with pytest.raises(DataError, match="delete it"):
        resume_step(last)


def test_run_dir_of_another_config_is_refused(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert run_train(overrides(tmp_path, run_dir)).returncode == 0
    before = (run_dir / "metrics.json").read_bytes()
    proc = run_train([*overrides(tmp_path, run_dir), "seed=1"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "seed=0" in lines[0] and "hydra.run.dir" in lines[0], proc.stderr
    assert (run_dir / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("record_failure", [False, True])
def test_nan_loss_stops_with_step_term_and_domains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record_failure: bool) -> None:
    """A single run stops with the fault named; in a sweep (record_failure) metrics.json also records it, so
    collect.py lists the run as failed and re-running the sweep does not train the same divergence again."""
    from masf_lightning.algorithms.masf import MASF
    from masf_lightning.errors import TrainingError

    original = MASF.meta_objective

    def poisoned(self, batches, meta_train, meta_test):
        out = original(self, batches, meta_train, meta_test)
        if self.global_step == 5:
            out["gen"] = out["gen"] * float("nan")
            out["carrier"] = out["carrier"] + out["gen"]
        return out

    monkeypatch.setattr(MASF, "meta_objective", poisoned)
    run_dir = tmp_path / "nan"
    cfg = compose_config([*overrides(tmp_path, run_dir)])
    from masf_lightning.pipeline import run

    with pytest.raises(TrainingError) as err:
        run(cfg, run_dir, record_failure=record_failure)
    msg = str(err.value)
    assert "step 5" in msg and "gen=nan" in msg and "meta-test" in msg
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 4, "the last good checkpoint must be kept, nothing saved after the fault"
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
    if not record_failure:
        assert not (run_dir / "metrics.json").exists()
        return
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["failed"] == msg and m["method"] == "masf" and m["hparams_seed"] == 0 and math.isnan(m["target_test_acc"])
    from masf_lightning.sweep import failed_runs

    assert failed_runs(tmp_path) == [(run_dir, msg)]
    assert run(cfg, run_dir)["failed"] == msg  # a re-run sweep skips it as finished


def compose_config(args: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[a for a in args if not a.startswith("hydra.")], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_rerunning_a_sweep_completes_only_what_is_missing(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*tiny_overrides(tmp_path / "data"), "-m", "seed=0,1", "method=deepall", f"hydra.sweep.dir={sweep}"]
    assert run_train(args).returncode == 0
    done = sweep / "tumor_type" / "deepall" / "400x" / "seed0" / "metrics.json"
    lost = sweep / "tumor_type" / "deepall" / "400x" / "seed1" / "metrics.json"
    kept = done.read_bytes()
    lost.unlink()  # as if the sweep had been killed during seed 1's evaluation
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("already finished") == 1 and f"already finished: {done}" in proc.stdout
    assert done.read_bytes() == kept and lost.is_file()
    assert json.loads(lost.read_text())["resumed"] is True  # restarted from its last.ckpt


def test_run_dir_claim_treats_a_key_added_as_null_as_the_same_run(tmp_path: Path) -> None:
    """A config key added since a run (null by default) must not orphan it; a changed value still refuses."""
    import json as _json

    from omegaconf import OmegaConf

    from masf_lightning.errors import ConfigError
    from masf_lightning.run_folder import RUN_CONFIG_FILE, claim_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / RUN_CONFIG_FILE).write_text(_json.dumps({"seed": 0, "data": {"root": "x"}}))
    assert claim_run_dir(OmegaConf.create({"seed": 0, "data": {"root": "x", "sources": None}}), run_dir) is None
    with pytest.raises(ConfigError, match="data.root='x'"):
        claim_run_dir(OmegaConf.create({"seed": 0, "data": {"root": "y", "sources": None}}), run_dir)


def test_a_diverged_sweep_goes_on_records_each_failure_and_ends_with_exit_3(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_train([*tiny_overrides(tmp_path / "data"), "-m", "method=deepall", "seed=0,1", "hparams.lr=1e9", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 3, proc.stderr[-2000:]
    failed = sorted(sweep.rglob("metrics.json"))
    assert len(failed) == 2, "the second job ran although the first diverged"
    assert all("non-finite loss" in json.loads(p.read_text())["failed"] for p in failed)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors[-1] == "error: 2 runs of this sweep failed (listed above; collect.py shows them apart, never averaged)"
    assert "Traceback" not in proc.stderr
