"""The split as a saved, audited table, and the checks a split must pass before training uses it.

Every run writes its split beside its metrics (`write_split_manifest`) so it can be audited and reused;
re-evaluation reads it back (`read_split_manifest`, `split_from_manifest`) instead of re-splitting.
`check_split_covers` refuses a split that leaves a class without images where training or evaluation
needs them; the patient-leakage check lives in `splits.py`, because `make_split` enforces it itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd

from masf_lightning.data.splits import SPLITS, UNUSED, _aligned, _as_split_series, _require_columns
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.io import atomic_path

MANIFEST_COLUMNS: tuple[str, ...] = ("path", "domain", "patient", "split")  # and the run's label column(s)


def check_split_covers(
    index: pd.DataFrame,
    split: pd.Series,
    label_column: str,
    domains: Mapping[str, Iterable[str]] | Iterable[str],
    classes: Sequence[str] | None = None,
) -> None:
    """Raise DataError if some class has no images in a needed (domain, split).

    `domains` maps a split name to the domains that need every class there, e.g.
    {"train": ["5x", "10x"], "test": ["20x"]}; a plain list of domains means
    train, val and test for each. `classes` defaults to the classes present in the index, sorted.
    """
    if label_column not in index.columns:
        raise ConfigError(f"label column {label_column!r} is not in the index")
    _require_columns(index, ("domain",))
    split = _aligned(index, split)
    needed: dict[str, list[str]]
    if isinstance(domains, Mapping):
        for s in domains:
            if s not in SPLITS:
                raise ConfigError(
                    f"split {s!r} in the coverage check is unknown; use one of {', '.join(SPLITS)}"
                )
        needed = {s: [str(d) for d in ds] for s, ds in domains.items()}
    else:
        doms = [str(d) for d in domains]
        needed = {s: doms for s in SPLITS}
    present = set(index["domain"].tolist())
    if unknown := sorted({d for ds in needed.values() for d in ds} - present):
        raise ConfigError(f"domain {', '.join(unknown)} in the coverage check is not in the index (domains: {', '.join(sorted(present))})")
    if classes is None:
        classes = sorted(set(index[label_column].unique().tolist()))
    have = set(
        zip(
            index["domain"].to_numpy().tolist(),
            split.to_numpy().tolist(),
            index[label_column].to_numpy().tolist(),
            strict=True,
        )
    )
    gaps: dict[str, list[str]] = {}
    for c in classes:
        for s, doms in needed.items():
            missing = [d for d in doms if (d, s, c) not in have]
            if missing:
                plural = "s" if len(missing) > 1 else ""
                gaps.setdefault(c, []).append(f"domain{plural} {', '.join(missing)}, split {s!r}")
    if gaps:
        problems = [
            f"class {c!r} with no images in {' nor in '.join(where)}{_placement(index, split, label_column, c)}"
            for c, where in gaps.items()
        ]
        raise DataError(
            f"split leaves {'; '.join(problems)}; a patient-disjoint split needs at least 2 patients of a class, "
            "with images in every domain, to put one in train and one in test: add patients, "
            "change split.seed/fractions, or use split.protocol=paper"
        )


def _placement(index: pd.DataFrame, split: pd.Series, label_column: str, cls: str) -> str:
    """" (3 patients: 2 in train, 1 in test)": where the patients of class `cls` went; empty without patients."""
    if "patient" not in index.columns:
        return ""
    rows = (index[label_column] == cls).to_numpy()
    sides = pd.DataFrame({"patient": index["patient"].to_numpy()[rows], "split": split.to_numpy()[rows]})
    per_split = sides.drop_duplicates().groupby("split")["patient"].size()
    where = ", ".join(f"{int(per_split[s])} in {s}" for s in (*SPLITS, UNUSED) if s in per_split)
    n = sides["patient"].nunique()
    # a patient under two classes (BreaKHis 14-13412: DC and LC) goes wherever its majority class sends it: say so
    labels = index.loc[index["patient"].isin(sides["patient"].unique()), [label_column, "patient"]]
    others = labels[labels[label_column] != cls].groupby("patient")[label_column].unique()
    also = "".join(f"; {p} is also filed under {', '.join(sorted(v))}" for p, v in others.items())
    return f" ({n} patient{'s' if n != 1 else ''}: {where}{also})"


def write_split_manifest(
    index: pd.DataFrame, split: pd.Series, path: str | os.PathLike[str], labels: Sequence[str] = ()
) -> None:
    """Atomically write the split as CSV (path, domain, patient, the label columns, split) for auditing and reuse."""
    columns = [*MANIFEST_COLUMNS[:-1], *dict.fromkeys(c for c in labels if c not in MANIFEST_COLUMNS)]
    _require_columns(index, columns)
    split = _aligned(index, split)
    table = index.loc[:, columns].copy()
    table["split"] = split.to_numpy()
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, lineterminator="\n")


def read_split_manifest(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a manifest written by `write_split_manifest`, checking its columns and split names."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split manifest {str(path)!r} does not exist; write it with write_split_manifest")
    dtypes = {"path": str, "domain": str, "patient": str, "split": str}
    try:
        table = pd.read_csv(path, dtype=dtypes, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise DataError(
            f"split manifest {path} is not a readable CSV ({exc}); delete it to rebuild the split"
        ) from None
    if "domain" not in table.columns and "magnification" in table.columns:  # written before domains had names
        table.insert(1, "domain", [f"{m}x" for m in table["magnification"]])
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"split manifest {path} lacks column(s) {missing}; delete it to rebuild the split")
    bad = ~table["split"].isin((*SPLITS, UNUSED))
    if bad.any():
        raise DataError(
            f"split manifest {path} has unknown split {table['split'][bad].iloc[0]!r}; use train/val/test/unused"
        )
    return table


def split_from_manifest(index: pd.DataFrame, manifest: pd.DataFrame) -> pd.Series:
    """Re-align a saved manifest to `index` by path, so a resumed run reuses exactly the saved split."""
    _require_columns(index, ("path",))
    by_path = dict(zip(manifest["path"], manifest["split"], strict=True))
    values = index["path"].map(by_path)
    if values.isna().any():
        first = index["path"][values.isna()].iloc[0]
        raise DataError(
            f"{int(values.isna().sum())} indexed image(s) are not in the split manifest, first {first}; delete it to rebuild the split"
        )
    return _as_split_series(values.to_numpy(dtype=object), index)
