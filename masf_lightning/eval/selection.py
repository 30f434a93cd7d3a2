"""Choosing one random-search draw per (method, target), by the rules of DomainBed (Gulrajani & Lopez-Paz,
"In Search of Lost Domain Generalization", ICLR 2021, Sec. 3).

Every draw K of a method ran with the same training seeds; a rule scores each draw by the mean over its
seeds of one number its runs recorded at their selected checkpoint, and keeps the best (ties: the lower K):
- training-domain validation (`source_val_acc`): validation images of the source magnifications only —
  what a practitioner has, and the honest default;
- test-domain validation, the oracle (`target_val_acc`): validation images of the unseen magnification —
  an upper bound that assumes target labels, reported apart and labelled.
A draw with a failed run (NaN) or without the score is not selectable; it is listed, never averaged over.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from masf_lightning.eval.results import Run


@dataclass(frozen=True)
class SelectionRule:
    name: str  # short, for file names and the CSV
    key: str  # the metrics.json score a draw is chosen by (mean over its seeds)
    title: str
    note: str
    honest: bool


RULES = (
    SelectionRule(
        "training_domain", "source_val_acc", "training-domain validation",
        "Each cell's draw is the one with the best mean source-validation accuracy over its seeds (validation images of the "
        "source magnifications only, at each run's selected checkpoint): the honest rule.", honest=True,
    ),
    SelectionRule(
        "oracle", "target_val_acc", "test-domain validation (oracle; not an honest estimate)",
        "Each cell's draw is the one with the best mean target-validation accuracy over its seeds: it looks at labelled "
        "images of the unseen magnification, so it is an upper bound, not comparable to the honest table.", honest=False,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class DrawScore:
    draw: int
    seeds: tuple[int, ...]  # the seeds that finished
    failed: tuple[int, ...]  # seeds that failed (NaN) or lack the score
    score: float | None  # mean score over `seeds` (fraction); None when not selectable

    @property
    def selectable(self) -> bool:
        return self.score is not None and not self.failed


@dataclass(frozen=True)
class Choice:
    """The selected draw of one cell (None when no draw is selectable) and how every draw scored."""

    draw: int | None
    scores: tuple[DrawScore, ...]

    @property
    def chosen(self) -> DrawScore | None:
        return next((s for s in self.scores if s.draw == self.draw), None)


def score_draws(by_draw: Mapping[int, Mapping[int, Run]], failed: Mapping[int, tuple[int, ...]], key: str) -> list[DrawScore]:
    """Each draw's mean `key` over its finished seeds; `failed` lists each draw's failed seeds."""
    out = []
    for draw in sorted(set(by_draw) | set(failed)):
        runs = by_draw.get(draw, {})
        values = {s: r.value(key) for s, r in runs.items()}
        missing = tuple(sorted(s for s, v in values.items() if v is None))
        got = [v for v in values.values() if v is not None]
        bad = tuple(sorted(set(failed.get(draw, ())) | set(missing)))
        score = math.fsum(got) / len(got) if got and not bad else None
        out.append(DrawScore(draw, tuple(sorted(s for s, v in values.items() if v is not None)), bad, score))
    return out


def choose(by_draw: Mapping[int, Mapping[int, Run]], failed: Mapping[int, tuple[int, ...]], rule: SelectionRule) -> Choice:
    scores = score_draws(by_draw, failed, rule.key)
    ok = [s for s in scores if s.selectable]
    best = max(ok, key=lambda s: (s.score, -s.draw)) if ok else None
    return Choice(best.draw if best else None, tuple(scores))
