"""Two runs side by side: ``python -m bench.report --compare A B``.

Cells are paired when they match: same task, variant label and seed, and within them the same
eval size. Differences are B minus A, averaged per seed over each group of eval sizes (the
groups of the summary table, as B defines them), then mean ± std over seeds and an interval
over seeds alone (two runs need not share their test images). What only one run has is listed,
never silently dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..errors import BenchError
from ..store import atomic_write
from .data import Results, load_results
from .document import Heading, Paragraph, Table, markdown
from .figstyle import RC, header, save, styles
from .estimates import Estimate
from .figures import draw_forest, task_stem
from .provenance import shown_path
from .stats import seed_stats
from .tables import SUBSET, SUBSETS, diff_columns, paired_table, per_seed, seeds_of

PAIR_KEYS = ["task", "variant", "seed", "eval_height", "eval_width"]
CELL_KEYS = ["task", "variant", "seed"]
STEM = "compare"


@dataclass(frozen=True)
class Comparison:
    table: pd.DataFrame      # one row per variant with paired cells
    unmatched: pd.DataFrame  # task, variant, seed, where ("only in A", ...), detail
    markdown: str


def default_folder(a: Path, b: Path) -> Path:
    return Path(b) / f"compare_vs_{Path(a).resolve().name}"


def compare_runs(a: Path, b: Path, out: Path | None = None) -> Comparison:
    """Compare results folders ``a`` and ``b``; write compare.csv, compare_unmatched.csv,
    compare.md and, per task, figure compare__<task>.{png,pdf,svg} into ``out`` (default:
    default_folder).

    Raises BenchError, before writing anything, when either folder is missing or not a results
    folder, when both are the same folder, or when no cell of one matches a cell of the other.
    """
    a, b = Path(a), Path(b)
    for path in (a, b):
        if not path.is_dir():
            raise BenchError(f"{path}: no such folder")
    if a.resolve() == b.resolve():
        raise BenchError(f"{a} and {b} are the same folder: nothing to compare")
    run_a, run_b = load_results(a), load_results(b)
    pairs = run_b.metrics.merge(run_a.metrics[PAIR_KEYS + ["accuracy"]], on=PAIR_KEYS,
                                suffixes=("", "_a"))
    if pairs.empty:
        raise BenchError(f"no cell of {a} matches a cell of {b} (same task, variant, seed and eval "
                         f"size): nothing to compare")
    pairs = pairs.assign(diff=pairs["accuracy"] - pairs["accuracy_a"])
    table = _table(pairs, run_b)
    unmatched = _unmatched(run_a, run_b, pairs)
    names = (shown_path(a), shown_path(b))
    text = markdown(_blocks(table, unmatched, names))
    out = default_folder(a, b) if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{STEM}.csv", table.to_csv(index=False).encode("utf-8"))
    atomic_write(out / f"{STEM}_unmatched.csv", unmatched.to_csv(index=False).encode("utf-8"))
    atomic_write(out / f"{STEM}.md", text.encode("utf-8"))
    with plt.rc_context(RC):
        for task, group in table.groupby("task", sort=False):
            view = run_b.of_task(task)
            fig = draw_forest(group.set_index("variant"), view, styles(run_b),
                              f"B minus A (percentage points): B = {names[1]}, A = {names[0]}")
            header(fig, view)
            save(fig, out, task_stem(STEM, task))
    return Comparison(table, unmatched, text)


def _table(pairs: pd.DataFrame, run_b: Results) -> pd.DataFrame:
    """One row per (task, variant) with paired cells."""
    grid = SUBSET["grid"]
    a_grid, b_grid = (per_seed(pairs, grid, col) for col in ("accuracy_a", "accuracy"))
    diffs = {s.key: per_seed(pairs, s, "diff") for s in SUBSETS}
    rows = []
    for task in (t for t in run_b.tasks if t in set(pairs["task"])):
        mine = pairs[pairs["task"] == task]
        for variant in (v for v in run_b.variants.index if v in set(mine["variant"])):
            a_stats, b_stats = (seed_stats(seeds_of(s, variant, task=task)) for s in (a_grid, b_grid))
            per = {key: seeds_of(d, variant, task=task) for key, d in diffs.items()}
            rows.append({"variant": variant, "task": task, "title": run_b.title(variant),
                         "seeds_paired": mine.loc[mine["variant"] == variant, "seed"].nunique(),
                         "a_grid_mean": a_stats.mean, "b_grid_mean": b_stats.mean,
                         **diff_columns({key: Estimate(d, seed_stats(d)) for key, d in per.items()})})
    return pd.DataFrame(rows)


def _unmatched(run_a: Results, run_b: Results, pairs: pd.DataFrame) -> pd.DataFrame:
    """Cells only one run has, cells both have that could not be paired (failed in one), and
    paired cells with eval sizes only one run has."""
    status_a, status_b = (run.cells.set_index(CELL_KEYS)["status"] for run in (run_a, run_b))
    rows_a, rows_b, rows_paired = (m.groupby(CELL_KEYS).size()
                                   for m in (run_a.metrics, run_b.metrics, pairs))
    out = []
    for key in sorted(set(status_a.index) | set(status_b.index)):
        if key not in status_b.index:
            where, detail = "only in A", ""
        elif key not in status_a.index:
            where, detail = "only in B", ""
        elif key not in rows_paired.index:
            where, detail = "not paired", f"status in A: {status_a[key]}, in B: {status_b[key]}"
        elif max(rows_a[key], rows_b[key]) > rows_paired[key]:
            where = "eval sizes differ"
            detail = (f"{rows_a[key] - rows_paired[key]} only in A, "
                      f"{rows_b[key] - rows_paired[key]} only in B")
        else:
            continue
        out.append(dict(zip(CELL_KEYS, key), where=where, detail=detail))
    return pd.DataFrame(out, columns=[*CELL_KEYS, "where", "detail"])


def compare_table(table: pd.DataFrame) -> Table:
    """The paired-comparison table with the seeds paired and each run's whole-grid mean."""
    diffs = paired_table(table)
    rows = [[row[0], r["task"], str(r["seeds_paired"]), f"{100 * r['a_grid_mean']:.1f}",
             f"{100 * r['b_grid_mean']:.1f}", *row[1:]]
            for row, (_, r) in zip(diffs.rows, table.iterrows())]
    return Table([diffs.header[0], "task", "seeds paired", "A whole grid", "B whole grid", *diffs.header[1:]],
                 rows, "llrrr" + diffs.align[1:])


def _blocks(table: pd.DataFrame, unmatched: pd.DataFrame, names: tuple[str, str]):
    a, b = names
    listed = (Table(["task", "variant", "seed", "where", "detail"],
                    [[r.task, f"`{r.variant}`", str(r.seed), r.where, r.detail]
                     for r in unmatched.itertuples()])
              if len(unmatched) else
              Paragraph("None: every cell and eval size of one run has its pair in the other."))
    return [
        Heading(1, f"Comparison: B = `{b}` vs A = `{a}`"),
        Paragraph("Cells are paired when task, variant label, seed and eval size match. Per seed, "
                  "B's accuracy minus A's on the paired eval sizes, averaged over each group of "
                  "eval sizes (as B defines them); then mean ± std over seeds, in percentage points, "
                  "with how many seeds share the sign. \"A / B whole grid\": each run's mean "
                  "accuracy (%) over the paired cells only."),
        compare_table(table),
        Heading(2, "Not paired"),
        listed,
    ]
