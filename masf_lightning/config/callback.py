"""A Hydra callback that checks the config before Hydra writes anything: the run's, or every job's of a sweep.

Registered under `hydra.callbacks` in conf/train.yaml. `on_run_start` comes before Hydra creates the run
folder (a foundation model's hub files are fetched then too); `on_multirun_start` before the first job of any launcher starts, so a sweep with one bad value
fails in seconds, not after the jobs before it have trained. A bad value ends the process with one
`error:` line and exit code 2 (Hydra turns a callback's exception into a warning, hence the exit here).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from masf_lightning import hub
from masf_lightning.config.check import Config, check_config, needs_meta_split
from masf_lightning.config.dataset import check_dataset
from masf_lightning.errors import MasfError

BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def _check_or_exit(config: DictConfig, job: Sequence[str] | None = None) -> None:
    """check_config with `${hydra:…}` resolvable (Hydra sets its config only when a job starts)."""
    hydra_config = HydraConfig.instance()
    before = hydra_config.cfg
    try:
        hydra_config.set_config(config)
        check_run(config)
    except MasfError as exc:
        where = "" if job is None else f" (sweep job {' '.join(job)}; no job started)" if job else " (sweep; no job started)"
        print(f"error: {exc}{where}", file=sys.stderr)
        sys.exit(exc.exit_code)
    finally:
        hydra_config.cfg = before


_FETCHED: set[tuple[str, ...]] = set()


def check_run(config: DictConfig) -> None:
    """Everything a run is checked for before anything is written: keys and values, the dataset's table, hub files."""
    check_config(config)
    check_dataset(config, needs_meta_split(Config(config)))
    fetch_model_files(config)


def fetch_model_files(config: DictConfig) -> None:
    """A foundation backbone's hub files, downloaded now if missing: a gated, offline-and-uncached or misnamed model
    stops here, in one line, before Hydra creates the run folder (once per model in a sweep)."""
    if not str(OmegaConf.select(config, "backbone._target_", default="")).endswith(".foundation"):
        return
    name, weights, library = (OmegaConf.select(config, f"backbone.{k}") for k in ("name", "weights", "library"))
    if (key := (str(name), str(weights), str(library))) not in _FETCHED:
        hub.model_files(str(name), weights, str(library))
        _FETCHED.add(key)


def sweep_jobs(config: DictConfig) -> list[list[str]] | None:
    """The override list of every job the basic sweeper will launch (None under another sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if OmegaConf.select(config, "hydra.sweeper._target_") != BASIC_SWEEPER:
        return None
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    return [job for batch in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None) for job in batch]


class CheckConfig(Callback):
    """Checks the composed config against masf_lightning.config.schema before any job writes anything."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_or_exit(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        loader = GlobalHydra.instance().config_loader()
        try:
            jobs = sweep_jobs(config) or []
        except HydraException:
            return  # a sweep that does not parse: the sweeper reports it in Hydra's words
        shared = set.intersection(*(set(job) for job in jobs)) if jobs else set()  # name a job by what varies
        for job in jobs:
            try:
                job_config = loader.load_sweep_config(config, job)
            except (HydraException, OmegaConfBaseException):
                return  # nor one that does not compose
            _check_or_exit(job_config, [o for o in job if o not in shared])
