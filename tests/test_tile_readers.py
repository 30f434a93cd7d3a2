"""The two slide readers give the same patch for the same region (on slides both read), and a tiled manifest
trains and evaluates through train.py with no task= (its one label column)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_train_e2e import run_train, tiny_overrides

pytest.importorskip("tiffslide", reason="the wsi extra (pip install -e '.[wsi]') is not installed")

from masf_lightning.data.tile.grid import plan_levels, read_patches  # noqa: E402
from masf_lightning.data.tile.slides import open_slide  # noqa: E402


@pytest.mark.parametrize("name", ["slide000.tif", "slide001.tif"])  # a generic tiled TIFF, an Aperio-style one
def test_openslide_and_tiffslide_give_the_same_patches(wsi_slides: Path, name: str) -> None:
    pytest.importorskip("openslide", reason="openslide-python / openslide-bin (the wsi extra) is not installed")
    slides = [open_slide(wsi_slides / name, reader) for reader in ("tiffslide", "openslide")]
    assert [s.mpp for s in slides] == [0.25, 0.25]
    assert slides[0].level_dimensions == slides[1].level_dimensions and len(slides[0].level_dimensions) == 4
    mpps = (2.0, 1.41, 1.0, 0.5, 0.35, 0.25)  # levels 3, 2, 2, 1, 0, 0: integer and non-integer reductions
    plan = plan_levels(slides[0], 0.25, mpps, 0.02)
    assert plan == {2.0: 3, 1.41: 2, 1.0: 2, 0.5: 1, 0.35: 0, 0.25: 0}
    for x, y in ((256, 256), (200, 328), (24, 40)):  # the last one half outside the slide: white there
        a, b = (read_patches(s, 0.25, plan, x, y, 24) for s in slides)
        for m in mpps:
            diff = np.abs(a[m].astype(int) - b[m].astype(int))
            assert diff.max() <= 2 and diff.mean() < 0.2, (name, x, y, m, diff.max(), diff.mean())
    for s in slides:
        s.close()


def test_tiled_manifest_trains_and_evaluates_every_resolution(wsi_tiled: Path, tmp_path: Path) -> None:
    """`python train.py data=manifest data.manifest=DIR/manifest.csv target=0.25mpp`, the table's one label column
    (`annotation` here, with `site` dropped) taken as the task."""
    frame = pd.read_csv(wsi_tiled / "manifest.csv").drop(columns=["site"])
    frame.to_csv(wsi_tiled / "one_label.csv", index=False)
    tiny = [o for o in tiny_overrides(Path("/unused"), synthetic=False) if not o.startswith("paths.data")]
    run = tmp_path / "run"
    data = ["data=manifest", f"data.manifest={wsi_tiled / 'one_label.csv'}", "target=0.25mpp", "method=deepall",
            "split.protocol=paper", "backbone.cache_size=16", "backbone.input_size=16"]  # fmt: skip
    proc = run_train([*tiny, *data, f"paths.data={tmp_path / 'cache'}", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["task"] == "annotation" and m["classes"] == ["benign", "malignant"]
    assert m["sources"] == ["2mpp", "1mpp", "0.5mpp"] and set(m["test_acc_by_domain"]) == {"2mpp", "1mpp", "0.5mpp", "0.25mpp"}
    assert m["mpp_by_domain"] == {"2mpp": 2.0, "1mpp": 1.0, "0.5mpp": 0.5, "0.25mpp": 0.25}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    images = set()
    for events in (run / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0})
        acc.Reload()
        images |= set(acc.Tags()["images"])
    assert "test/accuracy_vs_mpp" in images  # the run's own curve in TensorBoard
