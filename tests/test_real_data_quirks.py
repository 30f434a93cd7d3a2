"""The real BreaKHis' quirks on generated trees: 700×456 originals, patient 14-13412 under two tumour types,
year-15 patients, and tumour types with too few patients for a patient-disjoint split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import encode_png

from masf_lightning.data.breakhis import MAGNIFICATIONS, TUMOR_TYPES, index_breakhis
from masf_lightning.data.cache import Geometry, build_cache, decode_rgb_file
from masf_lightning.data.manifest import check_split_covers
from masf_lightning.data.splits import make_split
from masf_lightning.data.stain import ReinhardNormalizer
from masf_lightning.errors import DataError
from tests.conftest import BREAST, breakhis_file, png_bytes
from tests.test_train_e2e import run_train, tiny_overrides

# Two patients per type; the real facts: 14-13412 filed as DC and LC, year-15 PC patient 15-190EF, and
# PC patient 14-12465 whose 100x originals include 700×456 images.
QUIRKY: tuple[tuple[str, str], ...] = (
    *((t, f"14-{1000 * (i + 1) + j}") for i, t in enumerate(TUMOR_TYPES[:4]) for j in range(2)),
    ("DC", "14-13412"), ("DC", "14-5001"),
    ("LC", "14-13412"), ("LC", "14-6001"),
    ("MC", "14-7000"), ("MC", "14-7001"),
    ("PC", "14-12465"), ("PC", "15-190EF"),
)  # fmt: skip
SHORT = ("PC", "14-12465", 100)  # its images are 700×456


def image(height: int, seed: int) -> torch.Tensor:
    """A smooth H&E-ish 3×H×700 image (encodes fast), different per seed."""
    y = torch.linspace(0, 1, height).view(height, 1)
    x = torch.linspace(0, 1, 700).view(1, 700)
    base = torch.stack(torch.broadcast_tensors(0.8 - 0.3 * y * x, 0.5 + 0.2 * x, 0.7 + 0.1 * y)) + 0.01 * seed
    return (base.clamp(0, 1) * 255).to(torch.uint8)


def write_tree(root: Path, patients=QUIRKY, mags=MAGNIFICATIONS, *, full: bool = False) -> Path:
    """One PNG per (patient folder, magnification): SHORT's is 700×456; the others 700×460 if `full`, else
    the 4×4 stand-in of conftest (indexing and splitting never decode them)."""
    for n, (ttype, patient) in enumerate(patients):
        for mag in mags:
            folder, name = breakhis_file(ttype, patient, mag, 1)
            (root.joinpath(*BREAST) / folder).mkdir(parents=True, exist_ok=True)
            if (ttype, patient, mag) == SHORT or full:
                height = 456 if (ttype, patient, mag) == SHORT else 460
                data = encode_png(image(height, n)).numpy().tobytes()
            else:
                data = png_bytes()
            (root.joinpath(*BREAST) / folder / name).write_bytes(data)
    return root


def test_700x456_originals_are_cropped_and_normalized_like_the_others(tmp_path: Path) -> None:
    root = write_tree(tmp_path, [("PC", "14-12465"), ("PC", "15-190EF")], mags=(40, 100), full=True)
    index = index_breakhis(root)
    short = index.index[(index["patient"] == "14-12465") & (index["magnification"] == 100)][0]
    original = decode_rgb_file(root / index.at[short, "path"])[0]
    assert original.shape == (3, 456, 700)
    # center_crop (the paper's code): the central 456² square, then its central 227²
    cached = build_cache(
        root, index, None, Geometry("center_crop", 227), tmp_path / "c1", num_workers=1, progress=False
    )
    assert cached.images.shape == (4, 3, 227, 227)
    top, left = (456 - 227) // 2, (700 - 456) // 2 + (456 - 227) // 2
    assert torch.equal(cached.images[short], original[:, top : top + 227, left : left + 227])
    # Reinhard uses each image's own whole-image statistics, whatever its height
    reinhard = ReinhardNormalizer().fit(decode_rgb_file(root / index.at[0, "path"])[0])
    cached = build_cache(
        root, index, reinhard, Geometry("center_crop", 227), tmp_path / "c2", num_workers=1, progress=False
    )
    alone = reinhard(original[None])[0, :, top : top + 227, left : left + 227]
    assert torch.equal(cached.images[short], alone)
    resized = build_cache(
        root, index, None, Geometry("resize", 64), tmp_path / "c3", num_workers=1, progress=False
    )
    assert resized.images.shape == (4, 3, 64, 64)


def test_duplicated_patient_and_year_15_patients_in_index_and_split(tmp_path: Path) -> None:
    index = index_breakhis(write_tree(tmp_path, [*QUIRKY, ("LC", "14-6002")]))
    assert len(index) == (len(QUIRKY) + 1) * 4
    dup = index[index["patient"] == "14-13412"]
    assert sorted(dup["tumor_type"].unique()) == ["DC", "LC"] and len(dup) == 8
    year15 = index[index["patient"] == "15-190EF"]
    assert set(year15["tumor_type"]) == {"PC"} and sorted(year15["magnification"]) == [40, 100, 200, 400]
    # the patient protocol keeps 14-13412's DC and LC copies on one side; train/test cover every class
    split = make_split(index, "patient", fractions=(0.5, 0.0, 0.5))
    assert split[index["patient"] == "14-13412"].nunique() == 1
    check_split_covers(index, split, "tumor_type", {"train": ["40x", "100x", "200x"], "test": ["400x"]})


@pytest.mark.parametrize(
    ("patients", "needle"),
    [
        (QUIRKY, "could not place any patient in 'val'"),  # two patients per type: nothing left for val
        (
            [p for p in QUIRKY if p != ("MC", "14-7001")],
            "class 'MC' with no images in domain 400x, split 'test' (1 patient: 1 in train)",
        ),
        # LC's second patient is 14-13412, split as DC (its tie-broken majority type), here into train
        (
            QUIRKY[:],
            "class 'LC' with no images in domain 400x, split 'test' (2 patients: 2 in train; 14-13412 is also filed under DC)",
        ),
    ],
)
def test_types_with_few_patients_say_what_could_not_be_placed(patients, needle: str, tmp_path: Path) -> None:
    index = index_breakhis(write_tree(tmp_path, patients))
    fractions = (0.6, 0.1, 0.3) if "'val'" in needle else (0.5, 0.0, 0.5)
    with pytest.raises(DataError) as err:
        split = make_split(index, "patient", fractions=fractions)
        check_split_covers(index, split, "tumor_type", {"train": ["40x", "100x", "200x"], "test": ["400x"]})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_train_py_on_the_quirky_tree_stops_with_one_line(tmp_path: Path) -> None:
    """`python train.py data=breakhis data.root=DIR`: 700×456 images, 14-13412 twice, two patients per type."""
    tree = write_tree(tmp_path / "tree")
    args = [*tiny_overrides(tmp_path / "data", synthetic=False), "data=breakhis", f"data.root={tree}",
            f"paths.cache={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = run_train(args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not place any patient in 'val'" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "metrics.json").exists()
