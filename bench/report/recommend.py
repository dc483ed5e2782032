"""The short answer the report and the README open with: per task and regime, which variants to
use and which to avoid, only as strong as the intervals allow.

Per task and regime (at the training resolution, above and below the training range, extreme
aspect ratios), among the ranked variants (bench.report.findings):
- use: the best (highest mean) and every variant whose paired difference from it is not
  resolved (its 95% interval includes 0);
- avoid: the variants resolved behind the best by a wide margin, the whole interval of
  best - variant above AVOID_MARGIN: the bottom ones, the furthest behind first.
Variants that are not ranked (some seed did not learn, or the floor) are listed apart.
"""
from __future__ import annotations

from .data import Results
from .document import Block, Bullets, Heading, Paragraph
from .findings import flipped, gap, gaps_from, join, join_capped, leaders, needs, pct, pp, values_in
from .tables import SUBSET, counted

REGIMES = ("train_res", "above", "below", "extreme")
AVOID_MARGIN = 0.10   # "a wide margin": at least 10 pp behind the best, with 95% confidence
MAX_AVOID = 3


def setup_sentence(results: Results) -> str:
    """What was trained and tested: tasks, model size, training range, steps, seeds, test size."""
    config, cells = results.config, results.cells
    model, train = config.get("model") or {}, config.get("train") or {}
    ok = cells[cells["status"] == "ok"]
    params = ok["param_count"] if len(ok) else cells["param_count"]
    low, high = _thousands(params.min()), _thousands(params.max())
    size = (f"a ViT of width {model['dim']}, depth {model['depth']}, {model['heads']} heads and "
            f"{model['patch_size']} px patches ({low if low == high else f'{low}–{high}'} parameters)"
            if {"dim", "depth", "heads", "patch_size"} <= set(model) else "the configured ViT")
    ranges = ok.groupby(["train_min_side", "train_max_side"]).size().sort_values(ascending=False, kind="stable")
    sides = [f"{lo}–{hi} px" if lo != hi else f"a fixed {lo} px" for lo, hi in ranges.index]
    trained = f"trained on sides {sides[0]}" + (f" ({', '.join(sides[1:])} for some variants)" if sides[1:] else "")
    steps = ok.groupby("task")["steps"].max().reindex(results.tasks).dropna().astype(int) if len(ok) else None
    if steps is not None and "tokens_per_batch" in train:
        per_task = (f"{steps.iloc[0]:,} steps" if steps.nunique() == 1 else
                    " / ".join(f"{n:,}" for n in steps) + f" steps ({' / '.join(steps.index)})")
        trained += f" for {per_task} of {train['tokens_per_batch']:,} tokens"
    seeds = sorted(set(ok.groupby(["variant", "task"]).size())) or [0]
    images = cells["images"].dropna()
    tested = f", tested on {int(images.iloc[0]):,} images per eval size" if len(images) else ""
    seed_text = counted(seeds[0], "seed") if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    return (f"{results.task_text()}; {size}, {trained}; {seed_text} per variant and task{tested}. Intervals are 95% "
            f"and hold both seed and test-image noise; \"not resolved\" means the interval of a difference "
            f"includes 0.")


def _thousands(n: float) -> str:
    return f"{n / 1000:.0f}k" if n >= 1000 else f"{int(n)}"


def recommendation_blocks(results: Results, level: int) -> list[Block]:
    """The setup sentence, then per task (a heading of ``level``) its bullets, one per regime,
    and what was not ranked."""
    if not results.ok_variants:
        return [Paragraph("No cell succeeded: no recommendation.")]
    blocks: list[Block] = [Paragraph(setup_sentence(results))]
    for task in results.tasks:
        view = results.of_task(task)
        blocks += [Heading(level, view.task_text()),
                   Bullets(task_recommendation(view) or ["No ranked variant to recommend."])]
        flagged = [f"`{v}` ({view.flag(v)})" for v in view.ok_variants if view.flag(v)]
        if flagged:
            blocks.append(Paragraph(f"Not ranked: {join_capped(flagged)}."))
    return blocks


def task_recommendation(view: Results) -> list[str]:
    """One line per regime the task's grid has: use ..., avoid ..."""
    lines = []
    for key in REGIMES:
        subset = SUBSET[key]
        values = values_in(view, subset)
        if not values:
            continue
        best, *others = values
        gaps = gaps_from(view, subset, best, others)
        use = leaders(values, gaps)
        line = f"{subset.title[:1].upper()}{subset.title[1:]}: use `{best}` ({pct(values[best].stats)})"
        if len(use) > 1:
            closest = gaps[use[1]]
            line += (f", or {join_capped([f'`{v}`' for v in use[1:]])} (not resolved from it with "
                     f"{counted(closest.n, 'seed')}; the closest, `{use[1]}`, at {pp(flipped(closest))}: "
                     f"{needs(closest)})")
        elif others:
            line += f", resolved best: {gap(gaps[others[0]])} ahead of the runner-up `{others[0]}`"
        else:
            line += ", the only ranked variant"
        avoid = sorted((v for v in others if gaps[v].ci_low > AVOID_MARGIN), key=lambda v: -gaps[v].mean)
        if avoid:
            shown = [f"`{v}` ({gap(gaps[v])} behind)" for v in avoid[:MAX_AVOID]]
            line += f"; avoid {join(shown + ([f'{len(avoid) - MAX_AVOID} more'] if len(avoid) > MAX_AVOID else []))}"
        elif others:
            line += f"; none is resolved {100 * AVOID_MARGIN:.0f} pp or more behind it"
        lines.append(line + ".")
    return lines
