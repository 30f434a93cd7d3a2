"""Shared fixtures: tiny BreaKHis trees with real-format names, written as 4x4 PNGs in milliseconds."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_png

import masf_lightning.config  # noqa: F401 - registers the hparams registry with Hydra, as train.py does
from masf_lightning.data.breakhis import BENIGN_TYPES, MAGNIFICATIONS, SUBTYPE_FOLDERS, TUMOR_TYPES

BREAST = ("BreaKHis_v1", "histology_slides", "breast")

# One real patient per type, plus the two facts the parser must survive: a year-15 patient and
# 14-13412 filed under both DC and LC.
TINY_PATIENTS: tuple[tuple[str, str], ...] = (
    ("A", "14-22549AB"),
    ("F", "14-9133"),
    ("PT", "14-22704"),
    ("TA", "14-3411F"),
    ("DC", "14-2523"),
    ("DC", "14-13412"),
    ("LC", "14-13412"),
    ("LC", "14-12204"),
    ("MC", "14-10147"),
    ("PC", "15-190EF"),
)

_PNG: bytes | None = None


def png_bytes() -> bytes:
    """One tiny valid PNG, encoded once and reused for every file."""
    global _PNG
    if _PNG is None:
        img = torch.arange(4 * 4 * 3, dtype=torch.uint8).reshape(3, 4, 4)
        _PNG = encode_png(img).numpy().tobytes()
    return _PNG


def breakhis_file(ttype: str, patient: str, mag: int, seq: int) -> tuple[Path, str]:
    """(folder below `breast`, file name) of one image, following the official layout."""
    bm = "B" if ttype in BENIGN_TYPES else "M"
    folder = Path(
        "benign" if bm == "B" else "malignant",
        "SOB",
        SUBTYPE_FOLDERS[ttype],
        f"SOB_{bm}_{ttype}_{patient}",
        f"{mag}X",
    )
    return folder, f"SOB_{bm}_{ttype}-{patient}-{mag}-{seq:03d}.png"


def write_breakhis_tree(
    root: Path,
    patients: Iterable[tuple[str, str]] = TINY_PATIENTS,
    *,
    mags: Sequence[int] = MAGNIFICATIONS,
    per_mag: int = 2,
    prefix: Sequence[str] = BREAST,
) -> Path:
    """Write a BreaKHis tree under root/prefix; return the `breast` folder."""
    breast = root.joinpath(*prefix)
    data = png_bytes()
    for ttype, patient in patients:
        for mag in mags:
            folder, _ = breakhis_file(ttype, patient, mag, 1)
            (breast / folder).mkdir(parents=True, exist_ok=True)
            for seq in range(1, per_mag + 1):
                _, name = breakhis_file(ttype, patient, mag, seq)
                (breast / folder / name).write_bytes(data)
    return breast


@pytest.fixture
def make_breakhis_tree() -> Callable[..., Path]:
    """The tree writer, for tests that need their own variant (Kaggle nesting, broken names)."""
    return write_breakhis_tree


@pytest.fixture
def tiny_breakhis(tmp_path: Path) -> Path:
    """Folder holding BreaKHis_v1: 10 patient folders (8 types, 14-13412 twice) x 4 mags x 2 images = 80 PNGs."""
    write_breakhis_tree(tmp_path)
    return tmp_path


def three_per_type() -> list[tuple[str, str]]:
    """Three synthetic patients per type (real ID format); 14-13412 is a DC patient also filed under LC."""
    patients = [
        (t, f"14-{1000 * (i + 1) + j}{'AB' if j == 2 else ''}")
        for i, t in enumerate(TUMOR_TYPES)
        for j in range(3)
    ]
    patients[TUMOR_TYPES.index("DC") * 3] = ("DC", "14-13412")
    return [*patients, ("LC", "14-13412")]


@pytest.fixture
def breakhis_3pt(tmp_path: Path) -> Path:
    """Folder holding BreaKHis_v1: 3 patients per type (+ the LC copy of 14-13412) x 4 mags x 2 images = 200 PNGs."""
    write_breakhis_tree(tmp_path, three_per_type())
    return tmp_path


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests never reach the internet: ImageNet weight downloads (and train.py subprocesses, which inherit
    the environment) go to a closed port on 127.0.0.1, and the Hugging Face hub is offline, unless a test points
    them at its own server."""
    monkeypatch.setenv("MASF_WEIGHTS_URL", "http://127.0.0.1:9")
    # and the Hugging Face hub: offline, an empty cache of the session's own, a closed port should anything still ask
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


# -- whole slides (issue 28): pyramidal TIFFs of the synthetic tissue, tiled once per session ---------------------
WSI_MPPS = ("2", "1", "0.5", "0.25")


@pytest.fixture(scope="session")
def wsi_slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 slides of 512 px at 0.25 µm/px, 4 levels (slide001 with an Aperio description), GeoJSON beside each,
    slides.csv (slide, patient, site)."""
    pytest.importorskip("tiffslide", reason="the wsi extra (pip install -e '.[wsi]') is not installed")
    from masf_lightning.data.synthetic.wsi import write_wsi

    folder = tmp_path_factory.mktemp("wsi")
    for p in range(4):
        write_wsi(folder / f"slide{p:03d}.tif", 512, patient=p, aperio=p == 1)
    (folder / "slides.csv").write_text("slide,patient,site\n" + "".join(f"slide{p:03d}.tif,P{p},s{p % 2}\n" for p in range(4)))
    return folder


@pytest.fixture(scope="session")
def wsi_tiled(wsi_slides: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The slides tiled at 2/1/0.5/0.25 µm/px, 16 px patches, labelled by their GeoJSON and slides.csv."""
    from masf_lightning.data.tile.__main__ import main

    out = tmp_path_factory.mktemp("tiled")
    args = [str(wsi_slides), "--out", str(out), "--size", "16", "--mpp", *WSI_MPPS, "--annotations", "--labels",
            str(wsi_slides / "slides.csv"), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    return out
