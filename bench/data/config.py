"""Config sections of the data room. Each validates its own values on construction.

Keys in ConfigError are relative to the section (the runner prefixes the section's path).
Checks that need the patch size live in the functions that receive it (eval_sizes, TrainBatches).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError

DATASETS = ("synthetic", "imagefolder", "cifar10", "cifar100")
TASKS = ("abs_position", "rel_position", "control")
RESOLUTION_MODES = ("fixed", "navit", "budget")
SIDE_DISTRIBUTIONS = ("uniform", "truncnorm")
DROP_KINDS = ("none", "constant", "beta")
# Bumped whenever the same config gives other images or batches (renderer, batch drawing), so a
# results folder never mixes cells of two versions: it is part of every cell's config hash.
DATA_VERSION = 2


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"unknown value {value!r}; choose one of {', '.join(allowed)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(key, f"must be > 0 (got {value})")


@dataclass
class DataConfig:
    """YAML section ``data``."""
    name: str = "synthetic"
    task: str = "abs_position"          # synthetic only
    root: str | None = None             # imagefolder / cifar root
    test_root: str | None = None        # imagefolder: a separate test folder; else a held-out share of root
    test_fraction: float = 0.1          # imagefolder without test_root: share of each class held out for test
    download: bool = False              # cifar: fetch into root when missing
    train_size: int = 100_000           # synthetic scenes per split (scenes are indexed, never stored)
    test_size: int = 1_000
    seed: int = 0                       # synthetic scene seed; train and test use disjoint streams
    aspect_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # synthetic native W / H

    def __post_init__(self):
        _choice("name", self.name, DATASETS)
        _choice("task", self.task, TASKS)
        if self.name != "synthetic" and not self.root:
            raise ConfigError("root", f"dataset {self.name!r} needs a root folder")
        if not 0 < self.test_fraction < 1:
            raise ConfigError("test_fraction", f"must be in (0, 1) (got {self.test_fraction})")
        _positive("train_size", self.train_size)
        _positive("test_size", self.test_size)
        if self.seed < 0:
            raise ConfigError("seed", f"must be >= 0 (got {self.seed})")
        if len(self.aspect_range) != 2 or not 0 < self.aspect_range[0] <= self.aspect_range[1]:
            raise ConfigError("aspect_range", f"must be [low, high] with 0 < low <= high (got {self.aspect_range})")


@dataclass
class ResolutionConfig:
    """YAML section ``train.resolution``: the size each training image is rendered or resized to.

    "side" means sqrt(H * W) wherever an aspect ratio is kept, so the token count depends on the
    side alone, whatever the aspect ratio.
    """
    mode: str = "navit"                 # fixed | navit | budget
    side: int = 64                      # fixed: square side in px
    min_side: int = 32                  # navit: side range in px
    max_side: int = 64
    distribution: str = "uniform"       # navit: uniform | truncnorm (biased to low sides)
    max_tokens: int = 64                # budget: patch grid limit (Pix2Struct's max_patches)

    def __post_init__(self):
        _choice("mode", self.mode, RESOLUTION_MODES)
        _choice("distribution", self.distribution, SIDE_DISTRIBUTIONS)
        _positive("side", self.side)
        _positive("min_side", self.min_side)
        if self.min_side > self.max_side:
            raise ConfigError("min_side", f"must be <= max_side (got {self.min_side} > {self.max_side})")
        _positive("max_tokens", self.max_tokens)


@dataclass
class DropConfig:
    """YAML section ``train.token_drop``: NaViT's continuous token dropping (training only)."""
    kind: str = "none"                  # none | constant | beta
    rate: float = 0.0                   # constant: the share of each image's tokens dropped
    alpha: float = 2.0                  # beta: drop rate ~ Beta(alpha, beta), mean alpha / (alpha + beta)
    beta: float = 6.0

    def __post_init__(self):
        _choice("kind", self.kind, DROP_KINDS)
        if not 0 <= self.rate < 1:
            raise ConfigError("rate", f"must be in [0, 1) (got {self.rate})")
        _positive("alpha", self.alpha)
        _positive("beta", self.beta)


@dataclass
class EvalGridConfig:
    """YAML section ``eval.grid``: explicit sizes, or sides x aspects.

    aspect = W / H and side = sqrt(H * W): H = side / sqrt(aspect), W = side * sqrt(aspect), each
    rounded to the nearest multiple of the patch size. With neither sizes nor sides, the grid is
    DEFAULT_SIDES x (1.0,).
    """
    sizes: list[list[int]] | None = None    # [[H, W], ...]
    sides: list[int] | None = None
    aspects: list[float] | None = None      # default [1.0] when sides are given

    def __post_init__(self):
        if self.sizes is not None and self.sides is not None:
            raise ConfigError("sizes", "give either sizes or sides (x aspects), not both")
        if self.aspects is not None and self.sides is None:
            raise ConfigError("aspects", "aspects need sides")
        for i, size in enumerate(self.sizes or []):
            if len(size) != 2:
                raise ConfigError(f"sizes[{i}]", f"must be [H, W] (got {size})")
        for name in ("sizes", "sides", "aspects"):
            if getattr(self, name) == []:
                raise ConfigError(name, "is empty")
        for i, side in enumerate(self.sides or []):
            _positive(f"sides[{i}]", side)
        for i, aspect in enumerate(self.aspects or []):
            _positive(f"aspects[{i}]", aspect)
