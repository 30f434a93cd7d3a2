"""Image cache: reuse, rebuild on change, bad files, interrupted builds, geometry."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.io import write_png

from masf_lightning.data import cache
from masf_lightning.data.cache import CachedImages, Geometry, build_cache, decode_rgb_file, preprocess_images
from masf_lightning.data.stain import IdentityNormalizer, MacenkoNormalizer, ReinhardNormalizer
from masf_lightning.errors import ConfigError, DataError


def write_images(root: Path, n: int = 6, h: int = 24, w: int = 36, seed: int = 0) -> pd.DataFrame:
    """Random RGB PNGs in a BreaKHis-like folder tree; returns the index (paths relative to root)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        rel = f"benign/SOB/adenosis/SOB_B_A_14-22549AB/{40 * (1 + i % 2)}X/SOB_B_A-14-22549AB-40-{i:03d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_png(torch.randint(30, 256, (3, h, w), dtype=torch.uint8, generator=gen), str(root / rel))
        rows.append({"path": rel, "label": i % 2})
    return pd.DataFrame(rows)


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    root = tmp_path / "BreaKHis_v1"
    return root, write_images(root)


CROP16 = Geometry("center_crop", 16)


def build(root, index, cache_dir, normalizer=None, geometry=CROP16, **kw) -> CachedImages:
    return build_cache(
        root, index, normalizer or ReinhardNormalizer(), geometry, cache_dir, progress=False, **kw
    )


def count_decodes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = cache.decode_rgb_file

    def counting(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(cache, "decode_rgb_file", counting)
    return calls


def test_geometry_regions():
    assert Geometry("center_crop", 227).region(460, 700) == (116, 236, 227, 227)
    assert Geometry("center_crop", 500).region(460, 700) == (0, 120, 460, 460)  # square, then resized
    assert Geometry("resize", 227).region(460, 700) == (0, 0, 460, 700)
    with pytest.raises(ConfigError, match="geometry.mode"):
        Geometry("crop", 10)
    with pytest.raises(ConfigError, match="geometry.size"):
        Geometry("resize", 0)


@pytest.mark.parametrize(
    "geometry", [Geometry("center_crop", 16), Geometry("center_crop", 40), Geometry("resize", 20)]
)
def test_output_shape_and_dtype(dataset, tmp_path, geometry):
    root, index = dataset
    out = build(root, index, tmp_path / "cache", geometry=geometry)
    assert out.images.shape == (len(index), 3, geometry.size, geometry.size)
    assert out.images.dtype == torch.uint8
    assert out.path.name == f"breakhis-{out.key[:16]}.pt" and out.path.is_file()
    assert out.index is index


def test_center_crop_is_the_paper_crop(dataset, tmp_path):
    root, index = dataset
    out = build(
        root, index, tmp_path / "cache", normalizer=IdentityNormalizer(), geometry=Geometry("center_crop", 16)
    )
    image, _ = decode_rgb_file(root / index.path[0])  # 24×36: square at columns 6..30, crop 16 at (4, 10)
    assert torch.equal(out.images[0], image[:, 4:20, 10:26])
    # `stain: null` means no normalization: the same cache.
    assert build_cache(root, index, None, CROP16, tmp_path / "cache", progress=False).key == out.key


def test_stain_is_computed_on_the_full_image(dataset, tmp_path):
    root, index = dataset
    norm = ReinhardNormalizer()
    out = build(
        root, index.iloc[:2], tmp_path / "cache", normalizer=norm, geometry=Geometry("center_crop", 16)
    )
    image, _ = decode_rgb_file(root / index.path[1])
    assert torch.equal(out.images[1], norm(image)[:, 4:20, 10:26])


def test_second_run_reuses_without_decoding(dataset, tmp_path, monkeypatch):
    root, index = dataset
    first = build(root, index, tmp_path / "cache")
    calls = count_decodes(monkeypatch)
    second = build(root, index, tmp_path / "cache")
    assert calls == []
    assert second.key == first.key and second.path == first.path
    assert torch.equal(second.images, first.images)
    # Same files in another row order: reused, rows follow the new index.
    shuffled = index.iloc[::-1]
    third = build(root, shuffled, tmp_path / "cache")
    assert calls == [] and third.key == first.key
    assert torch.equal(third.images, first.images.flip(0))


def test_changed_stain_or_geometry_or_files_rebuilds(dataset, tmp_path, monkeypatch):
    root, index = dataset
    base = build(root, index, tmp_path / "cache")
    calls = count_decodes(monkeypatch)
    other_stain = build(
        root, index, tmp_path / "cache", normalizer=ReinhardNormalizer(target_means=(60.0, 10.0, -5.0))
    )
    assert len(calls) == len(index)
    assert other_stain.key != base.key and other_stain.path != base.path
    assert not torch.equal(other_stain.images, base.images)
    other_geometry = build(root, index, tmp_path / "cache", geometry=Geometry("resize", 16))
    assert other_geometry.key not in (base.key, other_stain.key)
    assert len(calls) == 2 * len(index)
    write_png(torch.zeros(3, 30, 30, dtype=torch.uint8), str(root / index.path[0]))  # new size on disk
    assert build(root, index, tmp_path / "cache").key != base.key
    fewer = build(root, index.iloc[1:], tmp_path / "cache")
    assert fewer.key != base.key and fewer.images.shape[0] == len(index) - 1


def test_workers_give_identical_results(dataset, tmp_path):
    root, index = dataset
    paths = [root / p for p in index.path]
    geometry, norm = Geometry("center_crop", 16), ReinhardNormalizer()
    one = preprocess_images(paths, norm, geometry, num_workers=1, progress=False)
    two = preprocess_images(paths, norm, geometry, num_workers=2, progress=False)
    assert torch.equal(one, two)
    macenko = MacenkoNormalizer()  # thread safety of the torchstain wrapper
    assert torch.equal(
        preprocess_images(paths, macenko, geometry, num_workers=1, progress=False),
        preprocess_images(paths, macenko, geometry, num_workers=2, progress=False),
    )


def test_torch_threads_restored(dataset):
    root, index = dataset
    before = torch.get_num_threads()
    preprocess_images(
        [root / p for p in index.path], ReinhardNormalizer(), CROP16, num_workers=2, progress=False
    )
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("num_workers", [1, 2])
def test_truncated_png_is_data_error_naming_it(dataset, tmp_path, num_workers):
    root, index = dataset
    bad = root / index.path[3]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=bad.name):
        build(root, index, tmp_path / "cache", num_workers=num_workers)
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_missing_and_garbage_files_are_data_errors(dataset, tmp_path):
    root, index = dataset
    (root / index.path[0]).unlink()
    with pytest.raises(DataError, match="not found"):
        build(root, index, tmp_path / "cache")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG but not really")
    with pytest.raises(DataError, match="garbage.png"):
        decode_rgb_file(garbage)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png"):
        decode_rgb_file(empty)


def test_grayscale_is_error_and_rgba_drops_alpha(tmp_path):
    gray = tmp_path / "gray.png"
    write_png(torch.full((1, 8, 8), 100, dtype=torch.uint8), str(gray))
    with pytest.raises(DataError, match="gray.png: grayscale"):
        decode_rgb_file(gray)
    rgba = torch.randint(0, 256, (4, 8, 8), dtype=torch.uint8)
    # torchvision cannot encode RGBA; Pillow (a torchvision dependency) can.
    Image.fromarray(rgba.permute(1, 2, 0).numpy()).save(tmp_path / "rgba.png")
    image, had_alpha = decode_rgb_file(tmp_path / "rgba.png")
    assert had_alpha and torch.equal(image, rgba[:3])
    with pytest.warns(UserWarning, match="1 image.*alpha"):
        out = preprocess_images(
            [tmp_path / "rgba.png"], IdentityNormalizer(), Geometry("resize", 8), 1, False
        )
    assert torch.equal(out[0], rgba[:3])


def test_interrupted_build_leaves_no_loadable_cache(dataset, tmp_path, monkeypatch):
    root, index = dataset
    cache_dir = tmp_path / "cache"
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a cache")  # partial write, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        build(root, index, cache_dir)
    assert not list(cache_dir.glob("breakhis-*.pt"))
    monkeypatch.setattr(torch, "save", real_save)

    # A killed process leaves its temp file: an old one is cleaned by the next build, a fresh one (maybe a
    # concurrent run's) is left alone; neither is ever loaded.
    old_tmp = cache_dir / ".breakhis-0123456789abcdef.pt.x1.tmp"
    young_tmp = cache_dir / ".breakhis-0123456789abcdef.pt.x2.tmp"
    for tmp in (old_tmp, young_tmp):
        tmp.write_bytes(b"garbage")
    stale = time.time() - cache.STALE_TEMP_SECONDS - 60
    os.utime(old_tmp, (stale, stale))
    calls = count_decodes(monkeypatch)
    out = build(root, index, cache_dir)
    assert len(calls) == len(index) and out.path.is_file()
    assert not old_tmp.exists() and young_tmp.exists()
    assert sorted(p.name for p in cache_dir.iterdir()) == sorted([out.path.name, young_tmp.name])


@pytest.mark.parametrize("content", ["garbage", "wrong_shape", "wrong_key"])
def test_unusable_cache_file_is_rebuilt_with_warning(dataset, tmp_path, monkeypatch, content):
    root, index = dataset
    good = build(root, index, tmp_path / "cache")
    if content == "garbage":
        good.path.write_bytes(b"\x80\x02not a torch file")
    else:
        blob = torch.load(good.path, weights_only=True)
        if content == "wrong_shape":
            blob["images"] = blob["images"][:, :, :8]
        else:
            blob["key"] = "0" * 64
        torch.save(blob, good.path)
    calls = count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="unusable image cache"):
        again = build(root, index, tmp_path / "cache")
    assert len(calls) == len(index)
    assert torch.equal(again.images, good.images)
    calls.clear()
    build(root, index, tmp_path / "cache")  # the rewritten file is good again
    assert calls == []


def test_index_errors(dataset, tmp_path):
    root, index = dataset
    with pytest.raises(DataError, match="'path' column"):
        build(root, index.rename(columns={"path": "file"}), tmp_path / "cache")
    with pytest.raises(DataError, match="listed twice"):
        build(root, pd.concat([index, index.iloc[:1]]), tmp_path / "cache")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: compares the cache's GPU stain step against the CPU one; CI and CPU-only machines have no GPU, run it on one")
def test_gpu_stain_step_matches_cpu(dataset, tmp_path):
    root, index = dataset
    paths = [root / p for p in index.path]
    geometry, norm = Geometry("center_crop", 16), ReinhardNormalizer()
    cpu = preprocess_images(paths, norm, geometry, 2, False)
    gpu = preprocess_images(paths, norm, geometry, 2, False, device="cuda")
    assert gpu.device.type == "cpu" and (gpu.int() - cpu.int()).abs().max() <= 2
