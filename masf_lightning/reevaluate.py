"""Re-evaluate finished runs with today's metrics, in place.

    python -m masf_lightning.reevaluate RUN_DIR [RUN_DIR ...] [--device cpu] [KEY=VALUE ...]

Rebuilds each run's datamodule and model from its resolved config (nothing is retrained, the image cache is
reused), loads the checkpoint the run selected, re-runs `evaluate` and rewrites metrics.json atomically:
every training key (selected_step, oracle_*, wall_time_s, resumed, ...) is kept, every evaluation key is
replaced or added; TensorBoard gets the new figures and numbers under RUN_DIR/tb/reevaluation. A folder
that is not a run is searched for runs. An entry point beside pipeline.py: it uses the pipeline's builders.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from masf_lightning.errors import DataError, MasfError
from masf_lightning.eval.report import evaluate
from masf_lightning.eval.tensorboard import log_evaluation
from masf_lightning.io import METRICS_FILE, write_json_atomic
from masf_lightning.runs import LoadedRun, find_run_dirs, load_run

DEFAULT_KS = (1, 3, 5)
REEVALUATION_DIR = "reevaluation"


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


if __name__ == "__main__":
    sys.exit(main())
