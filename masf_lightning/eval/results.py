"""Finished runs as data: every metrics.json below some folders, with what identifies its table cell.

Shared by experiments/collect.py (tables) and experiments/plot_transfer.py (the transfer map).
Runs that never finished, failed with a NaN accuracy, or cannot be read are kept with a status, so
tables can list them rather than silently average over what is left.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from masf_lightning.data.breakhis import DOMAINS as BREAKHIS_DOMAINS
from masf_lightning.data.breakhis import TASKS as PAPER_TASKS
from masf_lightning.data.table import domain_sort_key
from masf_lightning.io import METRICS_FILE, RUN_CONFIG_FILE

TASK_ORDER = PAPER_TASKS  # the paper's two tables first; other tasks after, by name
# Runs written before metrics.json named its domains all ran on BreaKHis (real or synthetic).
DOMAINS_BEFORE_THE_KEY = BREAKHIS_DOMAINS
# Before `hparams.optimizers` existed MASF had one Adam for Eq. 11 as written: a run without the key is "joint".
OPTIMIZERS_BEFORE_THE_KEY = "joint"


@dataclass(frozen=True, order=True)
class Group:
    """Runs that may share a table: same task and everything that changes what the accuracy means."""

    task: str
    protocol: str
    selection: str
    backbone: str
    steps: int
    data: str

    def sort_key(self) -> tuple[Any, ...]:
        t = TASK_ORDER.index(self.task) if self.task in TASK_ORDER else len(TASK_ORDER)
        return (t, self.task, self.protocol, self.selection, self.backbone, self.steps, self.data)

    def title(self) -> str:
        return (
            f"task {self.task} · protocol {self.protocol} · selection {self.selection} · "
            f"backbone {self.backbone} · {self.steps} steps · data {self.data}"
        )


@dataclass
class Run:
    """One run folder: its identity, and its metrics when it finished with a usable accuracy."""

    path: str  # as shown: the DIR argument joined with the folder below it
    group: Group | None
    method: str  # the column: the method name, `_joint` appended for MASF variants with one Adam
    target: str
    seed: int | None
    acc: float | None = None  # target test accuracy (fraction); None when there is no usable number
    status: str = "ok"  # ok | missing | nan | unreadable | duplicate
    resumed: bool = False
    sources: tuple[str, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    domains: tuple[str, ...] = DOMAINS_BEFORE_THE_KEY  # the run's dataset's domains, coarse to fine
    draw: int = 0  # hparams_seed: 0 = the registry's defaults (and every run before draws existed), K = draw K

    def label(self) -> str:
        seed = "?" if self.seed is None else self.seed
        draw = f" draw {self.draw}" if self.draw else ""
        return f"{self.method} {self.target}{draw} seed {seed}: {self.path}"

    @property
    def row(self) -> tuple[str, tuple[str, ...]]:
        """(target, sources): leave-one-out and single-source runs of one target are different rows."""
        return self.target, self.sources or tuple(t for t in self.domains if t != self.target)

    def value(self, key: str) -> float | None:
        """A metric as a finite number, or None; `source_test_acc` is derived for runs that predate it."""
        v = self.metrics.get(key)
        if v is None and key == "source_test_acc":
            by = self.metrics.get("test_acc_by_domain") or {}
            vals = [by.get(s) for s in self.sources]
            v = math.fsum(vals) / len(vals) if vals and all(is_number(x) for x in vals) else None
        return float(v) if is_number(v) else None


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _read_config(folder: Path) -> dict[str, Any] | None:
    """The run's config: run_config.json (resolved), else .hydra/config.yaml read without resolving."""
    path = folder / RUN_CONFIG_FILE
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    path = folder / ".hydra" / "config.yaml"
    if path.is_file():
        import yaml  # only needed for runs without run_config.json

        try:
            cfg = yaml.safe_load(path.read_text())
            return cfg if isinstance(cfg, dict) else None
        except yaml.YAMLError:
            return None
    return None


def _get(cfg: dict[str, Any] | None, *keys: str) -> Any:
    node: Any = cfg or {}
    for k in keys:
        node = node.get(k) if isinstance(node, dict) else None
    # an unresolved interpolation (`${...}`) from .hydra/config.yaml says nothing
    return None if isinstance(node, str) and "${" in node else node


def _data_name(cfg: dict[str, Any] | None) -> str:
    """breakhis | synthetic [P×I]: averaging real and generated images, or two generated sets (P patients per
    type × I images per magnification), together would be meaningless."""
    data = (cfg or {}).get("data")
    if not isinstance(data, dict):
        return "unknown"
    if data.get("format") == "manifest":
        return f"manifest {data.get('manifest')}"
    if data.get("format") == "folder":
        return f"folder {data.get('root')}"
    syn = data.get("synthetic")
    if not syn:
        return "breakhis"
    size = (syn.get("patients_per_type"), syn.get("images_per_magnification")) if isinstance(syn, dict) else (None, None)
    return f"synthetic {size[0]}×{size[1]}" if None not in size else "synthetic"


def averaging_name(m: dict[str, Any] | None, cfg: dict[str, Any] | None) -> str:
    """The run's weight averaging (metrics.json `averaging`, else its config); `none` for runs before the key."""
    got = (m or {}).get("averaging") if isinstance((m or {}).get("averaging"), dict) else None
    return str((got or {}).get("name") or _get(cfg, "averaging", "name") or "none")


def method_column(method: str, cfg: dict[str, Any] | None, hparams: dict[str, Any] | None = None, averaging: str = "none") -> str:
    """`masf` (separate Adams, the public codes) or `masf_joint` (one Adam, Eq. 11 literal); others as named;
    `+swad` / `+ema` appended for a run with weight averaging. The layout as metrics.json recorded it
    (`hparams`), else as the run's config says."""
    if averaging != "none":
        return f"{method_column(method, cfg, hparams)}+{averaging}"
    if not method.startswith("masf"):
        return method
    layout = (hparams or {}).get("optimizers") or _get(cfg, "method", "optimizers") or _get(cfg, "hparams", "optimizers")
    layout = layout or OPTIMIZERS_BEFORE_THE_KEY
    return f"{method}_joint" if layout == "joint" else method


def _backbone(builder: Any, cfg: dict[str, Any] | None) -> str | None:
    """The builder's name (`_target_`'s last part); a foundation model's names the model and what trained too: UNI
    frozen and a fine-tuned ViT are not one table."""
    if builder is None:
        return None
    name, model = str(builder).rsplit(".", 1)[-1], _get(cfg, "backbone", "name")
    return f"{name} {model} (trainable {_get(cfg, 'backbone', 'trainable')})" if name == "foundation" and model else name


def _group(task: Any, protocol: Any, selection: Any, backbone: Any, steps: Any, data: str) -> Group | None:
    if None in (task, protocol, selection, backbone, steps):
        return None
    try:
        return Group(str(task), str(protocol), str(selection), str(backbone), int(steps), data)
    except (TypeError, ValueError):
        return None


def _run_from_metrics(shown: str, m: dict[str, Any], cfg: dict[str, Any] | None) -> Run:
    group = _group(m.get("task"), m.get("protocol"), m.get("selection"), _backbone(m.get("backbone"), cfg), m.get("steps"), _data_name(cfg))
    acc, seed = m.get("target_test_acc"), m.get("seed")
    draw = m.get("hparams_seed", _get(cfg, "hparams_seed"))
    return Run(
        path=shown,
        group=group,
        method=method_column(str(m.get("method", "?")), cfg, m.get("hparams") if isinstance(m.get("hparams"), dict) else None, averaging_name(m, cfg)),
        target=str(m.get("target", "?")),
        seed=int(seed) if is_number(seed) else None,
        acc=float(acc) if is_number(acc) else None,
        status="ok" if is_number(acc) else "nan",
        resumed=bool(m.get("resumed", False)),
        sources=tuple(m.get("sources") or ()),
        metrics=m,
        domains=run_domains(m),
        draw=int(draw) if is_number(draw) else 0,
    )


def run_domains(m: dict[str, Any]) -> tuple[str, ...]:
    """A run's domains in its dataset's order: metrics.json's `domains`, else the keys of its per-domain accuracy
    ordered by their names, else BreaKHis's four (runs before either key)."""
    if isinstance(m.get("domains"), list) and m["domains"]:
        return tuple(str(d) for d in m["domains"])
    by = m.get("test_acc_by_domain")
    if isinstance(by, dict) and by:
        return tuple(sorted(map(str, by), key=domain_sort_key))
    return DOMAINS_BEFORE_THE_KEY


def _run_from_config(shown: str, cfg: dict[str, Any] | None, status: str) -> Run:
    """A run without usable metrics: identify it from its config so it is listed under the right table."""
    group = _group(_get(cfg, "task"), _get(cfg, "split", "protocol"), _get(cfg, "selection"), _backbone(_get(cfg, "backbone", "_target_"), cfg),
                   _get(cfg, "steps"), _data_name(cfg))  # fmt: skip
    seed, draw = _get(cfg, "seed"), _get(cfg, "hparams_seed")
    return Run(
        path=shown,
        group=group,
        method=method_column(str(_get(cfg, "method", "name") or "?"), cfg, averaging=averaging_name(None, cfg)),
        target=str(_get(cfg, "target") or "?"),
        seed=int(seed) if is_number(seed) else None,
        status=status,
        sources=tuple(_get(cfg, "data", "sources") or ()),
        draw=int(draw) if is_number(draw) else 0,
    )


def _is_run_folder(folder: Path) -> bool:
    return (folder / METRICS_FILE).is_file() or (folder / RUN_CONFIG_FILE).is_file() or (folder / ".hydra").is_dir()


ONLINE = " (online)"  # a run's label suffix for its online result counted as the method without averaging


def online_run(r: Run, cfg: dict[str, Any] | None) -> Run | None:
    """A run with averaging as the same method without it: its online model is the averaging=none run (same
    trajectory, same selection; tests/test_averaging.py checks the equality). Target accuracy only."""
    acc = r.metrics.get("online_target_test_acc")
    if r.status != "ok" or not is_number(acc):
        return None
    m = r.metrics
    column = method_column(str(m.get("method", "?")), cfg, m.get("hparams") if isinstance(m.get("hparams"), dict) else None)
    keep = ("method", "task", "target", "sources", "seed", "hparams_seed", "hparams", "domains", "resumed")
    metrics = {**{k: m[k] for k in keep if k in m}, "target_test_acc": acc, "selected_step": m.get("online_selected_step")}
    return replace(r, path=r.path + ONLINE, method=column, acc=float(acc), metrics=metrics)


def find_runs(dirs: Iterable[str | Path], online: bool = False) -> list[Run]:
    """Every run folder below `dirs` (a folder with metrics.json, run_config.json or .hydra/), each once; `online`:
    each run with averaging also as the method without it (`online_run`), unless that run is there itself."""
    seen: set[Path] = set()
    runs: list[Run] = []
    for d in dirs:
        root = Path(d)
        if not root.is_dir():
            continue
        candidates = {p.parent for name in (METRICS_FILE, RUN_CONFIG_FILE) for p in root.rglob(name)}
        candidates |= {p.parent for p in root.rglob(".hydra") if p.is_dir()}
        for folder in sorted(candidates):
            real = folder.resolve()
            if real in seen or not _is_run_folder(folder):
                continue
            seen.add(real)
            shown = (root / folder.relative_to(root)).as_posix()
            cfg = _read_config(folder)
            metrics_path = folder / METRICS_FILE
            if not metrics_path.is_file():
                runs.append(_run_from_config(shown, cfg, "missing"))
                continue
            try:
                m = json.loads(metrics_path.read_text())  # json reads NaN, which the pipeline may write
            except (json.JSONDecodeError, UnicodeDecodeError):
                m = None
            runs.append(_run_from_metrics(shown, m, cfg) if isinstance(m, dict) else _run_from_config(shown, cfg, "unreadable"))
            if online and (plain := online_run(runs[-1], cfg)) is not None:
                runs.append(plain)
    _mark_duplicates(runs)
    return [r for r in runs if not (r.status == "duplicate" and r.path.endswith(ONLINE))]  # the run itself is there


def runs_from_records(records: Iterable[tuple[str, dict[str, Any] | None, dict[str, Any] | None]]) -> list[Run]:
    """Runs from (shown path, metrics.json, run config) read elsewhere (a tracking server: masf_lightning/track),
    judged as find_runs judges folders: no metrics → missing."""
    runs = [_run_from_metrics(shown, m, cfg) if isinstance(m, dict) else _run_from_config(shown, cfg, "missing") for shown, m, cfg in records]
    _mark_duplicates(runs)
    return runs


def _mark_duplicates(runs: list[Run]) -> None:
    """Two finished runs of one (table, method, row, draw, seed): keep the first by path, list the rest.

    They would otherwise count as two seeds and break the by-seed pairing.
    """
    first: dict[tuple[Any, ...], Run] = {}
    for r in sorted(runs, key=lambda r: (r.path.endswith(ONLINE), r.path)):  # a run of its own before an online result
        if r.status not in ("ok", "nan") or r.group is None or r.seed is None:
            continue
        key = (r.group, r.method, r.row, r.draw, r.seed)
        if key in first:
            r.status = "duplicate"
        else:
            first[key] = r
