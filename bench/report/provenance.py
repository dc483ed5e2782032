"""Where a report's numbers come from: commit, date, command and time of the run.

The runner records a run in DIR/run.json ({"command", "started", "finished", "wall_time_s",
"git_commit", "environment"}); without it, the cells tell what they can (their training and
evaluation times, their files' dates, the device). No path outside the repository is ever shown:
a results folder or a command argument inside it is shown relative to it, one outside by its
name only, so a report never points at a temporary folder of the machine it was made on.
"""
from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import BenchError
from ..store import RUN_FILE
from .data import Results

REPO = Path(__file__).resolve().parents[2]


def shown_path(path: str | Path) -> str:
    """``path`` relative to the repository when inside it, else its last component."""
    resolved = Path(path).expanduser().resolve()
    try:
        return resolved.relative_to(REPO).as_posix() or "."
    except ValueError:
        return resolved.name


def shown_command(command: str) -> str:
    """The command with every absolute path argument (also --opt=/path) shown by shown_path."""
    def token(part: str) -> str:
        key, eq, value = part.partition("=") if part.startswith("-") else ("", "", part)
        return f"{key}{eq}{shown_path(value)}" if os.path.isabs(value) else part
    try:
        return shlex.join(token(p) for p in shlex.split(command))
    except ValueError:  # unbalanced quotes: show nothing rather than a raw path
        return "(unreadable command)"


@dataclass(frozen=True)
class Provenance:
    folder: str                 # the results folder, as shown
    commit: str | None
    finished: str | None        # "2026-03-05 14:02 UTC"
    finished_from_cells: bool   # True: the newest cell file's date, not a recorded end time
    command: str | None
    wall_time_s: float | None   # the run's wall time, from run.json
    cell_time_s: float          # training + evaluation time summed over the cells
    environment: dict = field(default_factory=dict)

    def sentence(self) -> str:
        """One line for the top of the report and the README."""
        parts = [f"Results folder `{self.folder}`"]
        if self.command:
            parts.append(f"made by `{self.command}`")
        parts.append(f"commit `{self.commit}`" if self.commit else "commit not recorded")
        if self.finished:
            parts.append(("last cell written " if self.finished_from_cells else "finished ")
                         + self.finished)
        if self.wall_time_s is not None:
            parts.append(f"wall time {duration(self.wall_time_s)}")
        else:
            parts.append(f"{duration(self.cell_time_s)} of training and evaluation summed over "
                         f"cells (no {RUN_FILE} records the wall time)")
        return "; ".join(parts) + "."


def duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def read_provenance(out_dir: Path, results: Results, environment: dict | None = None) -> Provenance:
    """``environment``: what the runner knows of the machine (torch, device, git_commit, ...);
    without it the report shows run.json's, else what the cells record."""
    out_dir = Path(out_dir)
    run = _read_run(out_dir / RUN_FILE)
    ok = results.cells[results.cells["status"] == "ok"]
    env = dict(environment or run.get("environment") or {
        k: ok[k].iloc[0] for k in ("device", "world_size") if len(ok) and k in ok and ok[k].notna().any()})
    finished = _utc(run["finished"]) if run.get("finished") else None
    from_cells = finished is None
    if from_cells:
        newest = max(p.stat().st_mtime for p in (out_dir / "cells").glob("*.json"))
        finished = _utc(datetime.fromtimestamp(newest, timezone.utc).isoformat())
    commit = run.get("git_commit") or env.get("git_commit") or env.get("commit")
    return Provenance(
        folder=shown_path(out_dir), commit=None if commit in (None, "unknown") else str(commit),
        finished=finished, finished_from_cells=from_cells,
        command=shown_command(run["command"]) if run.get("command") else None,
        wall_time_s=float(run["wall_time_s"]) if run.get("wall_time_s") is not None else None,
        cell_time_s=float(results.cells["time_s"].sum()), environment=env)


def _read_run(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: unreadable ({type(exc).__name__}); delete it or let the runner "
                         f"rewrite it") from None
    if not isinstance(run, dict) or not isinstance(run.get("environment", {}), dict):
        raise BenchError(f"{path}: must be a JSON object, its environment one too")
    return run


def _utc(iso: str) -> str:
    """'2026-03-05 14:02 UTC' from an ISO time (one without a zone is taken as UTC)."""
    try:
        moment = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
