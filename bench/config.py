"""Experiment configs: one YAML file -> nested typed dataclasses, fully validated up front.

The loader is generic: it builds any dataclass from its annotations, so the data sections
(``bench.data``'s DataConfig, ResolutionConfig, ...) load exactly like ours. Every mistake is a
ConfigError whose key is the full dotted path of the culprit, e.g. ``train.resolution.min_side``.
Nothing here touches the results directory: a config that loads is safe to run.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import torch
import yaml

from .data import DataConfig, DropConfig, EvalGridConfig, ResolutionConfig, budget_grid, eval_sizes
from .data.config import DATA_VERSION
from .data.resolution import aspect_size, check_resolution
from .errors import BenchError, ConfigError
from .model import POOLS, build_model
from .posembed import build_posembed, list_variants, variant_class, variant_options

# Keys that never change a cell's numbers: editing them must keep reusing finished cells.
# The variant list and seeds choose *which* cells exist; each cell checks its own variant.
HASH_EXCLUDED = ("name", "variants", "seeds", "train.num_workers", "train.checkpoint_every",
                 "eval.num_workers", "data.download")
# Variant entries may carry these keys besides the embedding's own options.
VARIANT_KEYS = ("name", "label", "resolution")
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")
IMAGEFOLDER_ELONGATION = 4.0  # assumed max(W/H, H/W) of real photos when sizing absolute tables


@dataclass
class ModelConfig:
    patch_size: int = 8
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    pool: str = "mean"        # mean | map (masked attention pooling) | cls (a learned token per image)
    attention: str = "sdpa"   # sdpa | flex (FlexAttention, for CUDA)

    def __post_init__(self):
        for key in ("patch_size", "dim", "depth", "heads"):
            _positive(self, key)
        _positive(self, "mlp_ratio")
        _one_of(self, "pool", POOLS)
        _one_of(self, "attention", ("sdpa", "flex"))
        if self.dim % self.heads:
            raise ConfigError("heads", f"dim={self.dim} must be divisible by heads={self.heads}")


@dataclass
class VariantSpec:
    """One positional-embedding variant of the grid: a registry name plus its options.

    ``options`` holds every option the embedding is built with, experiment-dependent defaults
    included (see ``resolve_variant``); ``resolution`` is None unless the variant trains under
    its own resolution policy (the fixed-resolution ViT baseline of NaViT's section 3.4).
    """
    name: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    resolution: ResolutionConfig | None = None
    explicit: tuple[str, ...] = ()  # options the YAML set; the others are resolved defaults

    @classmethod
    def from_yaml(cls, raw, where: str) -> "VariantSpec":
        if isinstance(raw, str):
            raw = {"name": raw}
        if not isinstance(raw, dict):
            raise ConfigError(where, f"expected a variant name or a mapping, got {_describe(raw)}")
        name = raw.get("name")
        if not isinstance(name, str):
            raise ConfigError(_join(where, "name"), "every variant mapping needs a name (a string)")
        valid = list_variants()
        if name not in valid:
            raise ConfigError(where, f"unknown variant {name!r}{_suggest(name, valid)}; valid variants: "
                                     f"{', '.join(valid)}")
        allowed = variant_options(name)
        options = {}
        for key, value in raw.items():
            if key in VARIANT_KEYS:
                continue
            if key not in allowed:
                valid_keys = [*VARIANT_KEYS, *allowed]
                raise ConfigError(_join(where, str(key)), f"unknown option for {name}{_suggest(str(key), valid_keys)}; "
                                                          f"valid: {', '.join(valid_keys)}")
            options[key] = value
        label = raw.get("label", _default_label(name, options))
        if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
            raise ConfigError(_join(where, "label"), f"{label!r} is not a usable label: use letters, digits "
                                                     "and _ . + = - (it names the result files)")
        resolution = raw.get("resolution")
        if resolution is not None:
            resolution = build(ResolutionConfig, resolution, _join(where, "resolution"))
        return cls(name, label, options, resolution, tuple(options))


@dataclass
class TrainConfig:
    steps: int = 300
    tokens_per_batch: int = 2048       # real tokens per optimizer step, shared by every variant
    max_seq_len: int = 256             # packed row length
    optimizer: str = "adamw"           # adamw | sgd (beta1 is SGD's momentum)
    lr: float = 1e-3
    min_lr: float = 0.0                # where the schedule ends
    schedule: str = "cosine"           # cosine | linear | constant, after linear warmup
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
        for key in ("steps", "tokens_per_batch", "max_seq_len", "lr"):
            _positive(self, key)
        for key in ("min_lr", "warmup_steps", "weight_decay", "num_workers", "checkpoint_every"):
            _non_negative(self, key)
        _one_of(self, "optimizer", ("adamw", "sgd"))
        _one_of(self, "schedule", ("cosine", "linear", "constant"))
        if self.tokens_per_batch < self.max_seq_len:
            raise ConfigError("tokens_per_batch", f"{self.tokens_per_batch} is less than one packed row "
                                                  f"(max_seq_len={self.max_seq_len})")
        if self.min_lr > self.lr:
            raise ConfigError("min_lr", f"{self.min_lr} is above lr={self.lr}")
        if self.warmup_steps > self.steps:
            raise ConfigError("warmup_steps", f"{self.warmup_steps} is more than steps={self.steps}")
        for key in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(key, f"must be in [0, 1), got {getattr(self, key)}")
        if self.grad_clip is not None:
            _positive(self, "grad_clip")


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
        _positive(self, "tokens_per_batch")
        _positive(self, "max_seq_len")
        _non_negative(self, "num_workers")
        if self.reference_side is not None:
            _positive(self, "reference_side")


@dataclass
class Experiment:
    name: str
    variants: list[VariantSpec]
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    device: str = "cpu"   # cpu | cuda (bf16 autocast)

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
        _one_of(self, "device", ("cpu", "cuda"))

    def variant(self, label: str) -> VariantSpec:
        return next(v for v in self.variants if v.label == label)

    def resolution_of(self, spec: VariantSpec) -> ResolutionConfig:
        return spec.resolution or self.train.resolution

    def eval_sizes(self) -> list[tuple[int, int]]:
        """The grid's distinct (H, W), in grid order (rounding to patches can merge sizes)."""
        sizes = [tuple(size) for size in eval_sizes(self.eval.grid, self.model.patch_size)]
        return list(dict.fromkeys(sizes))


def check_seeds(seeds: list[int], key: str) -> None:
    if not seeds:
        raise ConfigError(key, "list at least one seed")
    if any(seed < 0 for seed in seeds):
        raise ConfigError(key, f"seeds must be non-negative, got {seeds}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(key, f"seeds repeat: {seeds}")


# ---- loading ---------------------------------------------------------------------------------

def load_experiment(path: str | Path) -> Experiment:
    """Parse, type-check and resolve an experiment file. Raises BenchError naming the culprit."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise BenchError(f"cannot read config {path}: {error.strerror or error}") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise BenchError(f"{where}: YAML does not parse: {problem}") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{path}: expected a YAML mapping of config keys, got {_describe(raw)}")
    raw.setdefault("name", path.stem)
    return resolve(build(Experiment, raw))


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a number (YAML 1.1 wants ``1.0e-3``) and refuses a key
    given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                              re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


def resolve(experiment: Experiment) -> Experiment:
    """Check what needs the whole experiment, and fill experiment-dependent variant options."""
    patch = experiment.model.patch_size
    try:
        sizes = experiment.eval_sizes()
    except ConfigError as error:
        raise error.under("eval") from None
    for i, spec in enumerate(experiment.variants):
        if spec.resolution is None and variant_class(spec.name).fixed_square_training:
            # A vanilla ViT trains at one square resolution: the experiment's reference side.
            spec.resolution = ResolutionConfig(mode="fixed", side=reference_side(experiment, spec, sizes))
        try:  # keys come back relative to the section holding "resolution"
            check_resolution(experiment.resolution_of(spec), patch, experiment.train.max_seq_len)
        except ConfigError as error:
            raise error.under(f"variants[{i}]" if spec.resolution is not None else "train") from None
        resolve_variant(experiment, spec, sizes, f"variants[{i}]")
    return experiment


def train_range(resolution: ResolutionConfig, patch_size: int) -> tuple[int, int]:
    """(min_side, max_side) of the training images' equal-area sides sqrt(H*W), in px."""
    if resolution.mode == "fixed":
        return resolution.side, resolution.side
    if resolution.mode == "budget":  # every image is scaled up to max_tokens patches
        side = round(math.sqrt(resolution.max_tokens)) * patch_size
        return side, side
    return resolution.min_side, resolution.max_side


def reference_side(experiment: Experiment, spec: VariantSpec, sizes: list[tuple[int, int]]) -> int:
    """The square eval side that stands for "the training resolution" of this variant."""
    squares = sorted({h for h, w in sizes if h == w})
    resolution = experiment.resolution_of(spec)
    if experiment.eval.reference_side is not None and spec.resolution is None:
        side = experiment.eval.reference_side
        if side not in squares:
            raise ConfigError("eval.reference_side", f"{side} is not a square size of the eval grid "
                                                     f"(squares: {', '.join(map(str, squares)) or 'none'})")
        return side
    low, high = train_range(resolution, experiment.model.patch_size)
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


def resolve_variant(experiment: Experiment, spec: VariantSpec, sizes, where: str) -> None:
    """Fill options whose right default depends on the experiment, then build the model once.

    ``max_grid`` (absolute tables) defaults to cover every grid the variant will meet, so unseen
    coordinates exist and stay at their initial values rather than crash: that failure mode is
    what the benchmark measures. ``base_grid`` (resized tables) defaults to the square grid of
    the largest training side: a vanilla ViT's own training grid, and for a table resized to every
    grid the largest square grid it trains on.
    """
    patch = experiment.model.patch_size
    allowed = variant_options(spec.name)
    if "max_grid" in allowed and "max_grid" not in spec.options:
        largest_eval = max(max(h, w) for h, w in sizes) // patch
        spec.options["max_grid"] = max(largest_eval, train_grid_limit(experiment, experiment.resolution_of(spec)))
    if "base_grid" in allowed and "base_grid" not in spec.options:
        spec.options["base_grid"] = train_range(experiment.resolution_of(spec), patch)[1] // patch
    reference_side(experiment, spec, sizes)  # validates the grid for every variant
    # Every option spelled out, so a stored cell records exactly what it was built with.
    spec.options = {**allowed, **spec.options}
    model = experiment.model
    try:
        cls = type(build_posembed(spec.name, model.dim, model.heads, model.depth))
        hints = typing.get_type_hints(cls.__init__)
        for key in spec.explicit:
            spec.options[key] = convert(hints.get(key, Any), spec.options[key], _join(where, key))
        with torch.random.fork_rng(devices=[]):  # validation must not move the global RNG
            build_model(spec.name, 2, model.patch_size, model.dim, model.depth, model.heads,
                        mlp_ratio=model.mlp_ratio, pool=model.pool, attention=model.attention, **spec.options)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(where, str(error)) from None


def train_grid_limit(experiment: Experiment, resolution: ResolutionConfig) -> int:
    """The longest side, in patches, of any training image under this resolution policy."""
    patch = experiment.model.patch_size
    if resolution.mode == "fixed":
        return resolution.side // patch
    elongation = native_elongation(experiment.data)
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


# ---- the hash that keeps results of different configs apart ---------------------------------

def to_dict(experiment: Experiment) -> dict:
    """The resolved config as plain JSON-able data (what reports and cells record)."""
    out = _plain(dataclasses.asdict(experiment))
    for entry in out["variants"]:
        entry.pop("explicit")
    return out


def hashed_config(experiment: Experiment) -> dict:
    """The part of the config that changes every cell's numbers, with the data pipeline's version."""
    config = {**to_dict(experiment), "data_version": DATA_VERSION}
    for dotted in HASH_EXCLUDED:
        *parents, last = dotted.split(".")
        section = config
        for key in parents:
            section = section.get(key, {})
        if isinstance(section, dict):
            section.pop(last, None)
    return config


def config_hash(config: dict) -> str:
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (added or removed keys too)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        path = _join(prefix, key)
        a, b = old.get(key, MISSING), new.get(key, MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, path)
        elif a != b:
            keys.append(path)
    return keys


# ---- generic dataclass building --------------------------------------------------------------

def build(cls, raw, where: str = ""):
    """Build dataclass ``cls`` from parsed YAML, checking every key and type against ``cls``."""
    if not isinstance(raw, dict):
        raise ConfigError(where or "config", f"expected a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
    names = [f.name for f in fields]
    for key in raw:
        if key not in names:
            raise ConfigError(_join(where, str(key)), f"unknown key{_suggest(str(key), names)}; "
                                                      f"valid keys: {', '.join(names)}")
    values = {}
    for f in fields:
        path = _join(where, f.name)
        if f.name in raw:
            values[f.name] = convert(hints[f.name], raw[f.name], path)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(path, "required key is missing")
    try:
        return cls(**values)
    except ConfigError as error:
        raise error.under(where) from None
    except (TypeError, ValueError) as error:
        raise ConfigError(where or "config", str(error)) from None


def convert(tp, value, where: str):
    """``value`` checked against annotation ``tp`` (int is not bool; a float accepts an int)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if hasattr(tp, "from_yaml"):
        return tp.from_yaml(value, where)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return convert(option, value, where)
            except ConfigError as error:
                errors.append(error)
        # An option whose shape matched failed on the value (nan) or deeper down (a list with a bad item): say so.
        raise next((e for e, option in zip(errors, options) if str(e) != str(_type_error(option, value, where))),
                   _type_error(tp, value, where))
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(where, f"expected one of {', '.join(map(repr, args))}, got {value!r}"
                                 f"{_suggest(str(value), [str(a) for a in args])}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float) and not math.isfinite(value):  # nan passes every range check
                raise ConfigError(where, f"expected a finite number, got {_describe(value)}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, str):
            return Path(value)
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, (list, tuple)):
            return _convert_sequence(tp, origin or tp, args, value, where)
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            key_type, value_type = args or (Any, Any)
            return {convert(key_type, k, _join(where, str(k))): convert(value_type, v, _join(where, str(k)))
                    for k, v in value.items()}
    else:
        return value  # an annotation we do not model: let the owning dataclass validate it
    raise _type_error(tp, value, where)


def _convert_sequence(tp, container, args, value, where):
    if container is list:
        item = args[0] if args else Any
        return [convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if args and len(args) != len(value):
        raise ConfigError(where, f"expected {len(args)} values, got {len(value)}")
    return tuple(convert(args[i] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value))


def _type_error(tp, value, where: str) -> ConfigError:
    return ConfigError(where, f"expected {_type_name(tp)}, got {_describe(value)}")


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple) or tp in (list, tuple):
        return "a list"
    if origin is dict or tp is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _describe(value) -> str:
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}
    return f"{value!r} ({kind.get(type(value), type(value).__name__)})"


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _default_label(name: str, options: dict) -> str:
    parts = [str(v) if isinstance(v, str) else f"{k}={v}" for k, v in options.items()]
    return "+".join([name, *parts])


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _positive(obj, key: str) -> None:
    if getattr(obj, key) <= 0:
        raise ConfigError(key, f"must be positive, got {getattr(obj, key)}")


def _non_negative(obj, key: str) -> None:
    if getattr(obj, key) < 0:
        raise ConfigError(key, f"must be zero or positive, got {getattr(obj, key)}")


def _one_of(obj, key: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, key)
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, got {value!r}{_suggest(str(value), choices)}")
