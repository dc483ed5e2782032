"""The report's figures, sized for print with text of 8 pt or more at their own size, saved at
300 dpi: the per-family small multiples (figures 1-4) span a page (7 in), the combine-mode figure
fits one column (3.5 in).

Colour = family (Okabe-Ito, colour-blind safe), the same in every figure; line style and marker
tell variants of one family apart. Curves use square eval images only, so side length is the
only thing that changes along a curve; aspect ratio has figures of its own (3 and 4).
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter, NullLocator  # noqa: E402

from ..store import atomic_write  # noqa: E402
from .data import OTHER_FAMILY, Results  # noqa: E402
from .tables import SUBSETS, combine_groups, per_seed, seeds_of, square_sides  # noqa: E402

DPI = 300
COLUMN_IN = 3.5
PAGE_IN = 7.0

FAMILY_COLOURS = {  # Okabe & Ito (2008); grey for the no-embedding floor
    "1D learned": "#000000",
    "2D joint": "#CC79A7",
    "factorized absolute": "#0072B2",
    "factorized fractional": "#009E73",
    "rope": "#D55E00",
    "none": "#999999",
    OTHER_FAMILY: "#E69F00",
}
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P")
CHAR_IN = 0.07        # width of one 8 pt character (DejaVu Sans), for spacing tick labels
PANEL_PLOT_IN = 2.0   # plot width of one family panel on a page-wide figure
TRAIN_SHADE = "#e8e8e8"
CONTEXT_GREY = "#cfcfcf"

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "legend.fontsize": 8, "legend.title_fontsize": 8,
    "figure.titlesize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "legend.frameon": False,
    "savefig.dpi": DPI, "font.family": "DejaVu Sans",
}

FIGURES = ("fig1_accuracy_vs_side.png", "fig2_relative_accuracy_vs_side.png",
           "fig3_accuracy_heatmaps.png", "fig4_accuracy_vs_aspect.png", "fig5_combine_modes.png")


@dataclass(frozen=True)
class Figure:
    name: str     # file name under figures/
    caption: str


@dataclass(frozen=True)
class Style:
    colour: str
    linestyle: object
    marker: str
    short: str   # the label without its family prefix, for a legend titled by the prefix


def styles(results: Results) -> dict[str, Style]:
    """One style per variant label, fixed by display order so every figure agrees."""
    out = {}
    for family, group in results.variants.groupby("family", sort=False):
        prefix = _family_prefix(group.index)
        for i, variant in enumerate(group.index):
            out[variant] = Style(FAMILY_COLOURS[family], LINESTYLES[i % len(LINESTYLES)],
                                 MARKERS[i % len(MARKERS)], variant[len(prefix):] or variant)
    return out


def _family_prefix(labels) -> str:
    """'factorized_abs_' for factorized_abs_learned, _sincos...; '' for a single label."""
    if len(labels) < 2:
        return ""
    common = os.path.commonprefix(list(labels))
    return common[: common.rfind("_") + 1]


def write_figures(results: Results, folder: Path) -> list[Figure]:
    """Draw every figure the data allows into ``folder``; stale files of ours are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    if results.ok_variants:
        with plt.rc_context(RC):
            st = styles(results)
            made = [f for f in (
                _fig_side(results, st, folder, relative=False),
                _fig_side(results, st, folder, relative=True),
                _fig_heatmaps(results, folder),
                _fig_aspect(results, st, folder),
                _fig_combine(results, folder),
            ) if f is not None]
    for name in set(FIGURES) - {f.name for f in made}:
        (folder / name).unlink(missing_ok=True)
    return made


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()  # rendered in memory, then written in one atomic step
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.03)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


# ---- shared panel layout: one panel per family -------------------------------------------------

def _family_panels(results: Results):
    """Page-wide small multiples, one per family with an ok variant, legends above the panels."""
    families = list(dict.fromkeys(results.variants.loc[results.ok_variants, "family"]))
    cols = min(3, len(families))
    rows = math.ceil(len(families) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_IN, 2.25 * rows), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    for ax in axes.flat[len(families):]:
        ax.set_visible(False)
    return fig, dict(zip(families, axes.flat))


def _members(results: Results, family: str) -> list[str]:
    return [v for v in results.ok_variants if results.variants.loc[v, "family"] == family]


def _family_curves(ax, results: Results, family: str, curves: pd.DataFrame,
                   st: dict[str, Style]) -> None:
    """The family's variants in colour with ± std bands over the other families' means in grey."""
    members = _members(results, family)
    for variant in results.ok_variants:
        if variant not in members and variant in curves.index:
            c = curves.loc[variant]
            ax.plot(c.index, c["mean"], color=CONTEXT_GREY, lw=0.6, zorder=1)
    for variant in members:
        if variant not in curves.index:
            continue
        c, s = curves.loc[variant], st[variant]
        ax.plot(c.index, c["mean"], color=s.colour, ls=s.linestyle, marker=s.marker,
                label=s.short, zorder=3)
        ax.fill_between(c.index, c["mean"] - c["std"], c["mean"] + c["std"], color=s.colour,
                        alpha=0.18, lw=0, zorder=2)
    ax.grid(axis="y", color="#eeeeee", lw=0.5)
    prefix = _family_prefix(members)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=2 if len(members) > 3 else 1,
              title=f"{prefix}…" if prefix else None, alignment="left", handlelength=1.8,
              columnspacing=0.8, borderaxespad=0.2, labelspacing=0.25, borderpad=0)


def _log2_axis(ax, values, preferred, label) -> None:
    """Log2 x axis with a minor tick at every value and as many labels as fit without touching:
    ``preferred`` values first, then the rest, each kept only if it clears the labels kept."""
    values = sorted(values)
    logs = {v: math.log2(v) for v in values}
    octaves_per_inch = (logs[values[-1]] - logs[values[0]]) / PANEL_PLOT_IN

    def clear(a, b):  # half of each label's width plus a gap, in octaves
        inches = (len(label(a)) + len(label(b))) / 2 * CHAR_IN + 0.08
        return abs(logs[a] - logs[b]) >= inches * octaves_per_inch
    kept = []
    for v in [p for p in preferred if p in logs] + values:
        if v not in kept and all(clear(v, k) for k in kept):
            kept.append(v)
    kept.sort()
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(kept))
    ax.xaxis.set_major_formatter(FixedFormatter([label(v) for v in kept]))
    ax.xaxis.set_minor_locator(FixedLocator(values))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _side_axis(ax, sides) -> None:
    sides = sorted(sides)
    _log2_axis(ax, sides, [sides[0], sides[-1]] + [s for s in sides if math.log2(s).is_integer()], str)


def _aspect_axis(ax, aspects) -> None:
    aspects = sorted(aspects)
    _log2_axis(ax, aspects, [1.0, aspects[0], aspects[-1]], aspect_label)


def _training_marks(ax, results: Results, variants: list[str]) -> None:
    """Shade each distinct training side range of ``variants`` (a band even for a fixed
    resolution) and mark the training-resolution eval side with a dotted line."""
    info = results.variants.loc[variants]
    for lo, hi in sorted(set(zip(info["train_min_side"], info["train_max_side"]))):
        if pd.notna(lo) and pd.notna(hi):
            ax.axvspan(lo / 1.03, hi * 1.03, color=TRAIN_SHADE, lw=0, zorder=0)
    metrics = results.metrics
    refs = metrics.loc[metrics["variant"].isin(variants) & metrics["at_train_res"], "side"]
    for ref in sorted(refs.unique()):
        ax.axvline(ref, color="#808080", lw=0.7, ls=":", zorder=1)


# ---- figures 1 and 2: accuracy vs side ------------------------------------------------------

def _fig_side(results: Results, st: dict[str, Style], folder: Path, relative: bool) -> Figure:
    per = square_sides(results.metrics, relative=relative) * 100
    curves = per.groupby(["variant", "side"]).agg(["mean", "std"])
    fig, panels = _family_panels(results)
    for family, ax in panels.items():
        _training_marks(ax, results, _members(results, family))
        if relative:
            ax.axhline(100, color="#808080", lw=0.6, zorder=1)
        _family_curves(ax, results, family, curves, st)
        _side_axis(ax, curves.index.get_level_values("side").unique())
    fig.supxlabel("eval side length (px, square images, log scale)")
    if relative:
        fig.supylabel("% of accuracy at training resolution")
        name, what = FIGURES[1], ("Accuracy relative to each variant's own accuracy at the training "
                                  "resolution (NaViT Fig. 10b), in %,")
    else:
        fig.supylabel("top-1 accuracy (%)")
        name, what = FIGURES[0], "Top-1 accuracy (%)"
    _save(fig, folder / name)
    return Figure(name, f"{what} vs eval side length (px, log scale, square images), one panel "
                        f"per family; other families in grey. Lines: mean over seeds; bands: ± 1 "
                        f"std. Shaded: the training side range; dotted: the training resolution.")


# ---- figure 3: heatmaps over eval height x width --------------------------------------------

def _fig_heatmaps(results: Results, folder: Path) -> Figure:
    metrics = results.metrics
    cells = metrics.groupby(["variant", "eval_height", "eval_width"])["accuracy"].mean() * 100
    variants = results.ok_variants
    cols = min(len(variants), 5)
    rows = math.ceil(len(variants) / cols)
    panel = (PAGE_IN - 0.6) / cols
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_IN, panel * rows + 0.5), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    lw2, lh2 = np.log2(metrics["eval_width"]), np.log2(metrics["eval_height"])
    lo, hi = min(lw2.min(), lh2.min()) - 0.5, max(lw2.max(), lh2.max()) + 0.5  # one square range
    # Square markers as big as the closest pair of grid cells allows, so a dense grid tiles.
    points = np.unique(np.stack([lw2, lh2], 1), axis=0)
    gaps = [np.max(np.abs(points - p), axis=1) for p in points]
    step = min((g[g > 0].min() for g in gaps if (g > 0).any()), default=1.0)
    inches = panel * 0.8 * step / (hi - lo)
    size = (inches * 72 * 0.92) ** 2
    vmin, vmax = cells.min(), cells.max()
    for ax, variant in zip(axes.flat, variants):
        c = cells.loc[variant].reset_index()
        lo_side, hi_side = results.variants.loc[variant, ["train_min_side", "train_max_side"]]
        for area_side in {lo_side, hi_side}:  # the training range: sizes of equal area lie on a line
            w = np.geomspace(2 ** lo, 2 ** hi, 50)
            ax.plot(w, area_side ** 2 / w, color="#808080", lw=0.7, ls="--", zorder=1)
        sc = ax.scatter(c["eval_width"], c["eval_height"], c=c["accuracy"], cmap="viridis",
                        vmin=vmin, vmax=vmax, marker="s", s=size, linewidths=0, zorder=2)
        ref = metrics[(metrics["variant"] == variant) & metrics["at_train_res"]]
        if len(ref):
            ax.scatter(ref["eval_width"].iloc[:1], ref["eval_height"].iloc[:1], marker="s",
                       s=size * 1.15, facecolors="none", edgecolors="black", linewidths=1.0, zorder=3)
        ax.set_title(_wrap(variant, 20))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlim(2 ** lo, 2 ** hi)
        ax.set_ylim(2 ** lo, 2 ** hi)
        ax.set_aspect("equal", adjustable="box")
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    _pixel_ticks(axes[0, 0], metrics)
    fig.supxlabel("eval width (px, log scale)")
    fig.supylabel("eval height (px, log scale)")
    fig.colorbar(sc, ax=axes, shrink=0.6, label="top-1 accuracy (%)", aspect=30)
    _save(fig, folder / FIGURES[2])
    return Figure(FIGURES[2], "Top-1 accuracy (%, mean over seeds) of every eval size, one panel "
                              "per variant on one shared colour scale; x: eval width, y: eval height "
                              "(px, log scale). Outlined: the training resolution; dashed: the training "
                              "side range as equal-area lines (W x H = side²).")


def _wrap(label: str, width: int) -> str:
    """Break a long label after the last '_' that keeps the first line within ``width``."""
    cut = label.rfind("_", 0, width) + 1
    return label if len(label) <= width or cut == 0 else label[:cut] + "\n" + label[cut:]


def _pixel_ticks(ax, metrics: pd.DataFrame) -> None:
    """Powers of two from the grid's range as ticks (shared axes: every panel gets them)."""
    lo = int(math.floor(math.log2(min(metrics["eval_width"].min(), metrics["eval_height"].min()))))
    hi = int(math.ceil(math.log2(max(metrics["eval_width"].max(), metrics["eval_height"].max()))))
    ticks = [2 ** k for k in range(lo, hi + 1)]
    if len(ticks) > 4:
        ticks = ticks[::2]
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FixedFormatter([str(t) for t in ticks]))
        axis.set_minor_locator(NullLocator())


# ---- figure 4: accuracy vs aspect ratio at a fixed token count ------------------------------

def aspect_side(metrics: pd.DataFrame) -> int | None:
    """The nominal side whose equal-area sizes span the most aspect ratios (ties: nearest the
    training side); None when no side has two aspect ratios."""
    counts = metrics.groupby("nominal_side")["aspect"].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return None
    reference = metrics.loc[metrics["at_train_res"], "side"]
    ref = reference.mode().iloc[0] if len(reference) else counts.index[0]
    best = counts[counts == counts.max()].index
    return int(min(best, key=lambda s: (abs(math.log2(s / ref)), s)))


def aspect_label(aspect: float) -> str:
    return f"{aspect:.2g}:1" if aspect >= 1 else f"1:{1 / aspect:.2g}"


def _fig_aspect(results: Results, st: dict[str, Style], folder: Path) -> Figure | None:
    metrics = results.metrics
    side = aspect_side(metrics)
    if side is None:
        return None
    at_side = metrics[metrics["nominal_side"] == side]
    per = at_side.groupby(["variant", "seed", "aspect"])["accuracy"].mean() * 100
    curves = per.groupby(["variant", "aspect"]).agg(["mean", "std"])
    aspects = sorted(at_side["aspect"].unique())
    fig, panels = _family_panels(results)
    for family, ax in panels.items():
        ax.axvline(1, color="#b0b0b0", lw=0.8, zorder=0)
        _family_curves(ax, results, family, curves, st)
        _aspect_axis(ax, aspects)
    tokens = sorted(at_side["num_tokens"].unique())
    token_text = f"{tokens[0]}" if len(tokens) == 1 else f"{tokens[0]}–{tokens[-1]}"
    fig.supxlabel(f"aspect ratio W:H (log scale) at {token_text} tokens ({side} px equal-area side)")
    fig.supylabel("top-1 accuracy (%)")
    _save(fig, folder / FIGURES[3])
    return Figure(FIGURES[3], f"Top-1 accuracy (%) vs aspect ratio W:H at a fixed token count: "
                              f"eval sizes of equal area, side {side} px, {token_text} tokens. One "
                              f"panel per family, other families in grey; bands: ± 1 std over seeds.")


# ---- figure 5: combine modes ----------------------------------------------------------------

def _fig_combine(results: Results, folder: Path) -> Figure | None:
    """Dots and whiskers rather than bars: the modes differ by a few points, which bars from 0
    would hide and bars from a cut axis would misstate."""
    groups = combine_groups(results)
    if not groups:
        return None
    values = {s.key: per_seed(results.metrics, s) * 100 for s in SUBSETS}
    fig, axes = plt.subplots(len(groups), 1, figsize=(COLUMN_IN, 2.2 * len(groups)), squeeze=False,
                             layout="constrained")
    for ax, (base, labels) in zip(axes[:, 0], groups.items()):
        colour = FAMILY_COLOURS[results.variants.loc[labels[0], "family"]]
        offset = 0.6 / len(labels)
        for i, label in enumerate(labels):
            per = [seeds_of(values[s.key], label) for s in SUBSETS]
            means = [v.mean() if len(v) else np.nan for v in per]
            errs = [v.std(ddof=1) if len(v) >= 2 else 0 for v in per]
            x = np.arange(len(SUBSETS)) + (i - (len(labels) - 1) / 2) * offset
            ax.errorbar(x, means, yerr=errs, color=colour, marker=MARKERS[i % len(MARKERS)],
                        ls="none", ms=4.5, mfc="white" if i else colour, elinewidth=0.9, capsize=2,
                        label=results.variants.loc[label, "combine"])
        ax.set_xticks(np.arange(len(SUBSETS)), [s.short for s in SUBSETS])
        ax.set_xlim(-0.5, len(SUBSETS) - 0.5)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(axis="y", color="#eeeeee", lw=0.5)
        ax.legend(title=f"{base}, combine:", ncol=len(labels), loc="lower left",
                  bbox_to_anchor=(0, 1.0), alignment="left", borderpad=0, handletextpad=0.3)
    _save(fig, folder / FIGURES[4])
    return Figure(FIGURES[4], "Combine modes of the factorized embedding (sum / stack / product): "
                              "top-1 accuracy (%) over the same cell groups as the summary table; "
                              "dots: mean over seeds, whiskers: ± 1 std.")
