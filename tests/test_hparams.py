"""The hyperparameter registry (masf_lightning/config/hparams.py): every entry has a rule and a distribution whose
draws obey it; draw K is the same in every process, for every target and seed, different across K; K = 0 is the
defaults; a command-line value wins; every constructor argument fed from `hparams` has an entry; no default lives
anywhere else."""

from __future__ import annotations

import inspect
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import OmegaConf

from masf_lightning.config.check import _violation
from masf_lightning.config.hparams import BY_NAME, REGISTRY, constructor_defaults, takes, value, values
from masf_lightning.config.rules import Rule
from masf_lightning.config.search import FIXED, Dist, LogUniform

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
BACKBONES = ("small", "alexnet", "resnet18", "foundation")
METHODS = sorted(f.stem for f in (CONF / "method").glob("*.yaml"))


def method_config(overrides: list[str]) -> dict[str, Any]:
    """The resolved `method` node: exactly the keyword arguments its constructor gets."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.to_container(cfg.method, resolve=True)


def test_every_entry_has_a_rule_and_a_distribution_whose_draws_obey_both() -> None:
    for h in REGISTRY:
        assert isinstance(h.rule, Rule) and h.means and h.source, h.name
        for backbone in BACKBONES:
            dist = h.dist_for(backbone)
            assert isinstance(dist, Dist), (h.name, backbone)
            assert _violation(h.default_for(backbone), h.type, h.rule) is None, (h.name, backbone, "default")
            for k in range(1, 31):
                v = value(h.name, "masf", backbone, "tumor_type", k)
                assert _violation(v, h.type, h.rule) is None and dist.contains(v), (h.name, backbone, k, v)
                assert dist is not FIXED or v == h.default_for(backbone)


def test_draws_spread_over_their_distribution() -> None:
    """Log-uniform draws: log10 of 400 draws has the quartiles of the uniform on [log lo, log hi]."""
    dist = BY_NAME["lr"].dist_for("small")
    assert isinstance(dist, LogUniform)
    logs = sorted(math.log10(value("lr", "deepall", "small", "tumor_type", k)) for k in range(1, 401))
    lo, hi = math.log10(dist.lo), math.log10(dist.hi)
    for q in (0.25, 0.5, 0.75):
        assert logs[int(q * 400)] == pytest.approx(lo + q * (hi - lo), abs=0.12)


def test_a_draw_is_the_same_in_another_process_and_pinned() -> None:
    code = "import json; from masf_lightning.config.hparams import values; print(json.dumps(values('masf', 'small', 'tumor_type', 3)))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60).stdout
    assert json.loads(out) == json.loads(json.dumps(values("masf", "small", "tumor_type", 3)))
    # the draw's arithmetic (sha256 → random.Random → 10^U) pinned: a change would silently re-draw every sweep
    assert value("lr", "masf", "small", "tumor_type", 3) == pytest.approx(2.6008257749999e-04, rel=1e-12)


def test_hparams_seed_in_composed_configs() -> None:
    base = method_config(["method=masf", "hparams_seed=3"])
    assert method_config(["method=masf", "hparams_seed=3", "seed=1", "target=40x"]) == base  # same draw for every target, seed
    other = method_config(["method=masf", "hparams_seed=4"])
    searched = [k for k in takes(get_object(base["_target_"])) if BY_NAME[k].dist_for("small") is not FIXED]
    assert all(other[k] != base[k] for k in searched) and len(searched) >= 8
    defaults = method_config(["method=masf"])
    assert {k: defaults[k] for k in searched} == {k: BY_NAME[k].default_for("small") for k in searched}
    pinned = method_config(["method=masf", "hparams_seed=3", "hparams.lr=0.01"])
    assert pinned["lr"] == 0.01 and {k: v for k, v in pinned.items() if k != "lr"} == {k: v for k, v in base.items() if k != "lr"}
    # the draw differs by method, backbone and task, never by target or seed
    assert method_config(["method=mldg", "hparams_seed=3"])["lr"] != base["lr"]
    assert method_config(["method=masf", "hparams_seed=3", "task=malignancy"])["lr"] != base["lr"]


def test_the_run_folder_names_the_draw() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        runs = [compose("train", overrides=o, return_hydra_config=True).hydra for o in (["hparams_seed=3"], [])]
    assert runs[0].run.dir.endswith("/400x/hp3/seed0") and runs[0].sweep.subdir.endswith("/400x/hp3/seed0")
    assert runs[1].run.dir.endswith("/400x/seed0")  # the defaults keep the folders runs had before draws existed


@pytest.mark.parametrize("method", METHODS)
def test_every_constructor_hyperparameter_has_an_entry_and_no_default_of_its_own(method: str) -> None:
    node = method_config([f"method={method}"])
    cls = get_object(node["_target_"])
    raw = yaml.safe_load((CONF / "method" / f"{method}.yaml").read_text())
    fed = {k for k, v in raw.items() if isinstance(v, str) and v.startswith("${hparams.")}
    for key in fed:
        assert raw[key] == f"${{hparams.{key}}}", f"conf/method/{method}.yaml: {key} must read hparams.{key}"
        assert key in BY_NAME, f"{key} is fed from hparams but has no registry entry"
    assert set(takes(cls)) <= set(node), f"{method}: the constructor takes registry keys its config does not pass"
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        for name, p in inspect.signature(klass.__init__).parameters.items():
            if name in BY_NAME:
                assert p.default is inspect.Parameter.empty, f"{klass.__name__}({name}=...) defines a default outside the registry"


def test_no_hyperparameter_value_is_written_in_conf_outside_recipes_and_ablations() -> None:
    """A registry key in conf/ is an interpolation of the registry, except what a recipe states (conf/experiment)
    and what an ablation removes (a weight set to 0 in a method config that extends another)."""
    for path in sorted(CONF.rglob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        if path.parent.name == "experiment":
            continue
        ablation = path.parent.name == "method" and any(isinstance(d, str) for d in doc.get("defaults", []))

        def walk(node: Any, where: str, doc_path: Path = path, is_ablation: bool = ablation) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    if k in BY_NAME and not (isinstance(v, str) and "${" in v):
                        assert is_ablation and v == 0.0, f"{doc_path.relative_to(ROOT)}: {where}{k}={v} writes a value the registry holds"
                    walk(v, f"{where}{k}.")

        walk(doc, "")


def test_constructor_defaults_build_every_method() -> None:
    from torch import nn

    from masf_lightning.models import Backbone

    for method in METHODS:
        node = method_config([f"method={method}"])
        cls = get_object(node["_target_"])
        kw = constructor_defaults(cls, "small")
        extra = {"embedder": node["embedder"]} if "embedder" in node else {}
        module = cls(backbone=Backbone(nn.Linear(4, 3), 3, "tiny"), num_classes=2, **kw, **extra)
        assert module.lr == BY_NAME["lr"].default_for("small")
