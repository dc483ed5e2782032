"""Experiment loading: every mistake names its key; resolved defaults fit the experiment."""
import textwrap
from pathlib import Path

import pytest
import torch

import bench
from bench.posembed import variant_class
from bench.data.config import DATA_VERSION
from bench.config import (Experiment, config_hash, differing_keys, hashed_config, load_experiment,
                          reference_side, to_dict)
from bench.errors import BenchError, ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

BASE = """
name: t
data: {name: synthetic, train_size: 64, test_size: 16}
model: {patch_size: 8, dim: 32, depth: 1, heads: 2}
variants: [nope, pix2struct_2d, factorized_abs_learned, vit_1d_interp, learned_2d_resized]
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
    assert experiment.seeds == [0] and experiment.device == "cpu"
    assert experiment.train.optimizer == "adamw" and experiment.train.schedule == "cosine"
    assert experiment.data.name == "synthetic" and experiment.train.resolution.mode == "navit"


def test_unknown_key_suggests_the_closest_valid_one(tmp_path):
    message = error_of(tmp_path, **{"steps: 4": "stpes: 4"})
    assert message.startswith("train.stpes: unknown key (did you mean 'steps'?)")
    nested = error_of(tmp_path, **{"max_side: 32": "max_sid: 32"})
    assert nested.startswith("train.resolution.max_sid: unknown key (did you mean 'max_side'?)")


@pytest.mark.parametrize("old, new, key, expected", [
    ("steps: 4", "steps: four", "train.steps", "expected an integer, got 'four' (string)"),
    ("steps: 4", "steps: true", "train.steps", "expected an integer, got True (boolean)"),
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
    ("min_side: 16", "min_side: 40", "train.resolution.min_side"),   # checked by bench.data, prefixed here
    ("min_side: 16", "min_side: 12", "train.resolution.min_side"),   # not a multiple of the patch
    ("name: synthetic", "name: imagenet", "data.name"),
    ("sides: [8, 16", "sides: [0, 16", "eval.grid.sides[0]"),
])
def test_bad_values_name_the_key(tmp_path, old, new, key):
    assert error_of(tmp_path, **{old: new}).startswith(f"{key}: ")


def test_unknown_variant_lists_the_valid_ones(tmp_path):
    message = error_of(tmp_path, **{"pix2struct_2d,": "pix2struct,"})
    assert message.startswith("variants[1]: unknown variant 'pix2struct' (did you mean 'pix2struct_2d'?)")
    assert all(name in message for name in bench.list_variants())


def test_variant_options_are_checked_against_the_registry(tmp_path):
    message = error_of(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, combin: stack},"})
    assert message.startswith("variants[2].combin: unknown option for factorized_abs_learned "
                              "(did you mean 'combine'?); valid: name, label, resolution, combine, max_grid")
    bad_value = error_of(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, combine: avg},"})
    assert bad_value.startswith("variants[2]: ") and "combine must be sum, stack or product" in bad_value
    bad_type = error_of(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, max_grid: big},"})
    assert bad_type.startswith("variants[2].max_grid: expected an integer")


def test_labels_default_to_name_and_options_and_must_be_unique(tmp_path):
    experiment = load(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, combine: stack},"})
    assert experiment.variants[2].label == "factorized_abs_learned+stack"
    duplicate = error_of(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, label: nope},"})
    assert duplicate.startswith("variants[2].label: 'nope' is also the label of variants[0]")


def test_yaml_syntax_error_gives_the_line(tmp_path):
    message = error_of(tmp_path, **{"seeds: [0]": "seeds: [0"})
    assert "exp.yaml:7" in message and "YAML does not parse" in message
    duplicate = error_of(tmp_path, **{"seeds: [0]": "seeds: [0]\nseeds: [1]"})
    assert "exp.yaml:7" in duplicate and "duplicate key 'seeds'" in duplicate


def test_absolute_tables_cover_the_whole_eval_grid_by_default(tmp_path):
    experiment = load(tmp_path)
    largest = max(max(h, w) for h, w in experiment.eval_sizes()) // 8
    assert experiment.variant("pix2struct_2d").options["max_grid"] >= largest
    assert experiment.variant("factorized_abs_learned").options["max_grid"] >= largest
    # The ViT table is its training grid: the square eval side nearest the middle of [16, 32].
    assert experiment.variant("vit_1d_interp").options["base_grid"] == 24 // 8
    # A table resized to every grid covers the largest training side's square grid.
    assert experiment.variant("learned_2d_resized").options["base_grid"] == 32 // 8
    h, w = max(experiment.eval_sizes(), key=lambda s: s[0] * s[1])
    for label in ("pix2struct_2d", "factorized_abs_learned"):
        torch.manual_seed(0)
        model = bench.build_model(label, 9, 8, 32, 1, 2, **experiment.variant(label).options).eval()
        with torch.no_grad():
            assert model([torch.rand(3, h, w), torch.rand(3, w, h)]).isfinite().all()


def test_reference_side_follows_fixed_resolution_and_explicit_setting(tmp_path):
    fixed = load(tmp_path, **{"resolution: {mode: navit, min_side: 16, max_side: 32}":
                              "resolution: {mode: fixed, side: 16}"})
    assert reference_side(fixed, fixed.variants[0], fixed.eval_sizes()) == 16
    explicit = load(tmp_path, **{"eval: {": "eval: {reference_side: 32, "})
    assert reference_side(explicit, explicit.variants[0], explicit.eval_sizes()) == 32
    missing = error_of(tmp_path, **{"eval: {": "eval: {reference_side: 40, "})
    assert missing.startswith("eval.reference_side: 40 is not a square size of the eval grid")


def test_the_vanilla_vit_trains_at_the_reference_side_unless_its_entry_says_otherwise(tmp_path):
    experiment = load(tmp_path)
    vit = experiment.variant("vit_1d_interp")
    assert (experiment.resolution_of(vit).mode, experiment.resolution_of(vit).side) == ("fixed", 24)
    assert reference_side(experiment, vit, experiment.eval_sizes()) == 24
    others = [v for v in experiment.variants if v.name != "vit_1d_interp"]
    assert all(v.resolution is None and experiment.resolution_of(v).mode == "navit" for v in others)
    explicit = load(tmp_path, **{"eval: {": "eval: {reference_side: 16, "})
    vit = explicit.variant("vit_1d_interp")
    assert explicit.resolution_of(vit).side == 16 and vit.options["base_grid"] == 2
    own = load(tmp_path, **{"vit_1d_interp,": "{name: vit_1d_interp, resolution: {mode: navit, min_side: 16, max_side: 24}},"})
    assert own.resolution_of(own.variant("vit_1d_interp")).mode == "navit"


def test_per_variant_resolution_overrides_the_training_policy(tmp_path):
    experiment = load(tmp_path, **{"vit_1d_interp,": "{name: vit_1d_interp, resolution: {mode: fixed, side: 32}},"})
    vit = experiment.variant("vit_1d_interp")
    assert experiment.resolution_of(vit).mode == "fixed" and vit.options["base_grid"] == 4
    assert experiment.resolution_of(experiment.variants[0]).mode == "navit"
    off_grid = error_of(tmp_path, **{"vit_1d_interp,": "{name: vit_1d_interp, resolution: {mode: fixed, side: 40}},"})
    assert off_grid.startswith("eval.grid: has no 40x40 size")


def test_hash_ignores_what_does_not_change_numbers(tmp_path):
    base = load(tmp_path)
    same = load(tmp_path, **{"seeds: [0]": "seeds: [3, 4]", "[nope, ": "[rope_axial, ", "name: t": "name: u",
                             "steps: 4": "steps: 4, num_workers: 2, checkpoint_every: 1"})
    assert config_hash(hashed_config(base)) == config_hash(hashed_config(same))
    changed = load(tmp_path, **{"steps: 4": "steps: 4, lr: 0.5", "dim: 32": "dim: 64"})
    assert differing_keys(hashed_config(base), hashed_config(changed)) == ["model.dim", "train.lr"]
    assert config_hash(hashed_config(base)) != config_hash(hashed_config(changed))
    # Cells made by a data pipeline of another version never count as the same config.
    older = {**hashed_config(base), "data_version": DATA_VERSION - 1}
    assert differing_keys(older, hashed_config(base)) == ["data_version"]


def test_resolved_config_is_plain_data(tmp_path):
    config = to_dict(load(tmp_path))
    assert config["variants"][1]["options"]["max_grid"] >= 8 and config["train"]["resolution"]["mode"] == "navit"
    assert isinstance(config_hash(config), str)


def test_shipped_experiments_load_and_cover_the_issue():
    all_variants = set(bench.list_variants())
    quick = load_experiment(EXPERIMENTS / "quick.yaml")
    assert {v.name for v in quick.variants} == all_variants and len(quick.seeds) == 1

    default = load_experiment(EXPERIMENTS / "default.yaml")
    assert {v.name for v in default.variants} == all_variants
    assert len(default.seeds) == 3
    combines = {v.options.get("combine") for v in default.variants if v.name == "factorized_abs_learned"}
    assert combines == {"sum", "stack", "product"}
    resolution, sizes = default.train.resolution, default.eval_sizes()
    sides = [round((h * w) ** 0.5) for h, w in sizes]
    assert min(sides) <= resolution.min_side / 2 and max(sides) >= 4 * resolution.max_side
    aspects = [w / h for h, w in sizes]
    assert min(aspects) <= 1 / 2.9 and max(aspects) >= 2.9

    fig10 = load_experiment(EXPERIMENTS / "navit_fig10.yaml")
    modes = {v.label: fig10.resolution_of(v).mode for v in fig10.variants}
    assert modes.pop("vit_1d_interp") == "fixed" and set(modes.values()) == {"navit"}
    low, high = fig10.train.resolution.min_side, fig10.train.resolution.max_side
    fig10_sides = {h for h, w in fig10.eval_sizes() if h == w}
    assert min(fig10_sides) < low and max(fig10_sides) >= 2 * high

    folder = load_experiment(EXPERIMENTS / "imagefolder.yaml")
    assert folder.data.name == "imagefolder"

    # Every shipped vanilla ViT trains at one fixed square side; every other variant never does.
    for experiment in (quick, default, fig10, folder):
        for spec in experiment.variants:
            fixed = variant_class(spec.name).fixed_square_training
            assert (experiment.resolution_of(spec).mode == "fixed") == fixed, (experiment.name, spec.label)


def test_config_error_keys_are_prefixed_once():
    error = ConfigError("min_side", "bad").under("train.resolution")
    assert str(error) == "train.resolution.min_side: bad"
