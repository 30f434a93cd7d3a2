"""Split protocols: patient-disjoint, the paper's 45/45/10, official folds, leakage and coverage checks."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from masf_lightning.data.breakhis import DOMAINS, TUMOR_TYPES, index_breakhis
from masf_lightning.data.manifest import (
    check_split_covers,
    read_split_manifest,
    split_from_manifest,
    write_split_manifest,
)
from masf_lightning.data.splits import check_patient_leakage, make_split, read_fold_file
from masf_lightning.errors import ConfigError, DataError


@pytest.fixture
def index3(breakhis_3pt: Path) -> pd.DataFrame:
    return index_breakhis(breakhis_3pt)


def _patients(index: pd.DataFrame, split: pd.Series, name: str) -> set[str]:
    return set(index.loc[split == name, "patient"])


def test_patient_protocol_is_disjoint_and_covers_types(index3: pd.DataFrame) -> None:
    split = make_split(index3, "patient", seed=0)
    assert split.index.equals(index3.index) and set(split) == {"train", "val", "test"}
    tr, va, te = (_patients(index3, split, s) for s in ("train", "val", "test"))
    assert not (tr & va) and not (tr & te) and not (va & te)
    # every type has 3 patients (14-13412 counts as DC, its majority/first type), so every split has every type
    majority = index3.assign(split=split)[
        ~((index3["patient"] == "14-13412") & (index3["tumor_type"] == "LC"))
    ]
    for s in ("train", "val", "test"):
        assert set(majority.loc[majority["split"] == s, "tumor_type"]) == set(TUMOR_TYPES), s
    # 14-13412 (DC and LC copies) is one group: all its rows on one side
    assert split[index3["patient"] == "14-13412"].nunique() == 1
    check_split_covers(index3, split, "tumor_type", DOMAINS)


def test_patient_protocol_determinism(index3: pd.DataFrame) -> None:
    a, b = make_split(index3, seed=0), make_split(index3, seed=0)
    assert a.equals(b)
    assert not a.equals(make_split(index3, seed=1))
    # input row order does not change the assignment
    shuffled = index3.sample(frac=1.0, random_state=3)
    assert make_split(shuffled, seed=0).reindex(index3.index).equals(a)


def test_patient_protocol_small_types(index3: pd.DataFrame) -> None:
    """2 patients of a type: one train, one test; 1 patient: train only."""
    keep = ~index3["patient"].isin(["14-1000", "14-2000", "14-2001"])  # A keeps 2 patients, F keeps 1
    sub = index3[keep]
    split = make_split(sub, seed=0)
    a = sub.assign(split=split)
    assert sorted(a.loc[a["tumor_type"] == "A"].groupby("patient")["split"].first()) == ["test", "train"]
    assert set(a.loc[a["tumor_type"] == "F", "split"]) == {"train"}


def test_patient_fractions_are_configurable(index3: pd.DataFrame) -> None:
    split = make_split(index3, fractions=(0.5, 0.0, 0.5))
    assert "val" not in set(split)
    # the config check's words (masf_lightning/relations.py), for code that calls make_split without Hydra
    with pytest.raises(ConfigError, match=r"^split.fractions=\[0.5,0.2,0.2\]: must be a list of 3 numbers >= 0 .* summing to 1"):
        make_split(index3, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match="train and test > 0"):
        make_split(index3, fractions=(1.0, 0.0, 0.0))
    with pytest.raises(ConfigError, match="^split.protocol=kfold: must be one of patient, paper, official_fold, manifest_split$"):
        make_split(index3, "kfold")
    with pytest.raises(ConfigError, match="split.seed"):
        make_split(index3, seed=-1)


def _synthetic_index(per_mag: dict[int, int]) -> pd.DataFrame:
    rows = [
        (f"m{mag}/img{i:05d}.png", f"14-{i % 50}", TUMOR_TYPES[i % 8], mag)
        for mag, n in per_mag.items()
        for i in range(n)
    ]
    frame = pd.DataFrame(rows, columns=["path", "patient", "tumor_type", "magnification"])
    return frame.assign(domain=[f"{m}x" for m in frame["magnification"]])


def test_paper_protocol_45_45_10_per_magnification() -> None:
    per_mag = {40: 1995, 100: 2081, 200: 2013, 400: 1820}
    index = _synthetic_index(per_mag)
    split = make_split(index, "paper", seed=0)
    for mag, n in per_mag.items():
        counts = split[index["magnification"] == mag].value_counts()
        assert abs(counts["train"] - 0.45 * n) <= 1
        assert abs(counts["test"] - 0.45 * n) <= 1
        assert abs(counts["val"] - 0.10 * n) <= 1
    assert split.equals(make_split(index, "paper", seed=0))
    assert not split.equals(make_split(index, "paper", seed=1))
    with pytest.raises(ConfigError, match=r"^split.fractions=\[0.7,0.1,0.2\]: split.protocol=paper fixes 45/10/45"):
        make_split(index, "paper", fractions=(0.7, 0.1, 0.2))


def _write_fold(
    path: Path, index: pd.DataFrame, test_patients: set[str], drop: int = 0, extra: str = ""
) -> None:
    lines = []
    for _, row in index.iloc[drop:].iterrows():
        grp = "test" if row["patient"] in test_patients else "train"
        lines.append(f"{row['path'].rsplit('/', 1)[-1]}|{row['magnification']}|1|{grp}")
    path.write_text("\n".join(lines) + "\n" + extra)


def test_official_fold(index3: pd.DataFrame, tmp_path: Path) -> None:
    # one test patient per type except DC, which keeps 3 train patients (14-13412, 14-5001, 14-5002AB)
    test_patients = {p for p in index3["patient"] if p.endswith("AB") and not p.startswith("14-5")}
    fold = tmp_path / "dsfold1.txt"
    _write_fold(fold, index3, test_patients, drop=5)
    assert len(read_fold_file(fold)) == len(index3) - 5
    split = make_split(index3, "official_fold", seed=0, fold_file=fold)
    assert (split.iloc[:5] == "unused").all()
    assert _patients(index3, split, "test") == test_patients
    val = _patients(index3, split, "val")
    train = _patients(index3, split, "train")
    assert val and not (val & train) and not (val & test_patients)
    # val only from types with >= 3 train patients: DC alone (its 14-13412 group includes the LC copy)
    assert set(index3.loc[split == "val", "tumor_type"]) <= {"DC", "LC"}
    assert make_split(index3, "official_fold", seed=0, fold_file=fold).equals(split)


def test_official_fold_errors(index3: pd.DataFrame, tmp_path: Path) -> None:
    fold = tmp_path / "dsfold1.txt"
    with pytest.raises(ConfigError, match="^split.fold_file=null: split.protocol=official_fold needs"):
        make_split(index3, "official_fold")
    with pytest.raises(DataError, match="does not exist"):
        make_split(index3, "official_fold", fold_file=fold)
    _write_fold(
        fold,
        index3,
        set(),
        extra="SOB_B_A-14-99999-40-001.png|40|1|train\nSOB_B_A-14-99998-40-001.png|40|1|test\n",
    )
    with pytest.raises(
        DataError, match=r"names 2 image\(s\) missing from the index, first SOB_B_A-14-99999-40-001.png"
    ):
        make_split(index3, "official_fold", fold_file=fold)
    _write_fold(fold, index3, set(), extra="garbage line\n")
    with pytest.raises(DataError, match=r"dsfold1.txt:\d+: expected"):
        make_split(index3, "official_fold", fold_file=fold)
    # the file itself leaks: one image of a patient in test, the rest in train
    lines = fold.read_text().splitlines()[:-1]
    lines[0] = lines[0].replace("|train", "|test")
    fold.write_text("\n".join(lines))
    with pytest.raises(DataError, match="not patient-disjoint"):
        make_split(index3, "official_fold", fold_file=fold)


def test_leakage_check_fires(index3: pd.DataFrame) -> None:
    split = make_split(index3, seed=0)
    check_patient_leakage(index3, split)
    leaking = split.copy()
    first = index3.index[index3["patient"] == "14-13412"]
    leaking[first[-1]] = "test" if split[first[0]] != "test" else "train"  # one LC copy changes side
    with pytest.raises(DataError, match="patient 14-13412 has images in"):
        check_patient_leakage(index3, leaking)
    paper = make_split(index3, "paper", seed=0)  # image-level: leaks by design
    with pytest.raises(DataError, match="leaking patient"):
        check_patient_leakage(index3, paper)


def test_manifest_round_trip(index3: pd.DataFrame, tmp_path: Path) -> None:
    split = make_split(index3, seed=0)
    path = tmp_path / "run" / "split.csv"
    write_split_manifest(index3, split, path, labels=["tumor_type", "malignancy"])
    manifest = read_split_manifest(path)
    assert list(manifest.columns) == ["path", "domain", "patient", "tumor_type", "malignancy", "split"]
    pd.testing.assert_series_equal(manifest["path"], index3["path"], check_dtype=False)
    assert split_from_manifest(index3, manifest).equals(split)
    # a manifest written before domains had names (magnification as a number) reads with its domains
    old = manifest.drop(columns=["domain"]).assign(magnification=index3["magnification"])
    old.to_csv(tmp_path / "old.csv", index=False)
    assert list(read_split_manifest(tmp_path / "old.csv")["domain"]) == list(index3["domain"])
    assert [p.name for p in path.parent.iterdir()] == ["split.csv"]  # no temp file left behind
    with pytest.raises(DataError, match="does not exist"):
        read_split_manifest(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("path,split\na.png,train\n")
    with pytest.raises(DataError, match="lacks column"):
        read_split_manifest(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="not in the split manifest"):
        split_from_manifest(index3, manifest.iloc[1:])


def test_check_split_covers(index3: pd.DataFrame) -> None:
    split = make_split(index3, seed=0)
    needed = {"train": ["40x", "100x", "200x"], "val": ["40x", "100x", "200x"], "test": ["400x"]}
    check_split_covers(index3, split, "tumor_type", needed)
    check_split_covers(index3, split, "malignancy", DOMAINS)
    gap = split.copy()
    gap[(index3["tumor_type"] == "PT") & (index3["magnification"] == 400) & (split == "test")] = "unused"
    with pytest.raises(DataError, match=r"class 'PT' with no images in domain 400x, split 'test'"):
        check_split_covers(index3, gap, "tumor_type", needed)
    check_split_covers(index3, gap, "tumor_type", {"train": ["400x"]})
    with pytest.raises(ConfigError, match="domain"):
        check_split_covers(index3, split, "tumor_type", {"test": ["500x"]})


def test_patient_protocol_says_per_type_why_val_is_empty(index3: pd.DataFrame) -> None:
    """Two patients per type fill train and test; val (fraction 0.1) stays empty: refused, type by type."""
    two = index3[~index3["patient"].str.endswith("AB")]  # 14-13412 stays, filed under DC and LC
    with pytest.raises(DataError) as err:
        make_split(two, seed=0)
    msg = str(err.value)
    assert "\n" not in msg and "could not place any patient in 'val'" in msg and "protocol=paper" in msg
    for t in TUMOR_TYPES:
        assert f"{t} 2 (1 train, 1 test)" in msg, t
    assert set(make_split(two, fractions=(0.5, 0.0, 0.5))) == {"train", "test"}  # no val asked for


def test_official_fold_says_per_type_why_val_is_empty(index3: pd.DataFrame, tmp_path: Path) -> None:
    fold = tmp_path / "dsfold1.txt"
    _write_fold(fold, index3, {p for p in index3["patient"] if p.endswith("AB")})  # 2 train patients per type
    with pytest.raises(DataError, match=r"official_fold could not place any patient in 'val'.*DC 2 \(2 train\)"):
        make_split(index3, "official_fold", fold_file=fold)


def test_coverage_gaps_are_named_per_class_with_their_patients(index3: pd.DataFrame) -> None:
    sub = index3[~index3["patient"].isin(["14-2000", "14-2001"])]  # F keeps one patient: train only
    sub = sub[~((sub["tumor_type"] == "PT") & sub["magnification"].isin([100, 200]))]
    split = make_split(sub, seed=0)
    with pytest.raises(DataError) as err:
        check_split_covers(sub, split, "tumor_type", {"train": ["40x", "100x", "200x"], "test": ["400x"]})
    msg = str(err.value)
    assert "\n" not in msg and "add patients" in msg
    assert "class 'F' with no images in domain 400x, split 'test' (1 patient: 1 in train)" in msg
    assert (
        "class 'PT' with no images in domains 100x, 200x, split 'train' (3 patients: 1 in train, 1 in val, 1 in test)"
        in msg
    )
