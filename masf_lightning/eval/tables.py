"""Finished runs arranged as the tables collect.py prints: groups, rows (target, sources), method columns,
seeds per cell; across random-search draws, one table per selection rule (`eval/selection.py`).

Display (titles, paper numbers, Markdown, CSV) stays in experiments/collect.py; this is the data it renders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from masf_lightning.data.table import domain_sort_key
from masf_lightning.eval.results import Group, Run
from masf_lightning.eval.selection import RULES, Choice, SelectionRule, choose

METHOD_ORDER = (
    "masf", "masf_joint", "deepall", "mldg", "coral", "deepall_zoom",
    "masf_no_gen", "masf_no_gen_joint", "masf_no_tri", "masf_no_tri_joint",
)  # fmt: skip
PAIRED = ("masf", "masf_joint", "mldg", "coral", "deepall_zoom")  # each against DeepAll, seed by seed
BASELINE = "deepall"
ACC = "target_test_acc"
AVERAGED = "+"  # `deepall+swad`: a method's column with weight averaging (metrics.json `averaging`)
VS = " vs "  # a paired comparison against another column than DeepAll: `masf+swad vs masf`


def comparison(key: str) -> tuple[str, str]:
    """(variant, baseline) of a paired-comparison key: `masf` is MASF − DeepAll, `masf+swad vs masf` MASF + SWAD − MASF."""
    variant, _, baseline = key.partition(VS)
    return variant, baseline or BASELINE

Row = tuple[str, tuple[str, ...]]  # (target, sources)
Draws = dict[int, dict[int, Run]]  # draw → seed → run


def target_key(t: str) -> tuple[int, float, str]:
    """Domains coarse to fine by their names: 40x before 400x, 5x before 20x, 2mpp before 0.5mpp."""
    return domain_sort_key(t)


def row_key(row: Row) -> tuple[object, ...]:
    return (target_key(row[0]), -len(row[1]), [target_key(s) for s in row[1]])


def method_key(m: str) -> tuple[int, bool, str]:
    base = m.split(AVERAGED, 1)[0]  # a method with averaging right after the method
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), AVERAGED in m, m)


@dataclass
class Cell:
    """One method in one row: a metric of its finished runs (display units), by seed."""

    by_seed: dict[int, float] = field(default_factory=dict)

    @property
    def values(self) -> list[float]:
        return [self.by_seed[s] for s in sorted(self.by_seed)]


@dataclass
class Selection:
    """How a table across draws was made: the rule, each cell's choice, and every draw's runs (for their values)."""

    rule: SelectionRule
    choices: dict[tuple[str, Row], Choice]
    draws: dict[tuple[str, Row], Draws]


@dataclass
class Table:
    group: Group
    methods: list[str]
    rows: list[Row]
    runs: dict[tuple[str, Row], dict[int, Run]]  # the runs each cell averages: one draw's, by seed
    notes: dict[str, list[str]]
    selection: Selection | None = None  # None: every run used the registry's defaults (hparams_seed=0)

    @property
    def paired(self) -> list[str]:
        """The paired comparisons (`comparison` keys): PAIRED's methods against DeepAll; a method with averaging
        against the same method without it, and against DeepAll."""
        out = [m for m in PAIRED if m in self.methods] if BASELINE in self.methods else []
        for m in self.methods:
            if AVERAGED in m:
                base = m.split(AVERAGED, 1)[0]
                out += [f"{m}{VS}{base}"] if base in self.methods and base != BASELINE else []
                out += [m] if BASELINE in self.methods else []
        return out

    def cell(self, method: str, row: Row, key: str = ACC, scale: float = 100.0) -> Cell:
        runs = self.runs.get((method, row), {})
        return Cell({s: scale * v for s, r in runs.items() if (v := r.value(key)) is not None})

    def paired_diffs(self, compared: str, row: Row, key: str = ACC, scale: float = 100.0) -> tuple[list[float], list[int]]:
        """Variant − baseline (a `comparison` key) per seed, over the seeds both have the metric for; and those seeds."""
        variant, baseline = comparison(compared)
        a, b = self.cell(variant, row, key, scale).by_seed, self.cell(baseline, row, key, scale).by_seed
        seeds = sorted(set(a) & set(b))
        return [a[s] - b[s] for s in seeds], seeds

    def has(self, key: str, row: Row | None = None) -> bool:
        """Whether any finished run (of `row`, if given) has the metric."""
        return any(r.value(key) is not None for (_, rw), runs in self.runs.items() if row in (None, rw) for r in runs.values())


def _notes(group_runs: list[Run], methods: list[str], rows: list[Row], draws: dict[tuple[str, Row], Draws], expect: int | None) -> dict[str, list[str]]:
    notes: dict[str, list[str]] = {"missing": [], "nan": [], "unreadable": [], "duplicate": [], "resumed": [], "few": []}
    for r in group_runs:
        if r.status == "ok" and r.seed is None:
            notes["unreadable"].append(r.label() + " (no seed)")
        elif r.status != "ok":
            notes[r.status].append(r.label())
        if r.resumed and r.status in ("ok", "nan"):
            notes["resumed"].append(r.label())
    if expect:
        domains = max((r.domains for r in group_runs), key=len)
        tried: dict[tuple[str, Row], set[int]] = {}
        for r in group_runs:
            tried.setdefault((r.method, r.row), set()).add(r.draw)
        for row in rows:
            for m in methods:
                # ablations and variants are often run at some targets only; MASF never from one source
                if (m, row) not in tried and (m not in ("masf", BASELINE) or len(row[1]) < 2):
                    continue
                for d in sorted(tried.get((m, row), {0})):
                    n = len(draws.get((m, row), {}).get(d, {}))
                    if n < expect:
                        notes["few"].append(f"{m} {row_label(row, domains)}{f' draw {d}' if d else ''}: {n}/{expect} seeds")
    return notes


def row_label(row: Row, domains: Sequence[str]) -> str:
    """`400x`, or `400x from 40x` for a row that is not leave-one-out (of `domains`, the runs' dataset's)."""
    loo = {t for t in domains if t != row[0]}
    return row[0] if set(row[1]) == loo else f"{row[0]} from {'+'.join(row[1])}"


def build_tables(runs: Sequence[Run], expect_seeds: int | None = None) -> tuple[list[Table], list[str]]:
    """Group runs into tables (one per selection rule where a group holds draws); return them and the runs that
    fit no table (no readable identity)."""
    by_group: dict[Group, list[Run]] = {}
    orphans = []
    for r in runs:
        if r.group is None:
            orphans.append(f"{r.status}: {r.label()}")
        else:
            by_group.setdefault(r.group, []).append(r)
    tables = []
    for group in sorted(by_group, key=Group.sort_key):
        group_runs = sorted(by_group[group], key=lambda r: (method_key(r.method), row_key(r.row), r.draw, r.seed if r.seed is not None else -1, r.path))
        # MASF and DeepAll are always columns: an absent one is visible as "–", not a vanished column
        methods = sorted({r.method for r in group_runs if r.method != "?"} | {"masf", BASELINE}, key=method_key)
        rows = sorted({r.row for r in group_runs if r.target != "?"}, key=row_key)
        draws: dict[tuple[str, Row], Draws] = {}
        failed: dict[tuple[str, Row], dict[int, tuple[int, ...]]] = {}
        for r in group_runs:
            if r.status == "ok" and r.seed is not None:
                draws.setdefault((r.method, r.row), {}).setdefault(r.draw, {})[r.seed] = r
            elif r.status == "nan" and r.seed is not None:
                cell = failed.setdefault((r.method, r.row), {})
                cell[r.draw] = (*cell.get(r.draw, ()), r.seed)
        notes = _notes(group_runs, methods, rows, draws, expect_seeds)
        if {r.draw for r in group_runs} == {0}:
            tables.append(Table(group, methods, rows, {k: v.get(0, {}) for k, v in draws.items()}, notes))
            continue
        for rule in RULES:
            choices = {k: choose(draws.get(k, {}), failed.get(k, {}), rule) for k in set(draws) | set(failed)}
            chosen = {k: draws.get(k, {}).get(c.draw, {}) for k, c in choices.items() if c.draw is not None}
            tables.append(Table(group, methods, rows, chosen, notes, Selection(rule, choices, draws)))
    return tables, sorted(orphans)
