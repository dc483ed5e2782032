"""The runner end to end on a tiny experiment: the results store, resuming, failures, shards, DDP."""
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

import bench
from bench import posembed, runner, runtime
from bench.cli import main
from bench.config import VariantSpec, load_experiment
from bench.data import TrainBatches, build_source
from bench.evaluate import EvalSet, evaluate
from bench.plan import make_plan
from bench.runtime import Interrupted, Ranks, git_commit
from bench.store import METRICS_COLUMNS, Store
from bench.train import CellTrainer, build_cell_model

REPO = Path(__file__).resolve().parents[1]
TINY = """
name: tiny
data: {name: synthetic, task: abs_position, train_size: 256, test_size: 24}
model: {patch_size: 4, dim: 16, depth: 1, heads: 2}
variants: [nope, {name: factorized_abs_learned, combine: stack}, rope_axial]
seeds: [0, 1]
train: {steps: 8, tokens_per_batch: 128, max_seq_len: 64, lr: 0.003, warmup_steps: 2, checkpoint_every: 3,
        resolution: {mode: navit, min_side: 16, max_side: 24}}
eval: {grid: {sides: [8, 16, 24, 48], aspects: [0.5, 1.0]}, tokens_per_batch: 1024, max_seq_len: 64}
"""
CELLS = ["factorized_abs_learned+stack__abs_position__0", "factorized_abs_learned+stack__abs_position__1",
         "nope__abs_position__0", "nope__abs_position__1", "rope_axial__abs_position__0", "rope_axial__abs_position__1"]


def write_config(folder: Path, text: str = TINY, **replace) -> Path:
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / "tiny.yaml"
    path.write_text(text)
    return path


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "run_all.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, **kwargs)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny experiment run once, uninterrupted, in-process: the reference for other tests."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder)
    assert main(["--config", str(config), "--out", str(folder / "out")]) == 0
    return config, folder / "out"


def test_run_writes_the_results_store(finished):
    config, out = finished
    store = Store(out)
    cells = store.cells()
    assert sorted(cells) == CELLS
    assert not list(store.checkpoints_dir.glob("*")), "checkpoints are removed when a cell finishes"
    plan = make_plan(load_experiment(config))
    for name, cell in cells.items():
        assert cell.status == "ok" and cell.reason is None and (cell.task, cell.num_classes) == ("abs_position", 9)
        variant = plan.variant(cell.variant)
        assert cell.param_count == sum(p.numel() for p in build_cell_model(
            plan.experiment.model, variant.spec, 9, 3, 0).parameters())
        assert cell.steps == 8 and len(cell.train_losses) == 8 and cell.train_time_s > 0
        assert [row.point for row in cell.eval] == list(variant.eval_points["abs_position"])
        for row in cell.eval:   # which of the 24 test scenes were right, as bits that give the accuracy
            assert row.score.hits.count == 24 and row.score.hits.array().mean() == row.score.accuracy
        assert cell.train_resolution == variant.train_resolution and variant.train_resolution.reference_side == 16
        assert cell.config_hash == plan.config_hash and cell.config == plan.hashed_config
    # Equal budget and data order: every variant of a seed saw the very same images and tokens.
    for seed in (0, 1):
        seen = {(c.tokens_seen, c.images_seen) for c in cells.values() if c.seed == seed}
        assert len(seen) == 1
    with open(out / "metrics.csv") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == METRICS_COLUMNS and len(rows) == len(CELLS) * len(plan.sizes)
    square = [r for r in rows if r["variant"] == "nope" and r["seed"] == "0" and r["eval_width"] == r["eval_height"]]
    assert [(r["side"], r["train_range"], r["in_train_range"], r["at_train_res"]) for r in square] == [
        ("8", "below", "False", "False"), ("16", "in", "True", "True"), ("24", "in", "True", "False"),
        ("48", "above", "False", "False")]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and float(r["loss"]) > 0 for r in rows)
    assert (out / "report.md").exists(), "the report is written at the end of every run"


def test_hits_are_each_test_scene_classified_alone_in_index_order(finished):
    """evaluate() packs many scenes per batch; its hits must still be scene i's own prediction."""
    config, _ = finished
    plan = make_plan(load_experiment(config))
    experiment = plan.experiment
    source = build_source(experiment.data, "test")
    model = build_cell_model(experiment.model, plan.variant("rope_axial").spec, 9, 3, 0).eval()
    sizes = [(16, 16), (8, 16)]
    scores = evaluate(model, EvalSet(source, 4, experiment.eval, keep=False), sizes, torch.device("cpu"),
                      show_progress=False)
    for size, score in zip(sizes, scores):
        alone = []
        with torch.no_grad():
            for i in range(len(source)):
                image, label = source.load(i, size)
                alone.append(int(model([image]).argmax(-1)) == label)
        assert score.hits.array().tolist() == alone and score.accuracy == sum(alone) / len(alone)


def test_two_tasks_run_as_one_experiment_through_the_cli(tmp_path):
    """The task axis end to end: plan -> cells -> metrics.csv -> report, in a real process."""
    edits = {"task: abs_position": "task: [abs_position, control]", "seeds: [0, 1]": "seeds: [0]",
             "{name: factorized_abs_learned, combine: stack}, ": "", "steps: 8": "steps: {abs_position: 8, control: 5}"}
    config = write_config(tmp_path, **edits)
    out = tmp_path / "out"
    done = run_cli("--config", config, "--out", out, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = Store(out).cells()
    assert sorted(cells) == ["nope__abs_position__0", "nope__control__0", "rope_axial__abs_position__0",
                             "rope_axial__control__0"]
    assert {(c.task, c.num_classes) for c in cells.values()} == {("abs_position", 9), ("control", 4)}
    assert {(c.task, c.steps, len(c.train_losses)) for c in cells.values()} == {("abs_position", 8, 8),
                                                                                ("control", 5, 5)}
    plan = make_plan(load_experiment(config))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 4 * len(plan.sizes) and {r["task"] for r in rows} == {"abs_position", "control"}
    small = {(r["task"], int(r["eval_height"]), int(r["eval_width"])) for r in rows if r["solvable"] == "False"}
    assert small == {(task, *p.size) for task in plan.tasks for p in plan.variant("nope").eval_points[task]
                     if not p.solvable}
    assert small and all(task == "abs_position" and min(h, w) < 3 * 4 for task, h, w in small), \
        "only the 3x3 layout needs 3 patches a side"
    # The tasks' scenes differ (another label set), while the runner kept each task's batches apart.
    assert cells["nope__abs_position__0"].train_losses != cells["nope__control__0"].train_losses
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert {(r["task"], r["variant"]) for r in summary} == {(t, v) for t in ("abs_position", "control")
                                                             for v in ("nope", "rope_axial")}
    report = (out / "report.md").read_text()
    for task in ("abs_position", "control"):
        assert f"### Task: {task} (" in report.split("## Findings")[0], "the recommendation is per task"
        assert (out / "figures" / f"ranking__{task}.png").is_file()
        assert (out / f"summary__{task}.tex").is_file()


def test_rerun_skips_finished_cells(finished, monkeypatch):
    config, out = finished
    before, run = snapshot(out / "cells"), (out / "run.json").read_bytes()
    monkeypatch.setattr(CellTrainer, "run", lambda *a: pytest.fail("a finished cell was trained again"))
    assert main(["--config", str(config), "--out", str(out)]) == 0
    assert snapshot(out / "cells") == before
    assert (out / "run.json").read_bytes() == run, "run.json keeps the run that made the numbers"


# Draws its coordinate augmentation from the global RNG in training: a resume must draw the same.
AUGMENTED = VariantSpec("rope_axial_normalized", "augmented", {"shift": 0.1, "jitter": 1.5, "rescale": 2.0})


@pytest.mark.parametrize("label", ["factorized_abs_learned+stack", AUGMENTED.label])
def test_resumed_training_is_bit_identical(finished, tmp_path, label):
    plan = make_plan(load_experiment(finished[0]))
    experiment = plan.experiment
    spec = AUGMENTED if label == AUGMENTED.label else plan.variant(label).spec
    train = experiment.train
    source = build_source(experiment.data, "train")
    store = Store(tmp_path)

    def train_model(**hooks):
        model = build_cell_model(experiment.model, spec, source.num_classes, source.channels, seed=1)
        batches = TrainBatches(source, train.resolution, train.token_drop, 4, train.tokens_per_batch,
                               train.max_seq_len, seed=1)
        trainer = CellTrainer(train, torch.device("cpu"), Ranks(), show_progress=False, **hooks)
        return model, trainer.run(model, batches)

    reference, reference_state = train_model()
    checkpoints = dict(save=lambda state: store.save_checkpoint("x", "abs_position", 1, state),
                       load=lambda: store.load_checkpoint("x", "abs_position", 1))
    calls = []
    with pytest.raises(Interrupted):  # stop after step 5: between the checkpoints at 3 and 6
        train_model(should_stop=lambda: calls.append(1) or len(calls) == 5, **checkpoints)
    assert store.load_checkpoint("x", "abs_position", 1)["state"]["step"] == 5
    resumed, state = train_model(**checkpoints)
    assert state.losses == reference_state.losses
    assert (state.tokens_seen, state.images_seen) == (reference_state.tokens_seen, reference_state.images_seen)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_sigkill_after_first_cell_then_rerun_gives_identical_metrics(finished, tmp_path):
    config, reference = finished
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, str(REPO / "run_all.py"), "--config", str(config), "--out", str(out)],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((out / "cells").glob("*.json")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    first = {p.name: p.read_bytes() for p in (out / "cells").glob("*.json")}
    assert 1 <= len(first) < len(CELLS), "the kill must land after the first cell and before the last"
    assert main(["--config", str(config), "--out", str(out)]) == 0
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    assert all((out / "cells" / name).read_bytes() == data for name, data in first.items())


def test_non_finite_loss_fails_only_that_cell(tmp_path, monkeypatch):
    def explode(self, coords, grids):
        return torch.full((coords.shape[0], self.dim), float("inf"))

    monkeypatch.setattr(posembed.FactorizedAbsSinCos, "additive", explode)
    config = write_config(tmp_path, **{"[nope, {name: factorized_abs_learned, combine: stack}, rope_axial]":
                                       "[factorized_abs_sincos, nope]", "seeds: [0, 1]": "seeds: [0]"})
    out = tmp_path / "out"
    assert main(["--config", str(config), "--out", str(out)]) == 1
    cells = Store(out).cells()
    failed, ok = cells["factorized_abs_sincos__abs_position__0"], cells["nope__abs_position__0"]
    assert failed.status == "failed" and failed.reason == "train loss became nan at step 0"
    assert failed.eval == [] and failed.final_train_loss is None and ok.status == "ok"
    variants = {row["variant"] for row in csv.DictReader(open(out / "metrics.csv"))}
    assert variants == {"nope"}
    assert main(["--config", str(config), "--out", str(out)]) == 1, "a recorded failure keeps the exit status"


def test_config_change_refuses_to_mix_results(finished, tmp_path, capsys):
    _, out = finished
    changed = write_config(tmp_path, **{"lr: 0.003": "lr: 0.01", "dim: 16": "dim: 32"})
    before = snapshot(out)
    assert main(["--config", str(changed), "--out", str(out)]) == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "differs in model.dim, train.lr" in message and "--out" in message
    assert snapshot(out) == before


def test_edited_variant_entry_is_not_reused(finished, tmp_path, capsys):
    _, out = finished
    edited = write_config(tmp_path, **{"combine: stack}": "combine: stack, label: factorized_abs_learned+stack, "
                                                           "max_grid: 30}"})
    assert main(["--config", str(edited), "--out", str(out)]) == 2
    assert "variants[factorized_abs_learned+stack].options.max_grid" in capsys.readouterr().err


def test_growing_the_experiment_reuses_finished_cells(finished, tmp_path, monkeypatch):
    _, reference = finished
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    grown = write_config(tmp_path, **{"rope_axial]": "rope_axial, factorized_frac_sincos]",
                                      "seeds: [0, 1]": "seeds: [0, 1, 2]"})
    monkeypatch.setattr(runner.Runner, "run_cell", lambda self, cell: pytest.fail(f"{cell.name} was trained again"))
    assert main(["--config", str(grown), "--out", str(out), "--variants", "nope,rope_axial", "--seeds", "1,0"]) == 0


def test_concurrent_shards_and_a_duplicate_share_one_directory(finished, tmp_path):
    config, reference = finished
    out = tmp_path / "out"
    processes = [subprocess.Popen([sys.executable, str(REPO / "run_all.py"), "--config", str(config), "--out", str(out),
                                   "--shard", shard], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                 for shard in ("0/2", "1/2", "0/2")]
    assert [p.wait(timeout=300) for p in processes] == [0, 0, 0]
    assert sorted(Store(out).cells()) == CELLS
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    assert not [p for p in out.rglob("*.tmp")], "no temporary file is left behind"


def test_ddp_two_processes_match_one(finished, tmp_path):
    config, reference = finished
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "run_all.py"), "--config", str(config), "--out", str(out),
                           "--variants", "factorized_abs_learned+stack", "--seeds", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    single = Store(reference).read_cell("factorized_abs_learned+stack", "abs_position", 1)
    double = Store(out).read_cell("factorized_abs_learned+stack", "abs_position", 1)
    assert double.world_size == 2 and single.world_size == 1
    assert (double.tokens_seen, double.images_seen) == (single.tokens_seen, single.images_seen)
    assert double.train_losses == pytest.approx(single.train_losses, rel=1e-4, abs=1e-5)
    for a, b in zip(single.eval, double.eval):
        assert b.score.loss == pytest.approx(a.score.loss, rel=1e-3)
        assert abs(a.score.accuracy - b.score.accuracy) <= 1 / 24 + 1e-9  # at most one borderline image flips


def test_quick_experiment_runs_end_to_end(tmp_path):
    out = tmp_path / "quick"
    done = run_cli("--config", REPO / "experiments" / "quick.yaml", "--out", out, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = Store(out).cells()
    assert {cell.base_variant for cell in cells.values()} == set(bench.list_variants())   # each at least once
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == len(cells) * len(make_plan(load_experiment(REPO / "experiments" / "quick.yaml")).sizes)
    assert (out / "report.md").exists() and f"{len(cells)}/{len(cells)} cells finished" in done.stdout


def test_report_only_rebuilds_metrics(finished, tmp_path):
    config, reference = finished
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "metrics.csv").unlink()
    assert main(["--config", str(config), "--out", str(out), "--report-only"]) == 0
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


def test_report_only_needs_nothing_but_the_folder(finished, tmp_path, monkeypatch, capsys):
    _, reference = finished
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    for name in ("metrics.csv", "report.md", "report.html", "summary.csv"):
        (out / name).unlink()
    run = (out / "run.json").read_bytes()
    monkeypatch.setattr("bench.cli.load_experiment", lambda path: pytest.fail(f"{path} was loaded"))
    assert main(["--report-only", "--out", str(out)]) == 0
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()
    assert all((out / name).is_file() for name in ("report.md", "report.html", "summary.csv"))
    assert (out / "run.json").read_bytes() == run, "report-only leaves the run's record alone"
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"report: {out / 'report.html'}. Highest whole-grid mean: ")


def test_report_only_with_a_config_of_other_results_names_the_keys(finished, tmp_path, capsys):
    _, out = finished
    other = write_config(tmp_path, **{"dim: 16": "dim: 32"})
    before = snapshot(out)
    assert main(["--report-only", "--out", str(out), "--config", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "differs in model.dim)" in err and "new --out" not in err
    assert err.rstrip().endswith("drop --config: --report-only reads the experiment from the folder")
    assert snapshot(out) == before


@pytest.mark.parametrize("flags, message", [
    (["--report-only"], "--report-only needs --out DIR, the results folder to report"),
    (["--report-only", "--out", "{tmp}/missing"], "--out {tmp}/missing: no such folder"),
    (["--report-only", "--out", "{tmp}", "--seeds", "0"], "--seeds has no effect with --report-only"),
])
def test_report_only_mistakes_are_one_line(tmp_path, capsys, flags, message):
    assert main([flag.replace("{tmp}", str(tmp_path)) for flag in flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: " + message.replace("{tmp}", str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_run_json_records_the_run_and_the_report_shows_it(finished):
    config, out = finished
    run = json.loads((out / "run.json").read_text())
    assert set(run) == {"command", "started", "finished", "wall_time_s", "git_commit", "environment"}
    assert run["command"] == f"python run_all.py --config {config} --out {out}"
    started, ended = datetime.fromisoformat(run["started"]), datetime.fromisoformat(run["finished"])
    assert started.tzinfo is not None and 0 < run["wall_time_s"] <= (ended - started).total_seconds() + 1
    assert run["git_commit"] == git_commit() == run["environment"]["git_commit"]
    assert {"torch", "python", "device", "cpu", "threads", "world_size"} <= set(run["environment"])
    head = (out / "report.md").read_text().split("## Findings")[0]
    assert f"made by `python run_all.py --config tiny.yaml --out out`; commit `{run['git_commit']}`; finished " in head
    assert "; wall time " in head and str(out.parent) not in head


def test_log_mode_prints_one_line_per_finished_cell(finished, tmp_path):
    config, _ = finished
    out = tmp_path / "out"
    done = run_cli("--config", config, "--out", out, "--variants", "nope,rope_axial", "--seeds", "1", timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "\r" not in done.stderr, "no progress bars when stderr is not a terminal"
    lines = done.stderr.splitlines()
    assert len(lines) == 2, done.stderr
    for number, (line, label) in enumerate(zip(lines, ["nope", "rope_axial"]), 1):
        assert re.fullmatch(rf"cell {number}/2 {label} abs_position seed 1: final loss \d+\.\d{{3}}, "
                            r"accuracy at 16x16 px \d+\.\d%, \d+\.\d s", line), line
    last = done.stdout.splitlines()[-1]
    assert last.startswith(f"report: {out / 'report.html'}. Highest whole-grid mean: ") and "\n" not in last


@pytest.mark.parametrize("terminal", [True, False])
def test_bars_only_on_a_terminal(monkeypatch, terminal):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    with runtime.progress(total=1) as bar:
        assert bar.disable is not terminal


def test_list_prints_every_variant_with_its_description(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == bench.list_variants()
    for line, name in zip(lines, bench.list_variants()):
        info = posembed.variant_info(name)
        assert info.summary and info.paper and info.family != "other", name
        assert line.split(maxsplit=1)[1].startswith(info.family) and f"{info.summary} [{info.paper}]" in line


def test_list_with_a_config_prints_its_variant_labels(finished, capsys):
    config, _ = finished
    assert main(["--list", "--config", str(config)]) == 0
    listing = capsys.readouterr().out.split("\n\n")[1].splitlines()
    rows = [line.split(maxsplit=2) for line in listing[1:]]
    assert [(label, name) for label, name, _ in rows] == [
        ("nope", "nope"), ("factorized_abs_learned+stack", "factorized_abs_learned"), ("rope_axial", "rope_axial")]
    assert rows[0][2] == "no options" and rows[1][2].startswith("combine=stack, max_grid=")


def test_help_shows_examples_and_exit_statuses(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert all(example in text for example in ("--config experiments/quick.yaml", "--variants nope,rope_axial",
                                                "--shard $SLURM_ARRAY_TASK_ID/8", "--report-only --out", "torchrun"))
    statuses = text.split("exit status:")[1]
    assert [line.split()[0] for line in statuses.strip().splitlines()[:5]] == ["0", "1", "2", "3", "130"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_report_runs_report_only_on_out(finished, tmp_path):
    _, out = finished
    # CI calls the tests from inside make, whose MAKEFLAGS would make this make print "Entering directory" lines
    quiet = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    make = ["make", "--no-print-directory", "-n", "report"]
    dry = subprocess.run([*make, f"OUT={out}"], cwd=REPO, capture_output=True, text=True, env=quiet)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[-1].endswith(f"/python run_all.py --report-only --out {out}")
    missing = subprocess.run([*make, f"OUT={tmp_path}/missing"], cwd=REPO, capture_output=True, text=True,
                             env=quiet)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1
    assert f"OUT={tmp_path}/missing is not a results folder" in missing.stderr


@pytest.mark.parametrize("flags, culprit", [
    (["--shard", "2/2"], "--shard '2/2'"),
    (["--shard", "x"], "--shard 'x'"),
    (["--seeds", "0,-1"], "--seeds: "),
    (["--seeds", "a"], "--seeds 'a'"),
    (["--variants", "nope,rope"], "--variants: 'rope' is not a variant of this experiment"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--device", "cuda"], "device cuda: torch sees no CUDA GPU"),
])
def test_user_mistakes_exit_2_with_one_line(finished, tmp_path, capsys, monkeypatch, flags, culprit):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config, _ = finished
    out = tmp_path / "out"
    assert main(["--config", str(config), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and culprit in err
    assert not out.exists(), "nothing is written on a user mistake"


def test_cli_subprocess_reports_config_errors_without_traceback(tmp_path):
    config = write_config(tmp_path, **{"steps: 8": "stepz: 8"})
    done = run_cli("--config", config, "--out", tmp_path / "out")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: train.stepz: unknown key (did you mean 'steps'?); valid keys: " + \
        "steps, tokens_per_batch, max_seq_len, optimizer, lr, min_lr, schedule, warmup_steps, weight_decay, " \
        "beta1, beta2, grad_clip, resolution, token_drop, num_workers, checkpoint_every"

