"""Bad input: one clear line naming the file or key, a non-zero exit of train.py, nothing earlier lost.

The list and the messages are documented in docs/errors.md.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from torchvision.io import write_png

from masf_lightning.data.synthetic import generate_synthetic_breakhis
from tests.test_train_e2e import run_train, tiny_overrides

BREAST = Path("BreaKHis_v1/histology_slides/breast")


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished good run, its cache and a pristine tree: what a failing run must leave untouched."""
    base = tmp_path_factory.mktemp("earlier")
    tree = generate_synthetic_breakhis(base / "tree", patients_per_type=3, images_per_magnification=2, size=(64, 42), progress=False)
    run_dir = base / "run"
    args = [*tiny_overrides(base / "data", synthetic=False), "data=breakhis", f"data.root={tree}", f"paths.cache={base / 'cache'}", "steps=2", f"hydra.run.dir={run_dir}"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {"tree": tree, "run": run_dir, "cache": base / "cache", "data": base / "data"}


def first_file(tree: Path, pattern: str) -> Path:
    return sorted((tree / BREAST).rglob(pattern))[0]


def corrupt(tree: Path) -> str:
    f = first_file(tree, "*-100-001.png")
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return f.name


def truncate(tree: Path) -> str:
    f = first_file(tree, "*-200-002.png")
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return f.name


def grayscale(tree: Path) -> str:
    f = first_file(tree, "*-40-001.png")
    write_png(torch.full((1, 42, 64), 128, dtype=torch.uint8), str(f))
    return f.name


def unparseable(tree: Path) -> str:
    folder = first_file(tree, "*-40-001.png").parent
    shutil.copy(first_file(tree, "*-40-001.png"), folder / "scan 12 final.png")
    return "scan 12 final.png"


def contradicting(tree: Path) -> str:
    f = first_file(tree, "*-40-002.png")
    wrong = f.with_name(f.name.replace("-40-", "-100-"))
    f.rename(wrong)  # a 100x name inside a 40X folder
    return wrong.name


def class_missing_in_target(tree: Path) -> str:
    for folder in (tree / BREAST).rglob("SOB_M_PC_*/400X"):
        shutil.rmtree(folder)
    return "PC"


def target_absent(tree: Path) -> str:
    for folder in list((tree / BREAST).rglob("400X")):
        shutil.rmtree(folder)
    return "target=400x"


CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "corrupt_png": (corrupt, "corrupt or truncated"),
    "truncated_png": (truncate, "corrupt or truncated"),
    "grayscale_png": (grayscale, "grayscale"),
    "unparseable_name": (unparseable, ""),
    "name_contradicts_folder": (contradicting, ""),
    "class_missing_in_target": (class_missing_in_target, "400x"),
    "target_absent": (target_absent, "not a domain of BreaKHis"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_data_one_line_nonzero_nothing_lost(case: str, earlier: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(earlier["tree"], tree)
    breaker, phrase = CASES[case]
    needle = breaker(tree)
    before = {k: snapshot(earlier[k]) for k in ("run", "cache", "tree")}
    args = [*tiny_overrides(earlier["data"], synthetic=False), "data=breakhis", f"data.root={tree}", f"paths.cache={earlier['cache']}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_train(args)
    assert proc.returncode != 0, proc.stdout[-1000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert needle in errors[0] and phrase in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    assert {k: snapshot(earlier[k]) for k in ("run", "cache", "tree")} == before
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_missing_magnification_for_some_patients_is_allowed_with_a_warning(earlier: dict[str, Path], tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(earlier["tree"], tree)
    manifest = pd.read_csv(earlier["run"] / "split_manifest.csv")  # the patient split ignores which images exist
    patient = sorted(manifest.query("tumor_type == 'F' and split == 'val'")["patient"].unique())[0]
    shutil.rmtree(next((tree / BREAST).rglob(f"SOB_B_F_{patient}/200X")))
    args = [*tiny_overrides(earlier["data"], synthetic=False), "data=breakhis", f"data.root={tree}", f"paths.cache={tmp_path / 'cache'}", "steps=2", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = run_train(args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{patient} (no 200x)" in proc.stderr


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("target=300x", "target=300x"),
        ("data.root={missing}", "{missing}"),
        ("data.root={empty}", "{empty}"),
        ("backbone=alexnet", "alexnet-owt-7be5be79.pth"),
        ("hydra.run.dir={afile}/run", "hydra.run.dir"),
    ],
)
def test_bad_config_one_line_nonzero(override: str, needle: str, earlier: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    paths = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "afile": tmp_path / "afile"}
    override, needle = override.format(**paths), needle.format(**paths)
    tiny = [a for a in tiny_overrides(earlier["data"], synthetic=False) if not (override.startswith("backbone=") and a.startswith("backbone."))]
    args = [*tiny, "data=breakhis", f"data.root={earlier['tree']}", f"paths.cache={earlier['cache']}", f"hydra.run.dir={tmp_path / 'run'}", override]
    env_home = {"TORCH_HOME": str(tmp_path / "torch_home")}  # guarantees the weights are absent
    proc = run_train(args, env=env_home)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_unknown_method_names_the_group(earlier: dict[str, Path], tmp_path: Path) -> None:
    proc = run_train([*tiny_overrides(earlier["data"]), "method=foo", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode != 0
    assert "method/foo" in proc.stderr.splitlines()[0] and "Traceback" not in proc.stderr


def test_unknown_key_names_the_key(earlier: dict[str, Path], tmp_path: Path) -> None:
    proc = run_train([*tiny_overrides(earlier["data"]), "stepz=3", f"hydra.run.dir={tmp_path / 'run'}"])
    assert proc.returncode != 0
    assert "stepz" in proc.stderr.splitlines()[0] and "Traceback" not in proc.stderr


# -- config values: checked before anything is written (masf_lightning/config) ----------------------------------
@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("steps=0", "error: steps=0: must be >= 1"),
        ("data.batch_size_per_domain=0", "error: data.batch_size_per_domain=0: must be >= 1"),
        ("seed=abc", "error: seed=abc: must be an integer in 0..4294967295"),
        ("hparams.lr=-1", "error: hparams.lr=-1: must be > 0"),
        ("hparams.temperature=0", "error: hparams.temperature=0: must be > 0"),
    ],
)
def test_bad_value_is_one_line_before_anything_is_written(override: str, line: str, tmp_path: Path) -> None:
    """The run folder (Hydra's default, under the working directory), its .hydra/, the data: none appears."""
    started = time.monotonic()
    proc = run_train([*tiny_overrides(tmp_path / "data"), override], cwd=tmp_path)
    assert time.monotonic() - started < 10
    assert (proc.returncode, proc.stderr.strip().splitlines(), proc.stdout) == (2, [line], "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_sweep_with_one_bad_value_fails_before_any_job(launcher: str, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*tiny_overrides(tmp_path / "data"), "-m", "method=masf,deepall", "hparams.lr=1e-3,-1", f"hydra.sweep.dir={sweep}"]
    proc = run_train([*args, *(["hydra/launcher=joblib"] if launcher == "joblib" else [])], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == ["error: hparams.lr=-1: must be > 0 (sweep job method=masf hparams.lr=-1; no job started)"]
    assert list(tmp_path.iterdir()) == []  # no sweep folder, no data generated
