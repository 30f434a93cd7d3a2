"""Runs in MLflow and W&B: a real MLflow tracking server on 127.0.0.1 (one, shared), W&B offline.

Two train.py invocations serve every assertion: one while no server listens (mlflow warns and is dropped, W&B
offline writes its run), one 2-run sweep to the live server (read back with MLflow's client, then collected).
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_train_e2e import ROOT, run_train, tiny_overrides

mlflow = pytest.importorskip("mlflow", reason="the tracking extra is not installed: pip install -e '.[track]'")
wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2", reason="the tracking extra is not installed: pip install -e '.[track]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def start_server(base: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{base / 'mlflow.db'}", "--default-artifact-root", str(base / "artifacts")],
        cwd=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A run trained while its MLflow server is down (mlflow warns and is dropped; W&B offline writes its run); the
    server then started, on 127.0.0.1 with a temporary store; a 2-run sweep logged to it."""
    base = tmp_path_factory.mktemp("track")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MASF_DATA": "/nonexistent-do-not-use", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    down = base / "down"
    args = [*tiny_overrides(base / "data"), "logger=[tensorboard,mlflow,wandb]", f"logger.mlflow.tracking_uri={uri}", f"hydra.run.dir={down}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the server comes up once the run has found it down: it must not come back into the run
        seen.append(line)
        if line.startswith("warning:") or line.startswith("error:"):
            break
    server = start_server(base, port)
    try:
        _, rest = proc.communicate(timeout=600)
        proc_down = subprocess.CompletedProcess(proc.args, proc.returncode, "", "".join(seen) + rest)
        wait_for(f"{uri}/health", timeout=120)
        sweep = base / "sweep"
        proc_sweep = run_train(
            [*tiny_overrides(base / "data"), "-m", "method=masf,deepall", "logger=[tensorboard,csv,mlflow]", f"logger.mlflow.tracking_uri={uri}", f"hydra.sweep.dir={sweep}"],
            cwd=base, env={"WANDB_MODE": "offline"},
        )  # fmt: skip
        yield {"uri": uri, "base": base, "down": down, "proc_down": proc_down, "sweep": sweep, "proc_sweep": proc_sweep}
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # a throwaway server on a temporary store
        server.wait(timeout=30)


def client(uri: str) -> Any:
    return mlflow.MlflowClient(uri)


def test_sweep_reaches_the_server_params_metrics_artifacts(tracked: dict[str, Any]) -> None:
    assert tracked["proc_sweep"].returncode == 0, tracked["proc_sweep"].stderr[-3000:]
    assert "warning:" not in tracked["proc_sweep"].stderr
    c = client(tracked["uri"])
    exp = c.get_experiment_by_name("sweep")  # grouped under the sweep folder's name
    assert exp is not None
    runs = {r.info.run_name: r for r in c.search_runs([exp.experiment_id])}
    assert set(runs) == {"tumor_type/masf/400x/seed0", "tumor_type/deepall/400x/seed0"}
    for name, run in runs.items():
        m = json.loads((tracked["sweep"] / name / "metrics.json").read_text())
        assert run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in m["hparams"].items()}
        assert run.data.metrics["target_test_acc"] == pytest.approx(m["target_test_acc"])
        assert run.data.metrics["test_acc_by_domain.40x"] == pytest.approx(m["test_acc_by_domain"]["40x"])
        assert any(k.startswith("val/") for k in run.data.metrics), "the training curves (validation: 4 steps log no train/)"
        tags = run.data.tags
        assert (tags["method"], tags["target"], tags["seed"], tags["hparams_seed"]) == (m["method"], "400x", "0", "0")
        assert tags["commit"] == m["commit"] and m["commit"]
        listed = {a.path for a in c.list_artifacts(run.info.run_id)} | {a.path for a in c.list_artifacts(run.info.run_id, "figures")}
        assert {"metrics.json", "split_manifest.csv", "run_config.json", "figures/target_confusion.png", "figures/target_reliability.png"} <= listed
        assert not any(p.endswith(".ckpt") for p in listed), "checkpoints only with logger.log_checkpoints=true"
        curves = (tracked["sweep"] / name / "csv" / "metrics.csv").read_text().splitlines()
        assert "val/source_acc" in curves[0].split(",") and len(curves) > 1, "logger=csv: the curves as a table"


def test_server_down_one_warning_run_finishes_then_sent(tracked: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    proc, down = tracked["proc_down"], tracked["down"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "logger.mlflow" in warnings[0] and "masf_lightning.track" in warnings[0], proc.stderr[-2000:]
    m = json.loads((down / "metrics.json").read_text())
    # the server is back: send the finished run, then again (not twice)
    from masf_lightning.track.__main__ import main as track

    argv = [str(down), "--to", "mlflow", "--tracking-uri", tracked["uri"], "--experiment", "later"]
    assert track(argv) == 0 and "sent 1 run" in capsys.readouterr().out
    assert track(argv) == 0 and "1 already there" in capsys.readouterr().out
    c = client(tracked["uri"])
    (run,) = c.search_runs([c.get_experiment_by_name("later").experiment_id])
    assert run.data.params == {k: str(v) for k, v in m["hparams"].items()}
    assert run.data.metrics["target_test_acc"] == pytest.approx(m["target_test_acc"])
    assert any(k.startswith("val/") for k in run.data.metrics), "the curves, read back from tb/"
    assert "metrics.json" in {a.path for a in c.list_artifacts(run.info.run_id)}


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of an offline W&B run file (LevelDB log format: 32 KiB blocks of crc, length, type, data)."""
    buf, pos, chunk, block = path.read_bytes(), 7, b"", 32768  # 7: W&B's file header
    while pos + 7 <= len(buf):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        data, pos = buf[pos + 7 : pos + 7 + n], pos + 7 + n
        chunk = data if kind in (1, 2) else chunk + data
        if kind in (1, 4):
            record = wandb_pb.Record()
            record.ParseFromString(chunk)
            yield record


def test_wandb_offline_run_holds_params_and_final_metrics(tracked: dict[str, Any]) -> None:
    down = tracked["down"]
    (run_file,) = glob.glob(str(down / "wandb" / "offline-run-*" / "run-*.wandb"))
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for r in wandb_records(Path(run_file)):
        kind = r.WhichOneof("record_type")
        if kind in ("config", "summary"):
            for item in getattr(r, kind).update:
                (config if kind == "config" else summary)[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    m = json.loads((down / "metrics.json").read_text())
    assert {k: config.get(k) for k in m["hparams"]} == m["hparams"]
    assert (config["method"], config["target"], config["seed"]) == (m["method"], m["target"], m["seed"])
    assert summary["target_test_acc"] == pytest.approx(m["target_test_acc"])
    assert summary["source_val_acc"] == pytest.approx(m["source_val_acc"])
    files = Path(run_file).parent / "files"
    assert (files / "metrics.json").is_file() and (files / "figures" / "target_confusion.png").is_file()


def test_collect_from_mlflow_prints_the_folders_table(tracked: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        from collect import main as collect
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    monkeypatch.chdir(tracked["base"])  # the folder shown as `sweep/...`, as the server shows the experiment `sweep`
    assert collect(["sweep"]) == 0
    folders = capsys.readouterr().out
    assert collect(["--from-mlflow", tracked["uri"], "--experiment", "sweep"]) == 0
    assert "MASF" in folders and "DeepAll" in folders
    assert capsys.readouterr().out == folders
