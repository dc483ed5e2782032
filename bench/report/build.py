"""write_report: every table, figure and the report itself, from one results directory."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from ..store import atomic_write
from .data import EXTREME_ELONGATION, Results, load_results
from .document import Block, Bullets, Code, Heading, Image, Paragraph, Table, html_page, markdown
from .figures import FIGURES, Figure, write_figures
from .findings import TARGET_RATIO, write_findings
from .stats import CI_LEVEL, MIN_SEEDS_FOR_CI
from .tables import fig10a, fig10a_table, paired, paired_table, summary, summary_table

TITLE = "NaViT Bench report"
CONFIG_FILE = "config.json"
NOT_DRAWN = {  # why a figure can be missing: the data has nothing for it to show
    FIGURES[3]: "no group of equal-area eval sizes has two or more aspect ratios",
    FIGURES[4]: "no factorized variant was run with more than one combine mode",
}


def write_report(out_dir: Path, config: dict, environment: dict) -> None:
    """Read DIR/cells and DIR/metrics.csv; write the tables, figures/, report.md and report.html,
    and the run's resolved ``config`` as DIR/config.json (README updates take the baseline from it).

    Raises BenchError (one line naming the path) when the store is missing or malformed.
    """
    out_dir = Path(out_dir)
    results = load_results(out_dir, config.get("baseline"))
    _write_text(out_dir / CONFIG_FILE, json.dumps(config, indent=1, default=str))
    table = summary(results)
    pairs = paired(results)
    navit, navit_sides = fig10a(results)
    _write_text(out_dir / "summary.csv", table.to_csv(index=False))
    _write_text(out_dir / "summary.md", markdown([Heading(1, "Summary"), *summary_blocks(table)]))
    if pairs is None:
        (out_dir / "paired_vs_baseline.csv").unlink(missing_ok=True)  # no baseline: no stale table
    else:
        _write_text(out_dir / "paired_vs_baseline.csv", pairs.to_csv(index=False))
    _write_text(out_dir / "navit_fig10a.csv", navit.to_csv(index=False))
    figures = write_figures(results, out_dir / "figures")
    blocks = [
        Heading(1, TITLE),
        Paragraph(_provenance(out_dir, environment)),
        Heading(2, "Findings"),
        *findings_blocks(results),
        Heading(2, "Summary"),
        *summary_blocks(table),
        Heading(2, f"Paired comparison with `{results.baseline}`" if results.baseline
                else "Paired comparison with a baseline"),
        *_paired_blocks(pairs, results.baseline),
        Heading(2, "NaViT Fig. 10a format"),
        *_fig10a_blocks(navit, navit_sides),
        Heading(2, "Figures"),
        *_figure_blocks(figures),
        Heading(2, "Failed cells"),
        *_failed_blocks(results),
        Heading(2, "Experiment config"),
        Code(yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False), "yaml"),
        Heading(2, "Environment"),
        Table(["item", "value"], [[str(k), f"`{v}`"] for k, v in environment.items()]),
        Heading(2, "How the numbers are computed"),
        Bullets(METHOD),
    ]
    _write_text(out_dir / "report.md", markdown(blocks))
    _write_text(out_dir / "report.html", html_page(blocks, TITLE, out_dir))


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _provenance(out_dir: Path, environment: dict) -> str:
    keys = ("git_commit", "commit", "torch", "device")  # the runner names it git_commit
    known = [f"{k} `{environment[k]}`" for k in keys if k in environment]
    return f"Results directory `{out_dir}`" + (f"; {', '.join(known)}." if known else ".")


def findings_blocks(results: Results) -> list[Block]:
    sentences = write_findings(results)
    return [Paragraph(" ".join(sentences) if sentences else "No cell succeeded: nothing to report.")]


def summary_blocks(table: pd.DataFrame) -> list[Block]:
    return [
        Paragraph(f"Top-1 accuracy (%) per variant: mean ± std over seeds, with a "
                  f"{CI_LEVEL:.0%} t-interval in brackets when there are {MIN_SEEDS_FOR_CI} or more "
                  f"seeds; ranked by the whole-grid mean. \"Below / above train range\": eval sizes "
                  f"whose equal-area side lies outside the training side range; \"extreme aspect\": "
                  f"W:H of {EXTREME_ELONGATION:g}:1 or more elongated, either way; n/a: the grid has "
                  f"no such cell. \"Worst cell\": the eval size (H x W px) with the lowest mean."),
        summary_table(table),
    ]


def _paired_blocks(table: pd.DataFrame | None, baseline: str | None) -> list[Block]:
    if baseline is None:
        return [Paragraph("The experiment names no baseline (the `baseline` key): no comparison.")]
    if table is None:
        return [Paragraph(f"`{baseline}` has no successful cell in this run: no comparison.")]
    return [
        Paragraph(f"Per seed: the variant's accuracy minus `{baseline}`'s on the same eval sizes, "
                  f"averaged over each group of cells. Mean ± std over seeds in percentage points; "
                  f"in brackets, how many seeds share the sign of the mean. \"Consistent\": every "
                  f"seed (2 or more) has the same sign over the whole grid."),
        paired_table(table),
    ]


def _fig10a_blocks(table: pd.DataFrame, sides: list[int]) -> list[Block]:
    listed = ", ".join(str(s) for s in sides) if sides else "none"
    return [
        Paragraph(f"As in NaViT Fig. 10a: per seed, the average and the best top-1 accuracy (%) "
                  f"over the square eval resolutions ({listed} px), then mean ± std over seeds. "
                  f"The last column quotes the paper (NaViT-B/16 pretrained on JFT, ImageNet "
                  f"10-shot, resolutions 64-640 px): another model, data set and scale, so compare "
                  f"the order of the variants, not the values."),
        fig10a_table(table),
    ]


def _figure_blocks(figures: list[Figure]) -> list[Block]:
    made = {f.name: f for f in figures}
    blocks = []
    for i, name in enumerate(FIGURES, 1):
        if name in made:
            blocks.append(Image(f"figures/{name}", f"Figure {i}", f"Figure {i}. {made[name].caption}"))
        else:
            reason = NOT_DRAWN.get(name, "no successful cell")
            blocks.append(Paragraph(f"Figure {i} (`{name}`) is not drawn: {reason}."))
    return blocks


def _failed_blocks(results: Results) -> list[Block]:
    failed = results.failed.sort_values(["variant", "seed"])
    if failed.empty:
        return [Paragraph("None: every cell succeeded.")]
    return [
        Paragraph(f"{len(failed)} cell(s) failed; they are left out of every mean above."),
        Table(["variant", "seed", "reason"],
              [[f"`{r.variant}`", str(r.seed), r.reason or "(no reason recorded)"]
               for r in failed.itertuples()]),
    ]


METHOD = [
    "Every statistic has two levels: one value per (variant, seed), e.g. the mean accuracy over "
    "that seed's eval sizes, then mean, sample std and a 95% Student-t interval over seeds "
    "(interval shown from 3 seeds on, clipped to 0-100%). Failed cells are excluded.",
    "Training resolution: the one square eval size the runner marks `at_train_res`. Training "
    "range: the side range the runner's `train_range` column refers to (below / in / above).",
    f"Extreme aspect: max(W/H, H/W) >= {EXTREME_ELONGATION:g}, i.e. 2:1 or longer allowing for "
    f"sides rounded to whole patches.",
    "Curves over side length (figures 1, 2) and the NaViT Fig. 10a table use square eval sizes "
    "only, so resolution is the only thing that changes along them.",
    "Fixed token count (figure 4): eval sizes are grouped by the square side nearest their "
    "equal-area side; the group with the most aspect ratios is shown, ties going to the one "
    "nearest the training side.",
    f"Retention: per seed, accuracy at a side divided by accuracy at the training resolution; "
    f"the findings use the square side nearest {TARGET_RATIO:g}x the training side.",
    "A finding calls A better than B only when they share 2 or more seeds, A is ahead in every "
    "shared seed, and the mean gap exceeds std(A) + std(B); otherwise the two are reported as "
    "within seed noise.",
]
