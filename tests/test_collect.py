"""experiments/collect.py: golden tables from hand-written run folders, and the statistics they rest on.

The fixture tree `tests/fixtures/runs/` holds a tumour-type table under the paper's protocol (MASF,
DeepAll and both ablations at 40x and 400x, three seeds where complete) with one run that never wrote
metrics.json (masf 400x seed 2), one NaN accuracy (deepall 400x seed 2) and one resumed run (deepall
40x seed 1), plus a one-seed malignancy table under the patient protocol. MASF runs say
`optimizers: separate`; `masf_joint/40x` holds MASF with one Adam (the key in `method`, in `hparams`,
and absent: an older run). MASF and DeepAll at 40x carry source-test, patient, calibration, class-gap
and oracle numbers; `patient/malignancy/deepall/only_40x` is a single-source (transfer map) run.
Regenerate the goldens after an intended format change: UPDATE_GOLDEN=1 pytest tests/test_collect.py
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import collect  # noqa: E402
import collect_cells  # noqa: E402

from masf_lightning.eval import stats  # noqa: E402

FIXTURES = Path("tests/fixtures/runs")  # relative to ROOT: run paths in the goldens are shown as given
GOLDEN_MD = ROOT / FIXTURES / "expected.md"
GOLDEN_CSV = ROOT / FIXTURES / "expected.csv"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _check_golden(path: Path, text: str) -> None:
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"{path.name} changed; rerun with UPDATE_GOLDEN=1 if intended"


def _collect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    monkeypatch.chdir(ROOT)
    prefix = tmp_path / "out" / "table"
    rc = collect.main([str(FIXTURES), "--out", str(prefix), "--expect-seeds", "3"])
    return rc, capsys.readouterr().out, prefix


def test_golden_markdown_and_csv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, prefix = _collect(monkeypatch, tmp_path, capsys)
    assert rc == 0
    md = prefix.with_suffix(".md").read_text()
    _check_golden(GOLDEN_MD, md)
    _check_golden(GOLDEN_CSV, prefix.with_suffix(".csv").read_text())
    assert out.startswith(md), "stdout must show the same tables that --out writes"
    assert prefix.with_suffix(".tex").read_text().count(r"\begin{tabular}") == 2


def _row(out: str, start: str, section: str = "") -> list[str]:
    """Cells of the first table line starting with `start` after the heading `section`."""
    text = out.split(section, 1)[1] if section else out
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_golden_content_by_hand(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The numbers in the golden, recomputed by hand, so a wrong golden cannot pass silently."""
    _, out, prefix = _collect(monkeypatch, tmp_path, capsys)
    # 40x: MASF 45, 44, 46 → 45.00 ± 1.00; DeepAll 40, 41, 39 → 40.00 ± 1.00;
    # paired 5, 3, 7 → mean 5, sd 2, half-width t(0.975, 2)·2/√3 = 4.3027·1.1547 = 4.968
    # MASF (joint): 43, 42, 44 → paired 3, 1, 5: mean 3, the same half-width
    cells = _row(out, "| 100×, 200×, 400× | 40× |")
    assert cells[2:] == [
        "45.00 ± 1.00 (n=3)", "43.00 ± 1.00 (n=3)", "40.00 ± 1.00 (n=3)", "42.50 ± 0.71 (n=2)", "–",
        "+5.00 ± 4.97 [+0.03, +9.97] (n=3)", "+3.00 ± 4.97 [-1.97, +7.97] (n=3)", "44.37 ± 0.11", "+0.63", "40.39 ± 0.46", "-0.39",
    ]  # fmt: skip
    # 400x: MASF seed 2 missing, DeepAll seed 2 NaN: both out of the mean, pairs over seeds 0 and 1 only
    row400 = next(line for line in out.splitlines() if line.startswith("| 40×, 100×, 200× | 400× |"))
    assert "49.00 ± 1.41 (n=2)" in row400 and "46.50 ± 0.71 (n=2)" in row400 and "47.00 ± – (n=1)" in row400
    assert "+2.50 ± 19.06 [-16.56, +21.56] (n=2)" in row400  # diffs 1, 4: sd 2.1213, t(0.975, 1) = 12.7062
    assert "- masf 400x seed 2: tests/fixtures/runs/paper/tumor_type/masf/400x/seed2" in out
    assert "- deepall 400x seed 2: tests/fixtures/runs/paper/tumor_type/deepall/400x/seed2" in out
    assert "- deepall 40x seed 1: tests/fixtures/runs/paper/tumor_type/deepall/40x/seed1" in out
    assert "(ddof=1)" in out
    # the patient-protocol table has no paper columns, and n=1 has no spread
    assert "| 40×, 100×, 200× | 400× | 80.00 ± – (n=1) | 75.00 ± – (n=1) | +5.00 [–] (n=1) |" in out
    # a single-source run is its own row, not a second seed of the leave-one-out cell
    assert "| 40× | 400× | – | 70.00 ± – (n=1) | – |" in out and "Duplicate" not in out

    table = list(csv.DictReader(io.StringIO(prefix.with_suffix(".csv").read_text())))
    by = {(r["task"], r["target"], r["metric"], r["column"]): r for r in table if r["sources"] != "40x"}
    r = by[("tumor_type", "40x", "target_test_acc", "masf-deepall")]
    assert (r["n"], r["mean"], r["std"], r["ci_low"], r["ci_high"], r["half_width"], r["seeds"]) == (
        "3", "5.0000", "2.0000", "0.0317", "9.9683", "4.9683", "0 1 2"
    )
    assert by[("tumor_type", "40x", "target_test_acc", "masf_joint-deepall")]["mean"] == "3.0000"
    r = by[("tumor_type", "400x", "target_test_acc", "deepall")]
    assert (r["n"], r["mean"], r["paper_mean"], r["delta"], r["seeds"]) == ("2", "46.5000", "47.2100", "-0.7100", "0 1")
    assert by[("malignancy", "400x", "target_test_acc", "masf")]["std"] == ""
    assert by[("tumor_type", "40x", "oracle_target_test_acc", "masf")]["mean"] == "47.0000"


def test_metric_families_by_hand(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each family's numbers recomputed from the fixture values (40x: MASF seeds 0-2 against DeepAll seeds 0-2)."""
    _, out, _ = _collect(monkeypatch, tmp_path, capsys)
    tumour = out.split("### task malignancy")[0]
    # source test: MASF 60, 61, 62; DeepAll 63, 63, 66 → paired −3, −2, −4: mean −3, sd 1, half-width 4.3027/√3 = 2.48
    cells = _row(tumour, "| 100×, 200×, 400× | 40× | source test accuracy |", "#### Fit or generalization")
    assert cells[3:] == ["61.00 ± 1.00 (n=3)", "–", "64.00 ± 1.73 (n=3)", "–", "–", "-3.00 ± 2.48 [-5.48, -0.52] (n=3)", "–"]
    # the patient recognition rate: MASF 50, 48, 52; DeepAll 45, 44, 43 → paired 5, 4, 9: mean 6, sd √7, half 6.57
    cells = _row(tumour, "| 100×, 200×, 400× | 40× | patient recognition rate |", "#### Patient level")
    assert cells[3] == "50.00 ± 2.00 (n=3)" and cells[5] == "44.00 ± 1.00 (n=3)" and cells[8] == "+6.00 ± 6.57 [-0.57, +12.57] (n=3)"
    # class gap is a ratio, not a percentage: 1.5, 1.4, 1.6 against 2.0, 2.1, 1.9
    cells = _row(tumour, "| 100×, 200×, 400× | 40× | F_ψ features |", "#### Invariance: class-conditional")
    assert cells[3] == "1.50 ± 0.10 (n=3)" and cells[5] == "2.00 ± 0.10 (n=3)"
    cells = _row(tumour, "| 100×, 200×, 400× | 40× | ECE |", "#### Calibration")
    assert cells[3] == "10.00 ± 2.00 (n=3)" and cells[8] == "-5.00 ± 4.97 [-9.97, -0.03] (n=3)"
    # rows no run has a number for are left out rather than shown as a line of dashes
    assert "| 40×, 100×, 200× | 400× | patient recognition rate |" not in tumour


def test_oracle_only_in_its_own_labelled_table(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _collect(monkeypatch, tmp_path, capsys)
    tumour = out.split("### task malignancy")[0]
    honest, oracle = tumour.split("#### As the paper's code reported: best test accuracy during training (not an honest estimate)")
    assert _row(oracle, "| 100×, 200×, 400× | 40× |")[2:5] == ["47.00 ± 1.00 (n=3)", "45.00 ± 1.00 (n=3)", "42.00 ± 1.00 (n=3)"]
    assert "47.00 ± 1.00" not in honest and "42.00 ± 1.00" not in honest  # the oracle values, nowhere among the honest columns
    assert "| 400× |" not in oracle.split("Missing/failed")[0]  # no run at 400x has the oracle number: no line for it


@pytest.mark.parametrize(
    ("cfg", "column"),
    [
        ({"method": {"name": "masf", "optimizers": "separate"}}, "masf"),
        ({"method": {"name": "masf"}, "hparams": {"optimizers": "separate"}}, "masf"),
        ({"method": {"name": "masf", "optimizers": "joint"}}, "masf_joint"),
        ({"method": {"name": "masf"}, "hparams": {"optimizers": "joint"}}, "masf_joint"),
        ({"method": {"name": "masf"}}, "masf_joint"),  # before the key existed MASF had one Adam
        (None, "masf_joint"),
        ({"method": {"name": "masf_no_gen"}, "hparams": {"optimizers": "separate"}}, "masf_no_gen"),
        ({"method": {"name": "masf_no_tri"}}, "masf_no_tri_joint"),
        ({"method": {"name": "deepall"}}, "deepall"),
    ],
)
def test_masf_optimizer_layout_is_its_own_column(cfg: dict | None, column: str) -> None:
    from masf_lightning.eval.results import method_column

    name = ((cfg or {}).get("method") or {}).get("name", "masf")
    assert method_column(name, cfg) == column


def test_expect_seeds_lists_short_cells(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _collect(monkeypatch, tmp_path, capsys)
    few = out.split("Cells with fewer seeds than expected:")[1].split("###")[0]
    assert "- masf 400x: 2/3 seeds" in few and "- deepall 400x: 2/3 seeds" in few
    assert "masf 40x" not in few.replace("masf_no_gen 40x", "")  # 40x MASF is complete
    assert "masf_no_tri 40x" not in few  # an ablation never tried at 40x is not "short"


def test_sample_std_known_numbers() -> None:
    assert stats.mean_std([45.0, 44.0, 46.0]) == (45.0, 1.0)
    mean, std = stats.mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))  # Σ(x−x̄)² = 5, / (n−1) = 3; ddof=0 would give √1.25
    assert stats.mean_std([7.0]) == (7.0, None)
    assert collect_cells.fmt_cell(collect_cells.Cell({0: 7.0})) == "7.00 ± – (n=1)"
    assert collect_cells.fmt_cell(collect_cells.Cell()) == "–"


def test_paired_interval_known_numbers() -> None:
    mean, low, high = stats.t_interval([5.0, 3.0, 7.0])
    half = 4.302652730 * 2.0 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((5.0, 5.0 - half, 5.0 + half))
    assert stats.t_interval([1.0]) is None
    assert collect_cells.fmt_paired([1.0]) == "+1.00 [–] (n=1)"
    assert collect_cells.fmt_paired([]) == "–"
    assert collect_cells.fmt_paired([-1.0, -3.0]) == "-2.00 ± 12.71 [-14.71, +10.71] (n=2)"  # sd √2, 12.7062·√2/√2


def _student_cdf(t: float, df: int, n: int = 4000) -> float:
    """P(T ≤ t) for t ≥ 0 by Simpson's rule on the density (independent of the table it checks)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def f(x: float) -> float:
        return c * (1 + x * x / df) ** (-(df + 1) / 2)

    h = t / n
    s = f(0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 5, 10, 29, 30, 31, 45, 120])
def test_t_quantiles_match_the_distribution(df: int) -> None:
    assert _student_cdf(stats.t_quantile_975(df), df) == pytest.approx(0.975, abs=2e-6)


def test_no_metrics_exits_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "only_config").mkdir()
    (tmp_path / "only_config" / "run_config.json").write_text("{}")
    assert collect.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no metrics.json" in err
    assert collect.main([str(tmp_path / "does-not-exist")]) == 1


def test_duplicate_and_unreadable_runs_are_listed_not_averaged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = ROOT / FIXTURES / "patient" / "malignancy"
    shutil.copytree(src, tmp_path / "a")
    shutil.copytree(src / "masf", tmp_path / "b" / "masf")  # the same seed again, from another sweep
    bad = tmp_path / "c" / "deepall" / "400x" / "seed1"
    bad.mkdir(parents=True)
    shutil.copy(src / "deepall" / "400x" / "seed0" / "run_config.json", bad)
    (bad / "metrics.json").write_text('{"truncated": ')
    assert collect.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "80.00 ± – (n=1)" in out  # not counted twice
    assert f"- masf 400x seed 0: {tmp_path}/b/masf/400x/seed0" in out.split("Duplicate seed")[1]
    assert f"- deepall 400x seed 0: {bad}" in out.split("Unreadable metrics.json")[1]


def test_nan_written_by_json_is_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    shutil.copytree(ROOT / FIXTURES / "patient" / "malignancy" / "masf" / "400x" / "seed0", run)
    m = json.loads((run / "metrics.json").read_text())
    m["target_test_acc"] = None
    (run / "metrics.json").write_text(json.dumps(m))
    assert collect.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 40×, 100×, 200× | 400× | – | – |" in out
    assert f"- masf 400x seed 0: {run}" in out.split("Failed (NaN")[1]


def test_script_runs_from_the_command_line(tmp_path: Path) -> None:
    """As `make` calls it: a plain script path, no PYTHONPATH tricks."""
    script = str(ROOT / "experiments" / "collect.py")
    proc = subprocess.run([sys.executable, script, str(FIXTURES), "--expect-seeds", "3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == GOLDEN_MD.read_text()
    proc = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.startswith("collect: no metrics.json")


def test_two_synthetic_datasets_are_two_groups() -> None:
    from masf_lightning.eval.results import _data_name

    study = {"data": {"synthetic": {"seed": 0, "patients_per_type": 20, "images_per_magnification": 21}}}
    default = {"data": {"synthetic": {"seed": 0, "patients_per_type": 6, "images_per_magnification": 8}}}
    assert _data_name(study) == "synthetic 20×21" and _data_name(default) == "synthetic 6×8"
    assert _data_name({"data": {"synthetic": None, "root": "/x"}}) == "breakhis"
