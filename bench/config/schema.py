"""The experiment schema: one dataclass per YAML section, and ``load_experiment``.

The loader checks types and Literal choices while it builds a section; ``__post_init__`` checks
the values a type cannot express. A section only checks itself: whatever needs two sections (the
patch size against the resolutions, the variants against the registry, the baseline against the
labels) is checked by the plan (bench/plan.py), once. Keys in a section's ConfigError are relative
to it; the loader prefixes the section's path.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError
from .loader import at_most, below_one, build, describe, join, non_negative, positive, positive_items, read_yaml

Dataset = Literal["synthetic", "imagefolder", "cifar10", "cifar100"]
# The order is part of the scene stream key (bench.data.synthetic): append, never reorder.
Task = Literal["abs_position", "rel_position", "control"]
TASKS: tuple[str, ...] = typing.get_args(Task)
# mean: masked mean of each image's tokens; map: masked attention pooling (one learned probe);
# cls: the final state of one learned token per image, packed in its row. bench.model builds
# exactly these (it imports POOLS), so the config cannot offer a pool the model lacks.
Pool = Literal["mean", "map", "cls"]
POOLS: tuple[str, ...] = typing.get_args(Pool)

# Variant entries may carry these keys besides the embedding's own options.
VARIANT_KEYS = ("name", "label", "resolution")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")


# ---- data sections (bench.data reads them; docs/data.md) -------------------------------------

@dataclass
class DataConfig:
    """YAML section ``data``."""
    name: Dataset = "synthetic"
    task: Task | list[Task] = "abs_position"   # synthetic only; a list: every cell runs on each
    root: str | None = None             # imagefolder / cifar root
    test_root: str | None = None        # imagefolder: a separate test folder; else a held-out share of root
    test_fraction: float = 0.1          # imagefolder without test_root: share of each class held out for test
    download: bool = False              # cifar: fetch into root when missing
    train_size: int = 100_000           # synthetic scenes per split (scenes are indexed, never stored)
    test_size: int = 1_000
    seed: int = 0                       # synthetic scene seed; train and test use disjoint streams
    aspect_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # synthetic native W / H

    def __post_init__(self):
        if isinstance(self.task, list):
            if self.name != "synthetic":
                raise ConfigError("task", f"lists tasks, which only synthetic data has; dataset {self.name!r} "
                                          f"has one task, its own labels")
            if not self.task:
                raise ConfigError("task", "is empty; list at least one task")
            if len(set(self.task)) != len(self.task):
                raise ConfigError("task", f"tasks repeat: {self.task}")
        if self.name != "synthetic" and not self.root:
            raise ConfigError("root", f"dataset {self.name!r} needs a root folder")
        below_one(self, "test_fraction", zero=False)
        positive(self, "train_size", "test_size")
        non_negative(self, "seed")
        if len(self.aspect_range) != 2 or not 0 < self.aspect_range[0] <= self.aspect_range[1]:
            raise ConfigError("aspect_range", f"must be [low, high] with 0 < low <= high, got {self.aspect_range}")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The synthetic tasks, in the order given (one when ``task`` names one)."""
        return tuple(self.task) if isinstance(self.task, list) else (self.task,)


@dataclass
class ResolutionConfig:
    """YAML section ``train.resolution``: the size each training image is rendered or resized to.

    "side" means sqrt(H * W) wherever an aspect ratio is kept, so the token count depends on the
    side alone, whatever the aspect ratio.
    """
    mode: Literal["fixed", "navit", "budget"] = "navit"
    side: int = 64                      # fixed: square side in px
    min_side: int = 32                  # navit: side range in px
    max_side: int = 64
    distribution: Literal["uniform", "truncnorm"] = "uniform"   # navit; truncnorm is biased to low sides
    max_tokens: int = 64                # budget: patch grid limit (Pix2Struct's max_patches)

    def __post_init__(self):
        positive(self, "side", "min_side")
        at_most(self, "min_side", "max_side")
        positive(self, "max_tokens")


@dataclass
class DropConfig:
    """YAML section ``train.token_drop``: NaViT's continuous token dropping (training only)."""
    kind: Literal["none", "constant", "beta"] = "none"
    rate: float = 0.0                   # constant: the share of each image's tokens dropped
    alpha: float = 2.0                  # beta: drop rate ~ Beta(alpha, beta), mean alpha / (alpha + beta)
    beta: float = 6.0

    def __post_init__(self):
        below_one(self, "rate", zero=True)
        positive(self, "alpha", "beta")


@dataclass
class EvalGridConfig:
    """YAML section ``eval.grid``: sides x aspects, explicit sizes, or both (sides x aspects first).

    aspect = W / H and side = sqrt(H * W): H = side / sqrt(aspect), W = side * sqrt(aspect), each
    rounded to the nearest multiple of the patch size. Explicit sizes add what a product cannot,
    e.g. only the square at the largest sides, where an image costs the most. With neither sizes
    nor sides, the grid is bench.data.resolution.DEFAULT_SIDES x (1.0,).
    """
    sizes: list[list[int]] | None = None    # [[H, W], ...]
    sides: list[int] | None = None
    aspects: list[float] | None = None      # default [1.0] when sides are given

    def __post_init__(self):
        if self.aspects is not None and self.sides is None:
            raise ConfigError("aspects", "aspects need sides")
        for i, size in enumerate(self.sizes or []):
            if len(size) != 2:
                raise ConfigError(f"sizes[{i}]", f"must be [H, W], got {size}")
        for name in ("sizes", "sides", "aspects"):
            if getattr(self, name) == []:
                raise ConfigError(name, "is empty")
        positive_items(self, "sides")
        positive_items(self, "aspects")


# ---- the model, the variants, training and evaluation ----------------------------------------

@dataclass
class ModelConfig:
    patch_size: int = 8
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    pool: Pool = "mean"
    attention: Literal["sdpa", "flex"] = "sdpa"     # flex: FlexAttention, for CUDA

    def __post_init__(self):
        positive(self, "patch_size", "dim", "depth", "heads", "mlp_ratio")
        if self.dim % self.heads:
            raise ConfigError("heads", f"dim={self.dim} must be divisible by heads={self.heads}")


@dataclass
class VariantSpec:
    """One entry of ``variants``: a registry name plus its options.

    As loaded, ``options`` holds the options the YAML gives; the plan checks them against the
    registry and spells out every option (``bench.plan.VariantPlan.spec``). ``resolution`` is
    None unless the variant trains under its own resolution policy (the fixed-resolution ViT
    baseline of NaViT's section 3.4).
    """
    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    resolution: ResolutionConfig | None = None

    @classmethod
    def from_yaml(cls, raw, where: str) -> "VariantSpec":
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            raise ConfigError(where, f"expected a variant name or a mapping, got {describe(raw)}")
        name = raw.get("name")
        if not isinstance(name, str):
            raise ConfigError(join(where, "name"), "every variant mapping needs a name (a string)")
        options = {key: value for key, value in raw.items() if key not in VARIANT_KEYS}
        label = raw.get("label", "+".join([name, *(str(v) if isinstance(v, str) else f"{k}={v}"
                                                   for k, v in options.items())]))
        if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
            raise ConfigError(join(where, "label"), f"{label!r} is not a usable label: use letters, digits "
                                                    "and _ . + = - (it names the result files)")
        resolution = raw.get("resolution")
        if resolution is not None:
            resolution = build(ResolutionConfig, resolution, join(where, "resolution"))
        return cls(name, label, options, resolution)


@dataclass
class TrainConfig:
    # An integer, or the steps of each task of data.task (every one listed): tasks learn at
    # different speeds, and the budget is equal between variants within a task.
    steps: int | dict[Task, int] = 300
    tokens_per_batch: int = 2048       # real tokens per optimizer step, shared by every variant
    max_seq_len: int = 256             # packed row length
    optimizer: Literal["adamw", "sgd"] = "adamw"    # beta1 is SGD's momentum
    lr: float = 1e-3
    min_lr: float = 0.0                # where the schedule ends
    schedule: Literal["cosine", "linear", "constant"] = "cosine"   # after linear warmup
    warmup_steps: int = 0
    weight_decay: float = 0.05         # on weight matrices only, never on norms, biases or positions
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float | None = 1.0      # max global grad norm; null disables
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    token_drop: DropConfig = field(default_factory=DropConfig)
    num_workers: int = 0               # DataLoader workers; the batches do not depend on it
    checkpoint_every: int = 100        # steps between mid-cell checkpoints; 0: only on Ctrl-C

    def __post_init__(self):
        positive(self, "tokens_per_batch", "max_seq_len", "lr")
        non_negative(self, "min_lr", "warmup_steps", "weight_decay", "num_workers", "checkpoint_every")
        if self.tokens_per_batch < self.max_seq_len:
            raise ConfigError("tokens_per_batch", f"{self.tokens_per_batch} is less than one packed row "
                                                  f"(max_seq_len={self.max_seq_len})")
        at_most(self, "min_lr", "lr")
        steps = self.steps if isinstance(self.steps, dict) else {None: self.steps}
        if not steps:
            raise ConfigError("steps", "is an empty mapping; give an integer or each task's steps")
        for task, value in steps.items():
            key = "steps" if task is None else f"steps.{task}"
            if not value > 0:
                raise ConfigError(key, f"must be positive, got {value}")
            if self.warmup_steps > value:
                raise ConfigError("warmup_steps", f"{self.warmup_steps} is more than {key}={value}")
        below_one(self, "beta1", zero=True)
        below_one(self, "beta2", zero=True)
        if self.grad_clip is not None:
            positive(self, "grad_clip")

    def steps_for(self, task: str) -> int:
        """The steps of a cell of ``task`` (the plan has checked that a mapping lists it)."""
        return self.steps[task] if isinstance(self.steps, dict) else self.steps

    def for_task(self, task: str) -> "TrainConfig":
        """This section with the steps of ``task``: what a cell of it trains with."""
        return replace(self, steps=self.steps_for(task))


@dataclass
class EvalConfig:
    grid: EvalGridConfig = field(default_factory=EvalGridConfig)
    tokens_per_batch: int = 8192
    max_seq_len: int = 1024
    # The square eval side reported as "training resolution"; null: the fixed training side,
    # else the in-range square grid side closest to the middle of the training range.
    reference_side: int | None = None
    num_workers: int = 0

    def __post_init__(self):
        positive(self, "tokens_per_batch", "max_seq_len")
        non_negative(self, "num_workers")
        if self.reference_side is not None:
            positive(self, "reference_side")


@dataclass
class Experiment:
    name: str
    variants: list[VariantSpec]
    # The variant label the report compares every other with; null: the vit_1d_interp entry,
    # if there is one. It changes no number, so it is not part of the config hash.
    baseline: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: Literal["cpu", "cuda"] = "cpu"   # cuda: bf16 autocast
    # A smoke run (too short to converge): its report and figures say so, and not to cite them.
    # Hashed like any key, so every cell carries it and a smoke cell never joins real results.
    smoke: bool = False

    def __post_init__(self):
        if not LABEL_PATTERN.fullmatch(self.name):
            raise ConfigError("name", f"{self.name!r}: use letters, digits and _ . + = - (it names the results folder)")
        if not self.variants:
            raise ConfigError("variants", "list at least one variant")
        labels: dict[str, int] = {}
        for i, spec in enumerate(self.variants):
            if spec.label in labels:
                raise ConfigError(f"variants[{i}].label", f"{spec.label!r} is also the label of "
                                                          f"variants[{labels[spec.label]}]; labels must be unique")
            labels[spec.label] = i
        check_seeds(self.seeds, "seeds")


def check_seeds(seeds: list[int], key: str) -> None:
    if not seeds:
        raise ConfigError(key, "list at least one seed")
    if any(seed < 0 for seed in seeds):
        raise ConfigError(key, f"seeds must be non-negative, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(key, f"seeds repeat: {seeds}")


def load_experiment(path: str | Path) -> Experiment:
    """Parse and type-check an experiment file (``name`` defaults to the file's stem). Raises
    BenchError naming the culprit; ``bench.plan.make_plan`` checks the rest."""
    path = Path(path)
    return build(Experiment, {"name": path.stem, **read_yaml(path)})
