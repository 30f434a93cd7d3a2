"""experiments/plot_embeddings.py on a real (tiny) run: Fig. 2 from the run's own config and checkpoint."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.test_train_e2e import run_train, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import collect  # noqa: E402
import plot_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def masf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny MASF run on the malignancy task (so panel (a) is benign vs malignant), target 200x."""
    tmp = tmp_path_factory.mktemp("plot")
    run_dir = tmp / "run"
    proc = run_train([*tiny_overrides(tmp / "data"), "task=malignancy", "target=200x", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


def test_plot_writes_png_pdf_and_projector(masf_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "fig" / "fig2"
    assert plot_embeddings.main([str(masf_run), "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    for ext in ("png", "pdf", "csv"):
        path = prefix.with_name(f"fig2.{ext}")
        assert path.is_file() and path.stat().st_size > (1000 if ext != "csv" else 0), path
        assert str(path) in out
    assert prefix.with_name("fig2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert prefix.with_name("fig2.pdf").read_bytes()[:5] == b"%PDF-"

    # every magnification's test images, the target's marked, the model's own embedder space
    import pandas as pd

    points = pd.read_csv(prefix.with_name("fig2.csv"))
    assert list(dict.fromkeys(points["domain"])) == ["40x", "100x", "200x", "400x"]
    assert set(points["split"]) == {"test"}
    assert set(points.loc[points["role"] == "target", "domain"]) == {"200x"}
    assert points[["x", "y"]].notna().all().all()

    tb = masf_run / "tb" / "fig2_embedding"
    assert "test_all_magnifications" in (tb / "projector_config.pbtxt").read_text()
    meta = next(tb.rglob("metadata.tsv")).read_text().splitlines()
    assert meta[0].split("\t") == ["class", "domain", "patient", "split", "role"]
    assert len(meta) - 1 == len(points)
    # the training run's own projector is left as it was
    assert 'tensor_name: "target_test_and_source_val:' in (masf_run / "tb" / "projector_config.pbtxt").read_text()


def test_not_a_run_folder_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot_embeddings.main([str(tmp_path)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1


def test_collect_reads_the_real_run(masf_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """collect.py against a metrics.json the pipeline wrote, not a hand-written one."""
    assert collect.main([str(masf_run.parent)]) == 0
    out = capsys.readouterr().out
    assert "### task malignancy · protocol patient · selection source_val · backbone small · 4 steps · data synthetic" in out
    assert "| 40×, 100×, 400× | 200× | " in out and "(n=1)" in out


def test_refuses_a_split_that_is_not_the_runs(masf_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Another split would put the run's training images among the plotted "test" points."""
    assert plot_embeddings.main([str(masf_run), "--out", str(masf_run / "never"), "split.seed=1"]) != 0
    assert "differs from" in capsys.readouterr().err
    assert not (masf_run / "never.png").exists()
