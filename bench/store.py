"""The results store: one JSON file per finished cell, and a CSV rebuilt from them.

``CellRecord`` (with its ``EvalRow``s) is the one schema of a cell: the runner writes it, the
store reads and writes it as JSON, the report reads it. Cell files written before a field existed
still load: the field is derived from the file's stored config. So do those named before tasks were
an axis (``<label>__<seed>.json``, one task per folder): the store finds them under that name.

Layout of an output directory DIR::

    cells/<label>__<task>__<seed>.json      one finished cell (status "ok" or "failed")
    checkpoints/<label>__<task>__<seed>.pt  mid-cell training state, removed when the cell finishes
    locks/<label>__<task>__<seed>.lock      held (flock) by the process training that cell
    locks/store.lock                        held while a cell is added or metrics.csv / the report rebuilt
    metrics.csv                             long format, one row per (cell, eval size)
    config.json                             the run's config keys that no cell holds (variants, seeds, baseline, ...)
    run.json                                the last run: command, start and end, wall time, commit, environment

Every file is written to a temporary file in its own folder, fsynced, then renamed over its
target, so a reader or a crash never sees half a file, and a failed write (disk full) leaves the
previous version in place. Locks are advisory flocks: the kernel drops them when a process dies,
so a killed run never leaves a cell claimed. Several processes (shards, or two copies of one
shard) can share DIR: a cell is trained by whoever claims it first, and cells are added and
metrics.csv rebuilt under one lock, so the last rebuild always sees every finished cell.
"""
from __future__ import annotations

import csv
import dataclasses
import fcntl
import io
import json
import os
import tempfile
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import torch

from .config import ResolutionConfig
from .data import known_num_classes, solvable
from .errors import BenchError
from .evaluate import Hits, Score
from .plan import EvalPoint, TrainResolution, cell_identity, cell_name, cell_task, unhashed_config

AXIS = {"axis": True}   # marks a CellRecord field that tells cells apart (with the seed)
RUN_FILE = "run.json"   # the runner's record of its last run; the report's provenance reads it


class StoreError(BenchError):
    """A results directory that cannot be used or written."""


class WriteError(StoreError):
    """A write that failed midway through a run (disk full, I/O error): not the user's mistake."""


# ---- the records ------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalRow:
    """One eval size of a cell: where it sits (from the plan) and what the model scored there."""
    point: EvalPoint
    score: Score

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self.point), **dataclasses.asdict(self.score)}

    @classmethod
    def from_json(cls, raw: dict) -> "EvalRow":
        hits = raw.get("hits")   # absent from rows written before it was kept
        return cls(_pick(EvalPoint, raw), Score(raw["accuracy"], raw["loss"], Hits(**hits) if hits else None))


@dataclass(frozen=True)
class CellRecord:
    """One finished (variant, task, seed) cell, ok or failed. Fields marked AXIS, with the seed, tell
    cells apart: the report never averages over them (a new axis is a field marked so here)."""
    variant: str = field(metadata=AXIS)   # the label
    base_variant: str                     # registry name
    options: dict[str, Any]               # every option the embedding was built with
    resolution: ResolutionConfig          # the training policy
    task: str = field(metadata=AXIS)      # the synthetic task, or the dataset's name
    seed: int
    config_hash: str
    status: Literal["ok", "failed"]
    reason: str | None                    # why it failed
    num_classes: int | None               # None: unknown (an image-folder cell from before the field)
    param_count: int
    train_time_s: float
    eval_time_s: float
    tokens_seen: int
    images_seen: int
    steps: int
    final_train_loss: float | None        # mean over the last tenth of the steps; None if failed
    train_resolution: TrainResolution
    device: str
    world_size: int
    train_losses: list[float]             # every step's
    eval: list[EvalRow]                   # one per eval size, in grid order; empty if failed
    config: dict                          # the hashed part of the config
    # Intra-op threads it trained and evaluated with: float rounding, so the last digits, depend on
    # it. None: written before the field.
    threads: int | None = None

    @property
    def name(self) -> str:
        return cell_name(self.variant, self.task, self.seed)

    @property
    def identity(self) -> dict:
        return cell_identity(self.base_variant, self.options, self.resolution)

    def to_json(self) -> dict:
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**plain, "resolution": dataclasses.asdict(self.resolution),
                "train_resolution": dataclasses.asdict(self.train_resolution),
                "eval": [row.to_json() for row in self.eval]}

    @classmethod
    def from_json(cls, raw, path: Path) -> "CellRecord":
        """The record of a cell file's JSON; StoreError naming ``path`` when it is not one."""
        if not isinstance(raw, dict):
            raise StoreError(f"{path}: a result cell must be a JSON object")
        try:
            raw = {"threads": None, **_derived_fields(raw), **raw}
            missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw]
            if missing:
                raise StoreError(f"{path}: result cell lacks {', '.join(missing)}")
            raw = {**raw, "eval": [_derived_row(row, raw) for row in raw["eval"]]}
            if raw["status"] not in ("ok", "failed"):
                raise StoreError(f"{path}: status must be 'ok' or 'failed', got {raw['status']!r}")
            values = {f.name: raw[f.name] for f in dataclasses.fields(cls)}
            return cls(**{**values, "resolution": ResolutionConfig(**raw["resolution"]),
                          "train_resolution": TrainResolution(**raw["train_resolution"]),
                          "eval": [EvalRow.from_json(row) for row in raw["eval"]]})
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise StoreError(f"{path}: malformed result cell ({type(error).__name__}: {error})") from None


CELL_AXES = tuple(f.name for f in dataclasses.fields(CellRecord) if f.metadata.get("axis"))
METRICS_COLUMNS = ["variant", "base_variant", "task", "seed", "eval_height", "eval_width", "aspect", "side",
                   "num_tokens", "accuracy", "loss", "in_train_range", "train_range", "at_train_res", "solvable"]
# Each column's annotation (int, float, bool, str or a Literal), from the record it comes from.
METRIC_TYPES = {column: {**typing.get_type_hints(CellRecord), **typing.get_type_hints(EvalPoint),
                         **typing.get_type_hints(Score)}[column] for column in METRICS_COLUMNS}


def _derived_fields(raw: dict) -> dict:
    """``task`` and ``num_classes`` of a cell file written before they were recorded (one task
    per config then), from its stored config (empty when it has none: the record then names what
    it lacks)."""
    data = raw.get("config", {}).get("data", {})
    if "name" not in data or "task" in raw:
        return {}
    name, task = data["name"], data.get("task")
    return {"task": cell_task(name, task), "num_classes": known_num_classes(name, task)}


def _derived_row(row: dict, cell: dict) -> dict:
    """An eval row written before ``solvable`` was recorded, with it, from the cell's task and
    stored patch size."""
    if "solvable" in row:
        return row
    patch = cell["config"]["model"]["patch_size"]
    return {**row, "solvable": solvable(cell["task"], row["eval_height"] // patch, row["eval_width"] // patch)}


def _pick(cls, raw: dict):
    """A flat record's part that is a ``cls``."""
    return cls(**{f.name: raw[f.name] for f in dataclasses.fields(cls)})


def metric_rows(cells: Iterable[CellRecord]) -> list[dict]:
    """metrics.csv's rows: one per (ok cell, eval size), sorted by variant, task, seed, height,
    width. The per-image hits stay in the cell files."""
    rows = [{"variant": cell.variant, "base_variant": cell.base_variant, "task": cell.task, "seed": cell.seed,
             **dataclasses.asdict(row.point), "accuracy": row.score.accuracy, "loss": row.score.loss}
            for cell in cells if cell.status == "ok" for row in cell.eval]
    return sorted(rows, key=lambda r: (r["variant"], r["task"], r["seed"], r["eval_height"], r["eval_width"]))


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts (added or removed keys too)."""
    keys = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}.{key}" if prefix else key
        a, b = old.get(key, dataclasses.MISSING), new.get(key, dataclasses.MISSING)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, path)
        elif a != b:
            keys.append(path)
    return keys


# ---- files ------------------------------------------------------------------------------------

def _file_mode() -> int:
    """What open() would give a new file: mkstemp's 0600 would hide results from a shared group."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` all at once, or leave it untouched and raise StoreError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise WriteError(f"could not write {path}: {error.strerror or error}") from None
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"
        self.checkpoints_dir = self.root / "checkpoints"
        self.locks_dir = self.root / "locks"
        self.metrics_path = self.root / "metrics.csv"
        self.config_path = self.root / "config.json"
        self.run_path = self.root / RUN_FILE

    # ---- checks that write nothing -----------------------------------------------------------

    def check_writable(self) -> None:
        """Fail now, before any training, if DIR cannot be created or written."""
        existing = self.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise StoreError(f"cannot use output dir {self.root}: {existing} is not a folder")
        for folder in [existing] + [d for d in (self.cells_dir, self.checkpoints_dir, self.locks_dir) if d.is_dir()]:
            if not os.access(folder, os.W_OK | os.X_OK):
                raise StoreError(f"cannot write to output dir {self.root}: {folder} is not writable")

    def check_compatible(self, config_hash: str, config: dict, identities: dict[str, dict],
                         advice: str | None = None) -> None:
        """Refuse to add cells to results made with a different config.

        ``identities`` maps each planned variant label to what its stored cells must match
        (``bench.plan.cell_identity``), so an edited variant entry is not reused either.
        ``advice`` ends the message: what to do instead (default: a new --out, or for an edited
        variant entry a new label).
        """
        new_out = f"run with a new --out, e.g. --out {self.free_sibling()}"
        for name, cell in self.cells().items():
            if cell.config_hash != config_hash:
                keys = differing_keys(cell.config, config) or ["config hash"]
                raise StoreError(f"{self.root} holds results of a different config (cell {name} differs in "
                                 f"{', '.join(keys)}); {advice or new_out}")
            expected = identities.get(cell.variant)
            if expected is not None:
                keys = differing_keys(cell.identity, expected, f"variants[{cell.variant}]")
                if keys:
                    raise StoreError(f"{self.root} holds cell {name} made with a different variant entry "
                                     f"(differs in {', '.join(keys)}); "
                                     f"{advice or 'give the entry a new label or ' + new_out}")

    def free_sibling(self) -> Path:
        n = 2
        while self.root.with_name(f"{self.root.name}-{n}").exists():
            n += 1
        return self.root.with_name(f"{self.root.name}-{n}")

    # ---- cells -------------------------------------------------------------------------------

    def cell_path(self, label: str, task: str, seed: int) -> Path:
        return self.cells_dir / f"{cell_name(label, task, seed)}.json"

    def checkpoint_path(self, label: str, task: str, seed: int) -> Path:
        return self.checkpoints_dir / f"{cell_name(label, task, seed)}.pt"

    def read_cell(self, label: str, task: str, seed: int) -> CellRecord | None:
        path = self.cell_path(label, task, seed)
        if path.exists():
            return _read_cell(path)
        # A folder from before tasks were an axis names its cells without the task.
        legacy = self.cells_dir / f"{label}__{seed}.json"
        cell = _read_cell(legacy) if legacy.exists() else None
        return cell if cell is not None and cell.task == task else None

    def cells(self) -> dict[str, CellRecord]:
        """Every finished cell, by file name (temporary files of writes in flight are ignored)."""
        if not self.cells_dir.is_dir():
            return {}
        return {path.stem: _read_cell(path) for path in sorted(self.cells_dir.glob("*.json"))
                if not path.name.startswith(".")}

    def write_cell(self, cell: CellRecord) -> Path:
        path = self.cell_path(cell.variant, cell.task, cell.seed)
        atomic_write(path, json.dumps(cell.to_json(), indent=1, allow_nan=True).encode())
        self.checkpoint_path(cell.variant, cell.task, cell.seed).unlink(missing_ok=True)
        return path

    @contextmanager
    def claim(self, label: str, task: str, seed: int) -> Iterator[bool]:
        """Yield True while this process holds the cell's lock, False if another process does."""
        with self._lock(self.locks_dir / f"{cell_name(label, task, seed)}.lock", wait=False) as held:
            yield held

    # ---- the run's config --------------------------------------------------------------------

    def write_config(self, config: dict) -> None:
        """Record a run's resolved config: config.json takes the keys its cells do not hold
        (``unhashed_config``), so the folder keeps each key once and the two cannot disagree."""
        atomic_write(self.config_path, json.dumps(unhashed_config(config), indent=1, default=str).encode())

    def config(self, cells: Iterable[CellRecord]) -> dict:
        """The resolved config of a folder of these cells: the part they hold, with config.json's
        keys where a run wrote one. StoreError when the cells hold several configs."""
        cells = list(cells)
        hashes = sorted({cell.config_hash for cell in cells})
        if len(hashes) > 1:
            raise StoreError(f"{self.cells_dir}: cells of {len(hashes)} different configs (config_hash "
                             f"{', '.join(hashes)}); one folder holds one experiment")
        held = next((cell.config for cell in cells if cell.config), {})
        if not self.config_path.exists():
            return dict(held)
        try:
            run = json.loads(self.config_path.read_text())
        except (OSError, ValueError) as error:
            raise StoreError(f"{self.config_path} is unreadable ({type(error).__name__}); rerun with "
                             f"--report-only to rewrite it") from None
        if not isinstance(run, dict):
            raise StoreError(f"{self.config_path}: must be a JSON object")
        return _merged(held, run)

    def write_run(self, run: dict) -> None:
        """Record how the last run went: its command, times, commit and environment."""
        atomic_write(self.run_path, json.dumps(run, indent=1).encode())

    # ---- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, label: str, task: str, seed: int, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.checkpoint_path(label, task, seed), buffer.getvalue())

    def load_checkpoint(self, label: str, task: str, seed: int) -> dict | None:
        path = self.checkpoint_path(label, task, seed)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a checkpoint we cannot read only costs a restart of the cell
            raise StoreError(f"{path} is unreadable ({type(error).__name__}); delete it to restart "
                             "that cell from scratch") from None

    # ---- metrics.csv -------------------------------------------------------------------------

    @contextmanager
    def publishing(self) -> Iterator[None]:
        """Hold the store-wide lock under which cells are added, metrics.csv rebuilt and the
        report written, so whoever holds it sees the three agree. Not re-entrant."""
        with self._lock(self.locks_dir / "store.lock", wait=True):
            yield

    def publish(self, cell: CellRecord) -> None:
        """Add a finished cell and rebuild metrics.csv with it."""
        with self.publishing():
            self.write_cell(cell)
            self.rebuild_metrics()

    def rebuild_metrics(self) -> int:
        """Rewrite metrics.csv from cells/ (rows of ok cells, sorted); returns the row count.
        Call it under ``publishing()`` when other processes may share the directory."""
        rows = metric_rows(self.cells().values())
        text = io.StringIO()
        writer = csv.DictWriter(text, METRICS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.metrics_path, text.getvalue().encode())
        return len(rows)

    @contextmanager
    def _lock(self, path: Path, wait: bool) -> Iterator[bool]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise StoreError(f"could not create lock file {path}: {error.strerror or error}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                held = True
            except BlockingIOError:
                held = False
            yield held
        finally:
            os.close(fd)  # closing the descriptor releases the lock


def _merged(base: dict, extra: dict) -> dict:
    """``base`` with the keys of ``extra`` added, nested sections merged key by key."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_cell(path: Path) -> CellRecord:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise StoreError(f"{path} is not a readable cell file ({error}); delete it to re-run that cell") from None
    return CellRecord.from_json(raw, path)
