"""What conf/ needs from Python: the `hparams` node filled from the registry, and the draw's folder name.

`register()` runs when `masf_lightning.config` is imported: train.py imports it before Hydra composes, and
a joblib or SLURM worker imports it when it unpickles the CheckConfig callback, before its job's config is
resolved. Hydra's ConfigStore and OmegaConf's resolvers are process-wide by design; registering twice is harmless.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from masf_lightning.config.hparams import BY_NAME, value


def backbone_name(cfg: DictConfig | dict[str, Any]) -> str:
    """The backbone builder's name (`backbone._target_`'s last part): what the registry's per-backbone values key on."""
    target = OmegaConf.select(cfg, "backbone._target_") if isinstance(cfg, DictConfig) else (cfg.get("backbone") or {}).get("_target_")
    return str(target or "?").rsplit(".", 1)[-1]


def _hparam(key: str, *, _root_: DictConfig) -> Any:
    """`${hparam:KEY}`: the registry's value of KEY for this config's method, backbone, task and hparams_seed."""
    seed = OmegaConf.select(_root_, "hparams_seed", default=0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        seed = 0  # the config check names hparams_seed=<value> itself; resolving must not fail first
    method, task = OmegaConf.select(_root_, "method.name"), OmegaConf.select(_root_, "task")
    backbone = backbone_name(_root_)
    try:
        return value(key, str(method), backbone, str(task), seed)
    except KeyError:  # not raised: the check names a bad backbone first, else hparams.<key> with this value
        return f"no value for backbone {backbone} in masf_lightning/config/hparams.py"


def hparams_dir(seed: Any) -> str:
    """`${hparams_dir:${hparams_seed}}`: '' for the defaults (folders as before draws existed), 'hp<K>/' for draw K."""
    return "" if int(seed) == 0 else f"hp{int(seed)}/"


def register() -> None:
    OmegaConf.register_new_resolver("hparam", _hparam, replace=True, use_cache=False)
    OmegaConf.register_new_resolver("hparams_dir", hparams_dir, replace=True)
    # conf/train.yaml's `- hparams: registry`: one `KEY: ${hparam:KEY}` per registry entry, so overriding
    # `hparams.KEY=...` on the command line replaces the registry's value and nothing else.
    ConfigStore.instance().store(group="hparams", name="registry", node={k: f"${{hparam:{k}}}" for k in BY_NAME})
