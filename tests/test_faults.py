"""Faults never lose or corrupt a result: SIGKILL anywhere (mid cell-file write included), Ctrl-C
and a failing write (disk full). Each time a re-run completes the store and ends with the
metrics.csv of an uninterrupted run.

Covered elsewhere: two shards and a duplicate shard on one directory
(test_runner.test_concurrent_shards_and_a_duplicate_share_one_directory), a NaN cell isolated
(test_runner.test_non_finite_loss_fails_only_that_cell), a SIGKILL between cells
(test_runner.test_sigkill_after_first_cell_then_rerun_gives_identical_metrics).
"""
import csv
import errno
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.store import METRICS_COLUMNS, Store
from conftest import REPO


def start(run_all, config, out, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([*run_all, "--config", str(config), "--out", str(out)], cwd=REPO, **kwargs)


def wait_for(condition, process, timeout=120.0) -> bool:
    """Poll until ``condition()`` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
    return True


def assert_sound(out: Path) -> None:
    """Every cell file and metrics.csv is whole; anything else in cells/ is a writer's temp file."""
    Store(out).cells()  # raises StoreError on a cell file that does not parse
    if (out / "metrics.csv").exists():
        with open(out / "metrics.csv") as handle:
            rows = list(csv.reader(handle))
        assert rows[0] == METRICS_COLUMNS and all(len(row) == len(METRICS_COLUMNS) for row in rows)
    assert all(p.suffix == ".json" or p.name.startswith(".") for p in (out / "cells").glob("*"))


def assert_completes_like(reference: Path, config: Path, out: Path) -> None:
    assert main(["--config", str(config), "--out", str(out)]) == 0
    assert sorted(Store(out).cells()) == sorted(Store(reference).cells())
    assert (out / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


def test_sigkill_at_random_points_never_corrupts_the_store(reference, run_all, tmp_path):
    config, finished = reference
    out = tmp_path / "out"
    rng = random.Random(20240611)
    killed = 0
    for _ in range(5):
        # The run's first claim creates locks/ once its imports are done (no process holds the old
        # one); the whole work then takes ~3 s (each cell ~0.3 s: training, checkpoints, eval,
        # cell file; then the report).
        shutil.rmtree(out / "locks", ignore_errors=True)
        process = start(run_all, config, out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if wait_for(lambda: (out / "locks").is_dir(), process):
            time.sleep(rng.uniform(0.0, 0.7))
        process.kill()
        killed += process.wait() == -signal.SIGKILL
        assert_sound(out)
    assert killed, "no kill landed while the run was going"
    assert_completes_like(finished, config, out)


# Dies while writing the first cell file: half its bytes reached the temporary file, never renamed.
CRASH_IN_CELL_WRITE = """
import os, signal, sys
fsync = os.fsync
def crash(fd):
    if "/cells/." in os.readlink(f"/proc/self/fd/{fd}"):
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    fsync(fd)
os.fsync = crash
from bench.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_while_a_cell_file_is_written(reference, tmp_path):
    config, finished = reference
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", CRASH_IN_CELL_WRITE, "--config", str(config), "--out", str(out)],
                          cwd=REPO, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL
    [partial] = (out / "cells").iterdir()
    assert partial.name.startswith(".nope__abs_position__0.json.") and partial.name.endswith(".tmp")
    with pytest.raises(ValueError):
        json.loads(partial.read_text())
    store = Store(out)
    assert store.cells() == {} and store.read_cell("nope", "abs_position", 0) is None, \
        "a half-written file is not a result"
    assert store.load_checkpoint("nope", "abs_position", 0)["state"]["step"] == 30, \
        "its training was saved before evaluation"
    assert_completes_like(finished, config, out)


def test_ctrl_c_saves_progress_and_prints_the_resume_command(reference, run_all, tmp_path):
    config, finished = reference
    out = tmp_path / "out"
    process = start(run_all, config, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Mid-cell: the first cell has saved its first checkpoint (step 4 of 30).
    assert wait_for(lambda: any((out / "checkpoints").glob("*.pt")), process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and stdout == "" and "Traceback" not in stderr
    resume = shlex.join(["python", "run_all.py", "--config", str(config), "--out", str(out)])
    # The last line (after a progress bar's clearing codes): where the progress is and how to resume.
    stopped = re.search(rf"\binterrupted \(stopped at step (\d+) of 30\); progress is saved in "
                        rf"{re.escape(str(out))}\. Resume with: {re.escape(resume)}$", stderr.splitlines()[-1])
    assert stopped, stderr[-500:]
    store = Store(out)
    assert store.cells() == {}
    assert store.load_checkpoint("nope", "abs_position", 0)["state"]["step"] == int(stopped[1]) >= 4
    assert main(shlex.split(resume)[2:]) == 0, "the printed command resumes the run"
    assert (out / "metrics.csv").read_text() == (finished / "metrics.csv").read_text()


@pytest.mark.parametrize("failing", ["cell", "metrics"])
def test_a_failed_write_keeps_the_previous_state_and_names_the_path(reference, tmp_path, monkeypatch, capsys,
                                                                    failing):
    config, finished = reference
    out = tmp_path / "out"
    # The previous state: every cell but the last one of the plan, and their metrics.csv.
    shutil.copytree(finished / "cells", out / "cells",
                    ignore=shutil.ignore_patterns("rope_axial__abs_position__1.json"))
    Store(out).rebuild_metrics()
    before = {p.name: p.read_bytes() for p in [*(out / "cells").iterdir(), out / "metrics.csv"]}
    target = out / "cells" / "rope_axial__abs_position__1.json" if failing == "cell" else out / "metrics.csv"
    fsync = os.fsync

    def disk_full(fd):  # the store fsyncs every temporary file before renaming it over its target
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{target.name}."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full)
    assert main(["--config", str(config), "--out", str(out)]) == 3
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: could not write {target}: No space left on device; "
                                                        f"finished cells are kept. Resume with: python run_all.py "
                                                        f"--config {config} --out {out}")
    after = {p.name: p.read_bytes() for p in [*(out / "cells").iterdir(), out / "metrics.csv"]}
    if failing == "cell":
        assert after == before
        assert Store(out).load_checkpoint("rope_axial", "abs_position", 1)["state"]["step"] == 30, \
            "the training is kept"
    else:  # the new cell is stored; metrics.csv stays the previous version until the next rebuild
        assert after.pop("rope_axial__abs_position__1.json") and after == before
    assert not list(out.rglob("*.tmp")), "the failed write left no temporary file"
    monkeypatch.undo()  # space is freed
    assert_completes_like(finished, config, out)


def test_parallel_workers_give_the_serial_numbers_through_ctrl_c_and_resume(make_config, run_all, tmp_path):
    """Two cell workers share the cells through the store's locks: the same metrics.csv as a serial
    run, also when Ctrl-C stops them mid-cell and a rerun resumes their checkpoints."""
    # Cells of 300 steps: whenever two are in flight, the later one has far more left to do than the
    # parent takes to pass Ctrl-C on. With TINY's 30, a worker that started late could let the press
    # land in the last pair of cells, and both could finish before the stop reached them.
    config = make_config(**{"steps: 30": "steps: 300"})
    finished = tmp_path / "serial"
    assert main(["--config", str(config), "--out", str(finished), "--workers", "1"]) == 0
    out = tmp_path / "out"
    process = subprocess.Popen([*run_all, "--config", str(config), "--out", str(out), "--workers", "2"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: len(list((out / "checkpoints").glob("*.pt"))) == 2, process), "two cells in flight"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr
    assert "Resume with:" in stderr.splitlines()[-1]
    assert_sound(out)
    assert 0 < len(list((out / "checkpoints").glob("*.pt"))) and len(Store(out).cells()) < 4
    done = subprocess.run([*run_all, "--config", str(config), "--out", str(out), "--workers", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "metrics.csv").read_text() == (finished / "metrics.csv").read_text()
    assert {cell.threads for cell in Store(out).cells().values()} == {1}
