"""The config against its dataset: `target`, `data.sources`, `task` and `data.classes` checked on the table itself.

`check_config` (check.py) knows keys and values; only the data knows its domains and classes. The table is
read (files stat-ed, not decoded) by the same `open_table` the DataModule calls, before Hydra writes anything,
so a manifest's bad column, a missing image or a target that is not a domain is one line and no run folder.
A synthetic BreaKHis not generated yet is checked against the layout it will have.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from masf_lightning.errors import ConfigError
from masf_lightning.relations import meta_split_possible, meta_test_domains_fit, show, target_stays_unseen

_OPENED: dict[str, Any] = {}  # one read per dataset in a sweep's check


def source_keys(data: dict[str, Any]) -> dict[str, Any]:
    """The `data.` keys that say where the table comes from (open_table's arguments)."""
    return {k: data.get(k) for k in ("format", "root", "manifest", "domains", "patient_regex", "on_bad_file", "synthetic")}


def _layout(data: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], Any]:
    """(domains, class order per label column, the table or None) without generating anything."""
    from masf_lightning.data import breakhis
    from masf_lightning.data.sources import open_table

    keys = source_keys(data)
    syn = keys["synthetic"]
    if syn and not (Path(str(keys["root"])) / ".synthetic_breakhis.json").exists():
        return breakhis.DOMAINS, dict(breakhis.CLASS_ORDERS), None
    stamp = None  # a manifest rewritten in place (a test, an editor) is read again
    if keys["manifest"] and Path(str(keys["manifest"])).is_file():
        st = Path(str(keys["manifest"])).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    cache_key = repr((sorted((k, repr(v)) for k, v in keys.items()), stamp))
    if cache_key not in _OPENED:
        _OPENED[cache_key] = open_table(**{**keys, "synthetic": None})
    table = _OPENED[cache_key]
    return table.domains, {}, table


def check_dataset(cfg: DictConfig, needs_meta_split: bool) -> None:
    """Raise one ConfigError/DataError for the first of target, data.sources, task, data.classes the table refuses."""
    data: dict[str, Any] = OmegaConf.to_container(cfg.data, resolve=True)  # type: ignore[assignment]
    target, task = str(cfg.target), str(cfg.task)
    domains, orders, table = _layout(data)
    where = table.name if table is not None else "the synthetic BreaKHis"
    if target not in domains:
        raise ConfigError(f"target={target}: not a domain of {where} (domains: {', '.join(domains)})")
    sources = _sources(data.get("sources"), target, domains, where)
    if table is None:
        if task not in orders:
            raise ConfigError(f"task={task}: not a label column of {where} (label columns: {', '.join(orders)})")
        classes = orders[task]
        given = data.get("classes")
        if given and sorted(map(str, given)) != sorted(classes):
            raise ConfigError(f"data.classes={show(given)}: {where} has the classes {', '.join(classes)} in column {task}")
    else:
        classes = table.classes(task, data.get("classes"))
        table.check_task(task, classes, sources, target)
    if problem := meta_test_domains_fit(data.get("meta_test_domains"), len(sources)):
        raise ConfigError(f"data.meta_test_domains={data.get('meta_test_domains')}: {problem}")
    if problem := meta_split_possible(str(cfg.method.name), needs_meta_split, sources):
        raise ConfigError(problem)


def _sources(given: Sequence[str] | None, target: str, domains: Sequence[str], where: str) -> list[str]:
    """data.sources checked against the table, in the table's order; null: every domain but the target."""
    if not given:
        return [d for d in domains if d != target]
    given = [str(s) for s in given]
    if problem := target_stays_unseen(given, target):
        raise ConfigError(f"data.sources={show(given)}: {problem}")
    if unknown := [s for s in given if s not in domains]:
        raise ConfigError(f"data.sources={show(given)}: {', '.join(unknown)} is not a domain of {where} (domains: {', '.join(domains)})")
    return [d for d in domains if d in given]
