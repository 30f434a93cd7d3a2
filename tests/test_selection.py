"""collect.py across random-search draws: one table per DomainBed selection rule, the selected draw named with its
values, a failed draw never selected, paired differences between selected draws, and a power line under each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))

import collect  # noqa: E402

from masf_lightning.eval.results import find_runs  # noqa: E402
from masf_lightning.eval.selection import RULES, choose  # noqa: E402

# (method, draw) → per seed (source val, target val, target test); None = the run failed (NaN)
RUNS = {
    ("masf", 0): [(0.70, 0.40, 0.38), (0.72, 0.42, 0.40)],
    ("masf", 1): [(0.80, 0.30, 0.33), (0.78, 0.32, 0.35)],  # best source validation
    ("masf", 2): [(0.60, 0.50, 0.48), (0.62, 0.52, 0.50)],  # best target validation (the oracle's pick)
    ("masf", 3): [None, (0.99, 0.99, 0.99)],  # diverged at seed 0: never selectable, whatever seed 1 says
    ("deepall", 0): [(0.75, 0.45, 0.41), (0.75, 0.45, 0.44)],
    ("deepall", 1): [(0.70, 0.47, 0.40), (0.70, 0.47, 0.40)],  # the oracle's pick
    ("deepall", 2): [(0.76, 0.40, 0.36), (0.77, 0.40, 0.39)],  # best source validation
}


def write_sweep(root: Path) -> Path:
    nan = float("nan")
    for (method, draw), seeds in RUNS.items():
        for seed, accs in enumerate(seeds):
            sv, tv, tt = accs or (nan, nan, nan)
            m = {
                "method": method, "task": "tumor_type", "target": "400x", "sources": ["40x", "100x", "200x"], "seed": seed,
                "protocol": "patient", "selection": "source_val", "backbone": "small", "steps": 800, "hparams_seed": draw,
                "hparams": {"lr": 0.001 * (draw + 1), "weight_decay": 0.0, **({"optimizers": "separate"} if method == "masf" else {})},
                "source_val_acc": sv, "target_val_acc": tv, "target_test_acc": tt,
            }  # fmt: skip
            if accs is None:
                m["failed"] = "non-finite loss at step 12: cr=nan"
            folder = root / method / "400x" / f"hp{draw}" / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "metrics.json").write_text(json.dumps(m))
    return root


@pytest.fixture
def markdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert collect.main([str(write_sweep(tmp_path / "sweep"))]) == 0
    return capsys.readouterr().out


def _row(text: str, start: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(start))
    return [c.strip() for c in line.strip("|").split("|")]


def test_one_table_per_rule_honest_first_oracle_apart(markdown: str) -> None:
    honest, oracle = markdown.split("draws chosen by test-domain validation (oracle")
    assert "draws chosen by training-domain validation" in honest
    # honest: MASF draw 1 (33, 35), DeepAll draw 2 (36, 39); paired −3, −4
    cells = _row(honest, "| 40×, 100×, 200× | 400× |")
    assert cells[2:5] == ["34.00 ± 1.41 (n=2)", "37.50 ± 2.12 (n=2)", "-3.50 ± 6.35 [-9.85, +2.85] (n=2)"]
    # oracle: MASF draw 2 (48, 50), DeepAll draw 1 (40, 40); paired 8, 10
    cells = _row(oracle, "| 40×, 100×, 200× | 400× |")
    assert cells[2:5] == ["49.00 ± 1.41 (n=2)", "40.00 ± 0.00 (n=2)", "+9.00 ± 12.71 [-3.71, +21.71] (n=2)"]
    assert "Fit or generalization" not in oracle  # the oracle shows its accuracy and its draws only


def test_selected_draws_are_named_with_their_values_and_the_failed_draw_is_not(markdown: str) -> None:
    honest, oracle = markdown.split("draws chosen by test-domain validation (oracle")
    section = honest.split("#### Selected draws")[1]
    assert _row(section, "| 400× | MASF |") == ["400×", "MASF", "1", "79.00", "3 of 4 (not: 3)", "0 1", "lr=0.002"]
    assert _row(section, "| 400× | DeepAll |") == ["400×", "DeepAll", "2", "76.50", "3 of 3", "0 1", "lr=0.003"]
    assert _row(oracle.split("#### Selected draws")[1], "| 400× | MASF |")[2:4] == ["2", "51.00"]
    assert "- masf 400x draw 3 seed 0:" in honest.split("Failed (NaN")[1]


def test_a_power_line_under_each_paired_comparison(markdown: str) -> None:
    honest, oracle = markdown.split("draws chosen by test-domain validation (oracle")
    for part in (honest, oracle):
        lines = [line for line in part.splitlines() if line.startswith("- MASF − DeepAll at 400×:")]
        assert len(lines) == 1
    # honest diffs −3, −4: sd 0.71, half-width 12.706·0.7071/√2 = 6.35; half-width <= 2 from n = 3 (4.303·0.7071/√3 = 1.76)
    assert "n = 2 seeds, paired sd 0.71 points, so these seeds resolve ±6.35 points; ±2 needs n ≥ 3" in honest


def test_ties_go_to_the_lower_draw_and_a_cell_with_only_failed_draws_selects_none(tmp_path: Path) -> None:
    runs = find_runs([write_sweep(tmp_path)])
    by_draw = {}
    for r in runs:
        if r.method == "deepall" and r.draw in (0, 1) and r.status == "ok":
            by_draw.setdefault(r.draw, {})[r.seed] = r
    # source val means: draw 0 0.75, draw 1 0.70; make them equal by reading draw 0 twice
    assert choose({1: by_draw[0], 0: by_draw[0]}, {}, RULES[0]).draw == 0
    assert choose({}, {3: (0, 1)}, RULES[0]).draw is None
