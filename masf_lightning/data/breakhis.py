"""BreaKHis v1 constants and the image index (one row per PNG), checked against the folder layout.

Official layout (Spanhol et al., 2016, the paper's ref. [13]):
``BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/SOB_<B|M>_<TYPE>_<YY>-<ID>/<mag>X/``
``SOB_<B|M>_<TYPE>-<YY>-<ID>-<mag>-<seq>.png``

Reference figures for the full dataset (checked by `check_against_official`):
    7,909 images; per magnification 40x 1,995 / 100x 2,081 / 200x 2,013 / 400x 1,820;
    per type A 444, F 1,014, PT 453, TA 569, DC 3,451, LC 626, MC 792, PC 560; 82 patient folders.
Patient 14-13412 has a folder under both ductal_carcinoma and lobular_carcinoma holding the same
images; the 7,909 count includes both copies, so both stay in the index as rows with patient
"14-13412" (one patient group for splitting, see `splits.py`).

CLI: ``python -m masf_lightning.data.breakhis ROOT`` prints the summary and the official-count check.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from masf_lightning.data.table import DatasetTable
from masf_lightning.errors import ConfigError, DataError, MasfError

# Class ids 0..7 follow this order, the order of the paper's public code (Tumor_type_classification/main.py).
TUMOR_TYPES: tuple[str, ...] = ("A", "F", "PT", "TA", "DC", "LC", "MC", "PC")
BENIGN_TYPES: tuple[str, ...] = ("A", "F", "PT", "TA")
MALIGNANT_TYPES: tuple[str, ...] = ("DC", "LC", "MC", "PC")
SUBTYPE_FOLDERS: dict[str, str] = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
MAGNIFICATIONS: tuple[int, ...] = (40, 100, 200, 400)
DOMAINS: tuple[str, ...] = tuple(f"{m}x" for m in MAGNIFICATIONS)  # each magnification a domain, named as in configs
MALIGNANCY: tuple[str, ...] = ("benign", "malignant")
TASKS: tuple[str, ...] = ("tumor_type", "malignancy")  # 8 tumour types (Table 1) or benign/malignant (Table 2)
CLASS_ORDERS: dict[str, tuple[str, ...]] = {"tumor_type": TUMOR_TYPES, "malignancy": MALIGNANCY}
INDEX_COLUMNS: tuple[str, ...] = ("path", "domain", "malignancy", "tumor_type", "patient", "magnification", "seq")

OFFICIAL_TOTAL = 7909
OFFICIAL_PER_MAGNIFICATION: dict[int, int] = {40: 1995, 100: 2081, 200: 2013, 400: 1820}
OFFICIAL_PER_TYPE: dict[str, int] = {
    "A": 444,
    "F": 1014,
    "PT": 453,
    "TA": 569,
    "DC": 3451,
    "LC": 626,
    "MC": 792,
    "PC": 560,
}
OFFICIAL_PATIENT_FOLDERS = 82

EXPECTED_LAYOUT = (
    "BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/"
    "SOB_<B|M>_<TYPE>_<YY>-<ID>/<mag>X/SOB_<B|M>_<TYPE>-<YY>-<ID>-<mag>-<seq>.png"
)

_TYPE_OF_FOLDER = {folder: t for t, folder in SUBTYPE_FOLDERS.items()}
_LETTER_OF_MALIGNANCY = {"benign": "B", "malignant": "M"}
# Loose on purpose: parse anything name-shaped, then say which field is wrong instead of "no match".
_NAME_RE = re.compile(
    r"^SOB_(?P<bm>[A-Z]+)_(?P<type>[A-Z]+)-(?P<patient>\d{2}-[0-9A-Za-z]+)-(?P<mag>\d+)-(?P<seq>\d+)\.(?i:png)$"
)
# Where the `breast` folder may sit below the root the user gives, most specific first.
_ROOT_SUFFIXES: tuple[tuple[str, ...], ...] = (
    ("BreaKHis_v1", "BreaKHis_v1", "histology_slides", "breast"),  # Kaggle copy's double nesting
    ("BreaKHis_v1", "histology_slides", "breast"),
    ("histology_slides", "breast"),
    ("breast",),
    (),
)


def domain_name(mag: int) -> str:
    """Domain label used in configs, logs and file names: 400 -> "400x"."""
    if int(mag) not in MAGNIFICATIONS:
        raise ConfigError(
            f"magnification {mag!r} is not a BreaKHis magnification; use one of {list(MAGNIFICATIONS)}"
        )
    return f"{int(mag)}x"


def parse_domain(name: str | int) -> int:
    """Accept "400x", "400X", "400" (or 400 from YAML) and return 400; anything else is a ConfigError."""
    text = str(name).strip()
    digits = text[:-1] if text[-1:] in ("x", "X") else text
    if not isinstance(name, bool) and digits.isdigit() and int(digits) in MAGNIFICATIONS:
        return int(digits)
    valid = ", ".join(f"{m}x" for m in MAGNIFICATIONS)
    raise ConfigError(f"domain {name!r} is not a BreaKHis magnification; use one of {valid}")


def _is_breast_dir(path: Path) -> bool:
    return (path / "benign").is_dir() or (path / "malignant").is_dir()


def find_breast_dir(root: Path) -> Path:
    """Locate the `breast` folder at any accepted level below `root`; refuse an ambiguous root."""
    if not root.is_dir():
        raise DataError(
            f"BreaKHis root {str(root)!r} does not exist or is not a folder; point it at the folder holding BreaKHis_v1"
        )
    found = [root.joinpath(*s) for s in _ROOT_SUFFIXES if _is_breast_dir(root.joinpath(*s))]
    if not found:
        raise DataError(
            f"no BreaKHis tree under {str(root)!r}: expected {EXPECTED_LAYOUT} "
            "(root may also be BreaKHis_v1, histology_slides or breast)"
        )
    if len(found) > 1:
        raise DataError(
            f"BreaKHis root {str(root)!r} is ambiguous: it holds trees at {found[0]} and {found[1]}; point root at one of them"
        )
    return found[0]


def parse_file_name(name: str) -> dict[str, str | int] | None:
    """The fields a BreaKHis file name carries, or None for any other name (any image extension; folders unchecked).

    SOB_M_DC-14-2523-400-001.png → malignancy malignant, tumor_type DC, patient 14-2523, magnification 400, seq 1.
    """
    m = _NAME_RE.match(f"{Path(name).stem}.png")
    if m is None or m["type"] not in TUMOR_TYPES or int(m["mag"]) not in MAGNIFICATIONS:
        return None
    if m["bm"] != ("B" if m["type"] in BENIGN_TYPES else "M"):
        return None
    malignancy = "benign" if m["bm"] == "B" else "malignant"
    return {"malignancy": malignancy, "tumor_type": m["type"], "patient": m["patient"], "magnification": int(m["mag"]), "seq": int(m["seq"])}


def _check_file(parts: Sequence[str]) -> tuple[str, str, str, int, int]:
    """Parse one file's name and cross-check it against its folders; return (malignancy, type, patient, mag, seq).

    `parts` are the path components below `breast`. Raises ValueError with the reason on any mismatch.
    """
    name = parts[-1]
    m = _NAME_RE.match(name)
    if m is None:
        raise ValueError("name does not follow SOB_<B|M>_<TYPE>-<YY>-<ID>-<mag>-<seq>.png")
    bm, ttype, patient, mag, seq = m["bm"], m["type"], m["patient"], int(m["mag"]), int(m["seq"])
    if ttype not in TUMOR_TYPES:
        raise ValueError(f"tumour type {ttype!r} in the name is not one of {', '.join(TUMOR_TYPES)}")
    expected_bm = "B" if ttype in BENIGN_TYPES else "M"
    if bm != expected_bm:
        raise ValueError(
            f"class letter {bm!r} in the name contradicts tumour type {ttype} (expected {expected_bm!r})"
        )
    if mag not in MAGNIFICATIONS:
        raise ValueError(f"magnification {mag} in the name is not one of {list(MAGNIFICATIONS)}")
    if len(parts) != 6:
        raise ValueError(
            "file sits at the wrong depth; expected <benign|malignant>/SOB/<subtype>/<patient folder>/<mag>X/"
        )
    malignancy, sob, subtype, patient_dir, mag_dir, _ = parts
    if _LETTER_OF_MALIGNANCY[malignancy] != bm:
        raise ValueError(f"SOB_{bm} name sits under {malignancy}/")
    if sob != "SOB":
        raise ValueError(f"folder {sob!r} should be 'SOB'")
    if _TYPE_OF_FOLDER.get(subtype) != ttype:
        raise ValueError(f"type {ttype} in the name contradicts subtype folder {subtype!r}")
    if patient_dir != f"SOB_{bm}_{ttype}_{patient}":
        raise ValueError(
            f"patient {patient} / type {ttype} in the name contradict patient folder {patient_dir!r}"
        )
    if mag_dir.upper() != f"{mag}X":
        raise ValueError(f"magnification {mag} in the name contradicts folder {mag_dir!r}")
    return malignancy, ttype, patient, mag, seq


def index_breakhis(
    root: str | os.PathLike[str], *, on_error: str = "raise", verbose: bool = False
) -> pd.DataFrame:
    """Index every BreaKHis PNG under `root` into a table sorted by path; paths are POSIX, relative to `root`.

    Every name field is cross-checked against its folders (our stricter choice: a misfiled image would
    silently carry a wrong label). `on_error="skip"` drops such files with one warning instead.
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r} is invalid; use 'raise' or 'skip'")
    root = Path(root)
    breast = find_breast_dir(root)
    prefix = breast.relative_to(root).parts
    rows: list[tuple[str, str, str, str, int, int]] = []
    problems: list[str] = []
    for malignancy in MALIGNANCY:
        top = breast / malignancy
        if not top.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()  # deterministic walk, so "the first offender" is stable
            rel_dir = Path(dirpath).relative_to(breast).parts
            for fname in sorted(filenames):
                if not fname.lower().endswith(".png"):
                    continue  # Thumbs.db, notes, csv files: not images, not our business
                parts = (*rel_dir, fname)
                rel = "/".join((*prefix, *parts))
                try:
                    fields = _check_file(parts)
                except ValueError as exc:
                    msg = f"{rel}: {exc}"
                    if on_error == "raise":
                        raise DataError(
                            f"{msg}; rename or remove the file, or skip such files with data.on_bad_file=skip"
                        ) from None
                    problems.append(msg)
                    continue
                rows.append((rel, *fields))
    if problems:
        warnings.warn(
            f"skipped {len(problems)} BreaKHis file(s) that contradict the layout; first: {problems[0]}",
            UserWarning,
            stacklevel=2,
        )
    if not rows:
        raise DataError(
            f"no BreaKHis images under {str(root)!r} (searched {breast}); expected {EXPECTED_LAYOUT}"
        )
    rows.sort(key=lambda r: r[0])
    path, malig, ttype, patient, mag, seq = zip(*rows, strict=True)
    index = pd.DataFrame(
        {
            "path": pd.Series(path, dtype=str),
            "domain": pd.Series([f"{m}x" for m in mag], dtype=str),
            "malignancy": pd.Series(malig, dtype=str),
            "tumor_type": pd.Series(ttype, dtype=str),
            "patient": pd.Series(patient, dtype=str),
            "magnification": np.asarray(mag, dtype=np.int64),
            "seq": np.asarray(seq, dtype=np.int64),
        }
    )
    if verbose:
        print(summarize_index(index))
    return index


def breakhis_table(root: str | os.PathLike[str], *, on_error: str = "raise") -> DatasetTable:
    """BreaKHis (or the synthetic copy) as the dataset table: domain `<mag>x`, labels tumor_type and malignancy (the
    public code's class order), a patient split stratified by tumour type whichever the task; `magnification`
    and `seq` carried as extra columns (the official folds read them)."""
    index = index_breakhis(root, on_error=on_error)
    present = set(index["domain"].tolist())
    domains = tuple(d for d in DOMAINS if d in present)
    return DatasetTable(index, Path(root), domains, f"BreaKHis at {root}", CLASS_ORDERS, stratify="tumor_type")


def _patient_folders(index: pd.DataFrame) -> int:
    """Patient folders = distinct (type, patient) pairs: 14-13412 counts twice, as in the official 82."""
    return int(index[["tumor_type", "patient"]].drop_duplicates().shape[0])


def summarize_index(index: pd.DataFrame) -> str:
    """Text table: images per tumour type x magnification with totals, and patients per type."""
    counts = pd.crosstab(index["tumor_type"], index["magnification"])
    counts = counts.reindex(index=list(TUMOR_TYPES), columns=list(MAGNIFICATIONS), fill_value=0)
    patients = index.groupby("tumor_type")["patient"].nunique().reindex(list(TUMOR_TYPES), fill_value=0)
    header = ["type", *(domain_name(m) for m in MAGNIFICATIONS), "total", "patients"]
    lines = [header]
    for t in TUMOR_TYPES:
        row = [int(counts.at[t, m]) for m in MAGNIFICATIONS]
        lines.append([t, *(f"{v:,}" for v in row), f"{sum(row):,}", str(int(patients[t]))])
    col_tot = [int(counts[m].sum()) for m in MAGNIFICATIONS]
    lines.append(["total", *(f"{v:,}" for v in col_tot), f"{sum(col_tot):,}", str(_patient_folders(index))])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in lines
    ]
    text.insert(1, "-" * len(text[0]))
    text.insert(len(text) - 1, "-" * len(text[0]))
    text.append(
        f"{len(index):,} images, {_patient_folders(index)} patient folders, "
        f"{index['patient'].nunique()} distinct patients"
    )
    return "\n".join(text)


def check_against_official(index: pd.DataFrame) -> list[str]:
    """Human-readable differences from the official BreaKHis v1 counts; empty when they all match."""
    diffs: list[str] = []

    def cmp(what: str, got: int, want: int) -> None:
        if got != want:
            diffs.append(f"{what}: {got:,} (official {want:,})")

    cmp("images", len(index), OFFICIAL_TOTAL)
    per_mag = index["magnification"].value_counts()
    for mag, want in OFFICIAL_PER_MAGNIFICATION.items():
        cmp(f"images at {domain_name(mag)}", int(per_mag.get(mag, 0)), want)
    per_type = index["tumor_type"].value_counts()
    for t, want in OFFICIAL_PER_TYPE.items():
        cmp(f"images of type {t}", int(per_type.get(t, 0)), want)
    cmp("patient folders", _patient_folders(index), OFFICIAL_PATIENT_FOLDERS)
    return diffs


def main(argv: Sequence[str] | None = None) -> int:
    """Print the summary of the BreaKHis copy at ROOT and how it differs from the official counts."""
    parser = argparse.ArgumentParser(prog="python -m masf_lightning.data.breakhis", description=main.__doc__)
    parser.add_argument("root", help="folder holding BreaKHis_v1 (or BreaKHis_v1, histology_slides, breast)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise")
    args = parser.parse_args(argv)
    try:
        index = index_breakhis(args.root, on_error=args.on_error)
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(summarize_index(index))
    diffs = check_against_official(index)
    official = f"{OFFICIAL_TOTAL:,} images, {OFFICIAL_PATIENT_FOLDERS} patient folders"
    if diffs:
        print(f"differs from the official BreaKHis v1 counts ({official}):")
        print("\n".join(f"  - {d}" for d in diffs))
    else:
        print(f"matches the official BreaKHis v1 counts ({official})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
