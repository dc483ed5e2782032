"""The report's tables, computed from metrics.csv rows: summary, paired vs baseline, per seed,
NaViT Fig. 10a.

Every statistic is two-level: first one value per cell (variant, task, seed: the store's cell
axes and the seed), e.g. the mean accuracy over the seed's grid cells, then mean / std / CI of
those values over seeds. Accuracies stay fractions (0..1) in the CSV files, like metrics.csv, and
become percentages only for display; navit_fig10a.csv alone is in percent, the unit of the
paper's numbers it sits beside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..store import CELL_AXES
from .data import Results
from .document import Table
from .stats import SeedStats, seed_stats


@dataclass(frozen=True)
class Subset:
    key: str
    title: str   # table heading
    short: str   # figure tick label
    select: Callable[[pd.DataFrame], pd.Series]  # metrics rows -> bool mask


SUBSETS = (
    Subset("train_res", "at training res.", "training\nres.", lambda m: m["at_train_res"]),
    Subset("grid", "whole grid", "whole\ngrid", lambda m: pd.Series(True, index=m.index)),
    Subset("below", "below train range", "below\nrange", lambda m: m["train_range"] == "below"),
    Subset("above", "above train range", "above\nrange", lambda m: m["train_range"] == "above"),
    Subset("extreme", "extreme aspect", "extreme\naspect", lambda m: m["extreme"]),
)
SUBSET = {s.key: s for s in SUBSETS}

# NaViT Fig. 10a (NaViT-B/16 on JFT, ImageNet 10-shot; average / best over 64..640 px), keyed by
# (registry name, combine mode). Its setting differs from ours; only the shape is comparable.
PUBLISHED_FIG10A = {
    ("vit_1d_interp", "sum"): (53.8, 69.3),
    ("pix2struct_2d", "sum"): (63.5, 71.3),
    ("factorized_abs_learned", "sum"): (64.9, 71.5),
    ("factorized_abs_learned", "stack"): (64.8, 71.5),
    ("factorized_abs_learned", "product"): (64.2, 71.3),
    ("factorized_abs_sincos", "sum"): (64.4, 71.4),
    ("factorized_abs_fourier", "sum"): (64.7, 71.3),
    ("factorized_frac_fourier", "sum"): (63.9, 70.8),
}


def per_seed(metrics: pd.DataFrame, subset: Subset, value: str = "accuracy") -> pd.Series:
    """Mean of ``value`` over the subset's cells, one entry per cell (axes and seed) that has any."""
    rows = metrics[subset.select(metrics)]
    return rows.groupby([*CELL_AXES, "seed"])[value].mean()


def square_sides(metrics: pd.DataFrame, relative: bool = False) -> pd.Series:
    """Accuracy on square eval images per (cell axes, seed, side); ``relative``: divided by the
    same seed's accuracy at the training resolution (NaViT Fig. 10b), as a fraction. A cell at 0%
    there has no ratio (it is undefined, not infinite): it is left out (``zero_reference_cells``)."""
    squares = metrics[metrics["eval_height"] == metrics["eval_width"]]
    by_side = squares.groupby([*CELL_AXES, "seed", "side"])["accuracy"].mean()
    if not relative:
        return by_side
    reference = per_seed(metrics, SUBSET["train_res"])
    reference = reference.where(reference > 0)
    return (by_side / reference.reindex(by_side.index.droplevel("side")).to_numpy()).dropna()


def zero_reference_cells(metrics: pd.DataFrame) -> list[tuple[str, int]]:
    """(variant, seed) of the cells at 0% accuracy at the training resolution, which every ratio
    to that accuracy leaves out."""
    reference = per_seed(metrics, SUBSET["train_res"])
    zero = reference.index[reference == 0]
    return list(zip(zero.get_level_values("variant"), zero.get_level_values("seed")))


def seeds_of(series: pd.Series, variant: str, **axes) -> pd.Series:
    """One variant's per-seed values, indexed by seed and any level after it (also when it has
    none); the other cell axes are pinned by ``axes`` or hold one value (bench.report.data)."""
    index = series.index
    picked = series[np.logical_and.reduce([index.get_level_values(axis) == value
                                           for axis, value in {"variant": variant, **axes}.items()])]
    return picked.droplevel([axis for axis in CELL_AXES if axis in picked.index.names])


def stats_columns(prefix: str, st: SeedStats) -> dict:
    return {f"{prefix}_n": st.n, f"{prefix}_mean": st.mean, f"{prefix}_std": st.std,
            f"{prefix}_ci95_low": st.ci_low, f"{prefix}_ci95_high": st.ci_high}


def stats_from(row: pd.Series, prefix: str) -> SeedStats:
    return SeedStats(int(row[f"{prefix}_n"]), row[f"{prefix}_mean"], row[f"{prefix}_std"],
                     row[f"{prefix}_ci95_low"], row[f"{prefix}_ci95_high"])


def summary(results: Results) -> pd.DataFrame:
    """One row per group of cells (variant, task: the cell axes), ranked by mean accuracy over
    the whole grid (best first)."""
    metrics = results.metrics
    values = {s.key: per_seed(metrics, s) for s in SUBSETS}
    cell_means = metrics.groupby([*CELL_AXES, "eval_height", "eval_width"])["accuracy"].mean()
    groups = results.cells[list(CELL_AXES)].drop_duplicates()
    rows = []
    for variant, info in results.variants.iterrows():
        for axes in groups[groups["variant"] == variant].drop(columns="variant").to_dict("records"):
            row = {"variant": variant, **axes, "title": info["title"], "base_variant": info["base_variant"],
                   "family": info["family"], "param_count": info["param_count"], "seeds_ok": info["seeds_ok"],
                   "seeds_failed": info["seeds_failed"]}
            for key, series in values.items():
                row.update(stats_columns(key, seed_stats(seeds_of(series, variant, **axes))))
            row.update(_worst_cell(metrics, cell_means, {"variant": variant, **axes}))
            rows.append(row)
    table = pd.DataFrame(rows).sort_values("grid_mean", ascending=False, na_position="last",
                                           kind="stable")
    ranked = table["grid_mean"].notna()
    table.insert(0, "rank", pd.array([i + 1 if r else None for i, r in enumerate(ranked)], "Int64"))
    return table.reset_index(drop=True)


def _worst_cell(metrics: pd.DataFrame, cell_means: pd.Series, group: dict) -> dict:
    """The eval size with the lowest seed-mean accuracy of one group of cells (a value per cell
    axis), and its accuracy over seeds."""
    if group["variant"] not in cell_means.index.get_level_values("variant"):
        return {"worst_cell": "", **stats_columns("worst", seed_stats([]))}
    height, width = cell_means.xs(tuple(group.values()), level=list(group)).idxmin()
    rows = metrics[(metrics[list(group)] == pd.Series(group)).all(axis=1) & (metrics["eval_height"] == height)
                   & (metrics["eval_width"] == width)]
    return {"worst_cell": f"{height}x{width}", **stats_columns("worst", seed_stats(rows["accuracy"]))}


def paired(results: Results) -> pd.DataFrame | None:
    """Each variant minus the baseline on the same (seed, eval size) cells; None without baseline."""
    metrics, baseline = results.metrics, results.baseline
    base = metrics[metrics["variant"] == baseline]
    if base.empty:
        return None
    keys = [*(axis for axis in CELL_AXES if axis != "variant"), "seed", "eval_height", "eval_width"]
    rows = []
    for variant in results.ok_variants:
        if variant == baseline:
            continue
        pairs = metrics[metrics["variant"] == variant].merge(
            base[keys + ["accuracy"]], on=keys, suffixes=("", "_base"))
        pairs = pairs.assign(diff=pairs["accuracy"] - pairs["accuracy_base"])
        rows.append({"variant": variant, "title": results.title(variant), "baseline": baseline,
                     **diff_columns(pairs, variant)})
    return pd.DataFrame(rows)


def diff_columns(pairs: pd.DataFrame, variant: str) -> dict:
    """Per subset, from paired eval rows with a ``diff`` column: the per-seed mean difference, its
    stats over seeds, and how many seeds the difference was positive / negative in
    ("consistent" = every paired seed, at least 2, has one sign)."""
    row = {}
    for subset in SUBSETS:
        diffs = seeds_of(per_seed(pairs, subset, "diff"), variant)
        better, worse = int((diffs > 0).sum()), int((diffs < 0).sum())
        row.update(stats_columns(f"{subset.key}_diff", seed_stats(diffs)))
        row.update({f"{subset.key}_seeds_better": better, f"{subset.key}_seeds_worse": worse,
                    f"{subset.key}_consistent": len(diffs) >= 2 and len(diffs) in (better, worse)})
    return row


def by_seed(results: Results) -> pd.DataFrame:
    """One row per cell (variant x seed, failed ones too): its final training loss and its mean
    accuracy over each subset, the per-seed values every mean over seeds is taken of."""
    values = {s.key: per_seed(results.metrics, s) for s in SUBSETS}
    rows = []
    for variant in results.variants.index:
        cells = results.cells[results.cells["variant"] == variant].sort_values([*CELL_AXES, "seed"])
        for cell in cells.to_dict("records"):
            key = tuple(cell[axis] for axis in [*CELL_AXES, "seed"])
            rows.append({**{axis: cell[axis] for axis in CELL_AXES}, "title": results.title(variant),
                         "seed": cell["seed"], "status": cell["status"],
                         "final_train_loss": cell["final_train_loss"],
                         **{f"{name}_accuracy": series.get(key, math.nan) for name, series in values.items()}})
    return pd.DataFrame(rows)


def combine_groups(results: Results) -> dict[str, list[str]]:
    """Base variant -> its labels, for bases evaluated with two or more combine modes."""
    info = results.variants.loc[results.ok_variants]
    groups = {}
    for base, group in info.groupby("base_variant", sort=False):
        if group["combine"].nunique() >= 2:
            groups[base] = list(group.index)
    return groups


def fig10a(results: Results) -> tuple[pd.DataFrame, list[int]]:
    """NaViT Fig. 10a: per seed, the average and the best accuracy over the square eval sizes."""
    by_side = square_sides(results.metrics)
    average = by_side.groupby([*CELL_AXES, "seed"]).mean()
    best = by_side.groupby([*CELL_AXES, "seed"]).max()
    rows = []
    for variant in results.ok_variants:
        info = results.variants.loc[variant]
        paper = PUBLISHED_FIG10A.get((info["base_variant"], info["combine"]), (math.nan, math.nan))
        rows.append({"variant": variant, "title": info["title"],
                     **stats_columns("average", seed_stats(seeds_of(average, variant))),
                     **stats_columns("best", seed_stats(seeds_of(best, variant))),
                     "navit_paper_average": paper[0], "navit_paper_best": paper[1]})
    return pd.DataFrame(rows), sorted(by_side.index.get_level_values("side").unique().tolist())


def fig10a_csv(table: pd.DataFrame) -> pd.DataFrame:
    """navit_fig10a.csv: our accuracies in percent, the unit of the paper's columns beside them;
    the _pct suffix keeps a script that read the former fractions from misreading them."""
    ours = [c for c in table.columns if c.startswith(("average_", "best_")) and not c.endswith("_n")]
    paper = [c for c in table.columns if c.startswith("navit_paper_")]
    out = table.assign(**{c: 100 * table[c] for c in ours})
    return out.rename(columns={c: f"{c}_pct" for c in ours + paper})


# ---- display -------------------------------------------------------------------------------

def counted(n: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fmt_pct(st: SeedStats, ci: bool = True) -> str:
    """An accuracy as percent: '71.3 ± 0.4 [70.3, 72.3]' (std and CI only where defined; the
    CI is clipped to 0-100, which a t-interval of few, spread-out seeds can overshoot)."""
    if st.n == 0:
        return "n/a"
    text = f"{100 * st.mean:.1f}"
    if st.n >= 2:
        text += f" ± {100 * st.std:.1f}"
    if ci and not math.isnan(st.ci_low):
        text += f" [{100 * max(st.ci_low, 0):.1f}, {100 * min(st.ci_high, 1):.1f}]"
    return text


def zero_reference_note(metrics: pd.DataFrame) -> str:
    """The sentence naming the cells left out of the ratios to the training-resolution accuracy
    ("" when none is)."""
    cells = zero_reference_cells(metrics)
    if not cells:
        return ""
    named = ", ".join(f"`{variant}` seed {seed}" for variant, seed in cells)
    return (f"Left out of the ratios: {named}, at 0% accuracy at the training resolution, where a "
            f"ratio to it is undefined.")


def signed_pp(diff: float) -> str:
    """A difference of fractions in percentage points: '+2.1', '−0.4' (a true minus sign)."""
    return f"{100 * diff:+.1f}".replace("-", "−")


def fmt_pp(st: SeedStats) -> str:
    """Mean difference over seeds in percentage points, signed: '+2.1 ± 0.5'."""
    if st.n == 0:
        return "n/a"
    return signed_pp(st.mean) + (f" ± {100 * st.std:.1f}" if st.n >= 2 else "")


def summary_table(table: pd.DataFrame) -> Table:
    header = ["#", "variant", "params", "seeds", *(s.title for s in SUBSETS), "worst cell (H x W px)"]
    rows = []
    for _, r in table.iterrows():
        seeds = f"{r['seeds_ok']}" + (f" (+{r['seeds_failed']} failed)" if r["seeds_failed"] else "")
        params = f"{int(r['param_count']):,}" if pd.notna(r["param_count"]) else "n/a"
        cells = [fmt_pct(stats_from(r, s.key)) for s in SUBSETS]
        worst = fmt_pct(stats_from(r, "worst"), ci=False)
        worst = f"{worst} @ {r['worst_cell']}" if r["worst_cell"] else worst
        rank = "" if pd.isna(r["rank"]) else str(r["rank"])
        rows.append([rank, r["title"], params, seeds, *cells, worst])
    return Table(header, rows, align="llrr" + "r" * len(SUBSETS) + "r")


def paired_table(table: pd.DataFrame) -> Table:
    header = ["variant", *(f"Δ {s.title}" for s in SUBSETS), "consistent over grid"]
    rows = []
    for _, r in table.iterrows():
        cells = []
        for s in SUBSETS:
            n = r[f"{s.key}_diff_n"]
            text = fmt_pp(stats_from(r, f"{s.key}_diff"))
            if n:  # how many seeds share the sign of the mean difference ("=": no difference)
                better, worse = r[f"{s.key}_seeds_better"], r[f"{s.key}_seeds_worse"]
                mean = r[f"{s.key}_diff_mean"]
                agree, sign = ((better, "+") if mean > 0 else (worse, "−") if mean < 0
                               else (n - better - worse, "="))
                text += f" ({agree}/{n} {sign})"
            cells.append(text)
        verdict = "n/a (1 seed)" if r["grid_diff_n"] < 2 else ("yes" if r["grid_consistent"] else "no")
        rows.append([r["title"], *cells, verdict])
    return Table(header, rows, align="l" + "r" * len(SUBSETS) + "l")


def fig10a_table(table: pd.DataFrame) -> Table:
    header = ["variant", "average (%)", "best (%)", "NaViT paper average / best (%)"]
    rows = []
    for _, r in table.iterrows():
        paper = ("" if math.isnan(r["navit_paper_average"])
                 else f"{r['navit_paper_average']:.1f} / {r['navit_paper_best']:.1f}")
        rows.append([r["title"], fmt_pct(stats_from(r, "average"), ci=False),
                     fmt_pct(stats_from(r, "best"), ci=False), paper])
    return Table(header, rows, align="lrrr")


def by_seed_table(table: pd.DataFrame) -> Table:
    header = ["variant", "seed", "final training loss", *(s.title for s in SUBSETS)]
    rows = []
    for _, r in table.iterrows():
        if r["status"] != "ok":
            rows.append([r["title"], str(r["seed"]), "failed", *("" for _ in SUBSETS)])
            continue
        loss = "n/a" if pd.isna(r["final_train_loss"]) else f"{r['final_train_loss']:.3f}"
        accs = ["n/a" if math.isnan(r[f"{s.key}_accuracy"]) else f"{100 * r[f'{s.key}_accuracy']:.1f}"
                for s in SUBSETS]
        rows.append([r["title"], str(r["seed"]), loss, *accs])
    return Table(header, rows, align="lrr" + "r" * len(SUBSETS))
