"""Where the code runs: device, ranks, autocast, progress bars, stop requests, the environment record.

Shared by training, evaluation, the runner and the performance benchmark; imports nothing else
of the package.
"""
from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]


class Interrupted(Exception):
    """Work stopped on request (Ctrl-C); the cell's progress is checkpointed."""


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
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """How many processes torchrun started (1 without torchrun), before any joins the group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str) -> Ranks:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else run alone."""
    if launched_world_size() <= 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    return ranks


def torch_device(device: str, ranks: Ranks) -> torch.device:
    return torch.device(f"cuda:{ranks.local_rank}") if device == "cuda" else torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on CUDA; CPU runs in fp32 so that runs are exactly reproducible."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def log_mode() -> bool:
    """stderr is a log file or a pipe (a Slurm job), not a terminal: no bars, whose carriage
    returns would fill the log; the runner prints one plain line per finished cell instead."""
    return not sys.stderr.isatty()


def progress(disable: bool = False, **options) -> tqdm:
    """A tqdm bar on a terminal; none in log mode."""
    return tqdm(dynamic_ncols=True, disable=disable or log_mode(), **options)


# ---- the environment record (the report's provenance, the benchmark's header) ----------------

def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()


def git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def environment(device: torch.device, ranks: Ranks) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(),
            "device": device_name(device) if device.type == "cuda" else "cpu",
            "git_commit": git_commit(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
            "world_size": ranks.world_size}
