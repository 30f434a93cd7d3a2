"""What conf/ takes from Python: the `hparams` node filled from the registry, the draw's folder name, and the
`train_on` group (train on one magnification alone) made from the list of magnifications.

`register()` runs when `masf_lightning.config` is imported: train.py imports it before Hydra composes, and
a joblib or SLURM worker imports it when it unpickles the CheckConfig callback, before its job's config is
resolved. Hydra's ConfigStore and OmegaConf's resolvers are process-wide by design; registering twice is harmless.
"""

from __future__ import annotations

from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from masf_lightning.config.hparams import BY_NAME, value
from masf_lightning.data.breakhis import DOMAINS as MAGNIFICATIONS  # the transfer map's +train_on=<m> options
from masf_lightning.data.sources import sole_label_column

# +train_on=<m> covers BreaKHis's (and the synthetic copy's) domains; with another table train on one domain with
# data.sources=[<domain>] target=<another>.


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
        got = value(key, str(method), backbone, str(task), seed)
        return OmegaConf.create(got) if isinstance(got, list) else got  # a list as a config node: OmegaConf.resolve needs it
    except KeyError:  # not raised: the check names a bad backbone first, else hparams.<key> with this value
        return f"no value for backbone {backbone} in masf_lightning/config/hparams.py"


def hparams_dir(seed: Any) -> str:
    """`${hparams_dir:${hparams_seed}}`: '' for the defaults (folders as before draws existed), 'hp<K>/' for draw K."""
    return "" if int(seed) == 0 else f"hp{int(seed)}/"


def avg_dir(name: Any) -> str:
    """`${avg_dir:${averaging.name}}`: '' without averaging (folders as before), '+swad' / '+ema' with it."""
    return "" if name in (None, "none") else f"+{name}"


def farthest(magnification: str) -> str:
    """The magnification farthest up or down the ladder: a single-source run's headline unseen target."""
    i = MAGNIFICATIONS.index(magnification)
    return max(MAGNIFICATIONS, key=lambda m: abs(MAGNIFICATIONS.index(m) - i))


def train_on(magnification: str) -> dict[str, Any]:
    """`+train_on=<m>` (the transfer map's rows): DeepAll on m alone; every magnification is evaluated
    (test_acc_by_domain), `target` only names the headline one, the farthest; the run folder says `only_<m>`."""
    subdir = f"${{task}}/${{method.name}}${{avg_dir:${{averaging.name}}}}/only_{magnification}/${{hparams_dir:${{hparams_seed}}}}seed${{seed}}"
    return {"data": {"sources": [magnification]}, "target": farthest(magnification), "hydra": {"sweep": {"subdir": subdir}}}


def smaller(a: Any, b: Any) -> Any:
    """`${min:a,b}`; with a value that is not a number (a typo the check will name), `a` unchanged."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    return min(a, b) if numbers else a


def register() -> None:
    OmegaConf.register_new_resolver("hparam", _hparam, replace=True, use_cache=False)
    OmegaConf.register_new_resolver("hparams_dir", hparams_dir, replace=True)
    OmegaConf.register_new_resolver("avg_dir", avg_dir, replace=True)
    OmegaConf.register_new_resolver("min", smaller, replace=True)  # `val_every: ${min:50,${steps}}`
    OmegaConf.register_new_resolver("label_column", sole_label_column, replace=True)  # data=manifest's default task
    OmegaConf.register_new_resolver("not", lambda x: not x, replace=True)  # `benchmark: ${not:${trainer.deterministic}}`
    # conf/train.yaml's `- hparams: registry`: one `KEY: ${hparam:KEY}` per registry entry, so overriding
    # `hparams.KEY=...` on the command line replaces the registry's value and nothing else.
    store = ConfigStore.instance()
    store.store(group="hparams", name="registry", node={k: f"${{hparam:{k}}}" for k in BY_NAME})
    for m in MAGNIFICATIONS:
        store.store(group="train_on", name=m, node=train_on(m), package="_global_")
