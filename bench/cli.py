"""The runner's command line: parse the arguments, plan, run, and map the outcome to an exit status.

Exit status: 0 every selected cell is ok; 1 some cell failed (its loss went NaN or inf; the
others still ran); 2 a user mistake, reported as one line on stderr before anything is written;
3 a write failed mid-run (finished cells are kept); 130 stopped by Ctrl-C (or SIGTERM) with the
running cell checkpointed.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
import time
import warnings
from pathlib import Path

import torch

from .config import check_seeds, load_experiment
from .errors import BenchError
from .plan import Plan, make_plan
from .posembed import list_variants
from .runner import INTERRUPTED, Runner, auto_workers, run_workers, write_report_for
from .runtime import REPO, Interrupted, Ranks, StopRequest, init_distributed, launched_world_size, torch_device
from .store import Store, WriteError

DEFAULT_CONFIG = REPO / "experiments" / "default.yaml"


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
    parser.add_argument("--workers", type=_positive_int, help="cell workers, processes that each train one cell at a "
                                                              "time (default: one per core on a CPU when the run "
                                                              "is long enough to pay for their start, else 1)")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="intra-op threads per cell (default: %(default)s). A cell's last digits depend on it, "
                             "never on --workers")
    parser.add_argument("--report-only", action="store_true", help="rebuild metrics.csv and the report from "
                                                                   "finished cells, train nothing")
    parser.add_argument("--list", action="store_true", help="print the registered variants and exit")
    return parser


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise BenchError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 (0-based, as Slurm array ids)")
    return int(match[1]), int(match[2])


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise BenchError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    check_seeds(seeds, "--seeds")
    return seeds


def parse_variants(plan: Plan, text: str | None) -> list[str] | None:
    if text is None:
        return None
    labels = [v.spec.label for v in plan.variants]
    chosen = [part.strip() for part in text.split(",")]
    for label in chosen:
        if label not in labels:
            raise BenchError(f"--variants: {label!r} is not a variant of this experiment; valid: {', '.join(labels)}")
    return chosen


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
    plan = make_plan(experiment, launched_world_size())
    cells = plan.cells(parse_variants(plan, args.variants), parse_seeds(args.seeds), parse_shard(args.shard))
    store = Store(Path(args.out) if args.out else REPO / "results" / experiment.name)
    store.check_writable()
    store.check_compatible(plan.config_hash, plan.hashed_config, plan.identities)

    if args.report_only:
        if not store.cells():
            raise BenchError(f"{store.cells_dir} holds no finished cells to report; run without --report-only")
        write_report_for(store, plan, torch.device("cpu"), Ranks())
        return 0

    ranks = init_distributed(experiment.device)
    device = torch_device(experiment.device, ranks)
    workers = args.workers or auto_workers(plan, cells, device, ranks)
    if workers > 1 and (device.type != "cpu" or ranks.distributed):
        raise BenchError("--workers: parallel cell workers are for a CPU run without torchrun; "
                         "on a GPU or under torchrun use --workers 1")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    stop = StopRequest()
    stop.install()
    started = time.perf_counter()
    resume = " ".join(shlex.quote(part) for part in ["python", "run_all.py", *argv])
    try:
        if workers > 1:
            status = run_workers(plan, cells, store, workers, args.threads, stop)
            if status == INTERRUPTED:
                raise Interrupted("stopped while cells were running")
            if status:   # the worker printed its error: a failed write (3), or a crash with its traceback
                print(f"error: a cell worker stopped with exit status {status}; finished cells are kept. "
                      f"Resume with: {resume}", file=sys.stderr)
                return status
            busy = [c.name for c in cells if store.read_cell(c.label, c.seed) is None]
        else:
            busy = Runner(plan, store, ranks, device, stop).run(cells)
        if ranks.is_main:
            stored = [store.read_cell(c.label, c.seed) for c in cells]
            if store.cells():
                write_report_for(store, plan, device, ranks)
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
    failed = [c.name for c, cell in zip(cells, stored) if cell is not None and cell.status != "ok"]
    done = sum(cell is not None for cell in stored)
    print(f"{done}/{len(cells)} cells finished in {store.root} ({time.perf_counter() - started:.0f} s)"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; still running elsewhere: {', '.join(busy)}" if busy else ""))
    return 1 if failed else 0
