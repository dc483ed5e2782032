"""Seed statistics: the t quantile against printed tables, and the CI built from it."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.report.stats import SeedStats, seed_stats, t_central_probability, t_quantile

# Two-sided critical values from standard t tables (e.g. NIST/SEMATECH e-Handbook, table 1.3.6.7.2).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 20: 2.086,
         30: 2.042, 100: 1.984}
T_95 = {1: 6.314, 2: 2.920, 5: 2.015, 10: 1.812}


@pytest.mark.parametrize("df, expected", T_975.items())
def test_t_quantile_975_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


@pytest.mark.parametrize("df, expected", T_95.items())
def test_t_quantile_95_matches_tables(df, expected):
    assert t_quantile(0.95, df) == pytest.approx(expected, abs=5e-4)


def test_t_central_probability_closed_forms():
    assert t_central_probability(1.0, 1) == pytest.approx(0.5)  # Cauchy: P(|T| < 1) = 1/2
    for t in (0.3, 1.7, 9.0):  # df = 2: t / sqrt(2 + t^2)
        assert t_central_probability(t, 2) == pytest.approx(t / math.sqrt(2 + t * t))
    assert t_central_probability(1.959964, 2000) == pytest.approx(0.95, abs=2e-4)  # ~ normal


@settings(max_examples=60, deadline=None)
@given(q=st.floats(0.55, 0.999), df=st.integers(1, 60))
def test_t_quantile_inverts_the_cdf(q, df):
    assert t_central_probability(t_quantile(q, df), df) == pytest.approx(2 * q - 1, abs=1e-9)


def test_seed_stats_by_number_of_seeds():
    assert seed_stats([]).n == 0 and math.isnan(seed_stats([]).mean)
    one = seed_stats([0.5])
    assert (one.n, one.mean) == (1, 0.5) and math.isnan(one.std) and math.isnan(one.ci_low)
    two = seed_stats([0.5, 0.7])
    assert two.std == pytest.approx(np.std([0.5, 0.7], ddof=1)) and math.isnan(two.ci_low)
    x = [0.61, 0.66, 0.70]
    three = seed_stats(x)
    half = 4.303 * np.std(x, ddof=1) / math.sqrt(3)
    assert three.ci_low == pytest.approx(np.mean(x) - half, abs=1e-4)
    assert three.ci_high == pytest.approx(np.mean(x) + half, abs=1e-4)


def test_seed_stats_skips_missing_seeds():
    assert seed_stats([0.4, float("nan"), 0.6]) == seed_stats([0.4, 0.6])
    assert isinstance(seed_stats([0.4]), SeedStats)
