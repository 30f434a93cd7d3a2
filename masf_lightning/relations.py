"""Rules between config keys, each written once: the config check (`config/check.py`) calls them on the composed
config before anything runs, the constructors (datamodule, sampler, splits, MASF) call them on what they are
given — for code that builds objects without Hydra — and both say the same words.

Each rule returns None when the values are fine, else what is wrong (the text after `key=value: `).
Torch-free, like the check.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from masf_lightning.errors import ConfigError

DEFAULT_FRACTIONS = (0.6, 0.1, 0.3)  # train/val/test patients per tumour type (conf/train.yaml's split.fractions)
# (train, val, test) of the public code: split_ratio is (test, train, val) = (0.45, 0.45, 0.10) there.
PAPER_FRACTIONS = (0.45, 0.10, 0.45)
FRACTIONS_SAY = "a list of 3 numbers >= 0 (train, val, test) summing to 1, train and test > 0"


def show(value: Any) -> str:
    """A value as one writes it on the command line: -1, 1e-05, true, null, [0.5,0.5], 400x."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (value == "" or " " in value):
        return repr(value)
    return str(value)


def violation(key: str, value: Any, problem: str) -> ConfigError:
    """The one-line error every rule gives: `key=value: problem`."""
    return ConfigError(f"{key}={show(value)}: {problem}")


def choices_text(choices: Sequence[Any]) -> str:
    return ", ".join(dict.fromkeys(show(c) for c in choices))  # 32 and "32" read alike


def require_choice(key: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise violation(key, value, f"must be one of {choices_text(choices)}")


def meta_test_domains_fit(meta_test_domains: int, n_sources: int) -> str | None:
    if n_sources > 1 and not 1 <= meta_test_domains < n_sources:
        return f"must be between 1 and {n_sources - 1} for {n_sources} source domains"
    return None


def batch_shards_evenly(batch_size: int, processes: int) -> str | None:
    return f"must be divisible by the {processes} processes" if processes and batch_size % processes else None


def target_stays_unseen(sources: Sequence[str], target: str) -> str | None:
    if target in sources:
        return f"contains target={target}: the target magnification must stay unseen"
    if len(set(sources)) != len(sources):
        return "lists a magnification twice"
    return None


def meta_split_possible(method: str, needs_meta_split: bool, sources: Sequence[str]) -> str | None:
    """A whole sentence (no key=value before it): it is about the method and the sources together."""
    if needs_meta_split and len(sources) < 2:
        return (
            f"method={method} needs at least 2 source magnifications for its meta-train/meta-test split; "
            f"data.sources={list(sources)} has {len(sources)} (train a single magnification with method=deepall)"
        )
    return None


def crop_fits_cache(input_size: int | None, cache_key: str, cache_size: int | None) -> str | None:
    """null (a pretrained model's own preprocessing decides) fits; the pipeline checks the model's numbers."""
    if input_size is None or cache_size is None or input_size <= cache_size:
        return None
    return f"must be <= {cache_key} ({cache_size}): training crops it from the cached image"


def zoom_needs_images(method: str, zooms: bool, trainable: Any) -> str | None:
    """A whole sentence: the feature mode trains on cached features of unzoomed images, which a zoom cannot act on."""
    if zooms and trainable == "none":
        return (
            f"method={method} zooms images, but backbone.trainable=none trains on cached features of the unzoomed images; "
            "use backbone.trainable=all or a number of last blocks"
        )
    return None


def fractions_ok(fractions: Sequence[float]) -> bool:
    return len(fractions) == 3 and all(f >= 0 for f in fractions) and abs(sum(fractions) - 1.0) <= 1e-6 and fractions[0] > 0 and fractions[2] > 0


def split_complete(protocol: str, fractions: Sequence[float], fold_file: str | None) -> tuple[str, str] | None:
    """(the key to name, what is wrong) when the split protocol lacks what it needs."""
    if protocol == "official_fold" and not fold_file:
        return "split.fold_file", "split.protocol=official_fold needs a BreaKHis dsfold<k>.txt"
    if protocol == "paper" and tuple(fractions) not in (DEFAULT_FRACTIONS, PAPER_FRACTIONS):
        return "split.fractions", "split.protocol=paper fixes 45/10/45 train/val/test (the paper's code); use split.protocol=patient to choose fractions"
    return None
