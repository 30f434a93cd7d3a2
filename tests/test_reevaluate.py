"""masf_lightning/runs.py and reevaluate.py: reopening a finished (tiny) run, and re-evaluating it in place."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from masf_lightning import reevaluate, runs
from tests.test_train_e2e import ROOT, run_train, tiny_overrides


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny MASF run, target 100x (the pipeline's own metrics.json and checkpoints)."""
    tmp = tmp_path_factory.mktemp("reeval")
    out = tmp / "study" / "masf" / "100x" / "seed0"
    proc = run_train([*tiny_overrides(tmp / "data"), "target=100x", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("tb"))
    return dest


def test_reevaluate_keeps_training_keys_and_recomputes_evaluation(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(run_dir, tmp_path / "run")
    original = json.loads((run / "metrics.json").read_text())
    stale = dict(original)
    stale["target_test_acc"] = 0.987654  # an old evaluation: must be replaced
    del stale["knn1_features_acc"]  # a metric the old code did not have: must be added
    stale["wall_time_s"] = 12345.0  # training keys: must survive untouched
    stale["resumed"] = True
    stale["oracle_target_test_acc"] = 0.5
    stale["note_from_training"] = "kept"
    (run / "metrics.json").write_text(json.dumps(stale))

    assert reevaluate.main([str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[1/1] ") and f"{run}: target test acc {100 * original['target_test_acc']:.2f}% (was 98.77%)" in out

    new = json.loads((run / "metrics.json").read_text())
    # the same checkpoint and data give the training-time evaluation back, to the last digit
    assert new["target_test_acc"] == original["target_test_acc"]
    assert new["knn1_features_acc"] == original["knn1_features_acc"]
    assert new["test_acc_by_domain"] == original["test_acc_by_domain"]
    for key in ("wall_time_s", "resumed", "oracle_target_test_acc", "note_from_training", "selected_step", "selected_checkpoint"):
        assert new[key] == stale[key], key
    assert not list(run.glob(".metrics.json.*")), "atomic write left a temporary file"
    tb = run / "tb" / "reevaluation"
    assert list(tb.glob("events.out.tfevents.*")) and "target_test_and_source_val" in (tb / "projector_config.pbtxt").read_text()


def test_a_folder_of_runs_is_searched(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _copy(run_dir, tmp_path / "sweep" / "a" / "seed0")
    _copy(run_dir, tmp_path / "sweep" / "b" / "seed0")
    (tmp_path / "sweep" / "c").mkdir()  # an unrelated folder: ignored
    assert runs.find_run_dirs([tmp_path / "sweep"]) == [tmp_path / "sweep" / "a" / "seed0", tmp_path / "sweep" / "b" / "seed0"]


def test_unfinished_run_is_one_error_line_and_nothing_written(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _copy(run_dir, tmp_path / "run")
    (run / "metrics.json").unlink()
    assert reevaluate.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "has not finished" in err
    assert not (run / "metrics.json").exists()


def test_replaced_checkpoint_is_refused(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A selected checkpoint whose step is not the recorded one would re-evaluate another model."""
    run = _copy(run_dir, tmp_path / "run")
    m = json.loads((run / "metrics.json").read_text())
    m["selected_step"] += 1  # as if best-<step>.ckpt had been overwritten by a later save
    before = json.dumps(m)
    (run / "metrics.json").write_text(before)
    assert reevaluate.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the checkpoint was replaced" in err
    assert (run / "metrics.json").read_text() == before


def test_several_runs_one_bad_goes_on_and_fails(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _copy(run_dir, tmp_path / "good")
    bad = _copy(run_dir, tmp_path / "bad")
    (bad / "metrics.json").write_text("{not json")
    assert reevaluate.main([str(bad), str(good)]) == 2
    captured = capsys.readouterr()
    assert "[2/2] " in captured.out and str(good) in captured.out
    assert f"error: {bad / 'metrics.json'} is not valid JSON" in captured.err
    assert captured.err.count("\n") == 2  # the run's line and the summary
    assert (bad / "metrics.json").read_text() == "{not json"


def test_python_dash_m_entry_point(run_dir: Path, tmp_path: Path) -> None:
    """As README says: `python -m masf_lightning.reevaluate RUN_DIR`; the earlier command says where it went."""
    run = _copy(run_dir, tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "masf_lightning.reevaluate", str(run)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"[1/1] {run}: target test acc")



def test_the_earlier_command_says_where_re_evaluation_went(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m masf_lightning.eval.report` (its __main__ block, run in this process: no second interpreter)."""
    import runpy
    import warnings

    with pytest.raises(SystemExit) as exit_, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already (by this test session)
        runpy.run_module("masf_lightning.eval.report", run_name="__main__")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: re-evaluation moved: python -m masf_lightning.reevaluate RUN_DIR [RUN_DIR ...] (same arguments)"
    ]


def test_selected_checkpoint_falls_back_to_last(run_dir: Path, tmp_path: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert runs.selected_checkpoint(run_dir) == run_dir / metrics["selected_checkpoint"]
    fake = tmp_path / "run"
    (fake / "checkpoints").mkdir(parents=True)
    (fake / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert runs.selected_checkpoint(fake) == fake / "checkpoints" / "last.ckpt"


def test_config_from_hydra_folder_matches_run_config(run_dir: Path, tmp_path: Path) -> None:
    """Runs without run_config.json fall back to .hydra/config.yaml, resolved against .hydra/hydra.yaml."""
    from omegaconf import OmegaConf

    copy = tmp_path / "run"
    (copy / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml"):
        (copy / ".hydra" / name).write_text((run_dir / ".hydra" / name).read_text())
    from_json = OmegaConf.to_container(runs.load_run_config(run_dir))
    from_yaml = OmegaConf.to_container(runs.load_run_config(copy))
    for key in ("data", "method", "backbone", "split", "task", "target", "seed", "stain"):
        assert from_yaml[key] == from_json[key], key
