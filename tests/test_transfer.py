"""The transfer map: explicit sources in the datamodule and config, and experiments/plot_transfer.py on
hand-written runs whose accuracies are planted (40x ↔ 400x the hardest pair)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from masf_lightning.data.datamodule import EpisodeSampler, MagnificationDataModule
from masf_lightning.errors import ConfigError
from tests.test_train_e2e import ROOT, run_train, tiny_overrides

sys.path.insert(0, str(ROOT / "experiments"))
import plot_transfer  # noqa: E402

MAGS = ("40x", "100x", "200x", "400x")


# -- data.sources -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (["400x"], "contains target=400x"),
        (["40x", "40x"], "lists a magnification twice"),
        ([], "non-empty list"),
        ("40x", "non-empty list"),
    ],
)
def test_bad_sources_are_one_line_config_errors(tmp_path: Path, sources: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        MagnificationDataModule(str(tmp_path), target="400x", sources=sources)
    assert "data.sources=" in str(exc.value) and "\n" not in str(exc.value)


def test_sources_follow_the_tables_order_and_must_be_its_domains(breakhis_3pt: Path, tmp_path: Path) -> None:
    """Sources in the table's domain order (40x before 400x), whatever order the user wrote; a name the table lacks
    is one line naming the table's domains."""
    dm = MagnificationDataModule(str(breakhis_3pt), target="40x", sources=["400x", "100x"], cache_dir=str(tmp_path / "cache"), progress=False)
    dm.setup()
    assert dm.sources == ["100x", "400x"]
    bad = MagnificationDataModule(str(breakhis_3pt), target="400x", sources=["50x"], cache_dir=str(tmp_path / "cache"), progress=False)
    with pytest.raises(ConfigError, match=r"^data.sources=\['50x'\]: 50x is not a domain of BreaKHis at .* \(domains: 40x, 100x, 200x, 400x\)$"):
        bad.setup()


def test_one_source_episode_has_no_meta_split() -> None:
    """DeepAll on one magnification: the episode still draws its batch; there is nothing to meta-test on."""
    import torch

    sampler = EpisodeSampler(pools={"40x": torch.arange(10)}, labels=torch.zeros(10, dtype=torch.long), batch_size=4)
    ep = sampler.episode(0)
    assert ep["meta_train"] == ["40x"] and ep["meta_test"] == [] and len(ep["domains"]["40x"]["index"]) == 4


def test_masf_with_one_source_is_one_line_error(tmp_path: Path) -> None:
    proc = run_train([*tiny_overrides(tmp_path / "data"), "method=masf", "+train_on=100x", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: method=masf needs at least 2 source magnifications for its meta-train/meta-test split; "
        "data.sources=['100x'] has 1 (train a single magnification with method=deepall)"
    ]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_single_source_deepall_is_evaluated_on_all_four(tmp_path: Path) -> None:
    """`+train_on=40x` in the transfer experiment: its own run folder, every magnification's test accuracy."""
    sweep = tmp_path / "sweep"
    proc = run_train([*tiny_overrides(tmp_path / "data"), "-m", "experiment=transfer_map", "method=deepall", "+train_on=40x", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((sweep / "tumor_type" / "deepall" / "only_40x" / "seed0" / "metrics.json").read_text())
    assert m["sources"] == ["40x"] and m["target"] == "400x"
    assert sorted(m["test_acc_by_domain"], key=MAGS.index) == list(MAGS)
    assert m["source_test_acc"] == m["test_acc_by_domain"]["40x"]


# -- plot_transfer.py -------------------------------------------------------------------------------
def _planted(i: int, j: int) -> float:
    """Accuracy falling with the zoom distance: in-domain 0.90, one step 0.70, two 0.55, 40x ↔ 400x 0.40."""
    return {0: 0.90, 1: 0.70, 2: 0.55, 3: 0.40}[abs(i - j)]


def _write_run(root: Path, method: str, sources: list[str], target: str, seed: int, accs: dict[str, float]) -> None:
    folder = root / method / ("only_" + sources[0] if len(sources) == 1 else "without_" + target) / f"seed{seed}"
    folder.mkdir(parents=True)
    metrics = {
        "method": method, "task": "tumor_type", "protocol": "patient", "selection": "source_val", "backbone": "small",
        "steps": 300, "seed": seed, "target": target, "sources": sources, "target_test_acc": accs[target], "test_acc_by_domain": accs,
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    cfg = {"method": {"name": method, "optimizers": "separate"}, "data": {"synthetic": {"seed": 0}}}
    (folder / "run_config.json").write_text(json.dumps(cfg))


@pytest.fixture
def transfer_runs(tmp_path: Path) -> Path:
    root = tmp_path / "transfer"
    for seed, shift in ((0, -0.01), (1, 0.01)):
        for i, src in enumerate(MAGS):
            accs = {d: _planted(i, j) + shift for j, d in enumerate(MAGS)}
            _write_run(root, "deepall", [src], "400x" if i < 2 else "40x", seed, accs)
        for held in MAGS:
            for method, bonus in (("deepall", 0.0), ("masf", 0.02)):
                accs = {d: (0.85 if d != held else 0.5 + bonus) + shift for d in MAGS}
                _write_run(root, method, [d for d in MAGS if d != held], held, seed, accs)
    return root


def test_plot_transfer_table_and_figure(transfer_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = tmp_path / "out" / "transfer"
    assert plot_transfer.main([str(transfer_runs), "--out", str(prefix)]) == 0
    out = capsys.readouterr().out
    for ext in ("png", "pdf"):
        assert prefix.with_name(f"transfer.{ext}").stat().st_size > 5000
    md = prefix.with_name("transfer.md").read_text()
    # seeds at −1 and +1 point around the planted value: mean = planted, sample std = √2
    assert "| 40× only | 90.00 ± 1.41 (n=2) * | 70.00 ± 1.41 (n=2) | 55.00 ± 1.41 (n=2) | 40.00 ± 1.41 (n=2) |" in md
    assert "| all but 200× | 85.00 ± 1.41 (n=2) * | 85.00 ± 1.41 (n=2) * | 52.00 ± 1.41 (n=2) | 85.00 ± 1.41 (n=2) * |" in md.split("MASF: leave one out")[1]
    assert "DeepAll: one magnification: hardest transfer 40× only → 400× (40.0%)" in out
    rows = list(csv.DictReader(io.StringIO(prefix.with_name("transfer.csv").read_text())))
    cell = next(r for r in rows if r["panel"] == "DeepAll: one magnification" and r["trained_on"] == "400x" and r["test"] == "40x")
    assert (cell["mean"], cell["n"], cell["seen"]) == ("40.0000", "2", "0")
    assert len(rows) == 3 * 4 * 4  # three panels of 4 × 4


def test_plot_transfer_refuses_mixed_settings(transfer_runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs of two step counts would be averaged into one map without this."""
    _write_run(transfer_runs / "other", "deepall", ["40x"], "400x", 5, {d: 0.5 for d in MAGS})
    m = json.loads((p := next((transfer_runs / "other").rglob("metrics.json"))).read_text())
    p.write_text(json.dumps({**m, "steps": 50}))
    assert plot_transfer.main([str(transfer_runs), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: runs of 2 settings") and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
