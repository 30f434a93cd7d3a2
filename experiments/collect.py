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
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from masf_lightning.eval.results import METRICS_FILE, Group, find_runs
from masf_lightning.eval.stats import mean_std, power, t_interval
from masf_lightning.eval.tables import ACC, Cell, Row, Table, build_tables
from masf_lightning.io import write_text_atomic

METHOD_TITLES = {
    "masf": "MASF", "masf_joint": "MASF (joint, Eq. 11 literal)", "deepall": "DeepAll",
    "mldg": "MLDG", "coral": "CORAL", "deepall_zoom": "DeepAll + zoom",
    "masf_no_gen": "MASF no-gen (β1=0)", "masf_no_gen_joint": "MASF no-gen (β1=0, joint)",
    "masf_no_tri": "MASF no-tri (β2=0)", "masf_no_tri_joint": "MASF no-tri (β2=0, joint)",
}  # fmt: skip
PAIRED_TITLES = {"masf_joint": "MASF (joint)"}
DASH = "–"
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

# -- tables -------------------------------------------------------------------------------------
def mag(target: str) -> str:
    """'40x' → '40×' as the paper writes it."""
    return target[:-1] + "×" if target.endswith("x") else target


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


POWER_TARGET = 2.0  # points: the difference a power line asks about (the paper's effects are 1–4 points)
POWER_NOTE = (
    "Power, from each comparison's observed paired standard deviation over its n seeds: the 95 % interval's half-width "
    "is the smallest difference these seeds resolve (smaller ones cannot be told from 0); \"±2 needs n ≥ N\" is how many "
    "seeds would bring the half-width to 2 points (a true 2-point difference is then told from 0 about half the time), "
    "and 80 % power how many would detect it four times in five (t₀.₉₇₅ + z₀.₈ approximation)."
)


def _title(table: Table) -> str:
    return table.group.title() + (f" · draws chosen by {table.selection.rule.title}" if table.selection else "")


def _footnotes(table: Table) -> list[str]:
    lines = [FOOTNOTE_STD]
    if table.selection:
        lines.append(table.selection.rule.note + " Each method − DeepAll difference pairs the two selected draws' runs of the same seed.")
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


def power_lines(table: Table) -> list[str]:
    """A line under each paired comparison of the accuracy table: what its seeds resolve, what would resolve 2 points."""
    out = []
    for row in table.rows:
        for v in table.paired:
            diffs, _ = table.paired_diffs(v, row)
            if not diffs:
                continue
            name = f"{PAIRED_TITLES.get(v, METHOD_TITLES.get(v, v))} − DeepAll at {mag(row[0])}"
            p = power(diffs, POWER_TARGET)
            if p is None:
                out.append(f"- {name}: 1 seed, no interval; 2 seeds at least.")
                continue
            out.append(
                f"- {name}: n = {p.n} seeds, paired sd {_num(p.sd)} points, so these seeds resolve ±{_num(p.half_width)} points; "
                f"±{POWER_TARGET:g} needs n ≥ {p.n_resolving} (80 % power: n ≥ {p.n_power80})."
            )
    return out


def _values(run_hparams: dict[str, Any], keys: list[str]) -> str:
    def show(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list) else str(v)

    return ", ".join(f"{k}={show(run_hparams[k])}" for k in keys if k in run_hparams)


def draw_rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Each cell's selected draw: its score, the draws and seeds behind it, and its hyperparameters (those that vary)."""
    sel = table.selection
    assert sel is not None
    header = ["Target", "Method", "Selected draw", f"Mean {sel.rule.key}", "Draws selectable", "Seeds", "Values of the selected draw"]
    body = []
    for row in table.rows:
        for m in table.methods:
            choice = sel.choices.get((m, row))
            if choice is None:
                continue
            by_draw = {d: next(iter(runs.values())).metrics.get("hparams") or {} for d, runs in sel.draws.get((m, row), {}).items() if runs}
            varying = sorted({k for hp in by_draw.values() for k, v in hp.items() if any(o.get(k) != v for o in by_draw.values())})
            chosen, bad = choice.chosen, [str(s.draw) for s in choice.scores if not s.selectable]
            usable = f"{len(choice.scores) - len(bad)} of {len(choice.scores)}" + (f" (not: {', '.join(bad)})" if bad else "")
            draw = DASH if choice.draw is None else f"{choice.draw}{' (defaults)' if choice.draw == 0 else ''}"
            score = DASH if chosen is None or chosen.score is None else _num(100 * chosen.score)
            seeds = DASH if chosen is None else " ".join(map(str, chosen.seeds))
            body.append([mag(row[0]), METHOD_TITLES.get(m, m), draw, score, usable, seeds, _values(by_draw.get(choice.draw, {}), varying) or DASH])
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def to_markdown(tables: Sequence[Table], orphans: Sequence[str]) -> str:
    parts = []
    for table in tables:
        lines = [f"### {_title(table)}", "", *_md_table(*rows(table))]
        for line in _footnotes(table):
            lines += ["", line]
        if table.paired:
            lines += ["", "Power of each comparison:", "", *power_lines(table), "", POWER_NOTE]
        if table.selection:
            lines += ["", f"#### Selected draws, {table.selection.rule.title}", "", *_md_table(*draw_rows(table))]
            if not table.selection.rule.honest:  # the oracle: its accuracy table and draws only, apart from the honest one
                parts.append("\n".join(lines).rstrip() + "\n")
                continue
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
    "draw_rule", "draw", "seeds_for_2pts", "seeds_for_2pts_power80",
)  # fmt: skip


def _f(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _stats(values: list[float]) -> list[str]:
    mean, std = mean_std(values) if values else (None, None)
    ci = t_interval(values) if len(values) > 1 else None
    return [str(len(values)), _f(mean), _f(std), _f(ci and ci[1]), _f(ci and ci[2]), _f(ci and ci[2] - ci[0])]


def _draw_columns(table: Table, method: str, row: Row) -> list[str]:
    """(rule, selected draw) of a cell in a table across draws; empty strings elsewhere."""
    if table.selection is None:
        return ["", ""]
    choice = table.selection.choices.get((method, row))
    return [table.selection.rule.name, "" if choice is None or choice.draw is None else str(choice.draw)]


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
                    seeds = " ".join(map(str, sorted(cell.by_seed)))
                    w.writerow([*base, key, m, *_stats(cell.values), _f(ref and ref[0]), _f(ref and ref[1]), _f(delta), seeds, *_draw_columns(table, m, row), "", ""])
                for v in table.paired if key != ORACLE else ():
                    diffs, seeds = table.paired_diffs(v, row, key, scale)
                    p = power(diffs, POWER_TARGET)
                    needs = [str(p.n_resolving), str(p.n_power80)] if p else ["", ""]
                    w.writerow([*base, key, f"{v}-deepall", *_stats(diffs), "", "", "", " ".join(map(str, seeds)), *_draw_columns(table, v, row)[:1], "", *needs])
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
            rf"\caption{{{_tex_cell(_title(table))}. {_tex_cell(' '.join(_footnotes(table)))}}}",
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
