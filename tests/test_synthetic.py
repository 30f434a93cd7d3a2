"""Synthetic BreaKHis: official layout and names, determinism, safe reuse, and the two shifts it must carry."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masf_lightning.data import synthetic as syn
from masf_lightning.errors import ConfigError, DataError

TINY = {"seed": 0, "patients_per_type": 3, "images_per_magnification": 2, "size": (64, 42), "progress": False}
N_TINY = 8 * 3 * 4 * 2

# Written out here on purpose, from the official BreaKHis layout: the generator is checked against the
# dataset's real folder names, not against our own constants (a typo there would pass both).
SUBTYPES = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}
PID = r"1[345]-\d+[A-Z]*"
PATH_RE = re.compile(
    r"BreaKHis_v1/histology_slides/breast/(?P<cls>benign|malignant)/SOB/(?P<sub>[a-z_]+)/"
    rf"SOB_(?P<bm>[BM])_(?P<type>[A-Z]+)_(?P<pid>{PID})/(?P<mag>40|100|200|400)X/"
    rf"SOB_(?P<bm2>[BM])_(?P<type2>[A-Z]+)-(?P<pid2>{PID})-(?P<mag2>40|100|200|400)-(?P<seq>\d{{3}})\.png"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny synthetic tree shared by the read-only tests (192 images of 64x42)."""
    return syn.generate_synthetic_breakhis(tmp_path_factory.mktemp("syn") / "data", **TINY)


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def _images(root: Path) -> list[tuple[str, str, int, np.ndarray]]:
    """(type, patient, magnification, RGB float array) of every image."""
    out = []
    for f in _pngs(root):
        m = PATH_RE.fullmatch(f.relative_to(root).as_posix())
        assert m is not None, f
        out.append((m["type"], m["pid"], int(m["mag"]), np.asarray(Image.open(f), dtype=np.float64)))
    return out


def test_layout_and_names_follow_breakhis(tiny: Path) -> None:
    files = _pngs(tiny)
    assert len(files) == N_TINY
    patients: dict[tuple[str, int], set[str]] = defaultdict(set)
    seqs: dict[tuple[str, int], list[int]] = defaultdict(list)
    for f in files:
        rel = f.relative_to(tiny).as_posix()
        m = PATH_RE.fullmatch(rel)
        assert m is not None, rel
        # folder fields agree with file-name fields
        assert (m["bm"], m["type"], m["pid"], m["mag"]) == (m["bm2"], m["type2"], m["pid2"], m["mag2"]), rel
        assert m["type"] in SUBTYPES and m["sub"] == SUBTYPES[m["type"]]
        benign = m["type"] in ("A", "F", "PT", "TA")
        assert (m["cls"], m["bm"]) == (("benign", "B") if benign else ("malignant", "M"))
        patients[(m["type"], int(m["mag"]))].add(m["pid"])
        seqs[(m["pid"], int(m["mag"]))].append(int(m["seq"]))
        with Image.open(f) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 42))
    # every type at every magnification, with the same >= 3 patients
    for t in SUBTYPES:
        assert all(len(patients[(t, mag)]) >= 3 for mag in (40, 100, 200, 400))
        assert len({frozenset(patients[(t, mag)]) for mag in (40, 100, 200, 400)}) == 1
    # patient IDs are unique across types; sequence numbers start at 001 per folder
    all_ids = [pid for (t, mag), ids in patients.items() if mag == 40 for pid in ids]
    assert len(all_ids) == len(set(all_ids)) == 8 * 3
    assert all(sorted(v) == [1, 2] for v in seqs.values())
    # the marker records what was made; nothing else is left beside the tree
    marker = json.loads((tiny / syn.MARKER_NAME).read_text())
    assert marker["n_images"] == N_TINY and marker["size"] == [64, 42] and marker["seed"] == 0
    assert sorted(p.name for p in tiny.iterdir()) == sorted([syn.MARKER_NAME, "BreaKHis_v1"])


def test_expected_files_match_the_tree(tiny: Path) -> None:
    listed = syn.expected_files(seed=0, patients_per_type=3, images_per_magnification=2)
    assert sorted(tiny / f[-1] for f in listed) == _pngs(tiny)


def test_same_seed_gives_identical_bytes(tiny: Path, tmp_path: Path) -> None:
    again = syn.generate_synthetic_breakhis(tmp_path / "again", **TINY)
    a, b = _pngs(tiny), _pngs(again)
    assert [p.relative_to(tiny) for p in a] == [p.relative_to(again) for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    # and render_image is exactly what the generator wrote
    for code, patient, mag, index, rel in syn.expected_files(
        seed=0, patients_per_type=3, images_per_magnification=2
    )[::37]:
        img = syn.render_image(code, mag, seed=0, patient=patient, index=index, size=(64, 42))
        assert np.array_equal(img, np.asarray(Image.open(tiny / rel)))


def test_other_seed_gives_other_data(tmp_path: Path) -> None:
    a = syn.render_image("DC", 400, seed=0, size=(64, 42))
    b = syn.render_image("DC", 400, seed=1, size=(64, 42))
    assert not np.array_equal(a, b)


def test_second_call_reuses_and_writes_nothing(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*")}
    assert syn.generate_synthetic_breakhis(tiny, **TINY) == tiny
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*")} == before


def test_different_parameters_are_refused(tiny: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny.rglob("*")}
    for change in ({"seed": 1}, {"images_per_magnification": 3}, {"size": (64, 40)}):
        with pytest.raises(DataError, match="another folder"):
            syn.generate_synthetic_breakhis(tiny, **{**TINY, **change})
    assert {p: p.stat().st_mtime_ns for p in tiny.rglob("*")} == before


def test_foreign_breakhis_is_never_touched(tmp_path: Path) -> None:
    real = tmp_path / "BreaKHis_v1" / "histology_slides" / "breast"
    real.mkdir(parents=True)
    (real / "README.txt").write_text("the user's real data")
    with pytest.raises(DataError, match="not written by the synthetic generator"):
        syn.generate_synthetic_breakhis(tmp_path, **TINY)
    assert (real / "README.txt").read_text() == "the user's real data"
    assert not (tmp_path / syn.MARKER_NAME).exists()


def test_interrupted_run_leaves_nothing_and_reruns_cleanly(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    write = syn._write_png

    def flaky(path: Path, img: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        write(path, img)

    monkeypatch.setattr(syn, "_write_png", flaky)
    out = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        syn.generate_synthetic_breakhis(out, **TINY, workers=1)
    assert list(out.iterdir()) == []  # no half tree, no marker, no staging folder
    monkeypatch.setattr(syn, "_write_png", write)
    syn.generate_synthetic_breakhis(out, **TINY)
    assert [p.read_bytes() for p in _pngs(out)] == [p.read_bytes() for p in _pngs(tiny)]


def test_incomplete_own_tree_is_rebuilt(tiny: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "data"
    shutil.copytree(tiny, out)
    (out / syn.MARKER_NAME).unlink()  # as if killed between moving the tree in and writing the marker
    victim = _pngs(out)[7]
    victim.unlink()
    syn.generate_synthetic_breakhis(out, **TINY)
    assert victim.is_file() and len(_pngs(out)) == N_TINY and (out / syn.MARKER_NAME).is_file()


def test_threads_do_not_change_the_output(tiny: Path, tmp_path: Path) -> None:
    out = syn.generate_synthetic_breakhis(tmp_path / "t", **{**TINY, "patients_per_type": 1}, workers=3)
    for f in _pngs(out):
        assert f.read_bytes() == (tiny / f.relative_to(out)).read_bytes()


@pytest.mark.parametrize(
    "bad",
    [{"size": (701, 460)}, {"size": (8, 8)}, {"size": "175x115"}, {"patients_per_type": 0}, {"seed": -1}],
)
def test_bad_parameters_raise_config_error(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ConfigError):
        syn.generate_synthetic_breakhis(tmp_path, **{**TINY, **bad})
    assert list(tmp_path.iterdir()) == []


def test_full_size_images_render(tmp_path: Path) -> None:
    img = syn.render_image("PC", 400, size=(700, 460))
    assert img.shape == (460, 700, 3) and img.dtype == np.uint8
    assert 60 < img.mean() < 245  # neither blank nor black


def _detail(img: np.ndarray) -> float:
    """Energy of the finest (1-pixel) scale relative to the image variance."""
    g = img.mean(axis=2)
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float((lap**2).mean() / (g.var() + 1e-6))


def test_magnification_shift(tiny: Path) -> None:
    """At 40x nuclei are far below a pixel (fine, grainy texture); at 400x they span several pixels."""
    detail = defaultdict(list)
    for _, _, mag, img in _images(tiny):
        detail[mag].append(_detail(img))
    means = {mag: float(np.mean(v)) for mag, v in detail.items()}
    assert means[40] > 2.0 * means[400], means
    assert means[40] > means[200] > means[400], means


def _tissue_chromaticity(img: np.ndarray) -> np.ndarray:
    px = img.reshape(-1, 3)
    tissue = px[px.min(axis=1) < 215]  # leave out white lumens and glass
    tissue = tissue if len(tissue) >= 20 else px
    return (tissue / tissue.sum(axis=1, keepdims=True)).mean(axis=0)


def test_stain_varies_between_patients(tiny: Path) -> None:
    """Within a tumour type, patients differ in colour more than one patient's images differ."""
    per_patient: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for t, pid, _, img in _images(tiny):
        per_patient[(t, pid)].append(_tissue_chromaticity(img))
    ratios = []
    for t in SUBTYPES:
        groups = [np.array(v) for (tt, _), v in per_patient.items() if tt == t]
        between = np.var([g.mean(axis=0) for g in groups], axis=0, ddof=1).sum()
        within = np.mean([g.var(axis=0).sum() for g in groups])
        ratios.append(between / within)
    assert np.median(ratios) > 3.0, ratios
    assert min(ratios) > 1.0, ratios


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(tmp_path), "--patients-per-type", "1", "--images-per-magnification", "1", "--size", "32x21"]
    assert syn.main([*args, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "32 images" in out and "BreaKHis_v1" in out
    assert len(_pngs(tmp_path)) == 32
    assert syn.main([*args, "--no-progress"]) == 0
    assert "already present" in capsys.readouterr().out
    assert syn.main([*args[:-1], "48x30", "--no-progress"]) == 2  # different parameters: refused
    assert "another folder" in capsys.readouterr().err
