"""Random-search distributions of the hyperparameter registry, and the seed of each draw.

A draw is a pure function of (method, backbone, task, hparams_seed, key): the same in every process and on
every machine (sha256 of the names seeds `random.Random`, whose `random()` stream Python keeps stable across
versions), independent of the other keys (adding a key changes no other draw), and of the target and the
training seed, so draw K is one configuration across a whole sweep (DomainBed's `seed_hash`).
"""

from __future__ import annotations

import hashlib
import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


def draw_seed(*parts: object) -> int:
    """A 64-bit seed from names and numbers, stable across processes (unlike `hash`)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def _num(x: float) -> str:
    return f"{x:g}"


class Dist(ABC):
    """A search distribution: `sample` draws from it (given the entry's default), `contains` says what it can give."""

    @abstractmethod
    def sample(self, rng: random.Random, default: Any) -> Any: ...

    @abstractmethod
    def contains(self, value: Any) -> bool: ...

    @abstractmethod
    def describe(self) -> str: ...


@dataclass(frozen=True)
class LogUniform(Dist):
    """10^U(log10 lo, log10 hi): learning rates and loss weights, whose effect scales with the logarithm."""

    lo: float
    hi: float

    def sample(self, rng: random.Random, default: Any) -> float:
        a, b = math.log10(self.lo), math.log10(self.hi)
        return 10 ** (a + (b - a) * rng.random())

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and self.lo * (1 - 1e-12) <= value <= self.hi * (1 + 1e-12)

    def describe(self) -> str:
        a, b = (round(math.log10(x), 6) for x in (self.lo, self.hi))
        if (2 * a).is_integer() and (2 * b).is_integer():
            return f"10^U({_num(a)}, {_num(b)})"
        return f"log-uniform in [{_num(self.lo)}, {_num(self.hi)}]"


@dataclass(frozen=True)
class Uniform(Dist):
    lo: float
    hi: float

    def sample(self, rng: random.Random, default: Any) -> float:
        return self.lo + (self.hi - self.lo) * rng.random()

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and self.lo <= value <= self.hi

    def describe(self) -> str:
        return f"U({_num(self.lo)}, {_num(self.hi)})"


@dataclass(frozen=True)
class IntUniform(Dist):
    """An integer uniform in [lo, hi]: counts, such as SWAD's patience in validation checks."""

    lo: int
    hi: int

    def sample(self, rng: random.Random, default: Any) -> int:
        return rng.randint(self.lo, self.hi)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.lo <= value <= self.hi

    def describe(self) -> str:
        return f"an integer in [{self.lo}, {self.hi}]"


@dataclass(frozen=True)
class OctaveRange(Dist):
    """[2^-U(0, m), 2^U(0, m)]: a zoom window from `low` (zoom in) to `high` (zoom out), each up to m octaves."""

    octaves: float

    def sample(self, rng: random.Random, default: Any) -> list[float]:
        return [2 ** (-self.octaves * rng.random()), 2 ** (self.octaves * rng.random())]

    def contains(self, value: Any) -> bool:
        lo, hi = 2**-self.octaves, 2**self.octaves
        return isinstance(value, list) and len(value) == 2 and lo <= value[0] <= 1 <= value[1] <= hi

    def describe(self) -> str:
        return f"[2^-U(0, {_num(self.octaves)}), 2^U(0, {_num(self.octaves)})]"


@dataclass(frozen=True)
class Fixed(Dist):
    """Not searched: every draw keeps the default. For choices that name a variant of a method (its optimizer
    layout, first or second order) or the implementation (fused Adam), which a comparison states, not tunes."""

    def sample(self, rng: random.Random, default: Any) -> Any:
        return default

    def contains(self, value: Any) -> bool:
        return True

    def describe(self) -> str:
        return "fixed (the default; not searched)"


FIXED = Fixed()
