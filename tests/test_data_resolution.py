"""Resolution policies, the evaluation grid and the validation of the data config sections."""
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.config import DataConfig, DropConfig, EvalGridConfig, ResolutionConfig
from bench.config.loader import build
from bench.data import budget_grid, eval_sizes
from bench.data.resolution import DEFAULT_SIDES, aspect_size, check_resolution, sample_side, train_size
from bench.errors import ConfigError

P = 8


@pytest.mark.parametrize("make,key", [
    (lambda: ResolutionConfig(min_side=64, max_side=32), "min_side"),
    (lambda: build(ResolutionConfig, {"mode": "random"}), "mode"),   # choices are the loader's to check
    (lambda: build(ResolutionConfig, {"distribution": "lognormal"}), "distribution"),
    (lambda: ResolutionConfig(max_tokens=0), "max_tokens"),
    (lambda: build(DataConfig, {"name": "imagenet"}), "name"),
    (lambda: build(DataConfig, {"task": "count"}), "task"),
    (lambda: DataConfig(name="imagefolder"), "root"),
    (lambda: DataConfig(aspect_range=[2.0, 0.5]), "aspect_range"),
    (lambda: DataConfig(test_fraction=1.0), "test_fraction"),
    (lambda: DropConfig(kind="constant", rate=1.0), "rate"),
    (lambda: DropConfig(kind="beta", alpha=0.0), "alpha"),
    (lambda: EvalGridConfig(aspects=[1.0]), "aspects"),
    (lambda: EvalGridConfig(sizes=[[64, 64], [32]]), "sizes[1]"),
    (lambda: EvalGridConfig(sides=[64, -8]), "sides[1]"),
])
def test_config_sections_name_the_bad_key(make, key):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key


def test_unknown_choices_list_the_valid_ones():
    with pytest.raises(ConfigError, match="expected one of 'abs_position', 'rel_position', 'control' or a list, got 'where'"):
        build(DataConfig, {"task": "where"})


@pytest.mark.parametrize("cfg,key,message", [
    (ResolutionConfig(min_side=20, max_side=64), "resolution.min_side", "20 is not a positive multiple of patch_size 8"),
    (ResolutionConfig(min_side=4, max_side=4), "resolution.min_side", "4 is not a positive multiple"),
    (ResolutionConfig(mode="fixed", side=60), "resolution.side", "60 is not a positive multiple"),
    (ResolutionConfig(mode="fixed", side=256), "resolution.side", "1024 tokens, more than max_seq_len 256"),
    (ResolutionConfig(max_side=136), "resolution.max_side", "289 tokens"),
    (ResolutionConfig(mode="budget", max_tokens=300), "resolution.max_tokens", "300 tokens"),
])
def test_patch_dependent_checks(cfg, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        check_resolution(cfg, P, max_seq_len=256)
    assert info.value.key == key


def test_fixed_mode_is_a_square_whatever_the_native_size():
    cfg = ResolutionConfig(mode="fixed", side=48)
    rng = np.random.default_rng(0)
    assert {train_size(cfg, native, P, rng, 256) for native in [(30, 90), (500, 20), (64, 64)]} == {(48, 48)}


@pytest.mark.parametrize("distribution", ["uniform", "truncnorm"])
def test_navit_sides_lie_in_range_and_sizes_keep_the_aspect_ratio(distribution):
    cfg = ResolutionConfig(min_side=32, max_side=96, distribution=distribution)
    draws, sizes = np.random.default_rng(1), np.random.default_rng(1)
    for native in [(60, 120), (120, 60), (77, 77), (40, 130)] * 50:
        side = sample_side(cfg, draws)
        assert 32 <= side <= 96
        height, width = train_size(cfg, native, P, sizes, 256)
        aspect = native[1] / native[0]
        assert (height, width) == (round(side / math.sqrt(aspect) / P) * P, round(side * math.sqrt(aspect) / P) * P)
        assert height % P == 0 and width % P == 0


def test_truncnorm_is_biased_low_and_matches_rejection_sampling():
    cfg = ResolutionConfig(min_side=64, max_side=384, distribution="truncnorm")
    rng = np.random.default_rng(2)
    sides = np.array([sample_side(cfg, rng) for _ in range(4000)])
    uniform = np.array([sample_side(ResolutionConfig(min_side=64, max_side=384), rng) for _ in range(4000)])
    assert sides.min() >= 64 and sides.max() <= 384
    assert sides.mean() < uniform.mean() - 30
    assert 0.68 < (sides < 224).mean() < 0.76
    # Reference: N(-1, 1) on the range mapped to [-1, 1], truncated by rejection.
    z = rng.normal(-1.0, 1.0, 80000)
    reference = 64 + (z[np.abs(z) <= 1] + 1) / 2 * 320
    quantiles = [0.1, 0.25, 0.5, 0.75, 0.9]
    assert np.allclose(np.quantile(sides, quantiles), np.quantile(reference, quantiles), atol=10)


def test_navit_never_exceeds_a_row_even_at_extreme_aspect_ratios():
    cfg = ResolutionConfig(min_side=64, max_side=64)   # (64 / 8)^2 = 64 tokens = one row exactly
    rng = np.random.default_rng(3)
    for native in [(45, 91), (91, 45), (10, 1000), (1000, 10), (64, 64)]:
        height, width = train_size(cfg, native, P, rng, max_tokens=64)
        assert (height // P) * (width // P) <= 64
        # Never longer than the rounded size either: tables sized from aspect_size stay valid.
        assert max(height, width) <= max(aspect_size(64, native[1] / native[0], P))


def brute_force_budget(height, width, max_tokens):
    """The most tokens of any grid (rows, cols) that one scale factor t > 0 reaches, by exact intervals."""
    def scales(count, length):   # the t with max(1, floor(t * length / P)) == count, as [low, high)
        return (Fraction(count * P, length) if count > 1 else Fraction(0)), Fraction((count + 1) * P, length)

    best = (0, None)
    for rows in range(1, max_tokens + 1):
        for cols in range(1, max_tokens // rows + 1):
            (a, b), (c, d) = scales(rows, height), scales(cols, width)
            if max(a, c) < min(b, d) and rows * cols > best[0]:
                best = (rows * cols, (rows, cols))
    return best


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 2000), st.integers(1, 200))
def test_budget_is_the_largest_aspect_preserving_grid_that_fits(height, width, max_tokens):
    rows, cols = budget_grid((height, width), P, max_tokens)
    tokens, grid = brute_force_budget(height, width, max_tokens)
    assert (rows, cols) == grid and rows * cols == tokens <= max_tokens
    # Never worse than Pix2Struct's closed form.
    scale = math.sqrt(max_tokens * P * P / (height * width))
    closed_rows = max(1, min(math.floor(scale * height / P), max_tokens))
    closed_cols = max(1, min(math.floor(scale * width / P), max_tokens))
    assert rows * cols >= closed_rows * closed_cols


def test_budget_beats_the_closed_form_where_flooring_wastes_tokens():
    # 2:1 with 10 tokens: the closed form gives 2 x 4 = 8; scaling a little further gives 2 x 5.
    assert budget_grid((100, 200), P, 10) == (2, 5)
    assert budget_grid((64, 64), P, 64) == (8, 8)


def test_eval_sizes_from_explicit_sizes():
    grid = EvalGridConfig(sizes=[[64, 64], [32, 96], [64, 64]])
    assert eval_sizes(grid, P) == [(64, 64), (32, 96)]
    with pytest.raises(ConfigError, match="60x64 is not a positive multiple of patch_size 8") as info:
        eval_sizes(EvalGridConfig(sizes=[[64, 64], [32, 96], [60, 64]]), P)
    assert info.value.key == "grid.sizes[2]"
    with pytest.raises(ConfigError) as info:
        eval_sizes(EvalGridConfig(sizes=[[0, 64]]), P)
    assert info.value.key == "grid.sizes[0]"


def test_explicit_sizes_follow_the_sides_by_aspects_product_without_repeats():
    # Every aspect at the small sides, only the square where an image costs the most.
    grid = EvalGridConfig(sides=[64], aspects=[1.0, 2.0], sizes=[[128, 128], [64, 64]])
    assert eval_sizes(grid, P) == [(64, 64), (48, 88), (128, 128)]


def test_eval_sizes_from_sides_and_aspects():
    sizes = eval_sizes(EvalGridConfig(sides=[64, 128], aspects=[1.0, 2.0, 1 / 3]), P)
    assert sizes == [(64, 64), (48, 88), (112, 40), (128, 128), (88, 184), (224, 72)]
    for (height, width), (side, aspect) in zip(sizes, [(s, a) for s in (64, 128) for a in (1.0, 2.0, 1 / 3)]):
        assert abs(height - side / math.sqrt(aspect)) <= P / 2 and abs(width - side * math.sqrt(aspect)) <= P / 2
    assert eval_sizes(EvalGridConfig(sides=[48]), P) == [(48, 48)]
    assert eval_sizes(EvalGridConfig(), P) == [(s, s) for s in DEFAULT_SIDES]
    with pytest.raises(ConfigError) as info:
        eval_sizes(EvalGridConfig(sides=[64, 4]), P)
    assert info.value.key == "grid.sides[1]"
