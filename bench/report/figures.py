"""The report's figures, in a registry: each figure function is registered with its file stem, a
short title and the condition under which the data allows it; its number is its place in the
registry. Every figure is drawn once per task, from that task's view of the results
(``Results.of_task``), and saved as PNG (300 dpi), PDF and SVG named ``<stem>__<task>``; it names
its task at the top, and every accuracy axis has that task's chance line.

Curves over side length use square eval images only, so resolution is the only thing that
changes along them; aspect ratio has figures of its own. Curves leave out the eval sizes whose
patch grid is too small for the task (EvalPoint.solvable); the heatmaps show them hatched.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle

from .data import Results, display_name
from .figstyle import (CHAR_IN, COLUMN_IN, FORMATS, MARKERS, PAGE_IN, RC, REFERENCE_GREY, Style,
                       accuracy_ylim, aspect_axis, aspect_label, chance_line, chance_values,
                       family_curves, family_panels, header, hide_unused, members, save, side_axis,
                       styles, training_marks, training_sides)
from .stats import CI_LEVEL, MIN_SEEDS_FOR_CI
from .tables import (SUBSETS, combine_groups, counted, kept_share, paired, per_seed, seeds_of, square_sides,
                     stats_from, summary)

Draw = Callable[[Results, dict[str, Style]], tuple[plt.Figure, str]]


@dataclass(frozen=True)
class FigureSpec:
    stem: str    # file name without extension, under figures/
    title: str   # a few words, e.g. for the README
    draw: Draw   # -> the figure and its caption
    skip: Callable[[Results], str | None]  # why the data allows no such figure; None: draw it
    readme: bool  # one of the main figures the README shows


@dataclass(frozen=True)
class Outcome:
    number: int
    spec: FigureSpec
    task: str
    caption: str = ""   # set when drawn
    reason: str = ""    # set when not drawn

    @property
    def stem(self) -> str:
        return task_stem(self.spec.stem, self.task)

    @property
    def png(self) -> str:
        return f"{self.stem}.png"


REGISTRY: list[FigureSpec] = []


def task_stem(stem: str, task: str) -> str:
    """The file name (without extension) of a figure or table of one task."""
    return f"{stem}__{task}"


def figure(stem: str, title: str, skip: Callable[[Results], str | None] = lambda r: None,
           readme: bool = False):
    def register(draw: Draw) -> Draw:
        REGISTRY.append(FigureSpec(stem, title, draw, skip, readme))
        return draw
    return register


def write_figures(results: Results, folder: Path) -> list[Outcome]:
    """Draw every registered figure the data allows into ``folder``, task by task, in registry
    order. The folder is the report's own: any other figure file in it (one the data no longer
    allows, or an earlier version's name) is removed, so no stale figure sits beside the current
    ones."""
    folder.mkdir(parents=True, exist_ok=True)
    outcomes = []
    with plt.rc_context(RC):
        st = styles(results)
        for task in results.tasks:
            view = results.of_task(task)
            for number, spec in enumerate(REGISTRY, 1):
                reason = spec.skip(view) if view.ok_variants else "no successful cell"
                if reason:
                    outcomes.append(Outcome(number, spec, task, reason=reason))
                    continue
                fig, caption = spec.draw(view, st)
                header(fig, view)
                outcome = Outcome(number, spec, task, caption=f"{caption} {view.task_text()}.")
                save(fig, folder, outcome.stem)
                outcomes.append(outcome)
    drawn = {o.stem for o in outcomes if o.caption}
    for path in folder.iterdir():
        if path.suffix[1:] in FORMATS and path.stem not in drawn:
            path.unlink()
    return outcomes


CHANCE_TEXT = "Dash-dot line: chance, 1 / the task's classes."


def _interval_text(results: Results) -> str:
    seeds = int(results.variants["seeds_ok"].max())
    if seeds >= MIN_SEEDS_FOR_CI:
        return (f"whiskers: {CI_LEVEL:.0%} t-interval over seeds with the test-image noise added (for "
                f"variants with {MIN_SEEDS_FOR_CI} or more seeds)")
    return (f"no whiskers: a {CI_LEVEL:.0%} interval needs {MIN_SEEDS_FOR_CI} or more seeds, and "
            f"this run has {counted(seeds, 'seed')} per variant")


def _rows_in(n: int) -> float:
    return 0.16 * n + 0.2  # inches for n variant rows, one per line of 8 pt text, plus margins


# ---- ranked accuracy per regime --------------------------------------------------------------

NOT_RANKED = "†"   # marks a variant that is not ranked, in the ranking figure


@figure("ranking", "Accuracy per regime, variants ranked, with intervals", readme=True)
def _ranking(results: Results, st: dict[str, Style]):
    """Dots and whiskers, one panel per regime, each ranked on its own: the order is the point,
    and it changes between regimes. Variants that are not ranked sit below the ranked ones, hollow."""
    table = summary(results).set_index("variant")
    subsets = [s for s in SUBSETS if table[f"{s.key}_n"].gt(0).any()]
    cols = 2
    rows = math.ceil(len(subsets) / cols)
    n = max(table[f"{s.key}_n"].gt(0).sum() for s in subsets)
    # Each panel row: its variant rows plus a title and x tick labels; then header and x label.
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_IN, rows * (_rows_in(n) + 0.45) + 0.5),
                             squeeze=False, sharex=True, layout="constrained")
    hide_unused(axes, len(subsets))
    chance = chance_values(results, results.ok_variants)
    top = 0.0
    for ax, subset in zip(axes.flat, subsets):
        shown = table[table[f"{subset.key}_n"] > 0].sort_values(["ranked", f"{subset.key}_mean"])
        for y, (variant, r) in enumerate(shown.iterrows()):
            s = stats_from(r, subset.key)
            _dot(ax, y, s, st[variant], hollow=not r["ranked"])
            top = max(top, 100 * (s.mean if math.isnan(s.ci_high) else s.ci_high))
        ax.set_yticks(range(len(shown)), [results.title(v) + ("" if r["ranked"] else f" {NOT_RANKED}")
                                          for v, r in shown.iterrows()])
        ax.set_ylim(-0.6, len(shown) - 0.4)
        ax.set_title(subset.title, loc="left")
        ax.grid(axis="x", color="#eeeeee", lw=0.5)
        chance_line(ax, chance, vertical=True)  # unlabelled: a label would sit on the dots
    for ax in axes.flat[:len(subsets)]:
        ax.set_xlim(0, min(top, 100) + 3)
    fig.supxlabel("top-1 accuracy (%)")
    return fig, (f"Top-1 accuracy (%) per regime (the summary table's columns), variants ranked "
                 f"within each panel, best at the top; {NOT_RANKED}, hollow: not ranked (a seed did not learn, "
                 f"or no positional information on a positional task), below the ranked ones. Dots: mean over "
                 f"seeds; {_interval_text(results)}. {CHANCE_TEXT}")


def _dot(ax, y: float, s, style: Style, clip=(0, 100), hollow: bool = False) -> None:
    """One mean (a fraction, drawn in %) with its CI as a horizontal whisker clipped to ``clip``
    (a t-interval of few spread-out seeds can pass 0 or 100%), when there is one."""
    if not math.isnan(s.ci_low):
        low, high = np.clip([100 * s.ci_low, 100 * s.ci_high], *clip)
        ax.plot([low, high], [y, y], color=style.colour, lw=1.1, solid_capstyle="butt", zorder=2)
    ax.plot([100 * s.mean], [y], marker=style.marker, color=style.colour, ms=4.5, ls="none", zorder=3,
            mfc="white" if hollow else style.colour)


# ---- paired differences against the baseline (forest plot) -----------------------------------

def _no_baseline(results: Results) -> str | None:
    if results.baseline is None:
        return "the experiment names no baseline (the `baseline` key)"
    if results.baseline not in results.ok_variants:
        return f"`{results.baseline}`, the baseline, has no successful cell"
    if len(results.ok_variants) < 2:
        return "no variant besides the baseline"
    return None


@figure("paired_vs_baseline", "Paired difference from the baseline, with intervals", skip=_no_baseline)
def _paired_vs_baseline(results: Results, st: dict[str, Style]):
    baseline = results.baseline
    fig = draw_forest(paired(results).set_index("variant"), results, st,
                      f"difference from {results.title(baseline)} (percentage points, same seeds and "
                      f"eval sizes)")
    return fig, (f"Paired difference in top-1 accuracy from the baseline, "
                 f"{results.title(baseline)} (`{baseline}`), in percentage points: per seed, the "
                 f"variant minus the baseline on the same eval sizes and test images, averaged over each "
                 f"regime. Right of the line: better than the baseline. Dots: mean over seeds; "
                 f"{_interval_text(results)} of the paired difference.")


def draw_forest(table: pd.DataFrame, results: Results, st: dict[str, Style], xlabel: str):
    """A forest plot of paired differences (diff_columns, indexed by variant): one panel per
    regime, variants in rows sorted by the whole-grid difference, largest at the top."""
    table = table.sort_values("grid_diff_mean")
    subsets = [s for s in SUBSETS if table[f"{s.key}_diff_n"].gt(0).any()]
    # Variant rows, plus two-line panel titles, x tick labels, the header and the x label.
    fig, axes = plt.subplots(1, len(subsets), figsize=(PAGE_IN, _rows_in(len(table)) + 1.1),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, subset in zip(axes[0], subsets):
        ax.axvline(0, color=REFERENCE_GREY, lw=0.8, zorder=1)
        for y, (variant, r) in enumerate(table.iterrows()):
            _dot(ax, y, stats_from(r, f"{subset.key}_diff"), st[variant], clip=(-100, 100))
        # 11 characters: with six panels on a page-wide figure, no title runs into the next one
        ax.set_title(textwrap.fill(subset.title, 11, break_on_hyphens=False), loc="left")
        ax.grid(axis="x", color="#eeeeee", lw=0.5)
        ax.locator_params(axis="x", nbins=3)
        ax.margins(x=0.12)  # room for a marker at either end
        low, high = ax.get_xlim()
        if high - low < 2:  # differences of nothing: show them on a readable +/- 1 pp scale
            ax.set_xlim(min(low, -1), max(high, 1))
    axes[0, 0].set_yticks(range(len(table)), [results.title(v) for v in table.index])
    axes[0, 0].set_ylim(-0.6, len(table) - 0.4)
    fig.supxlabel(xlabel)
    return fig


# ---- accuracy vs side ------------------------------------------------------------------------

def _side_figure(results: Results, st: dict[str, Style], relative: bool):
    per = (kept_share(results.metrics) if relative else square_sides(results.metrics)) * 100
    curves = per.groupby(["variant", "side"]).agg(["mean", "std"])
    fig, panels = family_panels(results)
    sides = curves.index.get_level_values("side").unique()
    # Chance-corrected, chance is 0 and the training resolution 100.
    chance = [0.0] if relative else chance_values(results, results.ok_variants)
    for family, ax in panels.items():
        training_marks(ax, results, members(results, family))
        if relative:
            ax.axhline(100, color=REFERENCE_GREY, lw=0.6, zorder=1)
        chance_line(ax, chance, label="chance")
        family_curves(ax, results, family, curves, st, clip=(-math.inf, math.inf) if relative else (0, 100))
        side_axis(ax, sides, training_sides(results, results.ok_variants))
    fig.supxlabel("eval side length (px, square images, log scale)")
    if not relative:
        accuracy_ylim(next(iter(panels.values())), (curves["mean"] + curves["std"].fillna(0)).max(), chance)
    return fig


def _no_squares(results: Results) -> str | None:
    return None if len(square_sides(results.metrics)) else "the eval grid has no square size the task can be solved at"


def _no_ratios(results: Results) -> str | None:
    if len(kept_share(results.metrics)):
        return None
    return _no_squares(results) or "no cell learned, so no share of learned accuracy is defined"


@figure("accuracy_vs_side", "Accuracy vs eval side length (square images); shaded: training range",
        skip=_no_squares, readme=True)
def _accuracy_vs_side(results: Results, st: dict[str, Style]):
    fig = _side_figure(results, st, relative=False)
    fig.supylabel("top-1 accuracy (%)")
    return fig, ("Top-1 accuracy (%) vs eval side length (px, log scale, square images), one panel "
                 "per family; other families in grey. Lines: mean over seeds; bands: ± 1 std "
                 "(clipped to 0-100%). Shaded: the training side range; dotted: the training "
                 f"resolution. Sizes too small for the task are left out. {CHANCE_TEXT}")


@figure("relative_accuracy_vs_side", "Chance-corrected accuracy relative to the training resolution "
                                     "(NaViT Fig. 10b)", skip=_no_ratios)
def _relative_accuracy_vs_side(results: Results, st: dict[str, Style]):
    fig = _side_figure(results, st, relative=True)
    fig.supylabel("% of above-chance accuracy at training res.")
    return fig, ("The share of its above-chance accuracy at the training resolution that a variant keeps, "
                 "(accuracy − chance) / (accuracy at training res. − chance) in %, vs eval side length (px, "
                 "log scale, square images; NaViT Fig. 10b, chance-corrected), one panel per family; other "
                 "families in grey. Cells that did not learn are left out. Bands: ± 1 std over seeds. Shaded: "
                 "the training side range; dotted: the training resolution; solid grey: 100%, as at the "
                 "training resolution; dash-dot: chance (0%).")


# ---- accuracy vs aspect ratio at a fixed token count -----------------------------------------

def aspect_side(metrics: pd.DataFrame) -> int | None:
    """The nominal side whose equal-area sizes the task can be solved at span the most aspect
    ratios (ties: nearest the training side); None when no side has two aspect ratios."""
    counts = metrics[metrics["solvable"]].groupby("nominal_side")["aspect"].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return None
    reference = metrics.loc[metrics["at_train_res"], "side"]
    ref = reference.mode().iloc[0] if len(reference) else counts.index[0]
    best = counts[counts == counts.max()].index
    return int(min(best, key=lambda s: (abs(math.log2(s / ref)), s)))


def _no_aspects(results: Results) -> str | None:
    if aspect_side(results.metrics) is None:
        return "no group of equal-area eval sizes has two or more aspect ratios"
    return None


@figure("accuracy_vs_aspect", "Accuracy vs aspect ratio at a fixed token count", skip=_no_aspects)
def _accuracy_vs_aspect(results: Results, st: dict[str, Style]):
    metrics = results.metrics
    side = aspect_side(metrics)
    at_side = metrics[(metrics["nominal_side"] == side) & metrics["solvable"]]
    per = at_side.groupby(["variant", "seed", "aspect"])["accuracy"].mean() * 100
    curves = per.groupby(["variant", "aspect"]).agg(["mean", "std"])
    fig, panels = family_panels(results)
    first = next(iter(panels.values()))
    chance = chance_values(results, results.ok_variants)
    for family, ax in panels.items():
        ax.axvline(1, color="#b0b0b0", lw=0.8, zorder=0)
        chance_line(ax, chance, label="chance")
        family_curves(ax, results, family, curves, st, clip=(0, 100))
        aspect_axis(ax, at_side["aspect"].unique())
    accuracy_ylim(first, (curves["mean"] + curves["std"].fillna(0)).max(), chance)
    tokens = sorted(at_side["num_tokens"].unique())
    token_text = f"{tokens[0]}" if len(tokens) == 1 else f"{tokens[0]}–{tokens[-1]}"
    fig.supxlabel(f"aspect ratio W:H (log scale) at {token_text} tokens ({side} px equal-area side)")
    fig.supylabel("top-1 accuracy (%)")
    return fig, (f"Top-1 accuracy (%) vs aspect ratio W:H at a fixed token count: eval sizes of "
                 f"equal area, side {side} px, {token_text} tokens. One panel per family, other "
                 f"families in grey; bands: ± 1 std over seeds (clipped to 0-100%). {CHANCE_TEXT}")


# ---- side x aspect heatmaps ------------------------------------------------------------------

HEAT_CELL_IN = (0.25, 0.17)  # width fits "100" at 8 pt; height one line of it


def _heat_grid(results: Results) -> pd.Series:
    """Mean accuracy (%) over seeds per (variant, nominal side, nominal aspect)."""
    m = results.metrics.dropna(subset=["nominal_side"])
    per = m.groupby(["variant", "seed", "nominal_side", "nominal_aspect"])["accuracy"].mean()
    return per.groupby(["variant", "nominal_side", "nominal_aspect"]).mean() * 100


def _no_heat_grid(results: Results) -> str | None:
    grid = _heat_grid(results)
    if grid.empty:
        return "no eval size has an equal-area side near a square eval side to be filed under"
    if len(grid.index.droplevel("variant").unique()) < 2:
        return "the grid has a single eval size"
    return None


@figure("accuracy_heatmaps", "Accuracy over side x aspect ratio, per variant", skip=_no_heat_grid)
def _heatmaps(results: Results, st: dict[str, Style]):
    grid = _heat_grid(results)
    sides = sorted(grid.index.get_level_values("nominal_side").unique())
    aspects = sorted(grid.index.get_level_values("nominal_aspect").unique())
    variants = [v for v in results.ok_variants if v in grid.index.get_level_values("variant")]
    # A panel is at least wide enough for its title to wrap onto two lines.
    panel_w, panel_h = max(len(aspects) * HEAT_CELL_IN[0], 1.15), len(sides) * HEAT_CELL_IN[1]
    cols = max(1, min(len(variants), int((PAGE_IN - 1.1) // (panel_w + 0.18))))
    rows = math.ceil(len(variants) / cols)
    wrap = int((panel_w + 0.15) / CHAR_IN)
    titles = {v: textwrap.fill(results.title(v), wrap, break_on_hyphens=False) for v in variants}
    title_in = 0.14 * max(t.count("\n") + 1 for t in titles.values()) + 0.06
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_IN, rows * (panel_h + title_in + 0.25) + 0.5),
                             squeeze=False, sharex=True, sharey=True, layout="constrained")
    hide_unused(axes, len(variants))
    top = min(100.0, math.ceil(grid.max() / 10) * 10)
    norm = Normalize(0, top)
    cmap = plt.get_cmap("viridis")
    for ax, variant in zip(axes.flat, variants):
        values = grid.loc[variant].unstack("nominal_aspect").reindex(index=sides, columns=aspects)
        image = ax.imshow(values.to_numpy(), origin="lower", cmap=cmap, norm=norm, aspect="auto")
        for (i, j), v in np.ndenumerate(values.to_numpy()):
            if not math.isnan(v):
                dark = sum(cmap(norm(v))[:3]) < 1.5  # light text on the dark end of viridis
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", color="white" if dark else "black")
        _heat_training(ax, results, variant, sides, aspects)
        _heat_unsolvable(ax, results, sides, aspects)
        ax.set_title(titles[variant], loc="left")
        ax.set_xticks(range(len(aspects)), [aspect_label(a) for a in aspects])
        ax.set_yticks(range(len(sides)), [f"{s:.0f}" for s in sides])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
    fig.supxlabel("aspect ratio W:H")
    fig.supylabel("equal-area side √(H×W) (px)")
    chance = chance_values(results, variants)
    bar = fig.colorbar(image, ax=axes, shrink=min(1.0, 2.5 / (rows * (panel_h + title_in))), aspect=25,
                       label="top-1 accuracy (%, mean over seeds)" + ("; white: chance" if chance else ""))
    for value in chance:
        bar.ax.axhline(value, color="white", lw=1.5)
    return fig, ("Top-1 accuracy (%, mean over seeds) on every eval size, one panel per variant on "
                 "one colour scale: rows are the equal-area side sqrt(H x W), columns the aspect ratio "
                 "W:H (sizes are rounded to whole patches, so e.g. 2:1 at 8 px is 12 x 8). The bar "
                 "left of a panel spans the rows inside its training side range; the boxed cell is "
                 "the training resolution; hatched: a patch grid too small for the task. The colour bar "
                 "marks chance.")


def _heat_unsolvable(ax, results: Results, sides: list[float], aspects: list[float]) -> None:
    """Hatch the cells whose patch grid is too small for the task."""
    m = results.metrics.dropna(subset=["nominal_side"])
    solvable = m.groupby(["nominal_side", "nominal_aspect"])["solvable"].all()
    for (side, aspect), ok in solvable.items():
        if not ok and side in sides and aspect in aspects:
            i, j = sides.index(side), aspects.index(aspect)
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="////", ec="#d0d0d0", lw=0))


def _heat_training(ax, results: Results, variant: str, sides: list[float], aspects: list[float]) -> None:
    lo, hi = results.variants.loc[variant, ["train_min_side", "train_max_side"]]
    inside = [i for i, s in enumerate(sides) if pd.notna(lo) and lo <= s <= hi]
    if inside:
        ax.plot([-0.62, -0.62], [inside[0] - 0.45, inside[-1] + 0.45], color="black", lw=2.0,
                solid_capstyle="butt", clip_on=False)
    m = results.metrics
    ref = m[(m["variant"] == variant) & m["at_train_res"]]
    if len(ref) and ref["nominal_side"].iloc[0] in sides and ref["nominal_aspect"].iloc[0] in aspects:
        i, j = sides.index(ref["nominal_side"].iloc[0]), aspects.index(ref["nominal_aspect"].iloc[0])
        for colour, width in (("white", 2.6), ("black", 1.1)):  # visible on dark and light cells
            ax.add_patch(Rectangle((j - 0.45, i - 0.45), 0.9, 0.9, fill=False, ec=colour, lw=width))


# ---- combine modes ---------------------------------------------------------------------------

def _no_combine(results: Results) -> str | None:
    return None if combine_groups(results) else "no factorized variant was run with more than one combine mode"


@figure("combine_modes", "Combine modes of the factorized embedding", skip=_no_combine)
def _combine(results: Results, st: dict[str, Style]):
    """Dots and whiskers rather than bars: the modes differ by a few points, which bars from 0
    would hide and bars from a cut axis would misstate."""
    groups = combine_groups(results)
    values = {s.key: per_seed(results.metrics, s) * 100 for s in SUBSETS}
    fig, axes = plt.subplots(len(groups), 1, figsize=(COLUMN_IN, 2.3 * len(groups)), squeeze=False,
                             layout="constrained")
    top = 0.0
    chance = chance_values(results, results.ok_variants)
    for ax, labels in zip(axes[:, 0], groups.values()):
        colour = st[labels[0]].colour
        offset = 0.6 / len(labels)
        chance_line(ax, chance_values(results, labels), label="chance")
        for i, label in enumerate(labels):
            per = [seeds_of(values[s.key], label) for s in SUBSETS]
            means = np.array([v.mean() if len(v) else np.nan for v in per])
            errs = np.array([v.std(ddof=1) if len(v) >= 2 else 0 for v in per])
            low, high = np.clip(means - errs, 0, 100), np.clip(means + errs, 0, 100)
            top = max(top, np.nanmax(high))
            x = np.arange(len(SUBSETS)) + (i - (len(labels) - 1) / 2) * offset
            ax.errorbar(x, means, yerr=[means - low, high - means], color=colour,
                        marker=MARKERS[i % len(MARKERS)], ls="none", ms=4.5, mfc="white" if i else colour,
                        elinewidth=0.9, capsize=2, label=results.variants.loc[label, "combine"])
        ax.set_xticks(np.arange(len(SUBSETS)), [s.short for s in SUBSETS])
        ax.set_xlim(-0.5, len(SUBSETS) - 0.5)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(axis="y", color="#eeeeee", lw=0.5)
        base = results.variants.loc[labels[0], "base_variant"]
        ax.legend(title=f"{display_name(base, base)}, combine:",
                  ncol=len(labels), loc="lower left", bbox_to_anchor=(0, 1.0), alignment="left",
                  borderpad=0, handletextpad=0.3)
    for ax in axes[:, 0]:
        accuracy_ylim(ax, top, chance)
    return fig, ("Combine modes of the factorized embedding (sum / stack / product): top-1 accuracy "
                 "(%) over the same cell groups as the summary table; dots: mean over seeds, "
                 f"whiskers: ± 1 std (clipped to 0-100%). {CHANCE_TEXT}")


# ---- training loss ---------------------------------------------------------------------------

def _no_losses(results: Results) -> str | None:
    return None if len(results.losses) else "no cell stores its training losses"


def smoothed_losses(results: Results) -> pd.DataFrame:
    """Mean and std over seeds per (variant, step) of each seed's loss, smoothed by a centred
    moving average over 4% of the steps: one batch's loss is too noisy to read."""
    losses = results.losses.sort_values(["variant", "seed", "step"])
    window = max(1, round(losses["step"].max() / 25))
    smooth = losses.groupby(["variant", "seed"])["loss"].transform(
        lambda x: x.rolling(window, center=True, min_periods=1).mean())
    return losses.assign(loss=smooth).groupby(["variant", "step"])["loss"].agg(["mean", "std"])


@figure("training_loss", "Training loss per variant", skip=_no_losses)
def _training_loss(results: Results, st: dict[str, Style]):
    curves = smoothed_losses(results)
    fig, panels = family_panels(results)
    classes = results.cells["num_classes"].dropna().unique()
    first = next(iter(panels.values()))
    for family, ax in panels.items():
        for k in classes:
            chance_line(ax, [math.log(k)], label=f"chance: ln {int(k)}")
        family_curves(ax, results, family, curves, st, clip=(0, None), markers=False)
    # The range the curves and the chance line use: the loss has no natural floor worth showing.
    spread = curves["std"].fillna(0)
    low = min([(curves["mean"] - spread).min(), *(math.log(k) for k in classes)])
    high = max([(curves["mean"] + spread).max(), *(math.log(k) for k in classes)])
    first.set_ylim(max(0.0, low - 0.08 * (high - low)), high + 0.08 * (high - low))
    fig.supxlabel("training step")
    fig.supylabel("training loss (cross-entropy)")
    return fig, ("Training loss (cross-entropy) per step, smoothed by a centred moving average over "
                 "4% of the steps; lines: mean over seeds, bands: ± 1 std. One panel per family, "
                 "other families in grey. The dash-dot line is the loss of a uniform guess, "
                 "ln(classes): a curve that stays on it did not learn.")
