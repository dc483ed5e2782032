"""The runner's command line: parse the arguments, plan, run, and map the outcome to an exit status
(EPILOG lists the statuses; ``--help`` prints it).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

from .config import check_seeds, load_experiment
from .errors import BenchError
from .plan import Plan, make_plan
from .posembed import list_variants, variant_info
from .runner import INTERRUPTED, Runner, auto_workers, run_workers, write_report_for
from .runtime import (REPO, Interrupted, StopRequest, environment, git_commit, init_distributed,
                      launched_world_size, torch_device)
from .store import Store, WriteError

DEFAULT_CONFIG = REPO / "experiments" / "default.yaml"
EPILOG = """\
examples:
  python run_all.py --config experiments/quick.yaml       the smoke run -> results/quick/
  python run_all.py                                       the default experiment -> results/default/
  python run_all.py --variants nope,rope_axial --seeds 0,1
                                                          some of its cells (labels: --list --config X)
  python run_all.py --out /shared/dir --shard $SLURM_ARRAY_TASK_ID/8
                                                          one task of a Slurm job array (#SBATCH --array=0-7)
  python run_all.py --report-only --out results/quick     rebuild metrics.csv and the report from the folder
  torchrun --nproc_per_node 2 run_all.py --config X       train each cell with DDP on 2 processes

exit status:
  0    every selected cell is ok
  1    some cell failed (NaN or inf loss): recorded with its reason; the other cells still ran
  2    a user mistake: one line on stderr, nothing written
  3    a write failed mid-run (disk full, I/O error): finished cells are kept; the message says how to resume
  130  interrupted (Ctrl-C or SIGTERM): progress is saved; the message says how to resume

Progress goes to stderr: bars on a terminal, one line per finished cell otherwise (a log file, a
Slurm job). docs/runner.md describes the config keys and the results folder, docs/report.md the report.
"""
# Flags that choose or run cells: a report covers every finished cell, so with --report-only they
# would be silently ignored.
RUN_FLAGS = ("variants", "seeds", "shard", "device")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, like every other user mistake
        raise BenchError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="run_all.py", description="Train and evaluate every (variant, task, seed) cell of an "
                                                    "experiment into a resumable results directory.",
                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"experiment YAML (default: {DEFAULT_CONFIG.relative_to(REPO)}; "
                                         f"with --report-only the folder's own experiment)")
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
    parser.add_argument("--report-only", action="store_true", help="rebuild metrics.csv and the report of --out "
                                                                   "from its finished cells, train nothing")
    parser.add_argument("--list", action="store_true", help="print the registered variants (family, what each "
                                                            "does, paper) and, with --config, the experiment's "
                                                            "variant labels; then exit")
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
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    args = build_parser().parse_args(argv)
    if args.list:
        print(_listing(args.config))
        return 0
    if args.report_only:
        return _report_only(args)
    experiment = load_experiment(args.config or DEFAULT_CONFIG)
    if args.device:
        experiment.device = args.device
    if experiment.device == "cuda" and not torch.cuda.is_available():
        raise BenchError("device cuda: torch sees no CUDA GPU here; use --device cpu")
    plan = make_plan(experiment, launched_world_size())
    cells = plan.cells(parse_variants(plan, args.variants), parse_seeds(args.seeds), parse_shard(args.shard))
    store = Store(Path(args.out) if args.out else REPO / "results" / experiment.name)
    store.check_writable()
    store.check_compatible(plan.config_hash, plan.hashed_config, plan.identities)

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
    command = command_line(argv)
    todo = {c.name for c in cells if store.read_cell(c.label, c.task, c.seed) is None}
    headline = None
    try:
        if workers > 1:
            status = run_workers(plan, cells, store, workers, args.threads, stop)
            if status == INTERRUPTED:
                raise Interrupted("stopped while cells were running")
            if status:   # the worker printed its error: a failed write (3), or a crash with its traceback
                print(f"error: a cell worker stopped with exit status {status}; finished cells are kept. "
                      f"Resume with: {command}", file=sys.stderr)
                return status
            busy = [c.name for c in cells if store.read_cell(c.label, c.task, c.seed) is None]
        else:
            busy = Runner(plan, store, ranks, device, stop).run(cells)
        # The run's end and wall time, as run.json and the report give them: the report comes after.
        finished, wall = datetime.now(timezone.utc), time.perf_counter() - clock
        if ranks.is_main:
            stored = [store.read_cell(c.label, c.task, c.seed) for c in cells]
            if any(cell is not None and c.name in todo for c, cell in zip(cells, stored)):
                # Before the report, which shows it. A re-run that found nothing left to do
                # keeps the record of the run that made the numbers.
                store.write_run({"command": command, "started": started.isoformat(timespec="seconds"),
                                 "finished": finished.isoformat(timespec="seconds"), "wall_time_s": round(wall, 1),
                                 "git_commit": git_commit(), "environment": environment(device, ranks)})
            if store.cells():
                headline = write_report_for(store, plan.config)
    except WriteError as error:   # disk full or an I/O error: what was finished stays valid
        print(f"error: {error}; finished cells are kept. Resume with: {command}", file=sys.stderr)
        return 3
    except Interrupted as stopped:
        if ranks.is_main:
            print(f"interrupted ({stopped}); progress is saved in {store.root}. Resume with: {command}",
                  file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if ranks.is_main:
            print(f"aborted; finished cells are kept and the running cell restarts from its last checkpoint. "
                  f"Resume with: {command}", file=sys.stderr)
        return 130
    if not ranks.is_main:
        return 0
    failed = [c.name for c, cell in zip(cells, stored) if cell is not None and cell.status != "ok"]
    done = sum(cell is not None for cell in stored)
    report_time = f"; report {time.perf_counter() - clock - wall:.0f} s" if headline else ""
    print(f"{done}/{len(cells)} cells finished in {store.root} ({wall:.0f} s{report_time})"
          + (f"; failed: {', '.join(failed)}" if failed else "")
          + (f"; still running elsewhere: {', '.join(busy)}" if busy else ""))
    print(report_line(store, headline))
    return 1 if failed else 0


def _report_only(args: argparse.Namespace) -> int:
    """Rebuild metrics.csv and the report of a results folder from the folder alone: its cells
    hold their config and config.json the rest (``Store.config``). A --config must agree with the
    cells; its variant list, seeds and baseline then replace config.json's."""
    for flag in RUN_FLAGS:
        if getattr(args, flag) is not None:
            raise BenchError(f"--{flag} has no effect with --report-only, which reports every finished cell")
    if args.out is None and args.config is None:
        raise BenchError("--report-only needs --out DIR, the results folder to report")
    plan = make_plan(load_experiment(args.config)) if args.config else None
    store = Store(Path(args.out) if args.out else REPO / "results" / plan.experiment.name)
    if not store.root.is_dir():
        raise BenchError(f"--out {store.root}: no such folder")
    if plan is not None:
        store.check_compatible(plan.config_hash, plan.hashed_config, plan.identities,
                               advice="drop --config: --report-only reads the experiment from the folder")
    if not store.cells():
        raise BenchError(f"{store.cells_dir} holds no finished cells to report; run without --report-only")
    store.check_writable()
    print(report_line(store, write_report_for(store, plan.config if plan else None)))
    return 0


def report_line(store: Store, headline: str | None) -> str:
    """The last line of a run: where its report is and what it found (None: no report written)."""
    if headline is None:
        return f"no report: {store.cells_dir} holds no finished cell yet"
    return f"report: {store.root / 'report.html'}. {headline}"


def command_line(argv: list[str]) -> str:
    """The command that ran (and resumes) this run, as run.json records it."""
    world = launched_world_size()
    per_node = os.environ.get("LOCAL_WORLD_SIZE", world)
    launcher = ["python"] if world == 1 else ["torchrun", f"--nproc_per_node={per_node}"]
    return shlex.join([*launcher, "run_all.py", *argv])


def _listing(config: str | None) -> str:
    """--list: every registered variant with its family, what it does and its paper; with a
    config, also that experiment's variant labels (what --variants takes)."""
    names = list_variants()
    infos = [variant_info(name) for name in names]
    width, family_width = max(map(len, names)), max(len(info.family) for info in infos)
    lines = ["registered variants: name, family, what it does [paper]"]
    lines += [f"  {name:<{width}}  {info.family:<{family_width}}  {info.summary}"
              + (f" [{info.paper}]" if info.paper else "") for name, info in zip(names, infos)]
    if config is not None:
        variants = make_plan(load_experiment(config), launched_world_size()).variants
        label_width = max(len(v.spec.label) for v in variants)
        lines += ["", f"variants of {config}: label (for --variants), registry name, options"]
        lines += [f"  {v.spec.label:<{label_width}}  {v.spec.name:<{width}}  "
                  + (", ".join(f"{k}={o}" for k, o in v.spec.options.items()) or "no options") for v in variants]
    return "\n".join(lines)
