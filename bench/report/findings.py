"""The findings paragraph: sentences written from the data by fixed, conservative rules.

One rule decides every comparison (``clearly_better``): A is called better than B only when
(1) they share at least 2 seeds, (2) A is ahead in every shared seed, and (3) the mean gap is
larger than the seed spread, std(A) + std(B). Anything else is reported as "within seed noise"
or not compared at all, so no sentence claims an order the seeds do not support.
"""
from __future__ import annotations

import math

import pandas as pd

from .data import Results
from .tables import (SUBSET, Subset, combine_groups, counted, per_seed, seeds_of, signed_pp,
                     square_sides, zero_reference_note)

MAX_NAMED = 4  # a tie among more variants is summarised, not listed
TARGET_RATIO = 4.0  # retention is reported at the grid side nearest 4x the training side
NOTHING_FOUND = "No cell succeeded: nothing to report."


def clearly_better(a: pd.Series, b: pd.Series) -> bool:
    """``a`` and ``b``: one value per seed (indexed by seed). See the module docstring."""
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return False
    a, b = a[common], b[common]
    gap = a - b
    return bool((gap > 0).all() and gap.mean() > a.std(ddof=1) + b.std(ddof=1))


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _named(values: dict[str, pd.Series], names: list[str]) -> str:
    return _join_capped([f"`{n}` ({pct(values[n].mean())})" for n in names])


def _join_capped(items: list[str]) -> str:
    more = len(items) - MAX_NAMED
    return _join(items[:MAX_NAMED] + [f"{more} more"] if more > 0 else items)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _noise(n_seeds: int) -> str:
    return ("a single seed cannot separate them" if n_seeds < 2
            else "their differences are within seed noise")


def leaders(values: dict[str, pd.Series]) -> list[str]:
    """Variants not clearly worse than the one with the highest mean, best first."""
    ranked = sorted(values, key=lambda v: -values[v].mean())
    top = ranked[0]
    return [v for v in ranked if v == top or not clearly_better(values[top], values[v])]


def write_findings(results: Results) -> list[str]:
    """The findings as sentences, most general first; empty when no cell succeeded."""
    if not results.ok_variants:
        return []
    n_seeds = _most_seeds(results)
    sentences = [_basis(results)]
    for key in ("grid", "above", "below", "extreme"):
        sentences += _leader_sentence(results, SUBSET[key], n_seeds)
    sentences += _retention(results)
    sentences += _versus_baseline(results)
    sentences += _combine(results, n_seeds)
    return sentences


def headline(results: Results) -> str:
    """The main finding in one line, for the last line of a run's log: the findings' whole-grid
    sentence, or the whole-grid accuracy of a lone variant."""
    if not results.ok_variants:
        return NOTHING_FOUND
    lead = _leader_sentence(results, SUBSET["grid"], _most_seeds(results))
    if lead:
        return lead[0]
    (variant, values), = _subset_values(results, SUBSET["grid"]).items()
    return f"Over the whole grid, `{variant}`, the only variant, scores {pct(values.mean())}."


def _most_seeds(results: Results) -> int:
    return int(results.variants["seeds_ok"].max())


def _basis(results: Results) -> str:
    m = results.metrics
    n_variants, n_cells = len(results.ok_variants), m.groupby(["eval_height", "eval_width"]).ngroups
    seeds = sorted(set(results.variants.loc[results.ok_variants, "seeds_ok"]))
    seed_text = counted(seeds[0], "seed") if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    text = (f"{counted(n_variants, 'variant')} with {seed_text} each "
            f"{'was' if n_variants == 1 else 'were'} evaluated on {counted(n_cells, 'eval size')} "
            f"(sides {m['side'].min()}–{m['side'].max()} px).")
    if len(results.failed):
        text += (f" {len(results.failed)} cell(s) failed and are left out of every number "
                 f"(the report lists them with their reasons).")
    return text


def _subset_values(results: Results, subset: Subset) -> dict[str, pd.Series]:
    series = per_seed(results.metrics, subset)
    values = {v: seeds_of(series, v) for v in results.ok_variants}
    return {v: s for v, s in values.items() if len(s)}


def _where(results: Results, subset: Subset) -> str:
    rows = results.metrics[subset.select(results.metrics)]
    sides = f"sides {rows['side'].min()}–{rows['side'].max()} px"
    return {"grid": "Over the whole grid",
            "above": f"Above the training range ({sides})",
            "below": f"Below the training range ({sides})",
            "extreme": "On extreme aspect ratios (2:1 or longer)"}[subset.key]


def _leader_sentence(results: Results, subset: Subset, n_seeds: int) -> list[str]:
    values = _subset_values(results, subset)
    if len(values) < 2:
        return []
    lead = leaders(values)
    where = _where(results, subset)
    if len(lead) == 1:
        ranked = sorted(values, key=lambda v: -values[v].mean())
        return [f"{where}, `{lead[0]}` is best with {pct(values[lead[0]].mean())}, clearly ahead "
                f"of every other variant (next: `{ranked[1]}`, {pct(values[ranked[1]].mean())})."]
    return [f"{where}, {_named(values, lead)} lead, but {_noise(n_seeds)}, so no single best "
            f"variant is named."]


def retention_sides(results: Results) -> dict[str, tuple[int, int]]:
    """Per variant: (its training side, the square grid side nearest TARGET_RATIO times it), for
    variants with a square side above their training side. Sides differ between variants only
    when their training resolutions do (e.g. a fixed-resolution baseline)."""
    metrics = results.metrics
    refs = metrics[metrics["at_train_res"]].groupby("variant")["side"].first()
    squares = sorted(metrics.loc[metrics["eval_height"] == metrics["eval_width"], "side"].unique())
    out = {}
    for variant, ref in refs.items():
        above = [s for s in squares if s > ref]
        if above:  # nearest in ratio; of two equally near, the larger
            far = min(above, key=lambda s: (abs(math.log(s / ref / TARGET_RATIO)), -s))
            out[variant] = (int(ref), int(far))
    return out


def _retention(results: Results) -> list[str]:
    sides = retention_sides(results)
    relative, absolute = (square_sides(results.metrics, relative=r) for r in (True, False))

    def at_far(series, variant):
        values = seeds_of(series, variant)  # indexed (seed, side)
        return values[values.index.get_level_values("side") == sides[variant][1]].droplevel("side")
    values = {v: at_far(relative, v) for v in results.ok_variants if v in sides}
    values = {v: s for v, s in values.items() if len(s)}
    left_out = zero_reference_note(results.metrics)
    if not values:
        return [f"No share of training-resolution accuracy kept is reported. {left_out}"] if left_out else []
    shared = len({sides[v] for v in values}) == 1
    ranked = sorted(values, key=lambda v: -values[v].mean())
    best, worst = ranked[0], ranked[-1]

    def kept(v):
        s = values[v]
        spread = f" ± {100 * s.std(ddof=1):.1f}" if len(s) >= 2 else ""
        where = "" if shared else f" at {sides[v][1]} vs {sides[v][0]} px"
        return f"`{v}` ({100 * s.mean():.1f}%{spread}{where}; {pct(at_far(absolute, v).mean())} accuracy)"
    if shared:
        ref, far = sides[best]
        text = f"At {far / ref:.3g}x the training resolution ({far} px vs {ref} px, square images), "
    else:
        text = (f"At the square side nearest {TARGET_RATIO:g}x each variant's own training "
                f"resolution, ")
    text += f"the share of training-resolution accuracy kept is highest for {kept(best)}"
    if worst != best:
        text += f" and lowest for {kept(worst)}"
    baseline = results.baseline
    if baseline in values and baseline not in (best, worst):
        text += f"; the baseline {kept(baseline)}"
    text += "."
    if baseline in values and best != baseline:
        if clearly_better(values[best], values[baseline]):
            text += f" `{best}` keeps clearly more than `{baseline}`."
        else:
            text += f" The gap between `{best}` and `{baseline}` is within seed noise."
    return [f"{text} {left_out}" if left_out else text]


def _versus_baseline(results: Results) -> list[str]:
    values, baseline = _subset_values(results, SUBSET["grid"]), results.baseline
    if baseline not in values:
        return []
    base = values[baseline]
    others = [v for v in results.ok_variants if v != baseline and v in values]
    better = [v for v in others if clearly_better(values[v], base)]
    worse = [v for v in others if clearly_better(base, values[v])]
    if not better and not worse:
        return [f"Over the whole grid, no variant differs from `{baseline}` by more than the seed "
                f"noise."]

    def gaps(names):
        return _join_capped([f"`{v}` ({signed_pp(values[v].mean() - base.mean())} pp)"
                             for v in sorted(names, key=lambda v: -values[v].mean())])
    parts = []
    if better:
        parts.append(f"{gaps(better)} beat `{baseline}` in every seed by more than the seed spread")
    if worse:
        parts.append(f"{gaps(worse)} {'is' if len(worse) == 1 else 'are'} clearly worse")
    rest = len(others) - len(better) - len(worse)
    if rest:
        parts.append(f"the other {rest} {'is' if rest == 1 else 'are'} within seed noise of it")
    return ["Over the whole grid, " + "; ".join(parts) + "."]


def _combine(results: Results, n_seeds: int) -> list[str]:
    values = _subset_values(results, SUBSET["grid"])
    out = []
    for base, labels in combine_groups(results).items():
        group = {v: values[v] for v in labels if v in values}
        mode = {v: results.variants.loc[v, "combine"] for v in group}
        lead = leaders(group)
        listed = _join([f"{mode[v]} {pct(group[v].mean())}" for v in labels if v in group])
        if len(lead) == 1:
            out.append(f"For `{base}`, the {mode[lead[0]]} combination is clearly best over the "
                       f"whole grid ({listed}).")
        else:
            level = [mode[v] for v in labels if v in lead]
            behind = [mode[v] for v in labels if v in group and v not in lead]
            out.append(f"For `{base}`, the combine modes {_join(level)} are "
                       f"level over the whole grid ({listed}): {_noise(n_seeds)}"
                       + (f"; {_join(behind)} {'is' if len(behind) == 1 else 'are'} clearly behind."
                          if behind else "."))
    return out
