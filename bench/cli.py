"""The runner's command line: train and evaluate every (variant, seed) cell of an experiment.

Exit status: 0 every selected cell is ok; 1 some cell failed (its loss went NaN or inf; the
others still ran); 2 a user mistake, reported as one line on stderr before anything is written;
130 stopped by Ctrl-C (or SIGTERM) with the running cell checkpointed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .config import (Experiment, VariantSpec, check_seeds, config_hash, hashed_config, load_experiment,
                     reference_side, to_dict, train_range)
from .data import TrainBatches, build_source
from .errors import BenchError, ConfigError
from .evaluate import EvalSet, evaluate
from .perf import cpu_name
from .posembed import list_variants
from .store import Store, WriteError, cell_name
from .train import (CellTrainer, Interrupted, MemoBatches, Ranks, build_cell_model, init_distributed, param_count,
                    progress, torch_device)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "experiments" / "default.yaml"
# Training batches (per seed) and eval batches are kept in RAM for reuse by every variant while
# each stays under this size; above it they are rebuilt per cell.
MEMO_LIMIT_BYTES = 2 * 2**30


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, like every other user mistake
        raise BenchError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="run_all.py", description="Train and evaluate every (variant, seed) cell of an "
                                                    "experiment into a resumable results directory.")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="experiment YAML (default: %(default)s)")
    parser.add_argument("--out", help="results directory (default: results/<experiment name>)")
    parser.add_argument("--variants", help="comma-separated variant labels to run (default: all in the config)")
    parser.add_argument("--seeds", help="comma-separated seeds, replacing the config's")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    parser.add_argument("--shard", help="I/N: run the I-th of N interleaved shares of the cells (0-based, "
                                        "as $SLURM_ARRAY_TASK_ID); every shard must get the same other flags")
    parser.add_argument("--report-only", action="store_true", help="rebuild metrics.csv and the report from "
                                                                   "finished cells, train nothing")
    parser.add_argument("--list", action="store_true", help="print the registered variants and exit")
    return parser


@dataclass(frozen=True)
class Cell:
    spec: VariantSpec
    seed: int

    @property
    def name(self) -> str:
        return cell_name(self.spec.label, self.seed)


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise BenchError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 (0-based, as Slurm array ids)")
    return int(match[1]), int(match[2])


def parse_seeds(text: str | None, default: list[int]) -> list[int]:
    if text is None:
        return list(default)
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise BenchError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    check_seeds(seeds, "--seeds")
    return seeds


def select_variants(experiment: Experiment, text: str | None) -> list[VariantSpec]:
    if text is None:
        return list(experiment.variants)
    labels = [v.label for v in experiment.variants]
    chosen = [part.strip() for part in text.split(",")]
    for label in chosen:
        if label not in labels:
            raise BenchError(f"--variants: {label!r} is not a variant of this experiment; valid: {', '.join(labels)}")
    return [v for v in experiment.variants if v.label in chosen]


def plan_cells(variants: list[VariantSpec], seeds: list[int], shard: tuple[int, int]) -> list[Cell]:
    """Seed-major order (every variant of seed 0 first, so early results already compare
    variants), then every N-th cell from I: shards are disjoint and cover every cell."""
    index, count = shard
    cells = [Cell(spec, seed) for seed in seeds for spec in variants]
    return cells[index::count]


def cell_identity(experiment: Experiment, spec: VariantSpec) -> dict:
    """What a stored cell must share with the config, besides the hash (JSON-normalised)."""
    resolution = dataclasses.asdict(experiment.resolution_of(spec))
    return json.loads(json.dumps({"base_variant": spec.name, "options": spec.options, "resolution": resolution}))


class StopRequest:
    """Ctrl-C (or SIGTERM, as Slurm sends before preempting) asks training to stop at the next
    step boundary after checkpointing; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def install(self) -> None:
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nstopping after the current step (Ctrl-C again to abort at once)", file=sys.stderr)


@dataclass
class Runner:
    experiment: Experiment
    store: Store
    ranks: Ranks
    device: torch.device
    stop: StopRequest
    show_progress: bool = True

    def __post_init__(self):
        experiment = self.experiment
        train, patch = experiment.train, experiment.model.patch_size
        self.hashed = hashed_config(experiment)
        self.hash = config_hash(self.hashed)
        self.sizes = experiment.eval_sizes()
        self.train_source = build_source(experiment.data, "train")
        test_source = build_source(experiment.data, "test")
        resolutions = {_key(experiment.resolution_of(v)): experiment.resolution_of(v) for v in experiment.variants}
        for resolution in resolutions.values():  # batching limits (rows per rank...) fail now, before any write
            try:
                self._new_train_batches(resolution, seed=0)
            except ConfigError as error:
                raise error.under("train") from None
        token_bytes = test_source.channels * patch * patch * 4 + 24   # pixels, image id and (row, col)
        train_tokens = train.steps * train.tokens_per_batch * len(resolutions)
        test_tokens = len(test_source) * sum((h // patch) * (w // patch) for h, w in self.sizes)
        self.keep_train = train.num_workers == 0 and train_tokens * token_bytes <= MEMO_LIMIT_BYTES
        keep_eval = experiment.eval.num_workers == 0 and test_tokens * token_bytes <= MEMO_LIMIT_BYTES
        self.eval_set = EvalSet(test_source, patch, experiment.eval, keep_eval)
        self.memo: dict[tuple, MemoBatches] = {}

    def run(self, cells: list[Cell]) -> list[str]:
        """Run every cell not finished yet; returns the names of cells claimed by other processes."""
        busy = []
        done_before = {c.name for c in cells if self.store.read_cell(c.spec.label, c.seed) is not None}
        # A with block: an error or Ctrl-C closes the bar before the CLI prints its last line, not after.
        with progress(total=len(cells), initial=len(done_before), desc="cells", unit="cell", position=0,
                      disable=not (self.show_progress and self.ranks.is_main)) as bar:
            for cell in cells:
                # Every rank walks every cell; rank 0 alone decides (it holds the lock) and tells the others.
                lock = (self.store.claim(cell.spec.label, cell.seed) if self.ranks.is_main
                        else contextlib.nullcontext(True))
                with lock as held:
                    finished = self.store.read_cell(cell.spec.label, cell.seed) is not None
                    if self._agree(held and not finished):
                        result = self.run_cell(cell)
                        if self.ranks.is_main:
                            self.store.publish(result)
                            if result["status"] != "ok":
                                tqdm.write(f"cell {cell.name} failed: {result['reason']}", file=sys.stderr)
                        self._barrier()
                    elif not held:
                        busy.append(cell.name)
                if cell.name not in done_before:
                    bar.update()
        return busy

    def run_cell(self, cell: Cell) -> dict:
        experiment, spec, seed = self.experiment, cell.spec, cell.seed
        train = experiment.train
        resolution = experiment.resolution_of(spec)
        low, high = train_range(resolution, experiment.model.patch_size)
        reference = reference_side(experiment, spec, self.sizes)
        batches = self._train_batches(resolution, seed)
        model = build_cell_model(experiment, spec, self.train_source.num_classes, self.train_source.channels, seed)
        model.to(self.device)
        identity = cell_identity(experiment, spec)
        trainer = CellTrainer(train, self.device, self.ranks,
                              save=lambda state: self.store.save_checkpoint(spec.label, seed, state),
                              load=lambda: self.store.load_checkpoint(spec.label, seed),
                              should_stop=self.stop, label=cell.name, show_progress=self.show_progress,
                              checkpoint_check={"config_hash": self.hash, "seed": seed, **identity})
        state = trainer.run(model, batches)
        rows, eval_time = [], 0.0
        if state.failure is None and self.ranks.is_main:
            started = time.perf_counter()
            rows = evaluate(model, self.eval_set, self.sizes, self.device, (low, high), reference, self.stop,
                            cell.name, self.show_progress)
            eval_time = time.perf_counter() - started
        return {"variant": spec.label, **identity, "seed": seed, "config_hash": self.hash,
                "status": "ok" if state.failure is None else "failed", "reason": state.failure,
                "param_count": param_count(model), "train_time_s": state.train_time_s,
                "eval_time_s": eval_time, "tokens_seen": state.tokens_seen, "images_seen": state.images_seen,
                "steps": state.step, "final_train_loss": state.final_loss if state.failure is None else None,
                "train_resolution": {"mode": resolution.mode, "min_side": low, "max_side": high,
                                     "reference_side": reference},
                "device": str(self.device), "world_size": self.ranks.world_size,
                "train_losses": state.losses, "eval": rows, "config": self.hashed}

    def _new_train_batches(self, resolution, seed: int) -> TrainBatches:
        train = self.experiment.train
        return TrainBatches(self.train_source, resolution, train.token_drop, self.experiment.model.patch_size,
                            train.tokens_per_batch, train.max_seq_len, seed,
                            rank=self.ranks.rank, world_size=self.ranks.world_size)

    def _train_batches(self, resolution, seed: int):
        batches = self._new_train_batches(resolution, seed)
        if not self.keep_train:
            return batches
        key = (_key(resolution), seed)
        if key not in self.memo:
            # Cells run seed by seed: a new seed's batches replace the previous seed's.
            self.memo = {k: v for k, v in self.memo.items() if k[1] == seed}
            self.memo[key] = MemoBatches(batches)
        return self.memo[key]

    def _agree(self, decision: bool) -> bool:
        """Rank 0's decision, shared with every rank (only rank 0 reads the store's locks)."""
        if not self.ranks.distributed:
            return decision
        flag = torch.tensor([int(decision)], device=self.device)
        dist.broadcast(flag, 0)
        return bool(flag.item())

    def _barrier(self):
        if self.ranks.distributed:
            dist.barrier()


def _key(resolution) -> str:
    return json.dumps(dataclasses.asdict(resolution), sort_keys=True)


def environment(device: torch.device, ranks: Ranks) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "git_commit": _git_commit(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "world_size": ranks.world_size}


def _git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def write_report_for(store: Store, experiment: Experiment, device: torch.device, ranks: Ranks) -> None:
    """metrics.csv and the report, rebuilt from every cell finished so far (by any process)."""
    from .report import write_report
    with store.publishing():
        store.rebuild_metrics()
        write_report(store.root, to_dict(experiment), environment(device, ranks))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Warnings (e.g. unreadable images skipped) as one line each, like errors.
    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    try:
        return _main(argv)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        print("\n".join(list_variants()))
        return 0
    experiment = load_experiment(args.config)
    if args.device:
        experiment.device = args.device
    if experiment.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("device cuda: torch sees no CUDA GPU here; use --device cpu")
    seeds = parse_seeds(args.seeds, experiment.seeds)
    cells = plan_cells(select_variants(experiment, args.variants), seeds, parse_shard(args.shard))
    store = Store(Path(args.out) if args.out else REPO / "results" / experiment.name)
    store.check_writable()
    hashed = hashed_config(experiment)
    store.check_compatible(config_hash(hashed), hashed,
                           {v.label: cell_identity(experiment, v) for v in experiment.variants})

    if args.report_only:
        if not store.cells():
            raise BenchError(f"{store.cells_dir} holds no finished cells to report; run without --report-only")
        write_report_for(store, experiment, torch.device("cpu"), Ranks())
        return 0

    ranks = init_distributed(experiment.device)
    device = torch_device(experiment.device, ranks)
    stop = StopRequest()
    runner = Runner(experiment, store, ranks, device, stop)
    stop.install()
    started = time.perf_counter()
    resume = " ".join(shlex.quote(part) for part in ["python", "run_all.py", *argv])
    try:
        busy = runner.run(cells)
        if ranks.is_main:
            stored = [store.read_cell(c.spec.label, c.seed) for c in cells]
            if store.cells():
                write_report_for(store, experiment, device, ranks)
    except WriteError as error:   # disk full or an I/O error: what was finished stays valid
        print(f"error: {error}; finished cells are kept. Resume with: {resume}", file=sys.stderr)
        return 3
    except Interrupted as stopped:
        if ranks.is_main:
            print(f"interrupted ({stopped}); progress is saved in {store.root}. Resume with: {resume}",
                  file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if ranks.is_main:
            print(f"aborted; finished cells are kept and the running cell restarts from its last checkpoint. "
                  f"Resume with: {resume}", file=sys.stderr)
        return 130
    if not ranks.is_main:
        return 0
    failed = [c.name for c, cell in zip(cells, stored) if cell is not None and cell["status"] != "ok"]
    done = sum(cell is not None for cell in stored)
    print(f"{done}/{len(cells)} cells finished in {store.root} ({time.perf_counter() - started:.0f} s)"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; still running elsewhere: {', '.join(busy)}" if busy else ""))
    return 1 if failed else 0
