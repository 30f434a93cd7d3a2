"""After training: evaluate the selected checkpoint on every magnification and log what users look at."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from pytorch_lightning.loggers import TensorBoardLogger

from masf_lightning.algorithms import DGModule
from masf_lightning.data.datamodule import BreakhisDataModule
from masf_lightning.eval.embeddings import collect
from masf_lightning.eval.metrics import classification_metrics, knn_accuracy
from masf_lightning.eval.plots import confusion_figure


def evaluate(module: DGModule, dm: BreakhisDataModule, ks: list[int]) -> dict[str, Any]:
    """The paper's metric (target test accuracy) plus per-domain accuracy and cross-magnification k-NN."""
    device = module.device
    target_test = collect(module, dm, dm.target, "test", device)
    cls = classification_metrics(target_test["logits"], target_test["labels"], dm.num_classes)
    out: dict[str, Any] = {
        "target_test_acc": cls["acc"],
        "target_test_balanced_acc": cls["balanced_acc"],
        "target_test_macro_f1": cls["macro_f1"],
        "target_test_n": cls["n"],
        "target_test_confusion": cls["confusion"],
    }
    source_val = []
    for d in dm.sources:
        res = collect(module, dm, d, "val", device)
        source_val.append(classification_metrics(res["logits"], res["labels"], dm.num_classes)["acc"])
    out["source_val_acc"] = float(sum(source_val) / len(source_val))
    out["test_acc_by_domain"] = {}
    for d in dm.sources:
        res = collect(module, dm, d, "test", device)
        out["test_acc_by_domain"][d] = classification_metrics(res["logits"], res["labels"], dm.num_classes)["acc"] if len(res["labels"]) else None
    out["test_acc_by_domain"][dm.target] = cls["acc"]
    reference = {k: torch.cat(v) for k, v in _stack([collect(module, dm, d, "train", device) for d in dm.sources]).items()}
    for space in ("features", "embeddings"):
        if len(target_test[space]) == 0:
            for k in ks:
                out[f"knn{k}_{space}_acc"] = None
            continue
        accs = knn_accuracy(target_test[space], target_test["labels"], reference[space], reference["labels"], ks)
        for k in ks:
            out[f"knn{k}_{space}_acc"] = accs[k]
    return out


def _stack(parts: list[dict[str, torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    return {k: [p[k] for p in parts] for k in parts[0]}


def log_to_tensorboard(trainer: pl.Trainer, module: DGModule, dm: BreakhisDataModule, metrics: dict[str, Any], cfg: DictConfig) -> None:
    logger = trainer.logger
    if not isinstance(logger, TensorBoardLogger):
        return
    exp = logger.experiment
    fig = confusion_figure(metrics["target_test_confusion"], dm.class_names, f"{cfg.method.name} · target {dm.target} · test")
    exp.add_figure("test/target_confusion", fig, global_step=trainer.global_step)
    hp = {"method": cfg.method.name, "task": cfg.task, "target": dm.target, "seed": cfg.seed, "backbone": cfg.backbone._target_.rsplit(".", 1)[-1], "steps": cfg.steps, "protocol": cfg.split.protocol, "selection": cfg.selection}
    exp.add_hparams(hp, {f"hparam/{k}": v for k, v in metrics.items() if isinstance(v, float)}, run_name=".")
    if cfg.eval.projector:
        parts = [("test", dm.target)] + [("val", d) for d in dm.sources]
        feats, meta = [], []
        for split, d in parts:
            res = collect(module, dm, d, split, module.device)
            space = res["embeddings"] if len(res["embeddings"]) else res["features"]
            feats.append(space)
            rows = dm.index.iloc[res["rows"].numpy()]
            meta += [[r.tumor_type, r.malignancy, f"{r.magnification}x", split, "target" if d == dm.target else "source"] for r in rows.itertuples()]
        exp.add_embedding(torch.cat(feats), metadata=meta, metadata_header=["type", "malignancy", "magnification", "split", "role"], tag="target_test+source_val", global_step=trainer.global_step)


if __name__ == "__main__":
    import sys

    from masf_lightning.eval.runs import main  # re-evaluation of finished runs; see that module

    sys.exit(main())
