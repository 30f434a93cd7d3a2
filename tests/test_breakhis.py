"""BreaKHis index: real-format names, every accepted root level, and clear errors for misfiled images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from masf_lightning.data import breakhis as bh
from masf_lightning.errors import ConfigError, DataError

MAL = Path("BreaKHis_v1/histology_slides/breast/malignant/SOB")
BEN = Path("BreaKHis_v1/histology_slides/breast/benign/SOB")


def test_constants_and_helpers() -> None:
    assert bh.TUMOR_TYPES == ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
    assert bh.BENIGN_TYPES + bh.MALIGNANT_TYPES == bh.TUMOR_TYPES
    assert set(bh.SUBTYPE_FOLDERS) == set(bh.TUMOR_TYPES)
    assert bh.domain_name(400) == "400x"
    for name in ("400x", "400X", "400", 400, " 40x "):
        assert bh.parse_domain(name) in (40, 400)
    for bad in ("401x", "x", "", "400xx", "forty"):
        with pytest.raises(ConfigError, match="40x, 100x, 200x, 400x"):
            bh.parse_domain(bad)
    assert bh.CLASS_ORDERS["tumor_type"] == bh.TUMOR_TYPES
    assert bh.CLASS_ORDERS["malignancy"] == ("benign", "malignant")


def test_index_tiny_tree(tiny_breakhis: Path) -> None:
    index = bh.index_breakhis(tiny_breakhis)
    assert list(index.columns) == list(bh.INDEX_COLUMNS)
    assert len(index) == 10 * 4 * 2
    assert index["path"].is_monotonic_increasing and index["path"].is_unique
    assert index["magnification"].dtype == np.int64 and index["seq"].dtype == np.int64
    assert set(index["tumor_type"]) == set(bh.TUMOR_TYPES)
    assert (
        index["malignancy"] == np.where(index["tumor_type"].isin(bh.BENIGN_TYPES), "benign", "malignant")
    ).all()
    for p in index["path"].head(3):
        assert (tiny_breakhis / p).is_file() and p.startswith("BreaKHis_v1/histology_slides/breast/")
    # the year-15 patient
    row = index[index["path"].str.endswith("SOB_M_PC-15-190EF-100-001.png")].iloc[0]
    assert (row["patient"], row["tumor_type"], row["magnification"], row["seq"]) == ("15-190EF", "PC", 100, 1)
    # 14-13412 kept under DC and LC, one patient id
    dup = index[index["patient"] == "14-13412"]
    assert sorted(dup["tumor_type"].unique()) == ["DC", "LC"] and len(dup) == 16


@pytest.mark.parametrize(
    "level", ["", "BreaKHis_v1", "BreaKHis_v1/histology_slides", "BreaKHis_v1/histology_slides/breast"]
)
def test_root_at_each_level(tiny_breakhis: Path, level: str) -> None:
    root = tiny_breakhis / level
    index = bh.index_breakhis(root)
    assert len(index) == 80
    assert all((root / p).is_file() for p in index["path"])
    assert index["path"].iloc[0].startswith("benign/" if level.endswith("breast") else "")


@pytest.mark.parametrize("level", ["", "BreaKHis_v1"])
def test_kaggle_double_nesting(tmp_path: Path, make_breakhis_tree, level: str) -> None:
    make_breakhis_tree(tmp_path, prefix=("BreaKHis_v1", "BreaKHis_v1", "histology_slides", "breast"))
    (tmp_path / "BreaKHis_v1" / "Folds.csv").write_text("fold,mag,grp,filename\n")
    index = bh.index_breakhis(tmp_path / level)
    assert len(index) == 80
    assert all((tmp_path / level / p).is_file() for p in index["path"])


def test_non_png_files_are_ignored(tiny_breakhis: Path) -> None:
    folder = tiny_breakhis / MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X"
    (folder / "Thumbs.db").write_bytes(b"\0")
    (tiny_breakhis / MAL / "notes.txt").write_text("x")
    assert len(bh.index_breakhis(tiny_breakhis)) == 80


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        # name says 100 but the file sits in 40X
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/SOB_M_DC-14-2523-100-009.png", "40X"),
        # a benign name under malignant/
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/SOB_B_A-14-2523-40-009.png", "under malignant/"),
        # type in the name contradicts the subtype folder
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/SOB_M_LC-14-2523-40-009.png", "ductal_carcinoma"),
        # patient in the name contradicts the patient folder
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/SOB_M_DC-14-9999-40-009.png", "SOB_M_DC_14-2523"),
        # letter contradicts type
        (BEN / "adenosis/SOB_B_A_14-22549AB/40X/SOB_M_A-14-22549AB-40-009.png", "contradicts tumour type"),
        # unparseable names
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/image_001.png", "SOB_<B|M>"),
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/SOB_M_DC-14-2523-40.png", "SOB_<B|M>"),
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/SOB_M_XX-14-2523-40-009.png", "XX"),
        (MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X/SOB_M_DC-14-2523-50-009.png", "magnification 50"),
        # wrong depth
        (MAL / "ductal_carcinoma/SOB_M_DC-14-2523-40-009.png", "depth"),
    ],
)
def test_misfiled_or_unparseable_file_is_a_data_error(tiny_breakhis: Path, rel: Path, reason: str) -> None:
    (tiny_breakhis / rel).write_bytes(b"png")
    with pytest.raises(DataError) as err:
        bh.index_breakhis(tiny_breakhis)
    msg = str(err.value)
    assert rel.name in msg and reason in msg and "data.on_bad_file=skip" in msg
    assert "\n" not in msg


def test_skip_warns_once_with_count(tiny_breakhis: Path) -> None:
    folder = tiny_breakhis / MAL / "ductal_carcinoma/SOB_M_DC_14-2523/40X"
    (folder / "SOB_M_DC-14-2523-100-009.png").write_bytes(b"png")
    (folder / "broken.png").write_bytes(b"png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = bh.index_breakhis(tiny_breakhis, on_error="skip")
    assert len(caught) == 1
    msg = str(caught[0].message)
    assert "skipped 2" in msg and "SOB_M_DC-14-2523-100-009.png" in msg
    assert len(index) == 80


def test_bad_on_error_is_config_error(tiny_breakhis: Path) -> None:
    with pytest.raises(ConfigError, match="on_error"):
        bh.index_breakhis(tiny_breakhis, on_error="ignore")


def test_empty_missing_and_imageless_roots(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        bh.index_breakhis(tmp_path / "nope")
    with pytest.raises(DataError, match="expected BreaKHis_v1/histology_slides/breast") as err:
        bh.index_breakhis(tmp_path)
    assert str(tmp_path) in str(err.value)
    folder = tmp_path / MAL / "ductal_carcinoma"
    folder.mkdir(parents=True)
    (folder / "Thumbs.db").write_bytes(b"\0")
    with pytest.raises(DataError, match="no BreaKHis images"):
        bh.index_breakhis(tmp_path)


def test_ambiguous_root(tmp_path: Path, make_breakhis_tree) -> None:
    make_breakhis_tree(tmp_path, [("A", "14-22549AB")])
    make_breakhis_tree(tmp_path, [("A", "14-22549AB")], prefix=("breast",))
    with pytest.raises(DataError, match="ambiguous"):
        bh.index_breakhis(tmp_path)


def test_summary_and_verbose(tiny_breakhis: Path, capsys: pytest.CaptureFixture[str]) -> None:
    index = bh.index_breakhis(tiny_breakhis, verbose=True)
    out = capsys.readouterr().out
    assert out.strip() == bh.summarize_index(index)
    assert "400x" in out and "80 images, 10 patient folders, 9 distinct patients" in out
    dc_line = next(line for line in out.splitlines() if line.startswith("DC "))
    assert dc_line.split() == ["DC", "4", "4", "4", "4", "16", "2"]


def _official_like_index() -> pd.DataFrame:
    """A synthetic index with exactly the official marginal counts (no files needed)."""
    mags = np.repeat(list(bh.OFFICIAL_PER_MAGNIFICATION), list(bh.OFFICIAL_PER_MAGNIFICATION.values()))
    types = np.repeat(list(bh.OFFICIAL_PER_TYPE), list(bh.OFFICIAL_PER_TYPE.values()))
    n_patients = dict(zip(bh.TUMOR_TYPES, (4, 10, 3, 7, 38, 5, 9, 6), strict=True))
    patients = [f"14-{i % n_patients[t]}{t}" for i, t in enumerate(types)]
    return pd.DataFrame(
        {
            "path": [f"f{i}.png" for i in range(len(types))],
            "tumor_type": types,
            "patient": patients,
            "magnification": mags,
        }
    )


def test_check_against_official() -> None:
    index = _official_like_index()
    assert bh.check_against_official(index) == []
    diffs = bh.check_against_official(index.iloc[:-1])
    assert "images: 7,908 (official 7,909)" in diffs and "images at 400x: 1,819 (official 1,820)" in diffs


def test_cli(tiny_breakhis: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bh.main([str(tiny_breakhis)]) == 0
    out = capsys.readouterr().out
    assert "differs from the official" in out and "images: 80 (official 7,909)" in out
    assert bh.main([str(tmp_path / "missing")]) == 2
    assert "error: BreaKHis root" in capsys.readouterr().err
