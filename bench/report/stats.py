"""Statistics over seeds: mean, sample std and a Student-t 95% confidence interval.

scipy is not a dependency, so the t quantile is computed here: the two-sided t probability has a
closed form for integer degrees of freedom (Abramowitz & Stegun 26.7.3), which is inverted by
bisection. Seeds come in small integer counts, so integer df is all that is needed.
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple

import numpy as np

CI_LEVEL = 0.95
MIN_SEEDS_FOR_CI = 3  # with 2 seeds t = 12.7: an interval that wide says nothing


def t_central_probability(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3)."""
    if df < 1 or t < 0:
        raise ValueError(f"need df >= 1 and t >= 0, got df={df}, t={t}")
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    total = 0.0
    if df % 2:  # odd: 2/pi * (theta + sin(theta) * sum of cos^(2k-1) terms)
        term = math.cos(theta)
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term = 1.0  # even: sin(theta) * sum of cos^(2k) terms
    for k in range(1, df // 2 + 1):
        total += term
        term *= cos2 * (2 * k - 1) / (2 * k)
    return math.sin(theta) * total


def t_quantile(q: float, df: int) -> float:
    """The q-quantile of Student's t, for 0.5 <= q < 1 (e.g. t_quantile(0.975, 2) = 4.303)."""
    if not 0.5 <= q < 1:
        raise ValueError(f"q must be in [0.5, 1), got {q}")
    target = 2 * q - 1  # the central probability that leaves 1 - q in each tail
    lo, hi = 0.0, 1.0
    while t_central_probability(hi, df) < target:
        lo, hi = hi, hi * 2
    for _ in range(100):  # the bracket halves each step: far below float precision by the end
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_central_probability(mid, df) < target else (lo, mid)
    return (lo + hi) / 2


class SeedStats(NamedTuple):
    n: int
    mean: float
    std: float      # sample std (ddof=1); NaN with fewer than 2 seeds
    ci_low: float   # 95% t interval of the mean; NaN with fewer than MIN_SEEDS_FOR_CI seeds
    ci_high: float


def seed_stats(values: Iterable[float]) -> SeedStats:
    """Mean, std and CI of one value per seed; NaN values (no data for that seed) are skipped."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return SeedStats(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    if n < MIN_SEEDS_FOR_CI:
        return SeedStats(n, mean, std, math.nan, math.nan)
    half = t_quantile(1 - (1 - CI_LEVEL) / 2, n - 1) * std / math.sqrt(n)
    return SeedStats(n, mean, std, mean - half, mean + half)
