"""write_report: every table, figure and the report itself, from one results directory."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from ..store import Store, atomic_write
from .data import EXTREME_ELONGATION, Results, load_results
from ..data import MIN_GRID
from .document import (Block, Bullets, Code, Heading, Image, Note, Paragraph, Table, html_page,
                       markdown)
from .figstyle import FORMATS
from .figures import Outcome, task_stem, write_figures
from .findings import MOVERS, NOTHING_FOUND, TARGET_RATIO, headline, write_findings
from .latex import latex_table
from .provenance import Provenance, read_provenance
from .recommend import AVOID_MARGIN, recommendation_blocks
from .stats import CI_LEVEL, LEARN_FLOOR, LEARN_SES, MAX_SEEDS_NEEDED, MIN_SEEDS_FOR_CI
from .tables import (SEEDS_ONLY, by_seed, by_seed_table, fig10a, fig10a_csv, fig10a_table, paired, paired_table,
                     summary, summary_table)

TITLE = "NaViT Bench report"
SMOKE_NOTE = Note("Smoke run: do not cite.",
                  "Its config sets `smoke: true`: a short run that checks the pipeline end to end. "
                  "The models are not converged, so its numbers say nothing about the embeddings.")


def write_report(out_dir: Path, config: dict | None = None, environment: dict | None = None) -> str:
    """Read DIR/cells and DIR/metrics.csv; write the tables (CSV, Markdown, LaTeX), figures/,
    report.md and report.html. ``config``: the run's, recorded in DIR/config.json
    (``Store.write_config``); without it the report uses the folder's config (the cells' part and
    config.json's, ``Store.config``). ``environment``: the machine's; without it DIR/run.json's
    (the runner writes it before the report), else what the cells record.

    Returns the headline finding (``findings.headline``), one line for the end of a run's log.
    Raises BenchError (one line naming the path) when the store is missing or malformed.
    """
    out_dir = Path(out_dir)
    store = Store(out_dir)
    if config is not None:
        store.write_config(config)
    results = load_results(out_dir, config)
    provenance = read_provenance(out_dir, results, environment)
    table, pairs, seeds = summary(results), paired(results), by_seed(results)
    navit, navit_sides = fig10a(results)
    source = f"from the results folder {provenance.folder} ({provenance.commit or 'commit not recorded'})"
    _write_text(out_dir / "summary.csv", table.to_csv(index=False))
    _write_text(out_dir / "summary.md", markdown([Heading(1, "Summary"), *summary_blocks(table, results, 2)]))
    _write_per_task(out_dir, "summary", {task: latex_table(summary_table(table[table["task"] == task]), _latex_comment(
        f"Summary, task {task}: top-1 accuracy (%), mean +/- std over seeds [95% interval over seeds and test "
        f"images]", source)) for task in results.tasks})
    if pairs is None:
        (out_dir / "paired_vs_baseline.csv").unlink(missing_ok=True)  # no baseline: no stale table
        _write_per_task(out_dir, "paired_vs_baseline", {})
    else:
        _write_text(out_dir / "paired_vs_baseline.csv", pairs.to_csv(index=False))
        _write_per_task(out_dir, "paired_vs_baseline", {task: latex_table(
            paired_table(group), _latex_comment(
                f"Paired difference from {results.baseline}, task {task} (percentage points), mean [95% "
                f"interval over seeds and test images] (seeds sharing the sign)", source))
            for task, group in pairs.groupby("task", sort=False)})
    _write_text(out_dir / "per_seed.csv", seeds.to_csv(index=False))
    _write_text(out_dir / "navit_fig10a.csv", fig10a_csv(navit).to_csv(index=False))
    figures = write_figures(results, out_dir / "figures")
    blocks = [
        Heading(1, TITLE),
        *smoke_blocks(results),
        Paragraph(provenance.sentence()),
        Heading(2, "Recommendation"),
        *recommendation_blocks(results, 3),
        Heading(2, "Findings"),
        *findings_blocks(results, 3),
        Heading(2, "Summary"),
        *summary_blocks(table, results, 3),
        Heading(2, f"Paired comparison with the baseline, {results.title(results.baseline)}"
                if results.baseline else "Paired comparison with a baseline"),
        *_paired_blocks(pairs, results),
        Heading(2, "Per seed"),
        *_seed_blocks(seeds),
        Heading(2, "NaViT Fig. 10a format"),
        *_fig10a_blocks(navit, navit_sides, results),
        Heading(2, "Figures"),
        *_figure_blocks(figures, results),
        Heading(2, "Variants"),
        _variants_table(results),
        Heading(2, "Failed cells"),
        *_failed_blocks(results),
        Heading(2, "Files"),
        Bullets(_files(pairs is not None, figures)),
        Heading(2, "Experiment config"),
        *_config_blocks(results, config is not None, store.config_path.is_file()),
        Heading(2, "Environment"),
        *_environment_blocks(provenance),
        Heading(2, "How the numbers are computed"),
        Bullets(METHOD),
    ]
    _write_text(out_dir / "report.md", markdown(blocks))
    _write_text(out_dir / "report.html", html_page(blocks, TITLE, out_dir))
    return headline(results)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def _write_per_task(out_dir: Path, stem: str, texts: dict[str, str]) -> None:
    """``<stem>__<task>.tex`` per task; any other ``<stem>*.tex`` (a task no longer in the folder,
    an earlier name) is removed, so no stale table sits beside the current ones."""
    written = {out_dir / f"{task_stem(stem, task)}.tex" for task in texts}
    for task, text in texts.items():
        _write_text(out_dir / f"{task_stem(stem, task)}.tex", text)
    for path in out_dir.glob(f"{stem}*.tex"):
        if path not in written:
            path.unlink()


def _latex_comment(what: str, source: str) -> str:
    return f"{what}.\nWritten by `python -m bench.report` {source}; see report.md."


def smoke_blocks(results: Results) -> list[Block]:
    return [SMOKE_NOTE] if results.smoke else []


def findings_blocks(results: Results, level: int) -> list[Block]:
    """Per task (a heading of ``level``) its findings, then those across tasks."""
    findings = write_findings(results)
    if not findings:
        return [Paragraph(NOTHING_FOUND)]
    blocks: list[Block] = []
    for task, sentences in findings.items():
        blocks += [Heading(level, results.of_task(task).task_text() if task else "Across tasks"),
                   Paragraph(" ".join(sentences))]
    return blocks


def summary_blocks(table: pd.DataFrame, results: Results, level: int) -> list[Block]:
    blocks: list[Block] = [
        Paragraph(f"Top-1 accuracy (%) per variant: mean ± std over seeds, with a {CI_LEVEL:.0%} interval "
                  f"in brackets (over seeds and test images) when there are {MIN_SEEDS_FOR_CI} or more seeds; "
                  f"{SEEDS_ONLY}: over seeds alone, for cells from before per-image hits were kept. Per task, "
                  f"the ranked variants by their whole-grid mean, then those not ranked (why: last column). "
                  f"\"Below / above train range\": eval sizes whose equal-area side lies outside the training side "
                  f"range; \"extreme aspect\": W:H of {EXTREME_ELONGATION:g}:1 or more elongated, either way; "
                  f"\"too-small grid\": eval sizes whose patch grid cannot show the task's label, which no other "
                  f"column includes; n/a: the grid has no such size. \"Worst cell\": the eval size (H x W px) "
                  f"with the lowest mean, of those the task can be solved at."),
    ]
    for task in results.tasks:
        blocks += [Heading(level, results.of_task(task).task_text()), summary_table(table[table["task"] == task])]
    return blocks


def _paired_blocks(table: pd.DataFrame | None, results: Results) -> list[Block]:
    baseline = results.baseline
    if baseline is None:
        return [Paragraph("The experiment names no baseline (the `baseline` key): no comparison.")]
    if table is None:
        return [Paragraph(f"`{baseline}` has no successful cell in this run: no comparison.")]
    blocks: list[Block] = [
        Paragraph(f"Per seed: the variant's accuracy minus that of {results.title(baseline)} "
                  f"(`{baseline}`) on the same eval sizes and test images, averaged over each group of "
                  f"sizes. Mean over seeds in percentage points with its {CI_LEVEL:.0%} interval over seeds "
                  f"and test images (from {MIN_SEEDS_FOR_CI} seeds; with fewer, ± std); in parentheses, how "
                  f"many seeds share the sign of the mean. \"Consistent\": every seed (2 or more) has the same "
                  f"sign over the whole grid."),
    ]
    for task, group in table.groupby("task", sort=False):
        blocks += [Heading(3, results.of_task(task).task_text()), paired_table(group)]
    return blocks


def _seed_blocks(table: pd.DataFrame) -> list[Block]:
    return [
        Paragraph("Every cell on its own: the final training loss and the top-1 accuracy (%) over "
                  "each group of eval sizes, the per-seed values that the means above are taken "
                  "over (also in `per_seed.csv`, as fractions)."),
        by_seed_table(table),
    ]


def _fig10a_blocks(table: pd.DataFrame, sides: list[int], results: Results) -> list[Block]:
    listed = ", ".join(str(s) for s in sides) if sides else "none"
    blocks: list[Block] = [
        Paragraph(f"As in NaViT Fig. 10a: per seed, the average and the best top-1 accuracy (%) "
                  f"over the square eval resolutions the task can be solved at ({listed} px), then mean ± "
                  f"std over seeds. The last column quotes the paper (NaViT-B/16 pretrained on JFT, ImageNet "
                  f"10-shot, resolutions 64-640 px): another model, data set and scale, so compare "
                  f"the order of the variants, not the values."),
    ]
    if table.empty:
        return blocks + [Paragraph("No successful cell.")]
    for task, group in table.groupby("task", sort=False):
        blocks += [Heading(3, results.of_task(task).task_text()), fig10a_table(group)]
    return blocks


def _figure_blocks(figures: list[Outcome], results: Results) -> list[Block]:
    blocks: list[Block] = [Paragraph(f"Each figure is drawn per task, in `figures/` as "
                                     f"`<name>__<task>` in {', '.join(f.upper() for f in FORMATS)}, sized for "
                                     f"print (7 in page width, 3.5 in for one column).")]
    for task in results.tasks:
        blocks.append(Heading(3, results.of_task(task).task_text()))
        for f in (f for f in figures if f.task == task):
            if f.caption:
                blocks.append(Image(f"figures/{f.png}", f"Figure {f.number}",
                                    f"Figure {f.number} ({task}). {f.caption}"))
            else:
                blocks.append(Paragraph(f"Figure {f.number} (`{f.stem}`, {f.spec.title[0].lower()}"
                                        f"{f.spec.title[1:]}) is not drawn: {f.reason}."))
    return blocks


def _variants_table(results: Results) -> Table:
    return Table(["name", "label", "family", "what it does", "source"],
                 [[info["title"], f"`{variant}`", info["family"], info["about"], info["paper"]]
                  for variant, info in results.variants.iterrows()])


def _failed_blocks(results: Results) -> list[Block]:
    failed = results.failed.sort_values(["variant", "seed"])
    if failed.empty:
        return [Paragraph("None: every cell succeeded.")]
    return [
        Paragraph(f"{len(failed)} cell(s) failed; they are left out of every mean above."),
        Table(["variant", "seed", "reason"],
              [[results.title(r.variant), str(r.seed), r.reason or "(no reason recorded)"]
               for r in failed.itertuples()]),
    ]


def _files(with_pairs: bool, figures: list[Outcome]) -> list[str]:
    pairs = (["`paired_vs_baseline.csv`, `paired_vs_baseline__<task>.tex`: the paired comparison"]
             if with_pairs else [])
    drawn = [f for f in figures if f.caption]
    return [
        "`report.md`, `report.html`: this report (the HTML embeds its images)",
        "`summary.csv` (fractions, every task), `summary.md`, `summary__<task>.tex` (LaTeX, booktabs): the summary",
        *pairs,
        "`per_seed.csv`: one row per cell, accuracies as fractions",
        "`navit_fig10a.csv`: the NaViT Fig. 10a table, in percent like the paper's columns",
        f"`figures/`: {len(drawn)} figures, each as {', '.join(f'.{x}' for x in FORMATS)}",
        "`metrics.csv`, `cells/`: the runner's raw results, which every number here comes from (the cells "
        "also hold which test images each eval size got right)",
        "`config.json`: the run's config keys that the cells do not hold (variant list, seeds, baseline)",
    ]


def _config_blocks(results: Results, given: bool, recorded: bool) -> list[Block]:
    if given:
        where = "The resolved experiment config."
    elif recorded:
        where = ("The config stored in the cells (what their config hash covers), with the run's "
                 "variant list, seeds and baseline from `config.json`.")
    else:
        where = ("The config stored in the cells (what their config hash covers; the variant list "
                 "and seeds are the cells' own).")
    text = yaml.safe_dump(json.loads(json.dumps(results.config, default=str)), sort_keys=False)
    return [Paragraph(where), Code(text, "yaml", fold="config (YAML)")]


def _environment_blocks(provenance: Provenance) -> list[Block]:
    env = provenance.environment
    if not env:
        return [Paragraph("Not recorded.")]
    return [Table(["item", "value"], [[str(k), f"`{v}`"] for k, v in env.items()])]


METHOD = [
    "Every comparison is within one task: the variants of a task share its seeds, training batches and "
    "test images. Failed cells are excluded from every number.",
    "Two levels: one value per cell (variant, task, seed), e.g. its mean accuracy over a regime's eval "
    "sizes (every size has the same test images, so this is also the mean over sizes and images), then "
    "the mean and sample std over seeds.",
    f"Intervals ({CI_LEVEL:.0%}, from {MIN_SEEDS_FOR_CI} seeds on, shown clipped to 0-100%): mean ± "
    f"t(0.975, n − 1) · SE over n seeds, SE = sqrt(s² / n + SE_img²). s is the std over seeds of the "
    f"per-seed values. SE_img is the test-sampling noise: each test image gets the value averaged over the "
    f"regime's sizes and the seeds, and SE_img = sd of those values / sqrt(images), the standard error of "
    f"the mean over images. It is the closed form of a bootstrap that resamples the test images, shared by "
    f"every seed and size (the test set is one sample common to all seeds), in the limit of many resamples: "
    f"no resampling noise and no random seed. The sum is conservative: s already holds the part of each "
    f"seed's image noise that the seeds do not share. {SEEDS_ONLY}: cells from before per-image hits were "
    f"kept give no SE_img; their interval is over seeds alone.",
    "Paired differences A − B (the paired table, every finding and the recommendation): per seed, "
    "d = mean over the regime's sizes and the test images of (correct_A − correct_B), on the seeds both "
    "have and the sizes in the regime for both; the interval as above, with each image's value the mean "
    "over sizes and seeds of its correct_A − correct_B. A difference is resolved when its interval "
    "excludes 0; otherwise it is \"not resolved with N seeds\", and the report gives the seeds the "
    f"observed variance would need: the smallest n with t(0.975, n − 1) · SE(n) < |mean|, SE(n) = "
    f"sqrt(s² / n + SE_img²) (none up to {MAX_SEEDS_NEEDED} when the image noise alone is too large: then "
    f"a larger test set would resolve it).",
    f"Did not learn: a cell whose accuracy at its training resolution is at most chance + "
    f"max({100 * LEARN_FLOOR:.0f} pp, {LEARN_SES:g} · sqrt(c (1 − c) / N)), c the chance accuracy and N "
    f"the test images (at 512: 5 pp at chance 1/9, 5.7 pp at 1/4). A variant with such a seed on a task is "
    f"not ranked there: it is shown below the ranked ones, flagged, and left out of the findings' "
    f"comparisons. So is NoPE (family none) on a task whose label is positional: the floor. The retention "
    f"figure and finding leave out every cell that did not learn.",
    "Chance: 1 / the number of classes of the cell's task (1/9 for `abs_position`, 1/4 for "
    "`rel_position` and `control`); the chance loss is ln(classes). Per-cell binomial half-width of a 95% "
    "interval at 512 test images: about ±4.3 pp at 50% accuracy, ±2.7 pp at 11%.",
    "Too-small grids: an eval size whose patch grid is smaller, on either axis, than the task needs for its "
    "label to show at patch level: " + ", ".join(f"`{task}` {need} x {need}" for task, need in MIN_GRID.items())
    + " patches (a 3x3 layout needs 3 patches a side; left/right needs 2 columns, above/below 2 rows; the "
    "control shape needs no position). They are reported apart (\"too-small grid\") and left out of the "
    "whole-grid mean, every other regime, the worst cell, the curves and the NaViT Fig. 10a table.",
    "Training resolution: the one square eval size the runner marks `at_train_res`. Training "
    "range: the side range the runner's `train_range` column refers to (below / in / above).",
    f"Extreme aspect: max(W/H, H/W) >= {EXTREME_ELONGATION:g}, i.e. 2:1 or longer allowing for "
    f"sides rounded to whole patches.",
    "Curves over side length and the NaViT Fig. 10a table use square eval sizes only, so "
    "resolution is the only thing that changes along them.",
    "Fixed token count (accuracy vs aspect): eval sizes are grouped by the square side nearest "
    "their equal-area side; the group with the most aspect ratios is shown, ties going to the one "
    "nearest the training side.",
    f"Retention: per seed, the drop in pp from the training resolution to the square side nearest "
    f"{TARGET_RATIO:g}x it (a paired difference of two sizes, with its interval), and the share of the "
    f"above-chance accuracy kept, (accuracy − chance) / (accuracy at training res. − chance), never a "
    f"ratio of two raw accuracies, which near chance divides chance by chance.",
    f"Recommendation, per task and regime: use the best (highest mean) ranked variant and every variant "
    f"not resolved from it; avoid those resolved behind it by a wide margin, the whole interval of "
    f"best − variant above {100 * AVOID_MARGIN:.0f} pp. The `control` task, where position plays no part, "
    f"checks that no embedding hurts recognising content: each variant against NoPE there.",
    f"Agreement between tasks: Spearman's rank correlation of the whole-grid means over the variants "
    f"ranked on both tasks (\"agree\" from 0.7, \"partly\" from 0.3), and the {MOVERS} variants whose rank "
    f"moves most.",
]
