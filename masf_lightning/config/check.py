"""Every value of a composed config checked against the schema, then the relations between keys.

`check_config(cfg)` raises one ConfigError, `key=value: what is allowed`, for the first key that breaks a
rule. It needs only OmegaConf (no torch), so train.py runs it before importing or writing anything.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from masf_lightning import relations
from masf_lightning.config import schema
from masf_lightning.config.rules import Rule, is_finite_number
from masf_lightning.config.schema import TrainConfig
from masf_lightning.errors import ConfigError
from masf_lightning.relations import choices_text, show

_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


class Config:
    """The composed config's values (resolved) beside what each key was written as (an interpolation?)."""

    def __init__(self, cfg: DictConfig) -> None:
        own = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])  # Hydra's node is Hydra's business
        self.raw: dict[str, Any] = OmegaConf.to_container(own, resolve=False)  # type: ignore[assignment]
        try:
            self.values: dict[str, Any] = OmegaConf.to_container(own, resolve=True)  # type: ignore[assignment]
        except OmegaConfBaseException as exc:
            key = self.origin(getattr(exc, "full_key", None) or "config")  # where the unresolvable value was written
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.values = {}
            raise ConfigError(f"{key}={show(self.get(key, raw=True))}: cannot be resolved ({reason})") from None

    def get(self, key: str, raw: bool = False, missing: Any = None) -> Any:
        node: Any = self.raw if raw else self.values
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return missing
            node = node[part]
        return node

    def origin(self, key: str) -> str:
        """The key a value comes from: `method.lr` → `hparams.lr` when each interpolates the next (an existing key)."""
        seen = {key}
        while isinstance(written := self.get(key, raw=True), str) and (m := _INTERPOLATION.match(written)):
            if m.group(1) in seen or self.get(m.group(1), raw=True, missing=seen) is seen:
                break
            key = m.group(1)
            seen.add(key)
        return key

    def fail(self, key: str, message: str, value: Any = ...) -> ConfigError:
        """`key=value: message`; a value that came through interpolations names where it was set."""
        value = self.get(key) if value is ... else value
        source = self.origin(key)
        return ConfigError(f"{key}={show(value)}{f' (from {source})' if source != key else ''}: {message}")


# -- types and rules ------------------------------------------------------------------------------------------
def alternatives(tp: Any) -> tuple[bool, list[Any]]:
    """(null allowed, the non-null types) of an annotation."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        return type(None) in args, [a for a in args if a is not type(None)]
    return False, [tp]


def _fits(value: Any, tp: Any) -> bool:
    if tp is dict:  # keyword arguments passed on as they are (backbone.kwargs)
        return isinstance(value, dict)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return is_finite_number(value)
    if tp is str:
        return isinstance(value, str)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    raise TypeError(f"schema type {tp!r} is not supported")


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"), str: ("a string", "strings")}


def allowed(tp: Any, r: Rule) -> str:
    """What a key may hold, in words: 'an integer >= 0', 'one of a, b', 'a list of 3 numbers > 0', '… or null'."""
    nullable, alts = alternatives(tp)
    is_list = typing.get_origin(alts[0]) is list
    if r.says:
        text = r.says
    elif r.choices:
        text = f"a {'non-empty ' if r.min_length else ''}list of {choices_text(r.choices)}" if is_list else f"one of {choices_text(r.choices)}"
    elif is_list:
        (item,) = typing.get_args(alts[0])
        text = " ".join(filter(None, ["a list of", str(r.length or ""), _NOUNS[item][1], r.bounds()]))
    elif dataclasses.is_dataclass(alts[0]):
        text = "a config node"
    else:
        text = " ".join(filter(None, [_NOUNS[alts[0]][0], r.bounds()]))
    return f"{text} or null" if nullable else text


def _violation(value: Any, tp: Any, r: Rule) -> str | None:
    """None if `value` fits the annotation and rule, else the 'must be …' text."""
    nullable, alts = alternatives(tp)
    if value is None:
        return None if nullable else f"must be {allowed(tp, r)}"
    fitting = [a for a in alts if _fits(value, a)]
    if not fitting:
        return f"must be {allowed(tp, r)}"
    if isinstance(value, list):
        ok = (r.length is None or len(value) == r.length) and len(value) >= r.min_length and all(r.admits(v) for v in value)
        return None if ok and (r.test is None or r.test(value)) else f"must be {allowed(tp, r)}"
    if r.choices and not r.admits(value):
        return f"must be one of {choices_text(r.choices)}{', null' if nullable else ''}"
    if not r.admits(value):
        return f"must be {r.bounds()}{' or null' if nullable else ''}"
    if r.test is not None and not r.test(value):
        return f"must be {r.says}"
    return None


def _schema_for(key: str, tp: Any, value: dict[str, Any], cfg: Config) -> type:
    """The dataclass of a node; for a group whose options build different objects, the one of its `_target_`."""
    _, alts = alternatives(tp)
    if len(alts) == 1:
        return alts[0]
    target = value.get("_target_")
    for cls in alts:
        if target in _field_rules(cls)["_target_"].choices:
            return cls
    targets = ", ".join(c for cls in alts for c in _field_rules(cls)["_target_"].choices)
    raise cfg.fail(f"{key}._target_", f"must be one of {targets} (or add its schema to masf_lightning/config/schema.py)", target)


def _field_rules(cls: type) -> dict[str, Rule]:
    return {f.name: f.metadata["rule"] for f in dataclasses.fields(cls)}


def _option(key: str, cls: type, value: dict[str, Any]) -> str:
    name = value.get("name") if key == "method" else None
    return f"{key}={name or getattr(cls, 'option', '?')}"


def _check_node(key: str, tp: Any, value: Any, cfg: Config) -> None:
    nullable, _ = alternatives(tp)
    if value is None and nullable:
        return
    if not isinstance(value, dict):
        raise cfg.fail(key, f"must be a config node ({', '.join(_field_rules(alternatives(tp)[1][0]))})", value)
    cls = _schema_for(key, tp, value, cfg)
    hints = typing.get_type_hints(cls)
    for name, r in _field_rules(cls).items():
        sub = f"{key}.{name}" if key else name
        if name not in value:
            if getattr(cls, "may_omit", False):
                continue  # a node of chosen options (logger): those not chosen are absent
            raise ConfigError(f"{sub}: missing; {_option(key, cls, value) if key else 'the config'} needs it")
        _check_key(sub, hints[name], r, value[name], cfg)
    for name in value:
        if name in hints:
            continue
        sub = f"{key}.{name}" if key else name
        if getattr(cls, "open_keys", False):
            if name in schema.TRAINER_SET_BY_RUN:
                by = schema.TRAINER_SET_BY_RUN[name]
                raise cfg.fail(sub, f"train.py sets it{f' from {by}' if by else ''}; remove it")
            continue
        raise cfg.fail(sub, _unknown(key, cls, name, value, tp))


def _unknown(key: str, cls: type, name: str, value: dict[str, Any], tp: Any) -> str:
    _, alts = alternatives(tp)
    if len(alts) == 1:
        return f"not a key of {key or 'the config'} (masf_lightning/config/schema.py lists them)"
    others = [getattr(c, "option", "?") for c in alts if c is not cls and name in _field_rules(c)]
    if name == "first_order" and others:
        return f"{_option(key, cls, value)} has no inner step to take first-order ({', '.join(others)} have one)"
    also = f" ({', '.join(others)} {'does' if len(others) == 1 else 'do'})" if others else ""
    return f"{_option(key, cls, value)} takes no {name}{also}"


def _check_key(key: str, tp: Any, r: Rule, value: Any, cfg: Config) -> None:
    _, alts = alternatives(tp)
    if dataclasses.is_dataclass(alts[0]):
        _check_node(key, tp, value, cfg)
        return
    if value == "???":
        raise cfg.fail(key, _not_set(key, cfg))
    if (problem := _violation(value, tp, r)) is not None:
        raise cfg.fail(key, problem, value)


def _not_set(key: str, cfg: Config) -> str:
    if key == "data.root":
        fmt = cfg.get("data.format")
        return f"not set; pass data.root=DIR ({'DIR/<domain>/<class>/<image>' if fmt == 'folder' else 'the folder holding BreaKHis_v1'})"
    if key == "data.manifest":
        return "not set; pass data.manifest=FILE (a CSV or Parquet table: path, domain, patient, label columns)"
    if key in ("task", "data.task"):
        return "not set; pass task=<a label column of the table> (python -m masf_lightning.data.index FILE lists them)"
    return f"not set; pass {key}=…"


# -- relations between keys ---------------------------------------------------------------------------------
def _sources(c: Config) -> list[str] | None:
    """data.sources when given; else the table decides (every domain but the target: config/dataset.py checks it)."""
    return c.get("data.sources") or None


def _processes(c: Config) -> int | None:
    """Processes of one run when the trainer config fixes their number: trainer.devices × trainer.num_nodes."""
    devices, nodes = c.get("trainer.devices"), c.get("trainer.num_nodes") or 1
    if isinstance(devices, list):
        n = len(devices)
    elif isinstance(devices, str) and "," in devices:
        n = len([d for d in devices.split(",") if d.strip()])
    elif isinstance(devices, str) and devices.strip().isdigit():
        n = int(devices)
    elif devices == -1 and c.get("trainer.accelerator") in ("gpu", "cuda"):
        from masf_lightning.gpu_pool import visible_gpus

        n = len(visible_gpus()) or None  # type: ignore[assignment]
    else:
        n = devices if isinstance(devices, int) and devices > 0 else None
    return n * nodes if n and isinstance(nodes, int) else None


def steps_cover_a_check(c: Config) -> Iterator[ConfigError]:
    if c.get("val_every") > c.get("steps"):
        yield c.fail("val_every", f"must be <= steps ({c.get('steps')}): validation selects and saves the checkpoint")


def batch_shards_evenly(c: Config) -> Iterator[ConfigError]:
    if problem := relations.batch_shards_evenly(c.get("data.batch_size_per_domain"), _processes(c) or 0):
        yield c.fail("data.batch_size_per_domain", f"{problem} (trainer.devices={show(c.get('trainer.devices'))})")


def target_stays_unseen(c: Config) -> Iterator[ConfigError]:
    if (sources := c.get("data.sources")) and (problem := relations.target_stays_unseen(sources, c.get("target"))):
        yield c.fail("data.sources", problem)


def needs_meta_split(c: Config) -> bool:
    """Whether the configured method splits its sources into meta-train and meta-test (its schema says)."""
    return bool(_schema_for("method", typing.get_type_hints(TrainConfig)["method"], c.get("method"), c).needs_meta_split)


def meta_split_fits(c: Config) -> Iterator[ConfigError]:
    if (sources := _sources(c)) is None:
        return
    if problem := relations.meta_test_domains_fit(c.get("data.meta_test_domains"), len(sources)):
        yield c.fail("data.meta_test_domains", problem)
    if problem := relations.meta_split_possible(c.get("method.name"), needs_meta_split(c), sources):
        yield ConfigError(problem)


def crop_fits_cache(c: Config) -> Iterator[ConfigError]:
    side = c.origin("data.geometry.size")
    if problem := relations.crop_fits_cache(c.get("data.input_size"), side, c.get("data.geometry.size")):
        yield c.fail(c.origin("data.input_size"), problem)


def zoom_needs_images(c: Config) -> Iterator[ConfigError]:
    if problem := relations.zoom_needs_images(c.get("method.name"), "zoom_range" in (c.get("method") or {}), c.get("backbone.trainable")):
        yield ConfigError(problem)


def split_is_complete(c: Config) -> Iterator[ConfigError]:
    if got := relations.split_complete(c.get("split.protocol"), c.get("split.fractions"), c.get("split.fold_file")):
        yield c.fail(*got)


# In the order they are checked; docs/errors.md lists them.
RELATIONS: tuple[Callable[[Config], Iterator[ConfigError]], ...] = (
    steps_cover_a_check, batch_shards_evenly, target_stays_unseen, meta_split_fits, crop_fits_cache, split_is_complete,
    zoom_needs_images,
)


class Leaf(NamedTuple):
    key: str
    type: Any
    rule: Rule
    owner: type


def leaves(cfg: DictConfig) -> Iterator[Leaf]:
    """Every key the schema gives `cfg` that holds a value, not a node (a group's keys by its `_target_`)."""
    c = Config(cfg)

    def walk(prefix: str, tp: Any, value: dict[str, Any]) -> Iterator[Leaf]:
        cls = _schema_for(prefix, tp, value, c)
        hints = typing.get_type_hints(cls)
        for name, r in _field_rules(cls).items():
            key = f"{prefix}.{name}" if prefix else name
            if not dataclasses.is_dataclass(alternatives(hints[name])[1][0]):
                yield Leaf(key, hints[name], r, cls)
            elif isinstance(value.get(name), dict):
                yield from walk(key, hints[name], value[name])

    yield from walk("", TrainConfig, c.values)


def check_config(cfg: DictConfig) -> None:
    """Raise a ConfigError naming the first key of `cfg` (its `hydra` node aside) that the schema rejects."""
    c = Config(cfg)
    _check_node("", TrainConfig, c.values, c)
    for relation in RELATIONS:
        for error in relation(c):
            raise error
