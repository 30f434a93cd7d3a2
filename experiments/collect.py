"""Tables 1 and 2 of the paper from finished runs, and a table per metric family, mean ± std over seeds.

    python experiments/collect.py multirun/ [more dirs...] [--out results/table] [--expect-seeds 3]
    python experiments/collect.py --from-mlflow http://host:5000 --experiment demo   # the same, from a tracking server

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
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its siblings, run as `python experiments/collect.py`

from collect_cells import (  # noqa: E402
    DASH,
    FAMILIES,
    ORACLE_NOTE,
    ORACLE_TITLE,
    POWER_NOTE,
    POWER_TARGET,
    comparison_title,
    family_rows,
    footnotes,
    mag,
    num,
    oracle_rows,
    rows,
    table_title,
    title,
)  # fmt: skip
from collect_export import to_csv, to_latex  # noqa: E402

from masf_lightning.errors import MasfError  # noqa: E402
from masf_lightning.eval.results import METRICS_FILE, find_runs, runs_from_records  # noqa: E402
from masf_lightning.eval.stats import power  # noqa: E402
from masf_lightning.eval.tables import Table, build_tables  # noqa: E402
from masf_lightning.io import write_text_atomic  # noqa: E402

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
            name = f"{comparison_title(v)} at {mag(row[0])}"
            p = power(diffs, POWER_TARGET)
            if p is None:
                out.append(f"- {name}: 1 seed, no interval; 2 seeds at least.")
                continue
            out.append(
                f"- {name}: n = {p.n} seeds, paired sd {num(p.sd)} points, so these seeds resolve ±{num(p.half_width)} points; "
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
            score = DASH if chosen is None or chosen.score is None else num(100 * chosen.score)
            seeds = DASH if chosen is None else " ".join(map(str, chosen.seeds))
            body.append([mag(row[0]), title(m), draw, score, usable, seeds, _values(by_draw.get(choice.draw, {}), varying) or DASH])
    return header, body


def _md_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def to_markdown(tables: Sequence[Table], orphans: Sequence[str]) -> str:
    parts = []
    for table in tables:
        lines = [f"### {table_title(table)}", "", *_md_table(*rows(table))]
        for line in footnotes(table):
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
        for key, heading in NOTE_TITLES.items():
            if table.notes[key]:
                lines += ["", f"{heading}:", "", *(f"- {item}" for item in table.notes[key])]
        parts.append("\n".join(lines).rstrip() + "\n")
    if orphans:
        parts.append("\n".join(["### Runs that fit no table (no readable task/protocol/method)", "", *(f"- {o}" for o in orphans)]) + "\n")
    return "\n".join(parts)


# -- entry point --------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="*", metavar="DIR", help="folders searched recursively for run folders")
    parser.add_argument("--from-mlflow", metavar="URI", help="read the runs from this MLflow tracking server instead (with --experiment)")
    parser.add_argument("--experiment", metavar="NAME", help="--from-mlflow: the experiment (a sweep's is named after its folder)")
    parser.add_argument("--out", metavar="PREFIX", help="also write PREFIX.md, PREFIX.csv and PREFIX.tex")
    parser.add_argument("--expect-seeds", type=int, metavar="N", help="list (method, target) cells with fewer than N seeds")
    parser.add_argument("--online", action="store_true", help="count each run with averaging's online model as the same method without "
                        "averaging (target accuracy only): one sweep gives both columns; a run of its own wins")
    args = parser.parse_args(argv)

    if bool(args.from_mlflow) == bool(args.dirs) or bool(args.from_mlflow) != bool(args.experiment):
        parser.error("give run folders, or --from-mlflow URI --experiment NAME")
    if args.from_mlflow:
        from masf_lightning.track.mlflow_runs import read_experiment

        try:
            runs = runs_from_records(read_experiment(args.from_mlflow, args.experiment))
        except MasfError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        where = f"experiment {args.experiment} of {args.from_mlflow}"
    else:
        runs, where = find_runs(args.dirs, online=args.online), ", ".join(args.dirs)
    if not any(r.status != "missing" for r in runs):
        print(f"collect: no {METRICS_FILE} found under {where}", file=sys.stderr)
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
