"""Accuracy along the µm/px axis: rows from runs' metrics.json, the seeds' summary, and the sweep's plot files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from masf_lightning.eval.mpp_curve import curve_rows, summarize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import plot_mpp_curve as plot  # noqa: E402

MPP = {"2mpp": 2.0, "1.41mpp": 1.41, "1mpp": 1.0, "0.5mpp": 0.5, "0.25mpp": 0.25}
SOURCES = ["2mpp", "1mpp", "0.5mpp"]


def _metrics(method: str, seed: int, offset: float) -> dict:
    acc = {d: round(0.5 + 0.1 * i + offset, 3) for i, d in enumerate(MPP)}
    return {"method": method, "seed": seed, "sources": SOURCES, "target": "0.25mpp", "mpp_by_domain": MPP,
            "test_acc_by_domain": acc, "test_balanced_acc_by_domain": {d: a - 0.05 for d, a in acc.items()},
            "target_test_acc": acc["0.25mpp"]}  # fmt: skip


def test_rows_and_summary_over_seeds() -> None:
    runs = [_metrics("deepall", s, 0.01 * s) for s in range(3)] + [_metrics("masf", 0, 0.0), {"method": "x", "mpp_by_domain": {}}]
    rows = curve_rows(runs)
    assert len(rows) == 4 * len(MPP)
    assert rows.loc[rows["domain"] == "1.41mpp", "trained"].eq(False).all() and rows.loc[rows["domain"] == "1mpp", "trained"].all()
    s = summarize(rows).set_index(["method", "domain"])
    assert s.loc[("deepall", "1mpp"), "seeds"] == 3
    assert s.loc[("deepall", "1mpp"), "acc_mean"] == pytest.approx(np.mean([0.7, 0.71, 0.72]))
    assert s.loc[("deepall", "1mpp"), "acc_min"] == pytest.approx(0.7) and s.loc[("deepall", "1mpp"), "acc_max"] == pytest.approx(0.72)
    assert s.loc[("masf", "0.25mpp"), "balanced_acc_mean"] == pytest.approx(0.85)
    assert list(summarize(rows).query("method == 'masf'")["mpp"]) == sorted(MPP.values())  # along the axis


def test_plot_script_writes_png_pdf_csv(tmp_path: Path) -> None:
    for i, (method, seed) in enumerate([("deepall", 0), ("deepall", 1), ("masf", 0)]):
        run = tmp_path / "sweep" / method / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps(_metrics(method, seed, 0.02 * i)))
    out = tmp_path / "curve"
    assert plot.main([str(tmp_path / "sweep"), "--out", str(out)]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 5000 and (tmp_path / "curve.pdf").is_file()
    rows = pd.read_csv(tmp_path / "curve.csv")
    assert len(rows) == 3 * len(MPP) and set(rows["method"]) == {"deepall", "masf"}
    assert len(pd.read_csv(tmp_path / "curve_summary.csv")) == 2 * len(MPP)
    assert plot.main([str(tmp_path / "nothing"), "--out", str(out)]) == 1
