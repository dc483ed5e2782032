"""Statistics over seeds and test images: mean, sample std and a Student-t 95% interval whose
standard error adds the test-image sampling noise to the seed noise, the seeds such an interval
would need, and the accuracy a cell must beat chance by to count as learned.

A value (a variant's accuracy over a regime, or the paired difference of two variants) comes as
one number per seed and one per test image (that image's value, averaged over the seeds and the
regime's eval sizes). The seed noise is the spread over seeds, s^2 / n. The test images are one
sample shared by every seed and size, so their sampling error is common to all seeds: it is the
standard error of the mean over images, sd(image values) / sqrt(images), which is what a
bootstrap over test images converges to (resampling images shared by every seed and size;
closed form, so no resampling noise and no random seed). Combined: SE = sqrt(s^2 / n + SE_img^2)
and the interval is mean +- t(0.975, n - 1) SE. It is conservative: s already holds the part of
each seed's image noise that is not common to all seeds.

scipy is not a dependency, so the t quantile is computed here: the two-sided t probability has a
closed form for integer degrees of freedom (Abramowitz & Stegun 26.7.3), which is inverted by
bisection. Seeds come in small integer counts, so integer df is all that is needed.
"""
from __future__ import annotations

import functools
import math
from typing import Iterable, NamedTuple

import numpy as np

CI_LEVEL = 0.95
MIN_SEEDS_FOR_CI = 3  # with 2 seeds t = 12.7: an interval that wide says nothing
MAX_SEEDS_NEEDED = 100  # seeds_needed looks no further: beyond it, more seeds are not the answer
# A cell learned when its accuracy at the training resolution beats chance by more than
# max(LEARN_FLOOR, LEARN_SES binomial standard errors of a chance-level accuracy).
LEARN_FLOOR = 0.05
LEARN_SES = 3.0


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


@functools.lru_cache(maxsize=None)   # a report asks for the same few (q, df) thousands of times
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
    std: float      # sample std over seeds (ddof=1); NaN with fewer than 2 seeds
    ci_low: float   # 95% t interval of the mean; NaN with fewer than MIN_SEEDS_FOR_CI seeds
    ci_high: float
    # SE of the mean from sampling the test images; NaN: not known (cells from before per-image
    # hits were kept), and the interval is over seeds alone
    image_se: float = math.nan

    @property
    def resolved(self) -> bool:
        """The interval excludes 0 (for a difference: its sign is resolved)."""
        return self.ci_low > 0 or self.ci_high < 0


def seed_stats(values: Iterable[float], images: np.ndarray | None = None) -> SeedStats:
    """Mean, std and CI of one value per seed, NaN values (no data for that seed) skipped; with
    ``images`` (one value per test image, averaged over the seeds) the CI adds their sampling
    noise (module docstring)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    n = len(x)
    if n == 0:
        return SeedStats(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    image_se = math.nan if images is None else float(np.std(images, ddof=1) / math.sqrt(len(images)))
    if n < MIN_SEEDS_FOR_CI:
        return SeedStats(n, mean, std, math.nan, math.nan, image_se)
    half = t_quantile(1 - (1 - CI_LEVEL) / 2, n - 1) * combined_se(std, n, image_se)
    return SeedStats(n, mean, std, mean - half, mean + half, image_se)


def combined_se(std: float, n: int, image_se: float) -> float:
    """SE of a mean over n seeds: the seed part, plus the test-image part when it is known."""
    return math.sqrt(std ** 2 / n + (0.0 if math.isnan(image_se) else image_se ** 2))


def seeds_needed(st: SeedStats) -> int | None:
    """The fewest seeds whose interval would exclude 0 if the mean, seed std and image SE stayed
    as observed: the smallest n >= MIN_SEEDS_FOR_CI with t(0.975, n - 1) SE(n) < |mean|. None
    when the std is unknown (one seed) or no n up to MAX_SEEDS_NEEDED does it (the image noise
    alone is too large: a bigger test set, not more seeds, would resolve it)."""
    if st.n < 2 or math.isnan(st.std):
        return None
    quantile = 1 - (1 - CI_LEVEL) / 2
    return next((n for n in range(MIN_SEEDS_FOR_CI, MAX_SEEDS_NEEDED + 1)
                 if t_quantile(quantile, n - 1) * combined_se(st.std, n, st.image_se) < abs(st.mean)), None)


def learned_margin(chance: float, images: float) -> float:
    """How far above chance a cell's accuracy at the training resolution must be to count as
    learned: max(LEARN_FLOOR, LEARN_SES binomial SEs at chance over ``images`` test images); the
    floor alone when the test size is unknown (NaN)."""
    if not images > 0:
        return LEARN_FLOOR
    return max(LEARN_FLOOR, LEARN_SES * math.sqrt(chance * (1 - chance) / images))
