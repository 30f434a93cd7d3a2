"""The config's schema and its check: every key typed and ranged, relations between keys, before any work;
and the hyperparameter registry (`hparams.py`) that fills the `hparams` node."""

from masf_lightning.config.callback import CheckConfig
from masf_lightning.config.check import check_config
from masf_lightning.config.store import register

register()  # before Hydra composes conf/train.yaml (see store.py)

__all__ = ["CheckConfig", "check_config", "register"]
