"""A sweep's runs read back from an MLflow experiment, as collect.py reads them from folders.

Each run's `metrics.json` and `run_config.json` artifacts are the record (the flattened metrics on the server
leave out the lists that the metric families need); a run without them (still training, or failed before the
end) is listed as missing, identified by its tags. Shown as `EXPERIMENT/RUN_NAME`, which for a sweep sent with
its folder's name is the path collect.py shows for that folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from masf_lightning.errors import DataError
from masf_lightning.io import METRICS_FILE, RUN_CONFIG_FILE


def _artifact(client: Any, run_id: str, name: str, dst: Path) -> dict[str, Any] | None:
    try:
        path = Path(client.download_artifacts(run_id, name, str(dst)))
        got = json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - an absent artifact raises MlflowException, a foreign file a JSON error
        return None
    return got if isinstance(got, dict) else None


def _config_from_tags(tags: dict[str, str]) -> dict[str, Any]:
    """Enough of a config to place an unfinished run in its table: identity as the tags hold it."""
    split = {"protocol": tags.get("protocol")}
    steps = int(tags["steps"]) if tags.get("steps", "").isdigit() else None
    return {"task": tags.get("task"), "target": tags.get("target"), "method": {"name": tags.get("method")}, "split": split,
            "selection": tags.get("selection"), "steps": steps, "seed": int(tags["seed"]) if tags.get("seed", "").isdigit() else None}  # fmt: skip


def read_experiment(tracking_uri: str, experiment: str) -> list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]:
    """(shown path, metrics.json, run config) of every run of `experiment`, oldest first."""
    try:
        from mlflow import MlflowClient
    except ModuleNotFoundError:
        raise DataError("--from-mlflow needs mlflow: pip install -e '.[track]'") from None
    from masf_lightning.track.loggers import mlflow_client_env, mlflow_uri, probe

    mlflow_client_env()
    uri = mlflow_uri(tracking_uri)
    if (problem := probe(uri)) is not None:
        raise DataError(f"{uri}: no tracking server ({problem})")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise DataError(f"{uri} has no experiment {experiment!r} (it has: {names})")
    records, token = [], None
    with tempfile.TemporaryDirectory() as tmp:
        while True:
            page = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000, page_token=token)
            for run in page:
                dst = Path(tmp) / run.info.run_id
                dst.mkdir()
                metrics = _artifact(client, run.info.run_id, METRICS_FILE, dst)
                cfg = _artifact(client, run.info.run_id, RUN_CONFIG_FILE, dst) or _config_from_tags(run.data.tags)
                records.append((f"{experiment}/{run.info.run_name}", metrics, cfg))
            token = page.token
            if not token:
                break
    return records
