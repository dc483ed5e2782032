"""The findings: sentences written from the data by fixed rules, task by task, then across tasks.

One rule decides every comparison: A is better than B when the 95% interval of the paired
difference A - B (same task, seeds, test images and eval sizes; bench.report.estimates) excludes
0. Otherwise the pair is "not resolved with N seeds", with the number of seeds the observed
variance would need (stats.seeds_needed). Only ranked variants are compared (every seed learned,
not the floor; Results.flag); the others are named as such, and their cells are left out of
the retention finding.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..config import TASKS
from ..data import positional
from .data import Results
from .estimates import Estimate, accuracy, contrast, difference, regime_rows
from .stats import MAX_SEEDS_NEEDED, MIN_SEEDS_FOR_CI, SeedStats, seeds_needed
from .tables import SUBSET, Subset, combine_groups, counted, kept_share, signed_pp

MAX_NAMED = 4  # a longer list is cut, with how many more there are
TARGET_RATIO = 4.0  # retention is reported at the grid side nearest 4x the training side
MOVERS = 3     # variants named as moving most between two tasks' rankings
NOTHING_FOUND = "No cell succeeded: nothing to report."
TIE = 0.0005   # a difference below 0.05 pp in mean and spread is a tie at the precision shown


# ---- wording ---------------------------------------------------------------------------------

def pct(st: SeedStats) -> str:
    """'82.8% [80.8, 84.8]', the interval when there is one."""
    text = f"{100 * st.mean:.1f}%"
    if not math.isnan(st.ci_low):
        text += f" [{100 * max(st.ci_low, 0):.1f}, {100 * min(st.ci_high, 1):.1f}]"
    return text


def pp(st: SeedStats) -> str:
    """'+8.9 pp [+4.0, +13.8]', the interval when there is one."""
    text = f"{signed_pp(st.mean)} pp"
    if not math.isnan(st.ci_low):
        text += f" [{signed_pp(st.ci_low)}, {signed_pp(st.ci_high)}]"
    return text


def gap(st: SeedStats) -> str:
    """A resolved margin whose direction the sentence states ('ahead', 'behind'): '8.9 pp [4.0, 13.8]'."""
    st = st if st.mean >= 0 else flipped(st)
    text = f"{100 * st.mean:.1f} pp"
    if not math.isnan(st.ci_low):
        text += f" [{100 * st.ci_low:.1f}, {100 * st.ci_high:.1f}]"
    return text


def unresolved(st: SeedStats) -> str:
    """'not resolved with 3 seeds (about 7 would resolve it)'."""
    return f"not resolved with {counted(st.n, 'seed')} ({needs(st)})"


def needs(st: SeedStats) -> str:
    """What would resolve an unresolved difference, by stats.seeds_needed."""
    if st.n < 2:
        return "its seed noise is unknown"
    if abs(st.mean) < TIE and st.std < TIE:
        return "the two agree to 0.1 pp in every seed"
    needed = seeds_needed(st)
    if needed is None and not math.isnan(st.image_se) and abs(st.mean) < 2 * st.image_se:
        return (f"more seeds would not: the test-image noise alone, SE {100 * st.image_se:.1f} pp, is too large for "
                f"the gap; a larger test set would")
    if needed is None:
        return f"not even {MAX_SEEDS_NEEDED} seeds would at this spread"
    if st.n < MIN_SEEDS_FOR_CI:
        return f"an interval needs {MIN_SEEDS_FOR_CI}; about {needed} would resolve it"
    return f"about {needed} would resolve it"


def named(names: list[str]) -> str:
    return join_capped([f"`{n}`" for n in names])


def join_capped(items: list[str]) -> str:
    more = len(items) - MAX_NAMED
    return join(items[:MAX_NAMED] + [f"{more} more"] if more > 0 else items)


def join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---- the standing of the ranked variants in one regime ---------------------------------------

def values_in(view: Results, subset: Subset) -> dict[str, Estimate]:
    """The ranked variants' accuracy over the regime, best mean first (those with data there)."""
    values = {v: accuracy(view, subset, v) for v in view.ranked_variants}
    values = {v: e for v, e in values.items() if e.stats.n}
    return dict(sorted(values.items(), key=lambda item: -item[1].stats.mean))


def gaps_from(view: Results, subset: Subset, best: str, others) -> dict[str, SeedStats]:
    """``best`` minus each of ``others`` over the regime, paired."""
    return {v: difference(view, subset, best, v).stats for v in others}


def leaders(values: dict[str, Estimate], gaps: dict[str, SeedStats]) -> list[str]:
    """The best and every variant not resolved from it, best first."""
    best = next(iter(values))
    return [best] + [v for v in values if v != best and not gaps[v].resolved]


# ---- the findings -----------------------------------------------------------------------------

def write_findings(results: Results) -> dict[str, list[str]]:
    """Per task, its findings as sentences, most general first; then, under "", the sentences
    that compare tasks. Empty when no cell succeeded."""
    views = {task: results.of_task(task) for task in results.tasks}
    out = {task: task_findings(view) for task, view in views.items() if view.ok_variants}
    if not out:
        return {}
    across = agreement(results)
    return {**out, "": across} if across else out


def task_findings(view: Results) -> list[str]:
    sentences = [_basis(view)]
    sentences += _not_ranked(view)
    for key in ("grid", "above", "below", "extreme"):
        sentences += _leader_sentence(view, SUBSET[key])
    sentences += _control(view)
    sentences += _retention(view)
    sentences += _versus_baseline(view)
    sentences += _combine(view)
    return sentences


def _basis(view: Results) -> str:
    m = view.metrics
    n_variants, n_sizes = len(view.ok_variants), m.groupby(["eval_height", "eval_width"]).ngroups
    seeds = sorted(set(view.variants.loc[view.ok_variants, "seeds_ok"]))
    seed_text = counted(seeds[0], "seed") if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    small = m.loc[~m["solvable"], ["eval_height", "eval_width"]].drop_duplicates()
    text = (f"{counted(n_variants, 'variant')} with {seed_text} each {'was' if n_variants == 1 else 'were'} "
            f"evaluated on {counted(n_sizes, 'eval size')} (sides {m['side'].min()}–{m['side'].max()} px).")
    if len(small):
        sizes = ", ".join(f"{h}x{w}" for h, w in small.itertuples(index=False))
        one = len(small) == 1
        text += (f" {counted(len(small), 'size')} ({sizes} px) {'gives' if one else 'give'} a patch grid too small "
                 f"for the task's label and {'is' if one else 'are'} reported apart, in no other mean.")
    failed = view.failed
    if len(failed):
        text += f" {len(failed)} cell(s) failed and are left out of every number."
    return text


def _not_ranked(view: Results) -> list[str]:
    flagged = [v for v in view.ok_variants if view.flag(v)]
    if not flagged:
        return []
    return [f"Not ranked: {join_capped([f'`{v}` ({view.flag(v)})' for v in flagged])}. A cell did not learn "
            f"when its accuracy at the training resolution is within the learning margin of chance (see the "
            f"method); such cells are left out of the retention finding."]


def _where(view: Results, subset: Subset) -> str:
    rows = view.metrics[subset.select(view.metrics)]
    sides = f"sides {rows['side'].min()}–{rows['side'].max()} px"
    return {"grid": "Over the whole grid",
            "train_res": "At the training resolution",
            "above": f"Above the training range ({sides})",
            "below": f"Below the training range ({sides})",
            "extreme": "On extreme aspect ratios (2:1 or longer)"}[subset.key]


def _leader_sentence(view: Results, subset: Subset) -> list[str]:
    values = values_in(view, subset)
    if len(values) < 2:
        return []
    best, *others = values
    gaps = gaps_from(view, subset, best, others)
    where, lead = _where(view, subset), leaders(values, gaps)
    if len(lead) == 1:
        runner = others[0]
        return [f"{where}, `{best}` is best with {pct(values[best].stats)}, resolved ahead of every other "
                f"ranked variant, of the runner-up `{runner}` by {gap(gaps[runner])}."]
    tied = [f"`{v}` ({pp(flipped(gaps[v]))}; {unresolved(gaps[v])})" for v in lead[1:]]
    behind = len(others) - len(lead) + 1
    return [f"{where}, `{best}` leads with {pct(values[best].stats)}; not resolved from it: "
            f"{join_capped(tied)}" + (f"; the other {behind} are resolved behind it." if behind > 1 else
                                      "; the other one is resolved behind it." if behind else ".")]


def flipped(st: SeedStats) -> SeedStats:
    """``st`` of the difference the other way round (B - A for A - B)."""
    return st._replace(mean=-st.mean, ci_low=-st.ci_high, ci_high=-st.ci_low)


def _control(view: Results) -> list[str]:
    """A task where position plays no part checks that no embedding hurts recognising content:
    every ranked variant against NoPE (or, without it, the best)."""
    task = view.cells["task"].iloc[0]
    if task not in TASKS or positional(task):
        return []
    floor = [v for v in view.ranked_variants if view.variants.at[v, "family"] == "none"]
    out = []
    for subset in (SUBSET["train_res"], SUBSET["grid"]):
        values = values_in(view, subset)
        if len(values) < 2:
            continue
        reference = floor[0] if floor and floor[0] in values else next(iter(values))
        gaps = {v: difference(view, subset, v, reference).stats for v in values if v != reference}
        hurt = [v for v, st in gaps.items() if st.ci_high < 0]
        where = _where(view, subset).lower()
        if hurt:
            named_gaps = join_capped([f"`{v}` ({pp(gaps[v])})" for v in hurt])
            text = (f"On `{task}`, where position plays no part, {named_gaps} "
                    f"{'is' if len(hurt) == 1 else 'are'} resolved below `{reference}` {where}: "
                    f"{'its' if len(hurt) == 1 else 'their'} embedding hurts recognising content there")
            fixed = [v for v in hurt if _training_sides(view, v) != _training_sides(view, reference)]
            if fixed:
                text += (f" ({named(fixed)} {'trains' if len(fixed) == 1 else 'train'} on other sides than "
                         f"`{reference}`, so the training regime differs as well as the embedding)")
            out.append(text + ".")
        else:
            out.append(f"On `{task}`, where position plays no part, no ranked variant is resolved below "
                       f"`{reference}` {where}: no embedding is shown to hurt recognising content there.")
    return out


def _training_sides(view: Results, variant: str) -> tuple[int, int]:
    row = view.variants.loc[variant]
    return int(row["train_min_side"]), int(row["train_max_side"])


def retention_sides(view: Results) -> dict[str, tuple[int, int]]:
    """Per variant: (its training side, the square grid side nearest TARGET_RATIO times it), for
    variants with a square side above their training side. Sides differ between variants only
    when their training resolutions do (e.g. a fixed-resolution baseline)."""
    metrics = view.metrics
    refs = metrics[metrics["at_train_res"]].groupby("variant")["side"].first()
    squares = sorted(metrics.loc[(metrics["eval_height"] == metrics["eval_width"]) & metrics["solvable"],
                                 "side"].unique())
    out = {}
    for variant, ref in refs.items():
        above = [s for s in squares if s > ref]
        if above:  # nearest in ratio; of two equally near, the larger
            far = min(above, key=lambda s: (abs(math.log(s / ref / TARGET_RATIO)), -s))
            out[variant] = (int(ref), int(far))
    return out


def _retention(view: Results) -> list[str]:
    """The drop from the training resolution to the side nearest 4x it, in pp with its interval,
    and the share of above-chance accuracy kept, for the ranked variants."""
    sides = {v: s for v, s in retention_sides(view).items() if v in view.ranked_variants}
    if not sides:
        return []
    share = kept_share(view.metrics)

    def square(variant, side):
        return regime_rows(view, lambda m: (m["eval_height"] == side) & (m["eval_width"] == side), variant)
    drops = {v: contrast(view, square(v, far), square(v, ref)).stats for v, (ref, far) in sides.items()}
    kept = {v: share[(share.index.get_level_values("variant") == v)
                     & (share.index.get_level_values("side") == sides[v][1])].mean() for v in sides}
    ranked = sorted(drops, key=lambda v: -drops[v].mean)   # smallest drop first
    shared = len(set(sides.values())) == 1

    def said(v):
        where = "" if shared else f" at {sides[v][1]} vs {sides[v][0]} px"
        share = f"{100 * kept[v]:.0f}".replace("-", "−")
        return f"`{v}` {pp(drops[v])}{where}, keeping {share}% of its accuracy above chance"
    if shared:
        ref, far = next(iter(sides.values()))
        text = f"From the training resolution to {far / ref:.3g}x it ({ref} to {far} px, square images), "
    else:
        text = f"From the training resolution to the square side nearest {TARGET_RATIO:g}x it, "
    best, worst, baseline = ranked[0], ranked[-1], view.baseline
    text += f"the smallest drop is {said(best)}"
    if worst != best:
        text += f", the largest {said(worst)}"
    if baseline in drops and baseline not in (best, worst):
        text += f"; the baseline {said(baseline)}"
    return [text + "."]


def _versus_baseline(view: Results) -> list[str]:
    subset, baseline = SUBSET["grid"], view.baseline
    if baseline not in view.ok_variants:
        return []
    if baseline not in view.ranked_variants:
        return [f"The baseline `{baseline}` is not ranked on this task ({view.flag(baseline)}): no comparison "
                f"with it."]
    others = [v for v in values_in(view, subset) if v != baseline]
    gaps = {v: difference(view, subset, v, baseline).stats for v in others}
    better = sorted((v for v in others if gaps[v].ci_low > 0), key=lambda v: -gaps[v].mean)
    worse = sorted((v for v in others if gaps[v].ci_high < 0), key=lambda v: gaps[v].mean)
    rest = len(others) - len(better) - len(worse)
    parts = []
    if better:
        parts.append(f"{join_capped([f'`{v}` ({pp(gaps[v])})' for v in better])} "
                     f"{'is' if len(better) == 1 else 'are'} resolved better than `{baseline}`")
    if worse:
        parts.append(f"{join_capped([f'`{v}` ({pp(gaps[v])})' for v in worse])} "
                     f"{'is' if len(worse) == 1 else 'are'} resolved worse")
    if rest:
        n = max(gaps[v].n for v in others)
        parts.append(f"{'the other' if parts else 'all'} {rest} {'is' if rest == 1 else 'are'} not resolved "
                     f"from {'it' if parts else f'`{baseline}`'} with {counted(n, 'seed')}")
    return ["Over the whole grid, " + "; ".join(parts) + "."] if parts else []


def _combine(view: Results) -> list[str]:
    subset, out = SUBSET["grid"], []
    values = values_in(view, subset)
    for base, labels in combine_groups(view).items():
        group = {v: values[v] for v in values if v in labels}
        if len(group) < 2:
            continue
        mode = {v: view.variants.loc[v, "combine"] for v in group}
        best, *others = group
        gaps = gaps_from(view, subset, best, others)
        listed = join([f"{mode[v]} {pct(group[v].stats)}" for v in labels if v in group])
        lead = leaders(group, gaps)
        behind = [v for v in others if v not in lead]
        text = f"For `{base}`, over the whole grid ({listed}), {mode[best]} "
        if len(lead) == 1:
            text += "is resolved best"
        else:
            text += "leads, not resolved from " + join([f"{mode[v]} ({pp(flipped(gaps[v]))}; {unresolved(gaps[v])})"
                                                        for v in lead[1:]])
        if behind:
            text += f"; {join([f'{mode[v]} ({pp(flipped(gaps[v]))})' for v in behind])} resolved behind"
        out.append(text + ".")
    return out


# ---- across tasks ----------------------------------------------------------------------------

def agreement(results: Results) -> list[str]:
    """Where the rankings of two tasks agree: Spearman's rank correlation of the whole-grid means
    over the variants ranked in both, and the variants whose rank moves most."""
    tasks = results.tasks
    if len(tasks) < 2:
        return []
    means = {}
    for task in tasks:
        view = results.of_task(task)
        means[task] = pd.Series({v: e.stats.mean for v, e in values_in(view, SUBSET["grid"]).items()})
    out = []
    for i, a in enumerate(tasks):
        for b in tasks[i + 1:]:
            common = means[a].index.intersection(means[b].index)
            if len(common) < 3:
                out.append(f"`{a}` and `{b}` share {counted(len(common), 'ranked variant')}: too few to compare "
                           f"their rankings.")
                continue
            rank_a, rank_b = (means[t][common].rank(ascending=False) for t in (a, b))
            rho = float(np.corrcoef(rank_a, rank_b)[0, 1])
            moves = (rank_b - rank_a).abs().sort_values(ascending=False, kind="stable")
            movers = [f"`{v}` ({_ordinal(rank_a[v])} → {_ordinal(rank_b[v])})"
                      for v in moves.index[:MOVERS] if moves[v] > 0]
            verdict = "agree" if rho >= 0.7 else "partly agree" if rho >= 0.3 else "disagree"
            text = (f"The whole-grid rankings of `{a}` and `{b}` {verdict}: Spearman's ρ = {rho:.2f} over the "
                    f"{len(common)} variants ranked on both")
            out.append(text + (f"; moving most: {join(movers)}." if movers else "; no variant changes rank."))
    return out


def _ordinal(rank: float) -> str:
    n = int(rank) if float(rank).is_integer() else rank
    if not isinstance(n, int):
        return f"{rank:g}th"
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def headline(results: Results) -> str:
    """One line for the end of a run's log: per task, the ranked variant with the highest
    whole-grid mean, with its interval (the report says whether it is resolved from the next)."""
    if not results.ok_variants:
        return NOTHING_FOUND
    parts = []
    for task in results.tasks:
        values = values_in(results.of_task(task), SUBSET["grid"])
        if values:
            best = next(iter(values))
            parts.append(f"{task} `{best}` {pct(values[best].stats)}")
        else:
            parts.append(f"{task} (no ranked variant)")
    return "Highest whole-grid mean: " + "; ".join(parts) + "."
