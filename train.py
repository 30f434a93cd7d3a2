#!/usr/bin/env python
"""Train MASF or DeepAll on one left-out magnification.

    python train.py                                   # MASF, synthetic data, target 400x, CPU
    python train.py method=deepall task=malignancy target=40x
    python train.py data=breakhis data.root=/data/BreaKHis experiment=paper_tumor_type
    python train.py target=400x -m seed=0,1,2        # three seeds
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import masf_lightning.config  # noqa: F401 - registers the hparams registry with Hydra before it composes conf/
from masf_lightning.errors import MasfError, TrainingError


def _gpu_count() -> int:
    from masf_lightning.gpu_pool import visible_gpus

    return max(1, len(visible_gpus()))


OmegaConf.register_new_resolver("gpu_count", _gpu_count, replace=True)


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from masf_lightning.config.callback import check_run

    try:  # the CheckConfig callback did this before Hydra wrote anything; again for a launcher that skips it
        check_run(cfg)
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)

    from masf_lightning.memory import keep_freed_memory
    from masf_lightning.pipeline import run, summary_line  # after the check: a bad value fails fast

    keep_freed_memory()  # before training allocates anything big (glibc would unmap and re-fault large buffers)

    # Lightning's banner lines (devices, tips) and a torch-internal deprecation add nothing for our users.
    logging.getLogger("pytorch_lightning.utilities.rank_zero").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*")

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if cfg.gpu_pool:
            from masf_lightning.gpu_pool import gpu_for_this_job

            with gpu_for_this_job(Path(HydraConfig.get().sweep.dir) / ".gpu_locks") as gpu:
                print(f"{run_dir}: GPU {gpu}")
                metrics = run(cfg, run_dir, record_failure=in_sweep)
        else:
            metrics = run(cfg, run_dir, record_failure=in_sweep)
    except TrainingError as exc:
        if not in_sweep:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exc.exit_code)
        # a diverged draw is a result of the sweep: recorded in metrics.json, the other jobs go on (masf_lightning/sweep.py)
        print(f"error: {run_dir}: {exc}", file=sys.stderr)
        return
    except MasfError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    if metrics:
        print(summary_line(metrics))
        print(f"metrics: {run_dir / 'metrics.json'}")


def _flags_first(argv: list[str]) -> list[str]:
    """Let `python train.py target=400x -m seed=0,1,2` work: Hydra's parser wants `-m` before the overrides."""
    flags = [a for a in argv[1:] if a in ("-m", "--multirun")]
    return [argv[0], *flags, *(a for a in argv[1:] if a not in flags)]


def _check_output_overrides(argv: list[str]) -> None:
    """Hydra creates its output folder before our code runs; check explicit ones first, for a one-line error."""
    from masf_lightning.io import check_writable_dir

    for arg in argv[1:]:
        key, _, value = arg.partition("=")
        if key in ("hydra.run.dir", "hydra.sweep.dir") and value:
            try:
                check_writable_dir(value, key)
            except MasfError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(exc.exit_code)


if __name__ == "__main__":
    sys.argv = _flags_first(sys.argv)
    _check_output_overrides(sys.argv)
    main()
