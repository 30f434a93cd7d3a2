"""The dataset table every room reads: one row per image, the domains, classes and patients taken from it.

Columns: `path` (relative to the table's root), `domain` (the magnification as the data names it: 40x, 5x,
0.5mpp), `patient` (what a strict split keeps on one side; a slide when there is no patient id), optional
`mpp` (µm per pixel), one column per label (a task is a label column) and any extra columns, carried
through. BreaKHis's indexer, the synthetic generator, a user's manifest and a folder of images all become
this table (`sources.py`); splits, cache, episodes, evaluation and inference read only it. Torch-free: the
config check opens it before any work starts.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from masf_lightning.errors import ConfigError, DataError

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "domain", "patient")
# Columns that describe where an image comes from, never a label: `task=` may not name them.
RESERVED_COLUMNS: tuple[str, ...] = ("path", "domain", "patient", "mpp", "split", "slide", "x", "y", "class_id")
_DOMAIN_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(x|mpp|um|µm)?\s*$", re.IGNORECASE)


def domain_sort_key(name: str) -> tuple[int, float, str]:
    """Coarse to fine when the name says it: 5x < 10x < 40x (magnification up), 2mpp < 1mpp < 0.5mpp (µm/px
    down); other names after those, alphabetically. For tables and plots of runs whose table is not at hand."""
    m = _DOMAIN_NUMBER.match(str(name))
    if m is None:
        return (1, 0.0, str(name))
    value, unit = float(m.group(1)), (m.group(2) or "x").lower()
    return (0, value if unit == "x" else -value, str(name))


@dataclass(frozen=True)
class DatasetTable:
    """An indexed dataset: its rows, the folder its paths are relative to, and the order of domains and classes.

    `class_orders` fixes a label column's class ids where the data defines them (BreaKHis: the public code's
    order); any other column's classes are its sorted values. `stratify` is the label column a patient split
    balances (BreaKHis: tumour type, whichever task); None: the task's own column.
    """

    frame: pd.DataFrame
    root: Path
    domains: tuple[str, ...]
    name: str
    class_orders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    stratify: str | None = None

    @property
    def label_columns(self) -> tuple[str, ...]:
        """Text columns that are not reserved: what `task=` may name (a numeric column may be named too)."""
        frame = self.frame
        return tuple(c for c in frame.columns if c not in RESERVED_COLUMNS and not pd.api.types.is_numeric_dtype(frame[c]))

    def classes(self, task: str, given: Sequence[str] | None = None) -> tuple[str, ...]:
        """Class names of label column `task` in class-id order: `given` (data.classes), the data's own order, or sorted."""
        if task not in self.frame.columns or task in RESERVED_COLUMNS:
            found = ", ".join(self.label_columns) or "none"
            raise ConfigError(f"task={task}: not a label column of {self.name} (label columns: {found})")
        present = set(self.frame[task].astype(str).unique().tolist())
        if given:
            given = tuple(str(c) for c in given)
            if len(set(given)) != len(given):
                raise ConfigError(f"data.classes={list(given)}: names a class twice")
            if missing := sorted(present - set(given)):
                raise ConfigError(
                    f"data.classes={list(given)}: lacks {', '.join(missing)}, present in column {task} of {self.name}"
                )
            if absent := [c for c in given if c not in present]:
                raise ConfigError(f"data.classes={list(given)}: {', '.join(absent)} never occurs in column {task} of {self.name}")
            return given
        order = self.class_orders.get(task)
        if order:
            return tuple(c for c in order if c in present) + tuple(sorted(present - set(order)))
        return tuple(sorted(present))

    def mpp(self) -> dict[str, float]:
        """µm per pixel of each domain that has it (the median of its rows)."""
        if "mpp" not in self.frame.columns:
            return {}
        med = self.frame.groupby("domain")["mpp"].median()
        return {d: float(med[d]) for d in self.domains if d in med.index and not math.isnan(med[d])}

    def check_task(self, task: str, classes: Sequence[str], sources: Sequence[str], target: str) -> None:
        """What a task needs of the table: 2+ classes in every domain it uses, each class in some source domain."""
        if target not in self.domains:
            raise ConfigError(f"target={target}: not a domain of {self.name} (domains: {', '.join(self.domains)})")
        frame = self.frame
        for d in (*sources, target):
            n = frame.loc[frame["domain"] == d, task].nunique()
            if n < 2:
                raise DataError(f"{self.name}: domain {d} has {n} class(es) in column {task}; training and testing need at least 2")
        in_sources = set(frame.loc[frame["domain"].isin(list(sources)), task].astype(str))
        if absent := [c for c in classes if c not in in_sources]:
            raise DataError(
                f"{self.name}: class {absent[0]!r} of column {task} has no image in any source domain "
                f"({', '.join(sources)}){f' ({len(absent)} such classes)' if len(absent) > 1 else ''}; "
                "a model cannot learn it: drop it (data.classes) or train on a domain that has it (data.sources)"
            )

    def summary(self, task: str | None = None) -> str:
        """Images per domain × class (the task's, else the first label column's) and patients per class."""
        columns = self.label_columns
        task = task or (self.stratify if self.stratify in columns else columns[0] if columns else None)
        lines = [f"{self.name}: {len(self.frame):,} images, {self.frame['patient'].nunique():,} patients, "
                 f"{len(self.domains)} domains, label columns: {', '.join(columns) or 'none'}"]  # fmt: skip
        mpp = self.mpp()
        if mpp:
            lines.append("µm per pixel: " + ", ".join(f"{d} {v:g}" for d, v in mpp.items()))
        if task is None:
            return "\n".join(lines)
        classes = self.classes(task)
        counts = pd.crosstab(self.frame[task].astype(str), self.frame["domain"]).reindex(
            index=list(classes), columns=list(self.domains), fill_value=0
        )
        counts["patients"] = self.frame.groupby(task)["patient"].nunique().reindex(list(classes), fill_value=0)
        counts.index.name, counts.columns.name = task, None
        lines += ["", counts.to_string()]
        return "\n".join(lines)


def order_domains(frame: pd.DataFrame, listed: Sequence[str] | None = None) -> tuple[str, ...]:
    """Domains by µm/px when every domain has it (coarse first), else as `listed` (data.domains), else by name."""
    present = [str(d) for d in pd.unique(frame["domain"])]
    if listed:
        listed = [str(d) for d in listed]
        if unknown := [d for d in listed if d not in present]:
            raise ConfigError(f"data.domains={listed}: {', '.join(unknown)} is not a domain of the table (domains: {', '.join(present)})")
        if missing := [d for d in present if d not in listed]:
            raise ConfigError(f"data.domains={listed}: lacks {', '.join(missing)}, a domain of the table")
        return tuple(listed)
    if "mpp" in frame.columns and frame["mpp"].notna().all():
        med = frame.groupby("domain")["mpp"].median()
        return tuple(sorted(present, key=lambda d: (-float(med[d]), d)))
    return tuple(sorted(present, key=domain_sort_key))


def check_frame(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The checks every table passes, whatever wrote it: columns, empty cells, duplicates, mpp per domain."""
    if frame.empty:
        raise DataError(f"{where}: the table has no rows")
    if missing := [c for c in REQUIRED_COLUMNS if c not in frame.columns]:
        raise DataError(f"{where}: no column {', '.join(missing)} (columns found: {', '.join(map(str, frame.columns))})")
    for column in REQUIRED_COLUMNS:
        empty = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if empty.any():
            raise DataError(f"{where}: column {column} is empty in {int(empty.sum())} row(s), first row {_row(frame, empty)}")
    frame = frame.assign(**{c: frame[c].astype(str) for c in REQUIRED_COLUMNS})
    dup = frame["path"].duplicated(keep=False)
    if dup.any():
        raise DataError(
            f"{where}: {int(frame['path'][dup].nunique())} path(s) listed more than once, first {frame['path'][dup].iloc[0]} "
            f"(rows {', '.join(str(i + 2) for i in np.flatnonzero(dup.to_numpy())[:2])})"
        )
    if "mpp" in frame.columns:
        frame = frame.assign(mpp=pd.to_numeric(frame["mpp"], errors="coerce"))
        known = frame["mpp"].notna()
        for domain, rows in known.groupby(frame["domain"]):
            if 0 < int(rows.sum()) < len(rows):
                raise DataError(
                    f"{where}: domain {domain} has mpp in {int(rows.sum())} row(s) and none in {int((~rows).sum())}; "
                    "give every row of a domain its µm per pixel, or none"
                )
        if (frame.loc[known, "mpp"] <= 0).any():
            raise DataError(f"{where}: column mpp holds a value <= 0, first row {_row(frame, known & (frame['mpp'] <= 0))}")
    return frame


def _row(frame: pd.DataFrame, mask: pd.Series) -> int:
    """The file line of the first masked row (header = line 1)."""
    return int(np.flatnonzero(mask.to_numpy())[0]) + 2


def warn_missing_domains(frame: pd.DataFrame, domains: Sequence[str]) -> None:
    """Patients normally have every domain (BreaKHis: all four magnifications); say so when some do not (allowed)."""
    have = frame.groupby("patient")["domain"].agg(lambda m: set(m.tolist()))
    lacking = {p: [d for d in domains if d not in ds] for p, ds in have.items() if set(domains) - ds}
    if lacking:
        first = ", ".join(f"{p} (no {'/'.join(ms)})" for p, ms in list(lacking.items())[:3])
        print(
            f"warning: {len(lacking)} patient(s) lack some domain: {first}{' …' if len(lacking) > 3 else ''}; "
            "they take part only where they have images",
            file=sys.stderr,
        )
