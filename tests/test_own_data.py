"""A user's own data: a manifest and a folder made from the synthetic generator's images, renamed to three domains
5x/10x/20x (2, 1, 0.5 µm/px) and three classes, trained, tabulated and used through train.py; every bad input one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from masf_lightning import predict
from masf_lightning.config.callback import check_run
from masf_lightning.data.breakhis import breakhis_table
from masf_lightning.data.synthetic import generate_synthetic_breakhis
from masf_lightning.errors import MasfError
from tests.test_train_e2e import ROOT, run_train, tiny_overrides

DOMAINS = {"40x": ("5x", 2.0), "100x": ("10x", 1.0), "200x": ("20x", 0.5)}  # BreaKHis's 400x left out
CLASSES = {"A": "benign", "F": "benign", "PT": "benign", "TA": "benign", "DC": "ductal", "MC": "ductal", "LC": "lobular", "PC": "lobular"}
TINY = [o for o in tiny_overrides(Path("/unused"), synthetic=False) if not o.startswith("paths.data")]


@pytest.fixture(scope="module")
def own(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same images as a manifest (M.csv beside them) and as DIR/<domain>/<class>/<patient>_<n>.png."""
    base = tmp_path_factory.mktemp("own")
    root = generate_synthetic_breakhis(base / "syn", patients_per_type=3, images_per_magnification=2, size=(64, 42), progress=False)
    frame = breakhis_table(root).frame
    frame = frame[frame["domain"].isin(list(DOMAINS))]
    manifest = pd.DataFrame({
        "path": "syn/" + frame["path"], "domain": frame["domain"].map(lambda d: DOMAINS[d][0]),
        "mpp": frame["domain"].map(lambda d: DOMAINS[d][1]), "patient": frame["patient"],
        "label": frame["tumor_type"].map(CLASSES), "scanner": "synthetic",
    })  # fmt: skip
    manifest.to_csv(base / "M.csv", index=False)
    folder = base / "folder"
    for i, row in enumerate(manifest.itertuples()):
        dest = folder / row.domain / row.label / f"{row.patient}_{i:04d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(base / row.path, dest)
    return {"base": base, "manifest": base / "M.csv", "folder": folder}


def test_manifest_trains_every_method_and_is_used_like_breakhis(own: dict[str, Path], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    data = ["data=manifest", f"data.manifest={own['manifest']}", "task=label", "target=20x"]
    proc = run_train([*TINY, *data, f"paths.data={tmp_path / 'cache'}", "-m", "method=masf,deepall,mldg,coral", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = sorted(sweep.rglob("metrics.json"))
    assert len(found) == 4
    for path in found:
        m = json.loads(path.read_text())
        assert set(m["test_acc_by_domain"]) == {"5x", "10x", "20x"} and m["sources"] == ["5x", "10x"]
        assert m["domains"] == ["5x", "10x", "20x"] and m["mpp_by_domain"] == {"5x": 2.0, "10x": 1.0, "20x": 0.5}
        assert m["classes"] == ["benign", "ductal", "lobular"] and m["task"] == "label"
    split = pd.read_csv(found[0].parent / "split_manifest.csv")
    assert {"path", "domain", "patient", "label", "split"} <= set(split.columns)
    assert split.groupby("patient")["split"].nunique().max() == 1  # patient-disjoint

    table = subprocess.run([sys.executable, str(ROOT / "experiments" / "collect.py"), str(sweep)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert "| 20x |" in table.stdout.replace("×", "x") and "data manifest" in table.stdout and "Paper" not in table.stdout

    run_dir = next(p.parent for p in found if "/masf/" in str(p))
    images = [own["base"] / p for p in split.loc[split["domain"] == "20x", "path"][:3]]
    out = tmp_path / "preds.csv"
    assert predict.main([str(run_dir), *map(str, images), "--out", str(out), "--device", "cpu"]) == 0
    assert list(pd.read_csv(out).columns) == ["path", "pred", "confidence", "p_benign", "p_ductal", "p_lobular"]
    from masf_lightning import embed

    emb = tmp_path / "emb.parquet"
    assert embed.main([str(run_dir), *map(str, images), "--out", str(emb), "--device", "cpu"]) == 0
    _, meta, _ = embed.read_embeddings(emb)
    expected = split.set_index("path").loc[[str(p.relative_to(own["base"])) for p in images]]
    assert list(meta["domain"]) == ["20x"] * 3 and list(meta["label"]) == list(expected["label"])
    assert list(meta["patient"]) == list(expected["patient"])


def test_folder_layout_trains(own: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    data = ["data=folder", f"data.root={own['folder']}", "data.patient_regex='^(.+)_\\d+\\.png$'", "target=20x", "method=deepall"]
    proc = run_train([*TINY, *data, f"paths.data={tmp_path / 'cache'}", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["task"] == "class" and m["classes"] == ["benign", "ductal", "lobular"]
    assert set(m["test_acc_by_domain"]) == {"5x", "10x", "20x"} and m["sources"] == ["5x", "10x"]  # by their names: no mpp here
    assert m["dataset"] == str(own["folder"]) and json.loads((run / "run_config.json").read_text())["data"]["patient_regex"] == r"^(.+)_\d+\.png$"


def _check(overrides: list[str]) -> str:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with pytest.raises(MasfError) as exc:
        check_run(cfg)
    return str(exc.value)


def _bad(own: dict[str, Path], tmp_path: Path, edit: object, name: str = "bad.csv") -> str:
    frame = pd.read_csv(own["manifest"])
    frame = edit(frame)  # type: ignore[operator]
    path = own["base"] / name  # beside the images: relative paths still resolve
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=False)
    return str(path)


@pytest.mark.parametrize(
    ("edit", "overrides", "needle"),
    [
        (lambda f: f.drop(columns=["patient"]), [], "no column patient (columns found: path, domain, mpp, label, scanner)"),
        (lambda f: f.assign(path=[f"gone/x{i}.png" for i in range(5)] + list(f["path"][5:])), [], "5 path(s) are not readable images"),
        (lambda f: f.assign(path=[*f["path"][:1], "notes.txt", *f["path"][2:]]), [], "notes.txt (not an image file)"),
        (lambda f: pd.concat([f, f.iloc[:1]]), [], "path(s) listed more than once"),
        (lambda f: f[~((f["domain"] == "5x") & (f["label"] != "benign"))], [], "domain 5x has 1 class(es) in column label"),
        (lambda f: f[~((f["domain"] != "20x") & (f["label"] == "lobular"))], [], "class 'lobular' of column label has no image in any source domain"),
        (lambda f: f, ["target=40x"], "target=40x: not a domain of"),
        (lambda f: f, ["task=grade"], "task=grade: not a label column of"),
        (lambda f: f, ["data.classes=[benign,ductal]"], "data.classes=['benign', 'ductal']: lacks lobular"),
        (lambda f: f.assign(mpp=[None, *f["mpp"][1:]]), [], "has mpp in"),
        (lambda f: "", [], "the file is empty"),
        (lambda f: f, ["data.sources=[5x,40x]"], "data.sources=[5x,40x]: 40x is not a domain of"),
    ],
    ids=["column", "missing", "not-image", "duplicate", "one-class", "class-absent", "target", "task", "classes", "mpp", "empty", "sources"],
)
def test_bad_input_is_one_line(own: dict[str, Path], tmp_path: Path, edit: object, overrides: list[str], needle: str) -> None:
    path = _bad(own, tmp_path, edit, f"bad-{tmp_path.name}.csv")
    message = _check(["data=manifest", f"data.manifest={path}", "task=label", "target=20x", *overrides])
    assert needle in message and "\n" not in message, message


def test_too_few_patients_per_class_names_the_class(own: dict[str, Path], tmp_path: Path) -> None:
    """One lobular patient: the patient split cannot test lobular; said per class before training (exit 2, no folder)."""
    keep = pd.read_csv(own["manifest"])
    lobular = sorted(keep.loc[keep["label"] == "lobular", "patient"].unique())
    path = _bad(own, tmp_path, lambda f: f[~f["patient"].isin(lobular[1:])], "few.csv")
    run = tmp_path / "run"
    proc = run_train([*TINY, "data=manifest", f"data.manifest={path}", "task=label", "target=20x", f"paths.data={tmp_path}", f"hydra.run.dir={run}"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'lobular'" in lines[0], proc.stderr[-2000:]


def test_bad_manifest_exits_2_before_any_folder(own: dict[str, Path], tmp_path: Path) -> None:
    path = _bad(own, tmp_path, lambda f: f.drop(columns=["domain"]), "nodomain.csv")
    run = tmp_path / "run"
    proc = run_train(["data=manifest", f"data.manifest={path}", "task=label", "target=20x", f"hydra.run.dir={run}"])
    assert proc.returncode == 2 and not run.exists()
    assert proc.stderr.strip().splitlines() == [f"error: {path}: no column domain (columns found: path, mpp, patient, label, scanner)"]


def test_index_cli_prints_domains_classes_patients(own: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from masf_lightning.data.index import main

    assert main([str(own["manifest"])]) == 0
    out = capsys.readouterr().out
    assert "144 images, 24 patients, 3 domains" in out and "µm per pixel: 5x 2, 10x 1, 20x 0.5" in out
    assert out.splitlines()[3].split() == ["5x", "10x", "20x", "patients"]
    assert main([str(own["folder"]), "--patient-regex", r"^(.+)_\d+\.png$"]) == 0
    assert "144 images, 24 patients" in capsys.readouterr().out


def test_manifest_split_column_and_leaks(own: dict[str, Path], tmp_path: Path) -> None:
    from masf_lightning.data.splits import make_split

    frame = pd.read_csv(own["manifest"])
    patients = sorted(frame["patient"].unique())
    frame["split"] = frame["patient"].map({p: ("train", "val", "test")[i % 3] for i, p in enumerate(patients)})
    split = make_split(frame, "manifest_split")
    assert (split == frame["split"]).all()
    frame.loc[0, "split"] = "test" if frame.loc[0, "split"] != "test" else "train"
    with pytest.raises(MasfError, match="manifest_split: patient .* has images in .* split.allow_leak=true"):
        make_split(frame, "manifest_split")
    assert (make_split(frame, "manifest_split", allow_leak=True) == frame["split"]).all()


def test_no_breakhis_constant_outside_its_indexer_and_the_paper_recipe() -> None:
    """BreaKHis's magnifications and tumour types are written in data/breakhis.py (and the synthetic generator that
    draws BreaKHis, and the paper recipe) alone: every other module reads the dataset table."""
    allowed = {"data/breakhis.py", "data/download.py"}
    literals = ('"40x", "100x"', "(40, 100, 200, 400)", '"DC", "LC"', '("tumor_type", "malignancy")', '"adenosis"')
    for path in sorted((ROOT / "masf_lightning").rglob("*.py")):
        rel = path.relative_to(ROOT / "masf_lightning").as_posix()
        if rel in allowed or rel.startswith("data/synthetic/"):
            continue
        text = path.read_text()
        for literal in literals:
            assert literal not in text, f"masf_lightning/{rel} writes BreaKHis's {literal}"
