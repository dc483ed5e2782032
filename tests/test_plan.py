"""The plan: one derivation of an experiment, every cross-field check once, with its key."""
import dataclasses
import textwrap
import types
from pathlib import Path

import pytest
import torch

import bench
from bench import plan as plan_module
from bench.config import load_experiment
from bench.data import DATA_VERSION
from bench.errors import BenchError, ConfigError
from bench.plan import GridLimits, Plan, config_hash, hashed_config, make_plan, unhashed_config
from bench.posembed import PositionalEmbedding, variant_class, variant_options
from bench.store import Store, differing_keys

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


def plan_of(tmp_path, text=BASE, world_size=1, **replace) -> Plan:
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(text))
    return make_plan(load_experiment(path), world_size)


def error_of(tmp_path, text=BASE, world_size=1, **replace) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        plan_of(tmp_path, text, world_size, **replace)
    return caught.value


def test_the_plan_derives_every_cell_once(tmp_path):
    plan = plan_of(tmp_path, **{"seeds: [0]": "seeds: [0, 1]"})
    assert [c.name for c in plan.cells()] == [f"{v}__abs_position__{s}" for s in (0, 1) for v in
                                             ("nope", "pix2struct_2d", "factorized_abs_learned", "vit_1d_interp")]
    assert plan.sizes == tuple(dict.fromkeys(plan.sizes)), "the grid is deduplicated"
    cell = plan.cells()[5]
    assert cell.seed == 1 and cell.task == "abs_position" and cell.config_hash == plan.config_hash
    variant = cell.variant
    assert variant is plan.variant("pix2struct_2d"), "cells of one variant share its derivation"
    assert dataclasses.astuple(variant.train_resolution) == ("navit", 16, 32, 24)
    assert variant.identity == {"base_variant": "pix2struct_2d", "options": variant.spec.options,
                                "resolution": dataclasses.asdict(variant.resolution)}
    assert cell.eval_points is variant.eval_points["abs_position"]
    assert [p.size for p in cell.eval_points] == list(plan.sizes)
    square = {p.side: p for p in cell.eval_points if p.eval_height == p.eval_width}
    assert [(s, p.train_range, p.in_train_range, p.at_train_res) for s, p in sorted(square.items())] == [
        (8, "below", False, False), (16, "in", True, False), (24, "in", True, True), (32, "in", True, False),
        (64, "above", False, False)]
    wide = next(p for p in cell.eval_points if p.size == (48, 88))
    assert (wide.aspect, wide.side, wide.num_tokens) == (88 / 48, 65, 6 * 11)


def test_tasks_are_an_axis_of_the_cells_and_the_eval_points(tmp_path):
    plan = plan_of(tmp_path, **{"name: synthetic,": "name: synthetic, task: [abs_position, rel_position, control],"})
    assert plan.tasks == ("abs_position", "rel_position", "control")
    assert [c.name for c in plan.cells(["nope"], [0, 1])] == [
        f"nope__{task}__{seed}" for seed in (0, 1) for task in plan.tasks], "seed-major, then task by task"
    cell = plan.cells(["pix2struct_2d"], [0])[1]
    assert cell.task == "rel_position" and cell.eval_points is plan.variant("pix2struct_2d").eval_points["rel_position"]
    # patch 8: squares of 8, 16, 24 px are 1x1, 2x2, 3x3 patches; 32x16 (side 24 at 1:2) is 4 rows x 2 columns
    solvable = {task: {p.size: p.solvable for p in plan.variant("nope").eval_points[task]} for task in plan.tasks}
    assert [solvable["abs_position"][s, s] for s in (8, 16, 24, 32)] == [False, False, True, True]
    assert [solvable["rel_position"][s, s] for s in (8, 16, 24, 32)] == [False, True, True, True]
    assert all(solvable["control"].values()), "the control shape needs no position: every grid counts"
    assert (solvable["abs_position"][32, 16], solvable["rel_position"][32, 16]) == (False, True)
    others = {k: v for k, v in dataclasses.asdict(plan.variant("nope").eval_points["control"][0]).items()
              if k != "solvable"}
    assert all({k: v for k, v in dataclasses.asdict(p[0]).items() if k != "solvable"} == others
               for p in plan.variant("nope").eval_points.values()), "the task changes nothing else of a point"
    single = plan_of(tmp_path)
    assert single.tasks == ("abs_position",), "a single task plans as before"
    real = plan_of(tmp_path, **{"name: synthetic,": "name: cifar10, root: /data,"})
    assert real.tasks == ("cifar10",) and all(p.solvable for p in real.variant("nope").eval_points["cifar10"])


def test_train_steps_may_be_given_per_task_and_each_cell_trains_its_tasks(tmp_path):
    three = "name: synthetic, task: [abs_position, rel_position, control],"
    plan = plan_of(tmp_path, **{"name: synthetic,": three,
                                "steps: 4,": "steps: {abs_position: 6, rel_position: 4, control: 3}, warmup_steps: 2,"})
    assert {c.task: c.train.steps for c in plan.cells()} == {"abs_position": 6, "rel_position": 4, "control": 3}
    assert all(dataclasses.replace(c.train, steps=plan.experiment.train.steps) == plan.experiment.train
               for c in plan.cells()), "only the steps differ between tasks"
    single = plan_of(tmp_path)
    assert single.experiment.train.steps == 4 and [c.train.steps for c in single.cells()] == [4] * 4
    assert plan.config_hash != plan_of(tmp_path, **{"name: synthetic,": three}).config_hash
    assert str(error_of(tmp_path, **{"name: synthetic,": three, "steps: 4,": "steps: {abs_position: 6, control: 3},"})) \
        == "train.steps: gives no steps for task 'rel_position' of data.task; list every task"
    assert str(error_of(tmp_path, **{"steps: 4,": "steps: {abs_position: 6, control: 3},"})) == \
        "train.steps.control: is not a task of data.task ['abs_position']"
    assert str(error_of(tmp_path, **{"name: synthetic,": "name: cifar10, root: /data,",
                                     "steps: 4,": "steps: {abs_position: 6},"})).startswith(
        "train.steps: is a mapping per task, which only synthetic data has; dataset 'cifar10'")


def test_every_option_is_spelled_out_and_the_experiment_is_left_as_loaded(tmp_path):
    plan = plan_of(tmp_path, **{"factorized_abs_learned,": "{name: factorized_abs_learned, combine: stack},"})
    spec = plan.variant("factorized_abs_learned+stack").spec
    assert set(spec.options) == set(variant_options("factorized_abs_learned")) and spec.options["combine"] == "stack"
    assert plan.experiment.variants[2].options == {"combine": "stack"}
    assert plan.config["variants"][2]["options"] == spec.options


def test_grid_dependent_defaults_come_from_the_class_hook(tmp_path):
    plan = plan_of(tmp_path, **{"vit_1d_interp]": "vit_1d_interp, learned_2d_resized]"})
    largest_eval = max(max(h, w) for h, w in plan.sizes) // 8
    for label in ("pix2struct_2d", "factorized_abs_learned"):
        assert plan.variant(label).spec.options["max_grid"] == largest_eval == 11  # 88 px: side 64 at 2:1
    # The ViT table is its training grid: the square eval side nearest the middle of [16, 32].
    assert plan.variant("vit_1d_interp").spec.options["base_grid"] == 24 // 8
    # A table resized to every grid covers the largest training side's square grid.
    assert plan.variant("learned_2d_resized").spec.options["base_grid"] == 32 // 8
    h, w = max(plan.sizes, key=lambda s: s[0] * s[1])
    for label in ("pix2struct_2d", "factorized_abs_learned"):
        torch.manual_seed(0)
        model = bench.build_model(label, 9, 8, 32, 1, 2, **plan.variant(label).spec.options).eval()
        with torch.no_grad():
            assert model([torch.rand(3, h, w), torch.rand(3, w, h)]).isfinite().all()
    explicit = plan_of(tmp_path, **{"pix2struct_2d,": "{name: pix2struct_2d, max_grid: 40},"})
    assert explicit.variant("pix2struct_2d+max_grid=40").spec.options["max_grid"] == 40


def test_a_new_table_variant_is_sized_through_the_hook(tmp_path, monkeypatch):
    """A variant registered now, with an option no code knows by name, gets it from its hook."""
    seen = []

    class Rows(PositionalEmbedding):
        def __init__(self, dim, heads, depth, *, rows: int = 1):
            super().__init__(dim, heads, depth)
            self.table = torch.nn.Parameter(torch.zeros(rows, dim))

        @classmethod
        def grid_defaults(cls, grids: GridLimits):
            seen.append(grids)
            return {"rows": grids.largest_train + 1}

    monkeypatch.setattr(bench.posembed, "_REGISTRY", dict(bench.posembed._REGISTRY))
    bench.register("rows_test")(Rows)
    plan = plan_of(tmp_path, **{"[nope,": "[rows_test,"})
    # navit up to 32 px with synthetic aspects up to 2:1: 48 px = 6 patches the long way
    assert seen == [GridLimits(largest_train=6, largest_eval=11, train_square=4)]
    assert plan.variant("rows_test").spec.options == {"rows": 7}


@pytest.mark.parametrize("old, new, key, words", [
    ("min_side: 16", "min_side: 12", "train.resolution.min_side", "12 is not a positive multiple of patch_size 8"),
    ("max_side: 32", "max_side: 96", "train.resolution.max_side", "more than max_seq_len 64"),
    ("sides: [8, 16", "sides: [10, 16", "eval.grid.sides[0]", "10 is not a positive multiple of patch_size 8"),
    ("vit_1d_interp]", "{name: vit_1d_interp, resolution: {mode: fixed, side: 12}}]", "variants[3].resolution.side",
     "not a positive multiple"),
    ("vit_1d_interp]", "{name: vit_1d_interp, resolution: {mode: fixed, side: 40}}]", "eval.grid", "has no 40x40 size"),
    ("eval: {", "eval: {reference_side: 40, ", "eval.reference_side", "40 is not a square size of the eval grid"),
    ("sides: [8, 16, 24, 32, 64]", "sides: [8, 64]", "eval.grid", "no square size within the training range"),
    ("pix2struct_2d,", "pix2struct,", "variants[1]", "unknown variant 'pix2struct' (did you mean 'pix2struct_2d'?)"),
    ("factorized_abs_learned,", "{name: factorized_abs_learned, combin: stack},", "variants[2].combin",
     "unknown option for factorized_abs_learned (did you mean 'combine'?); valid: name, label, resolution, combine, "
     "max_grid"),
    ("factorized_abs_learned,", "{name: factorized_abs_learned, combine: avg},", "variants[2]",
     "combine must be sum, stack or product"),
    ("factorized_abs_learned,", "{name: factorized_abs_learned, max_grid: big},", "variants[2].max_grid",
     "expected an integer"),
    ("name: t", "name: t\nbaseline: vit", "baseline", "'vit' is not a variant label of this experiment"),
])
def test_cross_field_checks_name_their_key(tmp_path, old, new, key, words):
    error = error_of(tmp_path, **{old: new})
    assert error.key == key and words in error.message


def test_unknown_variants_list_the_registry(tmp_path):
    assert all(name in str(error_of(tmp_path, **{"pix2struct_2d,": "pix2struct,"})) for name in bench.list_variants())


def test_rows_per_step_are_checked_against_the_launched_ranks(tmp_path):
    plan_of(tmp_path, world_size=2)
    error = error_of(tmp_path, world_size=4)
    assert error.key == "train.tokens_per_batch" and "gives 2 rows of max_seq_len 64" in error.message


def test_validation_builds_each_variant_once_and_keeps_the_global_rng(tmp_path, monkeypatch):
    built = []
    real = plan_module.build_model
    monkeypatch.setattr(plan_module, "build_model", lambda name, *a, **k: built.append(name) or real(name, *a, **k))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    plan = plan_of(tmp_path, **{"seeds: [0]": "seeds: [0, 1, 2]"})
    assert built == [v.spec.name for v in plan.variants]
    assert torch.equal(torch.get_rng_state(), state)


def test_reference_side_follows_fixed_resolution_and_explicit_setting(tmp_path):
    fixed = plan_of(tmp_path, **{"resolution: {mode: navit, min_side: 16, max_side: 32}":
                                 "resolution: {mode: fixed, side: 16}"})
    assert fixed.variants[0].train_resolution.reference_side == 16
    explicit = plan_of(tmp_path, **{"eval: {": "eval: {reference_side: 32, "})
    assert {v.train_resolution.reference_side for v in explicit.variants} == {32}


def test_the_vanilla_vit_trains_at_the_reference_side_unless_its_entry_says_otherwise(tmp_path):
    plan = plan_of(tmp_path)
    vit = plan.variant("vit_1d_interp")
    assert dataclasses.astuple(vit.train_resolution) == ("fixed", 24, 24, 24)
    assert vit.spec.resolution == vit.resolution, "the cells and the config record the fixed side"
    assert plan.experiment.variants[3].resolution is None, "the experiment is left as loaded"
    others = [v for v in plan.variants if v.spec.name != "vit_1d_interp"]
    assert all(v.spec.resolution is None and v.resolution.mode == "navit" for v in others)
    explicit = plan_of(tmp_path, **{"eval: {": "eval: {reference_side: 16, "}).variant("vit_1d_interp")
    assert explicit.resolution.side == 16 and explicit.spec.options["base_grid"] == 2
    own = plan_of(tmp_path, **{"vit_1d_interp]": "{name: vit_1d_interp, resolution: {mode: navit, min_side: 16, "
                                                 "max_side: 24}}]"}).variant("vit_1d_interp")
    assert own.resolution.mode == "navit" and own.spec.options["base_grid"] == 24 // 8


def test_per_variant_resolution_overrides_the_training_policy(tmp_path):
    plan = plan_of(tmp_path, **{"vit_1d_interp]": "{name: vit_1d_interp, resolution: {mode: fixed, side: 32}}]"})
    vit = plan.variant("vit_1d_interp")
    assert vit.resolution.mode == "fixed" and vit.spec.options["base_grid"] == 4
    assert dataclasses.astuple(vit.train_resolution) == ("fixed", 32, 32, 32)
    assert plan.variants[0].resolution.mode == "navit"
    assert plan.variants[0].identity != vit.identity


def test_baseline_defaults_to_the_vit_entry_and_is_kept_out_of_the_hash(tmp_path):
    default = plan_of(tmp_path, **{"vit_1d_interp]": "{name: vit_1d_interp, label: vit}]"})
    assert default.baseline == "vit" and default.config["baseline"] == "vit"
    named = plan_of(tmp_path, **{"vit_1d_interp]": "{name: vit_1d_interp, label: vit}]",
                                 "name: t": "name: t\nbaseline: nope"})
    assert named.baseline == "nope" and named.config_hash == default.config_hash
    assert plan_of(tmp_path, **{", vit_1d_interp]": "]"}).baseline is None


def test_hash_ignores_what_does_not_change_numbers(tmp_path):
    base = plan_of(tmp_path)
    same = plan_of(tmp_path, **{"seeds: [0]": "seeds: [3, 4]", "[nope, ": "[rope_axial, ", "name: t": "name: u",
                                "steps: 4": "steps: 4, num_workers: 2, checkpoint_every: 1"})
    assert base.config_hash == same.config_hash
    changed = plan_of(tmp_path, **{"steps: 4": "steps: 4, lr: 0.5", "dim: 32": "dim: 64"})
    assert differing_keys(base.hashed_config, changed.hashed_config) == ["model.dim", "train.lr"]
    assert base.config_hash != changed.config_hash == config_hash(hashed_config(changed.config))
    # Cells made by a data pipeline of another version never count as the same config.
    older = {**base.hashed_config, "data_version": DATA_VERSION - 1}
    assert differing_keys(older, base.hashed_config) == ["data_version"]


def test_a_results_folder_keeps_each_config_key_once(tmp_path):
    """The cells hold the hashed part, config.json the rest; together they are the whole config."""
    plan = plan_of(tmp_path)
    rest = unhashed_config(plan.config)
    assert rest["baseline"] == "vit_1d_interp" and rest["train"] == {"num_workers": 0, "checkpoint_every": 100}
    # nothing of it is hashed: hashing it leaves empty sections
    assert hashed_config(rest) == {"data_version": DATA_VERSION, "train": {}, "eval": {}, "data": {}}
    store = Store(tmp_path / "out")
    store.write_config(plan.config)
    cell = types.SimpleNamespace(config_hash=plan.config_hash, config=plan.hashed_config)
    assert differing_keys(store.config([cell]), {**plan.config, "data_version": DATA_VERSION}) == []


def test_shipped_quick_experiment_keeps_its_hash():
    """Pinned: the hash changes when the config does (last: issue 16's `smoke: true`), never
    from a change in how it is computed, which would orphan every results folder."""
    assert make_plan(load_experiment(EXPERIMENTS / "quick.yaml")).config_hash == "4ae6ba45bb23b6a9"


def test_cells_select_and_shard(tmp_path):
    plan = plan_of(tmp_path, **{"seeds: [0]": "seeds: [0, 1, 2]"})
    assert [c.name for c in plan.cells(["vit_1d_interp", "nope"], [5, 1])] == [
        "nope__abs_position__5", "vit_1d_interp__abs_position__5", "nope__abs_position__1",
        "vit_1d_interp__abs_position__1"]
    every = {c.name for c in plan.cells()}
    for count in (1, 2, 3, 5, 7, 20):
        shards = [plan.cells(shard=(index, count)) for index in range(count)]
        names = [c.name for shard in shards for c in shard]
        assert len(names) == len(every) and set(names) == every
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_resolved_config_is_plain_data(tmp_path):
    config = plan_of(tmp_path).config
    assert config["variants"][1]["options"]["max_grid"] >= 8 and config["train"]["resolution"]["mode"] == "navit"
    assert isinstance(config_hash(config), str)


def test_shipped_experiments_plan_and_cover_the_issue():
    all_variants = set(bench.list_variants())
    quick = make_plan(load_experiment(EXPERIMENTS / "quick.yaml"))
    assert {v.spec.name for v in quick.variants} == all_variants and len(quick.experiment.seeds) == 1
    assert quick.baseline == "vit_1d_interp"

    default = make_plan(load_experiment(EXPERIMENTS / "default.yaml"))
    full = make_plan(load_experiment(EXPERIMENTS / "full.yaml"))
    assert {v.spec.name for v in full.variants} == all_variants
    assert {v.spec.label for v in default.variants} < {v.spec.label for v in full.variants}
    families = [variant_class(v.spec.name).family for v in default.variants]
    assert sorted(families) == sorted({variant_class(v).family for v in all_variants}), "one variant per family"
    assert full.config_hash == default.config_hash, "full.yaml extends a default results folder"
    assert full.identities.items() >= default.identities.items()
    assert len(default.experiment.seeds) == 3
    assert default.tasks == ("abs_position", "rel_position", "control") and default.experiment.data.test_size >= 512
    assert {v.spec.options.get("combine", "sum") for v in default.variants} == {"sum"}   # one entry each
    combine_modes = make_plan(load_experiment(EXPERIMENTS / "combine_modes.yaml"))
    for name in ("factorized_abs_learned", "factorized_abs_sincos"):
        modes = {v.spec.options["combine"] for v in combine_modes.variants if v.spec.name == name}
        assert modes == {"sum", "stack", "product"}, name
    resolution = default.experiment.train.resolution
    sides = [round((h * w) ** 0.5) for h, w in default.sizes]
    assert min(sides) <= resolution.min_side / 2 and max(sides) >= 4 * resolution.max_side
    aspects = [w / h for h, w in default.sizes]
    assert min(aspects) <= 1 / 2.9 and max(aspects) >= 2.9

    fig10 = make_plan(load_experiment(EXPERIMENTS / "navit_fig10.yaml"))
    modes = {v.spec.label: v.resolution.mode for v in fig10.variants}
    assert modes.pop("vit_1d_interp") == "fixed" and set(modes.values()) == {"navit"}
    low, high = fig10.experiment.train.resolution.min_side, fig10.experiment.train.resolution.max_side
    fig10_sides = {h for h, w in fig10.sizes if h == w}
    assert min(fig10_sides) < low and max(fig10_sides) >= 2 * high

    folder = make_plan(load_experiment(EXPERIMENTS / "imagefolder.yaml"))
    assert folder.experiment.data.name == "imagefolder"

    # Every shipped vanilla ViT trains at one fixed square side; every other variant never does.
    for plan in (quick, default, fig10, folder):
        for variant in plan.variants:
            fixed = variant_class(variant.spec.name).fixed_square_training
            assert (variant.resolution.mode == "fixed") == fixed, (plan.experiment.name, variant.spec.label)


def test_every_registered_variant_plans(tmp_path):
    names = ", ".join(bench.list_variants())
    plan = plan_of(tmp_path, **{"[nope, pix2struct_2d, factorized_abs_learned, vit_1d_interp]": f"[{names}]"})
    for variant in plan.variants:
        assert set(variant.spec.options) == set(variant_options(variant.spec.name))
        hook = variant_class(variant.spec.name).grid_defaults
        assert set(hook(GridLimits(4, 5, 3))) <= set(variant.spec.options), "the hook fills options only"


def test_a_planning_mistake_is_a_bench_error(tmp_path):
    assert issubclass(ConfigError, BenchError)
