"""The results store: atomic files, per-cell claims, compatibility checks, metrics.csv."""
import csv
import errno
import os

import pytest

from bench import store as store_module
from bench.store import METRICS_COLUMNS, Store, StoreError, atomic_write

CONFIG = {"train": {"lr": 0.001, "steps": 10}, "model": {"dim": 32}}
IDENTITY = {"base_variant": "nope", "options": {}, "resolution": {"mode": "navit"}}


def make_cell(label, seed, status="ok", config_hash="h1", config=CONFIG, sizes=((16, 16), (8, 24))):
    rows = [{"eval_height": h, "eval_width": w, "aspect": w / h, "side": round((h * w) ** 0.5),
             "num_tokens": h * w // 64, "accuracy": 0.5, "loss": 1.25, "in_train_range": True,
             "train_range": "in", "at_train_res": h == w} for h, w in sizes]
    return {"variant": label, **IDENTITY, "seed": seed, "config_hash": config_hash, "config": config,
            "status": status, "reason": None if status == "ok" else "train loss became nan at step 3",
            "eval": rows if status == "ok" else []}


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
    with store.claim("nope", 0) as first:
        with store.claim("nope", 0) as second, store.claim("nope", 1) as other_cell:
            assert first and not second and other_cell
    with store.claim("nope", 0) as again:
        assert again  # released when the holder leaves (or dies)


def test_metrics_are_rebuilt_from_ok_cells_in_a_stable_order(tmp_path):
    store = Store(tmp_path)
    store.publish(make_cell("b", 1))
    store.publish(make_cell("a", 0, sizes=((16, 16),)))
    store.publish(make_cell("c", 0, status="failed"))
    assert store.rebuild_metrics() == 3
    with open(store.metrics_path) as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert reader.fieldnames == METRICS_COLUMNS
    assert [(r["variant"], r["seed"], r["eval_height"]) for r in rows] == [("a", "0", "16"), ("b", "1", "8"),
                                                                            ("b", "1", "16")]
    assert rows[1]["aspect"] == "3.0" and rows[1]["at_train_res"] == "False"


def test_writing_a_cell_removes_its_checkpoint(tmp_path):
    store = Store(tmp_path)
    store.save_checkpoint("a", 0, {"step": 3})
    assert store.load_checkpoint("a", 0) == {"step": 3}
    store.write_cell(make_cell("a", 0))
    assert store.load_checkpoint("a", 0) is None and store.read_cell("a", 0)["status"] == "ok"


def test_results_of_another_config_are_refused_with_the_differing_keys(tmp_path):
    store = Store(tmp_path / "out")
    store.write_cell(make_cell("a", 0))
    store.check_compatible("h1", CONFIG, {"a": IDENTITY})
    changed = {"train": {"lr": 0.01, "steps": 10}, "model": {"dim": 64}}
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
