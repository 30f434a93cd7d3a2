"""After training: evaluate the selected checkpoint on every magnification.

`evaluate` only orchestrates; each metric is a pure function in its own module (metrics, patient,
retrieval, invariance, robustness, calibration). Headline numbers are top-level scalars so collect.py can
tabulate them; per-patient and per-bin detail sits beside them as dicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch

from masf_lightning.algorithms import DGModule
from masf_lightning.data.datamodule import MagnificationDataModule
from masf_lightning.eval.calibration import reliability
from masf_lightning.eval.embeddings import collect
from masf_lightning.eval.invariance import class_gap, magnification_predictability
from masf_lightning.eval.metrics import classification_metrics
from masf_lightning.eval.patient import patient_metrics
from masf_lightning.eval.retrieval import class_search, own_patient_search
from masf_lightning.eval.robustness import magnification_robustness

SPACES = ("features", "embeddings")  # F_ψ(x) and F_φ(F_ψ(x)); DeepAll has no F_φ
MAP_KS = (5, 10)
RECALL_KS = (1, 5, 10)


class _Subsets:
    """collect() of each (magnification, split) once, with each image's patient as an integer code."""

    def __init__(self, module: DGModule, dm: MagnificationDataModule):
        self.module, self.dm = module, dm
        self.codes = torch.as_tensor(pd.factorize(dm.index["patient"])[0], dtype=torch.long)
        self._cache: dict[tuple[str, str], dict[str, torch.Tensor]] = {}

    def get(self, domain: str, split: str) -> dict[str, torch.Tensor]:
        if (domain, split) not in self._cache:
            res = collect(self.module, self.dm, domain, split, self.module.device)
            res["patients"] = self.codes[res["rows"]]
            res["magnification"] = torch.full((len(res["labels"]),), self.dm.domains.index(domain), dtype=torch.long)
            self._cache[(domain, split)] = res
        return self._cache[(domain, split)]

    def cat(self, parts: Sequence[tuple[str, str]]) -> dict[str, torch.Tensor]:
        got = [self.get(d, s) for d, s in parts]
        return {k: torch.cat([g[k] for g in got]) for k in got[0]}


def evaluate(module: DGModule, dm: MagnificationDataModule, ks: Sequence[int] = (1, 3, 5)) -> dict[str, Any]:
    """Every metric of the selected model, as metrics.json holds them (`ks`: k of the top-k search vote)."""
    sub = _Subsets(module, dm)
    target = sub.get(dm.target, "test")
    cls = classification_metrics(target["logits"], target["labels"], dm.num_classes)
    out: dict[str, Any] = {
        "target_test_acc": cls["acc"],
        "target_test_balanced_acc": cls["balanced_acc"],
        "target_test_macro_f1": cls["macro_f1"],
        "target_test_n": cls["n"],
        "target_test_confusion": cls["confusion"],
    }
    out["source_val_acc"] = _mean([_acc(sub.get(d, "val"), dm) for d in dm.sources])
    out["target_val_acc"] = _acc(sub.get(dm.target, "val"), dm)  # the test-domain oracle's selection score (collect.py)
    # every magnification's test split: sources (fit), target and, for single-source runs, the other unseen ones
    out["test_acc_by_domain"] = {d: _acc(sub.get(d, "test"), dm) for d in dm.domains}
    out["test_balanced_acc_by_domain"] = {d: _acc(sub.get(d, "test"), dm, "balanced_acc") for d in dm.domains}
    out["source_test_acc"] = _mean([out["test_acc_by_domain"][d] for d in dm.sources])

    patients = dm.index["patient"].to_numpy()[target["rows"].numpy()].tolist()
    out.update(patient_metrics(target["logits"], target["labels"], patients))
    cal = reliability(target["logits"], target["labels"])
    out["target_test_ece"], out["target_test_reliability"] = cal["ece"], cal["bins"]
    out.update(_embedding_metrics(sub, dm, list(ks)))
    return out


def _embedding_metrics(sub: _Subsets, dm: MagnificationDataModule, ks: list[int]) -> dict[str, Any]:
    """Search, own-patient search and invariance, for each representation the model has."""
    query = sub.get(dm.target, "test")
    # archive: every source-magnification image (any split), the query's own patient removed per query
    archive = sub.cat([(d, s) for d in dm.sources for s in ("train", "val", "test")])
    # the other magnifications of the test patients (plus other test patients as distractors)
    same_patient = sub.cat([(d, "test") for d in dm.sources])
    source_test = same_patient
    all_test = sub.cat([(d, "test") for d in dm.domains])
    out: dict[str, Any] = {"class_gap_by_class": {}, "mag_robustness_detail": {}}
    for space in SPACES:
        if len(query[space]) == 0:  # the model has no such space
            out.update({f"knn{k}_{space}_acc": None for k in ks})
            out.update({f"map{k}_{space}": None for k in MAP_KS})
            out.update({f"own_patient_recall{k}_{space}": None for k in RECALL_KS})
            out[f"mag_predictability_{space}"] = out[f"class_gap_{space}"] = out[f"mag_robustness_{space}"] = None
            continue
        found = class_search(query[space], query["labels"], query["patients"], archive[space], archive["labels"], archive["patients"], ks, MAP_KS)
        out.update({f"knn{k}_{space}_acc": v for k, v in found["vote"].items()})
        out.update({f"map{k}_{space}": v for k, v in found["map"].items()})
        own = own_patient_search(query[space], query["patients"], same_patient[space], same_patient["patients"], RECALL_KS)
        out.update({f"own_patient_recall{k}_{space}": v for k, v in own["recall"].items()})
        out["own_patient_n"] = own["n"]
        out[f"mag_predictability_{space}"] = magnification_predictability(all_test[space], all_test["magnification"], all_test["patients"])
        robust = magnification_robustness(all_test[space], all_test["labels"], all_test["magnification"], all_test["patients"])
        out[f"mag_robustness_{space}"] = robust.pop("index")
        out["mag_robustness_detail"][space] = robust  # the k it was read at and the share of images it covers
        gap = class_gap(source_test[space], source_test["labels"], query[space], query["labels"])
        out[f"class_gap_{space}"] = gap["mean"]
        out["class_gap_by_class"][space] = {dm.class_names[c]: v for c, v in gap["per_class"].items()}
    out["search_n"] = len(query["labels"])
    return out


def _acc(res: dict[str, torch.Tensor], dm: MagnificationDataModule, which: str = "acc") -> float | None:
    return classification_metrics(res["logits"], res["labels"], dm.num_classes)[which] if len(res["labels"]) else None


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


if __name__ == "__main__":  # the command of earlier versions: re-evaluation is its own entry point now
    import sys

    print("error: re-evaluation moved: python -m masf_lightning.reevaluate RUN_DIR [RUN_DIR ...] (same arguments)", file=sys.stderr)
    sys.exit(2)
