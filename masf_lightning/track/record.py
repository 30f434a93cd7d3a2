"""What every tracker gets from a run, read from what the run already wrote: its identity (tags), its
hyperparameters as run (params), the final numbers of metrics.json (flattened) and its files (artifacts).

Torch-free: `python -m masf_lightning.track` sends finished runs from their folders alone.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from masf_lightning.io import METRICS_FILE, RUN_CONFIG_FILE, SPLIT_MANIFEST

# metrics.json keys that say what a run is (tags), not how it did; `averaging` only where a run has it.
IDENTITY = (
    "method", "task", "target", "seed", "hparams_seed", "averaging", "commit", "sources", "protocol", "split_seed",
    "selection", "steps", "backbone", "dataset",
)  # fmt: skip
# metrics.json keys that are neither identity nor a number worth a chart (lists, names, the dataset's facts).
NOT_METRICS = ("hparams", "classes", "domains", "mpp_by_domain", "selected_checkpoint", "failed")
FIGURES_DIR = "figures"  # RUN/figures/*.png: the evaluation's figures, written by the pipeline
ARTIFACTS = (METRICS_FILE, SPLIT_MANIFEST, RUN_CONFIG_FILE)
# Fig. 2 below a run (experiments/plot_embeddings.py's default PREFIX): a t-SNE map made on demand, not by every run,
# so a tracker gets it when it exists (a run sent with python -m masf_lightning.track after the script ran).
EMBEDDING_PLOT = "fig2_embedding"


@cache
def code_commit() -> str | None:
    """The git commit of the code that ran (`-dirty` with uncommitted changes); None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def identity(m: Mapping[str, Any]) -> dict[str, Any]:
    """The run's identity keys of metrics.json (W&B config takes them as they are); absent ones left out."""
    return {key: m[key] for key in IDENTITY if m.get(key) is not None}


def tags(m: Mapping[str, Any]) -> dict[str, str]:
    """The identity as strings (MLflow tags): a list joined with commas."""
    return {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v) for k, v in identity(m).items()}


def params(m: Mapping[str, Any]) -> dict[str, Any]:
    """Every hyperparameter as the run used it (metrics.json `hparams`: drawn, default or overridden)."""
    return dict(m.get("hparams") or {})


def _flat(prefix: str, v: Any) -> Iterator[tuple[str, float]]:
    if isinstance(v, Mapping):
        for k, sub in v.items():
            yield from _flat(f"{prefix}.{k}" if prefix else str(k), sub)
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
        yield prefix, float(v)


def final_metrics(m: Mapping[str, Any]) -> dict[str, float]:
    """Every finite number of metrics.json, nested keys joined with dots (`test_acc_by_domain.400x`); lists
    (confusion matrices, reliability bins) travel in the metrics.json artifact."""
    skip = set(IDENTITY) | set(NOT_METRICS)
    return dict(kv for k, v in m.items() if k not in skip for kv in _flat(str(k), v))


def artifacts(run_dir: Path, checkpoints: bool = False) -> list[Path]:
    """The files a tracker keeps of a run: metrics.json, the split, the config, the figures; checkpoints if asked."""
    files = [run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()]
    files += sorted((run_dir / FIGURES_DIR).glob("*.png"))
    files += [p for p in [run_dir / f"{EMBEDDING_PLOT}.png"] if p.is_file()]
    if checkpoints:
        files += sorted((run_dir / "checkpoints").glob("*.ckpt"))
    return files
