"""The runner: train and evaluate planned cells into the results store, then write the report.

Every rank walks every cell; rank 0 alone decides whether a cell is to run (it holds the
store's lock for it), evaluates it and writes its record. Each task has its own sources; its
training batches (per seed) and eval batches are rendered once and kept for every variant while
they fit in MEMO_LIMIT_BYTES.

On a CPU, ``run_workers`` runs one such walker per core in processes of their own: each takes
the next cell nobody holds, through the same per-cell locks that let shards share a folder, so
cells spread over the workers without a scheduler. Every cell runs with the same intra-op thread
count whatever the number of workers, so its numbers do not depend on how many ran beside it.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm import tqdm

from .config import ResolutionConfig
from .data import TrainBatches, build_source
from .evaluate import EvalSet, evaluate
from .plan import CellPlan, Plan
from .runtime import Interrupted, Ranks, StopRequest, log_mode, progress
from .store import CellRecord, EvalRow, Store, WriteError
from .train import CellTrainer, build_cell_model, param_count

# Training batches (per task and seed) and eval batches (per task) are kept in RAM for reuse by
# every variant while each stays under this size; above it they are rebuilt per cell.
MEMO_LIMIT_BYTES = 2 * 2**30


class MemoBatches(torch.utils.data.Dataset):
    """``batches[step]`` built once, then served from memory: every variant of a seed trains on
    the same batches, so rendering them again for each variant would be wasted work."""

    def __init__(self, batches):
        self.batches, self.memo = batches, {}

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, step: int):
        if step not in self.memo:
            self.memo[step] = self.batches[step]
        return self.memo[step]


@dataclass
class Runner:
    plan: Plan
    store: Store
    ranks: Ranks
    device: torch.device
    stop: Callable[[], bool]   # a StopRequest, or a worker's view of its parent's
    show_progress: bool = True

    def __post_init__(self):
        experiment, patch = self.plan.experiment, self.plan.experiment.model.patch_size
        train, tasks = experiment.train, self.plan.tasks
        # A synthetic source per task; a real dataset has one task, its own name.
        task_of = dict(zip(tasks, experiment.data.tasks))
        self.train_sources = {task: build_source(experiment.data, "train", task_of[task]) for task in tasks}
        test_sources = {task: build_source(experiment.data, "test", task_of[task]) for task in tasks}
        test_source = test_sources[tasks[0]]
        resolutions = {_key(v.resolution) for v in self.plan.variants}
        token_bytes = test_source.channels * patch * patch * 4 + 24   # pixels, image id and (row, col)
        steps = max(train.steps_for(task) for task in experiment.data.tasks)
        train_tokens = steps * train.tokens_per_batch * len(resolutions)
        test_tokens = len(test_source) * sum((h // patch) * (w // patch) for h, w in self.plan.sizes) * len(tasks)
        self.keep_train = train.num_workers == 0 and train_tokens * token_bytes <= MEMO_LIMIT_BYTES
        keep_eval = experiment.eval.num_workers == 0 and test_tokens * token_bytes <= MEMO_LIMIT_BYTES
        self.eval_sets = {task: EvalSet(source, patch, experiment.eval, keep_eval)
                          for task, source in test_sources.items()}
        self.memo: dict[tuple[str, str, int], MemoBatches] = {}

    def run(self, cells: list[CellPlan]) -> list[str]:
        """Run every cell not finished yet; returns the names of cells claimed by other processes."""
        busy = []
        done_before = {c.name for c in cells if self.store.read_cell(c.label, c.task, c.seed) is not None}
        # A with block: an error or Ctrl-C closes the bar before the CLI prints its last line, not after.
        with progress(total=len(cells), initial=len(done_before), desc="cells", unit="cell", position=0,
                      disable=not (self.show_progress and self.ranks.is_main)) as bar:
            for number, cell in enumerate(cells, 1):
                lock = (self.store.claim(cell.label, cell.task, cell.seed) if self.ranks.is_main
                        else contextlib.nullcontext(True))
                with lock as held:
                    finished = self.store.read_cell(cell.label, cell.task, cell.seed) is not None
                    if self._agree(held and not finished):
                        started = time.perf_counter()
                        record = self.run_cell(cell)
                        if self.ranks.is_main:
                            self.store.publish(record)
                            self._log(record, f"{number}/{len(cells)}", time.perf_counter() - started)
                        self._barrier()
                    elif not held:
                        busy.append(cell.name)
                if cell.name not in done_before:
                    bar.update()
        return busy

    def run_cell(self, cell: CellPlan) -> CellRecord:
        experiment, variant, task, seed = self.plan.experiment, cell.variant, cell.task, cell.seed
        spec, source = variant.spec, self.train_sources[task]
        batches = self._train_batches(task, variant.resolution, seed)
        model = build_cell_model(experiment.model, spec, source.num_classes, source.channels, seed)
        model.to(self.device)
        if self.device.type == "cuda":   # bucketed shapes (NaViT.forward) keep recompiles few; CPU stays eager
            model.compile_encoder()
        trainer = CellTrainer(cell.train, self.device, self.ranks,
                              save=lambda state: self.store.save_checkpoint(spec.label, task, seed, state),
                              load=lambda: self.store.load_checkpoint(spec.label, task, seed),
                              should_stop=self.stop, label=cell.name, show_progress=self.show_progress,
                              checkpoint_check={"config_hash": cell.config_hash, "task": task, "seed": seed,
                                                **variant.identity})
        state = trainer.run(model, batches)
        rows, eval_time = [], 0.0
        if state.failure is None and self.ranks.is_main:
            started = time.perf_counter()
            scores = evaluate(model, self.eval_sets[task], [p.size for p in cell.eval_points], self.device, self.stop,
                              cell.name, self.show_progress)
            rows = [EvalRow(point, score) for point, score in zip(cell.eval_points, scores)]
            eval_time = time.perf_counter() - started
        return CellRecord(
            variant=spec.label, base_variant=spec.name, options=spec.options, resolution=variant.resolution,
            task=task, seed=seed, config_hash=cell.config_hash,
            status="ok" if state.failure is None else "failed", reason=state.failure,
            num_classes=source.num_classes, param_count=param_count(model),
            train_time_s=state.train_time_s, eval_time_s=eval_time, tokens_seen=state.tokens_seen,
            images_seen=state.images_seen, steps=state.step,
            final_train_loss=state.final_loss if state.failure is None else None,
            train_resolution=variant.train_resolution, device=str(self.device), world_size=self.ranks.world_size,
            threads=torch.get_num_threads(), train_losses=state.losses, eval=rows, config=self.plan.hashed_config)

    def _log(self, record: CellRecord, number: str, seconds: float) -> None:
        """In log mode one plain line per finished cell; on a terminal the bars show progress,
        and a failed cell gets a line above them."""
        if self.show_progress and log_mode():
            print(cell_line(record, number, seconds), file=sys.stderr, flush=True)
        elif record.status != "ok":
            tqdm.write(f"cell {record.name} failed: {record.reason}", file=sys.stderr)

    def _train_batches(self, task: str, resolution: ResolutionConfig, seed: int):
        key = (task, _key(resolution), seed)
        if key in self.memo:
            return self.memo[key]
        train = self.plan.experiment.train
        batches = TrainBatches(self.train_sources[task], resolution, train.token_drop,
                               self.plan.experiment.model.patch_size, train.tokens_per_batch, train.max_seq_len, seed,
                               rank=self.ranks.rank, world_size=self.ranks.world_size)
        if not self.keep_train:
            return batches
        # Cells run seed by seed, then task by task: a new (task, seed)'s batches replace the last's.
        self.memo = {k: v for k, v in self.memo.items() if (k[0], k[2]) == (task, seed)}
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


# A worker costs a process start (imports, compiled kernels loaded, test scenes rendered: a few
# seconds); below this many training tokens in all, one process finishes first.
PARALLEL_MIN_TOKENS = 1_000_000
# Exit statuses a worker reports, as the CLI's own: a failed write, an interruption.
WRITE_FAILED, INTERRUPTED = 3, 130


def usable_cores() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))   # what this process may use (taskset, Slurm, cgroups)
    return os.cpu_count() or 1


def auto_workers(plan: Plan, cells: list[CellPlan], device: torch.device, ranks: Ranks) -> int:
    """One worker per core on a CPU when the run is long enough to pay for their start; else one."""
    if device.type != "cpu" or ranks.distributed or len(cells) < 2:
        return 1
    if sum(c.train.steps for c in cells) * plan.experiment.train.tokens_per_batch < PARALLEL_MIN_TOKENS:
        return 1
    return max(1, min(usable_cores(), len(cells)))


def run_workers(plan: Plan, cells: list[CellPlan], store: Store, workers: int, threads: int, stop: StopRequest,
                show_progress: bool = True) -> int:
    """Run ``cells`` in ``workers`` processes of ``threads`` intra-op threads each (CPU only).

    Returns 0, or the first worker's WRITE_FAILED / INTERRUPTED / other non-zero exit status. A
    stop request here (Ctrl-C, SIGTERM) reaches the workers through a shared event: each then
    checkpoints its cell and stops. A second Ctrl-C kills them at once, as it aborts a single
    process (each cell then resumes from its last checkpoint).
    """
    context = multiprocessing.get_context("spawn")   # no fork: torch's thread pools do not survive it
    stopping = context.Event()
    processes = [context.Process(target=_work, args=(plan, cells, store.root, threads, stopping, os.getpid()),
                                 name=f"cell-worker-{worker}") for worker in range(workers)]
    # Workers never see Ctrl-C themselves (it comes through ``stopping``): they start with SIGINT
    # ignored, inherited across spawn's exec, so a press while they import cannot kill them.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for process in processes:
            process.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    done_before = sum(store.read_cell(c.label, c.task, c.seed) is not None for c in cells)
    try:
        with progress(total=len(cells), initial=done_before, desc="cells", unit="cell", position=0,
                      disable=not show_progress) as bar:
            while any(p.is_alive() for p in processes):
                if stop():
                    stopping.set()
                for process in processes:
                    process.join(timeout=0.2)
                bar.update(sum(store.cell_path(c.label, c.task, c.seed).exists() for c in cells) - bar.n)
    except KeyboardInterrupt:   # the second press
        for process in processes:
            process.kill()
            process.join()
        raise
    codes = [p.exitcode for p in processes]
    return next((c for c in codes if c in (WRITE_FAILED, INTERRUPTED)), next((c for c in codes if c), 0))


def _work(plan: Plan, cells: list[CellPlan], root: Path, threads: int, stopping, parent: int) -> None:
    """One worker process: walk the cells, running each one nobody else holds."""
    _exit_with_parent(parent)
    torch.set_num_threads(threads)
    terminated = []   # SIGTERM from Slurm or a dying parent; SIGINT stays ignored
    signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    # No bars beside the parent's; in log mode, a line per cell it finishes.
    runner = Runner(plan, Store(root), Ranks(), torch.device("cpu"), lambda: bool(terminated) or stopping.is_set(),
                    show_progress=log_mode())
    try:
        runner.run(cells)
    except WriteError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(WRITE_FAILED)
    except Interrupted:
        sys.exit(INTERRUPTED)


def _exit_with_parent(parent: int) -> None:
    """Linux: ask for SIGTERM when the parent dies (even by SIGKILL), so an orphaned worker
    checkpoints its cell and stops instead of running on alone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
        if os.getppid() != parent:   # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _key(resolution: ResolutionConfig) -> str:
    return json.dumps(dataclasses.asdict(resolution), sort_keys=True)


def cell_line(record: CellRecord, number: str, seconds: float) -> str:
    """A finished cell in log mode, e.g. 'cell 3/39 rope_axial abs_position seed 1: final loss
    0.142, accuracy at 20x20 px 94.1%, 13.2 s'."""
    head = f"cell {number} {record.variant} {record.task} seed {record.seed}"
    if record.status != "ok":
        return f"{head}: failed ({record.reason}), {seconds:.1f} s"
    reference = next(row for row in record.eval if row.point.at_train_res)
    height, width = reference.point.size
    return (f"{head}: final loss {record.final_train_loss:.3f}, accuracy at {height}x{width} px "
            f"{reference.score.accuracy:.1%}, {seconds:.1f} s")


def write_report_for(store: Store, config: dict | None = None) -> str:
    """metrics.csv and the report, rebuilt from every cell finished so far (by any process);
    returns the report's headline. ``config``: the run's resolved config; without it the report
    reads the folder's own (``bench.report.write_report``)."""
    from .report import write_report  # matplotlib and pandas load only when a report is written
    with store.publishing():
        store.rebuild_metrics()
        return write_report(store.root, config)
