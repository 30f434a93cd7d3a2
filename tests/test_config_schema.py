"""The config schema: every shipped config passes, every key rejects a value outside its type, range or set
with one line naming it, and the relations between keys hold."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from masf_lightning import choices
from masf_lightning.config import check_config, schema
from masf_lightning.config.__main__ import rules_markdown
from masf_lightning.config.callback import check_run
from masf_lightning.config.check import Leaf, alternatives, leaves
from masf_lightning.config.store import MAGNIFICATIONS
from masf_lightning.errors import ConfigError
from masf_lightning.relations import show

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ("data", "stain", "backbone", "method", "averaging", "trainer", "experiment", "logger")


def shipped_options() -> list[list[str]]:
    """Overrides selecting every config file of every group once (data.root set: real-data options need it)."""
    runs = [[f"{g}={f.stem}"] for g in GROUPS for f in sorted((CONF / g).glob("*.yaml"))]
    runs += [[f"+train_on={m}", "method=deepall"] for m in MAGNIFICATIONS]  # generated: config/store.py
    return [[*r, "data.root=/nonexistent/breakhis"] for r in [[], *runs]]


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # `${hydra:runtime.cwd}` in paths
    return cfg


@pytest.fixture(scope="module")
def configs() -> dict[str, DictConfig]:
    return {" ".join(o): compose_train(o) for o in shipped_options()}


def error_of(cfg: DictConfig, dataset: bool = False) -> str:
    """The check's one line: of the keys alone, or (`dataset`) also against the dataset's table, as train.py checks."""
    with pytest.raises(ConfigError) as exc:
        check_run(cfg) if dataset else check_config(cfg)
    return str(exc.value)


def test_every_shipped_config_passes(configs: dict[str, DictConfig]) -> None:
    """A key in conf/ that the schema does not know fails here (and at run time, as 'not a key of …')."""
    for cfg in configs.values():
        check_config(cfg)


def walked(configs: dict[str, DictConfig]) -> Iterator[tuple[Leaf, DictConfig]]:
    """Each key of each schema class once, with a shipped config where that class is the one in use."""
    seen: set[tuple[type, str]] = set()
    for cfg in configs.values():
        for leaf in leaves(cfg):
            field = (leaf.owner, leaf.key.rsplit(".", 1)[-1])
            if field not in seen:
                seen.add(field)
                yield leaf, cfg


def test_every_schema_class_is_in_some_shipped_config(configs: dict[str, DictConfig]) -> None:
    """So the walk below reaches every key: each backbone, stain and method schema has a config in conf/."""

    def reachable(tp: Any) -> Iterator[type]:
        for alt in alternatives(tp)[1]:
            if dataclasses.is_dataclass(alt):
                if dataclasses.fields(alt):  # a node without keys (logger=tensorboard's) has no leaf to walk
                    yield alt
                for hint in typing.get_type_hints(alt).values():
                    yield from reachable(hint)

    assert set(reachable(schema.TrainConfig)) == {leaf.owner for leaf, _ in walked(configs)}


def _numeric(tp: Any) -> bool:
    alts = alternatives(tp)[1]
    items = [typing.get_args(a)[0] if typing.get_origin(a) is list else a for a in alts]
    return any(t in (int, float) for t in items)


def bad_values(leaf: Leaf, current: Any) -> list[Any]:
    """Values outside the key's type, range or set, derived from its rule."""
    r, alts = leaf.rule, alternatives(leaf.type)[1]
    is_list = typing.get_origin(alts[0]) is list
    out: list[Any] = [5] if alts == [str] else ["abc"]
    bounds = [b for b in (r.gt, r.ge - 1 if r.ge is not None else None, r.lt, r.le + 1 if r.le is not None else None) if b is not None]
    if is_list and isinstance(current, list) and current:
        out += [[b, *current[1:]] for b in bounds]
        if r.length is not None:
            out.append([*current, current[-1]])
    elif not is_list:
        out += bounds
    return out


def written(cfg: DictConfig, key: str) -> Any:
    """The value as the config holds it: an interpolation stays `${…}`, so restoring it restores the link."""
    parent, _, name = key.rpartition(".")
    node = (OmegaConf.select(cfg, parent) if parent else cfg)._get_node(name)
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node._value()


def test_every_key_outside_its_rule_is_one_line_naming_it(configs: dict[str, DictConfig]) -> None:
    """Walks every key of the schema: a numeric key without a range or set fails here, as does a rule the
    checker does not enforce or a message that does not say `key=value: must be …`."""
    checked = 0
    for leaf, cfg in walked(configs):
        if _numeric(leaf.type):
            assert leaf.rule.bounds() or leaf.rule.choices or leaf.rule.test, f"{leaf.key}: a numeric key needs a range or a set"
        current = OmegaConf.select(cfg, leaf.key)
        current = OmegaConf.to_container(current) if OmegaConf.is_config(current) else current
        original = written(cfg, leaf.key)
        for bad in bad_values(leaf, current):
            OmegaConf.update(cfg, leaf.key, bad, merge=False)
            try:
                message = error_of(cfg)
            finally:
                OmegaConf.update(cfg, leaf.key, original, merge=False)
            assert message.startswith(f"{leaf.key}={show(bad)}: must be "), (leaf.key, bad, message)
            assert "\n" not in message
            checked += 1
        check_config(cfg)  # restored
    assert checked > 200


def test_float_keys_refuse_nan_and_int_keys_refuse_fractions(configs: dict[str, DictConfig]) -> None:
    cfg = configs["data.root=/nonexistent/breakhis"]
    for key, bad in (("hparams.lr", math.nan), ("hparams.temperature", math.inf), ("steps", 1.5), ("hparams.first_order", 1)):
        original = written(cfg, key)
        OmegaConf.update(cfg, key, bad, merge=False)
        try:
            assert error_of(cfg).startswith(f"{key}={show(bad)}: must be ")
        finally:
            OmegaConf.update(cfg, key, original, merge=False)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["steps=0"], "steps=0: must be >= 1"),
        (["seed=abc"], "seed=abc: must be an integer in 0..4294967295"),
        (["hparams.lr=-1"], "hparams.lr=-1: must be > 0"),
        (["hparams.temperature=0"], "hparams.temperature=0: must be > 0"),
        (["data.batch_size_per_domain=0"], "data.batch_size_per_domain=0: must be >= 1"),
        (["selection=best"], "selection=best: must be one of source_val, target_val, last"),
        (["target=[400x]"], "target=[400x]: must be a string"),
        (["hparams.inner_clip=0"], "hparams.inner_clip=0: must be > 0 or null"),
        (["split.fractions=[0.5,0.5]"], "split.fractions=[0.5,0.5]: must be a list of 3 numbers >= 0 (train, val, test) summing to 1, train and test > 0"),
        (["hparams_seed=-1"], "hparams_seed=-1: must be in 0..4294967295"),
        (["method=coral", "method.coral_weight=-1"], "method.coral_weight=-1: must be >= 0"),
        (["backbone=alexnet", "backbone.weights=foo"], "backbone.weights=foo: must be one of IMAGENET1K_V1, null"),
        (["hparams.lr=${nope}"], "hparams.lr=${nope}: cannot be resolved (Interpolation key 'nope' not found)"),
        (["experiment=paper_tumor_type"], "data.root=???: not set; pass data.root=DIR (the folder holding BreaKHis_v1)"),
        (["+stepz=3"], "stepz=3: not a key of the config (masf_lightning/config/schema.py lists them)"),
        (["+hparams.foo=1"], "hparams.foo=1: not a key of hparams (masf_lightning/config/schema.py lists them)"),
        (["+trainer.max_steps=5"], "trainer.max_steps=5: train.py sets it from steps; remove it"),
        (["method=deepall", "+method.first_order=true"], "method.first_order=true: method=deepall has no inner step to take first-order (masf, mldg have one)"),
        (["method=coral", "+method.inner_lr=0.1"], "method.inner_lr=0.1: method=coral takes no inner_lr (masf, mldg do)"),
        (["method._target_=my.Method"], "method._target_=my.Method: must be one of masf_lightning.algorithms.MASF, "),
        # relations
        (["val_every=900"], "val_every=900: must be <= steps (800): validation selects and saves the checkpoint"),
        (["trainer=ddp_cpu", "data.batch_size_per_domain=7"], "data.batch_size_per_domain=7: must be divisible by the 2 processes (trainer.devices=2)"),
        (["data.sources=[40x,400x]"], "data.sources=[40x,400x]: contains target=400x: the target magnification must stay unseen"),
        (["data.sources=[40x,40x]"], "data.sources=[40x,40x]: lists a magnification twice"),
        (["data.sources=[40x,100x]", "data.meta_test_domains=2"], "data.meta_test_domains=2: must be between 1 and 1 for 2 source domains"),
        (["+train_on=100x", "method=mldg"], "method=mldg needs at least 2 source magnifications for its meta-train/meta-test split; data.sources=['100x'] has 1 (train a single magnification with method=deepall)"),
        (["backbone.input_size=100"], "backbone.input_size=100: must be <= backbone.cache_size (56): training crops it from the cached image"),
        (["split.protocol=official_fold"], "split.fold_file=null: split.protocol=official_fold needs a BreaKHis dsfold<k>.txt"),
        (["split.protocol=paper", "split.fractions=[0.7,0.1,0.2]"], "split.fractions=[0.7,0.1,0.2]: split.protocol=paper fixes 45/10/45"),
        (["method=deepall_zoom", "hparams.zoom_range=[2.0,1.0]"], "hparams.zoom_range=[2.0,1.0]: must be a list [low, high] with 0 < low <= high"),
    ],
)
def test_one_line_per_mistake(overrides: list[str], message: str) -> None:
    assert error_of(compose_train(overrides)).startswith(message)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=grade"], "task=grade: not a label column of the synthetic BreaKHis (label columns: tumor_type, malignancy)"),
        (["target=400X"], "target=400X: not a domain of the synthetic BreaKHis (domains: 40x, 100x, 200x, 400x)"),
        (["data.meta_test_domains=3"], "data.meta_test_domains=3: must be between 1 and 2 for 3 source domains"),
        (["data.sources=[40x,50x]"], "data.sources=[40x,50x]: 50x is not a domain of the synthetic BreaKHis"),
        (["data.classes=[A,F]"], "data.classes=[A,F]: the synthetic BreaKHis has the classes A, F, PT, TA, DC, LC, MC, PC"),
    ],
)
def test_checked_against_the_dataset(overrides: list[str], message: str, tmp_path: Path) -> None:
    """target, data.sources, task and data.classes against the table (here the synthetic data's, not generated yet)."""
    assert error_of(compose_train([*overrides, f"paths.data={tmp_path}"]), dataset=True).startswith(message)


def test_valid_overrides_pass() -> None:
    for overrides in (
        ["+trainer.gradient_clip_val=1.0"],  # Lightning's own arguments pass through
        ["+train_on=40x", "method=deepall", "target=400x"],
        ["trainer=ddp_cpu", "data.batch_size_per_domain=12"],
        ["hparams.meta_lr=null", "early_stopping_patience=3", "data.sources=[100x,40x]"],
    ):
        check_config(compose_train(overrides))


def test_names_taken_from_third_parties_are_theirs() -> None:
    """The sets masf_lightning/choices.py holds for torchvision and Lightning (so the check stays torch-free)."""
    import torchvision
    from lightning_fabric.connector import _PRECISION_INPUT

    for arch in ("alexnet", "resnet18"):
        assert set(choices.IMAGENET_WEIGHTS) <= {w.name for w in torchvision.models.get_model_weights(arch)}
    assert set(choices.PRECISIONS) == {p for lit in typing.get_args(_PRECISION_INPUT) for p in typing.get_args(lit)}


def test_errors_md_lists_the_rules() -> None:
    """docs/errors.md holds `python -m masf_lightning.config`'s table: a key added to the schema shows up there."""
    assert rules_markdown() in (ROOT / "docs" / "errors.md").read_text()


def test_group_schemas_name_what_their_targets_take() -> None:
    """A schema key the built object does not take would pass the check and fail at instantiation."""
    import inspect

    from hydra.utils import get_object

    from masf_lightning.pipeline import BACKBONE_DATA_KEYS

    hints = typing.get_type_hints(schema.TrainConfig)
    for group, ignored in (("method", {"name"}), ("backbone", set(BACKBONE_DATA_KEYS)), ("stain", set())):
        for cls in alternatives(hints[group])[1]:
            (target,) = cls.__dataclass_fields__["_target_"].metadata["rule"].choices
            built = get_object(target)
            inits = [k.__init__ for k in getattr(built, "__mro__", ()) if "__init__" in vars(k) and k is not object] or [built]
            takes = {p for f in inits for p in inspect.signature(f).parameters}
            keys = {f.name for f in dataclasses.fields(cls)} - {"_target_"} - ignored
            assert keys <= takes, (target, keys - takes)
            if group == "method":
                assert cls.needs_meta_split == built.needs_meta_split, target
