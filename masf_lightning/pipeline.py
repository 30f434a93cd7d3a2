"""One run from a composed Hydra config: data → model → fit → select checkpoint → evaluate → metrics.json."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm
from pytorch_lightning.loggers import TensorBoardLogger

from masf_lightning.algorithms import DGModule
from masf_lightning.averaging import Averager, install_average
from masf_lightning.checkpoints import SafeCheckpointIO, load_checkpoint
from masf_lightning.choices import SELECTIONS
from masf_lightning.config.hparams import of_method
from masf_lightning.data.datamodule import MagnificationDataModule
from masf_lightning.errors import MasfError, TrainingError
from masf_lightning.eval.report import evaluate
from masf_lightning.eval.tensorboard import evaluation_figures, log_evaluation
from masf_lightning.io import METRICS_FILE, atomic_path, write_json_atomic
from masf_lightning.models import Backbone
from masf_lightning.relations import require_choice
from masf_lightning.run_folder import claim_run_dir, last_checkpoint_path, resume_step
from masf_lightning.timing import PhaseTimer, phases
from masf_lightning.track import build_loggers, grouping, send_finished, send_identity
from masf_lightning.track.record import FIGURES_DIR, code_commit


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, but a user error raised inside a constructor reaches the user as itself."""
    try:
        return hydra_instantiate(config, *args, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, MasfError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def build_datamodule(cfg: DictConfig, run_dir: Path | None, backbone: Backbone | None = None) -> MagnificationDataModule:
    """The datamodule; a pretrained `backbone` brings its own preprocessing (what the config leaves null: input
    size, cache side; always mean/std) and, frozen, the encoder whose cached features become the batches."""
    dm = instantiate(
        cfg.data,
        task=cfg.task,
        target=cfg.target,
        stain=instantiate(cfg.stain),
        split=OmegaConf.to_container(cfg.split, resolve=True),
        seed=cfg.seed,
        output_dir=str(run_dir) if run_dir else None,
        progress=cfg.progress,
        channels_last=channels_last(cfg),
        **model_preprocessing(cfg, backbone),
        _convert_="all",
    )
    if backbone is not None and backbone.encoder is not None:
        dm.use_encoder(backbone.encoder, str(backbone.encoder_id), str(OmegaConf.select(cfg, "backbone.name", default="")))
    return dm


def model_preprocessing(cfg: DictConfig, backbone: Backbone | None) -> dict[str, Any]:
    """The data keys a pretrained model's own config decides: input size and cache side where the config says null
    (a number given wins), the geometry's interpolation, mean/std."""
    prep = backbone.preprocessing if backbone is not None else None
    if prep is None:
        return {}
    input_size = OmegaConf.select(cfg, "data.input_size")
    geometry = {**OmegaConf.to_container(cfg.data.geometry, resolve=True), "interpolation": prep.interpolation}
    geometry["size"] = geometry.get("size") or prep.resize
    return {"input_size": input_size or prep.input_size, "geometry": geometry, "normalize": [list(prep.mean), list(prep.std)]}


# Keys of a backbone config that tell the data pipeline, not the network builder.
BACKBONE_DATA_KEYS = ("cache_size", "input_size", "geometry")


def build_backbone(cfg: DictConfig) -> Backbone:
    """F_ψ from `cfg.backbone` (its data keys left out)."""
    return instantiate({k: v for k, v in OmegaConf.to_container(cfg.backbone, resolve=True).items() if k not in BACKBONE_DATA_KEYS})


def build_module(cfg: DictConfig, num_classes: int, backbone: Backbone | None = None) -> DGModule:
    method_cfg = {k: v for k, v in OmegaConf.to_container(cfg.method, resolve=True).items() if k != "name"}
    # partial: the Backbone object must reach the module as is, not be turned into a config node
    backbone = backbone if backbone is not None else build_backbone(cfg)
    module = instantiate(method_cfg, _partial_=True, _convert_="all")(backbone=backbone, num_classes=num_classes, seed=int(cfg.seed))
    return module.to(memory_format=torch.channels_last) if channels_last(cfg) else module


def channels_last(cfg: DictConfig) -> bool:
    """trainer.channels_last: weights and batches in NHWC (runs from before the key: no)."""
    return bool(OmegaConf.select(cfg, "trainer.channels_last", default=False))


class OracleTracker(pl.Callback):
    """Best target-test accuracy over the validation checks and its step: what the paper's code reported.

    Kept in the checkpoint (callback state), so a resumed run reports what the uninterrupted one would.
    """

    def __init__(self) -> None:
        self.best: float | None = None
        self.step: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("oracle/target_test_acc")
        if value is not None and (self.best is None or float(value) > self.best):
            self.best, self.step = float(value), int(trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.step = state["best"], state["step"]


class LastCheckpoint(Checkpoint):
    """`last.ckpt`: the state after every validation check and at the end, whatever the selection metric did.

    A Checkpoint, so Lightning runs it after the selecting ModelCheckpoint (list order kept): the file holds
    the best score so far. Written beside itself and renamed, so a kill never leaves half a file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_step = 0  # nothing trained, nothing to save

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.saved_step = trainer.global_step  # a resumed run's step is already on disk

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save(trainer)

    def save(self, trainer: pl.Trainer) -> None:
        if trainer.sanity_checking or trainer.global_step == self.saved_step:
            return
        # every rank calls save_checkpoint (it synchronizes); only rank 0 writes, to its temporary file
        with atomic_path(self.path) if trainer.is_global_zero else contextlib.nullcontext(self.path) as tmp:
            # the full state (optimizers too) for resume, said explicitly (Lightning prints a note otherwise); read back
            # with weights_only=True
            trainer.save_checkpoint(tmp, weights_only=False)
        self.saved_step = trainer.global_step


class TrainProgressBar(TQDMProgressBar):
    """One bar for training; validation runs every few steps and gets no bars of its own."""

    def init_validation_tqdm(self):  # noqa: ANN201 - Lightning's signature
        # disabled when made: a bar disabled after it was drawn left an empty `Validation: 0/?` line behind
        return Tqdm(disable=True)


def build_trainer(cfg: DictConfig, run_dir: Path) -> tuple[pl.Trainer, ModelCheckpoint, OracleTracker]:
    require_choice("selection", cfg.selection, tuple(SELECTIONS))
    monitor = SELECTIONS[cfg.selection]
    # the selected checkpoint only (none for selection=last); Lightning's save_last would follow the metric
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-{step}",
        monitor=monitor,
        mode="max",
        save_top_k=1 if monitor else 0,
        auto_insert_metric_name=False,
    )
    oracle = OracleTracker()
    callbacks: list[pl.Callback] = [oracle, checkpoint, LastCheckpoint(last_checkpoint_path(run_dir))]
    if cfg.progress:
        callbacks.append(TrainProgressBar(refresh_rate=10))
    if cfg.early_stopping_patience is not None and monitor is not None:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=int(cfg.early_stopping_patience)))
    # conf/logger/ (runs from before the key: TensorBoard alone)
    logger_cfg = OmegaConf.to_container(OmegaConf.select(cfg, "logger", default=None) or OmegaConf.create({"tensorboard": {}}), resolve=True)
    loggers = build_loggers(logger_cfg, run_dir, *grouping(run_dir))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.pop("channels_last", None)  # ours: build_datamodule and build_module apply it
    if trainer_cfg.get("strategy") == "ddp":
        from pytorch_lightning.strategies import DDPStrategy

        trainer_cfg["strategy"] = DDPStrategy(find_unused_parameters=False)
    trainer = pl.Trainer(
        **trainer_cfg,
        max_steps=int(cfg.steps),  # one optimizer step per meta-iteration, so steps = paper iterations
        val_check_interval=int(cfg.val_every),
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the episodic sampler shards per rank itself
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=bool(cfg.progress),
        enable_model_summary=False,
        log_every_n_steps=10,
        default_root_dir=str(run_dir),
        plugins=[SafeCheckpointIO()],  # resume (fit's ckpt_path) reads last.ckpt with weights_only=True
    )
    return trainer, checkpoint, oracle


def identity(cfg: DictConfig, dm: MagnificationDataModule) -> dict[str, Any]:
    """What a run is, as metrics.json records it for collect.py: the keys that place it in a table cell."""
    return dict(
        method=cfg.method.name,
        task=cfg.task,
        target=dm.target,
        sources=dm.sources,
        seed=int(cfg.seed),
        hparams_seed=int(cfg.hparams_seed),
        hparams=of_method(OmegaConf.to_container(cfg.method, resolve=True)),  # as run: drawn, default or overridden
        protocol=cfg.split.protocol,
        split_seed=int(cfg.split.seed),
        selection=cfg.selection,
        steps=int(cfg.steps),
        backbone=cfg.backbone._target_.rsplit(".", 1)[-1],
        # the dataset as the run saw it: predict/embed name these classes, tables and plots order these domains
        dataset=dm.table.name if dm.table is not None else None,
        classes=list(dm.class_names),
        domains=dm.domains,
        mpp_by_domain=dm.table.mpp() if dm.table is not None else {},
        commit=code_commit(),  # the code that ran (None outside a git checkout)
        **_averaging(cfg),
    )


def _averaging(cfg: DictConfig) -> dict[str, Any]:
    """`averaging` (weight averaging) of the config where it has one: part of what a run is."""
    value = OmegaConf.select(cfg, "averaging", default=None)
    if value is None:
        return {}
    return {"averaging": OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value}


def run(cfg: DictConfig, run_dir: Path, record_failure: bool = False) -> dict[str, Any]:
    """Train one configuration and write `metrics.json` into `run_dir`; returns the metrics.

    Re-running the same command skips a finished run and resumes an interrupted one from `last.ckpt`.
    `record_failure` (sweeps): a numerical fault also writes metrics.json, with `failed` and NaN accuracies,
    so collect.py lists the run as failed and a re-run sweep does not train the same divergence again.
    """
    started = time.time()
    run_dir = Path(run_dir).absolute()  # Hydra gives an absolute one; a notebook may not
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = claim_run_dir(cfg, run_dir)
    if finished is not None:
        print(f"already finished: {run_dir / METRICS_FILE}")
        return finished
    last = last_checkpoint_path(run_dir)
    resumed_from = resume_step(last)
    if resumed_from is not None:
        print(f"resuming from step {resumed_from}: {last}")
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    backbone = build_backbone(cfg)
    dm = build_datamodule(cfg, run_dir, backbone)
    dm.prepare_data()
    dm.setup("fit")
    if cfg.progress:
        print(dm.describe())
    module = build_module(cfg, dm.num_classes, backbone)
    dm.check_meta_split(cfg.method.name, needs_meta_split=module.needs_meta_split)
    trainer, checkpoint, oracle = build_trainer(cfg, run_dir)
    if trainer.global_rank == 0:
        send_identity(trainer.loggers, identity(cfg, dm))
    timer, fit_started = PhaseTimer(), time.time()
    trainer.callbacks.append(timer)
    averager: Averager | None = instantiate(cfg.averaging) if "averaging" in cfg else None
    if averager is not None:  # first: its state is up to date when the checkpoint callbacks save
        trainer.callbacks.insert(0, averager)
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resumed_from is not None else None)
    except TrainingError as exc:
        if record_failure and trainer.global_rank == 0:
            nan = float("nan")
            failed = {**identity(cfg, dm), "failed": str(exc), "target_test_acc": nan, "source_val_acc": nan, "target_val_acc": nan}
            write_json_atomic(run_dir / METRICS_FILE, failed)
        raise
    if trainer.global_rank != 0:
        return {}

    evaluation_started = time.time()
    selected = checkpoint.best_model_path or str(last)
    state = load_checkpoint(selected, map_location=module.device)
    module.load_state_dict(state["state_dict"])
    # with averaging: the online result measured, then the average (BatchNorm recomputed) is the model evaluated
    averaged = install_average(module, dm, averager, run_dir, int(state["global_step"])) if averager is not None else {}
    metrics = evaluate(module, dm, list(cfg.eval.knn_k))
    metrics.update(
        identity(cfg, dm),
        selected_step=int(state["global_step"]),
        selected_checkpoint=str(Path(selected).relative_to(run_dir)),
        steps_done=int(trainer.global_step),
        wall_time_s=round(time.time() - started, 2),
        # the most GPU memory the run held at once (training and evaluation); null on CPU
        peak_gpu_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if module.device.type == "cuda" else None,
        resumed=resumed_from is not None,
        resumed_from_step=resumed_from,
        # not an honest estimate: the best *test* accuracy seen during training, as the paper's code reported
        oracle_target_test_acc=oracle.best,
        oracle_step=oracle.step,
    )
    metrics.update(averaged)  # the averaged model's step and checkpoint in place of the online selection's
    figures = evaluation_figures(metrics, dm, cfg)
    for tag, fig in figures.items():  # PNGs beside metrics.json: the trackers' artifacts (TensorBoard then closes them)
        with atomic_path(run_dir / FIGURES_DIR / f"{tag.rsplit('/', 1)[-1]}.png") as tmp:
            fig.savefig(tmp, format="png")
    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is not None:
        log_evaluation(tensorboard.experiment, module, dm, metrics, cfg, trainer.global_step, figures)
    metrics["time_s"] = phases(fit_started - started, evaluation_started - fit_started, timer, time.time() - evaluation_started)
    write_json_atomic(run_dir / METRICS_FILE, metrics)
    send_finished(trainer.loggers, run_dir, metrics, trainer.global_step, bool(OmegaConf.select(cfg, "logger.log_checkpoints", default=False)))
    return metrics


def _pct(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.2f}%"


def summary_line(m: dict[str, Any]) -> str:
    """One line per finished run; a subset without images (e.g. split.fractions with no val) shows n/a."""
    if m.get("failed"):
        return f"{m['method']} {m['task']} target={m['target']} seed={m['seed']}: failed ({m['failed']})"
    return (
        f"{m['method']} {m['task']} target={m['target']} seed={m['seed']}: target test acc {_pct(m['target_test_acc'])} "
        f"(balanced {_pct(m['target_test_balanced_acc'])}, source val {_pct(m['source_val_acc'])}, "
        f"step {m['selected_step']}, {m['wall_time_s']:.0f}s)"
    )


