"""Finished runs, reopened: their config, their split (checked against the saved one), their selected
checkpoint, and the datamodule and model rebuilt with the pipeline's own builders — for re-evaluation
(`reevaluate.py`), Fig. 2 (experiments/plot_embeddings.py) and anything else that uses a trained run."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from masf_lightning.algorithms import DGModule
from masf_lightning.checkpoints import load_checkpoint
from masf_lightning.data.datamodule import MagnificationDataModule
from masf_lightning.data.manifest import read_split_manifest
from masf_lightning.errors import ConfigError, DataError
from masf_lightning.io import METRICS_FILE, RUN_CONFIG_FILE, SPLIT_MANIFEST
from masf_lightning.pipeline import build_backbone, build_datamodule, build_module


def load_run_config(run_dir: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """The config the run trained with, resolved.

    run_config.json is preferred: the pipeline resolved it at training time, so paths and
    environment variables are those of the run, not of today's shell. .hydra/config.yaml is
    the fallback; its `${hydra:...}` interpolations are resolved against .hydra/hydra.yaml.
    """
    path = run_dir / RUN_CONFIG_FILE
    if path.is_file():
        try:
            cfg = OmegaConf.create(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    elif (run_dir / ".hydra" / "config.yaml").is_file():
        cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
        hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
        hydra_cfg = OmegaConf.load(hydra_yaml).hydra if hydra_yaml.is_file() else OmegaConf.create({})
        OmegaConf.register_new_resolver("hydra", lambda key: OmegaConf.select(hydra_cfg, key), replace=True)
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    else:
        raise ConfigError(f"{run_dir} holds neither {RUN_CONFIG_FILE} nor .hydra/config.yaml: is it a run folder?")
    cfg.progress = False  # run_config.json leaves out `progress`; bars would only clutter a script's output
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def selected_checkpoint(run_dir: Path) -> Path:
    """The checkpoint the run evaluated (metrics.json `selected_checkpoint`), else checkpoints/last.ckpt."""
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        rel = json.loads(metrics.read_text()).get("selected_checkpoint")
        if rel and (run_dir / rel).is_file():
            return run_dir / rel
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last
    raise DataError(f"{run_dir} has no selected checkpoint and no checkpoints/last.ckpt: train it first")


def check_split(dm: MagnificationDataModule, run_dir: Path) -> None:
    """Refuse a rebuilt split that is not the one the run trained and tested on.

    Changed data or split code would put training images among the "test" images without any sign.
    """
    manifest = run_dir / SPLIT_MANIFEST
    if not manifest.is_file():
        return
    saved = read_split_manifest(manifest)
    saved = saved[saved["split"] != "unused"]
    now = dm.index
    if set(zip(saved["path"], saved["split"], strict=True)) != set(zip(now["path"], now["split"], strict=True)):
        raise DataError(
            f"the split rebuilt from {dm.root} differs from {manifest}: the data or split settings changed since "
            "training; point data.root=... at the run's data"
        )


@dataclass
class LoadedRun:
    """A finished run back in memory: its config, data, model (selected weights) and checkpoint state."""

    cfg: DictConfig
    dm: MagnificationDataModule
    module: DGModule
    checkpoint: Path
    step: int


def load_run(
    run_dir: Path, overrides: Sequence[str] = (), device: str | None = None, checkpoint: Path | None = None, data: bool = True
) -> LoadedRun:
    """Rebuild a run's datamodule and model with the pipeline's own builders and load its checkpoint.

    `data=False` (new images: predict, embed, search): the datamodule is only configured — the run's stain
    normalizer, geometry, crop and normalization — and no image of the run's data is read or needed.
    """
    cfg = load_run_config(run_dir, overrides)
    ckpt = checkpoint or selected_checkpoint(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = build_backbone(cfg)
    dm = build_datamodule(cfg, None, backbone)  # no output dir: the run's split_manifest.csv is read, never rewritten
    if data:
        dm.prepare_data()  # regenerates synthetic data if it was deleted; reuses the cache otherwise
        dm.setup("test")
        check_split(dm, run_dir)
    module = build_module(cfg, dm.num_classes, backbone)
    state = load_checkpoint(ckpt)
    try:
        module.load_state_dict(state["state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{ckpt}: does not hold the weights of {run_dir}'s model ({reason})") from None
    module.to(dev)
    return LoadedRun(cfg, dm, module, ckpt, int(state.get("global_step", 0)))


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Each path that is a run folder, else the finished runs below it (folders holding metrics.json)."""
    out: list[Path] = []
    for p in paths:
        if (p / METRICS_FILE).is_file() or (p / RUN_CONFIG_FILE).is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(m.parent for m in p.rglob(METRICS_FILE))
        else:
            out.append(p)  # reported as "not a run folder" by reevaluate
    return out
