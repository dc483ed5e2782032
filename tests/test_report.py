"""The report: tables agree with metrics.csv, findings follow the data, every file is produced."""
from __future__ import annotations

import base64
import dataclasses
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
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage

from bench.config import ResolutionConfig
from bench.data.synthetic import CLASS_NAMES
from bench.errors import BenchError
from bench.evaluate import Score
from bench.plan import EvalPoint, TrainResolution
from bench.report import update_readme, write_report
from bench.report.__main__ import main as cli_main
from bench.report.data import load_results
from bench.store import METRICS_COLUMNS, CellRecord, EvalRow, Store
from bench.report.figstyle import FORMATS, PANEL_PLOT_IN, RC, aspect_axis, side_axis, styles
from bench.report.figures import REGISTRY
from bench.report.findings import clearly_better, retention_sides, write_findings
from bench.report.readme import END, START
from bench.report.tables import paired, paired_table, seeds_of, square_sides, summary, zero_reference_cells

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


def make_store(out: Path, profiles=None, seeds=(0, 1, 2), failed=(), accuracy=None, noise=0.01,
               sides=SIDES, aspects=ASPECTS, task="abs_position"):
    """A results store like the runner's, of the store's CellRecords. ``failed``: (label, seed)
    pairs written as failed cells.

    ``accuracy(label, seed, h, w)`` overrides the profile model (for hand-built cases).
    """
    profiles = PROFILES if profiles is None else profiles
    (out / "cells").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
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
                                  h == w == REF_SIDE)
                evals.append(EvalRow(point, Score(acc, -math.log(max(acc, 1e-3)))))
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
                config={"data": {"name": "synthetic", "task": task},
                        "eval": {"grid": {"sides": list(sides), "aspects": list(aspects)}}})
            (out / "cells" / f"{label}__{seed}.json").write_text(json.dumps(cell.to_json()))
            rows += [{"variant": label, "base_variant": base, "seed": seed, **row.to_json()} for row in evals]
    pd.DataFrame(rows, columns=METRICS_COLUMNS).to_csv(out / "metrics.csv", index=False)
    return out


# ---- one full report, shared by the tests that only read it ---------------------------------

CONFIG = {"model": {"dim": 64, "depth": 4}, "seeds": [0, 1, 2], "eval": {"sides": list(SIDES)}, "baseline": BASELINE}
ENV = {"torch": "2.14.1", "device": "cpu", "commit": "0123abc", "python": "3.11.9", "cpu": "2 cores"}
FAILED = ("rope_mixed", 2)


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


def independent_grid_means(out: Path) -> pd.DataFrame:
    """Mean / std over seeds of each seed's whole-grid mean, from the raw files with plain pandas."""
    cells = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    failed = {(c["variant"], c["seed"]) for c in cells if c["status"] == "failed"}
    metrics = pd.read_csv(out / "metrics.csv")
    keep = [(v, s) not in failed for v, s in zip(metrics["variant"], metrics["seed"])]
    per_seed = metrics[keep].groupby(["variant", "seed"])["accuracy"].mean()
    return per_seed.groupby("variant").agg(["mean", "std", "count"])


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
    metrics = pd.read_csv(out / "metrics.csv")
    above = metrics[(metrics["variant"] == "vit_1d_interp") & (metrics["train_range"] == "above")]
    assert summary.at["vit_1d_interp", "above_mean"] == pytest.approx(
        above.groupby("seed")["accuracy"].mean().mean(), abs=1e-12)
    # ranked best first by the whole-grid mean
    ranked = pd.read_csv(out / "summary.csv")
    assert list(ranked["rank"]) == list(range(1, len(PROFILES) + 1))
    assert ranked["grid_mean"].is_monotonic_decreasing


def test_summary_ci_only_from_three_seeds(report):
    out, _ = report
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    row = summary.loc["pix2struct_2d"]
    half = 4.303 * row["grid_std"] / math.sqrt(3)
    assert row["grid_ci95_low"] == pytest.approx(row["grid_mean"] - half, abs=1e-5)
    assert row["grid_ci95_high"] == pytest.approx(row["grid_mean"] + half, abs=1e-5)
    assert summary.at["rope_mixed", "grid_n"] == 2 and math.isnan(summary.at["rope_mixed", "grid_ci95_low"])
    md = (out / "summary.md").read_text()
    line = next(l for l in md.splitlines() if "| 2D joint learned (Pix2Struct) |" in l)
    assert f"{100 * row['grid_mean']:.1f} ± {100 * row['grid_std']:.1f} [" in line


def test_failed_cells_are_listed_and_excluded(report):
    out, _ = report
    summary = pd.read_csv(out / "summary.csv").set_index("variant")
    assert summary.at["rope_mixed", "seeds_ok"] == 2 and summary.at["rope_mixed", "seeds_failed"] == 1
    metrics = pd.read_csv(out / "metrics.csv")
    ok = metrics[(metrics["variant"] == "rope_mixed") & metrics["seed"].isin([0, 1])]
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
                      & (metrics["eval_height"] == metrics["eval_width"])]
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
    outputs = ["summary.csv", "summary.md", "summary.tex", "paired_vs_baseline.csv",
               "paired_vs_baseline.tex", "per_seed.csv", "navit_fig10a.csv", "report.md",
               "report.html", "config.json"] + [f"figures/{spec.stem}.{fmt}" for spec in REGISTRY for fmt in FORMATS]
    for name in outputs:
        assert (out / name).is_file(), name
    assert {p.resolve() for p in replaced} == {(out / n).resolve() for n in outputs}
    assert not list(out.rglob("*.tmp"))


def test_figures_are_pngs_of_at_least_150_dpi(report):
    out, _ = report
    for spec in REGISTRY:
        with PILImage.open(out / "figures" / f"{spec.stem}.png") as img:
            assert img.format == "PNG"
            assert min(img.info["dpi"]) >= 150
            assert img.width >= 3.5 * 150  # at least a column wide at 150 dpi


def test_report_html_is_self_contained_and_matches_md(report):
    out, _ = report
    page = (out / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert len(sources) == len(REGISTRY) and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # no link to a file next to it
    first = out / "figures" / f"{REGISTRY[0].stem}.png"
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
        assert f"(figures/{spec.stem}.png)" in md
    findings = md.split("## Findings")[1].split("##")[0]
    assert "At 4x the training resolution (256 px vs 64 px, square images)" in findings


# ---- hand-built stores: paired comparison and findings ---------------------------------------

def _profiles(*labels):
    return {label: PROFILES[label] for label in labels}


def _results(tmp_path, labels, accuracy, seeds=(0, 1, 2), sides=(32, 64, 128, 256), aspects=(1.0,)):
    out = make_store(tmp_path, _profiles(*labels), seeds=seeds, accuracy=accuracy, sides=sides,
                     aspects=aspects)
    return load_results(out)


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
    assert rows["RoPE axial"][2] == "+2.0 ± 4.4 (2/3 +)" and rows["RoPE axial"][-1] == "no"
    assert rows["Factorized abs. learned"][-1] == "yes"


@pytest.mark.parametrize("a, b, expected", [
    ([0.80, 0.81, 0.79], [0.60, 0.61, 0.59], True),     # ahead in every seed, gap >> spread
    ([0.70, 0.72, 0.68], [0.69, 0.71, 0.67], False),    # ahead in every seed, gap < spread
    ([0.80, 0.50, 0.81], [0.60, 0.61, 0.59], False),    # behind in one seed
    ([0.90], [0.50], False),                            # a single seed
])
def test_clearly_better_rule(a, b, expected):
    assert clearly_better(pd.Series(a), pd.Series(b)) is expected


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=5))
def test_clearly_better_is_never_mutual(pairs):
    a, b = pd.Series([p[0] for p in pairs]), pd.Series([p[1] for p in pairs])
    assert not (clearly_better(a, b) and clearly_better(b, a))
    if len(pairs) < 2:
        assert not clearly_better(a, b)


def test_findings_name_a_winner_only_when_supported(tmp_path):
    labels = ["factorized_abs_learned", "rope_axial"]
    clear = write_findings(_results(tmp_path / "clear", labels, lambda l, s, h, w: (
        0.80 if l == "rope_axial" else 0.60) + 0.002 * s))
    assert any(s.startswith("Over the whole grid, `rope_axial` is best with 80.") and "clearly ahead" in s
               for s in clear)
    noisy = write_findings(_results(tmp_path / "noisy", labels, lambda l, s, h, w: 0.70 + (
        (0.01, -0.01, 0.0) if l == "rope_axial" else (0.0, 0.01, -0.01))[s]))
    inconsistent = write_findings(_results(tmp_path / "mixed", labels, lambda l, s, h, w: (
        (0.9, 0.9, 0.5) if l == "rope_axial" else (0.6, 0.6, 0.6))[s]))
    single = write_findings(_results(tmp_path / "single", labels, lambda l, s, h, w: (
        0.9 if l == "rope_axial" else 0.5), seeds=(0,)))
    for findings in (noisy, inconsistent, single):
        text = " ".join(findings)
        assert "is best" not in text and "clearly" not in text
        assert any("lead, but" in s and "so no single best variant is named" in s for s in findings)
    assert "a single seed cannot separate them" in " ".join(single)
    assert "within seed noise" in " ".join(noisy)


def test_findings_retention_at_4x_with_its_numbers(tmp_path):
    def accuracy(label, seed, h, w):
        if h < 256:
            return 0.8
        return 0.72 if label == "rope_axial" else 0.40
    findings = write_findings(_results(tmp_path, ["vit_1d_interp", "rope_axial"], accuracy))
    text = next(s for s in findings if s.startswith("At 4x"))
    assert text.startswith("At 4x the training resolution (256 px vs 64 px, square images), the share "
                           "of training-resolution accuracy kept is highest for `rope_axial` (90.0% ± "
                           "0.0; 72.0% accuracy) and lowest for `vit_1d_interp` (50.0% ± 0.0; 40.0% "
                           "accuracy).")
    assert text.endswith("`rope_axial` keeps clearly more than `vit_1d_interp`.")
    baseline = next(s for s in findings if "beat `vit_1d_interp`" in s)
    assert "`rope_axial` (+" in baseline


@pytest.mark.parametrize("sides, expected", [
    ((32, 64, 128, 256, 512), (64, 256)),   # 4x exists
    ((32, 64, 96, 192), (64, 192)),          # largest is 3x: nearest 4x
])
def test_retention_side_is_nearest_4x(tmp_path, sides, expected):
    results = _results(tmp_path, ["rope_axial"], lambda l, s, h, w: 0.5, sides=sides)
    assert retention_sides(results) == {"rope_axial": expected}


def test_no_retention_finding_without_sides_above_training(tmp_path):
    results = _results(tmp_path, ["rope_axial", "nope"], lambda l, s, h, w: 0.5, sides=(32, 64))
    assert retention_sides(results) == {}
    assert not any("training-resolution accuracy kept" in s for s in write_findings(results))


def test_retention_uses_each_variants_own_training_side(tmp_path):
    out = make_store(tmp_path, _profiles("vit_1d_interp", "rope_axial"), sides=(32, 64, 128, 256, 512),
                     aspects=(1.0,), accuracy=lambda l, s, h, w: 0.8 if h <= 128 else 0.4)
    metrics = pd.read_csv(out / "metrics.csv")  # as if vit_1d_interp were trained at a fixed 128 px
    is_vit = metrics["variant"] == "vit_1d_interp"
    metrics.loc[is_vit, "at_train_res"] = metrics.loc[is_vit, "eval_height"] == 128
    metrics.to_csv(out / "metrics.csv", index=False)
    results = load_results(out)
    assert retention_sides(results) == {"vit_1d_interp": (128, 512), "rope_axial": (64, 256)}
    text = next(s for s in write_findings(results) if "kept" in s)
    assert text.startswith("At the square side nearest 4x each variant's own training resolution")
    assert "at 512 vs 128 px" in text and "at 256 vs 64 px" in text


def test_combine_modes_finding(tmp_path):
    labels = ["factorized_abs_learned", "factorized_abs_learned+stack", "factorized_abs_learned+product"]
    level = {"factorized_abs_learned": 0.70, "factorized_abs_learned+stack": 0.70,
             "factorized_abs_learned+product": 0.55}
    findings = write_findings(_results(tmp_path, labels, lambda l, s, h, w: level[l] + 0.01 * (s - 1)))
    text = next(s for s in findings if s.startswith("For `factorized_abs_learned`"))
    assert "the combine modes sum and stack are level" in text and "product is clearly behind" in text


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
    results = load_results(make_store(tmp_path, _profiles("vit_1d_interp", "rope_axial"), sides=(32, 64, 128)))
    assert set(summary(results)["task"]) == {"abs_position"}
    other = results.metrics.assign(task="control", accuracy=results.metrics["accuracy"] / 2)
    both = dataclasses.replace(results, metrics=pd.concat([results.metrics, other], ignore_index=True),
                               cells=pd.concat([results.cells, results.cells.assign(task="control")]))
    table = summary(both).set_index(["variant", "task"])
    one = summary(results).set_index("variant")
    for variant in ("vit_1d_interp", "rope_axial"):
        assert table.at[(variant, "abs_position"), "grid_mean"] == pytest.approx(one.at[variant, "grid_mean"])
        assert table.at[(variant, "control"), "grid_mean"] == pytest.approx(one.at[variant, "grid_mean"] / 2)
        assert table.at[(variant, "control"), "worst_mean"] == pytest.approx(one.at[variant, "worst_mean"] / 2)


def test_results_of_several_tasks_are_refused_not_averaged(tmp_path):
    make_store(tmp_path, _profiles("rope_axial"), sides=(32, 64))
    make_store(tmp_path / "other", _profiles("nope"), sides=(32, 64), task="control")
    for cell in (tmp_path / "other" / "cells").iterdir():
        shutil.move(cell, tmp_path / "cells" / cell.name)
    with pytest.raises(BenchError, match="holds cells of several tasks \\(abs_position, control\\)"):
        load_results(tmp_path)


def test_a_results_folder_from_before_cell_records_is_reported(tmp_path):
    (tmp_path / "cells").mkdir()
    shutil.copy(Path(__file__).parent / "data" / "cell_before_records.json", tmp_path / "cells" / "rope_axial__0.json")
    Store(tmp_path).rebuild_metrics()
    results = load_results(tmp_path)
    assert results.cells[["variant", "task", "num_classes"]].values.tolist() == [["rope_axial", "abs_position", 9]]
    assert set(results.metrics["task"]) == {"abs_position"}


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
    assert line.count("| n/a |") == 2
    md = (out / "report.md").read_text()
    number = next(i for i, spec in enumerate(REGISTRY, 1) if spec.stem == "combine_modes")
    assert (f"Figure {number} (`combine_modes`, combine modes of the factorized embedding) is not "
            f"drawn: no factorized variant") in md
    assert "`vit_1d_interp` has no successful cell in this run: no comparison." in md
    assert "is not drawn: `vit_1d_interp`, the baseline, has no successful cell" in md
    assert not (out / "paired_vs_baseline.csv").exists() and not (out / "paired_vs_baseline.tex").exists()
    assert not {"combine_modes.pdf", "fig5_combine_modes.png"} & {p.name for p in (out / "figures").iterdir()}
    assert "None: every cell succeeded." in md


def test_a_zero_reference_accuracy_leaves_its_ratios_out_and_says_so(tmp_path):
    """A cell at 0% at its training resolution has no relative accuracy (x / 0 is undefined, not
    infinite): the ratios leave it out, the retention finding and Fig. 10b say so, and nothing
    crashes, down to a run whose only cell scores 0% everywhere."""
    def accuracy(label, seed, h, w):
        return 0.0 if (label, seed) == ("rope_axial", 1) else 0.5 + 0.01 * math.log2(h)
    out = make_store(tmp_path / "some", _profiles("vit_1d_interp", "rope_axial"), accuracy=accuracy,
                     sides=(32, 64, 128, 256), aspects=(1.0,))
    results = load_results(out)
    relative = square_sides(results.metrics, relative=True)
    assert np.isfinite(relative).all() and len(seeds_of(relative, "rope_axial").index.unique("seed")) == 2
    assert zero_reference_cells(results.metrics) == [("rope_axial", 1)]
    assert seeds_of(relative, "not_run").index.names == ["seed", "side"], "empty, with its levels"
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # constrained layout's "axes sizes collapsed" included
        write_report(out, CONFIG, ENV)
    note = "Left out of the ratios: `rope_axial` seed 1, at 0% accuracy at the training resolution"
    findings = (out / "report.md").read_text().split("## Findings")[1].split("\n## ")[0]
    assert note in findings
    number = next(i for i, spec in enumerate(REGISTRY, 1) if spec.stem == "relative_accuracy_vs_side")
    assert note in next(l for l in (out / "report.md").read_text().splitlines() if l.startswith(f"*Figure {number}."))

    nothing = make_store(tmp_path / "none", _profiles("nope"), seeds=(0,), accuracy=lambda *_: 0.0,
                         sides=(32, 64, 128), aspects=(0.5, 1.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_report(nothing, {**CONFIG, "baseline": None}, ENV)
    md = (nothing / "report.md").read_text()
    assert "is not drawn: no cell scores above 0% at its training resolution" in md
    assert "No share of training-resolution accuracy kept is reported. Left out of the ratios: `nope` seed 0" in md
    for stem in ("accuracy_vs_side", "accuracy_vs_aspect", "accuracy_heatmaps"):
        assert (nothing / "figures" / f"{stem}.png").is_file()


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
    (out / "cells" / "rope_axial__1.json").unlink()


def _no_rows(out):
    m = pd.read_csv(out / "metrics.csv")
    m[m["seed"] != 2].to_csv(out / "metrics.csv", index=False)


def _text_accuracy(out):
    m = pd.read_csv(out / "metrics.csv")
    m["accuracy"] = m["accuracy"].astype(str)
    m.loc[3, "accuracy"] = "high"
    m.to_csv(out / "metrics.csv", index=False)


def _cell_text(text):
    return lambda out: (out / "cells" / "rope_axial__0.json").write_text(text)


@pytest.mark.parametrize("damage, where, words", [
    (lambda out: shutil.rmtree(out / "cells"), "cells", "no result cells"),
    (_cell_text("{not json"), "rope_axial__0.json", "not a readable cell file"),
    (_cell_text('{"variant": "rope_axial"}'), "rope_axial__0.json", "lacks base_variant"),
    (lambda out: (out / "metrics.csv").unlink(), "metrics.csv", "missing"),
    (_drop_column, "metrics.csv", "missing columns accuracy"),
    (_stale_rows, "metrics.csv", "rope_axial seed 1 have no cell"),
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
    path = out / "cells" / "rope_axial__1.json"
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
        assert f"](docs/images/results/{spec.stem}.png)" in text
        assert (images / f"{spec.stem}.png").read_bytes() == (out / "figures" / f"{spec.stem}.png").read_bytes()
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
    findings = md.split("## Findings")[1].split("##")[0]
    assert "clearly" not in findings and "a single seed cannot separate them" in findings
    rows = [l for l in (out / "summary.md").read_text().splitlines() if re.match(r"\| \d+ \|", l)]
    assert "n/a (1 seed)" in md and len(rows) == len(PROFILES) and not any(" ± " in r for r in rows)
    assert len(list((out / "figures").glob("*.png"))) == len(REGISTRY)


def test_update_readme_needs_a_written_report(tmp_path):
    out = make_store(tmp_path / "run", _profiles("rope_axial"), sides=(32, 64), aspects=(1.0,))
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    with pytest.raises(BenchError, match="report.md: missing; run `python -m bench.report --out"):
        update_readme(out, readme, tmp_path / "img")
