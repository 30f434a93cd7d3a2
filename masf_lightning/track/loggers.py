"""The `logger` group made into Lightning's own loggers, and the trackers (MLflow, W&B) made safe to lose.

A tracker that cannot be reached at start, or fails later, costs one `warning:` line and is dropped: the run
trains, evaluates and writes metrics.json as without it; `python -m masf_lightning.track RUN --to KIND` sends
it afterwards. Each tracker also takes the run's identity at start and its results at the end (`send_*`).
"""

from __future__ import annotations

import os
import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, Logger, MLFlowLogger, WandbLogger

from masf_lightning.eval.tensorboard import TrainingLogger
from masf_lightning.track import record

DEFAULT_EXPERIMENT = "masf-lightning"  # a single run's MLflow experiment / W&B group when the config names none
PROBE_TIMEOUT_S = 3.0
# The MLflow client retries a failed request 7 times with exponential backoff (minutes); a training run waits
# on each logging call, so fewer and shorter, unless the user's environment says otherwise.
# No progress bar per artifact either: a few small files each run.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}  # fmt: skip


def mlflow_client_env() -> None:
    """MLFLOW_CLIENT_ENV where the user's environment does not say otherwise (the client reads it per request)."""
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class Tracker:
    """A remote tracker's calls, each guarded: the first failure warns once and turns the tracker off."""

    kind = "?"
    down = False
    resend = "RUN_DIR"  # the arguments of `python -m masf_lightning.track` that send this run later

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.down:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure of a tracker must not end the run
            self.down = True
            warn(f"logger.{self.kind}: {what} failed ({_reason(exc)}); the run goes on without {self.kind}; "
                 f"send it when it is back: python -m masf_lightning.track {self.resend}")  # fmt: skip
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # Lightning's constant `epoch` (episodic training has one) left out, as in TensorBoard
        self._guard("logging", super().log_metrics, {k: v for k, v in metrics.items() if k != "epoch"}, step)  # type: ignore[misc]

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        self._guard("logging", super().log_hyperparams, params, *args, **kwargs)  # type: ignore[misc]

    def finalize(self, status: str) -> None:
        """Lightning's end of fit; a successful run is closed after its evaluation is sent (`close`)."""
        if status != "success":
            self._guard("closing the run", super().finalize, status)  # type: ignore[misc]

    def send_identity(self, identity: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self._guard("starting the run", self._send_identity, identity, params)

    def send_result(self, metrics: Mapping[str, float], step: int, files: Sequence[Path], root: Path) -> None:
        self._guard("sending the results", self._send_result, metrics, step, files, root)

    def close(self) -> None:
        self._guard("closing the run", self._close)

    def _send_identity(self, identity: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _send_result(self, metrics: Mapping[str, float], step: int, files: Sequence[Path], root: Path) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


class MlflowTracker(Tracker, MLFlowLogger):
    """Lightning's MLFlowLogger; tags identify the run, params are its hyperparameters, artifacts its files."""

    kind = "mlflow"

    def _send_identity(self, identity: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        for key, value in record.tags(identity).items():
            self.experiment.set_tag(self.run_id, key, value)
        MLFlowLogger.log_hyperparams(self, dict(params))

    def _send_result(self, metrics: Mapping[str, float], step: int, files: Sequence[Path], root: Path) -> None:
        MLFlowLogger.log_metrics(self, dict(metrics), step)
        for f in files:
            parent = f.parent.relative_to(root).as_posix()
            self.experiment.log_artifact(self.run_id, str(f), artifact_path=None if parent == "." else parent)

    def _close(self) -> None:
        MLFlowLogger.finalize(self, "success")


class WandbTracker(Tracker, WandbLogger):
    """Lightning's WandbLogger; the config holds identity and hyperparameters, the summary the final numbers."""

    kind = "wandb"

    def _send_identity(self, identity: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self.experiment.config.update({**identity, **params}, allow_val_change=True)

    def _send_result(self, metrics: Mapping[str, float], step: int, files: Sequence[Path], root: Path) -> None:
        self.experiment.summary.update(dict(metrics))
        for f in files:  # the run's files folder is uploaded (or synced) when the run ends
            dest = Path(self.experiment.dir) / f.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)

    def _close(self) -> None:
        self.experiment.finish()


def mlflow_uri(uri: str) -> str:
    """A plain folder (`./mlruns`) as MLflow's file store URI; any URI with a scheme as it is."""
    return uri if "://" in uri or uri.startswith("file:") or uri == "databricks" else Path(uri).absolute().as_uri()


def probe(uri: str) -> str | None:
    """None when an http(s) tracking server answers its /health within a few seconds, else why not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S) as resp:
            return None if resp.status == 200 else f"/health answered {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"/health answered {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return _reason(exc)


def wandb_mode(mode: str | None) -> str:
    """logger.wandb.mode, else $WANDB_MODE, else online where an API key is set up and offline where none is."""
    if mode:
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))
    return "online" if has_key else "offline"


def experiment_name(options: Mapping[str, Any], group: str | None) -> str:
    """MLflow's experiment: logger.mlflow.experiment_name, else the sweep's folder name, else the project's name."""
    return str(options.get("experiment_name") or group or DEFAULT_EXPERIMENT)


def tracker(kind: str, options: Mapping[str, Any], run_dir: Path, group: str | None, run_name: str) -> Tracker | None:
    """An MLflow or W&B logger for one run, or None (one warning line) when it cannot be had."""
    try:
        if kind == "mlflow":
            mlflow_client_env()
            uri = mlflow_uri(str(options["tracking_uri"]))
            if (problem := probe(uri)) is not None:
                warn(f"logger.mlflow.tracking_uri={uri}: no tracking server ({problem}); the run goes on without mlflow; "
                     f"send it later: python -m masf_lightning.track {run_dir} --to mlflow --tracking-uri {uri}")  # fmt: skip
                return None
            t: Tracker = MlflowTracker(experiment_name=experiment_name(options, group), run_name=run_name, tracking_uri=uri, save_dir=None)
            t.resend = f"{run_dir} --to mlflow --tracking-uri {uri}"
            return t
        if kind == "wandb":
            t = WandbTracker(
                name=run_name, project=options.get("project"), entity=options.get("entity"), group=group or DEFAULT_EXPERIMENT,
                save_dir=str(run_dir), mode=wandb_mode(options.get("mode")),
            )  # fmt: skip
            t.resend = f"{run_dir} --to wandb --project {options.get('project')}"
            return t
    except ModuleNotFoundError as exc:
        warn(f"logger.{kind}: {exc.name or kind} is not installed (pip install -e '.[track]'); the run goes on without {kind}")
        return None
    raise ValueError(f"no tracker {kind}")


def build_loggers(logger_cfg: Mapping[str, Any], run_dir: Path, group: str | None, run_name: str) -> list[Logger]:
    """The run's loggers in the order the `logger` node lists them (tensorboard first by default)."""
    out: list[Logger] = []
    for kind, options in logger_cfg.items():
        if kind == "log_checkpoints" or options is None:
            continue
        if kind == "tensorboard":
            out.append(TrainingLogger(save_dir=str(run_dir), name="tb", version="", default_hp_metric=False))
        elif kind == "csv":
            out.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
        elif (t := tracker(kind, options, run_dir, group, run_name)) is not None:
            out.append(t)  # type: ignore[arg-type]
    return out


def trackers(loggers: Sequence[Logger]) -> list[Tracker]:
    return [lg for lg in loggers if isinstance(lg, Tracker)]
