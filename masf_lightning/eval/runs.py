"""Finished runs, reopened: config, split check, selected checkpoint, and re-evaluation with today's metrics.

    python -m masf_lightning.eval.report RUN_DIR [RUN_DIR ...] [--device cpu] [KEY=VALUE ...]

Re-evaluation rebuilds the run's datamodule and model from its resolved config (nothing is retrained,
the image cache is reused), loads the checkpoint the run selected, re-runs `evaluate` and rewrites
metrics.json atomically: every training key (selected_step, oracle_*, wall_time_s, resumed, ...) is
kept, every evaluation key is replaced or added; TensorBoard gets the new figures and numbers under
RUN_DIR/tb/reevaluation. A folder that is not a run is searched for runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from masf_lightning.algorithms import DGModule
from masf_lightning.data.datamodule import BreakhisDataModule
from masf_lightning.data.splits import read_split_manifest
from masf_lightning.errors import ConfigError, DataError, MasfError
from masf_lightning.eval.report import evaluate
from masf_lightning.eval.tensorboard import log_evaluation
from masf_lightning.io import write_json_atomic
from masf_lightning.pipeline import METRICS_FILE, RUN_CONFIG_FILE, build_datamodule, build_module

DEFAULT_KS = (1, 3, 5)
REEVALUATION_DIR = "reevaluation"


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


def check_split(dm: BreakhisDataModule, run_dir: Path) -> None:
    """Refuse a rebuilt split that is not the one the run trained and tested on.

    Changed data or split code would put training images among the "test" images without any sign.
    """
    manifest = run_dir / "split_manifest.csv"
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
    dm: BreakhisDataModule
    module: DGModule
    checkpoint: Path
    step: int


def load_run(run_dir: Path, overrides: Sequence[str] = (), device: str | None = None, checkpoint: Path | None = None) -> LoadedRun:
    """Rebuild a run's datamodule and model with the pipeline's own builders and load its checkpoint."""
    cfg = load_run_config(run_dir, overrides)
    ckpt = checkpoint or selected_checkpoint(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dm = build_datamodule(cfg, None)  # no output dir: the run's split_manifest.csv is read, never rewritten
    dm.prepare_data()  # regenerates synthetic data if it was deleted; reuses the cache otherwise
    dm.setup("test")
    check_split(dm, run_dir)
    module = build_module(cfg, dm.num_classes)
    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file, whatever torch raises
        raise DataError(f"{ckpt} cannot be read as a checkpoint ({type(exc).__name__})") from None
    module.load_state_dict(state["state_dict"])
    module.to(dev)
    return LoadedRun(cfg, dm, module, ckpt, int(state.get("global_step", 0)))


# -- re-evaluation ------------------------------------------------------------------------------
def reevaluate(run_dir: Path, overrides: Sequence[str] = (), device: str | None = None, ks: Sequence[int] = DEFAULT_KS) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate a finished run's selected checkpoint again; returns (old, new) metrics, new already written."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist: the run has not finished")
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    rel = old.get("selected_checkpoint")
    if not rel or not (run_dir / rel).is_file():
        raise DataError(f"{path}: selected_checkpoint={rel!r} is not a file below {run_dir}; cannot re-evaluate the selected model")
    run = load_run(run_dir, overrides, device, checkpoint=run_dir / rel)
    if "selected_step" in old and run.step != old["selected_step"]:
        raise DataError(f"{run.checkpoint} holds step {run.step}, metrics.json says selected_step={old['selected_step']}: the checkpoint was replaced")
    new = {**old, **evaluate(run.module, run.dm, list(ks))}
    write_json_atomic(path, new)
    log_reevaluation(run_dir, run, new)
    return old, new


def log_reevaluation(run_dir: Path, run: LoadedRun, metrics: dict[str, Any]) -> Path:
    """The new evaluation in TensorBoard as its own run beside the training one (tb/reevaluation).

    Its own folder, rebuilt each time: writing into tb/ would add a second point at the same step
    to every evaluation chart and overwrite the training projector's config.
    """
    from torch.utils.tensorboard import SummaryWriter

    log_dir = run_dir / "tb" / REEVALUATION_DIR
    shutil.rmtree(log_dir, ignore_errors=True)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        log_evaluation(writer, run.module, run.dm, metrics, run.cfg, run.step)
    return log_dir


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


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, (int, float)) and not isinstance(v, bool) else "–"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Re-evaluate finished runs with the current metrics; rewrite their metrics.json.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folders, or folders searched for them")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--k", type=int, nargs="+", default=list(DEFAULT_KS), help="k of the top-k majority-vote search accuracy")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="patch every run's config, e.g. data.root=/new/place")
    args = parser.parse_intermixed_args(argv)
    runs = find_run_dirs(args.run_dirs)
    if not runs:
        print(f"error: no finished run (metrics.json) below {', '.join(map(str, args.run_dirs))}", file=sys.stderr)
        return 2
    failed = 0
    for i, run_dir in enumerate(runs, 1):
        try:
            if not run_dir.is_dir():
                raise DataError(f"{run_dir} is not a folder")
            old, new = reevaluate(run_dir, args.overrides, args.device, args.k)
        except MasfError as exc:
            failed += 1
            print(f"error: {exc}", file=sys.stderr)
            continue
        print(
            f"[{i}/{len(runs)}] {run_dir}: target test acc {_pct(new.get('target_test_acc'))} (was {_pct(old.get('target_test_acc'))}), "
            f"patient recognition rate {_pct(new.get('patient_recognition_rate'))}",
            flush=True,
        )
    if failed and len(runs) > 1:
        print(f"error: {failed} of {len(runs)} run(s) not re-evaluated (see above)", file=sys.stderr)
    return 2 if failed else 0
