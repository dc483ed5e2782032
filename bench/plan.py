"""The plan: everything an experiment derives to, worked out once before anything runs.

``make_plan(experiment)`` checks all that needs more than one config section, each once: the
patch size against every resolution and eval size, the batch rows against the ranks, each
variant against the registry (its name, its options, one model built), the baseline against the
labels. It derives, once each: the eval grid, every variant's training resolution (a class that
declares ``fixed_square_training`` trains at one square side), range, reference side and options
(grid-dependent defaults come from the embedding class's ``grid_defaults`` hook), the eval
points per task, the cells (variant x task x seed), their identities and the config hash. The
runner, the store and the report read these; none recomputes them. A config that plans is safe
to run: nothing here writes anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal

import torch

from .config import DataConfig, Experiment, ResolutionConfig, TrainConfig, VariantSpec
from .config.loader import convert, join, suggest
from .config.schema import VARIANT_KEYS
from .data import DATA_VERSION, aspect_size, budget_grid, check_resolution, eval_sizes, rows_per_step, solvable
from .errors import ConfigError
from .model import build_model
from .posembed import GridLimits, list_variants, variant_class, variant_options

# Keys that never change a cell's numbers: editing them must keep reusing finished cells.
# The variant list and seeds choose *which* cells exist; each cell checks its own variant.
HASH_EXCLUDED = ("name", "variants", "baseline", "seeds", "train.num_workers", "train.checkpoint_every",
                 "eval.num_workers", "data.download")
DEFAULT_BASELINE = "vit_1d_interp"   # the vanilla ViT: NaViT's baseline
IMAGEFOLDER_ELONGATION = 4.0  # assumed max(W/H, H/W) of real photos when sizing absolute tables


@dataclass(frozen=True)
class TrainResolution:
    """A variant's training resolution as its eval rows see it; sides are sqrt(H * W) in px."""
    mode: str
    min_side: int
    max_side: int
    reference_side: int   # the square eval side reported as "the training resolution"


@dataclass(frozen=True)
class EvalPoint:
    """One eval size as one variant sees it on one task: the columns of an eval row that need no
    model."""
    eval_height: int
    eval_width: int
    aspect: float      # W / H
    # round(sqrt(H * W)): a 32x128 image counts as side 64, since that sets the token count,
    # the quantity a resolution range really bounds.
    side: int
    num_tokens: int
    in_train_range: bool
    train_range: Literal["below", "in", "above"]
    at_train_res: bool
    # The patch grid is large enough for the task's label to show (bench.data.solvable): sizes
    # that are not are reported apart, never averaged into a regime.
    solvable: bool

    @property
    def size(self) -> tuple[int, int]:
        return self.eval_height, self.eval_width


@dataclass(frozen=True)
class VariantPlan:
    """One variant entry, derived: shared by its cells at every seed."""
    spec: VariantSpec                   # every option spelled out, as the model is built with them
    resolution: ResolutionConfig        # its training policy: its own, else train.resolution
    train_resolution: TrainResolution
    eval_points: dict[str, tuple[EvalPoint, ...]]  # per task, the eval grid in grid order
    identity: dict                      # what a stored cell of this label must match, besides the hash


@dataclass(frozen=True)
class CellPlan:
    """One (variant, task, seed) cell: everything needed to train, evaluate and record it."""
    variant: VariantPlan
    task: str          # the synthetic task, or the dataset's name
    seed: int
    config_hash: str
    train: TrainConfig  # the experiment's, with this task's steps

    @property
    def label(self) -> str:
        return self.variant.spec.label

    @property
    def name(self) -> str:
        return cell_name(self.label, self.task, self.seed)

    @property
    def eval_points(self) -> tuple[EvalPoint, ...]:
        return self.variant.eval_points[self.task]


@dataclass(frozen=True)
class Plan:
    experiment: Experiment
    variants: tuple[VariantPlan, ...]
    sizes: tuple[tuple[int, int], ...]  # the eval grid's distinct (H, W), in grid order
    baseline: str | None                # the label the report compares every variant with
    tasks: tuple[str, ...]              # the synthetic tasks, or the dataset's name
    config: dict         # the resolved config as plain data (options spelled out, baseline resolved)
    hashed_config: dict  # the part of it that changes numbers, plus the data pipeline's version
    config_hash: str

    def cells(self, labels: list[str] | None = None, seeds: list[int] | None = None,
              shard: tuple[int, int] = (0, 1)) -> list[CellPlan]:
        """The cells of these variant labels (default: all) and seeds (default: the experiment's)
        on every task, seed-major, then task by task, so that early results already compare
        variants; then every N-th cell from I (``shard`` = (I, N)): shards are disjoint and cover
        every cell."""
        index, count = shard
        train = {task: self.experiment.train.for_task(task) for task in self.tasks}
        cells = [CellPlan(variant, task, seed, self.config_hash, train[task])
                 for seed in (self.experiment.seeds if seeds is None else seeds) for task in self.tasks
                 for variant in self.variants if labels is None or variant.spec.label in labels]
        return cells[index::count]

    def variant(self, label: str) -> VariantPlan:
        return next(v for v in self.variants if v.spec.label == label)

    @property
    def identities(self) -> dict[str, dict]:
        return {v.spec.label: v.identity for v in self.variants}


def cell_name(label: str, task: str, seed: int) -> str:
    return f"{label}__{task}__{seed}"


def cell_task(dataset: str, task: str) -> str:
    """The task a cell records: the synthetic task, or the dataset's name (a real one has one)."""
    return task if dataset == "synthetic" else dataset


def cell_identity(name: str, options: dict, resolution: ResolutionConfig) -> dict:
    """What a stored cell must share with the variant entry that would re-run it, besides the
    config hash: registry name, options and training policy, JSON-normalised as a cell file
    holds them."""
    plain = {"base_variant": name, "options": options, "resolution": dataclasses.asdict(resolution)}
    return json.loads(json.dumps(plain))


def make_plan(experiment: Experiment, world_size: int = 1) -> Plan:
    """Check and derive everything (see the module docstring); ConfigError names the culprit."""
    patch, train = experiment.model.patch_size, experiment.train
    try:
        sizes = tuple(eval_sizes(experiment.eval.grid, patch))
    except ConfigError as error:
        raise error.under("eval") from None
    try:
        rows_per_step(train.tokens_per_batch, train.max_seq_len, world_size)
    except ConfigError as error:
        raise error.under("train") from None
    largest_eval = max(max(h, w) for h, w in sizes) // patch
    tasks = tuple(cell_task(experiment.data.name, task) for task in experiment.data.tasks)
    _check_task_steps(train.steps, experiment.data)
    variants = tuple(_plan_variant(experiment, spec, sizes, tasks, largest_eval, f"variants[{i}]")
                     for i, spec in enumerate(experiment.variants))
    baseline = _baseline(experiment)
    config = _plain({**dataclasses.asdict(experiment), "baseline": baseline,
                     "variants": [dataclasses.asdict(v.spec) for v in variants]})
    hashed = hashed_config(config)
    return Plan(experiment, variants, sizes, baseline, tasks, config, hashed, config_hash(hashed))


def _check_task_steps(steps: int | dict[str, int], data: DataConfig) -> None:
    """A mapping of steps gives every task of data.task its own, and only those."""
    if not isinstance(steps, dict):
        return
    if data.name != "synthetic":
        raise ConfigError("train.steps", f"is a mapping per task, which only synthetic data has; dataset "
                                         f"{data.name!r} has one task: give an integer")
    extra = [task for task in steps if task not in data.tasks]
    if extra:
        raise ConfigError(f"train.steps.{extra[0]}", f"is not a task of data.task {list(data.tasks)}")
    missing = [task for task in data.tasks if task not in steps]
    if missing:
        raise ConfigError("train.steps", f"gives no steps for task {missing[0]!r} of data.task; list every task")


def _plan_variant(experiment: Experiment, spec: VariantSpec, sizes, tasks: tuple[str, ...], largest_eval: int,
                  where: str) -> VariantPlan:
    patch, model = experiment.model.patch_size, experiment.model
    valid = list_variants()
    if spec.name not in valid:
        raise ConfigError(where, f"unknown variant {spec.name!r}{suggest(spec.name, valid)}; valid variants: "
                                 f"{', '.join(valid)}")
    allowed = variant_options(spec.name)
    for key in spec.options:
        if key not in allowed:
            valid_keys = [*VARIANT_KEYS, *allowed]
            raise ConfigError(join(where, str(key)), f"unknown option for {spec.name}{suggest(str(key), valid_keys)}; "
                                                     f"valid: {', '.join(valid_keys)}")
    cls = variant_class(spec.name)
    if spec.resolution is None and cls.fixed_square_training:
        # A vanilla ViT trains at one square side: the reference side of the experiment's resolution.
        side = reference_side(experiment, spec, experiment.train.resolution,
                              train_range(experiment.train.resolution, patch), sizes)
        spec = dataclasses.replace(spec, resolution=ResolutionConfig(mode="fixed", side=side))
    resolution = spec.resolution or experiment.train.resolution
    try:  # keys come back relative to the section holding "resolution"
        check_resolution(resolution, patch, experiment.train.max_seq_len)
    except ConfigError as error:
        raise error.under(where if spec.resolution is not None else "train") from None
    low, high = train_range(resolution, patch)
    reference = reference_side(experiment, spec, resolution, (low, high), sizes)
    hints = typing.get_type_hints(cls.__init__)
    explicit = {key: convert(hints.get(key, Any), value, join(where, key)) for key, value in spec.options.items()}
    limits = GridLimits(largest_train=train_grid_limit(experiment.data, resolution, patch),
                        largest_eval=largest_eval, train_square=high // patch)
    # Every option spelled out, so a stored cell records exactly what it was built with.
    options = {**allowed, **cls.grid_defaults(limits), **explicit}
    try:
        with torch.random.fork_rng(devices=[]):  # validation must not move the global RNG
            build_model(spec.name, 2, patch, model.dim, model.depth, model.heads, mlp_ratio=model.mlp_ratio,
                        pool=model.pool, attention=model.attention, **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(where, str(error)) from None
    trained = TrainResolution(resolution.mode, low, high, reference)
    points = {task: tuple(eval_point(h, w, patch, trained, task) for h, w in sizes) for task in tasks}
    return VariantPlan(dataclasses.replace(spec, options=options), resolution, trained, points,
                       cell_identity(spec.name, options, resolution))


def train_range(resolution: ResolutionConfig, patch_size: int) -> tuple[int, int]:
    """(min_side, max_side) of the training images' equal-area sides sqrt(H*W), in px."""
    if resolution.mode == "fixed":
        return resolution.side, resolution.side
    if resolution.mode == "budget":  # every image is scaled up to max_tokens patches
        side = round(math.sqrt(resolution.max_tokens)) * patch_size
        return side, side
    return resolution.min_side, resolution.max_side


def reference_side(experiment: Experiment, spec: VariantSpec, resolution: ResolutionConfig,
                   trained: tuple[int, int], sizes) -> int:
    """The square eval side that stands for "the training resolution" of a variant trained on
    the side range ``trained`` under ``resolution``."""
    squares = sorted({h for h, w in sizes if h == w})
    if experiment.eval.reference_side is not None and spec.resolution is None:
        side = experiment.eval.reference_side
        if side not in squares:
            raise ConfigError("eval.reference_side", f"{side} is not a square size of the eval grid "
                                                     f"(squares: {', '.join(map(str, squares)) or 'none'})")
        return side
    low, high = trained
    if resolution.mode == "fixed":
        if low not in squares:
            raise ConfigError("eval.grid", f"has no {low}x{low} size, the fixed training resolution of "
                                           f"{spec.label}; add it so accuracy at training resolution is measured")
        return low
    inside = [s for s in squares if low <= s <= high]
    if not inside:
        raise ConfigError("eval.grid", f"has no square size within the training range [{low}, {high}]; "
                                       "add one or set eval.reference_side")
    middle = (low + high) / 2
    return min(inside, key=lambda s: (abs(s - middle), s))


def train_grid_limit(data: DataConfig, resolution: ResolutionConfig, patch: int) -> int:
    """The longest side, in patches, of any training image under this resolution policy."""
    if resolution.mode == "fixed":
        return resolution.side // patch
    elongation = native_elongation(data)
    if resolution.mode == "budget":
        return max(budget_grid((1, elongation), patch, resolution.max_tokens))
    return max(aspect_size(resolution.max_side, elongation, patch)) // patch


def native_elongation(data: DataConfig) -> float:
    """max(W/H, H/W) of the dataset's images: known for synthetic scenes and CIFAR; for an image
    folder an assumption (a longer image fails with an error that names max_grid)."""
    if data.name == "synthetic":
        low, high = data.aspect_range
        return max(high, 1 / low)
    return 1.0 if data.name.startswith("cifar") else IMAGEFOLDER_ELONGATION


def eval_point(height: int, width: int, patch: int, trained: TrainResolution, task: str) -> EvalPoint:
    side = round(math.sqrt(height * width))
    low, high = trained.min_side, trained.max_side
    return EvalPoint(height, width, width / height, side, (height // patch) * (width // patch),
                     low <= side <= high, "below" if side < low else "above" if side > high else "in",
                     height == width == trained.reference_side, solvable(task, height // patch, width // patch))


def default_baseline(variants: Iterable[tuple[str, str]]) -> str | None:
    """The baseline of an experiment that names none: the first (label, registry name) that is
    the vanilla ViT, if any."""
    return next((label for label, name in variants if name == DEFAULT_BASELINE), None)


def _baseline(experiment: Experiment) -> str | None:
    labels = [v.label for v in experiment.variants]
    if experiment.baseline is None:
        return default_baseline((v.label, v.name) for v in experiment.variants)
    if experiment.baseline not in labels:
        raise ConfigError("baseline", f"{experiment.baseline!r} is not a variant label of this experiment"
                                      f"{suggest(experiment.baseline, labels)}; labels: {', '.join(labels)}")
    return experiment.baseline


# ---- the hash that keeps results of different configs apart ---------------------------------

def hashed_config(config: dict) -> dict:
    """The part of a resolved config that changes every cell's numbers, with the data pipeline's
    version: what every cell stores."""
    return _split_config(config)[0]


def unhashed_config(config: dict) -> dict:
    """The rest of a resolved config (the HASH_EXCLUDED keys it has): which cells a run has and
    how it runs them. A results folder keeps it in config.json, apart from the cells' part."""
    return _split_config(config)[1]


def _split_config(config: dict) -> tuple[dict, dict]:
    hashed, rest = json.loads(json.dumps({**config, "data_version": DATA_VERSION})), {}
    for dotted in HASH_EXCLUDED:
        *parents, last = dotted.split(".")
        section = hashed
        for key in parents:
            section = section.get(key, {})
        if isinstance(section, dict) and last in section:
            kept = rest
            for key in parents:
                kept = kept.setdefault(key, {})
            kept[last] = section.pop(last)
    return hashed, rest


def config_hash(hashed: dict) -> str:
    blob = json.dumps(hashed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
