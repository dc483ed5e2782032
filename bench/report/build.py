"""write_report: every table, figure and the report itself, from one results directory."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from ..store import Store, atomic_write
from .data import EXTREME_ELONGATION, Results, load_results
from .document import (Block, Bullets, Code, Heading, Image, Note, Paragraph, Table, html_page,
                       markdown)
from .figstyle import FORMATS
from .figures import Outcome, write_figures
from .findings import NOTHING_FOUND, TARGET_RATIO, headline, write_findings
from .latex import latex_table
from .provenance import Provenance, read_provenance
from .stats import CI_LEVEL, MIN_SEEDS_FOR_CI
from .tables import (by_seed, by_seed_table, fig10a, fig10a_csv, fig10a_table, paired, paired_table,
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
    _write_text(out_dir / "summary.md", markdown([Heading(1, "Summary"), *summary_blocks(table)]))
    _write_text(out_dir / "summary.tex", latex_table(summary_table(table), _latex_comment(
        "Summary: top-1 accuracy (%), mean +/- std over seeds [95% t-interval]", source)))
    if pairs is None:
        for name in ("paired_vs_baseline.csv", "paired_vs_baseline.tex"):
            (out_dir / name).unlink(missing_ok=True)  # no baseline: no stale table
    else:
        _write_text(out_dir / "paired_vs_baseline.csv", pairs.to_csv(index=False))
        _write_text(out_dir / "paired_vs_baseline.tex", latex_table(paired_table(pairs), _latex_comment(
            f"Paired difference from {results.baseline} (percentage points), mean +/- std over seeds "
            f"(seeds sharing the sign)", source)))
    _write_text(out_dir / "per_seed.csv", seeds.to_csv(index=False))
    _write_text(out_dir / "navit_fig10a.csv", fig10a_csv(navit).to_csv(index=False))
    figures = write_figures(results, out_dir / "figures")
    blocks = [
        Heading(1, TITLE),
        *smoke_blocks(results),
        Paragraph(provenance.sentence()),
        Heading(2, "Findings"),
        *findings_blocks(results),
        Heading(2, "Summary"),
        *summary_blocks(table),
        Heading(2, f"Paired comparison with the baseline, {results.title(results.baseline)}"
                if results.baseline else "Paired comparison with a baseline"),
        *_paired_blocks(pairs, results),
        Heading(2, "Per seed"),
        *_seed_blocks(seeds),
        Heading(2, "NaViT Fig. 10a format"),
        *_fig10a_blocks(navit, navit_sides),
        Heading(2, "Figures"),
        *_figure_blocks(figures),
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


def _latex_comment(what: str, source: str) -> str:
    return f"{what}.\nWritten by `python -m bench.report` {source}; see report.md."


def smoke_blocks(results: Results) -> list[Block]:
    return [SMOKE_NOTE] if results.smoke else []


def findings_blocks(results: Results) -> list[Block]:
    sentences = write_findings(results)
    return [Paragraph(" ".join(sentences) if sentences else NOTHING_FOUND)]


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


def _paired_blocks(table: pd.DataFrame | None, results: Results) -> list[Block]:
    baseline = results.baseline
    if baseline is None:
        return [Paragraph("The experiment names no baseline (the `baseline` key): no comparison.")]
    if table is None:
        return [Paragraph(f"`{baseline}` has no successful cell in this run: no comparison.")]
    return [
        Paragraph(f"Per seed: the variant's accuracy minus that of {results.title(baseline)} "
                  f"(`{baseline}`) on the same eval sizes, averaged over each group of cells. Mean "
                  f"± std over seeds in percentage points; in brackets, how many seeds share the "
                  f"sign of the mean. \"Consistent\": every seed (2 or more) has the same sign over "
                  f"the whole grid."),
        paired_table(table),
    ]


def _seed_blocks(table: pd.DataFrame) -> list[Block]:
    return [
        Paragraph("Every cell on its own: the final training loss and the top-1 accuracy (%) over "
                  "each group of eval sizes, the per-seed values that the means above are taken "
                  "over (also in `per_seed.csv`, as fractions)."),
        by_seed_table(table),
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


def _figure_blocks(figures: list[Outcome]) -> list[Block]:
    blocks: list[Block] = [Paragraph(f"Each figure is in `figures/` as "
                                     f"{', '.join(f.upper() for f in FORMATS)}, sized for print "
                                     f"(7 in page width, 3.5 in for one column).")]
    for f in figures:
        if f.caption:
            blocks.append(Image(f"figures/{f.png}", f"Figure {f.number}", f"Figure {f.number}. {f.caption}"))
        else:
            blocks.append(Paragraph(f"Figure {f.number} (`{f.spec.stem}`, {f.spec.title[0].lower()}"
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
    pairs = ["`paired_vs_baseline.csv`, `paired_vs_baseline.tex`: the paired comparison"] if with_pairs else []
    drawn = [f for f in figures if f.caption]
    return [
        "`report.md`, `report.html`: this report (the HTML embeds its images)",
        "`summary.csv` (fractions), `summary.md`, `summary.tex` (LaTeX, booktabs): the summary",
        *pairs,
        "`per_seed.csv`: one row per cell, accuracies as fractions",
        "`navit_fig10a.csv`: the NaViT Fig. 10a table, in percent like the paper's columns",
        f"`figures/`: {len(drawn)} figures, each as {', '.join(f'.{x}' for x in FORMATS)}",
        "`metrics.csv`, `cells/`: the runner's raw results, which every number here comes from",
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
    "Every statistic has two levels: one value per cell (variant, task, seed), e.g. the mean "
    "accuracy over that seed's eval sizes, then mean, sample std and a 95% Student-t interval over "
    "seeds (interval shown from 3 seeds on, clipped to 0-100%). Failed cells are excluded.",
    "Training resolution: the one square eval size the runner marks `at_train_res`. Training "
    "range: the side range the runner's `train_range` column refers to (below / in / above).",
    f"Extreme aspect: max(W/H, H/W) >= {EXTREME_ELONGATION:g}, i.e. 2:1 or longer allowing for "
    f"sides rounded to whole patches.",
    "Chance: 1 / the number of classes of the cell's task (e.g. 1/9 for `abs_position`); "
    "the chance loss is ln(classes).",
    "Curves over side length and the NaViT Fig. 10a table use square eval sizes only, so "
    "resolution is the only thing that changes along them.",
    "Fixed token count (accuracy vs aspect): eval sizes are grouped by the square side nearest "
    "their equal-area side; the group with the most aspect ratios is shown, ties going to the one "
    "nearest the training side.",
    f"Retention: per seed, accuracy at a side divided by accuracy at the training resolution; "
    f"the findings use the square side nearest {TARGET_RATIO:g}x the training side. A cell at 0% "
    f"at the training resolution has no such ratio: it is left out, and named where it is.",
    "A finding calls A better than B only when they share 2 or more seeds, A is ahead in every "
    "shared seed, and the mean gap exceeds std(A) + std(B); otherwise the two are reported as "
    "within seed noise.",
]
