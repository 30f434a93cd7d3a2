"""Foundation models as backbones, offline: a tiny random timm ViT (embed 32, depth 2, patch 16, 32 px) in Hugging Face
hub layout, served from 127.0.0.1 (huggingface_hub follows HF_ENDPOINT): download, cache reuse, offline, gated and
wrong ids; the builder's weights, preprocessing and trainable blocks; the feature cache's key and resume after a kill;
the magnification robustness index on a hand-built case; frozen training end to end through train.py."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import torch

from masf_lightning import hub
from masf_lightning.data.cache import CachedImages, Geometry, cache_key, digest
from masf_lightning.data.features import build_features, feature_key
from masf_lightning.data.stain import IdentityNormalizer
from masf_lightning.errors import ConfigError
from masf_lightning.eval.robustness import magnification_robustness
from masf_lightning.models.foundation import foundation
from tests.test_train_e2e import run_train

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_token"
TINY = "test/tiny-vit"  # public, model.safetensors
BIN = "test/bin-vit"  # public, only pytorch_model.bin
GATED = "test/gated-vit"
TINY_ARGS = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0}


class _Hub(BaseHTTPRequestHandler):
    """`/<org>/<name>/resolve/<revision>/<file>` as the hub answers it: the file with its commit and ETag, or the
    error code huggingface_hub tells apart (GatedRepo 401/403, RepoNotFound, EntryNotFound)."""

    def _answer(self, body_too: bool) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        state["requests"].append((self.command, self.path))
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "RepoNotFound")
        repo, name = "/".join(parts[:2]), "/".join(parts[4:])
        auth = self.headers.get("Authorization")
        if repo == GATED and auth != f"Bearer {TOKEN}":
            return self._error(403 if auth else 401, "GatedRepo")
        body = state["repos"].get(repo, {}).get(name) if repo in state["repos"] else None
        if repo not in state["repos"]:
            return self._error(401, "RepoNotFound")
        if body is None:
            return self._error(404, "EntryNotFound")
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body_too:
            self.wfile.write(body)

    def _error(self, code: int, kind: str) -> None:
        self.send_response(code)
        self.send_header("X-Error-Code", kind)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self) -> None:
        self._answer(False)

    def do_GET(self) -> None:
        self._answer(True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """The tiny ViT saved as timm saves hub models (config.json + model.safetensors), and the network itself."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(1)
    net = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TINY_ARGS).eval()
    folder = tmp_path_factory.mktemp("tiny_vit")
    save_for_hf(net, str(folder), model_args=TINY_ARGS, safe_serialization="both")
    return folder, net


@pytest.fixture(scope="module")
def server(tiny_model: tuple[Path, torch.nn.Module]) -> Iterator[tuple[dict, str]]:
    folder = tiny_model[0]
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    repos = {
        TINY: {k: v for k, v in files.items() if k != "pytorch_model.bin"},
        BIN: {k: v for k, v in files.items() if k != "model.safetensors"},
        GATED: files,
    }
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.state = {"repos": repos, "requests": [], "url": url}  # type: ignore[attr-defined]
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.state, url  # type: ignore[attr-defined]
    srv.shutdown()


@pytest.fixture
def online(server: tuple[dict, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """The hub at the test server, an empty cache of this test's own, online (conftest makes tests offline)."""
    import huggingface_hub.constants

    state, url = server
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # read when the library was imported
    state["requests"].clear()
    return state


def test_download_reuses_the_cache_and_works_offline(online: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = hub.model_files(f"hf-hub:{TINY}", "pretrained", "timm")
    assert first is not None and first.weights is not None and first.weights.name == "model.safetensors"
    assert str(first.folder).startswith(str(tmp_path / "hf" / "hub"))  # huggingface_hub's cache under HF_HOME
    assert [r for r in online["requests"] if r[0] == "GET" and "resolve" in r[1]] == [
        ("GET", f"/{TINY}/resolve/main/config.json"), ("GET", f"/{TINY}/resolve/main/model.safetensors"),
    ]  # fmt: skip
    online["requests"].clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    again = hub.model_files(f"hf-hub:{TINY}", "pretrained", "timm")
    assert again is not None and again.files == first.files and online["requests"] == []  # offline: the cache only
    # a repository with only pytorch_model.bin: model.safetensors is tried first, then the .bin
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.model_files(f"hf-hub:{BIN}", "pretrained", "timm").weights.name == "pytorch_model.bin"  # type: ignore[union-attr]


def test_gated_wrong_id_and_offline_say_what_to_do(online: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def error(name: str) -> str:
        with pytest.raises(ConfigError) as exc:
            hub.model_files(name, "pretrained", "timm")
        assert "\n" not in str(exc.value)
        return str(exc.value)

    gated = error(f"hf-hub:{GATED}")  # 401 without a token
    assert GATED in gated and "gated" in gated and "licence" in gated and f"/{GATED}" in gated and "HF_TOKEN" in gated
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    assert "HF_TOKEN's account has not been granted access" in error(f"hf-hub:{GATED}")  # 403
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert hub.model_files(f"hf-hub:{GATED}", "pretrained", "timm").weights is not None  # type: ignore[union-attr]
    assert "test/nope: no such model" in error("hf-hub:test/nope")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    offline = error(f"hf-hub:{TINY}")
    assert TINY in offline and str(tmp_path / "empty" / "hub") in offline and "HF_HUB_OFFLINE=1" in offline


def test_builder_loads_the_weights_and_reads_preprocessing_from_the_model(online: dict, tiny_model: tuple[Path, torch.nn.Module]) -> None:
    net = tiny_model[1]
    x = torch.randn(3, 3, 32, 32)
    frozen = foundation(f"hf-hub:{TINY}", trainable="none", adapter_dim=8)
    assert frozen.encoder is not None and frozen.feature_dim == 8 and frozen.preprocessing is not None
    with torch.no_grad():
        assert torch.allclose(frozen.encoder(x), net(x), atol=1e-6)  # the served weights, the model's pooled embedding
    assert (frozen.preprocessing.input_size, frozen.preprocessing.resize) == (32, 35)  # timm's pretrained_cfg: crop_pct 0.9
    assert frozen.preprocessing.mean == (0.5, 0.5, 0.5) and frozen.preprocessing.interpolation == "bicubic"
    assert {n for n, _ in frozen.featurizer.named_parameters()} == {"0.weight", "0.bias", "1.weight", "1.bias"}  # ψ = the adapter
    from_bin = foundation(f"hf-hub:{BIN}", trainable="none").encoder  # pytorch_model.bin, read by load_checkpoint
    with torch.no_grad():
        assert from_bin is not None and torch.equal(from_bin(x), frozen.encoder(x))
    random = foundation(f"hf-hub:{TINY}", weights=None, trainable="none")
    assert random.encoder_id != frozen.encoder_id and foundation(f"hf-hub:{TINY}", weights=None, trainable="none").encoder_id == random.encoder_id
    last = foundation(f"hf-hub:{TINY}", trainable=1)  # the last block (+ final norm) and the adapter train
    trained = {n for n, _ in last.featurizer.named_parameters()}
    assert trained and all(n.startswith(("0.model.blocks.1.", "0.model.norm.", "1.")) for n in trained), trained
    assert any(n.startswith("0.model.blocks.0.") for n, _ in last.featurizer.named_buffers())  # the rest: constants
    assert len(list(foundation(f"hf-hub:{TINY}").featurizer.parameters())) > len(trained)  # all


def test_meta_learners_take_second_order_steps_through_a_fine_tuned_vit(online: dict) -> None:
    """MASF and MLDG differentiate the inner gradient through attention (SDPA's math kernel) and the frozen blocks
    (buffers); CORAL and DeepAll step the last block and the adapter only."""
    from masf_lightning.algorithms import CORAL, MASF, MLDG, DeepAll
    from masf_lightning.config.hparams import constructor_defaults

    x = {d: (torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 0, 1])) for d in ("40x", "100x", "200x")}
    batch = {"step": 0, "domains": x, "meta_train": ["40x", "100x"], "meta_test": ["200x"]}
    for cls in (DeepAll, CORAL, MLDG, MASF):
        extra = {"embedder": {"hidden_dim": 8, "embedding_dim": 4, "final_activation": True}} if cls is MASF else {}
        module = cls(backbone=foundation(f"hf-hub:{TINY}", trainable=1, adapter_dim=8), num_classes=2, **constructor_defaults(cls, "foundation"), **extra)
        optimizers = module.configure_optimizers()
        module.optimizers = lambda optimizers=optimizers: optimizers  # what Lightning hands DGModule.apply
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        frozen = module.featurizer[0].model.blocks[0].attn.qkv.weight.clone()
        losses, steps = module.update(batch)
        module.apply(steps)
        assert all(torch.isfinite(v) for v in losses.values()), (cls.__name__, losses)
        assert all(not torch.equal(p, before[n]) for n, p in module.named_parameters() if n.startswith("featurizer.1.")), cls.__name__
        assert torch.equal(module.featurizer[0].model.blocks[0].attn.qkv.weight, frozen)


def test_a_transformers_model_loads_as_phikon_v2_does(online: dict, tmp_path: Path) -> None:
    """A tiny random DINOv2 in transformers' layout (Phikon-v2's): the class token of the last hidden state, the
    preprocessor config's crop/resize/mean/std; the last block trains with trainable=1."""
    transformers = pytest.importorskip(
        "transformers", reason="Phikon-v2's loader needs the optional extra transformers (pip install -e '.[foundation]'); CI installs the core only"
    )
    config = transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=16)
    net = transformers.Dinov2Model(config).eval()
    net.save_pretrained(tmp_path / "dino")
    processor = {"crop_size": {"height": 32, "width": 32}, "size": {"shortest_edge": 36}, "image_mean": [0.485, 0.456, 0.406],
                 "image_std": [0.229, 0.224, 0.225], "resample": 3, "do_center_crop": True}  # fmt: skip
    (tmp_path / "dino" / "preprocessor_config.json").write_text(json.dumps(processor))
    online["repos"]["test/dino"] = {f.name: f.read_bytes() for f in (tmp_path / "dino").iterdir()}
    frozen = foundation("hf-hub:test/dino", library="transformers", trainable="none", adapter_dim=8)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert frozen.encoder is not None and torch.allclose(frozen.encoder(x), net(pixel_values=x).last_hidden_state[:, 0], atol=1e-6)
    assert frozen.preprocessing is not None and (frozen.preprocessing.input_size, frozen.preprocessing.resize) == (32, 36)
    assert frozen.preprocessing.interpolation == "bicubic"
    last = {n.split(".layer.")[-1][:2] for n, _ in foundation("hf-hub:test/dino", library="transformers", trainable=1).featurizer.named_parameters() if ".layer." in n}
    assert last == {"1."}


def test_transformers_models_say_how_to_install_it(online: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'masf-lightning\[foundation\]'"):
        foundation("hf-hub:owkin/phikon-v2", library="transformers", trainable="none")


def test_zooming_needs_images() -> None:
    from hydra import compose, initialize_config_dir

    from masf_lightning.config import check_config

    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["method=deepall_zoom", "backbone=timm", "backbone.trainable=none", "paths.data=/tmp"])
    with pytest.raises(ConfigError, match="method=deepall_zoom zooms images, but backbone.trainable=none"):
        check_config(cfg)


def _images(n: int, key: str) -> CachedImages:
    index = pd.DataFrame({"path": [f"img{i:02d}.png" for i in range(n)]})
    return CachedImages(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(), index, key, Path("x"))


def test_feature_cache_is_keyed_reused_and_resumes_after_a_kill(tmp_path: Path) -> None:
    calls: list[int] = []

    def encode(x: torch.Tensor) -> torch.Tensor:  # row value v → features (v, 2v): checkable after reordering
        calls.append(len(x))
        v = x[:, 0, 0, 0].float()
        return torch.stack([v, 2 * v], 1)

    cached = _images(10, "images-a")
    first = build_features(cached, encode, "enc-1", tmp_path, batch_size=3, progress=False)
    assert not first.reused and sum(calls) == 10 and torch.equal(first.features[:, 0], torch.arange(10.0))
    calls.clear()
    shuffled = CachedImages(cached.images.flip(0), cached.index.iloc[::-1].reset_index(drop=True), "images-a", Path("x"))
    again = build_features(shuffled, encode, "enc-1", tmp_path, batch_size=3, progress=False)
    assert again.reused and calls == [] and torch.equal(again.features[:, 0], torch.arange(9.0, -1, -1))  # any row order
    # each of model/weights (the encoder id) and stain/geometry/files (the image cache's key) makes a new key
    assert len({feature_key("images-a", "enc-1"), feature_key("images-a", "enc-2"), feature_key("images-b", "enc-1")}) == 3
    (tmp_path / "a.png").write_bytes(b"x")
    keys = {cache_key(tmp_path, ["a.png"], IdentityNormalizer(), Geometry("square", 35, interpolation)) for interpolation in ("bilinear", "bicubic")}
    old = digest({"format_version": 1, "files": [["a.png", 1]], "stain": IdentityNormalizer().fingerprint(), "geometry": {"mode": "square", "size": 35}})
    assert len(keys) == 2 and old in keys  # a model's interpolation is part of the key; bilinear keeps existing caches' keys
    assert not build_features(cached, encode, "enc-2", tmp_path, batch_size=3, progress=False).reused

    def killed(x: torch.Tensor) -> torch.Tensor:
        if sum(calls) >= 6:
            raise KeyboardInterrupt  # the process dies after two chunks
        return encode(x)

    calls.clear()
    other = _images(10, "images-b")
    with pytest.raises(KeyboardInterrupt):
        build_features(other, killed, "enc-1", tmp_path, batch_size=3, progress=False)
    final = tmp_path / f"features-{feature_key('images-b', 'enc-1')[:16]}.npy"
    assert not final.exists() and list(tmp_path.glob(".features-*.partial.npy"))  # no cache that loads, a partial one
    calls.clear()
    resumed = build_features(other, encode, "enc-1", tmp_path, batch_size=3, progress=False)
    assert calls == [3, 1] and torch.equal(resumed.features, first.features) and resumed.path == final  # rows 6..9 only
    assert not list(tmp_path.glob(".features-*"))  # the partial file became the cache


def test_magnification_robustness_index_hand_built() -> None:
    """Five images on the unit circle (croma measures cosine distance), each of its own patient, k = 1:

        A   0°  class a  40x      A's nearest other-patient image: B (10° away)  a, other mag   → SO
        B  10°  class a  100x     B → A (10°)                                     a, other mag   → SO
        C  25°  class b  40x      C → B (15°; E is 20°)                           other class, other mag: neither
        D  90°  class b  100x     D → E (45°)                                     other class, other mag: neither
        E  45°  class a  40x      E → C (20°)                                     other class, same mag  → OS
    RI = ΣSO / (ΣSO + ΣOS) = 2 / 3, over the 3 of 5 images that have either (support 0.6). Four points where every
    neighbour shares the class across magnifications give 1; sharing the magnification across classes, 0.
    """

    def circle(degrees: list[float]) -> torch.Tensor:
        a = torch.tensor(degrees) * math.pi / 180
        return torch.stack([a.cos(), a.sin()], 1)

    got = magnification_robustness(circle([0, 10, 25, 90, 45]), torch.tensor([0, 0, 1, 1, 0]), torch.tensor([0, 1, 0, 1, 0]), torch.arange(5), ks=(1,))
    assert got == {"index": pytest.approx(2 / 3), "k": 1, "support": pytest.approx(0.6)}
    square = circle([0, 10, 90, 100])
    assert magnification_robustness(square, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]), torch.arange(4), ks=(1,))["index"] == 1.0
    assert magnification_robustness(square, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]), torch.arange(4), ks=(1,))["index"] == 0.0
    assert math.isnan(magnification_robustness(square[:2], torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 1]))["index"])


def test_frozen_training_end_to_end_reuses_features_and_offline_named_models_fail_in_one_line(
    online: dict, tmp_path: Path
) -> None:
    data = ["data.synthetic.patients_per_type=3", "data.synthetic.images_per_magnification=2", "data.synthetic.size=[64,42]"]
    args = [f"paths.data={tmp_path / 'data'}", *data, "data.batch_size_per_domain=6", "steps=4", "val_every=2", "progress=false",
            "backbone=timm", f"backbone.name=hf-hub:{TINY}", "backbone.trainable=none", "backbone.adapter_dim=16"]  # fmt: skip
    env = {"HF_ENDPOINT": online["url"], "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0"}
    sweep = tmp_path / "sweep"
    proc = run_train([*args, "-m", "method=deepall,coral,mldg,masf", f"hydra.sweep.dir={sweep}"], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("feature cache: computing") == 1 and proc.stdout.count("feature cache: reusing") == 3
    found = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in sweep.rglob("metrics.json")}
    assert set(found) == {"deepall", "coral", "mldg", "masf"}
    assert found["masf"]["backbone"] == "foundation" and 0 <= found["masf"]["mag_robustness_features"] <= 1
    assert found["masf"]["mag_robustness_embeddings"] is not None and found["deepall"]["mag_robustness_embeddings"] is None
    again = run_train([*args, "method=deepall", "seed=1", f"hydra.run.dir={tmp_path / 'seed1'}"], env={**env, "HF_HUB_OFFLINE": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "feature cache: reusing" in again.stdout and "computing" not in again.stdout  # offline too: all cached
    # a named model offline with an empty cache: one line naming the hub id and the cache, no run folder
    run_dir = tmp_path / "uni"
    uni = run_train(["backbone=uni", f"hydra.run.dir={run_dir}"], env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty")})
    assert uni.returncode == 2 and uni.stderr.strip().startswith("error: ") and len(uni.stderr.strip().splitlines()) == 1, uni.stderr
    assert "MahmoodLab/UNI" in uni.stderr and str(tmp_path / "empty" / "hub") in uni.stderr and not run_dir.exists()

