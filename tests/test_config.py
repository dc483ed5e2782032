"""Parsing experiment files: every mistake names its key; one wording for every section."""
import textwrap
import typing
from pathlib import Path

import pytest

import bench
from bench.config import Experiment, load_experiment
from bench.config.loader import build
from bench.config.schema import DataConfig, DropConfig, EvalGridConfig, ModelConfig, ResolutionConfig, TrainConfig
from bench.errors import BenchError, ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

BASE = """
name: t
data: {name: synthetic, train_size: 64, test_size: 16}
model: {patch_size: 8, dim: 32, depth: 1, heads: 2}
variants: [nope, pix2struct_2d, factorized_abs_learned, vit_1d_interp]
seeds: [0]
train: {steps: 4, tokens_per_batch: 128, max_seq_len: 64, resolution: {mode: navit, min_side: 16, max_side: 32}}
eval: {grid: {sides: [8, 16, 24, 32, 64], aspects: [0.5, 1.0, 2.0]}}
"""


def load(tmp_path, text=BASE, **replace) -> Experiment:
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return load_experiment(path)


def error_of(tmp_path, text=BASE, **replace) -> str:
    with pytest.raises(BenchError) as caught:
        load(tmp_path, text, **replace)
    return str(caught.value)


def test_minimal_file_gets_documented_defaults(tmp_path):
    experiment = load(tmp_path, "variants: [nope]\n")
    assert experiment.name == "exp"                      # the file's stem
    assert experiment.seeds == [0] and experiment.device == "cpu" and experiment.baseline is None
    assert experiment.train.optimizer == "adamw" and experiment.train.schedule == "cosine"
    assert experiment.data.name == "synthetic" and experiment.train.resolution.mode == "navit"


def test_unknown_key_suggests_the_closest_valid_one(tmp_path):
    message = error_of(tmp_path, **{"steps: 4": "stpes: 4"})
    assert message.startswith("train.stpes: unknown key (did you mean 'steps'?)")
    nested = error_of(tmp_path, **{"max_side: 32": "max_sid: 32"})
    assert nested.startswith("train.resolution.max_sid: unknown key (did you mean 'max_side'?)")


@pytest.mark.parametrize("old, new, key, expected", [
    ("steps: 4", "steps: four", "train.steps", "expected an integer or a mapping, got 'four' (string)"),
    ("steps: 4", "steps: true", "train.steps", "expected an integer or a mapping, got True (boolean)"),
    ("dim: 32", "dim: 32.0", "model.dim", "expected an integer"),
    ("seeds: [0]", "seeds: 0", "seeds", "expected a list"),
    ("sides: [8,", "sides: [x,", "eval.grid.sides[0]", "expected an integer"),
    ("model: {patch_size: 8, dim: 32, depth: 1, heads: 2}", "model: [8]", "model", "expected a mapping"),
])
def test_wrong_type_names_the_key(tmp_path, old, new, key, expected):
    message = error_of(tmp_path, **{old: new})
    assert message.startswith(f"{key}: ") and expected in message


def test_floats_accept_integers_and_exponents_without_a_dot(tmp_path):
    experiment = load(tmp_path, **{"steps: 4": "steps: 4, lr: 1e-3, weight_decay: 0"})
    assert experiment.train.lr == 0.001 and isinstance(experiment.train.weight_decay, float)


@pytest.mark.parametrize("old, new, key", [
    ("steps: 4", "steps: 0", "train.steps"),
    ("tokens_per_batch: 128", "tokens_per_batch: -1", "train.tokens_per_batch"),
    ("seeds: [0]", "seeds: [-1]", "seeds"),
    ("seeds: [0]", "seeds: []", "seeds"),
    ("heads: 2", "heads: 3", "model.heads"),
    ("min_side: 16", "min_side: 40", "train.resolution.min_side"),   # a data section, prefixed by the loader
    ("name: synthetic", "name: imagenet", "data.name"),
    ("sides: [8, 16", "sides: [0, 16", "eval.grid.sides[0]"),
])
def test_bad_values_name_the_key(tmp_path, old, new, key):
    assert error_of(tmp_path, **{old: new}).startswith(f"{key}: ")


def literal_fields():
    """(section, key, choices) of every Literal-typed key of the schema."""
    for section in (DataConfig, ResolutionConfig, DropConfig, EvalGridConfig, ModelConfig, TrainConfig, Experiment):
        for key, tp in typing.get_type_hints(section).items():
            if typing.get_origin(tp) is typing.Literal:
                yield section, key, typing.get_args(tp)


@pytest.mark.parametrize("section, key, choices", list(literal_fields()), ids=lambda v: getattr(v, "__name__", v))
def test_every_choice_is_a_literal_that_lists_the_valid_values(section, key, choices):
    raw = {"name": "t", "variants": ["nope"]} if section is Experiment else {}
    with pytest.raises(ConfigError) as caught:
        build(section, {**raw, key: "bogus"})
    assert caught.value.key == key
    assert caught.value.message.startswith(f"expected one of {', '.join(map(repr, choices))}, got 'bogus'")
    for choice in choices:   # and each choice loads (a root for the datasets that need one)
        extra = {"root": "/data"} if (section, key) == (DataConfig, "name") else {}   # real datasets need one
        assert getattr(build(section, {**raw, **extra, key: choice}), key) == choice


def test_the_schema_uses_literal_choices():
    names = {(section.__name__, key) for section, key, _ in literal_fields()}
    assert {("ModelConfig", "pool"), ("ModelConfig", "attention"), ("TrainConfig", "schedule"),
            ("TrainConfig", "optimizer"), ("Experiment", "device"), ("DataConfig", "name"),
            ("ResolutionConfig", "mode"), ("ResolutionConfig", "distribution"), ("DropConfig", "kind")} <= names
    assert "cls" in dict(((s.__name__, k), c) for s, k, c in literal_fields())[("ModelConfig", "pool")]


def test_data_task_is_one_task_or_a_list_of_them(tmp_path):
    """One schema field: a task name (a single-task experiment, as before) or a list of names."""
    assert load(tmp_path).data.tasks == ("abs_position",)
    both = load(tmp_path, **{"name: synthetic,": "name: synthetic, task: [control, rel_position],"})
    assert both.data.task == ["control", "rel_position"] and both.data.tasks == ("control", "rel_position")
    assert error_of(tmp_path, **{"name: synthetic,": "name: synthetic, task: contrl,"}).startswith(
        "data.task: expected one of 'abs_position', 'rel_position', 'control', got 'contrl' (string) (did you "
        "mean 'control'?)")
    assert error_of(tmp_path, **{"name: synthetic,": "name: synthetic, task: 3,"}) == (
        "data.task: expected one of 'abs_position', 'rel_position', 'control' or a list, got 3 (integer)")


@pytest.mark.parametrize("make, message", [
    (lambda: TrainConfig(steps=0), "steps: must be positive, got 0"),
    (lambda: DataConfig(train_size=0), "train_size: must be positive, got 0"),
    (lambda: EvalGridConfig(sides=[8, 0]), "sides[1]: must be positive, got 0"),
    (lambda: TrainConfig(warmup_steps=-1), "warmup_steps: must be zero or positive, got -1"),
    (lambda: DataConfig(seed=-1), "seed: must be zero or positive, got -1"),
    (lambda: DropConfig(rate=1.0), "rate: must be in [0, 1), got 1.0"),
    (lambda: DataConfig(test_fraction=0.0), "test_fraction: must be in (0, 1), got 0.0"),
    (lambda: TrainConfig(beta1=1.0), "beta1: must be in [0, 1), got 1.0"),
    (lambda: ResolutionConfig(min_side=64, max_side=32), "min_side: 64 is more than max_side=32"),
    (lambda: TrainConfig(steps=4, warmup_steps=5), "warmup_steps: 5 is more than steps=4"),
    (lambda: TrainConfig(steps={"control": 0}), "steps.control: must be positive, got 0"),
    (lambda: TrainConfig(steps={"control": 4}, warmup_steps=5), "warmup_steps: 5 is more than steps.control=4"),
    (lambda: TrainConfig(steps={}), "steps: is an empty mapping; give an integer or each task's steps"),
])
def test_model_train_and_data_sections_word_their_checks_alike(make, message):
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value) == message


def test_train_steps_is_an_integer_or_a_mapping_of_tasks(tmp_path):
    experiment = load(tmp_path, **{"steps: 4,": "steps: {abs_position: 6, control: 3},"})
    assert experiment.train.steps == {"abs_position": 6, "control": 3}
    assert experiment.train.steps_for("control") == 3 and experiment.train.for_task("control").steps == 3
    assert error_of(tmp_path, **{"steps: 4,": "steps: {abs_positon: 6},"}).startswith("train.steps")
    assert "abs_positon" in error_of(tmp_path, **{"steps: 4,": "steps: {abs_positon: 6},"})
    assert error_of(tmp_path, **{"steps: 4,": "steps: {control: many},"}).startswith("train.steps.control: ")


def test_variant_entries_are_parsed_not_resolved(tmp_path):
    experiment = load(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, combine: stack},"})
    spec = experiment.variants[2]
    assert spec.label == "factorized_abs_learned+stack" and spec.options == {"combine": "stack"}
    assert experiment.variants[1].options == {}, "defaults are the plan's to fill"
    duplicate = error_of(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, label: nope},"})
    assert duplicate.startswith("variants[2].label: 'nope' is also the label of variants[0]")
    nameless = error_of(tmp_path, **{"factorized_abs_learned,": "{combine: stack},"})
    assert nameless.startswith("variants[2].name: every variant mapping needs a name")


def test_yaml_syntax_error_gives_the_line(tmp_path):
    message = error_of(tmp_path, **{"seeds: [0]": "seeds: [0"})
    assert "exp.yaml:7" in message and "YAML does not parse" in message
    duplicate = error_of(tmp_path, **{"seeds: [0]": "seeds: [0]\nseeds: [1]"})
    assert "exp.yaml:7" in duplicate and "duplicate key 'seeds'" in duplicate


def test_shipped_experiments_parse():
    for path in sorted(EXPERIMENTS.glob("*.yaml")):
        assert load_experiment(path).name == path.stem


def test_config_error_keys_are_prefixed_once():
    error = ConfigError("min_side", "bad").under("train.resolution")
    assert str(error) == "train.resolution.min_side: bad"


def test_the_config_room_knows_no_variant(tmp_path):
    """Registry names and options are the plan's to check: a made-up name parses."""
    assert "not_a_variant" not in bench.list_variants()
    assert load(tmp_path, "variants: [{name: not_a_variant, size: 3}]\n").variants[0].options == {"size": 3}
