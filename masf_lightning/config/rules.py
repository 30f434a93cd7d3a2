"""What a config key may hold beyond its type: a Rule (bounds, a set, a list length, one more condition).

Torch-free and import-free within the package, so the schema and the hyperparameter registry both state
their rules with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Rule:
    """What a key allows beyond its type: bounds, a set, a list length, one more condition `test`.
    `says` replaces the words the rest would give (a test's condition needs its own)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple[Any, ...] = ()
    length: int | None = None
    min_length: int = 0
    test: Callable[[Any], bool] | None = None
    says: str = ""

    def bounds(self) -> str:
        """'> 0', '>= 1', 'in (0, 100]', 'in 1..999': the range in words, '' when there is none."""
        lo = (self.gt, "(") if self.gt is not None else (self.ge, "[") if self.ge is not None else None
        hi = (self.lt, ")") if self.lt is not None else (self.le, "]") if self.le is not None else None
        if lo and hi:
            if lo[1] == "[" and hi[1] == "]" and float(lo[0]).is_integer() and float(hi[0]).is_integer():
                return f"in {_num(lo[0])}..{_num(hi[0])}"
            return f"in {lo[1]}{_num(lo[0])}, {_num(hi[0])}{hi[1]}"
        if lo:
            return f"{'>' if lo[1] == '(' else '>='} {_num(lo[0])}"
        if hi:
            return f"{'<' if hi[1] == ')' else '<='} {_num(hi[0])}"
        return ""

    def admits(self, x: Any) -> bool:
        """Bounds and set of one scalar (a list's items each)."""
        if self.choices:
            return any(type(x) is type(c) and x == c for c in self.choices)
        if isinstance(x, (int, float)) and not isinstance(x, bool):
            return (
                (self.gt is None or x > self.gt)
                and (self.ge is None or x >= self.ge)
                and (self.lt is None or x < self.lt)
                and (self.le is None or x <= self.le)
            )
        return True


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def rule(**kwargs: Any) -> Any:
    """A schema field with its Rule (the dataclasses are never instantiated: no defaults)."""
    return field(metadata={"rule": Rule(**kwargs)})


POSITIVE = {"gt": 0}
NON_NEGATIVE = {"ge": 0}


def is_finite_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
