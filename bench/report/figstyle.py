"""What every report figure shares: sizes, colours, the per-family panel layout, axes, reference
lines (chance, the training range) and saving.

Figures are sized for print with text of 8 pt or more at their own size: page-wide ones 7 in,
one-column ones 3.5 in. Colour = family (Okabe-Ito, colour-blind safe), the same in every figure;
line style and marker tell variants of one family apart.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter  # noqa: E402

from ..store import atomic_write  # noqa: E402
from .data import OTHER_FAMILY, Results  # noqa: E402

DPI = 300
COLUMN_IN = 3.5
PAGE_IN = 7.0
FORMATS = ("png", "pdf", "svg")  # PNG for the report and README; PDF and SVG for papers

FAMILY_COLOURS = {  # Okabe & Ito (2008); grey for the no-embedding floor
    "1D learned": "#000000",
    "2D joint learned": "#CC79A7",
    "factorized absolute": "#0072B2",
    "factorized fractional": "#009E73",
    "rotary (RoPE)": "#D55E00",
    "relative bias": "#E69F00",
    "none": "#999999",
    OTHER_FAMILY: "#56B4E9",
}
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P")
CHAR_IN = 0.07        # width of one 8 pt character (DejaVu Sans), for spacing tick labels
PANEL_PLOT_IN = 2.0   # plot width of one family panel on a page-wide figure
TRAIN_SHADE = "#e8e8e8"
CONTEXT_GREY = "#cfcfcf"
REFERENCE_GREY = "#808080"
# Chance: grey dash-dot, and named in every panel, since a variant's line style may be dash-dot too.
CHANCE = dict(color="#606060", lw=0.8, ls=(0, (6, 2, 1, 2)), zorder=1.5)
SMOKE_RED = "#b00020"
PAD_IN = 0.03   # white margin around the tight crop of a saved figure

RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "legend.fontsize": 8, "legend.title_fontsize": 8,
    "figure.titlesize": 8, "axes.spines.top": False, "axes.spines.right": False,
    "lines.linewidth": 1.2, "lines.markersize": 3.5, "legend.frameon": False,
    "savefig.dpi": DPI, "font.family": "DejaVu Sans",
    # Text stays text (editable in a paper's figure tools) and files are byte-for-byte repeatable.
    "pdf.fonttype": 42, "svg.fonttype": "none", "svg.hashsalt": "navit-bench",
}
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


@dataclass(frozen=True)
class Style:
    colour: str
    linestyle: object
    marker: str
    short: str   # the display name without the words its family's names share


def styles(results: Results) -> dict[str, Style]:
    """One style per variant label, fixed by display order so every figure agrees."""
    out = {}
    for family, group in results.variants.groupby("family", sort=False):
        colour = FAMILY_COLOURS.get(family, FAMILY_COLOURS[OTHER_FAMILY])
        for i, (variant, short) in enumerate(zip(group.index, _short_names(list(group["title"])))):
            out[variant] = Style(colour, LINESTYLES[i % len(LINESTYLES)], MARKERS[i % len(MARKERS)], short)
    return out


def _short_names(titles: list[str]) -> list[str]:
    """['learned', 'sin-cos'] for 'Factorized abs. learned', '... sin-cos': the whole words all
    share are dropped, for a legend titled by the family. A single title stays whole."""
    words = [t.split(" ") for t in titles]
    if len(words) < 2:
        return titles
    shared = 0
    while all(len(w) > shared + 1 and w[shared] == words[0][shared] for w in words):
        shared += 1
    return [" ".join(w[shared:]) for w in words]


def family_title(family: str) -> str:
    return family[:1].upper() + family[1:]


def header(fig, results: Results) -> None:
    """The task, at the top of every figure; a smoke run says so there, in red."""
    text = results.task_text()
    if results.smoke:
        fig.suptitle(f"SMOKE RUN: not converged, do not cite. {text}", x=0.01, ha="left", color=SMOKE_RED)
    else:
        fig.suptitle(text, x=0.01, ha="left")


def save(fig, folder: Path, stem: str) -> None:
    """Write stem.png, .pdf and .svg, each rendered in memory, then written in one atomic step.

    The layout and the tight crop are computed once, on the first draw, and then fixed: with
    ``bbox_inches="tight"`` each format would draw the figure twice and rerun the constrained
    layout each time, which was most of a report's time."""
    fig.draw_without_rendering()
    fig.set_layout_engine(None)
    crop = fig.get_tightbbox().padded(PAD_IN)
    for fmt in FORMATS:
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches=crop, metadata=_NO_DATE[fmt])
        atomic_write(folder / f"{stem}.{fmt}", buffer.getvalue())
    plt.close(fig)


# ---- one panel per family --------------------------------------------------------------------

def family_panels(results: Results, row_in: float = 2.25):
    """Page-wide small multiples, one per family with an ok variant, legends above the panels."""
    families = list(dict.fromkeys(results.variants.loc[results.ok_variants, "family"]))
    cols = min(3, len(families))
    rows = math.ceil(len(families) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PAGE_IN, row_in * rows + 0.2), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    hide_unused(axes, len(families))
    return fig, dict(zip(families, axes.flat))


def hide_unused(axes: np.ndarray, used: int) -> None:
    """Hide the panels after the first ``used``; a panel above a hidden one gets the x tick
    labels that sharex would otherwise show only on the hidden bottom row."""
    rows, cols = axes.shape
    for k, ax in enumerate(axes.flat):
        if k >= used:
            ax.set_visible(False)
        elif k + cols >= used and k // cols < rows - 1:
            ax.tick_params(labelbottom=True)


def members(results: Results, family: str) -> list[str]:
    return [v for v in results.ok_variants if results.variants.loc[v, "family"] == family]


def family_curves(ax, results: Results, family: str, curves: pd.DataFrame, st: dict[str, Style],
                  clip: tuple[float, float | None], markers: bool = True) -> None:
    """The family's variants in colour with ± std bands (clipped to ``clip``: a band past 100% or
    below 0 shows values no seed can have) over the other families' means in grey."""
    mine = members(results, family)
    for variant in results.ok_variants:
        if variant not in mine and variant in curves.index:
            c = curves.loc[variant]
            ax.plot(c.index, c["mean"], color=CONTEXT_GREY, lw=0.6, zorder=1)
    for variant in mine:
        if variant not in curves.index:
            continue
        c, s = curves.loc[variant], st[variant]
        ax.plot(c.index, c["mean"], color=s.colour, ls=s.linestyle, marker=s.marker if markers else None,
                label=s.short, zorder=3)
        low, high = (np.clip(c["mean"] + sign * c["std"], *clip) for sign in (-1, 1))
        ax.fill_between(c.index, low, high, color=s.colour, alpha=0.18, lw=0, zorder=2)
    ax.grid(axis="y", color="#eeeeee", lw=0.5)
    if not ax.get_legend_handles_labels()[0]:   # no member has a curve here (e.g. none learned)
        return
    titled = len(mine) > 1
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), title=family_title(family) if titled else None,
              alignment="left", handlelength=2.2, borderaxespad=0.2, labelspacing=0.25, borderpad=0)


def accuracy_ylim(ax, top: float, chance: list[float]) -> None:
    """0 to just above the highest value shown or the chance level drawn, never past 100% plus
    room for a marker. A chance line above the axes (every cell near 0%) would put its label
    outside them, and constrained layout would squeeze the panels to nothing to fit it."""
    ax.set_ylim(0, min(np.nanmax([top, *chance]), 100) + 3)


def chance_values(results: Results, variants: list[str]) -> list[float]:
    """Chance accuracies (%) of the tasks ``variants`` ran on; empty when unknown."""
    values = results.variants.loc[variants, "chance"].dropna()
    return sorted({round(100 * v, 6) for v in values})


def chance_line(ax, values: list[float], vertical: bool = False, label: str | None = None) -> None:
    """The chance level(s) as a dash-dot line; a horizontal one named ``label`` at its right end."""
    for value in values:
        (ax.axvline if vertical else ax.axhline)(value, **CHANCE)
        if label:
            ax.text(1.0, value, f" {label}", transform=ax.get_yaxis_transform(), ha="right",
                    va="bottom", color=CHANCE["color"])


# ---- axes ------------------------------------------------------------------------------------

def log2_axis(ax, values, preferred, label) -> None:
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


def side_axis(ax, sides, train_sides=()) -> None:
    """Eval sides as ticks: the extremes and the training resolution labelled first."""
    sides = sorted(sides)
    preferred = [sides[0], sides[-1], *sorted(train_sides)]
    log2_axis(ax, sides, preferred + [s for s in sides if math.log2(s).is_integer()], str)


def aspect_label(aspect: float) -> str:
    return f"{aspect:.2g}:1" if aspect >= 1 else f"1:{1 / aspect:.2g}"


def aspect_axis(ax, aspects) -> None:
    aspects = sorted(aspects)
    log2_axis(ax, aspects, [1.0, aspects[0], aspects[-1]], aspect_label)


def training_sides(results: Results, variants: list[str]) -> list[int]:
    """The square eval sides marked as the training resolution of ``variants``."""
    m = results.metrics
    return sorted(int(s) for s in m.loc[m["variant"].isin(variants) & m["at_train_res"], "side"].unique())


def training_marks(ax, results: Results, variants: list[str]) -> None:
    """Shade each distinct training side range of ``variants`` (a band even for a fixed
    resolution) and mark the training-resolution eval side with a dotted line."""
    info = results.variants.loc[variants]
    for lo, hi in sorted(set(zip(info["train_min_side"], info["train_max_side"]))):
        if pd.notna(lo) and pd.notna(hi):
            ax.axvspan(lo / 1.03, hi * 1.03, color=TRAIN_SHADE, lw=0, zorder=0)
    for ref in training_sides(results, variants):
        ax.axvline(ref, color=REFERENCE_GREY, lw=0.7, ls=":", zorder=1)
