"""Tables 1 and 2 of the paper from finished runs, and a table per metric family, mean ± std over seeds.

    python experiments/collect.py multirun/ [more dirs...] [--out results/table] [--expect-seeds 3]

Reads every `metrics.json` below the given folders (masf_lightning/eval/results.py) and prints, per
(task, protocol, selection, backbone, steps, data) group: target accuracy per (method, row) with the
paper's numbers where they apply, then one table per metric family (fit vs generalization, patient
level, search, invariance, calibration), each with paired method − DeepAll intervals, and last, apart,
what the paper's code reported (best test accuracy during training). `--out PREFIX` also writes
PREFIX.md, PREFIX.csv (every number, long format) and PREFIX.tex (the accuracy tables). Runs that never
finished, failed with a NaN accuracy, were resumed, or duplicate a seed are listed, never averaged over.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from masf_lightning.eval.results import METRICS_FILE, TARGET_ORDER, Group, Run, find_runs
from masf_lightning.eval.stats import mean_std, t_interval
from masf_lightning.io import write_text_atomic

METHOD_ORDER = (
    "masf", "masf_joint", "deepall", "mldg", "coral", "deepall_zoom",
    "masf_no_gen", "masf_no_gen_joint", "masf_no_tri", "masf_no_tri_joint",
)  # fmt: skip
METHOD_TITLES = {
    "masf": "MASF", "masf_joint": "MASF (joint, Eq. 11 literal)", "deepall": "DeepAll",
    "mldg": "MLDG", "coral": "CORAL", "deepall_zoom": "DeepAll + zoom",
    "masf_no_gen": "MASF no-gen (β1=0)", "masf_no_gen_joint": "MASF no-gen (β1=0, joint)",
    "masf_no_tri": "MASF no-tri (β2=0)", "masf_no_tri_joint": "MASF no-tri (β2=0, joint)",
}  # fmt: skip
PAIRED = ("masf", "masf_joint", "mldg", "coral", "deepall_zoom")  # each against DeepAll, seed by seed
PAIRED_TITLES = {"masf_joint": "MASF (joint)"}
DASH = "–"
ACC = "target_test_acc"
ORACLE = "oracle_target_test_acc"

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


@dataclass(frozen=True)
class Family:
    """Metrics read together; `scale` 100 shows a fraction in percent."""

    title: str
    note: str
    metrics: tuple[tuple[str, str], ...]  # (metrics.json key, row label)
    scale: float = 100.0


def _search(space: str, name: str) -> Family:
    return Family(
        f"Cross-magnification search, {name}",
        "Queries: target test images; archive: every source-magnification image except the query's own patient's. "
        "top-k = majority vote of the k nearest; mAP@k by class. Own-patient recall@k: share of queries with an image of "
        "their own patient (source-magnification test images) among the k nearest. Percent.",
        (*((f"knn{k}_{space}_acc", f"top-{k} vote accuracy") for k in (1, 3, 5)), *((f"map{k}_{space}", f"mAP@{k}") for k in (5, 10)),
         *((f"own_patient_recall{k}_{space}", f"own-patient recall@{k}") for k in (1, 5, 10))),
    )  # fmt: skip


FAMILIES = (
    Family("Fit or generalization: source-test beside target-test accuracy",
           "Source test: mean accuracy over the source magnifications' test images (the magnifications trained on). Percent.",
           (("source_test_acc", "source test accuracy"), (ACC, "target test accuracy"))),
    Family("Class balance on the target", "Balanced accuracy = mean per-class recall. Percent.",
           (("target_test_balanced_acc", "balanced accuracy"), ("target_test_macro_f1", "macro-F1"))),
    Family("Patient level on the target (Spanhol et al., 2016)",
           "Patient score = share of a patient's target test images classified right; recognition rate = their mean over "
           "patients; vote = share of patients whose majority vote is right. Percent.",
           (("patient_recognition_rate", "patient recognition rate"), ("patient_vote_acc", "patient majority vote"))),
    _search("features", "F_ψ features"),
    _search("embeddings", "F_φ embeddings"),
    Family("Invariance: magnification predictability (lower = more invariant)",
           "Cross-validated (folds by patient) balanced accuracy of a logistic regression predicting the magnification from "
           "the test images of all magnifications; chance 25 %. Percent.",
           (("mag_predictability_features", "F_ψ features"), ("mag_predictability_embeddings", "F_φ embeddings"))),
    Family("Invariance: class-conditional source–target gap (lower = more invariant)",
           "Mean over classes of ‖source class mean − target class mean‖ / within-class spread (test images); 0 = coincide.",
           (("class_gap_features", "F_ψ features"), ("class_gap_embeddings", "F_φ embeddings")), scale=1.0),
    Family("Calibration on the target", "Expected calibration error, 15 equal-width confidence bins (lower = better). Percent.",
           (("target_test_ece", "ECE"),)),
)  # fmt: skip
ORACLE_TITLE = "As the paper's code reported: best test accuracy during training (not an honest estimate)"
ORACLE_NOTE = (
    "The target test accuracy at the best of the validation checks, judged on the test images themselves: it selects on "
    "the test set, so it is optimistic and is not comparable to the tables above. Percent."
)

Row = tuple[str, tuple[str, ...]]  # (target, sources)


# -- tables -------------------------------------------------------------------------------------
def mag(target: str) -> str:
    """'40x' → '40×' as the paper writes it."""
    return target[:-1] + "×" if target.endswith("x") else target


def _target_key(t: str) -> tuple[int, str]:
    return (TARGET_ORDER.index(t) if t in TARGET_ORDER else len(TARGET_ORDER), t)


def _row_key(row: Row) -> tuple[object, ...]:
    return (_target_key(row[0]), -len(row[1]), [_target_key(s) for s in row[1]])


def _method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


@dataclass
class Cell:
    """One method in one row: a metric of its finished runs (display units), by seed."""

    by_seed: dict[int, float] = field(default_factory=dict)

    @property
    def values(self) -> list[float]:
        return [self.by_seed[s] for s in sorted(self.by_seed)]


@dataclass
class Table:
    group: Group
    methods: list[str]
    rows: list[Row]
    runs: dict[tuple[str, Row], dict[int, Run]]
    notes: dict[str, list[str]]

    @property
    def paired(self) -> list[str]:
        """The methods with a paired difference column against DeepAll."""
        return [m for m in PAIRED if m in self.methods] if "deepall" in self.methods else []

    def cell(self, method: str, row: Row, key: str = ACC, scale: float = 100.0) -> Cell:
        runs = self.runs.get((method, row), {})
        return Cell({s: scale * v for s, r in runs.items() if (v := r.value(key)) is not None})

    def paired_diffs(self, variant: str, row: Row, key: str = ACC, scale: float = 100.0) -> tuple[list[float], list[int]]:
        """Variant − DeepAll per seed, over the seeds both have the metric for; and those seeds."""
        a, b = self.cell(variant, row, key, scale).by_seed, self.cell("deepall", row, key, scale).by_seed
        seeds = sorted(set(a) & set(b))
        return [a[s] - b[s] for s in seeds], seeds

    def has(self, key: str, row: Row | None = None) -> bool:
        """Whether any finished run (of `row`, if given) has the metric."""
        return any(r.value(key) is not None for (_, rw), runs in self.runs.items() if row in (None, rw) for r in runs.values())


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
        group_runs = sorted(by_group[group], key=lambda r: (_method_key(r.method), _row_key(r.row), r.seed if r.seed is not None else -1, r.path))
        present = {r.method for r in group_runs if r.method != "?"}
        # MASF and DeepAll are always columns: an absent one is visible as "–", not a vanished column
        methods = sorted(present | {"masf", "deepall"}, key=_method_key)
        rows = sorted({r.row for r in group_runs if r.target != "?"}, key=_row_key)
        cells: dict[tuple[str, Row], dict[int, Run]] = {}
        notes: dict[str, list[str]] = {"missing": [], "nan": [], "unreadable": [], "duplicate": [], "resumed": [], "few": []}
        for r in group_runs:
            if r.status == "ok" and r.seed is not None:
                cells.setdefault((r.method, r.row), {})[r.seed] = r
            elif r.status == "ok":
                notes["unreadable"].append(r.label() + " (no seed)")
            else:
                notes[r.status].append(r.label())
            if r.resumed and r.status in ("ok", "nan"):
                notes["resumed"].append(r.label())
        if expect_seeds:
            tried = {(r.method, r.row) for r in group_runs}
            for row in rows:
                for m in methods:
                    # ablations and variants are often run at some targets only; MASF never from one source
                    if (m, row) not in tried and (m not in ("masf", "deepall") or len(row[1]) < 2):
                        continue
                    n = len(cells.get((m, row), {}))
                    if n < expect_seeds:
                        notes["few"].append(f"{m} {_row_label(row)}: {n}/{expect_seeds} seeds")
        tables.append(Table(group, methods, rows, cells, notes))
    return tables, sorted(orphans)


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
    """`+d ± h [low, high] (n=k)`: mean paired difference, half-width h of its 95 % t-interval, the interval."""
    if not diffs:
        return DASH
    ci = t_interval(diffs)
    mean = math.fsum(diffs) / len(diffs)
    if ci is None:
        return f"{_num(mean, True)} [{DASH}] (n={len(diffs)})"
    return f"{_num(mean, True)} ± {_num(ci[2] - mean)} [{_num(ci[1], True)}, {_num(ci[2], True)}] (n={len(diffs)})"


def _paper(task: str, method: str, target: str) -> tuple[float, float] | None:
    return PAPER.get(task, {}).get(method, {}).get(target)


def _is_paper(group: Group) -> bool:
    """Whether the paper has numbers for this table (its task, its image-level protocol)."""
    return group.protocol == PAPER_PROTOCOL and group.task in PAPER


def _paired_title(variant: str) -> str:
    return f"{PAIRED_TITLES.get(variant, METHOD_TITLES.get(variant, variant))} − DeepAll (paired, 95% CI)"


def _row_label(row: Row) -> str:
    """`400x`, or `400x from 40x` for a row that is not leave-one-out."""
    loo = tuple(t for t in TARGET_ORDER if t != row[0])
    return row[0] if row[1] == loo else f"{row[0]} from {'+'.join(row[1])}"


def _sources(row: Row) -> str:
    return ", ".join(mag(s) for s in row[1])


def rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and body of the accuracy table as display strings (shared by Markdown and LaTeX)."""
    header = ["Source", "Target", *(METHOD_TITLES.get(m, m) for m in table.methods), *map(_paired_title, table.paired)]
    paper = _is_paper(table.group)
    if paper:
        header += ["Paper MASF", "Δ MASF", "Paper DeepAll", "Δ DeepAll"]
    body = []
    for row in table.rows:
        line = [_sources(row), mag(row[0]), *(fmt_cell(table.cell(m, row)) for m in table.methods)]
        line += [fmt_paired(table.paired_diffs(v, row)[0]) for v in table.paired]
        if paper:
            for m in ("masf", "deepall"):
                ref = _paper(table.group.task, m, row[0])
                values = table.cell(m, row).values
                line.append(DASH if ref is None else f"{ref[0]:.2f} ± {ref[1]:.2f}")
                line.append(DASH if ref is None or not values else _num(math.fsum(values) / len(values) - ref[0], True))
        body.append(line)
    return header, body


def family_rows(table: Table, family: Family) -> tuple[list[str], list[list[str]]] | None:
    """One family's table: a line per (row, metric) the runs have; None when no run has any of its metrics."""
    keys = [(k, label) for k, label in family.metrics if table.has(k)]
    if not keys:
        return None
    header = ["Source", "Target", "Metric", *(METHOD_TITLES.get(m, m) for m in table.methods), *map(_paired_title, table.paired)]
    body = []
    for row in table.rows:
        for key, label in keys:
            if not table.has(key, row):
                continue
            line = [_sources(row), mag(row[0]), label, *(fmt_cell(table.cell(m, row, key, family.scale)) for m in table.methods)]
            body.append(line + [fmt_paired(table.paired_diffs(v, row, key, family.scale)[0]) for v in table.paired])
    return header, body


def oracle_rows(table: Table) -> tuple[list[str], list[list[str]]] | None:
    if not table.has(ORACLE):
        return None
    header = ["Source", "Target", *(METHOD_TITLES.get(m, m) for m in table.methods)]
    return header, [
        [_sources(row), mag(row[0]), *(fmt_cell(table.cell(m, row, ORACLE)) for m in table.methods)] for row in table.rows if table.has(ORACLE, row)
    ]


FOOTNOTE_STD = (
    "Accuracy (%) on the unseen target magnification: mean ± sample standard deviation (ddof=1) over seeds; "
    "n = number of seeds; std is \"–\" for n=1."
)
FOOTNOTE_PAIRED = (
    "Method − DeepAll: per-seed difference of runs with the same seed: mean ± half-width of its 95 % t-interval "
    "[the interval] (percentage points)."
)


def _footnotes(table: Table) -> list[str]:
    lines = [FOOTNOTE_STD]
    if table.paired:
        lines.append(FOOTNOTE_PAIRED)
    if _is_paper(table.group):
        lines.append(
            f"Paper: {PAPER_TABLE[table.group.task]} of Sikaroudi et al. (mean ± as printed; the paper does not say which spread); "
            "Δ = our mean − paper mean (MASF: the public codes' separate optimizers)."
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


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def to_markdown(tables: Sequence[Table], orphans: Sequence[str]) -> str:
    parts = []
    for table in tables:
        lines = [f"### {table.group.title()}", "", *_md_table(*rows(table))]
        for line in _footnotes(table):
            lines += ["", line]
        for family in FAMILIES:
            got = family_rows(table, family)
            if got:
                lines += ["", f"#### {family.title}", "", *_md_table(*got), "", family.note]
        got = oracle_rows(table)
        if got:
            lines += ["", f"#### {ORACLE_TITLE}", "", *_md_table(*got), "", ORACLE_NOTE]
        for key, title in NOTE_TITLES.items():
            if table.notes[key]:
                lines += ["", f"{title}:", "", *(f"- {item}" for item in table.notes[key])]
        parts.append("\n".join(lines).rstrip() + "\n")
    if orphans:
        parts.append("\n".join(["### Runs that fit no table (no readable task/protocol/method)", "", *(f"- {o}" for o in orphans)]) + "\n")
    return "\n".join(parts)


CSV_COLUMNS = (
    "task", "protocol", "selection", "backbone", "steps", "data", "target", "sources", "metric", "column",
    "n", "mean", "std", "ci_low", "ci_high", "half_width", "paper_mean", "paper_pm", "delta", "seeds",
)  # fmt: skip


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _stats(values: list[float]) -> list[str]:
    mean, std = mean_std(values) if values else (None, None)
    ci = t_interval(values) if len(values) > 1 else None
    return [str(len(values)), _f(mean), _f(std), _f(ci and ci[1]), _f(ci and ci[2]), _f(ci and ci[2] - ci[0])]


def to_csv(tables: Sequence[Table]) -> str:
    """Long format, one line per (table, row, metric, column), in display units, unrounded to 4 decimals."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    metrics = [(ACC, 100.0), *((k, f.scale) for f in FAMILIES for k, _ in f.metrics if k != ACC), (ORACLE, 100.0)]
    for table in tables:
        g = table.group
        for row in table.rows:
            base = [g.task, g.protocol, g.selection, g.backbone, g.steps, g.data, row[0], " ".join(row[1])]
            for key, scale in metrics:
                if key != ACC and not table.has(key):
                    continue
                for m in table.methods:
                    cell = table.cell(m, row, key, scale)
                    ref = _paper(g.task, m, row[0]) if key == ACC and _is_paper(g) else None
                    delta = None if ref is None or not cell.values else mean_std(cell.values)[0] - ref[0]
                    w.writerow([*base, key, m, *_stats(cell.values), _f(ref and ref[0]), _f(ref and ref[1]), _f(delta), " ".join(map(str, sorted(cell.by_seed)))])
                for v in table.paired if key != ORACLE else ():
                    diffs, seeds = table.paired_diffs(v, row, key, scale)
                    w.writerow([*base, key, f"{v}-deepall", *_stats(diffs), "", "", "", " ".join(map(str, seeds))])
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
    """The accuracy table of each group; needs \\usepackage{booktabs}."""
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
