"""The results store: typed cell records, atomic files, per-cell claims, compatibility checks, metrics.csv."""
import csv
import dataclasses
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from bench import store as store_module
from bench.config import ResolutionConfig
import numpy as np

from bench.evaluate import Hits, Score
from bench.plan import EvalPoint, TrainResolution
from bench.store import CELL_AXES, METRIC_TYPES, METRICS_COLUMNS, CellRecord, EvalRow, Store, StoreError, atomic_write

CONFIG = {"data": {"name": "synthetic", "task": "rel_position"}, "train": {"lr": 0.001, "steps": 10},
          "model": {"dim": 32}}
IDENTITY = {"base_variant": "nope", "options": {}, "resolution": dataclasses.asdict(ResolutionConfig())}


HITS = Hits.of(np.array([True, False, True, False, False, True, True, False, True, False]))


def make_cell(label, seed, status="ok", config_hash="h1", config=CONFIG, sizes=((16, 16), (8, 24)),
              task="rel_position") -> CellRecord:
    rows = [EvalRow(EvalPoint(h, w, w / h, round((h * w) ** 0.5), h * w // 64, True, "in", h == w, h >= 16),
                    Score(0.5, 1.25, HITS)) for h, w in sizes]
    ok = status == "ok"
    return CellRecord(variant=label, base_variant="nope", options={}, resolution=ResolutionConfig(),
                      task=task, seed=seed, config_hash=config_hash, status=status,
                      reason=None if ok else "train loss became nan at step 3", num_classes=4, param_count=1234,
                      train_time_s=1.5, eval_time_s=0.25, tokens_seen=100, images_seen=10, steps=10,
                      final_train_loss=1.0 if ok else None, train_resolution=TrainResolution("navit", 16, 24, 16),
                      device="cpu", world_size=1, train_losses=[2.0, 1.0], eval=rows if ok else [], config=config)


def test_a_cell_record_round_trips_through_its_file(tmp_path):
    store = Store(tmp_path)
    for cell in (make_cell("a", 0), make_cell("b", 3, status="failed"), make_cell("a", 0, task="control")):
        store.write_cell(cell)
        assert store.read_cell(cell.variant, cell.task, cell.seed) == cell
    assert sorted(p.name for p in store.cells_dir.iterdir()) == [
        "a__control__0.json", "a__rel_position__0.json", "b__rel_position__3.json"], "the task names the file"
    raw = json.loads(store.cell_path("a", "rel_position", 0).read_text())
    assert list(raw) == [f.name for f in dataclasses.fields(CellRecord)]
    assert raw["eval"][0] == {"eval_height": 16, "eval_width": 16, "aspect": 1.0, "side": 16, "num_tokens": 4,
                              "in_train_range": True, "train_range": "in", "at_train_res": True, "solvable": True,
                              "accuracy": 0.5, "loss": 1.25, "hits": {"count": 10, "bits": "poA="}}   # 0xa6 0x80
    assert store.read_cell("a", "rel_position", 0).eval[0].score.hits.array().tolist() == [
        True, False, True, False, False, True, True, False, True, False]
    assert raw["train_resolution"] == {"mode": "navit", "min_side": 16, "max_side": 24, "reference_side": 16}


def test_cell_files_written_before_task_and_num_classes_still_load(tmp_path):
    """tests/data/cell_before_records.json is a cell of experiments/quick.yaml written by commit
    8a15602, before CellRecord (train_losses shortened): task and num_classes come from its config,
    each row's solvable from the task and patch size; it has no hits. Its file name has no task:
    the store finds it under that name for its own task only."""
    old = json.loads((Path(__file__).parent / "data" / "cell_before_records.json").read_text())
    assert "task" not in old and "num_classes" not in old and "solvable" not in old["eval"][0]
    store = Store(tmp_path)
    store.cells_dir.mkdir()
    (store.cells_dir / "rope_axial__0.json").write_text(json.dumps(old))
    cell = store.read_cell("rope_axial", "abs_position", 0)
    assert store.read_cell("rope_axial", "control", 0) is None
    assert (cell.task, cell.num_classes) == ("abs_position", 9)
    assert cell.eval[0].point.side == 7 and cell.eval[0].score.accuracy == old["eval"][0]["accuracy"]
    assert cell.eval[0].score.hits is None
    patch = old["config"]["model"]["patch_size"]   # 4: abs_position needs 3 x 3 patches, 12 x 12 px
    assert {(r.point.eval_height, r.point.eval_width): r.point.solvable for r in cell.eval if
            r.point.eval_height == r.point.eval_width} == {(h, h): h // patch >= 3 for h in (8, 16, 24, 48)}
    store.check_compatible(old["config_hash"], old["config"], {"rope_axial": cell.identity})
    assert store.rebuild_metrics() == len(old["eval"])
    for name, task, classes in (("cifar100", None, 100), ("imagefolder", None, None)):
        other = {**old, "config": {**old["config"], "data": {**old["config"]["data"], "name": name}}}
        (store.cells_dir / "rope_axial__0.json").write_text(json.dumps(other))
        cell = store.read_cell("rope_axial", name, 0)
        assert (cell.task, cell.num_classes) == (name, classes) and all(r.point.solvable for r in cell.eval)


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", "a result cell must be a JSON object"),
    ('{"variant": "a"}', "result cell lacks base_variant, options, resolution, task, seed"),
    (None, "status must be 'ok' or 'failed', got 'done'"),
    (None, "malformed result cell"),
])
def test_a_cell_file_that_is_not_a_record_is_named(tmp_path, text, words):
    store = Store(tmp_path)
    raw = make_cell("a", 0).to_json()
    if text is None and "status" in words:
        text = json.dumps({**raw, "status": "done"})
    elif text is None:
        text = json.dumps({**raw, "eval": [{"eval_height": 8}]})
    store.cells_dir.mkdir()
    (store.cells_dir / "a__0.json").write_text(text)
    with pytest.raises(StoreError) as caught:
        store.cells()
    assert str(caught.value).startswith(f"{store.cells_dir / 'a__0.json'}: ") and words in str(caught.value)


def test_the_schema_names_the_cell_axes_and_types_every_metrics_column():
    assert CELL_AXES == ("variant", "task")
    point, score = (f.name for f in dataclasses.fields(EvalPoint)), (f.name for f in dataclasses.fields(Score))
    assert set(METRICS_COLUMNS) == {*CELL_AXES, "base_variant", "seed", *point, *score} - {"hits"}, \
        "every cell axis and eval-point field is a metrics column; the hits stay in the cell"
    assert METRIC_TYPES["seed"] is int and METRIC_TYPES["accuracy"] is float and METRIC_TYPES["at_train_res"] is bool


def test_atomic_write_replaces_whole_files(tmp_path):
    target = tmp_path / "deep" / "file.txt"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two" and os.listdir(target.parent) == ["file.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "metrics.csv", b"x")
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(previous)
    assert (tmp_path / "metrics.csv").stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask


def test_failed_write_keeps_the_previous_version_and_names_the_path(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    atomic_write(target, b"previous")

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(store_module.os, "fsync", disk_full)
    with pytest.raises(StoreError, match=f"could not write {target}: No space left on device"):
        atomic_write(target, b"new contents")
    assert target.read_bytes() == b"previous" and os.listdir(tmp_path) == ["metrics.csv"]


def test_a_cell_is_claimed_by_one_holder_at_a_time(tmp_path):
    store = Store(tmp_path)
    with store.claim("nope", "control", 0) as first:
        with (store.claim("nope", "control", 0) as second, store.claim("nope", "control", 1) as other_seed,
              store.claim("nope", "abs_position", 0) as other_task):
            assert first and not second and other_seed and other_task
    with store.claim("nope", "control", 0) as again:
        assert again  # released when the holder leaves (or dies)


def test_metrics_are_rebuilt_from_ok_cells_in_a_stable_order(tmp_path):
    store = Store(tmp_path)
    store.publish(make_cell("b", 1))
    store.publish(make_cell("a", 0, sizes=((16, 16),), task="rel_position"))
    store.publish(make_cell("a", 0, sizes=((16, 16),), task="control"))
    store.publish(make_cell("c", 0, status="failed"))
    assert store.rebuild_metrics() == 4
    with open(store.metrics_path) as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == METRICS_COLUMNS
    assert [(r["variant"], r["task"], r["seed"], r["eval_height"]) for r in rows] == [
        ("a", "control", "0", "16"), ("a", "rel_position", "0", "16"), ("b", "rel_position", "1", "8"),
        ("b", "rel_position", "1", "16")]
    assert rows[2]["aspect"] == "3.0" and rows[2]["at_train_res"] == "False" and rows[2]["solvable"] == "False"


def test_metrics_of_a_results_folder_from_before_records_are_rebuilt_byte_for_byte(tmp_path):
    before = Path(__file__).parent / "data" / "cell_before_records.json"
    store = Store(tmp_path)
    store.cells_dir.mkdir()
    shutil.copy(before, store.cells_dir / "rope_axial__0.json")
    store.rebuild_metrics()
    old = json.loads(before.read_text())
    cell = store.read_cell("rope_axial", "abs_position", 0)
    solvable = {(r.point.eval_height, r.point.eval_width): r.point.solvable for r in cell.eval}
    expected = "".join([",".join(METRICS_COLUMNS) + "\n"] + [",".join(
        str({"variant": "rope_axial", "base_variant": "rope_axial", "task": "abs_position", "seed": 0,
             "solvable": solvable[row["eval_height"], row["eval_width"]], **row}[c]) for c in METRICS_COLUMNS)
        + "\n" for row in sorted(old["eval"], key=lambda r: (r["eval_height"], r["eval_width"]))])
    assert store.metrics_path.read_text() == expected


def test_writing_a_cell_removes_its_checkpoint(tmp_path):
    store = Store(tmp_path)
    store.save_checkpoint("a", "rel_position", 0, {"step": 3})
    store.save_checkpoint("a", "control", 0, {"step": 4})
    assert store.load_checkpoint("a", "rel_position", 0) == {"step": 3}
    store.write_cell(make_cell("a", 0))
    assert store.load_checkpoint("a", "rel_position", 0) is None
    assert store.read_cell("a", "rel_position", 0).status == "ok"
    assert store.load_checkpoint("a", "control", 0) == {"step": 4}, "another task's checkpoint is its own"


def test_results_of_another_config_are_refused_with_the_differing_keys(tmp_path):
    store = Store(tmp_path / "out")
    store.write_cell(make_cell("a", 0))
    store.check_compatible("h1", CONFIG, {"a": IDENTITY})
    changed = {**CONFIG, "train": {"lr": 0.01, "steps": 10}, "model": {"dim": 64}}
    with pytest.raises(StoreError) as caught:
        store.check_compatible("h2", changed, {"a": IDENTITY})
    message = str(caught.value)
    assert "differs in model.dim, train.lr" in message and f"--out {tmp_path / 'out-2'}" in message
    edited = {**IDENTITY, "options": {"combine": "stack"}}
    with pytest.raises(StoreError, match=r"differs in variants\[a\]\.options\.combine"):
        store.check_compatible("h1", CONFIG, {"a": edited})


def test_unusable_output_dirs_are_reported_before_writing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is not a folder"):
        Store(tmp_path / "file" / "out").check_writable()
    Store(tmp_path / "new" / "out").check_writable()
    assert not (tmp_path / "new").exists()


def test_unreadable_cell_file_is_named(tmp_path):
    store = Store(tmp_path)
    store.cells_dir.mkdir()
    (store.cells_dir / "a__0.json").write_text("{not json")
    with pytest.raises(StoreError, match="a__0.json is not a readable cell file"):
        store.cells()
