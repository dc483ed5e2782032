"""The report: tables agree with metrics.csv, findings follow the data, every file is produced."""
from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import pytest
from PIL import Image as PILImage

from bench.config import ResolutionConfig
from bench.data import solvable
from bench.data.synthetic import CLASS_NAMES
from bench.errors import BenchError
from bench.evaluate import Hits, Score
from bench.plan import EvalPoint, TrainResolution
from bench.report import update_readme, write_report
from bench.report.__main__ import main as cli_main
from bench.report.data import load_results
from bench.store import METRICS_COLUMNS, CellRecord, EvalRow, Store
from bench.report.figstyle import FORMATS, PANEL_PLOT_IN, RC, aspect_axis, side_axis, styles
from bench.report.figures import REGISTRY
from bench.data import MIN_GRID
from bench.report.document import Paragraph
from bench.report.findings import headline, retention_sides, write_findings
from bench.report.readme import END, START
from bench.report.recommend import recommendation_blocks, task_recommendation
from bench.report.stats import MIN_SEEDS_FOR_CI, SeedStats, learned_margin, seeds_needed
from bench.report.tables import (SEEDS_ONLY, kept_share, paired, paired_table, signed_pp, summary,
                                 summary_table)

PATCH = 8
SIDES = (32, 48, 64, 96, 128, 192, 256)
ASPECTS = (0.25, 0.5, 1.0, 2.0, 4.0)
TRAIN = TrainResolution("navit", 48, 96, reference_side=64)
REF_SIDE = TRAIN.reference_side
STEPS = 50
BASELINE = "vit_1d_interp"

# label -> (base, combine, peak accuracy, loss per octave above / below range, per octave of aspect)
PROFILES = {
    "vit_1d_interp": ("vit_1d_interp", None, 0.80, 0.22, 0.10, 0.06),
    "pix2struct_2d": ("pix2struct_2d", None, 0.80, 0.16, 0.06, 0.03),
    "factorized_abs_learned": ("factorized_abs_learned", None, 0.82, 0.10, 0.05, 0.02),
    "factorized_abs_learned+stack": ("factorized_abs_learned", "stack", 0.81, 0.11, 0.05, 0.02),
    "factorized_abs_learned+product": ("factorized_abs_learned", "product", 0.79, 0.13, 0.06, 0.03),
    "factorized_frac_learned": ("factorized_frac_learned", None, 0.82, 0.05, 0.04, 0.05),
    "factorized_abs_sincos": ("factorized_abs_sincos", None, 0.81, 0.09, 0.05, 0.02),
    "factorized_frac_sincos": ("factorized_frac_sincos", None, 0.81, 0.06, 0.04, 0.05),
    "factorized_abs_fourier": ("factorized_abs_fourier", None, 0.81, 0.10, 0.05, 0.02),
    "factorized_frac_fourier": ("factorized_frac_fourier", None, 0.80, 0.07, 0.05, 0.05),
    "nope": ("nope", None, 0.62, 0.03, 0.03, 0.01),
    "rope_axial": ("rope_axial", None, 0.83, 0.07, 0.04, 0.02),
    "rope_mixed": ("rope_mixed", None, 0.83, 0.05, 0.04, 0.02),
}


def grid(sides=SIDES, aspects=ASPECTS):
    """(height, width) of every eval size: each side at each aspect, rounded to whole patches."""
    sizes = []
    for side in sides:
        for aspect in aspects:
            h = max(PATCH, round(side / math.sqrt(aspect) / PATCH) * PATCH)
            w = max(PATCH, round(side * math.sqrt(aspect) / PATCH) * PATCH)
            sizes.append((h, w))
    return sizes


IMAGES = 100   # test images per eval size: every accuracy is a whole number of them


def hits_of(acc: float, seed: int, h: int, w: int, images: int = IMAGES) -> Hits:
    """round(acc * images) right: the first of an order of the images fixed per (seed, size), so
    two variants' hits overlap as much as their accuracies allow (paired, as in a real run)."""
    order = np.random.default_rng([seed, h, w]).permutation(images)
    right = np.zeros(images, bool)
    right[order[:round(acc * images)]] = True
    return Hits.of(right)


def make_store(out: Path, profiles=None, seeds=(0, 1, 2), failed=(), accuracy=None, noise=0.01,
               sides=SIDES, aspects=ASPECTS, task="abs_position", hits=True, images=IMAGES):
    """A results store like the runner's, of the store's CellRecords. ``failed``: (label, seed)
    pairs written as failed cells. Each eval row's hits give its accuracy (a multiple of 1 /
    ``images``); ``hits=False`` writes rows from before they were kept.

    ``accuracy(label, seed, h, w)`` overrides the profile model (for hand-built cases).
    """
    profiles = PROFILES if profiles is None else profiles
    store = Store(out)
    rng = np.random.default_rng(0)
    for label, (base, combine, peak, above, below, aspect_loss) in profiles.items():
        for seed in seeds:
            ok = (label, seed) not in failed
            offset = rng.normal(0, noise)
            evals = []
            for h, w in grid(sides, aspects) if ok else []:
                side = round(math.sqrt(h * w))
                rng_name = ("below" if side < TRAIN.min_side
                            else "above" if side > TRAIN.max_side else "in")
                if accuracy is not None:
                    acc = accuracy(label, seed, h, w)
                else:
                    acc = (peak + offset - above * max(0.0, math.log2(side / TRAIN.max_side))
                           - below * max(0.0, math.log2(TRAIN.min_side / side))
                           - aspect_loss * abs(math.log2(w / h)) + rng.normal(0, noise / 2))
                    acc = float(np.clip(acc, 0.01, 1.0))
                point = EvalPoint(h, w, w / h, side, (h // PATCH) * (w // PATCH), rng_name == "in", rng_name,
                                  h == w == REF_SIDE, solvable(task, h // PATCH, w // PATCH))
                right = hits_of(acc, seed, h, w, images)
                acc = float(right.array().mean())
                evals.append(EvalRow(point, Score(acc, -math.log(max(acc, 1e-3)), right if hits else None)))
            steps = np.arange(STEPS)  # from chance (ln 9) towards the cell's own level
            losses = math.log(9) - (math.log(9) + math.log(peak)) * (1 - np.exp(-steps / 15))
            cell = CellRecord(
                variant=label, base_variant=base, options={"combine": combine} if combine else {},
                resolution=ResolutionConfig(min_side=TRAIN.min_side, max_side=TRAIN.max_side), task=task,
                seed=seed, config_hash="abc123", status="ok" if ok else "failed",
                reason=None if ok else "loss became NaN at step 40", num_classes=len(CLASS_NAMES[task]),
                param_count=100_000 + 1_000 * len(label), train_time_s=12.5, eval_time_s=0.5, tokens_seen=10_000,
                images_seen=500, steps=STEPS, final_train_loss=1.0 if ok else None, train_resolution=TRAIN,
                device="cpu", world_size=1,
                train_losses=(losses + rng.normal(0, 0.05, STEPS)).tolist() if ok else [], eval=evals,
                config={"data": {"name": "synthetic", "task": task, "test_size": images},
                        "eval": {"grid": {"sides": list(sides), "aspects": list(aspects)}}})
            store.write_cell(cell)
    store.rebuild_metrics()
    return out


def merge_tasks(out: Path, *others: Path) -> Path:
    """The cells of the stores ``others`` (of other tasks) moved into ``out``, metrics rebuilt."""
    for other in others:
        for cell in (other / "cells").iterdir():
            shutil.move(cell, out / "cells" / cell.name)
    Store(out).rebuild_metrics()
    return out


# ---- one full report, shared by the tests that only read it ---------------------------------

CONFIG = {"model": {"dim": 64, "depth": 4}, "seeds": [0, 1, 2], "eval": {"sides": list(SIDES)}, "baseline": BASELINE}
ENV = {"torch": "2.14.1", "device": "cpu", "commit": "0123abc", "python": "3.11.9", "cpu": "2 cores"}
FAILED = ("rope_mixed", 2)
T_975 = {1: 12.706204736174707, 2: 4.302652729911275, 4: 2.7764451051977987}   # scipy.stats.t.ppf(0.975, df)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A full store with one failed cell, whose partial rows are left in metrics.csv at 0%
    accuracy so that including them would visibly move the means. Records every os.replace."""
    out = make_store(tmp_path_factory.mktemp("run"), failed={FAILED})
    metrics = pd.read_csv(out / "metrics.csv")
    partial = metrics[(metrics["variant"] == FAILED[0]) & (metrics["seed"] == 0)].assign(
        seed=FAILED[1], accuracy=0.0)
    pd.concat([metrics, partial]).to_csv(out / "metrics.csv", index=False)
    replaced = []
    real_replace = os.replace

    def recording_replace(src, dst):
        replaced.append(Path(dst))
        real_replace(src, dst)
    with mock.patch("bench.store.os.replace", recording_replace):
        write_report(out, CONFIG, ENV)
    return out, replaced


def ok_rows(out: Path) -> pd.DataFrame:
    """metrics.csv's rows of ok cells, read with plain pandas."""
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    failed = {(c["variant"], c["seed"]) for c in cells if c["status"] == "failed"}
    metrics = pd.read_csv(out / "metrics.csv")
    return metrics[[(v, s) not in failed for v, s in zip(metrics["variant"], metrics["seed"])]]


def independent_grid_means(out: Path) -> pd.DataFrame:
    """Mean / std over seeds of each seed's whole-grid mean (sizes the task can be solved at)."""
    metrics = ok_rows(out)
    per_seed = metrics[metrics["solvable"]].groupby(["variant", "seed"])["accuracy"].mean()
    return per_seed.groupby("variant").agg(["mean", "std", "count"])


def stored_hits(out: Path, variant: str, task: str = "abs_position") -> dict[tuple[int, int, int], np.ndarray]:
    """(seed, H, W) -> 0/1 per test image, decoded from the cell files with plain numpy."""
    out_hits = {}
    for path in (out / "cells").glob(f"{variant}__{task}__*.json"):
        cell = json.loads(path.read_text())
        for row in cell["eval"]:
            bits = np.unpackbits(np.frombuffer(base64.b64decode(row["hits"]["bits"]), np.uint8))
            out_hits[cell["seed"], row["eval_height"], row["eval_width"]] = bits[:row["hits"]["count"]].astype(float)
    return out_hits


def independent_interval(per_seed: np.ndarray, per_image: np.ndarray) -> tuple[float, float, float]:
    """(low, high, image SE) of the method section's interval, from the two vectors."""
    n = len(per_seed)
    image_se = per_image.std(ddof=1) / math.sqrt(len(per_image))
    half = T_975[n - 1] * math.sqrt(per_seed.var(ddof=1) / n + image_se ** 2)
    return per_seed.mean() - half, per_seed.mean() + half, image_se


def test_summary_agrees_with_metrics_csv(report):
    out, _ = report
    expected = independent_grid_means(out)
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert set(summary.index) == set(PROFILES)
    for variant, row in expected.iterrows():
        assert summary.at[variant, "grid_mean"] == pytest.approx(row["mean"], abs=1e-12)
        assert summary.at[variant, "grid_std"] == pytest.approx(row["std"], abs=1e-12)
        assert summary.at[variant, "grid_n"] == row["count"]
    # one subset mean, recomputed by hand: above the training range, for the baseline
    metrics = ok_rows(out)
    above = metrics[(metrics["variant"] == "vit_1d_interp") & (metrics["train_range"] == "above") & metrics["solvable"]]
    assert summary.at["vit_1d_interp", "above_mean"] == pytest.approx(
        above.groupby("seed")["accuracy"].mean().mean(), abs=1e-12)
    # ranked best first by the whole-grid mean; NoPE on a positional task is the floor: shown last, unranked
    ranked = pd.read_csv(out / "summary.csv")
    assert list(ranked["rank"][:-1]) == list(range(1, len(PROFILES))) and ranked["rank"].isna().tolist()[-1]
    assert ranked["variant"].iloc[-1] == "nope" and ranked["flag"].iloc[-1] == "floor: no positional information"
    assert ranked["grid_mean"][:-1].is_monotonic_decreasing


def test_accuracy_intervals_add_image_noise_recomputed_with_numpy(report):
    """A variant's interval from the stored bits and metrics.csv, with plain numpy."""
    out, _ = report
    metrics = ok_rows(out)
    rows = metrics[(metrics["variant"] == "pix2struct_2d") & metrics["solvable"]]
    per_seed = rows.groupby("seed")["accuracy"].mean().to_numpy()
    hits = stored_hits(out, "pix2struct_2d")
    per_image = np.mean([hits[r.seed, r.eval_height, r.eval_width] for r in rows.itertuples()], axis=0)
    assert per_image.mean() == pytest.approx(per_seed.mean(), abs=1e-12), "the same mean, image by image"
    low, high, image_se = independent_interval(per_seed, per_image)
    row = pd.read_csv(out / "summary.csv").set_index("variant").loc["pix2struct_2d"]
    assert row["grid_image_se"] == pytest.approx(image_se, rel=1e-9) and image_se > 0
    assert (row["grid_ci95_low"], row["grid_ci95_high"]) == (pytest.approx(low, abs=1e-7),
                                                           pytest.approx(high, abs=1e-7))
    seeds_only = T_975[2] * per_seed.std(ddof=1) / math.sqrt(3)
    assert row["grid_ci95_high"] - row["grid_mean"] > seeds_only, "wider than over seeds alone"
    line = next(l for l in (out / "summary.md").read_text().splitlines() if "| 2D joint learned (Pix2Struct) |" in l)
    assert f"{100 * row['grid_mean']:.1f} ± {100 * row['grid_std']:.1f} [{100 * low:.1f}, {100 * high:.1f}]" in line
    two = pd.read_csv(out / "summary.csv").set_index("variant").loc["rope_mixed"]
    assert two["grid_n"] == 2 and math.isnan(two["grid_ci95_low"]), "an interval needs 3 seeds"


def test_paired_difference_and_its_interval_recomputed_from_bits(report):
    """A - B above the training range: seeds, sizes and test images paired; against plain numpy,
    and the image SE against a bootstrap that resamples images shared by every seed and size."""
    out, _ = report
    a, b = "factorized_frac_learned", BASELINE
    metrics = ok_rows(out)
    above = metrics[(metrics["train_range"] == "above") & metrics["solvable"]]
    mean_of = lambda v: above[above["variant"] == v].groupby("seed")["accuracy"].mean()   # noqa: E731
    per_seed = (mean_of(a) - mean_of(b)).to_numpy()
    hits_a, hits_b = stored_hits(out, a), stored_hits(out, b)
    keys = [(r.seed, r.eval_height, r.eval_width) for r in above[above["variant"] == a].itertuples()]
    per_image = np.mean([hits_a[k] - hits_b[k] for k in keys], axis=0)
    low, high, image_se = independent_interval(per_seed, per_image)
    row = pd.read_csv(out / "paired_vs_baseline.csv").set_index("variant").loc[a]
    assert row["above_diff_mean"] == pytest.approx(per_seed.mean(), abs=1e-12) and per_seed.mean() > 0.1
    assert row["above_diff_image_se"] == pytest.approx(image_se, rel=1e-9)
    assert (row["above_diff_ci95_low"], row["above_diff_ci95_high"]) == (
        pytest.approx(low, abs=1e-7), pytest.approx(high, abs=1e-7))
    rng = np.random.default_rng(0)
    resampled = [per_image[rng.integers(0, IMAGES, IMAGES)].mean() for _ in range(4000)]
    assert np.std(resampled) == pytest.approx(image_se, rel=0.06), "the closed form of the image bootstrap"
    text = paired_table(pd.read_csv(out / "paired_vs_baseline.csv")).rows
    line = next(r for r in text if r[0] == "Factorized frac. learned")
    assert line[4].startswith(f"{signed_pp(per_seed.mean())} [{signed_pp(low)}, {signed_pp(high)}] (3/3 +)")


def test_failed_cells_are_listed_and_excluded(report):
    out, _ = report
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.at["rope_mixed", "seeds_ok"] == 2 and summary.at["rope_mixed", "seeds_failed"] == 1
    metrics = pd.read_csv(out / "metrics.csv")
    ok = metrics[(metrics["variant"] == "rope_mixed") & metrics["seed"].isin([0, 1]) & metrics["solvable"]]
    assert summary.at["rope_mixed", "grid_mean"] == pytest.approx(  # the 0% partial rows are not in it
        ok.groupby("seed")["accuracy"].mean().mean(), abs=1e-12)
    md = (out / "report.md").read_text()
    failed_section = md.split("## Failed cells")[1].split("##")[0]
    assert "| RoPE mixed | 2 | loss became NaN at step 40 |" in failed_section
    assert "2 (+1 failed)" in (out / "summary.md").read_text()


def test_fig10a_table_is_average_and_best_over_square_sizes(report):
    out, _ = report
    metrics = pd.read_csv(out / "metrics.csv")
    squares = metrics[(metrics["variant"] == "factorized_abs_learned")
                      & (metrics["eval_height"] == metrics["eval_width"]) & metrics["solvable"]]
    by_seed = squares.groupby("seed")["accuracy"]
    navit = pd.read_csv(out / "navit_fig10a.csv").set_index("variant").loc["factorized_abs_learned"]
    # percent throughout, like the paper's columns beside ours
    assert navit["average_mean_pct"] == pytest.approx(100 * by_seed.mean().mean(), abs=1e-10)
    assert navit["best_mean_pct"] == pytest.approx(100 * by_seed.max().mean(), abs=1e-10)
    assert navit["average_std_pct"] == pytest.approx(100 * by_seed.mean().std(), abs=1e-10)
    assert navit["average_n"] == 3
    assert (navit["navit_paper_average_pct"], navit["navit_paper_best_pct"]) == (64.9, 71.5)
    assert "| Factorized abs. learned |" in (out / "report.md").read_text().split("Fig. 10a format")[1]


def test_every_output_is_written_atomically(report):
    out, replaced = report
    outputs = ["summary.csv", "summary.md", "summary__abs_position.tex", "paired_vs_baseline.csv",
               "paired_vs_baseline__abs_position.tex", "per_seed.csv", "navit_fig10a.csv", "report.md",
               "report.html", "config.json"] + [f"figures/{spec.stem}__abs_position.{fmt}" for spec in REGISTRY
                                                for fmt in FORMATS]
    for name in outputs:
        assert (out / name).is_file(), name
    assert {p.resolve() for p in replaced} == {(out / n).resolve() for n in outputs}
    assert not list(out.rglob("*.tmp"))


def test_figures_are_pngs_of_at_least_150_dpi(report):
    out, _ = report
    for spec in REGISTRY:
        with PILImage.open(out / "figures" / f"{spec.stem}__abs_position.png") as img:
            assert img.format == "PNG"
            assert min(img.info["dpi"]) >= 150
            assert img.width >= 3.5 * 150  # at least a column wide at 150 dpi


def test_report_html_is_self_contained_and_matches_md(report):
    out, _ = report
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(REGISTRY) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # no link to a file next to it
    first = out / "figures" / f"{REGISTRY[0].stem}__abs_position.png"
    assert base64.b64decode(sources[0].split(",", 1)[1]) == first.read_bytes()
    md = (out / "report.md").read_text()
    for heading in re.findall(r"^## (.+)$", md, re.M):
        assert re.search(f'<h2 id="[a-z0-9-]+">{re.escape(heading.replace("`", ""))}</h2>',
                         re.sub(r"</?code>", "", page))
    # summary, paired, per seed, Fig. 10a, variants, failed cells, environment; each scrolls when wide
    assert page.count('<div class="wide"><table>') == len(re.findall(r"^\|[-: |]+\|$", md, re.M)) == 7


def test_report_md_has_config_environment_and_findings(report):
    out, _ = report
    md = (out / "report.md").read_text()
    assert "```yaml\nmodel:\n  dim: 64" in md
    assert "| commit | `0123abc` |" in md and "| torch | `2.14.1` |" in md
    for spec in REGISTRY:
        assert f"(figures/{spec.stem}__abs_position.png)" in md
    findings = md.split("## Findings")[1].split("\n## ")[0]
    assert "From the training resolution to 4x it (64 to 256 px, square images)" in findings
    assert md.index("## Recommendation") < md.index("## Findings") < md.index("## Summary")
    method = md.split("## How the numbers are computed")[1]
    assert "SE = sqrt(s² / n + SE_img²)" in method and "no random seed" in method and "Did not learn" in method


def test_cells_without_hits_fall_back_to_intervals_over_seeds_flagged(tmp_path):
    out = make_store(tmp_path, _profiles("vit_1d_interp", "rope_axial"), sides=(32, 64, 128), hits=False)
    write_report(out, CONFIG, ENV)
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    metrics = pd.read_csv(out / "metrics.csv")
    per_seed = metrics[(metrics["variant"] == "rope_axial") & metrics["solvable"]].groupby("seed")["accuracy"].mean()
    half = T_975[2] * per_seed.std(ddof=1) / math.sqrt(3)
    assert math.isnan(summary.at["rope_axial", "grid_image_se"])
    assert summary.at["rope_axial", "grid_ci95_high"] == pytest.approx(per_seed.mean() + half, abs=1e-9)
    line = next(l for l in (out / "summary.md").read_text().splitlines() if "| RoPE axial |" in l)
    assert f"]{SEEDS_ONLY}" in line and "over seeds alone" in (out / "report.md").read_text()


@pytest.mark.parametrize("mean, std, image_se, n, expected", [
    (0.02, 0.03, 0.0, 3, 12),        # seed noise alone
    (0.02, 0.03, 0.005, 3, 15),      # the image noise makes it need more
    (0.10, 0.01, 0.0, 2, 3),         # 2 seeds: an interval needs 3, and 3 would do
    (0.01, 0.001, 0.006, 3, None),   # the image noise alone is too large: no number of seeds does it
    (0.05, math.nan, 0.01, 1, None),  # one seed: its seed noise is unknown
])
def test_seeds_needed_is_the_smallest_n_whose_interval_excludes_zero(mean, std, image_se, n, expected):
    st = SeedStats(n, mean, std, math.nan, math.nan, image_se)
    assert seeds_needed(st) == expected
    if expected:   # against the definition, with t quantiles from a printed table
        t = {1: 12.706205, 2: 4.302653, 10: 2.228139, 11: 2.200985, 13: 2.160369, 14: 2.144787}
        se = lambda k: math.sqrt(std ** 2 / k + image_se ** 2)   # noqa: E731
        assert t[expected - 1] * se(expected) < mean
        assert expected == MIN_SEEDS_FOR_CI or t[expected - 2] * se(expected - 1) >= mean


# ---- chance: who learned, who is ranked --------------------------------------------------------

@pytest.mark.parametrize("chance, images, margin", [
    (1 / 9, 512, 0.05),                                   # 3 SE = 4.2 pp: the 5 pp floor
    (1 / 4, 512, 3 * math.sqrt(0.25 * 0.75 / 512)),       # 5.7 pp
    (1 / 9, 64, 3 * math.sqrt(1 / 9 * 8 / 9 / 64)),       # a small test set: 11.8 pp
    (1 / 9, math.nan, 0.05),                              # test size unknown: the floor
])
def test_learning_margin(chance, images, margin):
    assert learned_margin(chance, images) == pytest.approx(margin)


def test_did_not_learn_at_the_boundary_flags_the_variant_below_the_ranked(tmp_path):
    """100 images, chance 1/9: margin max(5 pp, 3 SE = 9.4 pp), threshold 20.5%: 20/100 did not
    learn, 21/100 did. A variant with one such seed is shown, flagged, never ranked."""
    at_train = {("rope_axial", 0): 0.20, ("rope_axial", 1): 0.21, ("rope_axial", 2): 0.60,
                ("vit_1d_interp", 0): 0.21, ("vit_1d_interp", 1): 0.22, ("vit_1d_interp", 2): 0.23}

    def accuracy(label, seed, h, w):
        return at_train[label, seed] if (h, w) == (REF_SIDE, REF_SIDE) else (0.9 if label == "rope_axial" else 0.3)
    out = make_store(tmp_path, _profiles("vit_1d_interp", "rope_axial"), accuracy=accuracy, sides=(32, 64, 128, 256),
                     aspects=(1.0,))
    results = load_results(out)
    learned = results.cells.set_index(["variant", "seed"])["learned"]
    assert learned.to_dict() == {("rope_axial", 0): False, ("rope_axial", 1): True, ("rope_axial", 2): True,
                                 ("vit_1d_interp", 0): True, ("vit_1d_interp", 1): True, ("vit_1d_interp", 2): True}
    view = results.of_task("abs_position")
    assert view.ranked_variants == ["vit_1d_interp"] and view.flag("rope_axial") == "1/3 seeds did not learn"
    table = summary(results)
    assert table["variant"].tolist() == ["vit_1d_interp", "rope_axial"], "below the ranked, despite its mean"
    assert table["rank"].tolist()[0] == 1 and pd.isna(table["rank"].tolist()[1])
    rows = summary_table(table).rows
    assert rows[1][0] == "—" and rows[1][-1] == "1/3 seeds did not learn"
    findings = " ".join(write_findings(results)["abs_position"])
    assert "Not ranked: `rope_axial` (1/3 seeds did not learn)" in findings
    assert "is best" not in findings and "leads" not in findings, "one ranked variant: nothing to compare"
    # its seed that did not learn is left out of the retention share; its others are in
    share = kept_share(view.metrics)
    assert set(share[share.index.get_level_values("variant") == "rope_axial"].index.get_level_values("seed")) == {1, 2}
    write_report(out, CONFIG, ENV)
    seeds = pd.read_csv(out / "per_seed.csv").set_index(["variant", "seed"])
    assert not seeds.at[("rope_axial", 0), "learned"] and "did not learn" in (out / "report.md").read_text()


# ---- the degenerate sizes: a property of the task ----------------------------------------------

@pytest.mark.parametrize("task, rows, cols, expected", [
    ("abs_position", 3, 3, True), ("abs_position", 2, 9, False), ("abs_position", 9, 2, False),
    ("rel_position", 2, 2, True), ("rel_position", 1, 4, False), ("rel_position", 4, 1, False),
    ("control", 1, 1, True), ("cifar10", 1, 1, True),
])
def test_the_too_small_grid_rule_per_task(task, rows, cols, expected):
    assert solvable(task, rows, cols) is expected
    assert MIN_GRID.keys() == set(CLASS_NAMES), "one entry per synthetic task, beside its classes"


def test_too_small_grids_are_reported_apart_from_every_regime(tmp_path):
    """Patch 8: a 64x16 image is 8x2 patches, too few columns for abs_position's 3x3 layout; at 0%
    there it would pull every mean down, so no regime but "too-small grid" may hold it."""
    def accuracy(label, seed, h, w):
        return 0.0 if min(h, w) < 3 * PATCH else 0.8
    out = make_store(tmp_path, _profiles("vit_1d_interp", "rope_axial"), accuracy=accuracy)
    results = load_results(out)
    small = results.metrics.loc[~results.metrics["solvable"], ["eval_height", "eval_width"]].drop_duplicates()
    assert len(small) and (small.min(axis=1) < 3 * PATCH).all()
    table = summary(results).set_index("variant")
    for key in ("train_res", "grid", "below", "above", "extreme"):
        assert table.at["rope_axial", f"{key}_mean"] == pytest.approx(0.8), key
    assert table.at["rope_axial", "small_mean"] == 0.0 and table.at["rope_axial", "worst_mean"] == pytest.approx(0.8)
    other = load_results(make_store(tmp_path / "control", _profiles("rope_axial"), accuracy=accuracy, task="control"))
    assert other.metrics["solvable"].all() and summary(other)["small_n"].eq(0).all(), "control: every grid counts"
    basis = write_findings(results)["abs_position"][0]
    assert f"{len(small)} sizes (" in basis and "too small for the task's label and are reported apart" in basis


# ---- findings and the recommendation: only as strong as the intervals --------------------------

def _profiles(*labels):
    return {label: PROFILES[label] for label in labels}


def _results(tmp_path, labels, accuracy, seeds=(0, 1, 2), sides=(32, 64, 128, 256), aspects=(1.0,)):
    return load_results(make_store(tmp_path, _profiles(*labels), seeds=seeds, accuracy=accuracy, sides=sides,
                                   aspects=aspects))


def test_paired_difference_and_sign_consistency(tmp_path):
    def accuracy(label, seed, h, w):
        base = 0.5 + 0.01 * math.log2(h)  # differs per cell: the pairing must be cell by cell
        return base + {"vit_1d_interp": 0.0, "factorized_abs_learned": 0.05,
                       "rope_axial": (0.05, -0.03, 0.04)[seed]}[label]
    results = _results(tmp_path, ["vit_1d_interp", "factorized_abs_learned", "rope_axial"], accuracy)
    table = paired(results).set_index("variant")
    steady, mixed = table.loc["factorized_abs_learned"], table.loc["rope_axial"]
    assert steady["grid_diff_mean"] == pytest.approx(0.05)
    assert steady[["grid_seeds_better", "grid_seeds_worse", "grid_consistent"]].tolist() == [3, 0, True]
    assert mixed["grid_diff_mean"] == pytest.approx(0.02)
    assert mixed["grid_diff_std"] == pytest.approx(np.std([0.05, -0.03, 0.04], ddof=1))
    assert mixed[["grid_seeds_better", "grid_seeds_worse", "grid_consistent"]].tolist() == [2, 1, False]
    rows = {r[0]: r for r in paired_table(table.reset_index()).rows}
    assert rows["RoPE axial"][2].startswith("+2.0 [−") and rows["RoPE axial"][2].endswith("] (2/3 +)")
    assert rows["RoPE axial"][-1] == "no" and rows["Factorized abs. learned"][-1] == "yes"


def test_a_large_effect_is_stated_with_its_interval_and_no_hedge(tmp_path):
    labels = ["factorized_abs_learned", "rope_axial"]
    clear = write_findings(_results(tmp_path / "clear", labels, lambda l, s, h, w: (
        0.80 if l == "rope_axial" else 0.60) + 0.01 * s))["abs_position"]
    text = next(s for s in clear if s.startswith("Over the whole grid"))
    assert re.fullmatch(r"Over the whole grid, `rope_axial` is best with 81\.0% \[\d+\.\d, \d+\.\d\], resolved ahead "
                        r"of every other ranked variant, of the runner-up `factorized_abs_learned` by 20\.0 pp "
                        r"\[\d+\.\d, \d+\.\d\]\.", text), text
    assert "not resolved" not in " ".join(clear) and "noise" not in " ".join(clear)


def test_an_unresolved_comparison_says_with_how_many_seeds_and_what_would_resolve_it(tmp_path):
    labels = ["factorized_abs_learned", "rope_axial"]
    noisy = write_findings(_results(tmp_path / "noisy", labels, lambda l, s, h, w: 0.70 + (
        (0.06, -0.02, 0.05) if l == "rope_axial" else (0.0, 0.01, -0.01))[s]))["abs_position"]
    text = next(s for s in noisy if s.startswith("Over the whole grid"))
    assert text.startswith("Over the whole grid, `rope_axial` leads with 73.0%")
    assert re.search(r"not resolved from it: `factorized_abs_learned` \(−3\.0 pp \[−\d+\.\d, \+\d+\.\d\]; "
                     r"not resolved with 3 seeds \(about \d+ would resolve it\)\)\.", text), text
    single = write_findings(_results(tmp_path / "single", labels, lambda l, s, h, w: (
        0.9 if l == "rope_axial" else 0.5), seeds=(0,)))["abs_position"]
    assert "not resolved with 1 seed (its seed noise is unknown)" in " ".join(single)
    assert "is best" not in " ".join(single)


def test_recommendation_uses_the_best_and_its_ties_and_avoids_the_far_behind(tmp_path):
    level = {"rope_axial": 0.80, "rope_mixed": 0.79, "factorized_abs_learned": 0.72, "vit_1d_interp": 0.40,
             "pix2struct_2d": 0.30}
    results = _results(tmp_path, list(level), lambda l, s, h, w: level[l] + 0.01 * (s == 1) * (l == "rope_mixed"))
    line = next(l for l in task_recommendation(results.of_task("abs_position")) if l.startswith("At training res."))
    assert line.startswith("At training res.: use `rope_axial` (80.0%")
    assert re.search(r", or `rope_mixed` \(not resolved from it with 3 seeds; the closest, `rope_mixed`, at "
                     r"−0\.7 pp \[−\d+\.\d, \+\d+\.\d\]: (about \d+ would resolve it|more seeds would not: "
                     r"[^)]+)\)", line), line
    assert re.search(r"; avoid `pix2struct_2d` \(50\.0 pp \[\d+\.\d, \d+\.\d\] behind\) and `vit_1d_interp` "
                     r"\(40\.0 pp \[\d+\.\d, \d+\.\d\] behind\)\.$", line), line
    assert "factorized_abs_learned" not in line, "8 pp behind: resolved, but not by a wide margin"
    blocks = recommendation_blocks(results, 3)
    assert isinstance(blocks[0], Paragraph)
    assert "Intervals are 95% and hold both seed and test-image noise" in blocks[0].text


def test_findings_retention_as_a_drop_in_pp_and_a_chance_corrected_share(tmp_path):
    def accuracy(label, seed, h, w):
        if h < 256:
            return 0.8
        return 0.72 if label == "rope_axial" else 0.40
    findings = write_findings(_results(tmp_path, ["vit_1d_interp", "rope_axial"], accuracy))["abs_position"]
    text = next(s for s in findings if s.startswith("From the training resolution"))
    kept = lambda acc: 100 * (acc - 1 / 9) / (0.8 - 1 / 9)   # noqa: E731
    interval = r"\[[−+]\d+\.\d, [−+]\d+\.\d\]"   # the image noise of a drop between two sizes
    assert re.match(r"From the training resolution to 4x it \(64 to 256 px, square images\), the smallest drop is "
                    rf"`rope_axial` −8\.0 pp {interval}, keeping {kept(0.72):.0f}% of its accuracy above chance, the "
                    rf"largest `vit_1d_interp` −40\.0 pp {interval}, keeping {kept(0.40):.0f}% of its accuracy above "
                    r"chance\.$", text), text


@pytest.mark.parametrize("sides, expected", [
    ((32, 64, 128, 256, 512), (64, 256)),   # 4x exists
    ((32, 64, 96, 192), (64, 192)),          # largest is 3x: nearest 4x
])
def test_retention_side_is_nearest_4x(tmp_path, sides, expected):
    results = _results(tmp_path, ["rope_axial"], lambda l, s, h, w: 0.5, sides=sides)
    assert retention_sides(results.of_task("abs_position")) == {"rope_axial": expected}


def test_no_retention_finding_without_sides_above_training(tmp_path):
    results = _results(tmp_path, ["rope_axial", "vit_1d_interp"], lambda l, s, h, w: 0.5, sides=(32, 64))
    assert retention_sides(results.of_task("abs_position")) == {}
    assert not any("From the training resolution" in s for s in write_findings(results)["abs_position"])


def test_retention_uses_each_variants_own_training_side(tmp_path):
    out = make_store(tmp_path, _profiles("vit_1d_interp", "rope_axial"), sides=(32, 64, 128, 256, 512),
                     aspects=(1.0,), accuracy=lambda l, s, h, w: 0.8 if h <= 128 else 0.4)
    metrics = pd.read_csv(out / "metrics.csv")  # as if vit_1d_interp were trained at a fixed 128 px
    is_vit = metrics["variant"] == "vit_1d_interp"
    metrics.loc[is_vit, "at_train_res"] = metrics.loc[is_vit, "eval_height"] == 128
    metrics.to_csv(out / "metrics.csv", index=False)
    results = load_results(out)
    assert retention_sides(results.of_task("abs_position")) == {"vit_1d_interp": (128, 512), "rope_axial": (64, 256)}
    text = next(s for s in write_findings(results)["abs_position"] if s.startswith("From"))
    assert text.startswith("From the training resolution to the square side nearest 4x it")
    assert "at 512 vs 128 px" in text and "at 256 vs 64 px" in text


def test_combine_modes_finding(tmp_path):
    labels = ["factorized_abs_learned", "factorized_abs_learned+stack", "factorized_abs_learned+product"]
    level = {"factorized_abs_learned": 0.70, "factorized_abs_learned+stack": 0.70,
             "factorized_abs_learned+product": 0.55}
    findings = write_findings(_results(tmp_path, labels, lambda l, s, h, w: level[l] + 0.01 * (s - 1)))
    text = next(s for s in findings["abs_position"] if s.startswith("For `factorized_abs_learned`"))
    assert text.startswith("For `factorized_abs_learned`, over the whole grid (sum 70.0% [")
    assert "), sum leads, not resolved from stack (" in text, "a tie, in display order"
    assert "; product (−15.0 pp [" in text and text.endswith(") resolved behind.")


# ---- several tasks: ranked apart, compared, the control check ---------------------------------

TASK_LEVELS = {   # per task, each variant's accuracy at every size (seeds add 0, 1, 2 points)
    "abs_position": {"rope_axial": 0.90, "factorized_frac_learned": 0.80, "factorized_abs_learned": 0.60,
                     "vit_1d_interp": 0.50, "nope": 0.11},
    "control": {"rope_axial": 0.60, "factorized_frac_learned": 0.75, "factorized_abs_learned": 0.80,
                "vit_1d_interp": 0.90, "nope": 0.90},
}


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    folders = [make_store(root / task, _profiles(*levels), sides=(32, 64, 128, 256), aspects=(0.5, 1.0, 2.0),
                          accuracy=lambda l, s, h, w, levels=levels: levels[l] + 0.01 * s, task=task)
               for task, levels in TASK_LEVELS.items()]
    out = merge_tasks(*folders)
    write_report(out, {**CONFIG, "data": {"name": "synthetic", "task": list(TASK_LEVELS)}}, ENV)
    return out


def test_each_task_is_ranked_on_its_own(two_tasks):
    table = pd.read_csv(two_tasks / "summary.csv")
    for task, levels in TASK_LEVELS.items():
        mine = table[table["task"] == task]
        ranked = mine[mine["rank"].notna()]
        expected = sorted((v for v in levels if not (task != "control" and v == "nope")), key=lambda v: -levels[v])
        assert ranked["variant"].tolist() == expected and ranked["rank"].tolist() == list(range(1, len(expected) + 1))
    nope = table.set_index(["task", "variant"])
    assert pd.isna(nope.at[("abs_position", "nope"), "rank"]) and nope.at[("control", "nope"), "rank"] == 2
    assert nope.at[("abs_position", "nope"), "flag"].startswith("floor: no positional information")
    md = (two_tasks / "report.md").read_text()
    for task in TASK_LEVELS:
        assert md.count(f"### Task: {task} (") >= 5   # recommendation, findings, summary, paired, figures
        assert (two_tasks / "figures" / f"accuracy_vs_side__{task}.png").is_file()


def test_the_rankings_of_two_tasks_are_compared(two_tasks):
    """Spearman's rho over the variants ranked on both, against ranks worked out by hand."""
    across = write_findings(load_results(two_tasks))[""]
    a = {"rope_axial": 1, "factorized_frac_learned": 2, "factorized_abs_learned": 3, "vit_1d_interp": 4}
    b = {"rope_axial": 4, "factorized_frac_learned": 3, "factorized_abs_learned": 2, "vit_1d_interp": 1}
    rho = np.corrcoef(list(a.values()), [b[v] for v in a])[0, 1]
    assert rho == -1.0
    assert across == [f"The whole-grid rankings of `abs_position` and `control` disagree: Spearman's ρ = {rho:.2f} "
                      "over the 4 variants ranked on both; moving most: `rope_axial` (1st → 4th), `vit_1d_interp` "
                      "(4th → 1st) and `factorized_frac_learned` (2nd → 3rd)."]


def test_control_says_whether_an_embedding_hurts_recognising_content(two_tasks):
    control = " ".join(write_findings(load_results(two_tasks))["control"])
    assert re.search(r"On `control`, where position plays no part, `factorized_abs_learned` \(−10\.0 pp \[[^]]+\]\), "
                     r"`factorized_frac_learned` \(−15\.0 pp \[[^]]+\]\) and `rope_axial` \(−30\.0 pp \[[^]]+\]\) "
                     r"are resolved below `nope` at the training resolution: their embedding hurts", control), control
    assert "On `abs_position`" not in " ".join(write_findings(load_results(two_tasks))["abs_position"])


def test_recommendation_opens_the_report_per_task(two_tasks):
    md = (two_tasks / "report.md").read_text()
    head = md.split("## Recommendation")[1].split("## Findings")[0]
    assert head.index("### Task: abs_position") < head.index("### Task: control")
    abs_part = head.split("### Task: abs_position")[1].split("### Task: control")[0]
    assert abs_part.count("\n- ") == 4, "a line per regime: training res., above, below, extreme aspect"
    assert "- At training res.: use `rope_axial` (91.0%" in abs_part and "Not ranked: `nope` (floor" in abs_part
    assert "use `vit_1d_interp` (91.0%" in head.split("### Task: control")[1] or \
        "use `nope` (91.0%" in head.split("### Task: control")[1]


def test_the_log_headline_names_each_tasks_whole_grid_leader(two_tasks):
    results = load_results(two_tasks)
    parts = headline(results).removeprefix("Highest whole-grid mean: ").removesuffix(".").split("; ")
    assert [p.split(" `")[0] for p in parts] == ["abs_position", "control"]
    assert parts[0].startswith("abs_position `rope_axial` 91.0% [")
    assert parts[1].startswith(("control `vit_1d_interp` 91.0% [", "control `nope` 91.0% ["))   # tied at 0.90
    assert "\n" not in headline(results)


# ---- the baseline is the run's config key; the cell axes are the store's -------------------

def test_the_baseline_is_the_configs(tmp_path):
    out = make_store(tmp_path / "run", _profiles("vit_1d_interp", "rope_axial", "nope"), sides=(32, 64, 128))
    write_report(out, {**CONFIG, "baseline": "nope"}, ENV)
    md = (out / "report.md").read_text()
    assert "## Paired comparison with the baseline, No embedding (NoPE)" in md
    assert set(pd.read_csv(out / "paired_vs_baseline.csv")["baseline"]) == {"nope"}
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    update_readme(out, readme, tmp_path / "img")   # takes it from the config.json the report wrote
    recorded = json.loads((out / "config.json").read_text())
    assert recorded == {"baseline": "nope", "seeds": [0, 1, 2]}, "only the keys no cell holds"
    folder = load_results(out)   # a redraw from the folder alone: the cells' part plus config.json's
    assert folder.baseline == "nope" and folder.config["seeds"] == [0, 1, 2] and "data" in folder.config
    write_report(out, {**CONFIG, "baseline": None}, ENV)
    assert "The experiment names no baseline" in (out / "report.md").read_text()
    assert not (out / "paired_vs_baseline.csv").exists()


def test_summary_keeps_every_cell_axis_apart(tmp_path):
    """One row per (variant, task): a second task is never averaged into the first."""
    one = make_store(tmp_path / "a", _profiles("vit_1d_interp", "rope_axial"), sides=(32, 64, 128))
    alone = summary(load_results(one)).set_index("variant")
    other = make_store(tmp_path / "b", _profiles("vit_1d_interp", "rope_axial"), sides=(32, 64, 128), task="control",
                       accuracy=lambda l, s, h, w: 0.3)
    table = summary(load_results(merge_tasks(one, other))).set_index(["variant", "task"])
    for variant in ("vit_1d_interp", "rope_axial"):
        assert table.at[(variant, "abs_position"), "grid_mean"] == pytest.approx(alone.at[variant, "grid_mean"])
        assert table.at[(variant, "abs_position"), "worst_mean"] == pytest.approx(alone.at[variant, "worst_mean"])
        assert table.at[(variant, "control"), "grid_mean"] == pytest.approx(0.3)


def test_a_results_folder_from_before_cell_records_is_reported(tmp_path):
    (tmp_path / "cells").mkdir()
    shutil.copy(Path(__file__).parent / "data" / "cell_before_records.json", tmp_path / "cells" / "rope_axial__0.json")
    Store(tmp_path).rebuild_metrics()
    results = load_results(tmp_path)
    assert results.cells[["variant", "task", "num_classes"]].values.tolist() == [["rope_axial", "abs_position", 9]]
    assert set(results.metrics["task"]) == {"abs_position"} and not results.metrics["has_hits"].any()
    write_report(tmp_path)   # a single-task folder of the old layout, without hits: reported, intervals over seeds
    assert (tmp_path / "figures" / "ranking__abs_position.png").is_file()
    assert "### Task: abs_position (9 classes, chance 11.1%)" in (tmp_path / "report.md").read_text()


# ---- the edges: no data for a column, no baseline, no combine modes, all cells failed -------

def test_missing_groups_are_na_and_missing_figures_explained(tmp_path):
    out = make_store(tmp_path, _profiles("factorized_abs_learned", "rope_axial"),
                     sides=(64, 96, 128), aspects=(1.0, 1.5))
    (out / "figures").mkdir()
    for stale in ("combine_modes.pdf", "fig5_combine_modes.png"):  # a figure not drawn, an old name
        (out / "figures" / stale).write_bytes(b"stale")
    (out / "paired_vs_baseline.csv").write_text("stale")
    write_report(out, CONFIG, ENV)
    summary = pd.read_csv(out / "summary.csv")
    assert summary["below_mean"].isna().all() and summary["extreme_mean"].isna().all()
    assert summary["above_mean"].notna().all()
    line = next(l for l in (out / "summary.md").read_text().splitlines() if "| RoPE axial |" in l)
    assert [c.strip() for c in line.split("|")].count("n/a") == 3, "below, extreme and too-small grid"
    md = (out / "report.md").read_text()
    number = next(i for i, spec in enumerate(REGISTRY, 1) if spec.stem == "combine_modes")
    assert (f"Figure {number} (`combine_modes__abs_position`, combine modes of the factorized embedding) is not "
            f"drawn: no factorized variant") in md
    assert "`vit_1d_interp` has no successful cell in this run: no comparison." in md
    assert "is not drawn: `vit_1d_interp`, the baseline, has no successful cell" in md
    assert not (out / "paired_vs_baseline.csv").exists() and not list(out.glob("paired_vs_baseline*.tex"))
    assert not {"combine_modes.pdf", "fig5_combine_modes.png"} & {p.name for p in (out / "figures").iterdir()}
    assert "None: every cell succeeded." in md


def test_cells_that_did_not_learn_leave_retention_and_nothing_crashes(tmp_path):
    """A cell at 0% at its training resolution did not learn: it is out of the chance-corrected
    share (whose denominator is then never near 0), and a run where nothing learned still reports."""
    def accuracy(label, seed, h, w):
        return 0.0 if (label, seed) == ("rope_axial", 1) else 0.5 + 0.01 * math.log2(h)
    out = make_store(tmp_path / "some", _profiles("vit_1d_interp", "rope_axial"), accuracy=accuracy,
                     sides=(32, 64, 128, 256), aspects=(1.0,))
    share = kept_share(load_results(out).metrics)
    assert np.isfinite(share).all()
    assert set(share[share.index.get_level_values("variant") == "rope_axial"].index.get_level_values("seed")) == {0, 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # constrained layout's "axes sizes collapsed" included
        write_report(out, CONFIG, ENV)
    assert "`rope_axial` (1/3 seeds did not learn)" in (out / "report.md").read_text()

    nothing = make_store(tmp_path / "none", _profiles("nope"), seeds=(0,), accuracy=lambda *_: 0.0,
                         sides=(32, 64, 128), aspects=(0.5, 1.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(nothing, {**CONFIG, "baseline": None}, ENV)
    md = (nothing / "report.md").read_text()
    assert "is not drawn: no cell learned, so no share of learned accuracy is defined" in md
    assert "No ranked variant to recommend." in md
    for stem in ("accuracy_vs_side", "accuracy_vs_aspect", "accuracy_heatmaps"):
        assert (nothing / "figures" / f"{stem}__abs_position.png").is_file()


def test_all_cells_failed_still_reports(tmp_path):
    labels = ["vit_1d_interp", "rope_axial"]
    out = make_store(tmp_path, _profiles(*labels), failed={(l, s) for l in labels for s in (0, 1, 2)})
    pd.DataFrame(columns=METRICS_COLUMNS).to_csv(out / "metrics.csv", index=False)
    write_report(out, CONFIG, ENV)
    md = (out / "report.md").read_text()
    assert "No cell succeeded: nothing to report." in md and "6 cell(s) failed" in md
    assert not list((out / "figures").glob("*.png"))


# ---- a bad store is one line naming the path --------------------------------------------------

def _drop_column(out):
    pd.read_csv(out / "metrics.csv").drop(columns="accuracy").to_csv(out / "metrics.csv", index=False)


def _stale_rows(out):
    (out / "cells" / "rope_axial__abs_position__1.json").unlink()


def _no_rows(out):
    m = pd.read_csv(out / "metrics.csv")
    m[m["seed"] != 2].to_csv(out / "metrics.csv", index=False)


def _text_accuracy(out):
    m = pd.read_csv(out / "metrics.csv")
    m["accuracy"] = m["accuracy"].astype(str)
    m.loc[3, "accuracy"] = "high"
    m.to_csv(out / "metrics.csv", index=False)


def _cell_text(text):
    return lambda out: (out / "cells" / "rope_axial__abs_position__0.json").write_text(text)


def _other_accuracy(out):
    m = pd.read_csv(out / "metrics.csv")
    m.loc[2, "accuracy"] = 0.5 if m.loc[2, "accuracy"] != 0.5 else 0.6
    m.to_csv(out / "metrics.csv", index=False)


@pytest.mark.parametrize("damage, where, words", [
    (lambda out: shutil.rmtree(out / "cells"), "cells", "no result cells"),
    (_cell_text("{not json"), "rope_axial__abs_position__0.json", "not a readable cell file"),
    (_cell_text('{"variant": "rope_axial"}'), "rope_axial__abs_position__0.json", "lacks base_variant"),
    (lambda out: (out / "metrics.csv").unlink(), "metrics.csv", "missing"),
    (_drop_column, "metrics.csv", "missing columns accuracy"),
    (_stale_rows, "metrics.csv", "rope_axial abs_position seed 1 have no cell"),
    (_other_accuracy, "metrics.csv", "differs from its cell's; metrics.csv is stale"),
    (_no_rows, "metrics.csv", "no rows for ok cell"),
    (_text_accuracy, "metrics.csv", "non-numeric value in column accuracy"),
])
def test_bad_store_raises_one_line_bench_error(tmp_path, damage, where, words):
    out = make_store(tmp_path, _profiles("rope_axial"), sides=(32, 64), aspects=(1.0,))
    damage(out)
    with pytest.raises(BenchError) as info:
        write_report(out, CONFIG, ENV)
    message = str(info.value)
    assert where in message and words in message and "\n" not in message


def test_cells_of_two_configs_are_refused(tmp_path):
    out = make_store(tmp_path, _profiles("rope_axial"), sides=(32, 64), aspects=(1.0,))
    path = out / "cells" / "rope_axial__abs_position__1.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "config_hash": "def456"}))
    with pytest.raises(BenchError, match="cells of 2 different configs \\(config_hash abc123, def456\\)"):
        load_results(out)


@pytest.mark.parametrize("text, words", [("{not json", "is unreadable"), ("[1]", "must be a JSON object")])
def test_a_bad_config_json_is_one_line_naming_it(tmp_path, capsys, text, words):
    out = make_store(tmp_path, _profiles("rope_axial"), sides=(32, 64), aspects=(1.0,))
    (out / "config.json").write_text(text)
    assert cli_main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(out / "config.json") in err and words in err and err.count("\n") == 1
    assert not (out / "report.md").exists()


# ---- styles and README -------------------------------------------------------------------------

def test_one_colour_per_family_and_distinct_styles_within(report):
    out, _ = report
    results = load_results(out)
    st_ = styles(results)
    for family, group in results.variants.groupby("family"):
        assert len({st_[v].colour for v in group.index}) == 1
        assert len({(st_[v].linestyle, st_[v].marker) for v in group.index}) == len(group)
    assert len({st_[v].colour for v in results.variants.index}) == results.variants["family"].nunique()
    assert "side 64 px, 64–66 tokens" in (out / "report.md").read_text()  # 63/65 px grouped as 64


def test_update_readme_rewrites_only_between_markers(report, tmp_path):
    out = shutil.copytree(report[0], tmp_path / "run")  # the CLI redraws the report: on a copy
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\nintro\n{START}\nold results\n{END}\noutro\n")
    images = tmp_path / "docs" / "images" / "results"
    assert cli_main(["--out", str(out), "--readme", str(readme), "--images", str(images)]) == 0
    text = readme.read_text()
    assert text.startswith(f"# Title\nintro\n{START}\n") and text.endswith(f"{END}\noutro\n")
    assert "old results" not in text and "| # | variant | params |" in text
    shown = [spec for spec in REGISTRY if spec.readme]
    assert shown
    for spec in shown:
        name = f"{spec.stem}__abs_position.png"
        assert f"](docs/images/results/{name})" in text
        assert (images / name).read_bytes() == (out / "figures" / name).read_bytes()
    assert text.index("### Recommendation") < text.index("### Findings") < text.index("### Summary")
    update_readme(out, readme, images)
    assert readme.read_text() == text  # idempotent


def test_update_readme_without_markers_is_an_error(report, tmp_path, capsys):
    out, _ = report
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert cli_main(["--out", str(out), "--readme", str(readme), "--images", str(tmp_path / "img")]) == 2
    assert "README.md: needs a line <!-- results:start -->" in capsys.readouterr().err
    assert readme.read_text() == "no markers here\n"
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # the report is not redrawn


@pytest.mark.parametrize("axis, values", [
    (aspect_axis, [1 / 3, 0.4, 0.5, 1.0, 2.0, 2.5, 3.0]),
    (side_axis, [8, 12, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]),
])
def test_tick_labels_never_overlap(axis, values):
    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(PANEL_PLOT_IN + 0.5, 1.5))
        ax.set_position([0.1, 0.2, PANEL_PLOT_IN / (PANEL_PLOT_IN + 0.5), 0.7])
        ax.plot(values, range(len(values)))
        axis(ax, values)
        fig.canvas.draw()
        boxes = sorted((t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()),
                       key=lambda b: b.x0)
        plt.close(fig)
    assert len(boxes) >= 3  # the extremes and 1:1 / a middle side at least
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))


def test_single_seed_run_reports_without_spread_or_claims(tmp_path):
    out = make_store(tmp_path, seeds=(0,))  # like quick.yaml: every variant, one seed
    write_report(out, CONFIG, ENV)
    md = (out / "report.md").read_text()
    findings = md.split("## Findings")[1].split("\n## ")[0]
    assert "resolved ahead" not in findings and "not resolved with 1 seed (its seed noise is unknown)" in findings
    rows = [l for l in (out / "summary.md").read_text().splitlines() if re.match(r"\| \d+ \|", l)]
    assert "n/a (1 seed)" in md and len(rows) == len(PROFILES) - 1 and not any(" ± " in r for r in rows)
    assert len(list((out / "figures").glob("*.png"))) == len(REGISTRY)


def test_update_readme_needs_a_written_report(tmp_path):
    out = make_store(tmp_path / "run", _profiles("rope_axial"), sides=(32, 64), aspects=(1.0,))
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    with pytest.raises(BenchError, match="report.md: missing; run `python -m bench.report --out"):
        update_readme(out, readme, tmp_path / "img")
