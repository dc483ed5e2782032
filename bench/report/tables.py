"""The report's tables, computed from metrics.csv rows and the cells' hits, one task at a time:
summary, paired vs baseline, per seed, NaViT Fig. 10a.

Every statistic is two-level: first one value per cell (variant, task, seed: the store's cell
axes and the seed), e.g. the mean accuracy over the seed's eval sizes of a regime, then mean /
std over seeds and a 95% interval that adds the test images' sampling noise (bench.report.stats,
bench.report.estimates). Regimes hold only eval sizes whose patch grid can show the task's label
(EvalPoint.solvable); the others are a regime of their own, "too-small grid". Accuracies stay
fractions (0..1) in the CSV files, like metrics.csv, and become percentages only for display;
navit_fig10a.csv alone is in percent, the unit of the paper's numbers it sits beside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from ..store import CELL_AXES
from .data import CELL_KEYS, Results
from .document import Table
from .estimates import Estimate, accuracy, difference
from .stats import SeedStats, seed_stats


@dataclass(frozen=True)
class Subset:
    key: str
    title: str   # table heading
    short: str   # figure tick label
    select: Callable[[pd.DataFrame], pd.Series]  # metrics rows -> bool mask


SUBSETS = (   # the regimes; every one but "small" keeps solvable sizes only
    Subset("train_res", "at training res.", "training\nres.", lambda m: m["at_train_res"] & m["solvable"]),
    Subset("grid", "whole grid", "whole\ngrid", lambda m: m["solvable"]),
    Subset("below", "below train range", "below\nrange", lambda m: (m["train_range"] == "below") & m["solvable"]),
    Subset("above", "above train range", "above\nrange", lambda m: (m["train_range"] == "above") & m["solvable"]),
    Subset("extreme", "extreme aspect", "extreme\naspect", lambda m: m["extreme"] & m["solvable"]),
    Subset("small", "too-small grid", "too-small\ngrid", lambda m: ~m["solvable"]),
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
    return rows.groupby(CELL_KEYS)[value].mean()


def square_sides(metrics: pd.DataFrame) -> pd.Series:
    """Accuracy on square eval images whose grid can show the label, per (cell axes, seed, side)."""
    squares = metrics[(metrics["eval_height"] == metrics["eval_width"]) & metrics["solvable"]]
    return squares.groupby([*CELL_KEYS, "side"])["accuracy"].mean()


def kept_share(metrics: pd.DataFrame) -> pd.Series:
    """The share of its above-chance accuracy at the training resolution that a cell keeps at each
    square side, (accuracy - chance) / (accuracy at training res. - chance), as a fraction; cells
    that learned only (the denominator is then above the learning margin, never near 0)."""
    learned = metrics[metrics["learned"]]
    by_side = square_sides(learned)
    reference = learned[learned["at_train_res"]].groupby(CELL_KEYS)["accuracy"].mean()
    chance = learned.groupby(CELL_KEYS)["chance"].first()
    cells = by_side.index.droplevel("side")
    base = chance.reindex(cells).to_numpy()
    return ((by_side - base) / (reference.reindex(cells).to_numpy() - base)).dropna()


def seeds_of(series: pd.Series, variant: str, **axes) -> pd.Series:
    """One variant's per-seed values, indexed by seed and any level after it (also when it has
    none); the other cell axes are pinned by ``axes`` or hold one value (a task's view)."""
    index = series.index
    picked = series[np.logical_and.reduce([index.get_level_values(axis) == value
                                           for axis, value in {"variant": variant, **axes}.items()])]
    return picked.droplevel([axis for axis in CELL_AXES if axis in picked.index.names])


def stats_columns(prefix: str, st: SeedStats) -> dict:
    return {f"{prefix}_n": st.n, f"{prefix}_mean": st.mean, f"{prefix}_std": st.std,
            f"{prefix}_ci95_low": st.ci_low, f"{prefix}_ci95_high": st.ci_high, f"{prefix}_image_se": st.image_se}


def stats_from(row: pd.Series, prefix: str) -> SeedStats:
    return SeedStats(int(row[f"{prefix}_n"]), row[f"{prefix}_mean"], row[f"{prefix}_std"],
                     row[f"{prefix}_ci95_low"], row[f"{prefix}_ci95_high"], row[f"{prefix}_image_se"])


def summary(results: Results) -> pd.DataFrame:
    """One row per (task, variant): each regime's accuracy with its interval; per task, the
    ranked variants first, best whole-grid mean first, then those not ranked (flag says why)."""
    return pd.concat([_task_summary(results.of_task(task)) for task in results.tasks], ignore_index=True)


def _task_summary(view: Results) -> pd.DataFrame:
    rows = []
    for variant, info in view.variants.iterrows():
        row = {"variant": variant, "task": info["task"], "title": info["title"], "base_variant": info["base_variant"],
               "family": info["family"], "param_count": info["param_count"], "seeds_ok": info["seeds_ok"],
               "seeds_failed": info["seeds_failed"], "seeds_learned": info["seeds_learned"],
               "ranked": bool(info["ranked"]), "flag": view.flag(variant)}
        for subset in SUBSETS:
            row.update(stats_columns(subset.key, accuracy(view, subset, variant).stats))
        row.update(_worst_cell(view.metrics, variant))
        rows.append(row)
    table = pd.DataFrame(rows).sort_values(["ranked", "grid_mean"], ascending=False, na_position="last",
                                           kind="stable")
    ranks = [i + 1 if ranked else None for i, ranked in enumerate(table["ranked"])]
    table.insert(0, "rank", pd.array(ranks, "Int64"))
    return table.reset_index(drop=True)


def _worst_cell(metrics: pd.DataFrame, variant: str) -> dict:
    """The solvable eval size with the lowest seed-mean accuracy of one variant of a task, and
    its accuracy over seeds."""
    rows = metrics[(metrics["variant"] == variant) & metrics["solvable"]]
    if rows.empty:
        return {"worst_cell": "", **stats_columns("worst", seed_stats([]))}
    height, width = rows.groupby(["eval_height", "eval_width"])["accuracy"].mean().idxmin()
    at = rows[(rows["eval_height"] == height) & (rows["eval_width"] == width)]
    return {"worst_cell": f"{height}x{width}", **stats_columns("worst", seed_stats(at["accuracy"]))}


def paired(results: Results) -> pd.DataFrame | None:
    """Per task, each variant minus the baseline, paired (bench.report.estimates.difference); None
    when the baseline has no ok cell."""
    baseline, rows = results.baseline, []
    for task in results.tasks:
        view = results.of_task(task)
        if baseline not in view.ok_variants:
            continue
        for variant in view.ok_variants:
            if variant != baseline:
                rows.append({"variant": variant, "task": task, "title": view.title(variant), "baseline": baseline,
                             "flag": view.flag(variant),
                             **diff_columns({s.key: difference(view, s, variant, baseline) for s in SUBSETS})})
    return pd.DataFrame(rows) if rows else None


def diff_columns(estimates: dict[str, Estimate]) -> dict:
    """Per subset key, a paired difference's stats over seeds and how many seeds it was
    positive / negative in ("consistent" = every paired seed, at least 2, has one sign)."""
    row = {}
    for key, estimate in estimates.items():
        diffs = estimate.per_seed
        better, worse = int((diffs > 0).sum()), int((diffs < 0).sum())
        row.update(stats_columns(f"{key}_diff", estimate.stats))
        row.update({f"{key}_seeds_better": better, f"{key}_seeds_worse": worse,
                    f"{key}_consistent": len(diffs) >= 2 and len(diffs) in (better, worse)})
    return row


def by_seed(results: Results) -> pd.DataFrame:
    """One row per cell (variant x task x seed, failed ones too): its final training loss, whether
    it learned and its mean accuracy over each subset, the per-seed values every mean over seeds
    is taken of."""
    values = {s.key: per_seed(results.metrics, s) for s in SUBSETS}
    rows = []
    for task in results.tasks:
        for variant in results.variants.index:
            cells = results.cells[(results.cells["variant"] == variant) & (results.cells["task"] == task)]
            for cell in cells.sort_values("seed").to_dict("records"):
                key = tuple(cell[axis] for axis in CELL_KEYS)
                rows.append({**{axis: cell[axis] for axis in CELL_AXES}, "title": results.title(variant),
                             "seed": cell["seed"], "status": cell["status"],
                             "final_train_loss": cell["final_train_loss"], "learned": bool(cell["learned"]),
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
    """NaViT Fig. 10a, per task: per seed, the average and the best accuracy over the square eval
    sizes that can show the label."""
    by_side = square_sides(results.metrics)
    average = by_side.groupby(CELL_KEYS).mean()
    best = by_side.groupby(CELL_KEYS).max()
    rows = []
    for task in results.tasks:
        view = results.of_task(task)
        for variant in view.ok_variants:
            info = view.variants.loc[variant]
            paper = PUBLISHED_FIG10A.get((info["base_variant"], info["combine"]), (math.nan, math.nan))
            rows.append({"variant": variant, "task": task, "title": info["title"], "flag": view.flag(variant),
                         **stats_columns("average", seed_stats(seeds_of(average, variant, task=task))),
                         **stats_columns("best", seed_stats(seeds_of(best, variant, task=task))),
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

SEEDS_ONLY = "†"   # marks an interval over seeds alone: cells from before per-image hits were kept


def counted(n: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def fmt_pct(st: SeedStats, ci: bool = True) -> str:
    """An accuracy as percent: '71.3 ± 0.4 [70.3, 72.3]' (std and interval only where defined;
    the interval is clipped to 0-100, which one of few, spread-out seeds can overshoot)."""
    if st.n == 0:
        return "n/a"
    text = f"{100 * st.mean:.1f}"
    if st.n >= 2:
        text += f" ± {100 * st.std:.1f}"
    if ci and not math.isnan(st.ci_low):
        text += f" [{100 * max(st.ci_low, 0):.1f}, {100 * min(st.ci_high, 1):.1f}]" + _seeds_only(st)
    return text


def _seeds_only(st: SeedStats) -> str:
    return SEEDS_ONLY if math.isnan(st.image_se) else ""


def signed_pp(diff: float) -> str:
    """A difference of fractions in percentage points: '+2.1', '−0.4' (a true minus sign)."""
    return f"{100 * diff:+.1f}".replace("-", "−")


def fmt_pp(st: SeedStats) -> str:
    """A difference in percentage points, signed, with its interval: '+2.1 [+0.9, +3.3]'; with
    too few seeds for one, the seed std: '+2.1 ± 0.5'."""
    if st.n == 0:
        return "n/a"
    if not math.isnan(st.ci_low):
        return f"{signed_pp(st.mean)} [{signed_pp(st.ci_low)}, {signed_pp(st.ci_high)}]" + _seeds_only(st)
    return signed_pp(st.mean) + (f" ± {100 * st.std:.1f}" if st.n >= 2 else "")


def summary_table(table: pd.DataFrame) -> Table:
    """One task's summary rows as a table: ranked variants by rank, then the flagged ones."""
    header = ["#", "variant", "params", "seeds", *(s.title for s in SUBSETS), "worst cell (H x W px)",
              "not ranked because"]
    rows = []
    for _, r in table.iterrows():
        seeds = f"{r['seeds_ok']}" + (f" (+{r['seeds_failed']} failed)" if r["seeds_failed"] else "")
        params = f"{int(r['param_count']):,}" if pd.notna(r["param_count"]) else "n/a"
        cells = [fmt_pct(stats_from(r, s.key)) for s in SUBSETS]
        worst = fmt_pct(stats_from(r, "worst"), ci=False)
        worst = f"{worst} @ {r['worst_cell']}" if r["worst_cell"] else worst
        rank = "—" if pd.isna(r["rank"]) else str(r["rank"])
        rows.append([rank, r["title"], params, seeds, *cells, worst, r["flag"]])
    return Table(header, rows, align="llrr" + "r" * len(SUBSETS) + "rl")


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
        rows.append([_flagged(r), *cells, verdict])
    return Table(header, rows, align="l" + "r" * len(SUBSETS) + "l")


def _flagged(row: pd.Series) -> str:
    """The display name, with why the variant is not ranked (a compare table has no flags; a CSV
    read back has NaN for none)."""
    flag = row.get("flag")
    return row["title"] + (f" ({flag})" if isinstance(flag, str) and flag else "")


def fig10a_table(table: pd.DataFrame) -> Table:
    header = ["variant", "average (%)", "best (%)", "NaViT paper average / best (%)"]
    rows = []
    for _, r in table.iterrows():
        paper = ("" if math.isnan(r["navit_paper_average"])
                 else f"{r['navit_paper_average']:.1f} / {r['navit_paper_best']:.1f}")
        rows.append([_flagged(r), fmt_pct(stats_from(r, "average"), ci=False),
                     fmt_pct(stats_from(r, "best"), ci=False), paper])
    return Table(header, rows, align="lrrr")


def by_seed_table(table: pd.DataFrame) -> Table:
    header = ["variant", "task", "seed", "final training loss", "learned", *(s.title for s in SUBSETS)]
    rows = []
    for _, r in table.iterrows():
        if r["status"] != "ok":
            rows.append([r["title"], r["task"], str(r["seed"]), "failed", "", *("" for _ in SUBSETS)])
            continue
        loss = "n/a" if pd.isna(r["final_train_loss"]) else f"{r['final_train_loss']:.3f}"
        accs = ["n/a" if math.isnan(r[f"{s.key}_accuracy"]) else f"{100 * r[f'{s.key}_accuracy']:.1f}"
                for s in SUBSETS]
        rows.append([r["title"], r["task"], str(r["seed"]), loss, "yes" if r["learned"] else "did not learn", *accs])
    return Table(header, rows, align="llrrl" + "r" * len(SUBSETS))
