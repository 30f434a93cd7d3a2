"""What every output of collect.py shows, whatever the format: method titles, the paper's numbers, the metric
families, and each table's cells, rows and footnotes as display strings (Markdown in collect.py, CSV and
LaTeX in collect_export.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from masf_lightning.eval.results import Group
from masf_lightning.eval.stats import mean_std, t_interval
from masf_lightning.eval.tables import ACC, AVERAGED, Cell, Row, Table, comparison

METHOD_TITLES = {
    "masf": "MASF", "masf_joint": "MASF (joint, Eq. 11 literal)", "deepall": "DeepAll",
    "mldg": "MLDG", "coral": "CORAL", "deepall_zoom": "DeepAll + zoom",
    "masf_no_gen": "MASF no-gen (β1=0)", "masf_no_gen_joint": "MASF no-gen (β1=0, joint)",
    "masf_no_tri": "MASF no-tri (β2=0)", "masf_no_tri_joint": "MASF no-tri (β2=0, joint)",
}  # fmt: skip
PAIRED_TITLES = {"masf_joint": "MASF (joint)"}
AVERAGING_TITLES = {"swad": "SWAD", "ema": "EMA"}


def title(m: str) -> str:
    """A column's title: `deepall+swad` → `DeepAll + SWAD`."""
    base, _, averaging = m.partition(AVERAGED)
    return METHOD_TITLES.get(base, base) + (f" + {AVERAGING_TITLES.get(averaging, averaging)}" if averaging else "")


def comparison_title(key: str) -> str:
    """`MASF − DeepAll`, `MASF + SWAD − MASF`."""
    variant, baseline = comparison(key)
    return f"{PAIRED_TITLES.get(variant, title(variant))} − {title(baseline)}"
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
    Family("Invariance: magnification robustness index (PathoROB; higher = more robust)",
           "Among each test image's k nearest neighbours from other patients (cosine; all magnifications): same class at "
           "another magnification / (that + other class at the same magnification); 1 = neighbourhoods follow the class, "
           "0 = the magnification, 0.5 = neither (de Jong et al. 2025; croma's RI, k by k-NN balanced accuracy).",
           (("mag_robustness_features", "F_ψ features"), ("mag_robustness_embeddings", "F_φ embeddings")), scale=1.0),
    Family("Calibration on the target", "Expected calibration error, 15 equal-width confidence bins (lower = better). Percent.",
           (("target_test_ece", "ECE"),)),
)  # fmt: skip
ORACLE_TITLE = "As the paper's code reported: best test accuracy during training (not an honest estimate)"
ORACLE_NOTE = (
    "The target test accuracy at the best of the validation checks, judged on the test images themselves: it selects on "
    "the test set, so it is optimistic and is not comparable to the tables above. Percent."
)

def mag(target: str) -> str:
    """'40x' → '40×' as the paper writes it."""
    return target[:-1] + "×" if target.endswith("x") else target


def num(x: float, signed: bool = False) -> str:
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
    return f"{num(mean)} ± {DASH if std is None else num(std)} (n={len(values)})"


def fmt_paired(diffs: Sequence[float]) -> str:
    """`+d ± h [low, high] (n=k)`: mean paired difference, half-width h of its 95 % t-interval, the interval."""
    if not diffs:
        return DASH
    ci = t_interval(diffs)
    mean = math.fsum(diffs) / len(diffs)
    if ci is None:
        return f"{num(mean, True)} [{DASH}] (n={len(diffs)})"
    return f"{num(mean, True)} ± {num(ci[2] - mean)} [{num(ci[1], True)}, {num(ci[2], True)}] (n={len(diffs)})"


def paper_ref(task: str, method: str, target: str) -> tuple[float, float] | None:
    return PAPER.get(task, {}).get(method, {}).get(target)


def is_paper(group: Group) -> bool:
    """Whether the paper has numbers for this table (BreaKHis, its task, its image-level protocol)."""
    return group.data == "breakhis" and group.protocol == PAPER_PROTOCOL and group.task in PAPER


def paired_title(key: str) -> str:
    return f"{comparison_title(key)} (paired, 95% CI)"


def sources_label(row: Row) -> str:
    return ", ".join(mag(s) for s in row[1])


def rows(table: Table) -> tuple[list[str], list[list[str]]]:
    """Header and body of the accuracy table as display strings (shared by Markdown and LaTeX)."""
    header = ["Source", "Target", *(title(m) for m in table.methods), *map(paired_title, table.paired)]
    paper = is_paper(table.group)
    if paper:
        header += ["Paper MASF", "Δ MASF", "Paper DeepAll", "Δ DeepAll"]
    body = []
    for row in table.rows:
        line = [sources_label(row), mag(row[0]), *(fmt_cell(table.cell(m, row)) for m in table.methods)]
        line += [fmt_paired(table.paired_diffs(v, row)[0]) for v in table.paired]
        if paper:
            for m in ("masf", "deepall"):
                ref = paper_ref(table.group.task, m, row[0])
                values = table.cell(m, row).values
                line.append(DASH if ref is None else f"{ref[0]:.2f} ± {ref[1]:.2f}")
                line.append(DASH if ref is None or not values else num(math.fsum(values) / len(values) - ref[0], True))
        body.append(line)
    return header, body


def family_rows(table: Table, family: Family) -> tuple[list[str], list[list[str]]] | None:
    """One family's table: a line per (row, metric) the runs have; None when no run has any of its metrics."""
    keys = [(k, label) for k, label in family.metrics if table.has(k)]
    if not keys:
        return None
    header = ["Source", "Target", "Metric", *(title(m) for m in table.methods), *map(paired_title, table.paired)]
    body = []
    for row in table.rows:
        for key, label in keys:
            if not table.has(key, row):
                continue
            line = [sources_label(row), mag(row[0]), label, *(fmt_cell(table.cell(m, row, key, family.scale)) for m in table.methods)]
            body.append(line + [fmt_paired(table.paired_diffs(v, row, key, family.scale)[0]) for v in table.paired])
    return header, body


def oracle_rows(table: Table) -> tuple[list[str], list[list[str]]] | None:
    if not table.has(ORACLE):
        return None
    header = ["Source", "Target", *(title(m) for m in table.methods)]
    return header, [
        [sources_label(row), mag(row[0]), *(fmt_cell(table.cell(m, row, ORACLE)) for m in table.methods)] for row in table.rows if table.has(ORACLE, row)
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


def table_title(table: Table) -> str:
    return table.group.title() + (f" · draws chosen by {table.selection.rule.title}" if table.selection else "")


def footnotes(table: Table) -> list[str]:
    lines = [FOOTNOTE_STD]
    if table.selection:
        lines.append(table.selection.rule.note + " Each method − DeepAll difference pairs the two selected draws' runs of the same seed.")
    if table.paired:
        lines.append(FOOTNOTE_PAIRED)
    if is_paper(table.group):
        lines.append(
            f"Paper: {PAPER_TABLE[table.group.task]} of Sikaroudi et al. (mean ± as printed; the paper does not say which spread); "
            "Δ = our mean − paper mean (MASF: the public codes' separate optimizers)."
        )
    return lines


