"""Bad input through the real CLI: exit status 2 and one line on stderr that names the culprit
and what is allowed, with nothing written; plus property tests of the config loader.

Cases already covered elsewhere: --shard, --seeds, --variants and unknown flags in-process
(test_runner.test_user_mistakes_exit_2_with_one_line), an unknown key in a subprocess
(test_runner.test_cli_subprocess_reports_config_errors_without_traceback), and the loader's
messages for wrong types, bad values and unknown variants (test_config).
"""
import csv
import dataclasses
import os
import re
import subprocess
import types
import typing

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

import bench
from bench.cli import main
from bench.config import Experiment, load_experiment
from bench.errors import BenchError, ConfigError
from bench.plan import make_plan
from conftest import REPO, TINY

SYNTHETIC = "name: synthetic, task: abs_position, train_size: 256, test_size: 24"
GRID = "grid: {sides: [8, 16, 24, 48], aspects: [0.5, 1.0, 2.0]}"
VARIANTS = ", ".join(bench.list_variants())


def image_folder(root, readable: int, unreadable: int):
    """root/<class>/ for two classes, each with ``readable`` 12x16 PNGs and ``unreadable`` garbage .png files."""
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(readable):
            Image.new("RGB", (16, 12), (40 * i % 256, 90, 200)).save(root / label / f"{i}.png")
        for i in range(unreadable):
            (root / label / f"broken{i}.png").write_bytes(b"not a png")
    return root


@pytest.fixture
def workspace(tmp_path):
    """The folders and files the cases point at: {tmp} in a case stands for tmp_path."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "a").mkdir(parents=True)
    image_folder(tmp_path / "unreadable", readable=0, unreadable=3)
    (tmp_path / "file").write_text("not a folder")
    return tmp_path


# (TINY's text -> replacement, extra flags, the exact line on stderr); {tmp} is the test's folder.
CASES = {
    "unknown-key": ({"seeds: [0, 1]": "seed: [0, 1]"}, [],
                    "seed: unknown key (did you mean 'seeds'?); valid keys: name, variants, baseline, data, model, "
                    "seeds, train, eval, device, smoke"),
    "wrong-type": ({"seeds: [0, 1]": "seeds: [0, one]"}, [], "seeds[1]: expected an integer, got 'one' (string)"),
    "not-finite": ({"lr: 0.003": "lr: .nan"}, [], "train.lr: expected a finite number, got nan (number)"),
    "zero-steps": ({"steps: 30": "steps: 0"}, [], "train.steps: must be positive, got 0"),
    "negative-steps": ({"steps: 30": "steps: -5"}, [], "train.steps: must be positive, got -5"),
    "negative-seed": ({"seeds: [0, 1]": "seeds: [0, -1]"}, [], "seeds: seeds must be non-negative, got [0, -1]"),
    "no-seeds": ({"seeds: [0, 1]": "seeds: []"}, [], "seeds: list at least one seed"),
    "zero-patch": ({"patch_size: 4": "patch_size: 0"}, [], "model.patch_size: must be positive, got 0"),
    "zero-train-size": ({"train_size: 256": "train_size: 0"}, [], "data.train_size: must be positive, got 0"),
    "negative-test-size": ({"test_size: 24": "test_size: -1"}, [], "data.test_size: must be positive, got -1"),
    "zero-tokens": ({"tokens_per_batch: 128": "tokens_per_batch: 0"}, [],
                    "train.tokens_per_batch: must be positive, got 0"),
    "zero-row": ({"max_seq_len: 64, lr": "max_seq_len: 0, lr"}, [], "train.max_seq_len: must be positive, got 0"),
    "zero-min-side": ({"min_side: 16": "min_side: 0"}, [], "train.resolution.min_side: must be positive, got 0"),
    "zero-eval-side": ({"sides: [8,": "sides: [0,"}, [], "eval.grid.sides[0]: must be positive, got 0"),
    "negative-eval-size": ({GRID: "grid: {sizes: [[16, 16], [-8, 8]]}"}, [],
                           "eval.grid.sizes[1]: -8x8 is not a positive multiple of patch_size 4"),
    "unknown-variant": ({"[nope, rope_axial]": "[nope, rope]"}, [],
                        f"variants[1]: unknown variant 'rope' (did you mean 'nope'?); valid variants: {VARIANTS}"),
    "unknown-dataset": ({"name: synthetic": "name: imagenet"}, [],
                        "data.name: expected one of 'synthetic', 'imagefolder', 'cifar10', 'cifar100', got 'imagenet' "
                        "(string) (did you mean 'imagefolder'?)"),
    "unknown-task": ({"task: abs_position": "task: [abs_position, abs_postion]"}, [],
                     "data.task[1]: expected one of 'abs_position', 'rel_position', 'control', got 'abs_postion' "
                     "(string) (did you mean 'abs_position'?)"),
    "no-tasks": ({"task: abs_position": "task: []"}, [], "data.task: is empty; list at least one task"),
    "repeated-task": ({"task: abs_position": "task: [control, rel_position, control]"}, [],
                      "data.task: tasks repeat: ['control', 'rel_position', 'control']"),
    "tasks-of-real-data": ({SYNTHETIC: "name: cifar10, root: {tmp}/empty, task: [abs_position, control]"}, [],
                           "data.task: lists tasks, which only synthetic data has; dataset 'cifar10' has one task, "
                           "its own labels"),
    "unknown-pool": ({"heads: 2}": "heads: 2, pool: max}"}, [],
                     "model.pool: expected one of 'mean', 'map', 'cls', got 'max' (string) (did you mean 'map'?)"),
    "unknown-baseline": ({"seeds: [0, 1]": "seeds: [0, 1]\nbaseline: vit_1d_interp"}, [],
                         "baseline: 'vit_1d_interp' is not a variant label of this experiment; labels: nope, "
                         "rope_axial"),
    "eval-side-off-patch": ({"sides: [8,": "sides: [10,"}, [],
                            "eval.grid.sides[0]: 10 is not a positive multiple of patch_size 4"),
    "eval-side-below-patch": ({"sides: [8,": "sides: [2,"}, [],
                              "eval.grid.sides[0]: 2 is not a positive multiple of patch_size 4"),
    "eval-size-off-patch": ({GRID: "grid: {sizes: [[16, 16], [10, 8]]}"}, [],
                            "eval.grid.sizes[1]: 10x8 is not a positive multiple of patch_size 4"),
    "eval-size-below-patch": ({GRID: "grid: {sizes: [[16, 16], [2, 4]]}"}, [],
                              "eval.grid.sizes[1]: 2x4 is not a positive multiple of patch_size 4"),
    "train-side-off-patch": ({"min_side: 16": "min_side: 18"}, [],
                             "train.resolution.min_side: 18 is not a positive multiple of patch_size 4"),
    "train-side-below-patch": ({"mode: navit, min_side: 16, max_side: 24": "mode: fixed, side: 2"}, [],
                               "train.resolution.side: 2 is not a positive multiple of patch_size 4"),
    "variant-side-off-patch": ({"[nope,": "[{name: nope, resolution: {mode: fixed, side: 10}},"}, [],
                               "variants[0].resolution.side: 10 is not a positive multiple of patch_size 4"),
    # Training images are never split across rows: one longer than a row cannot be trained on.
    "train-image-over-row": ({"max_side: 24": "max_side: 40"}, [],
                             "train.resolution.max_side: 40 px gives images of 100 tokens, more than max_seq_len 64"),
    "missing-data-folder": ({SYNTHETIC: "name: imagefolder, root: {tmp}/missing"}, [],
                            "data.root: {tmp}/missing does not exist"),
    "empty-data-folder": ({SYNTHETIC: "name: imagefolder, root: {tmp}/empty"}, [],
                          "data.root: {tmp}/empty has no class subfolders; expected {tmp}/empty/<class>/<image>"),
    "no-image-files": ({SYNTHETIC: "name: imagefolder, root: {tmp}/no_images"}, [],
                       "data.root: no train image files under {tmp}/no_images; expected {tmp}/no_images/<class>/"
                       "<image> with one of the extensions .jpg, .jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp"),
    "all-images-unreadable": ({SYNTHETIC: "name: imagefolder, root: {tmp}/unreadable"}, [],
                              "data.root: none of the 4 train image files under {tmp}/unreadable could be read "
                              "(e.g. {tmp}/unreadable/a/broken0.png)"),
    "out-under-a-file": ({}, ["--out", "{tmp}/file/results"],
                         "cannot use output dir {tmp}/file/results: {tmp}/file is not a folder"),
    "out-is-a-file": ({}, ["--out", "{tmp}/file"], "cannot use output dir {tmp}/file: {tmp}/file is not a folder"),
    # Not writable even for root (tests may run as root, which chmod does not stop).
    "out-not-writable": ({}, ["--out", "/proc/self/results"],
                         "cannot write to output dir /proc/self/results: /proc/self is not writable"),
    "shard-malformed": ({}, ["--shard", "1-4"],
                        "--shard '1-4': expected I/N with 0 <= I < N, e.g. 0/4 (0-based, as Slurm array ids)"),
    "shard-of-none": ({}, ["--shard", "0/0"],
                      "--shard '0/0': expected I/N with 0 <= I < N, e.g. 0/4 (0-based, as Slurm array ids)"),
    "yaml-syntax": ({"seeds: [0, 1]": "seeds: [0, 1]]"}, [],
                    "{tmp}/tiny.yaml:5: YAML does not parse: expected <block end>, but found ']'"),
    # PyYAML notices an unclosed bracket on the next line (6), where the parse fails.
    "yaml-unclosed": ({"seeds: [0, 1]": "seeds: [0, 1"}, [],
                      "{tmp}/tiny.yaml:6: YAML does not parse: expected ',' or ']', but got ':'"),
    "yaml-duplicate-key": ({"seeds: [0, 1]": "seeds: [0, 1]\nseeds: [2]"}, [],
                           "{tmp}/tiny.yaml:6: YAML does not parse: duplicate key 'seeds'"),
    "missing-config": ({}, ["--config", "{tmp}/missing.yaml"],
                       "cannot read config {tmp}/missing.yaml: No such file or directory"),
    "cuda-without-gpu": ({}, ["--device", "cuda"], "device cuda: torch sees no CUDA GPU here; use --device cpu"),
}
# These also run as a real process, to prove the entry point prints no traceback.
SUBPROCESS = ["yaml-syntax", "cuda-without-gpu", "missing-data-folder", "out-not-writable"]


def case_command(workspace, make_config, name):
    replace, flags, expected = CASES[name]

    def fill(text: str) -> str:
        return text.replace("{tmp}", str(workspace))

    config = make_config(**{old: fill(new) for old, new in replace.items()})
    args = ["--config", str(config), "--out", str(workspace / "out"), *map(fill, flags)]
    return args, "error: " + fill(expected)


def assert_nothing_written(workspace):
    assert not (workspace / "out").exists() and not (workspace / "file" / "results").exists()
    assert (workspace / "file").read_text() == "not a folder"


@pytest.mark.parametrize("name", CASES)
def test_mistake_exits_2_with_one_line_and_writes_nothing(workspace, make_config, capsys, monkeypatch, name):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # also on a machine with a GPU
    args, expected = case_command(workspace, make_config, name)
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err == expected + "\n" and captured.out == ""
    assert_nothing_written(workspace)


def test_too_few_rows_for_the_launched_ranks_is_a_mistake(workspace, make_config, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")   # as torchrun --nproc_per_node 2 sets it, before any rank joins
    config = make_config(**{"tokens_per_batch: 128": "tokens_per_batch: 64"})
    assert main(["--config", str(config), "--out", str(workspace / "out")]) == 2
    assert capsys.readouterr().err == ("error: train.tokens_per_batch: 64 gives 1 rows of max_seq_len 64; each of "
                                       "the 2 ranks needs at least one\n")
    assert_nothing_written(workspace)


@pytest.mark.parametrize("name", SUBPROCESS)
def test_mistake_in_a_real_process_prints_no_traceback(workspace, make_config, run_all, name):
    args, expected = case_command(workspace, make_config, name)
    # An empty CUDA_VISIBLE_DEVICES hides every GPU for real, wherever the tests run.
    done = subprocess.run([*run_all, *args], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert (done.returncode, done.stderr, done.stdout) == (2, expected + "\n", "")
    assert_nothing_written(workspace)


def test_some_unreadable_images_are_a_counted_warning_and_the_run_proceeds(tmp_path, make_config, run_all):
    train = image_folder(tmp_path / "train", readable=6, unreadable=1)
    test = image_folder(tmp_path / "test", readable=3, unreadable=0)
    config = make_config(**{SYNTHETIC: f"name: imagefolder, root: {train}, test_root: {test}"})
    out = tmp_path / "out"
    done = subprocess.run([*run_all, "--config", str(config), "--out", str(out), "--variants", "nope", "--seeds", "0"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if "unreadable" in line]
    assert len(warned) == 1, "one line, not Python's two-line warning format"
    assert warned[0].startswith(f"warning: {train}: skipped 2 unreadable of 14 train image files (e.g. ")
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert rows and {row["variant"] for row in rows} == {"nope"}


def test_eval_images_longer_than_a_row_get_a_row_of_their_own(reference, make_config, tmp_path):
    """The eval rows (64 tokens) are shorter than the largest eval images (up to 144 tokens): the
    config runs, and its numbers match those of rows long enough for every image."""
    config, out = reference
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    longest = max(int(row["num_tokens"]) for row in rows)
    assert longest > load_experiment(config).eval.max_seq_len == 64
    wide = make_config(**{"tokens_per_batch: 1024, max_seq_len: 64": "tokens_per_batch: 1024, max_seq_len: 256"})
    assert main(["--config", str(wide), "--out", str(tmp_path / "wide"), "--variants", "nope", "--seeds", "0"]) == 0
    wide_rows = list(csv.DictReader(open(tmp_path / "wide" / "metrics.csv")))
    narrow_rows = [row for row in rows if row["variant"] == "nope" and row["seed"] == "0"]
    assert len(wide_rows) == len(narrow_rows) == len(make_plan(load_experiment(config)).sizes)
    for narrow, wide_row in zip(narrow_rows, wide_rows):
        assert narrow["num_tokens"] == wide_row["num_tokens"] and narrow["accuracy"] == wide_row["accuracy"]
        assert float(narrow["loss"]) == pytest.approx(float(wide_row["loss"]), rel=1e-5)


# ---- property tests of the config loader --------------------------------------------------

BASE = yaml.safe_load(TINY)


def sections(cls=Experiment, path=""):
    """(dotted path, dataclass) of every config section, the top level ("") included."""
    yield path, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from sections(hints[f.name], f"{path}.{f.name}".lstrip("."))


SECTIONS = dict(sections())
# Every typed key but variants (a list of names or mappings, checked by the registry: test_config).
KEYS = {f"{path}.{f.name}".lstrip("."): typing.get_type_hints(cls)[f.name]
        for path, cls in SECTIONS.items() for f in dataclasses.fields(cls) if f.init and f.name != "variants"}


def key_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def with_value(dotted: str, value) -> str:
    raw = yaml.safe_load(TINY)
    *parents, last = dotted.split(".")
    section = raw
    for key in parents:
        section = section.setdefault(key, {})
    section[last] = value
    return yaml.safe_dump(raw)


def load_text(tmp_path, text: str) -> Experiment:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    return load_experiment(path)


def plan_text(tmp_path, text: str) -> dict:
    """The resolved config of ``text``, loaded and planned."""
    return make_plan(load_text(tmp_path, text)).config


def accepts(tp, value) -> bool:
    """Whether ``value`` is of annotation ``tp`` (int is not bool; a float takes an int)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return any(accepts(option, value) for option in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if typing.get_origin(tp) is typing.Literal:
        return value in typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    if typing.get_origin(tp) is list:
        return isinstance(value, list) and all(accepts(typing.get_args(tp)[0], v) for v in value)
    if typing.get_origin(tp) is dict:
        key, item = typing.get_args(tp)
        return isinstance(value, dict) and all(accepts(key, k) and accepts(item, v) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


# Strings without digits: "1e3" would read back as a number.
scalars = st.none() | st.booleans() | st.integers(-3, 64) | st.floats(-3, 64) | st.text("abcxyz _-:", max_size=6)
yaml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text("abcxyz_", min_size=1, max_size=4), inner, max_size=3),
                           max_leaves=6)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@PROPERTY
@given(dotted=st.sampled_from(sorted(KEYS)), value=yaml_values)
def test_a_value_of_the_wrong_type_is_an_error_naming_its_key(tmp_path, dotted, value):
    assume(not accepts(KEYS[dotted], value))
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, with_value(dotted, value))
    # A list with a bad item names the item, e.g. eval.grid.sides[1]; a mapping its key, train.steps.x.
    assert re.fullmatch(rf"{re.escape(dotted)}(\[\d+\]|\.[^.\s]+)*", caught.value.key)
    assert caught.value.message.startswith("expected ")


@PROPERTY
@given(dotted=st.sampled_from(sorted(KEYS)), value=yaml_values)
def test_any_value_loads_or_is_a_one_line_error(tmp_path, dotted, value):
    """Whatever a key holds, loading and planning give a plan or a BenchError, never another exception."""
    try:
        plan_text(tmp_path, with_value(dotted, value))
    except BenchError as error:
        assert "\n" not in str(error)


FLOAT_KEYS = [key for key, tp in KEYS.items()
              if float in (tp, *typing.get_args(tp)) and typing.get_origin(tp) is not list]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dotted", FLOAT_KEYS)
def test_a_number_that_is_not_finite_is_an_error_naming_its_key(tmp_path, dotted, value):
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, with_value(dotted, value))
    assert caught.value.key == dotted and caught.value.message.startswith("expected a finite number")


def typos(word: str):
    """Every single-letter deletion, substitution and swap of ``word``."""
    letters = "abcdefghijklmnopqrstuvwxyz_"
    for i in range(len(word)):
        yield word[:i] + word[i + 1:]
        yield from (word[:i] + c + word[i + 1:] for c in letters if c != word[i])
        if i + 1 < len(word):
            yield word[:i] + word[i + 1] + word[i] + word[i + 2:]


@PROPERTY
@given(data=st.data())
def test_an_unknown_key_names_its_section_suggests_a_key_and_lists_them_all(tmp_path, data):
    section = data.draw(st.sampled_from(sorted(SECTIONS)))
    names = key_names(SECTIONS[section])
    # Keys of 4+ letters: one typo keeps them similar enough for a suggestion.
    word = data.draw(st.sampled_from([n for n in names if len(n) >= 4]))
    typo = data.draw(st.sampled_from(sorted(set(typos(word)) - set(names))))
    dotted = f"{section}.{typo}".lstrip(".")
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, with_value(dotted, 1))
    message = caught.value.message
    assert caught.value.key == dotted
    suggestion = re.fullmatch(r"unknown key \(did you mean '(\w+)'\?\); valid keys: (.*)", message)
    assert suggestion and suggestion[1] in names and suggestion[2] == ", ".join(names)


@PROPERTY
@given(steps=st.integers(1, 10_000), warmup=st.integers(0, 10_000), lr=st.floats(1e-6, 10), share=st.floats(0, 1),
       beta1=st.floats(0, 0.999), grad_clip=st.none() | st.floats(1e-3, 1e3),
       seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=4, unique=True),
       optimizer=st.sampled_from(["adamw", "sgd"]), schedule=st.sampled_from(["cosine", "linear", "constant"]),
       task=st.sampled_from(["abs_position", "rel_position", "control"]))
def test_valid_values_load_exactly_as_written(tmp_path, steps, warmup, lr, share, beta1, grad_clip, seeds,
                                              optimizer, schedule, task):
    train = {**BASE["train"], "steps": steps, "warmup_steps": min(warmup, steps), "lr": lr, "min_lr": lr * share,
             "beta1": beta1, "grad_clip": grad_clip, "optimizer": optimizer, "schedule": schedule}
    raw = {**BASE, "seeds": seeds, "train": train, "data": {**BASE["data"], "task": task}}
    loaded = plan_text(tmp_path, yaml.safe_dump(raw))
    assert loaded["seeds"] == seeds and loaded["data"]["task"] == task
    assert {key: loaded["train"][key] for key in train if key != "resolution"} == \
        {key: value for key, value in train.items() if key != "resolution"}
