"""Stain normalizers: Reinhard against an independent skimage pipeline and the target statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kornia.color import rgb_to_lab
from omegaconf import OmegaConf
from skimage import color, data
from torchvision.io import write_png

from masf_lightning.data.color import _lab, uint8_percentile
from masf_lightning.data.stain import (
    PAPER_TARGET_MEANS,
    PAPER_TARGET_STDS,
    IdentityNormalizer,
    MacenkoNormalizer,
    ReinhardNormalizer,
)
from masf_lightning.errors import ConfigError, DataError

CONF = Path(__file__).resolve().parents[1] / "conf" / "stain"
TINTS = [(1.0, 1.0, 1.0), (0.8, 0.9, 1.1), (1.1, 0.85, 0.8), (0.7, 0.7, 0.75), (1.0, 1.05, 0.9)]


def make_he_like(rng: np.random.Generator, h: int = 96, w: int = 128, tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Tissue-dense H&E-like H×W×3 uint8: textured pink stroma, purple nuclei, a few pale gaps, a stain tint."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    field = np.zeros((h, w), np.float32)
    for _ in range(6):
        fy, fx = rng.uniform(0.02, 0.15, 2)
        field += np.sin(yy * fy + xx * fx + rng.uniform(0, 2 * np.pi))
    eosin = np.clip(0.6 + 0.15 * field, 0.05, 1.0)[..., None]
    white, pink, purple = (np.array(c, np.float32) for c in ([240, 232, 238], [205, 95, 160], [80, 40, 125]))
    img = white + (pink - white) * eosin
    nuclei = np.zeros((h, w), np.float32)
    for _ in range(h * w // 350):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2.5, 6.0)
        nuclei = np.maximum(nuclei, np.clip(r + 1 - np.hypot(yy - cy, xx - cx), 0, 1))
    img = img + (purple - img) * nuclei[..., None]
    img = img * np.asarray(tint, np.float32) + rng.normal(0, 5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def to_tensor(hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).contiguous()


def to_hwc(chw: torch.Tensor) -> np.ndarray:
    return chw.permute(1, 2, 0).cpu().numpy()


def sk_lab_stats(hwc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lab = color.rgb2lab(hwc).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def sk_brightness(hwc: np.ndarray, q: float = 90.0) -> np.ndarray:
    """Brightness standardization in float64 (0..1), written independently with numpy."""
    return np.clip(hwc.astype(np.float64) * 255.0 / np.percentile(hwc, q), 0, 255) / 255.0


def sk_reinhard(hwc: np.ndarray, means, stds) -> np.ndarray:
    """Independent Reinhard with skimage's colour conversions (float64)."""
    lab = color.rgb2lab(sk_brightness(hwc))
    m, s = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
    out = (lab - m) / s * np.asarray(stds) + np.asarray(means)
    out[..., 0] = np.clip(out[..., 0], 0, 100)
    out[..., 1:] = np.clip(out[..., 1:], -128, 127)
    return np.round(color.lab2rgb(out) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def he_images() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [make_he_like(rng, tint=t) for t in TINTS]


@pytest.fixture(scope="module")
def ihc() -> np.ndarray:
    return data.immunohistochemistry()


def test_lab_matches_kornia_and_skimage(ihc):
    rng = np.random.default_rng(0)
    full_range = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # includes near-black: linear CIE branch
    for hwc in (ihc, full_range):
        img = to_tensor(hwc)
        lab = _lab(img[None], torch.ones(1, dtype=torch.float64))[0]
        assert (lab - rgb_to_lab(img[None].float() / 255)[0]).abs().max() < 0.01
        assert np.abs(to_hwc(lab) - color.rgb2lab(hwc)).max() < 0.01


@pytest.mark.parametrize("q", [0, 1, 50, 90, 99.5, 100])
def test_uint8_percentile_is_numpy_percentile(ihc, q):
    assert uint8_percentile(to_tensor(ihc)[None], q).item() == pytest.approx(np.percentile(ihc, q), abs=1e-9)


def test_he_like_output_hits_target_statistics(he_images):
    norm = ReinhardNormalizer()
    for hwc in he_images:
        mean, std = sk_lab_stats(to_hwc(norm(to_tensor(hwc))))
        np.testing.assert_allclose(mean, PAPER_TARGET_MEANS, atol=1.0)
        np.testing.assert_allclose(std, PAPER_TARGET_STDS, atol=1.5)


def test_matches_independent_skimage_reinhard(he_images, ihc):
    norm = ReinhardNormalizer()
    for hwc in [*he_images, ihc]:
        ours = to_hwc(norm(to_tensor(hwc))).astype(int)
        diff = np.abs(ours - sk_reinhard(hwc, PAPER_TARGET_MEANS, PAPER_TARGET_STDS).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.005


def test_ihc_image_statistics(ihc):
    """IHC (brown DAB) mapped to an H&E target: ~30% of the transferred colours lie outside sRGB and get
    clipped (as in staintools/skimage), so only L and a reach the target tightly; b stays ~2.4 short."""
    mean, std = sk_lab_stats(to_hwc(ReinhardNormalizer()(to_tensor(ihc))))
    np.testing.assert_allclose(mean[:2], PAPER_TARGET_MEANS[:2], atol=1.0)
    np.testing.assert_allclose(std[:2], PAPER_TARGET_STDS[:2], atol=1.5)
    src_mean, _ = sk_lab_stats(ihc)
    assert abs(mean[2] - PAPER_TARGET_MEANS[2]) < 0.2 * abs(src_mean[2] - PAPER_TARGET_MEANS[2])


def test_batched_equals_per_image_and_shapes(he_images):
    norm = ReinhardNormalizer()
    batch = torch.stack([to_tensor(h) for h in he_images])
    out = norm(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    for i, hwc in enumerate(he_images):
        single = norm(to_tensor(hwc))
        assert single.shape == (3, *hwc.shape[:2]) and single.dtype == torch.uint8
        assert (
            single.int() - out[i].int()
        ).abs().max() <= 1  # SIMD vs scalar tail of pow may differ by 1 ulp


def test_transform_region_equals_crop_of_full(he_images):
    norm = ReinhardNormalizer()
    batch = torch.stack([to_tensor(h) for h in he_images[:2]])
    region = norm.transform_region(batch, 10, 20, 50, 60)
    assert torch.equal(region, norm(batch)[..., 10:60, 20:80])


def test_fit_reproduces_reference_statistics(he_images, tmp_path):
    ref = he_images[2]
    norm = ReinhardNormalizer().fit(to_tensor(ref))
    mean, std = sk_lab_stats(sk_brightness(ref))
    np.testing.assert_allclose(norm.target_means.numpy(), mean, atol=0.02)
    np.testing.assert_allclose(norm.target_stds.numpy(), std, atol=0.02)
    # Normalizing the reference to itself leaves its brightness-standardized version.
    standardized = np.round(sk_brightness(ref) * 255).astype(int)
    assert np.abs(to_hwc(norm(to_tensor(ref))).astype(int) - standardized).max() <= 1
    # Reference from a PNG path (what `stain.reference=...` passes) gives the same targets.
    path = tmp_path / "ref.png"
    write_png(to_tensor(ref), str(path))
    from_file = ReinhardNormalizer(reference=str(path))
    assert from_file.fingerprint() == norm.fingerprint()


def test_unreadable_reference_is_data_error(tmp_path):
    bad = tmp_path / "ref.png"
    bad.write_bytes(b"not a png")
    for path in (bad, tmp_path / "missing.png"):
        with pytest.raises(DataError, match=str(path.name)):
            ReinhardNormalizer(reference=path)
        with pytest.raises(DataError, match=str(path.name)):
            MacenkoNormalizer(reference=path)


def test_invalid_settings_are_config_errors():
    with pytest.raises(ConfigError, match="target_stds"):
        ReinhardNormalizer(target_stds=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match="3 values"):
        ReinhardNormalizer(target_means=(1.0, 2.0))
    with pytest.raises(ConfigError, match="brightness_percentile"):
        ReinhardNormalizer(brightness_percentile=0)


def test_degenerate_images_do_not_blow_up():
    norm = ReinhardNormalizer()
    for value in (0, 128, 255):  # zero std in every channel; all-black has a zero percentile
        out = norm(torch.full((3, 8, 8), value, dtype=torch.uint8))
        assert out.shape == (3, 8, 8) and out.dtype == torch.uint8
        assert len(torch.unique(out.view(3, -1), dim=1).T) == 1  # still flat


def test_fingerprint_is_json_and_tracks_settings():
    a = ReinhardNormalizer().fingerprint()
    json.dumps(a)
    assert a["method"] == "reinhard" and a["target_means"] == list(PAPER_TARGET_MEANS)
    assert ReinhardNormalizer(target_means=(70.0, 16.142, -11.705)).fingerprint() != a
    assert ReinhardNormalizer(brightness_percentile=95).fingerprint() != a
    assert ReinhardNormalizer(standardize_brightness=False).fingerprint() != a
    json.dumps(MacenkoNormalizer().fingerprint())
    assert IdentityNormalizer().fingerprint() == {"method": "none"}


@pytest.mark.parametrize("normalizer", [MacenkoNormalizer(), IdentityNormalizer()], ids=["macenko", "none"])
def test_other_methods_keep_shape_and_dtype(normalizer, he_images):
    single = to_tensor(he_images[0])
    batch = torch.stack([to_tensor(h) for h in he_images[:3]])
    assert normalizer(single).shape == single.shape and normalizer(single).dtype == torch.uint8
    out = normalizer(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert torch.equal(out[1], normalizer(batch[1]))
    assert torch.equal(normalizer.transform_region(batch, 5, 6, 20, 30), out[..., 5:25, 6:36])


def test_macenko_fit_and_blank_image(he_images):
    norm = MacenkoNormalizer()
    default = norm.fingerprint()
    norm.fit(to_tensor(he_images[1]))
    assert norm.fingerprint() != default
    blank = torch.full((3, 16, 16), 250, dtype=torch.uint8)
    one_cell = blank.clone()
    one_cell[:, 0, 0] = torch.tensor([120, 60, 150], dtype=torch.uint8)
    for image in (blank, one_cell):
        with pytest.warns(UserWarning, match="left unnormalized"):
            assert torch.equal(norm(image), image)


def test_rejects_bad_input():
    norm = ReinhardNormalizer()
    with pytest.raises(TypeError):
        norm(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError):
        norm(torch.zeros(4, 4, 3, dtype=torch.uint8))


@pytest.mark.parametrize("name", ["reinhard", "macenko", "none"])
def test_hydra_configs_instantiate(name, he_images, tmp_path):
    from hydra.utils import instantiate

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    norm = instantiate(cfg)
    assert norm.fingerprint()["method"] == name
    if "reference" in cfg:  # `stain.reference=/path/ref.png` from the command line
        path = tmp_path / "ref.png"
        write_png(to_tensor(he_images[3]), str(path))
        cfg.reference = str(path)
        assert instantiate(cfg).fingerprint() != norm.fingerprint()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: compares the stain normalizers on a GPU against the CPU; CI and CPU-only machines have no GPU, run it on one")
def test_gpu_matches_cpu(he_images):
    batch = torch.stack([to_tensor(h) for h in he_images])
    for norm in (ReinhardNormalizer(), MacenkoNormalizer(), IdentityNormalizer()):
        cpu, gpu = norm(batch), norm(batch.cuda())
        assert gpu.is_cuda and gpu.dtype == torch.uint8
        assert (gpu.cpu().int() - cpu.int()).abs().max() <= 2
