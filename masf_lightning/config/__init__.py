"""The config's schema and its check: every key typed and ranged, relations between keys, before any work."""

from masf_lightning.config.callback import CheckConfig
from masf_lightning.config.check import check_config

__all__ = ["CheckConfig", "check_config"]
