"""Train/val/test splits as decisions on the dataset table (`table.py`); `manifest.py` saves them beside the results.

Protocols:
- ``paper``: the paper's public code (DataframeSplitter.split, bghojogh/Histopathology-Magnification-
  Generalization): per domain, image-level random split, 45 % test, 45 % train, 10 % val.
  Images of one patient land on both sides, so its scores are optimistic; kept to reproduce Tables 1-2.
- ``patient`` (default): our stricter choice: patient-disjoint across all domains, stratified by class
  (BreaKHis: by tumour type, whichever the task); fractions are of patients within each class.
- ``official_fold``: the BreaKHis ``dsfold<k>.txt`` train/test (Spanhol et al., 2016), val carved
  from the train patients. Index images the file does not list are marked ``"unused"``. BreaKHis only.
- ``manifest_split``: the table's own ``split`` column (train/val/test), checked for patient leaks unless
  ``split.allow_leak=true``.
"""

from __future__ import annotations

import math
import os
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from masf_lightning.choices import PROTOCOLS
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.relations import (
    DEFAULT_FRACTIONS,
    FRACTIONS_SAY,
    PAPER_FRACTIONS,
    fractions_ok,
    require_choice,
    split_complete,
    violation,
)  # fmt: skip

SPLITS: tuple[str, ...] = ("train", "val", "test")
UNUSED = "unused"


def _require_columns(index: pd.DataFrame, columns: Iterable[str]) -> None:
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise DataError(
            f"index lacks column(s) {missing}; build it with masf_lightning.data.sources.open_table"
        )


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in fractions)
    if not all(math.isfinite(f) for f in fr) or not fractions_ok(fr):
        raise violation("split.fractions", list(fractions), f"must be {FRACTIONS_SAY}")
    return fr  # type: ignore[return-value]


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"split.seed (split_seed) {seed!r} must be a non-negative integer")
    return int(seed)


def _as_split_series(values: np.ndarray, index: pd.DataFrame) -> pd.Series:
    return pd.Series(values, index=index.index, name="split", dtype=str)


def _allocate(n: int, fractions: Sequence[float], minimum: Sequence[int]) -> list[int]:
    """Split n items into len(fractions) counts: largest remainder, then lift buckets to their minimum."""
    raw = [f * n for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - counts[i]), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    for i, need in enumerate(minimum):
        while counts[i] < need:
            donors = [j for j in range(len(counts)) if counts[j] > minimum[j]]
            if not donors:
                break
            counts[max(donors, key=lambda j: (counts[j] - minimum[j], -j))] -= 1
            counts[i] += 1
    return counts


def _patient_types(index: pd.DataFrame, stratify: str, order: Sequence[str]) -> pd.Series:
    """One class per patient: the majority by image count, ties to the earlier class in `order`.

    Needed because BreaKHis patient 14-13412 appears under both DC and LC with the same images (tie -> DC);
    it must stay one group so its copies never sit on two sides of a split.
    """
    rank = {t: i for i, t in enumerate(order)}
    counts = index.groupby(["patient", stratify]).size().reset_index(name="n")
    counts["rank"] = counts[stratify].map(lambda t: rank.get(t, len(rank)))
    counts = counts.sort_values(["patient", "n", "rank"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("patient").set_index("patient")[stratify]


def _stratified_patient_assignment(
    patient_type: pd.Series,
    fractions: Sequence[float],
    seed: int,
    names: Sequence[str],
    min_patients: Sequence[int],
    order: Sequence[str],
) -> dict[str, str]:
    """Assign patients to `names` within each class; a bucket with a non-zero fraction gets at least
    one patient of a class once that class has `min_patients[i]` patients (our coverage rule)."""
    rank = {t: i for i, t in enumerate(order)}
    out: dict[str, str] = {}
    for ttype, group in patient_type.groupby(patient_type, sort=True):
        patients = np.array(sorted(group.index))
        n = len(patients)
        minimum = [1 if f > 0 and n >= k else 0 for f, k in zip(fractions, min_patients, strict=True)]
        counts = _allocate(n, fractions, minimum)
        # One generator per class, so adding a patient of one class leaves the others' assignment alone.
        rng = np.random.default_rng([seed, rank.get(str(ttype), len(rank))])
        shuffled = patients[rng.permutation(n)]
        start = 0
        for name, c in zip(names, counts, strict=True):
            for p in shuffled[start : start + c]:
                out[str(p)] = name
            start += c
    return out


def _check_placed(
    patient_type: pd.Series,
    assignment: Mapping[str, str],
    fractions: Sequence[float],
    names: Sequence[str],
    min_patients: Sequence[int],
    protocol: str,
    order: Sequence[str],
) -> None:
    """Refuse an assignment that gives a split with a non-zero fraction no patient at all, saying per class
    how many patients it has and where they went (a class fills bucket i only from min_patients[i] on)."""
    placed = set(assignment.values())
    for name, fraction, need in zip(names, fractions, min_patients, strict=True):
        if fraction == 0 or name in placed:
            continue
        per_type = []
        for ttype in sorted(set(patient_type), key=lambda t: (tuple(order) + (t,)).index(t)):
            sides = pd.Series([assignment[p] for p in patient_type.index[patient_type == ttype]]).value_counts()
            where = ", ".join(f"{int(sides[n])} {n}" for n in names if n in sides)
            per_type.append(f"{ttype} {int(sides.sum())} ({where})")
        raise DataError(
            f"split.protocol={protocol} could not place any patient in {name!r} (fraction {fraction:g}): a class "
            f"gives {name} a patient only from {need} patients on; patients per class: {', '.join(per_type)}; "
            "add patients, or use split.protocol=paper"
        )


def domain_seed(domain: str) -> int:
    """A domain's share of a split seed: the magnification in its name (40x → 40, as every run before domains had
    names), else a CRC of the name; either way the same in every process."""
    m = re.fullmatch(r"(\d+)[xX]", str(domain))
    return int(m.group(1)) if m else zlib.crc32(str(domain).encode())


def _split_paper(index: pd.DataFrame, seed: int) -> pd.Series:
    """Per domain: shuffle, first int(.45 n) -> test, up to int(.9 n) -> train, rest -> val (public code)."""
    _require_columns(index, ("path", "domain"))
    values = np.empty(len(index), dtype=object)
    domains = index["domain"].to_numpy()
    paths = index["path"].to_numpy()
    train_f, _, test_f = PAPER_FRACTIONS
    for domain in sorted(set(domains.tolist())):
        pos = np.flatnonzero(domains == domain)
        # Order by path first, so the input row order does not change the split.
        pos = pos[np.argsort(paths[pos], kind="stable")]
        n = len(pos)
        # Public code shuffles unseeded (DataFrame.sample); we seed per domain for reproducibility.
        pos = pos[np.random.default_rng([seed, domain_seed(domain)]).permutation(n)]
        n_test, n_test_train = int(test_f * n), int((test_f + train_f) * n)
        values[pos[:n_test]] = "test"
        values[pos[n_test:n_test_train]] = "train"
        values[pos[n_test_train:]] = "val"
    return _as_split_series(values, index)


def _split_patient(
    index: pd.DataFrame, seed: int, fractions: tuple[float, float, float], stratify: str, order: Sequence[str]
) -> pd.Series:
    """Patient-disjoint across all domains, stratified by each patient's (majority) class of `stratify`."""
    _require_columns(index, ("patient", stratify))
    # Train from 1 patient, test from 2, val from 3: every class with >= 2 patients is trained and tested.
    patient_type = _patient_types(index, stratify, order)
    assignment = _stratified_patient_assignment(patient_type, fractions, seed, SPLITS, (1, 3, 2), order)
    _check_placed(patient_type, assignment, fractions, SPLITS, (1, 3, 2), "patient", order)
    return _as_split_series(index["patient"].map(assignment).to_numpy(dtype=object), index)


def read_fold_file(fold_file: str | os.PathLike[str]) -> pd.DataFrame:
    """Parse a BreaKHis ``dsfold<k>.txt`` (rows ``filename|mag|fold|grp``) into columns filename, magnification, fold, grp."""
    path = Path(fold_file)
    if not path.is_file():
        raise DataError(
            f"fold file {str(path)!r} does not exist; set split.fold_file to a BreaKHis dsfold<k>.txt"
        )
    rows: list[tuple[str, int, int, str]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split("|")]
        if (
            len(fields) != 4
            or not fields[1].isdigit()
            or not fields[2].isdigit()
            or fields[3].lower() not in ("train", "test")
        ):
            raise DataError(f"{path}:{lineno}: expected 'filename|mag|fold|train-or-test', got {line[:80]!r}")
        name = fields[0].replace("\\", "/").rsplit("/", 1)[-1]
        rows.append((name, int(fields[1]), int(fields[2]), fields[3].lower()))
    if not rows:
        raise DataError(f"fold file {path} lists no images; expected rows 'filename|mag|fold|train-or-test'")
    table = pd.DataFrame(rows, columns=["filename", "magnification", "fold", "grp"])
    folds = sorted(table["fold"].unique().tolist())
    if len(folds) > 1:
        raise DataError(f"fold file {path} mixes folds {folds}; give one dsfold<k>.txt file")
    grps = table.groupby("filename")["grp"].nunique()
    if (grps > 1).any():
        raise DataError(f"fold file {path} puts {grps[grps > 1].index[0]} in both train and test")
    return table.drop_duplicates("filename").reset_index(drop=True)


def _split_official_fold(
    index: pd.DataFrame,
    seed: int,
    fractions: tuple[float, float, float],
    fold_file: str | os.PathLike[str] | None,
    order: Sequence[str],
) -> pd.Series:
    """Train/test from the fold file (make_split checked there is one); val = about fractions[1] of train patients
    per type (our choice)."""
    assert fold_file is not None
    if not {"tumor_type", "magnification"} <= set(index.columns):
        raise ConfigError("split.protocol=official_fold: the BreaKHis folds need a BreaKHis table (data=breakhis or synthetic)")
    _require_columns(index, ("path", "patient", "tumor_type", "magnification"))
    table = read_fold_file(fold_file)
    names = index["path"].str.rsplit("/", n=1).str[-1]
    known = set(names.tolist())
    missing = table.loc[~table["filename"].isin(known), "filename"]
    if len(missing):
        raise DataError(
            f"fold file {fold_file} names {len(missing)} image(s) missing from the index, first {missing.iloc[0]}; "
            "point the data root at a complete BreaKHis copy"
        )
    fold_of = dict(zip(table["filename"], table["grp"], strict=True))
    mag_of = dict(zip(table["filename"], table["magnification"], strict=True))
    listed = names.isin(fold_of.keys())
    bad = listed & (names.map(mag_of) != index["magnification"])
    if bad.any():
        raise DataError(
            f"fold file {fold_file} gives {names[bad].iloc[0]} a magnification that contradicts its name"
        )
    values = np.where(listed, names.map(fold_of).to_numpy(dtype=object), UNUSED).astype(object)
    raw = _as_split_series(values, index)
    try:
        check_patient_leakage(index, raw)
    except DataError as exc:
        raise DataError(f"fold file {fold_file} is not patient-disjoint: {exc}") from None
    train_rows = index[raw.to_numpy() == "train"]
    types = _patient_types(index, "tumor_type", order).loc[sorted(train_rows["patient"].unique())]
    val_share = fractions[1]
    assignment = _stratified_patient_assignment(
        types, (1.0 - val_share, val_share), seed, ("train", "val"), (1, 3), order
    )
    _check_placed(types, assignment, (1.0 - val_share, val_share), ("train", "val"), (1, 3), "official_fold", order)
    to_val = (raw == "train").to_numpy() & (index["patient"].map(assignment) == "val").to_numpy()
    values[to_val] = "val"
    return _as_split_series(values, index)


def _split_given(index: pd.DataFrame, allow_leak: bool) -> pd.Series:
    """The table's own `split` column (manifest_split), checked; a patient on two sides only with allow_leak."""
    if "split" not in index.columns:
        raise ConfigError("split.protocol=manifest_split: the table has no column split (train/val/test per row)")
    given = index["split"].astype(str).str.strip().str.lower()
    bad = ~given.isin(SPLITS)
    if bad.any():
        raise DataError(
            f"split.protocol=manifest_split: column split holds {index['split'][bad].iloc[0]!r} in {int(bad.sum())} row(s); "
            "use train, val or test"
        )
    split = _as_split_series(given.to_numpy(dtype=object), index)
    if not allow_leak:
        try:
            check_patient_leakage(index, split)
        except DataError as exc:
            raise DataError(f"split.protocol=manifest_split: {exc} (or accept it with split.allow_leak=true)") from None
    return split


def make_split(
    index: pd.DataFrame,
    protocol: str = "patient",
    seed: int = 0,
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    fold_file: str | Path | None = None,
    stratify: str = "tumor_type",
    order: Sequence[str] = (),
    allow_leak: bool = False,
) -> pd.Series:
    """Return "train"/"val"/"test" (and "unused" for official_fold) per index row, aligned with `index`.

    `seed` is the config's `split_seed`, independent of the training seed, so reruns share one split. A patient
    split balances the classes of column `stratify`, ties and seeds by their `order` (the table's class order).
    """
    seed = _check_seed(seed)
    require_choice("split.protocol", protocol, PROTOCOLS)
    if incomplete := split_complete(protocol, fractions, None if fold_file is None else str(fold_file)):
        key, problem = incomplete
        raise violation(key, list(fractions) if key == "split.fractions" else fold_file, problem)
    if protocol == "paper":
        return _split_paper(index, seed)
    if protocol == "manifest_split":
        return _split_given(index, allow_leak)
    order = tuple(order) or tuple(sorted(index[stratify].astype(str).unique())) if stratify in index.columns else tuple(order)
    if protocol == "patient":
        split = _split_patient(index, seed, _check_fractions(fractions), stratify, order)
    else:
        split = _split_official_fold(index, seed, _check_fractions(fractions), fold_file, order)
    check_patient_leakage(index, split)
    return split


def _aligned(index: pd.DataFrame, split: pd.Series) -> pd.Series:
    if len(split) != len(index) or not split.index.equals(index.index):
        raise ValueError(
            "split must be aligned with index (same length and index labels); build it with make_split(index)"
        )
    return split


def check_patient_leakage(index: pd.DataFrame, split: pd.Series) -> None:
    """Raise DataError if any patient has images in two of train/val/test (any magnification)."""
    _require_columns(index, ("patient",))
    split = _aligned(index, split)
    used = split.to_numpy() != UNUSED
    sides = pd.DataFrame({"patient": index["patient"].to_numpy()[used], "split": split.to_numpy()[used]})
    per_patient = sides.groupby("patient")["split"].unique()
    leaking = per_patient[per_patient.map(len) > 1].sort_index()
    if len(leaking):
        where = sorted(leaking.iloc[0], key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS))
        raise DataError(
            f"patient {leaking.index[0]} has images in {' and '.join(where)} "
            f"({len(leaking)} leaking patient(s)); use a patient-disjoint split"
        )
