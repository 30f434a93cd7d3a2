"""User-facing errors: one line that names the file or config key, printed by train.py without a traceback."""

from __future__ import annotations


class MasfError(Exception):
    """Base class for mistakes a user can fix (bad data, bad config, missing weights)."""

    exit_code = 2


class DataError(MasfError):
    """A data file or folder is missing, unreadable or contradicts the BreaKHis layout."""


class ConfigError(MasfError):
    """A config key or value is invalid."""


class TrainingError(MasfError):
    """Training hit a numerical fault (NaN/Inf) or an unrecoverable state."""

    exit_code = 3
