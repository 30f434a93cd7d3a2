"""The typed schema of the composed Hydra config: every key's type, and its range, set or length.

conf/ stays what users edit; these dataclasses say what each key may hold, `check.py` applies them to the
composed config before any work starts. A group whose options build different objects (backbone, stain,
method) has one dataclass per `_target_`. Relations between keys live in `check.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, ClassVar

from masf_lightning.choices import (
    ACCELERATORS,
    DATA_FORMATS,
    FOUNDATION_LIBRARIES,
    GEOMETRIES,
    IMAGENET_WEIGHTS,
    MAX_SEED,
    POOLS,
    PRECISIONS,
    PROTOCOLS,
    SELECTIONS,
    SYNTHETIC_MAX_SIZE,
    SYNTHETIC_MIN_SIDE,
    TRAINABLE,
    WANDB_MODES,
)  # fmt: skip
from masf_lightning.config.hparams import BY_NAME, REGISTRY
from masf_lightning.config.rules import POSITIVE, rule
from masf_lightning.relations import FRACTIONS_SAY, fractions_ok

# Trainer arguments that pipeline.py sets from other keys: a second value would clash.
TRAINER_SET_BY_RUN = {
    "max_steps": "steps", "val_check_interval": "val_every", "enable_progress_bar": "progress",
    "check_val_every_n_epoch": "val_every", "num_sanity_val_steps": None, "use_distributed_sampler": None,
    "callbacks": None, "logger": None, "enable_model_summary": None, "log_every_n_steps": None, "default_root_dir": None,
}  # fmt: skip


def _synthetic_size_ok(size: list[int]) -> bool:
    (w, h), (max_w, max_h) = size, SYNTHETIC_MAX_SIZE
    return SYNTHETIC_MIN_SIDE <= w <= max_w and SYNTHETIC_MIN_SIDE <= h <= max_h


def _lab_ok(lab: list[float]) -> bool:
    return 0 <= lab[0] <= 100 and all(-128 <= v <= 127 for v in lab[1:])


def _devices_ok(d: Any) -> bool:
    if isinstance(d, int):
        return d >= 1 or d == -1
    if isinstance(d, str):
        return d == "auto" or d.strip() == "-1" or all(p.strip().isdigit() for p in d.split(",") if p.strip())
    return all(i >= 0 for i in d)


# -- logger: where a run's curves, numbers and files go (conf/logger/; any number at once) --------------------
@dataclass
class NoOptions:
    """A logger whose files land in the run folder and take no setting (tensorboard, csv)."""


@dataclass
class MlflowOptions:
    tracking_uri: str = rule()
    experiment_name: str | None = rule()


@dataclass
class WandbOptions:
    project: str = rule()
    entity: str | None = rule()
    mode: str | None = rule(choices=WANDB_MODES)


@dataclass
class Logger:
    """`logger=[tensorboard,mlflow]` merges each chosen option's node here; the options left out are absent."""

    may_omit: ClassVar[bool] = True
    log_checkpoints: bool = rule()  # upload the selected and last checkpoints to mlflow/wandb (large: off by default)
    tensorboard: NoOptions | None = rule()
    csv: NoOptions | None = rule()
    mlflow: MlflowOptions | None = rule()
    wandb: WandbOptions | None = rule()


# -- top level ------------------------------------------------------------------------------------------
@dataclass
class Paths:
    data: str = rule()
    cache: str = rule()


# The registry's keys, types and rules (masf_lightning/config/hparams.py), as a schema node.
HParams = make_dataclass("HParams", [(h.name, h.type, field(metadata={"rule": h.rule})) for h in REGISTRY])


def hparam(name: str) -> Any:
    """A method argument fed from `hparams.<name>`: the registry's rule, stated once (a user may also set it directly)."""
    return field(metadata={"rule": BY_NAME[name].rule})


@dataclass
class Split:
    protocol: str = rule(choices=PROTOCOLS)
    seed: int = rule(ge=0, le=MAX_SEED)
    fractions: list[float] = rule(length=3, ge=0, test=fractions_ok, says=FRACTIONS_SAY)
    fold_file: str | None = rule()
    allow_leak: bool = rule()


@dataclass
class Eval:
    knn_k: list[int] = rule(ge=1)
    projector: bool = rule()


# -- data --------------------------------------------------------------------------------------------------
@dataclass
class Synthetic:
    seed: int = rule(ge=0, le=MAX_SEED)
    patients_per_type: int = rule(ge=1, le=999)
    images_per_magnification: int = rule(ge=1, le=999)
    size: list[int] = rule(
        length=2, test=_synthetic_size_ok,
        says=f"a list [width, height], width {SYNTHETIC_MIN_SIDE}..{SYNTHETIC_MAX_SIZE[0]}, height {SYNTHETIC_MIN_SIDE}..{SYNTHETIC_MAX_SIZE[1]}",
    )  # fmt: skip


@dataclass
class Geometry:
    mode: str = rule(choices=GEOMETRIES)
    size: int | None = rule(ge=1)  # null: the foundation model's own (its pretrained_cfg)


@dataclass
class Data:
    option: ClassVar[str] = "breakhis"
    _target_: str = rule(choices=("masf_lightning.data.datamodule.MagnificationDataModule",))
    format: str = rule(choices=DATA_FORMATS)
    root: str | None = rule()  # breakhis, folder: the folder; manifest: null (paths are relative to the file)
    manifest: str | None = rule()
    domains: list[str] | None = rule(min_length=1)
    classes: list[str] | None = rule(min_length=2)
    patient_regex: str | None = rule()
    task: str = rule()  # the default task (a label column); top-level `task` reads it
    synthetic: Synthetic | None = rule()
    geometry: Geometry = rule()
    input_size: int | None = rule(ge=1)  # null: the foundation model's own
    cache_dir: str | None = rule()
    batch_size_per_domain: int = rule(ge=1)
    sources: list[str] | None = rule(min_length=1)  # the table's domains: checked against it (check.py)
    meta_test_domains: int = rule(ge=1)
    class_balanced: bool = rule()
    augment: bool = rule()
    eval_batch_size: int = rule(ge=1)
    images_on_device: bool = rule()
    on_bad_file: str = rule(choices=("raise", "skip"))
    num_workers: int = rule(ge=0)


# -- stain: one schema per normalizer ----------------------------------------------------------------------
@dataclass
class Reinhard:
    option: ClassVar[str] = "reinhard"
    _target_: str = rule(choices=("masf_lightning.data.stain.ReinhardNormalizer",))
    target_means: list[float] = rule(length=3, test=_lab_ok, says="a list [L, a, b], L in 0..100, a and b in -128..127")
    target_stds: list[float] = rule(length=3, **POSITIVE)
    reference: str | None = rule()
    brightness_percentile: float = rule(gt=0, le=100)
    standardize_brightness: bool = rule()


@dataclass
class Macenko:
    option: ClassVar[str] = "macenko"
    _target_: str = rule(choices=("masf_lightning.data.stain.MacenkoNormalizer",))
    reference: str | None = rule()
    Io: float = rule(**POSITIVE)
    alpha: float = rule(ge=0, lt=50)  # percentile: the stain angles at alpha and 100 − alpha
    beta: float = rule(**POSITIVE)


@dataclass
class NoStain:
    option: ClassVar[str] = "none"
    _target_: str = rule(choices=("masf_lightning.data.stain.IdentityNormalizer",))


# -- backbone: one schema per builder ----------------------------------------------------------------------
@dataclass
class Backbone:
    cache_size: int = rule(ge=1)
    input_size: int = rule(ge=1)
    geometry: str = rule(choices=GEOMETRIES)


@dataclass
class Small(Backbone):
    option: ClassVar[str] = "small"
    _target_: str = rule(choices=("masf_lightning.models.backbones.small",))
    width: int = rule(ge=1)
    feature_dim: int = rule(ge=1)
    dropout: float = rule(ge=0, lt=1)


@dataclass
class AlexNet(Backbone):
    option: ClassVar[str] = "alexnet"
    _target_: str = rule(choices=("masf_lightning.models.backbones.alexnet",))
    weights: str | None = rule(choices=IMAGENET_WEIGHTS)


@dataclass
class ResNet18(Backbone):
    option: ClassVar[str] = "resnet18"
    _target_: str = rule(choices=("masf_lightning.models.backbones.resnet18",))
    weights: str | None = rule(choices=IMAGENET_WEIGHTS)


def _trainable_ok(v: Any) -> bool:
    return v in TRAINABLE or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)


@dataclass
class Card:
    """A named foundation model's facts from its model card (conf/backbone/<model>.yaml); the builder checks the first
    four against the model itself."""

    embedding_dim: int = rule(ge=1)
    input_size: int = rule(ge=1)
    mean: list[float] = rule(length=3, ge=0, le=1)
    std: list[float] = rule(length=3, gt=0, le=1)
    magnifications: list[str] = rule(min_length=1)
    mpp: list[float] = rule(min_length=1, gt=0)  # the pretraining tiles' µm per pixel: which tiled resolution matches
    licence: str = rule()
    gated: bool = rule()
    page: str = rule()


@dataclass
class Foundation(Backbone):
    option: ClassVar[str] = "timm"
    _target_: str = rule(choices=("masf_lightning.models.foundation.foundation",))
    cache_size: int | None = rule(ge=1)  # null: the model's own (input size / crop_pct)
    input_size: int | None = rule(ge=1)  # null: the model's own
    name: str = rule()
    library: str = rule(choices=FOUNDATION_LIBRARIES)
    weights: str | None = rule(choices=("pretrained",))
    trainable: int | str = rule(test=_trainable_ok, says="all, none (frozen: the offline feature mode) or a number k >= 1 of last blocks")
    kwargs: dict = rule(says="a mapping of keyword arguments for the model's constructor")
    pool: str = rule(choices=POOLS)
    adapter_dim: int = rule(ge=1)
    card: Card | None = rule()


# -- method: one schema per algorithm; `needs_meta_split` as the class says -------------------------------
@dataclass
class Method:
    needs_meta_split: ClassVar[bool] = False
    name: str = rule()
    lr: float = hparam("lr")
    weight_decay: float = hparam("weight_decay")
    fused_adam: bool = hparam("fused_adam")


@dataclass
class DeepAll(Method):
    option: ClassVar[str] = "deepall"
    _target_: str = rule(choices=("masf_lightning.algorithms.DeepAll",))


@dataclass
class DeepAllZoom(Method):
    option: ClassVar[str] = "deepall_zoom"
    _target_: str = rule(choices=("masf_lightning.algorithms.DeepAllZoom",))
    zoom_range: list[float] = hparam("zoom_range")


@dataclass
class Coral(Method):
    option: ClassVar[str] = "coral"
    _target_: str = rule(choices=("masf_lightning.algorithms.CORAL",))
    coral_weight: float = hparam("coral_weight")


@dataclass
class Mldg(Method):
    option: ClassVar[str] = "mldg"
    needs_meta_split: ClassVar[bool] = True
    _target_: str = rule(choices=("masf_lightning.algorithms.MLDG",))
    inner_lr: float = hparam("inner_lr")
    mldg_beta: float = hparam("mldg_beta")
    first_order: bool = hparam("first_order")


@dataclass
class Embedder:
    hidden_dim: int = rule(ge=1)
    embedding_dim: int = rule(ge=1)
    final_activation: bool = rule()


@dataclass
class Masf(Method):
    option: ClassVar[str] = "masf"
    needs_meta_split: ClassVar[bool] = True
    _target_: str = rule(choices=("masf_lightning.algorithms.MASF",))
    inner_lr: float = hparam("inner_lr")
    metric_lr: float = hparam("metric_lr")
    beta_gen: float = hparam("beta_gen")
    beta_tri: float = hparam("beta_tri")
    temperature: float = hparam("temperature")
    margin: float = hparam("margin")
    normalize_embeddings: bool = hparam("normalize_embeddings")
    first_order: bool = hparam("first_order")
    optimizers: str = hparam("optimizers")
    inner_reduction: str = hparam("inner_reduction")
    inner_clip: float | None = hparam("inner_clip")
    meta_clip: float | None = hparam("meta_clip")
    meta_lr: float | None = hparam("meta_lr")
    meta_updates_embedder: bool = hparam("meta_updates_embedder")
    outer_clip: float | None = hparam("outer_clip")
    class_average: str = hparam("class_average")
    grad_norm_every: int = hparam("grad_norm_every")
    triplet_fraction: float = hparam("triplet_fraction")
    embedder: Embedder = rule()


# -- averaging: one schema per option (conf/averaging/, masf_lightning/averaging/) --------------------------
@dataclass
class NoAveraging:
    option: ClassVar[str] = "none"
    _target_: str = rule(choices=("masf_lightning.averaging.none",))
    name: str = rule(choices=("none",))


@dataclass
class Swad:
    option: ClassVar[str] = "swad"
    _target_: str = rule(choices=("masf_lightning.averaging.SWAD",))
    name: str = rule(choices=("swad",))
    n_converge: int = hparam("n_converge")
    n_tolerance: int = hparam("n_tolerance")
    tolerance_ratio: float = hparam("tolerance_ratio")
    bn_batches: int = rule(ge=0)


@dataclass
class Ema:
    option: ClassVar[str] = "ema"
    _target_: str = rule(choices=("masf_lightning.averaging.EMA",))
    name: str = rule(choices=("ema",))
    decay: float = hparam("ema_decay")
    bn_batches: int = rule(ge=0)


# -- trainer: Lightning's Trainer arguments; keys beyond these go to Lightning as they are ----------------
@dataclass
class Trainer:
    open_keys: ClassVar[bool] = True
    accelerator: str = rule(choices=ACCELERATORS)
    devices: int | str | list[int] = rule(test=_devices_ok, says="a number of devices >= 1, -1 (all), auto, or a list of device ids")
    strategy: str = rule()
    precision: int | str = rule(choices=PRECISIONS)
    deterministic: bool | str = rule(choices=(True, False, "warn"))
    benchmark: bool | None = rule()
    channels_last: bool = rule()  # ours, not Lightning's: pipeline.py takes it out


@dataclass
class TrainConfig:
    """conf/train.yaml composed. Fields in the order they are checked: a key another one interpolates
    (hparams.lr → method.lr) comes first, so an error names the key the user set."""

    target: str = rule()  # a domain of the dataset table: checked against it (config/dataset.py)
    seed: int = rule(ge=0, le=MAX_SEED)
    hparams_seed: int = rule(ge=0, le=MAX_SEED)
    steps: int = rule(ge=1)
    val_every: int = rule(ge=1)
    selection: str = rule(choices=tuple(SELECTIONS))
    early_stopping_patience: int | None = rule(ge=0)
    progress: bool = rule()
    gpu_pool: bool = rule()
    paths: Paths = rule()
    backbone: Small | AlexNet | ResNet18 | Foundation = rule()
    hparams: HParams = rule()
    split: Split = rule()
    eval: Eval = rule()
    data: Data = rule()
    task: str = rule()  # a label column of the dataset table (data.task by default): checked against it
    stain: Reinhard | Macenko | NoStain = rule()
    method: Masf | Mldg | DeepAll | Coral | DeepAllZoom = rule()
    averaging: NoAveraging | Swad | Ema = rule()
    trainer: Trainer = rule()
    logger: Logger = rule()

