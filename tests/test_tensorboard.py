"""TensorBoard as a browser sees it: a tiny run served by the real `tensorboard` binary on 127.0.0.1,
queried through the same HTTP data API its frontend uses (scalars, custom scalars, images, projector)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_train_e2e import run_train, tiny_overrides

TENSORBOARD = Path(sys.executable).parent / "tensorboard"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MASF run long enough to log training losses (Lightning logs every 10 steps)."""
    tmp = tmp_path_factory.mktemp("tb")
    out = tmp / "run"
    args = [a for a in tiny_overrides(tmp / "data") if not a.startswith(("steps=", "val_every="))]
    proc = run_train([*args, "steps=10", "val_every=5", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Iterator[str]:
    """`tensorboard --logdir RUN/tb` on a free port; yields its base URL, stops it afterwards."""
    # tensorboard is a dependency: a missing binary is a broken install, not a reason to skip
    assert TENSORBOARD.is_file(), f"{TENSORBOARD} is missing: reinstall with `make install`"
    proc = subprocess.Popen(
        [str(TENSORBOARD), "--logdir", str(run_dir / "tb"), "--host", "127.0.0.1", "--port", "0", "--reload_interval", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                raise RuntimeError(f"tensorboard exited with {proc.returncode}")
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
        assert url, "tensorboard did not say where it listens"
        while time.monotonic() < deadline:  # the logdir is read in the background: wait for the run
            if "." in json.loads(_get(url, "/data/runs")):
                break
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _get(url: str, path: str) -> bytes:
    with urllib.request.urlopen(url + path, timeout=30) as resp:
        return resp.read()


def test_scalar_tags_losses_per_magnification_no_epoch(server: str, run_dir: Path) -> None:
    tags = set(json.loads(_get(server, "/data/plugin/scalars/tags"))["."])
    assert {"train/cr", "train/gen", "train/tri", "val/source_acc", "val/target_acc", "oracle/target_test_acc"} <= tags
    sources = json.loads((run_dir / "metrics.json").read_text())["sources"]
    assert {f"val/{d}/acc" for d in sources} <= tags
    assert "epoch" not in tags  # constant in episodic training: a chart that only took the first place
    assert {"test/target_test_acc", "test/patient_recognition_rate", "test/target_test_ece", "test/map10_embeddings"} <= tags


def test_custom_scalars_put_losses_and_magnifications_first(server: str, run_dir: Path) -> None:
    layout = json.loads(_get(server, "/data/plugin/custom_scalars/layout"))
    tags = set(json.loads(_get(server, "/data/plugin/scalars/tags"))["."])
    first, second = layout["category"][:2]
    losses = first["chart"][0]["multiline"]["tag"]
    assert {t for t in tags if any(re.search(p, t) for p in losses)} == {"train/cr", "train/gen", "train/tri"}
    per_mag = second["chart"][0]["multiline"]["tag"]
    assert {t for t in tags if any(re.search(p, t) for p in per_mag)} == {"val/40x/acc", "val/100x/acc", "val/200x/acc"}
    # the chart's data, as the dashboard asks for it
    body = json.loads(_get(server, "/data/plugin/custom_scalars/scalars?run=.&tag=" + urllib.parse.quote(losses[0])))
    assert body["regex_valid"] and set(body["tag_to_events"]) == {"train/cr", "train/gen", "train/tri"}


def test_projector_tensor_found_by_its_tag(server: str) -> None:
    """The frontend puts the tensor name into the query unescaped: a `+` in the tag arrived as a space."""
    info = json.loads(_get(server, "/data/plugin/projector/info?run=."))
    (emb,) = info["embeddings"]
    name = emb["tensorName"]
    assert name.startswith("target_test_and_source_val:")
    rows, dim = emb["tensorShape"]
    tensor = _get(server, f"/data/plugin/projector/tensor?run=.&name={name}")  # as the frontend sends it
    assert len(tensor) == rows * dim * 4  # float32
    meta = _get(server, f"/data/plugin/projector/metadata?run=.&name={name}").decode().splitlines()
    assert meta[0].split("\t") == ["class", "domain", "patient", "split", "role"] and len(meta) == rows + 1


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("tag", ["test/target_confusion", "test/target_reliability"])
def test_figures_fit_the_image_card(server: str, tag: str) -> None:
    """Shown at their own size in the Images card (no downscaling that would shrink the labels)."""
    (entry,) = json.loads(_get(server, f"/data/plugin/images/images?run=.&tag={tag}"))
    width, height = _png_size(_get(server, f"/data/plugin/images/individualImage?{entry['query']}"))
    assert 400 <= width <= 560 and 400 <= height <= 560, (width, height)


def test_evaluation_table_in_text_tab(server: str) -> None:
    body = json.loads(_get(server, "/data/plugin/text/text?run=.&tag=test/metrics/text_summary"))
    assert "patient_recognition_rate" in body[0]["text"] and "<table>" in body[0]["text"]


def test_no_tag_needs_escaping(server: str) -> None:
    tags = json.loads(_get(server, "/data/plugin/scalars/tags"))["."]
    assert not [t for t in tags if re.search(r"[^A-Za-z0-9_/.\-]", t)]
