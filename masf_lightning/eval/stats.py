"""Small-sample statistics for tables over seeds: sample std and Student-t intervals (scipy-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# Two-sided 95 % Student t quantiles t_{0.975, df}, df = 1..30.
T975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
    2.262157163, 2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
    2.109815578, 2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip
Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}: the table up to 30, then the Cornish–Fisher expansion (error < 1e-5 beyond 30)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and SAMPLE standard deviation (ddof=1); std is None for a single value, where it is undefined."""
    if not values:
        raise ValueError("no values")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def t_interval(values: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the 95 % t-interval of the mean; None below two values."""
    mean, std = mean_std(values)
    if std is None:
        return None
    half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
    return mean, mean - half, mean + half


Z80 = 0.8416212335729143  # one-sided 80 % normal quantile: the power convention of sample-size tables


@dataclass(frozen=True)
class Power:
    """What a paired comparison over `n` seeds can resolve, from its observed paired standard deviation `sd`."""

    n: int
    sd: float
    half_width: float  # the smallest |difference| whose 95 % interval excludes 0 with these n seeds
    n_resolving: int  # seeds whose 95 % interval half-width would be <= `target` (detects `target` about half the time)
    n_power80: int  # seeds to detect a true difference of `target` with 80 % power (two-sided 5 % test)
    target: float


def seeds_needed(sd: float, target: float, power_z: float = 0.0, cap: int = 10_000) -> int:
    """Smallest n >= 2 with (t_{0.975, n-1} + power_z) · sd / √n <= target; `cap` when none is below it."""
    if sd == 0:
        return 2
    for n in range(2, cap):
        if (t_quantile_975(n - 1) + power_z) * sd / math.sqrt(n) <= target:
            return n
    return cap


def power(diffs: Sequence[float], target: float = 2.0) -> Power | None:
    """Power of a paired comparison (per-seed differences, percentage points); None below two seeds."""
    got = t_interval(diffs) if len(diffs) > 1 else None
    if got is None:
        return None
    sd = mean_std(diffs)[1] or 0.0
    return Power(len(diffs), sd, got[2] - got[0], seeds_needed(sd, target), seeds_needed(sd, target, Z80), target)
