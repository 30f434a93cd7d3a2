"""Synthetic BreaKHis: official layout and names, determinism, safe reuse, and the two shifts it must carry."""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from masf_lightning.data import synthetic as syn
from masf_lightning.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

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


# SHA-256 of the PNG files the generator writes for TINY (patient 0, image 001 of every type at every
# magnification). Produced by the generator as it stood in one module, masf_lightning/data/synthetic.py
# (commit ccce545), before it became a package: they pin its output, so any change to the pixels a seed
# gives (or to how they are encoded) fails here. Changing the pixels on purpose means bumping
# _FORMAT_VERSION and these together. Pillow 13.0 with zlib 1.2.13 wrote them; a Pillow built on another
# zlib may compress the same pixels into other bytes, so if only that changed, compare pixels, then re-pin.
PINNED_SHA256 = {
    ("A", 40): "bcfd93f5cd6ec733a69256a1630d472647b3f723ff38c1b7e4d264f41071cb38",
    ("A", 100): "d229173c0bb799278ead07660c6b761d63caecd2978dc2fe72801d12474d666f",
    ("A", 200): "7ae00cdddb0f9dd12720109284f05231d9096bd40b914bdb5d8c749ed549d801",
    ("A", 400): "1e6f0f86265115bf8c98d329de371ecd41c8e1959d2c5a9a81d60952c64d225c",
    ("F", 40): "771fd8ce638afe71f47c1756ef94b91a44350aca582d1819c00564df3fbe1a89",
    ("F", 100): "c69f32f1b23d1cef92ec6db0292368a138492f91ff50e3f93600d301d59bbe5b",
    ("F", 200): "a499a401824053b57fbd8b7895b953f083582c99c5c5799395a559bff679ce59",
    ("F", 400): "d9562b768509727cd48906361ff11639145330526ee343ce3dc7e06d263ad720",
    ("PT", 40): "1f0b9f4bd8a7163a3e3b94a8883742924e0b68283acf12e172835a6c2f2af2f3",
    ("PT", 100): "667832577244aefa4c21040b0b45c2165de56768f59c38f651d70f4b40781332",
    ("PT", 200): "a4f55cc750933854bad6c9cdd9173cd1440a2bcad549449204a8a15fc1927205",
    ("PT", 400): "67019d7330c321f3c43626dfb83a8639d99285166e6007cc81da73acd3d8db81",
    ("TA", 40): "500509d5d0b44be7eaaffd7068a63e7b1613e5288563682be14bb30a24b06eee",
    ("TA", 100): "d4b25eeefc3ecc2e60b900827b2ae7e84eb9b01f5ca20163fe34978502c48a9c",
    ("TA", 200): "a274d547834c74839b375d6ccb419f3d8ebbd2800b64ba11ea8b2ad47b99ed81",
    ("TA", 400): "f71b49bfa30951b26c811dfa4ba01a9ae5f03237e35b2f7adcbd65bfe402b932",
    ("DC", 40): "ecc6f8535bbe485482bfc9a7410fcfb4eaa34eb335912693bd75483b3e741828",
    ("DC", 100): "2e7eef084d027544d679be2c718e5ee82ca35ceb72a1ec11bd50203ef5901d7b",
    ("DC", 200): "eb6ee3e7537755d957f1779383acf4d30c97d61bc4f05e7fac69ee728c9082a5",
    ("DC", 400): "94f28c940fd96f4c842d1284f37b75a706af24a399c861a6538628226ff6f8a1",
    ("LC", 40): "2fe1c1b4b56b1601569420750a8203e25a062ed49345bca17a927fd9c54eb487",
    ("LC", 100): "7eb42b6d56c40cbe2591b7b3066f907a24914144587141b96ee24599c9a3ab1b",
    ("LC", 200): "21124b0547c2bce8952abc123f6f91832ea632723ccf529e1396b3ddd7e92e91",
    ("LC", 400): "b7c10d4cab7c8606abbc628434d03228456b1d60eddc2313074a76af614a84b7",
    ("MC", 40): "a2f5c852ffc49416a4272aba805f137115df506476a42a4929b38adb661fee4c",
    ("MC", 100): "23b043a24d65ee55363146737ed7b25a1b19ed49be9a1f4647c00c517d566b89",
    ("MC", 200): "8aa80ecfedc77e0039c6f18eba95f8502ca010eb66aedbdd9f8cfa8da8bf76bf",
    ("MC", 400): "7dbad5b82ad6d56725dbc9d55f7956587f663fec974651d0c096583a53d53d6a",
    ("PC", 40): "741e42e3479c6f3eafe4f77a8b55b49a39483f3926fb2de2f1c0a39d869725ac",
    ("PC", 100): "61d57a1acfbfb7f3f10c084e231a2a76053875aa3b5a714bf414340633bc8166",
    ("PC", 200): "1923af8a206697114d26fb5e84bb17f026d01499d9ef3eafe320c3a2a8149b08",
    ("PC", 400): "6284b34df7f9132f4f063c45606cf1f3cbff033acabbc152a49ebef7cbf89111",
}


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


def test_output_is_pinned(tiny: Path) -> None:
    """The generator writes, byte for byte, what it wrote when PINNED_SHA256 was recorded."""
    got = {
        (code, mag): hashlib.sha256((tiny / rel).read_bytes()).hexdigest()
        for code, patient, mag, index, rel in syn.expected_files(
            seed=0, patients_per_type=3, images_per_magnification=2
        )
        if patient == 0 and index == 0
    }
    changed = sorted(k for k in PINNED_SHA256 if got.get(k) != PINNED_SHA256[k])
    assert got.keys() == PINNED_SHA256.keys() and not changed, f"PNG bytes changed for {changed}"


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
    write = syn.writer._write_png

    def flaky(path: Path, img: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        write(path, img)

    monkeypatch.setattr(syn.writer, "_write_png", flaky)
    out = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt):
        syn.generate_synthetic_breakhis(out, **TINY, workers=1)
    assert list(out.iterdir()) == []  # no half tree, no marker, no staging folder
    monkeypatch.setattr(syn.writer, "_write_png", write)
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


def test_cli_defaults_are_what_train_py_asks_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m masf_lightning.data.synthetic OUT` makes the tree `python train.py data.root=OUT` accepts."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        asked = OmegaConf.to_container(compose("train").data.synthetic)  # what the datamodule generates
    made: dict = {}

    def record(out: str, **kwargs: object) -> Path:
        made.update(kwargs)
        return Path(out)

    monkeypatch.setattr(syn.cli, "generate_synthetic_breakhis", record)
    assert syn.main([str(tmp_path), "--no-progress"]) == 0
    made.pop("progress")
    # the generator accepts an existing tree exactly when these parameter records are equal
    assert syn.writer._params(**made) == syn.writer._params(**asked), (made, asked)


def test_datamodule_reads_the_tree_and_lists_magnifications_in_order(tiny: Path, tmp_path: Path) -> None:
    from masf_lightning.data.datamodule import MagnificationDataModule

    dm = MagnificationDataModule(str(tiny), cache_dir=str(tmp_path), num_workers=1, progress=False)
    dm.prepare_data()
    rows = [line.split()[0] for line in dm.describe().splitlines()[3:]]
    assert rows == ["40x", "100x", "200x", "400x"], dm.describe()
