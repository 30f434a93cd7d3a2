"""Send finished runs to a tracker afterwards: runs whose tracking server was down, and runs from before `logger=`.

    python -m masf_lightning.track RUN_DIR_OR_SWEEP --to mlflow [--tracking-uri URI] [--experiment NAME]
    python -m masf_lightning.track multirun/demo --to wandb [--project P] [--mode offline]

Each run gets what it would have got while training: identity, hyperparameters, the training curves (read back
from its TensorBoard files), the final numbers of metrics.json and its files. A sweep's runs are grouped under
the sweep folder's name. A run already in the MLflow experiment (same run name, finished) is not sent twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from masf_lightning.io import METRICS_FILE
from masf_lightning.track import record
from masf_lightning.track.loggers import MlflowTracker, Tracker, experiment_name, mlflow_uri, tracker

TB_DIR = "tb"


def runs_below(path: Path) -> tuple[str | None, list[tuple[Path, str]]]:
    """(group, [(run dir, run name)]): a run folder alone (its path as name), or a sweep's finished runs."""
    if (path / METRICS_FILE).is_file():
        return None, [(path, path.as_posix())]
    found = sorted(p.parent for p in path.rglob(METRICS_FILE))
    return path.resolve().name, [(run, run.relative_to(path).as_posix()) for run in found]


def curves(run_dir: Path) -> Iterator[tuple[int, dict[str, float]]]:
    """The training curves TensorBoard got, step by step (tb/ below the run; nothing when it has none)."""
    if not (run_dir / TB_DIR).is_dir():
        return
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / TB_DIR), size_guidance={"scalars": 0})
    acc.Reload()
    by_step: dict[int, dict[str, float]] = {}
    for tag in acc.Tags().get("scalars", []):
        for event in acc.Scalars(tag):
            by_step.setdefault(int(event.step), {})[tag] = float(event.value)
    yield from sorted(by_step.items())


def already_in_mlflow(uri: str, experiment: str, run_name: str) -> bool:
    """Whether the experiment holds a finished run of this name with its final numbers (sent before)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return False
    quoted = run_name.replace("'", "\\'")
    found = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{quoted}'", max_results=50)
    return any(r.info.status == "FINISHED" and "target_test_acc" in r.data.metrics for r in found)


def send(t: Tracker, run_dir: Path, metrics: dict[str, Any]) -> bool:
    """One run into one tracker; False (after its one warning line) when the tracker failed on the way."""
    t.send_identity(record.identity(metrics), record.params(metrics))
    for step, values in curves(run_dir):
        t.log_metrics(values, step)
    t.send_result(record.final_metrics(metrics), int(metrics.get("steps_done") or 0), record.artifacts(run_dir), run_dir)
    t.close()
    return not t.down


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m masf_lightning.track", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, metavar="RUN_DIR_OR_SWEEP")
    parser.add_argument("--to", required=True, choices=("mlflow", "wandb"))
    parser.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"), help="mlflow: server or store")
    parser.add_argument("--experiment", help="mlflow: experiment name (default: the sweep folder's name)")
    parser.add_argument("--project", default="masf-lightning", help="wandb: project")
    parser.add_argument("--entity", help="wandb: entity")
    parser.add_argument("--mode", choices=("online", "offline"), help="wandb: default $WANDB_MODE, else online with a key")
    args = parser.parse_args(argv)

    if not args.path.is_dir():
        print(f"error: {args.path}: not a folder", file=sys.stderr)
        return 2
    group, runs = runs_below(args.path)
    if not runs:
        print(f"error: {args.path}: no {METRICS_FILE} below it: no finished run to send", file=sys.stderr)
        return 1
    options: dict[str, Any] = (
        {"tracking_uri": mlflow_uri(args.tracking_uri), "experiment_name": args.experiment}
        if args.to == "mlflow"
        else {"project": args.project, "entity": args.entity, "mode": args.mode}
    )
    sent = skipped = 0
    for run_dir, name in runs:
        try:
            metrics = json.loads((run_dir / METRICS_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            print(f"warning: {run_dir / METRICS_FILE}: unreadable, not sent", file=sys.stderr)
            continue
        t = tracker(args.to, options, run_dir, group, name)
        if t is None:
            return 1  # the tracker cannot be reached: its warning said why
        if isinstance(t, MlflowTracker) and already_in_mlflow(options["tracking_uri"], experiment_name(options, group), name):
            skipped += 1
            continue
        if not send(t, run_dir, metrics):
            return 1
        sent += 1
    where = options.get("tracking_uri") or f"wandb project {args.project}"
    print(f"sent {sent} run(s) to {args.to} ({where}){f'; {skipped} already there' if skipped else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
