"""Resolution policies: the (H, W) each image is rendered or resized to.

Wherever an aspect ratio (W / H) is kept, "side" means sqrt(H * W), so the token count follows
the side whatever the aspect ratio. Every size is a positive multiple of the patch size.
"""
from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np

from ..config import EvalGridConfig, ResolutionConfig
from ..errors import ConfigError

DEFAULT_SIDES = (32, 48, 64, 96, 128, 192, 256)   # eval grid when neither sizes nor sides are given
# NaViT's best side distribution was a truncated normal biased to low resolutions. Ours, on the
# side range mapped to [-1, 1]: a normal centred on min_side with half the range as its std,
# truncated to the range (72% of the draws fall in the lower half).
TRUNCNORM_MEAN, TRUNCNORM_STD = -1.0, 1.0


def round_to_patch(length: float, patch_size: int) -> int:
    """Nearest positive multiple of the patch size."""
    return max(1, round(length / patch_size)) * patch_size


def aspect_size(side: float, aspect: float, patch_size: int) -> tuple[int, int]:
    """(H, W) with sqrt(H * W) = side and W / H = aspect, before rounding each to the patch."""
    root = math.sqrt(aspect)
    return round_to_patch(side / root, patch_size), round_to_patch(side * root, patch_size)


def sample_side(cfg: ResolutionConfig, rng: np.random.Generator) -> float:
    """A side in [min_side, max_side] from the configured distribution (one draw from rng)."""
    return float(sample_sides(cfg, rng, 1)[0])


def sample_sides(cfg: ResolutionConfig, rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` sides, as ``count`` calls of sample_side would draw them."""
    u = rng.random(count)
    if cfg.distribution == "truncnorm":
        normal = NormalDist(TRUNCNORM_MEAN, TRUNCNORM_STD)
        low, high = normal.cdf(-1.0), normal.cdf(1.0)
        # Inverse-CDF sampling, back to [0, 1].
        u = np.array([(normal.inv_cdf(low + v * (high - low)) + 1) / 2 for v in u.tolist()])
    return cfg.min_side + u * (cfg.max_side - cfg.min_side)


@functools.lru_cache(maxsize=4096)   # a budget run asks for the same few aspect ratios all the time
def budget_grid(native: tuple[int, int], patch_size: int, max_tokens: int) -> tuple[int, int]:
    """The largest aspect-preserving patch grid (rows, cols) with rows * cols <= max_tokens.

    Scaling the image by t gives the grid (floor(t H / p), floor(t W / p)), at least 1 x 1, as in
    Pix2Struct. Both counts grow with t, so the best grid is the fitting one with the most tokens;
    it appears at a scale where one count just reached an integer k, which gives the other count
    exactly in integers. Pix2Struct's closed form t = sqrt(N p^2 / (H W)) can fall short of it.
    The patch size cancels out (t absorbs it): the grid depends on the aspect ratio and N only.
    """
    height, width = native
    k = np.arange(1, max_tokens + 1)
    rows = np.concatenate([k, np.maximum(1, k * height // width)])
    cols = np.concatenate([np.maximum(1, k * width // height), k])
    tokens = rows * cols
    best = int(np.argmax(np.where(tokens <= max_tokens, tokens, 0)))
    return int(rows[best]), int(cols[best])


def budget_size(native: tuple[int, int], patch_size: int, max_tokens: int) -> tuple[int, int]:
    rows, cols = budget_grid(native, patch_size, max_tokens)
    return rows * patch_size, cols * patch_size


def check_patch_multiple(key: str, *lengths: int, patch_size: int) -> None:
    """The one rule for every configured length in px: a positive multiple of the patch size."""
    if any(length < patch_size or length % patch_size for length in lengths):
        raise ConfigError(key, f"{'x'.join(map(str, lengths))} is not a positive multiple of patch_size {patch_size}")


def check_resolution(cfg: ResolutionConfig, patch_size: int, max_seq_len: int) -> None:
    """Patch-dependent checks of the active mode; keys are relative to the train section."""
    p = patch_size
    sides = {"fixed": ("side",), "navit": ("min_side", "max_side"), "budget": ()}[cfg.mode]
    for name in sides:
        check_patch_multiple(f"resolution.{name}", getattr(cfg, name), patch_size=p)
    if cfg.mode == "budget":
        if cfg.max_tokens > max_seq_len:
            raise ConfigError("resolution.max_tokens", f"{cfg.max_tokens} tokens per image, more than "
                                                       f"max_seq_len {max_seq_len}")
        return
    largest_side = cfg.side if cfg.mode == "fixed" else cfg.max_side
    if (largest_side // p) ** 2 > max_seq_len:
        raise ConfigError(f"resolution.{sides[-1]}", f"{largest_side} px gives images of {(largest_side // p) ** 2} "
                                                    f"tokens, more than max_seq_len {max_seq_len}")


def train_size(cfg: ResolutionConfig, native: tuple[int, int], patch_size: int,
               rng: np.random.Generator, max_tokens: int) -> tuple[int, int]:
    """The training size of one image of native size (H, W); never more than max_tokens patches."""
    height, width = train_sizes(cfg, np.array([native]), patch_size, rng, max_tokens)[0].tolist()
    return height, width


def train_sizes(cfg: ResolutionConfig, natives: np.ndarray, patch_size: int, rng: np.random.Generator,
                max_tokens: int) -> np.ndarray:
    """[N, 2] training sizes (H, W) of images of native sizes ``natives`` ([N, 2]), one draw each.

    navit sizes never exceed aspect_size(max_side, aspect): the longest side in patches is known
    before training (absolute embedding tables are sized from it).
    """
    p = patch_size
    if cfg.mode == "fixed":
        return np.full((len(natives), 2), cfg.side)
    if cfg.mode == "budget":
        return np.array([budget_size(native, p, cfg.max_tokens) for native in map(tuple, natives.tolist())],
                        np.int64).reshape(-1, 2)
    side, root = sample_sides(cfg, rng, len(natives)), np.sqrt(natives[:, 1] / natives[:, 0])
    rows, cols = (np.maximum(1, np.rint(length / p)) for length in (side / root, side * root))   # aspect_size
    # Where rounding both sides up overshot, round down instead, which fits since side <= max_side
    # does, unless an extreme aspect ratio raised one count to a single patch.
    over = rows * cols > max_tokens
    down_rows, down_cols = (np.maximum(1, np.floor(length / p)) for length in (side / root, side * root))
    still_over = down_rows * down_cols > max_tokens
    rows = np.where(over, np.where(still_over, np.minimum(down_rows, max_tokens), down_rows), rows)
    cols = np.where(over, np.where(still_over, np.minimum(down_cols, max_tokens), down_cols), cols)
    return np.stack([rows, cols], 1).astype(np.int64) * p


def eval_sizes(grid: EvalGridConfig, patch_size: int) -> list[tuple[int, int]]:
    """Every (H, W) of the grid, in order, without repeats; keys are relative to the eval section."""
    p = patch_size
    sizes = []
    if grid.sides is not None or grid.sizes is None:
        sides = grid.sides or [round_to_patch(side, p) for side in DEFAULT_SIDES]
        for i, side in enumerate(sides):
            check_patch_multiple(f"grid.sides[{i}]", side, patch_size=p)
        sizes = [aspect_size(side, aspect, p) for side in sides for aspect in grid.aspects or [1.0]]
    for i, (height, width) in enumerate(grid.sizes or []):
        check_patch_multiple(f"grid.sizes[{i}]", height, width, patch_size=p)
        sizes.append((height, width))
    return list(dict.fromkeys(sizes))
