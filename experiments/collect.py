"""Tables 1 and 2 of the paper from finished runs: target accuracy per (method, target), mean ± std over seeds.

    python experiments/collect.py multirun/ [more dirs...] [--out results/table] [--expect-seeds 3]

Reads every `metrics.json` below the given folders and prints one Markdown table per
(task, protocol, selection, backbone, steps, data) group; `--out PREFIX` also writes PREFIX.md,
PREFIX.csv and PREFIX.tex. Runs that never finished, failed with a NaN accuracy, were resumed, or
duplicate a seed are listed under their table, never silently averaged over.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from masf_lightning.io import write_text_atomic

METRICS_FILE = "metrics.json"
RUN_CONFIG_FILE = "run_config.json"
TARGET_ORDER = ("40x", "100x", "200x", "400x")
METHOD_ORDER = ("masf", "deepall", "masf_no_gen", "masf_no_tri")
METHOD_TITLES = {"masf": "MASF", "deepall": "DeepAll", "masf_no_gen": "MASF no-gen (β1=0)", "masf_no_tri": "MASF no-tri (β2=0)"}
TASK_ORDER = ("tumor_type", "malignancy")
DASH = "–"

# Tables 1 (tumor_type) and 2 (malignancy) of Sikaroudi et al.: accuracy %, (mean, ±) per target.
# The paper does not say whether ± is a standard deviation or an error of the mean.
PAPER: dict[str, dict[str, dict[str, tuple[float, float]]]] = {
    "tumor_type": {
        "masf": {"40x": (44.37, 0.11), "100x": (50.82, 0.06), "200x": (52.82, 0.22), "400x": (48.27, 0.43)},
        "deepall": {"40x": (40.39, 0.46), "100x": (48.82, 0.39), "200x": (51.75, 0.26), "400x": (47.21, 0.19)},
    },
    "malignancy": {
        "masf": {"40x": (81.01, 0.42), "100x": (80.98, 0.70), "200x": (80.99, 0.57), "400x": (77.25, 0.83)},
        "deepall": {"40x": (78.86, 0.23), "100x": (80.52, 0.34), "200x": (79.96, 0.86), "400x": (74.44, 0.31)},
    },
}
PAPER_TABLE = {"tumor_type": "Table 1", "malignancy": "Table 2"}
PAPER_PROTOCOL = "paper"

# Two-sided 95 % Student t quantiles t_{0.975, df}, df = 1..30 (scipy is not a dependency).
T975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
    2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
    2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip
Z975 = 1.959963984540054


# -- statistics ---------------------------------------------------------------------------------
def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish–Fisher expansion (error < 1e-5 beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and SAMPLE standard deviation (ddof=1); std is None for a single value, where it is undefined."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the 95 % t-interval of the mean; None below two values."""
    mean, std = mean_std(values)
    if std is None:
        return None
    half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


# -- discovery ----------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Group:
    """Runs that may share a table: same task and everything that changes what the accuracy means."""

    task: str
    protocol: str
    selection: str
    backbone: str
    steps: int
    data: str

    def sort_key(self) -> tuple[Any, ...]:
        t = TASK_ORDER.index(self.task) if self.task in TASK_ORDER else len(TASK_ORDER)
        return (t, self.task, self.protocol, self.selection, self.backbone, self.steps, self.data)

    def title(self) -> str:
        return (
            f"task {self.task} · protocol {self.protocol} · selection {self.selection} · "
            f"backbone {self.backbone} · {self.steps} steps · data {self.data}"
        )

    @property
    def paper(self) -> bool:
        """Whether the paper has numbers for this table (its task, its image-level protocol)."""
        return self.protocol == PAPER_PROTOCOL and self.task in PAPER


@dataclass
class Run:
    """One run folder: its identity, and its accuracy when it finished with one."""

    path: str  # as shown: the DIR argument joined with the folder below it
    group: Group | None
    method: str
    target: str
    seed: int | None
    acc: float | None = None  # fraction; None when there is no usable number
    status: str = "ok"  # ok | missing | nan | unreadable | duplicate
    resumed: bool = False
    sources: tuple[str, ...] = ()

    def label(self) -> str:
        seed = "?" if self.seed is None else self.seed
        return f"{self.method} {self.target} seed {seed}: {self.path}"


def _read_config(folder: Path) -> dict[str, Any] | None:
    """The run's config: run_config.json (resolved), else .hydra/config.yaml read without resolving."""
    path = folder / RUN_CONFIG_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    path = folder / ".hydra" / "config.yaml"
    if path.is_file():
        import yaml  # only needed for runs without run_config.json

        try:
            cfg = yaml.safe_load(path.read_text())
            return cfg if isinstance(cfg, dict) else None
        except yaml.YAMLError:
            return None
    return None


def _data_name(cfg: dict[str, Any] | None) -> str:
    """synthetic | breakhis: averaging generated and real images together would be meaningless."""
    data = (cfg or {}).get("data")
    if not isinstance(data, dict):
        return "unknown"
    return "synthetic" if data.get("synthetic") else "breakhis"


def _group(task: Any, protocol: Any, selection: Any, backbone: Any, steps: Any, data: str) -> Group | None:
    if None in (task, protocol, selection, backbone, steps):
        return None
    try:
        return Group(str(task), str(protocol), str(selection), str(backbone).rsplit(".", 1)[-1], int(steps), data)
    except (TypeError, ValueError):
        return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _run_from_metrics(shown: str, m: dict[str, Any], cfg: dict[str, Any] | None) -> Run:
    group = _group(m.get("task"), m.get("protocol"), m.get("selection"), m.get("backbone"), m.get("steps"), _data_name(cfg))
    acc = m.get("target_test_acc")
    seed = m.get("seed")
    return Run(
        path=shown,
        group=group,
        method=str(m.get("method", "?")),
        target=str(m.get("target", "?")),
        seed=int(seed) if _is_number(seed) else None,
        acc=float(acc) if _is_number(acc) else None,
        status="ok" if _is_number(acc) else "nan",
        resumed=bool(m.get("resumed", False)),
        sources=tuple(m.get("sources") or ()),
    )


def _run_from_config(shown: str, cfg: dict[str, Any] | None, status: str) -> Run:
    """A run without usable metrics: identify it from its config so it is listed under the right table."""
    cfg = cfg or {}

    def get(*keys: str) -> Any:
        node: Any = cfg
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        # an unresolved interpolation (`${...}`) from .hydra/config.yaml says nothing
        return None if isinstance(node, str) and "${" in node else node

    group = _group(get("task"), get("split", "protocol"), get("selection"), get("backbone", "_target_"), get("steps"), _data_name(cfg))
    seed = get("seed")
    return Run(
        path=shown,
        group=group,
        method=str(get("method", "name") or "?"),
        target=str(get("target") or "?"),
        seed=int(seed) if _is_number(seed) else None,
        status=status,
    )


def _is_run_folder(folder: Path) -> bool:
    return (folder / METRICS_FILE).is_file() or (folder / RUN_CONFIG_FILE).is_file() or (folder / ".hydra").is_dir()


def find_runs(dirs: Iterable[str | Path]) -> list[Run]:
    """Every run folder below `dirs` (a folder with metrics.json, run_config.json or .hydra/), each once."""
    seen: set[Path] = set()
    runs: list[Run] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        candidates = {p.parent for name in (METRICS_FILE, RUN_CONFIG_FILE) for p in root.rglob(name)}
        candidates |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
        for folder in sorted(candidates):
            real = folder.resolve()
            if real in seen or not _is_run_folder(folder):
                continue
            seen.add(real)
            shown = (root / folder.relative_to(root)).as_posix()
            cfg = _read_config(folder)
            metrics_path = folder / METRICS_FILE
            if not metrics_path.is_file():
                runs.append(_run_from_config(shown, cfg, "missing"))
                continue
            try:
                m = json.loads(metrics_path.read_text())  # json reads NaN, which the pipeline may write
            except (json.JSONDecodeError, UnicodeDecodeError):
                m = None
            if not isinstance(m, dict):
                runs.append(_run_from_config(shown, cfg, "unreadable"))
                continue
            runs.append(_run_from_metrics(shown, m, cfg))
    _mark_duplicates(runs)
    return runs


def _mark_duplicates(runs: list[Run]) -> None:
    """Two finished runs of one (table, method, target, seed): keep the first by path, list the rest.

    They would otherwise count as two seeds and break the by-seed pairing.
    """
    first: dict[tuple[Any, ...], Run] = {}
    for r in sorted(runs, key=lambda r: r.path):
        if r.status not in ("ok", "nan") or r.group is None or r.seed is None:
            continue
        key = (r.group, r.method, r.target, r.seed)
        if key in first:
            r.status = "duplicate"
        else:
            first[key] = r


# -- tables -------------------------------------------------------------------------------------
def mag(target: str) -> str:
    """'40x' → '40×' as the paper writes it."""
    return target[:-1] + "×" if target.endswith("x") else target


def _target_key(t: str) -> tuple[int, str]:
    return (TARGET_ORDER.index(t) if t in TARGET_ORDER else len(TARGET_ORDER), t)


def _method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


@dataclass
class Cell:
    """One method at one target: the accuracies (percent) of its finished runs, by seed."""

    by_seed: dict[int, float] = field(default_factory=dict)

    @property
    def values(self) -> list[float]:
        return [self.by_seed[s] for s in sorted(self.by_seed)]


@dataclass
class Table:
    group: Group
    methods: list[str]
    targets: list[str]
    cells: dict[tuple[str, str], Cell]
    sources: dict[str, tuple[str, ...]]
    notes: dict[str, list[str]]

    @property
    def paired(self) -> bool:
        return "masf" in self.methods and "deepall" in self.methods

    def cell(self, method: str, target: str) -> Cell:
        return self.cells.get((method, target), Cell())

    def paired_diffs(self, target: str) -> list[float]:
        """MASF − DeepAll per seed, over the seeds both finished (percentage points)."""
        a, b = self.cell("masf", target).by_seed, self.cell("deepall", target).by_seed
        return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def build_tables(runs: Sequence[Run], expect_seeds: int | None = None) -> tuple[list[Table], list[str]]:
    """Group runs into tables; return them and the runs that fit no table (no readable identity)."""
    by_group: dict[Group, list[Run]] = {}
    orphans = []
    for r in runs:
        if r.group is None:
            orphans.append(f"{r.status}: {r.label()}")
        else:
            by_group.setdefault(r.group, []).append(r)
    tables = []
    for group in sorted(by_group, key=Group.sort_key):
        group_runs = sorted(by_group[group], key=lambda r: (_method_key(r.method), _target_key(r.target), r.seed if r.seed is not None else -1, r.path))
        present = {r.method for r in group_runs if r.method != "?"}
        # MASF and DeepAll are always columns: an absent one is visible as "–", not a vanished column
        methods = sorted(present | {"masf", "deepall"}, key=_method_key)
        targets = sorted({r.target for r in group_runs if r.target != "?"}, key=_target_key)
        cells: dict[tuple[str, str], Cell] = {}
        sources: dict[str, tuple[str, ...]] = {}
        notes: dict[str, list[str]] = {"missing": [], "nan": [], "unreadable": [], "duplicate": [], "resumed": [], "few": []}
        for r in group_runs:
            if r.status == "ok" and r.seed is not None:
                cells.setdefault((r.method, r.target), Cell()).by_seed[r.seed] = 100.0 * r.acc  # type: ignore[operator]
                if r.sources:
                    sources.setdefault(r.target, r.sources)
            elif r.status == "ok":
                notes["unreadable"].append(r.label() + " (no seed)")
            else:
                notes[r.status].append(r.label())
            if r.resumed and r.status in ("ok", "nan"):
                notes["resumed"].append(r.label())
        if expect_seeds:
            tried = {(r.method, r.target) for r in group_runs}
            for t in targets:
                for m in methods:
                    if m not in ("masf", "deepall") and (m, t) not in tried:
                        continue  # ablations are often run at some targets only
                    n = len(cells.get((m, t), Cell()).by_seed)
                    if n < expect_seeds:
                        notes["few"].append(f"{m} {t}: {n}/{expect_seeds} seeds")
        tables.append(Table(group, methods, targets, cells, sources, notes))
    return tables, sorted(orphans)


def _sources(table: Table, target: str) -> list[str]:
    """The source magnifications: as the runs recorded them, else the other three."""
    if target in table.sources:
        return sorted(table.sources[target], key=_target_key)
    return [t for t in TARGET_ORDER if t != target]


def _num(x: float, signed: bool = False) -> str:
    """Two decimals; a rounded −0.00 prints as (+)0.00 so goldens do not flip on float noise."""
    if round(x, 2) == 0:
        x = 0.0
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def fmt_cell(cell: Cell) -> str:
    """`mean ± std (n=k)`; std is "–" for one seed, the cell is "–" for none."""
    values = cell.values
    if not values:
        return DASH
    mean, std = mean_std(values)
    return f"{_num(mean)} ± {DASH if std is None else _num(std)} (n={len(values)})"


def fmt_paired(diffs: Sequence[float]) -> str:
    """`+d [low, high] (n=k)`: mean paired difference and its 95 % t-interval."""
    if not diffs:
        return DASH
    ci = t_interval(diffs)
    mean = math.fsum(diffs) / len(diffs)
    interval = DASH if ci is None else f"{_num(ci[1], True)}, {_num(ci[2], True)}"
    return f"{_num(mean, True)} [{interval}] (n={len(diffs)})"


def _paper(task: str, method: str, target: str) -> tuple[float, float] | None:
    return PAPER.get(task, {}).get(method, {}).get(target)


def rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and body of one table as display strings (shared by Markdown and LaTeX)."""
    header = ["Source", "Target", *(METHOD_TITLES.get(m, m) for m in table.methods)]
    if table.paired:
        header.append("MASF − DeepAll (paired, 95% CI)")
    if table.group.paper:
        header += ["Paper MASF", "Δ MASF", "Paper DeepAll", "Δ DeepAll"]
    body = []
    for t in table.targets:
        row = [", ".join(mag(s) for s in _sources(table, t)), mag(t), *(fmt_cell(table.cell(m, t)) for m in table.methods)]
        if table.paired:
            row.append(fmt_paired(table.paired_diffs(t)))
        if table.group.paper:
            for m in ("masf", "deepall"):
                ref = _paper(table.group.task, m, t)
                values = table.cell(m, t).values
                row.append(DASH if ref is None else f"{ref[0]:.2f} ± {ref[1]:.2f}")
                row.append(DASH if ref is None or not values else _num(math.fsum(values) / len(values) - ref[0], True))
        body.append(row)
    return header, body


FOOTNOTE_STD = (
    "Accuracy (%) on the unseen target magnification: mean ± sample standard deviation (ddof=1) over seeds; "
    "n = number of seeds; std is \"–\" for n=1."
)
FOOTNOTE_PAIRED = "MASF − DeepAll: per-seed difference of runs with the same seed, mean and 95 % t-interval (percentage points)."


def _footnotes(table: Table) -> list[str]:
    lines = [FOOTNOTE_STD]
    if table.paired:
        lines.append(FOOTNOTE_PAIRED)
    if table.group.paper:
        lines.append(
            f"Paper: {PAPER_TABLE[table.group.task]} of Sikaroudi et al. (mean ± as printed; the paper does not say which spread); "
            "Δ = our mean − paper mean."
        )
    return lines


NOTE_TITLES = {
    "missing": "Missing/failed (run folder without metrics.json)",
    "nan": "Failed (NaN accuracy; not averaged)",
    "unreadable": "Unreadable metrics.json (not averaged)",
    "duplicate": "Duplicate seed (a second run of the same cell; not averaged)",
    "resumed": "Resumed runs (included)",
    "few": "Cells with fewer seeds than expected",
}


def _note_lines(table: Table) -> list[str]:
    out = []
    for key, title in NOTE_TITLES.items():
        items = table.notes[key]
        if items:
            out += ["", f"{title}:", ""]
            out += [f"- {item}" for item in items]
    return out


def to_markdown(tables: Sequence[Table], orphans: Sequence[str]) -> str:
    parts = []
    for table in tables:
        header, body = rows(table)
        lines = [f"### {table.group.title()}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        for line in _footnotes(table):
            lines += ["", line]
        lines += _note_lines(table)
        parts.append("\n".join(lines).rstrip() + "\n")
    if orphans:
        parts.append("\n".join(["### Runs that fit no table (no readable task/protocol/method)", "", *(f"- {o}" for o in orphans)]) + "\n")
    return "\n".join(parts)


CSV_COLUMNS = (
    "task", "protocol", "selection", "backbone", "steps", "data", "target", "sources", "column",
    "n", "mean", "std", "ci_low", "ci_high", "paper_mean", "paper_pm", "delta", "seeds",
)  # fmt: skip


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def to_csv(tables: Sequence[Table]) -> str:
    """Long format, one row per (table, target, column): numbers in percent, unrounded to 4 decimals."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for table in tables:
        g = table.group
        for t in table.targets:
            base = [g.task, g.protocol, g.selection, g.backbone, g.steps, g.data, t, " ".join(_sources(table, t))]
            for m in table.methods:
                cell = table.cell(m, t)
                values = cell.values
                mean, std = mean_std(values) if values else (None, None)
                ci = t_interval(values) if len(values) > 1 else None
                ref = _paper(g.task, m, t) if g.paper else None
                delta = None if ref is None or mean is None else mean - ref[0]
                w.writerow([
                    *base, m, len(values), _f(mean), _f(std), _f(ci and ci[1]), _f(ci and ci[2]),
                    _f(ref and ref[0]), _f(ref and ref[1]), _f(delta), " ".join(str(s) for s in sorted(cell.by_seed)),
                ])  # fmt: skip
            if table.paired:
                diffs = table.paired_diffs(t)
                mean, std = mean_std(diffs) if diffs else (None, None)
                ci = t_interval(diffs) if len(diffs) > 1 else None
                seeds = sorted(set(table.cell("masf", t).by_seed) & set(table.cell("deepall", t).by_seed))
                w.writerow([*base, "masf-deepall", len(diffs), _f(mean), _f(std), _f(ci and ci[1]), _f(ci and ci[2]), "", "", "", " ".join(map(str, seeds))])
    return buf.getvalue()


def _tex_escape(s: str) -> str:
    s = s.replace("\\", r"\textbackslash{}")
    for a, b in (("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        s = s.replace(a, b)
    return s


def _tex_cell(s: str) -> str:
    """Display string → LaTeX: × and ± and Δ and the en dash become math or text commands."""
    s = _tex_escape(s)
    for a, b in ((" · ", ", "), ("×", r"$\times$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("−", "--"), ("–", "--"), ("β", r"$\beta$")):
        s = s.replace(a, b)
    return s


def to_latex(tables: Sequence[Table]) -> str:
    """One `table` per group; needs \\usepackage{booktabs}."""
    out = ["% generated by experiments/collect.py; needs \\usepackage{booktabs}"]
    for table in tables:
        header, body = rows(table)
        out += [
            r"\begin{table}[t]",
            r"\centering\scriptsize",
            rf"\caption{{{_tex_cell(table.group.title())}. {_tex_cell(' '.join(_footnotes(table)))}}}",
            rf"\begin{{tabular}}{{ll{'c' * (len(header) - 2)}}}",
            r"\toprule",
            " & ".join(_tex_cell(h) for h in header) + r" \\",
            r"\midrule",
            *(" & ".join(_tex_cell(c) for c in r) + r" \\" for r in body),
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    return "\n".join(out)


# -- entry point --------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="folders searched recursively for run folders")
    parser.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md, PREFIX.csv and PREFIX.tex")
    parser.add_argument("--expect-seeds", type=int, metavar="N", help="list (method, target) cells with fewer than N seeds")
    args = parser.parse_args(argv)

    runs = find_runs(args.dirs)
    if not any(r.status != "missing" for r in runs):
        print(f"collect: no {METRICS_FILE} found under {', '.join(args.dirs)}", file=sys.stderr)
        return 1
    tables, orphans = build_tables(runs, args.expect_seeds)
    md = to_markdown(tables, orphans)
    print(md, end="")
    if args.out:
        prefix = Path(args.out)
        write_text_atomic(prefix.with_name(prefix.name + ".md"), md)
        write_text_atomic(prefix.with_name(prefix.name + ".csv"), to_csv(tables))
        write_text_atomic(prefix.with_name(prefix.name + ".tex"), to_latex(tables))
        print(f"\nwrote {prefix}.md, {prefix}.csv, {prefix}.tex")
    return 0


if __name__ == "__main__":
    sys.exit(main())
