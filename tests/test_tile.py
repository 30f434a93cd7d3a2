"""Whole slides to patches (python -m masf_lightning.data.tile) on tiny generated pyramidal TIFFs: the manifest
`data=manifest` reads, concentric patches, µm/px from the file, GeoJSON labels, resume, skipped slides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from masf_lightning.data.sources import read_manifest
from tests.conftest import WSI_MPPS

pytest.importorskip("tiffslide", reason="the wsi extra (pip install -e '.[wsi]') is not installed")

from masf_lightning.data.tile.__main__ import main  # noqa: E402
from masf_lightning.data.tile.labels import Annotations  # noqa: E402
from masf_lightning.data.tile.slides import mpp_from_properties, mpp_from_tiff_tags  # noqa: E402


def _load(out: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(out / rel).convert("RGB")).astype(np.float64)


def test_manifest_has_every_region_at_every_resolution_and_reads_as_a_table(wsi_tiled: Path) -> None:
    table = read_manifest(wsi_tiled / "manifest.csv")
    frame = table.frame
    assert table.domains == tuple(f"{m}mpp" for m in WSI_MPPS)  # coarse to fine, by the mpp column
    assert table.mpp() == {f"{m}mpp": float(m) for m in WSI_MPPS}
    assert {"slide", "x", "y", "tissue", "site", "annotation"} <= set(frame.columns)
    assert table.label_columns == ("site", "annotation")
    per_region = frame.groupby(["slide", "x", "y"])["domain"].agg(lambda d: sorted(d))
    assert len(per_region) >= 12 and all(len(d) == 4 for d in per_region)
    assert frame.groupby("slide")["patient"].first().to_dict() == {f"slide{p:03d}": f"P{p}" for p in range(4)}
    assert (wsi_tiled / "thumbnails" / "slide000.png").is_file()
    assert Image.open(wsi_tiled / frame["path"][0]).size == (16, 16)


def test_patches_of_a_region_are_concentric(wsi_tiled: Path) -> None:
    """A fine patch reduced 2× equals the centre of the next coarser patch; a neighbour region's does not."""
    frame = pd.read_csv(wsi_tiled / "manifest.csv")
    paths = frame.set_index(["slide", "x", "y", "domain"])["path"]
    regions = frame[["slide", "x", "y"]].drop_duplicates().to_numpy().tolist()
    same, other = [], []
    for fine, coarse in (("0.5mpp", "1mpp"), ("0.25mpp", "0.5mpp"), ("1mpp", "2mpp")):
        for i, (s, x, y) in enumerate(regions):
            small = np.asarray(Image.open(wsi_tiled / paths[s, x, y, fine]).convert("RGB").reduce(2)).astype(np.float64)
            centre = _load(wsi_tiled, paths[s, x, y, coarse])[4:12, 4:12]
            same.append(np.abs(small - centre).mean())
            s2, x2, y2 = regions[(i + 1) % len(regions)]
            other.append(np.abs(small - _load(wsi_tiled, paths[s2, x2, y2, coarse])[4:12, 4:12]).mean())
    assert np.median(same) < 6 and max(same) < 12, same
    assert np.median(other) > 3 * np.median(same), (np.median(other), np.median(same))


def test_geojson_with_two_classes_labels_patches_inside_and_drops_the_rest(wsi_slides: Path, tmp_path: Path) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    square = {"A": [[0, 0], [256, 0], [256, 256], [0, 256], [0, 0]], "B": [[256, 256], [512, 256], [512, 512], [256, 512], [256, 256]]}
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {"classification": {"name": c}}}
                for c, ring in square.items()]  # fmt: skip
    (notes / "slide000.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    out = tmp_path / "out"
    common = [str(wsi_slides / "slide000.tif"), "--size", "16", "--mpp", "1", "0.5", "--min-tissue", "0", "--no-progress"]
    assert main([*common, "--out", str(out), "--annotations", str(notes)]) == 0
    frame = pd.read_csv(out / "manifest.csv")
    assert set(frame["annotation"]) == {"A", "B"}
    inside_a = (frame["x"] < 256) & (frame["y"] < 256)
    inside_b = (frame["x"] > 256) & (frame["y"] > 256)
    assert (frame.loc[frame["annotation"] == "A"].index == frame.index[inside_a]).all()
    assert (inside_a | inside_b).all() and (frame.loc[inside_b, "annotation"] == "B").all()
    everything = tmp_path / "all"
    assert main([*common, "--out", str(everything)]) == 0  # no annotations: every region of the grid
    full = pd.read_csv(everything / "manifest.csv")
    assert len(full) > len(frame) and len(frame) == len(full[(full["x"] < 256) & (full["y"] < 256) | (full["x"] > 256) & (full["y"] > 256)])
    kept = tmp_path / "kept"
    assert main([*common, "--out", str(kept), "--annotations", str(notes), "--keep-unlabelled"]) == 0
    assert set(pd.read_csv(kept / "manifest.csv")["annotation"]) == {"A", "B", "unlabelled"}


def test_geojson_holes_and_multipolygons(tmp_path: Path) -> None:
    ring = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
    far = [[[200, 200], [300, 200], [300, 300], [200, 300], [200, 200]]]
    features = [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring, hole]}, "properties": {"classification": {"name": "T"}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [far]}, "properties": {"classification": "S"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": {}},  # unclassified: ignored
    ]
    (tmp_path / "a.geojson").write_text(json.dumps(features))
    notes = Annotations(tmp_path / "a.geojson")
    assert [notes.label(*p) for p in ((10, 10), (50, 50), (250, 250), (150, 150))] == ["T", None, "S", None]


def test_slide_without_mpp_is_refused_in_one_line_and_the_others_tiled(
    wsi_slides: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from masf_lightning.data.synthetic.wsi import write_wsi

    folder = tmp_path / "slides"
    folder.mkdir()
    write_wsi(folder / "nompp.tif", 256, patient=5, mpp=None, levels=2)
    shutil.copy(wsi_slides / "slide002.tif", folder / "slide002.tif")
    assert mpp_from_tiff_tags(folder / "nompp.tif") is None
    args = [str(folder), "--size", "16", "--mpp", "1", "0.5", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    refusals = [line for line in err.splitlines() if line.startswith("skipped:")]
    assert len(refusals) == 1 and "nompp.tif" in refusals[0] and "--slide-mpp" in refusals[0]
    assert set(pd.read_csv(tmp_path / "a" / "manifest.csv")["slide"]) == {"slide002"}
    assert main([*args, "--out", str(tmp_path / "b"), "--slide-mpp", "0.25"]) == 0
    assert set(pd.read_csv(tmp_path / "b" / "manifest.csv")["slide"]) == {"nompp", "slide002"}


def test_resolution_finer_than_the_slide_is_skipped_and_said_once(wsi_slides: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(wsi_slides / "slide000.tif"), "--out", str(tmp_path), "--size", "16", "--mpp", "1", "0.125", "--no-progress"]) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "0.125mpp" in line]
    assert len(notes) == 1 and "never upsampled" in notes[0]
    assert set(pd.read_csv(tmp_path / "manifest.csv")["domain"]) == {"1mpp"}


def test_corrupt_slide_is_skipped_and_listed(wsi_slides: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    (folder / "broken.svs").write_bytes(b"II*\x00" + b"\x17" * 500)
    shutil.copy(wsi_slides / "slide003.tif", folder / "slide003.tif")
    args = [str(folder), "--size", "16", "--mpp", "1", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert sum(line.startswith("skipped: ") and "broken.svs" in line for line in err.splitlines()) == 1
    assert "1 slide(s) skipped" in err and set(pd.read_csv(tmp_path / "a" / "manifest.csv")["slide"]) == {"slide003"}
    assert main([*args, "--out", str(tmp_path / "b"), "--strict"]) == 1
    assert main([str(folder / "broken.svs"), "--size", "16", "--out", str(tmp_path / "c"), "--no-progress"]) == 1  # nothing written


def test_killed_run_resumes_to_the_same_manifest(wsi_slides: Path, wsi_tiled: Path, tmp_path: Path) -> None:
    """A slide whose done marker is missing (killed mid-slide) is redone whole; finished slides are not touched."""
    out = tmp_path / "resumed"
    shutil.copytree(wsi_tiled, out)
    (out / "manifest.csv").unlink()
    (out / ".tile" / "slide002.csv").unlink()  # killed while writing slide002 …
    for png in sorted((out / "patches" / "slide002").rglob("*.png"))[::2]:
        png.unlink()  # … half its patches written
    (out / "patches" / "slide002" / "1mpp" / "stray.png").write_bytes(b"half a png")
    kept = {p: p.stat().st_mtime_ns for p in (out / "patches" / "slide000").rglob("*.png")}
    args = [str(wsi_slides), "--out", str(out), "--size", "16", "--mpp", *WSI_MPPS, "--annotations", "--labels",
            str(wsi_slides / "slides.csv"), "--no-progress"]  # fmt: skip
    assert main([*args, "--workers", "2"]) == 0  # the re-run in worker processes, as a user's long run
    assert (out / "manifest.csv").read_bytes() == (wsi_tiled / "manifest.csv").read_bytes()
    assert not (out / "patches" / "slide002" / "1mpp" / "stray.png").exists()
    assert {p: p.stat().st_mtime_ns for p in (out / "patches" / "slide000").rglob("*.png")} == kept
    for rel in pd.read_csv(out / "manifest.csv")["path"]:
        assert (out / rel).read_bytes() == (wsi_tiled / rel).read_bytes()
    assert main([*args[:3], "--size", "32", "--no-progress"]) == 2  # other settings into the same folder: refused


def test_non_integer_level_downsamples(tmp_path: Path) -> None:
    """A 521 px base gives levels of 261, 131 and 66 px (downsamples 1.996, 3.977, 7.894): each level's µm/px comes
    from its own size, so patches read from it stay concentric with the finer ones."""
    from masf_lightning.data.synthetic.wsi import write_wsi
    from masf_lightning.data.tile.grid import plan_levels, read_patches
    from masf_lightning.data.tile.slides import open_slide

    slide = open_slide(write_wsi(tmp_path / "odd.tif", 521, patient=2))
    assert [d for d in slide.level_dimensions] == [(521, 521), (261, 261), (131, 131), (66, 66)]
    assert slide.level_downsample(3) == pytest.approx(521 / 66)
    plan = plan_levels(slide, 0.25, (2.0, 1.0), 0.02)
    assert plan == {2.0: 3, 1.0: 2}  # levels of 1.974 and 0.994 µm/px: each reduced a little (never enlarged)
    patches = read_patches(slide, 0.25, plan, 264, 256, 16)
    small = np.asarray(Image.fromarray(patches[1.0]).reduce(2)).astype(np.float64)
    assert np.abs(small - patches[2.0][4:12, 4:12].astype(np.float64)).mean() < 8
    slide.close()


def test_mpp_read_from_every_source(tmp_path: Path) -> None:
    import tifffile

    for unit, res, expected in (("CENTIMETER", 40000.0, 0.25), ("INCH", 25400.0, 1.0), (5, 2.0, 0.5), ("NONE", 1.0, None)):
        path = tmp_path / f"{unit}.tif"
        tifffile.imwrite(path, np.zeros((8, 8, 3), np.uint8), resolution=(res, res), resolutionunit=unit)
        assert mpp_from_tiff_tags(path) == expected, unit
    assert mpp_from_tiff_tags(tmp_path / "missing.tif") is None
    assert mpp_from_properties({"aperio.MPP": "0.2527"}) == 0.2527
    assert mpp_from_properties({"openslide.mpp-x": "0.5", "openslide.mpp-y": "0.7"}) == pytest.approx(0.6)
    assert mpp_from_properties({"openslide.objective-power": "40"}) is None  # never from the objective power


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["/nonexistent/slides"], "/nonexistent/slides: no such file or folder"),
        (["SLIDES", "--labels", "/nonexistent.csv"], "--labels /nonexistent.csv: no such file"),
        (["SLIDES", "--mpp", "0", "1"], "--mpp 0.0 1.0: every value must be > 0"),
        (["SLIDES", "--min-tissue", "2"], "--min-tissue 2.0: must be in [0, 1]"),
    ],
    ids=["slides", "labels", "mpp", "min-tissue"],
)
def test_bad_arguments_are_one_line_exit_2_and_nothing_written(
    wsi_slides: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    args = [str(wsi_slides) if a == "SLIDES" else a for a in args]
    assert main([*args, "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {needle}"] and not (tmp_path / "out").exists()


def test_max_per_slide_is_a_seeded_draw(wsi_slides: Path, tmp_path: Path) -> None:
    common = [str(wsi_slides / "slide000.tif"), "--size", "16", "--mpp", "1", "--min-tissue", "0", "--no-progress"]
    frames = []
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        assert main([*common, "--out", str(tmp_path / name), "--max-per-slide", "5", "--seed", seed]) == 0
        frames.append(pd.read_csv(tmp_path / name / "manifest.csv"))
    assert len(frames[0]) == 5 and frames[0].equals(frames[1])  # the same seed, the same regions in the same order
    assert not frames[0][["x", "y"]].equals(frames[2][["x", "y"]])  # another seed, another draw
    assert list(frames[0].sort_values(["y", "x"]).index) == list(frames[0].index)  # kept in row-major order
