#!/usr/bin/env python
"""Train MASF or DeepAll on one left-out magnification.

    python train.py                                   # MASF, synthetic data, target 400x, CPU
    python train.py method=deepall task=malignancy target=40x
    python train.py data=breakhis data.root=/data/BreaKHis experiment=paper_tumor_type
    python train.py target=400x -m seed=0,1,2        # three seeds
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from masf_lightning.errors import MasfError


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from masf_lightning.pipeline import run, summary_line  # after Hydra parsed the CLI: `--help` stays fast

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, run_dir)
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


if __name__ == "__main__":
    sys.argv = _flags_first(sys.argv)
    main()
