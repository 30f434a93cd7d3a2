"""TensorBoard as a user meets it: the charts worth watching first, the evaluation as figures and a table.

Custom Scalars puts the three MASF losses in one chart and the accuracy of every magnification in
another; Lightning's constant `epoch` chart (episodic training has one epoch) is not written.
Tags avoid characters a URL query would mangle (a `+` reaches the server as a space).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from masf_lightning.eval.embeddings import collect
from masf_lightning.eval.mpp_curve import curve_figure, curve_rows
from masf_lightning.eval.plots import confusion_figure, reliability_figure

# Custom Scalars layout: category → chart → ("Multiline", tag regexes); shown in this order.
LAYOUT: dict[str, dict[str, list[Any]]] = {
    "training": {
        "losses: L_cr (Eq. 3), L_gen (Eq. 7), L_tri (Eq. 8)": ["Multiline", [r"^train/(cr|gen|tri)$"]],
        "meta objective β1·L_gen + β2·L_tri (Eq. 10)": ["Multiline", [r"^train/(meta|total)$"]],
        "‖∇ψ‖ of each loss": ["Multiline", [r"^grad_norm/"]],
        "diagnostics": ["Multiline", [r"^diag/"]],
    },
    "accuracy per magnification (validation)": {
        "accuracy per magnification": ["Multiline", [r"^val/[^/]+/acc$"]],
        "source mean (selects the checkpoint) and target": ["Multiline", [r"^val/(source|target)_acc$"]],
        "target test during training: what the paper's code reported; selects nothing": ["Multiline", [r"^oracle/"]],
    },
}
PROJECTOR_TAG = "target_test_and_source_val"
PROJECTOR_HEADER = ["class", "domain", "patient", "split", "role"]
NOT_EVALUATION = ("wall_time_s", "oracle_target_test_acc")  # floats in metrics.json that training, not evaluation, made
# HParams compares runs on these (one point each, so only the headline of each family); the Text tab has all.
HEADLINE = (
    "target_test_acc", "target_test_balanced_acc", "source_val_acc", "source_test_acc",
    "patient_recognition_rate", "patient_vote_acc", "target_test_ece",
    *(key.format(space) for space in ("features", "embeddings")
      for key in ("knn1_{}_acc", "map10_{}", "own_patient_recall1_{}", "mag_predictability_{}", "class_gap_{}", "mag_robustness_{}")),
)  # fmt: skip


class TrainingLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, writing the Custom Scalars layout first and no `epoch` scalar."""

    _layout_written = False

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if not self._layout_written:
            self.experiment.add_custom_scalars(LAYOUT)
            self._layout_written = True
        super().log_metrics({k: v for k, v in metrics.items() if k != "epoch"}, step)


def evaluation_table(metrics: Mapping[str, Any]) -> str:
    """The headline evaluation numbers as a Markdown table for TensorBoard's Text tab."""
    rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, float) and k not in NOT_EVALUATION]
    return "\n".join(["| metric | value |", "|---|---|", *(f"| {k} | {v:.4f} |" for k, v in rows)])


def evaluation_figures(metrics: Mapping[str, Any], dm: Any, cfg: DictConfig) -> dict[str, Figure]:
    """The evaluation's figures by TensorBoard tag: the target's confusion matrix and reliability diagram, and with a
    table of 3 or more resolutions the accuracy along the µm/px axis."""
    what = f"{cfg.method.name} · target {dm.target}"
    figures = {
        "test/target_confusion": confusion_figure(metrics["target_test_confusion"], dm.class_names, f"{what} · test"),
        "test/target_reliability": reliability_figure(metrics["target_test_reliability"], metrics["target_test_ece"], f"{what} · test"),
    }
    if len(metrics.get("mpp_by_domain") or {}) >= 3:
        figures["test/accuracy_vs_mpp"] = curve_figure(curve_rows([metrics]), title=what)
    return figures


def log_evaluation(
    writer: Any, module: torch.nn.Module, dm: Any, metrics: Mapping[str, Any], cfg: DictConfig, step: int, figures: Mapping[str, Figure] | None = None
) -> None:
    """Figures (made here unless given), the table, HParams and the projector of one evaluated checkpoint, at `step`."""
    for tag, fig in (figures or evaluation_figures(metrics, dm, cfg)).items():
        writer.add_figure(tag, fig, global_step=step)
    writer.add_text("test/metrics", evaluation_table(metrics), global_step=step)
    hp = {
        "method": cfg.method.name, "task": cfg.task, "target": dm.target, "sources": ",".join(dm.sources), "seed": cfg.seed,
        "backbone": cfg.backbone._target_.rsplit(".", 1)[-1], "steps": cfg.steps, "protocol": cfg.split.protocol, "selection": cfg.selection,
        "hparams_seed": int(cfg.get("hparams_seed", 0)),
    }  # fmt: skip
    # the method's hyperparameters as run (drawn, default or overridden); HParams takes numbers, strings and booleans
    hp.update({f"hparams/{k}": v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in (metrics.get("hparams") or {}).items()})
    scalars = {f"test/{k}": metrics[k] for k in HEADLINE if isinstance(metrics.get(k), float)}
    writer.add_hparams(hp, scalars, run_name=".")
    if cfg.eval.projector:
        log_projector(writer, module, dm, step)


def projector_rows(rows: Any, task: str, role: str | Sequence[str]) -> list[list[str]]:
    """The Projector's metadata (PROJECTOR_HEADER) of some rows of the dataset table: the task's class, domain, patient,
    split, and whether the image is of the target (`role` per row, or one for all)."""
    roles = [role] * len(rows) if isinstance(role, str) else list(role)
    return [[str(c), str(d), str(p), str(s), r] for c, d, p, s, r in zip(rows[task], rows["domain"], rows["patient"], rows["split"], roles, strict=True)]


def log_projector(writer: Any, module: torch.nn.Module, dm: Any, step: int) -> None:
    """Target test and source val vectors (F_φ when the model has it, else F_ψ) for the Projector tab."""
    feats, meta = [], []
    for split, d in [("test", dm.target)] + [("val", d) for d in dm.sources]:
        res = collect(module, dm, d, split, module.device)
        feats.append(res["embeddings"] if len(res["embeddings"]) else res["features"])
        meta += projector_rows(dm.index.iloc[res["rows"].numpy()], dm.task, "target" if d == dm.target else "source")
    writer.add_embedding(torch.cat(feats), metadata=meta, metadata_header=PROJECTOR_HEADER, tag=PROJECTOR_TAG, global_step=step)
