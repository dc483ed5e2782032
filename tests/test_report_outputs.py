"""The report's paper-ready outputs and workflow: LaTeX tables, the per-seed table, chance lines,
clipped bands, display names, the smoke banner, provenance, redrawing, comparing two runs."""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from unittest import mock

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection

from bench.data.synthetic import CLASS_NAMES
from bench.posembed import _REGISTRY, PositionalEmbedding
from bench.report import compare_runs, update_readme, write_report
from bench.report.__main__ import main as cli_main
from bench.report.data import display_name, family_of, load_results
from bench.report.figstyle import RC, styles
from bench.report.figures import REGISTRY
from bench.report.latex import latex_table
from bench.report.document import Table
from bench.report.readme import END, START
from bench.store import Store
from test_report import CONFIG, ENV, PROFILES, make_store

LABELS = ("vit_1d_interp", "factorized_abs_learned", "factorized_abs_learned+stack", "rope_axial")
SMALL = dict(sides=(32, 64, 128), aspects=(0.5, 1.0, 2.0))


def small_store(out: Path, labels=LABELS, **kwargs) -> Path:
    return make_store(out, {label: PROFILES[label] for label in labels}, **{**SMALL, **kwargs})


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 3-variant, 3-seed store with a failed cell, and its report."""
    out = small_store(tmp_path_factory.mktemp("small"), failed={("rope_axial", 1)})
    write_report(out, CONFIG, ENV)
    return out


def drawn(results, stem: str):
    spec = next(s for s in REGISTRY if s.stem == stem)
    with plt.rc_context(RC):
        fig, _ = spec.draw(results, styles(results))
    return fig


# ---- LaTeX -----------------------------------------------------------------------------------

_UNESCAPE = {r"$\pm$": "±", r"$-$": "−", r"\_": "_", r"\%": "%", r"\#": "#", r"\&": "&", "--": "–",
             r"$\Delta$": "Δ"}


def parse_booktabs(text: str) -> tuple[str, list[str], list[list[str]]]:
    """(column spec, header, rows) of a booktabs tabular, failing on any other structure."""
    lines = [l for l in text.splitlines() if l and not l.startswith("%")]
    spec = re.fullmatch(r"\\begin\{tabular\}\{([lr]+)\}", lines[0]).group(1)
    assert lines[1] == r"\toprule" and lines[3] == r"\midrule"
    assert lines[-2:] == [r"\bottomrule", r"\end{tabular}"]

    def cells(line):
        assert line.endswith(r" \\"), line
        parts = line[:-3].split(" & ")
        assert len(parts) == len(spec), line
        for escaped, plain in _UNESCAPE.items():
            parts = [p.replace(escaped, plain) for p in parts]
        return parts
    return spec, cells(lines[2]), [cells(l) for l in lines[4:-2]]


def numbers(cell: str) -> list[float]:
    return [float(x.replace("−", "-")) for x in re.findall(r"−?\d+\.\d+", cell)]


def test_summary_tex_is_booktabs_with_the_summary_csv_numbers(small):
    spec, header, rows = parse_booktabs((small / "summary__abs_position.tex").read_text())
    assert spec == "llrr" + "r" * 7 + "l"  # text left, every number right-aligned
    assert header[:2] == ["#", "variant"] and "whole grid" in header
    summary = pd.read_csv(small / "summary.csv").set_index("title")
    assert [r[1] for r in rows] == list(summary.index)  # same variants, same ranking
    grid = header.index("whole grid")
    for row in rows:
        s = summary.loc[row[1]]
        expected = [100 * s["grid_mean"], 100 * s["grid_std"]]
        if not math.isnan(s["grid_ci95_low"]):
            expected += [100 * max(s["grid_ci95_low"], 0), 100 * min(s["grid_ci95_high"], 1)]
        assert numbers(row[grid]) == pytest.approx(expected, abs=0.05)
        assert row[2] == f"{int(s['param_count']):,}"
    assert (small / "summary__abs_position.tex").read_text().isascii()


def test_paired_tex_has_the_paired_csv_differences(small):
    _, header, rows = parse_booktabs((small / "paired_vs_baseline__abs_position.tex").read_text())
    assert header[1] == "Δ at training res."
    paired = pd.read_csv(small / "paired_vs_baseline.csv").set_index("title")
    col = header.index("Δ whole grid")
    for row in rows:
        p = paired.loc[row[0]]
        expected = [p["grid_diff_mean"], p["grid_diff_ci95_low"], p["grid_diff_ci95_high"]]
        if math.isnan(expected[1]):   # 2 seeds: no interval, the std
            expected = [p["grid_diff_mean"], p["grid_diff_std"]]
        assert numbers(row[col]) == pytest.approx([100 * x for x in expected], abs=0.05)


def test_latex_escapes_specials_and_code():
    text = latex_table(Table(["a_b", "50%"], [["`x_y` & z", "1 ± 2 # −3"]], "lr"), "two\nlines")
    assert text.startswith("% two\n% lines\n")
    assert r"a\_b & 50\% \\" in text
    assert r"\texttt{x\_y} \& z & 1 $\pm$ 2 \# $-$3 \\" in text


# ---- per-seed table and units ----------------------------------------------------------------

def test_per_seed_table_holds_each_cells_own_numbers(small):
    table = pd.read_csv(small / "per_seed.csv")
    metrics = pd.read_csv(small / "metrics.csv")
    assert len(table) == len(LABELS) * 3  # failed cells too
    failed = table[(table["variant"] == "rope_axial") & (table["seed"] == 1)].iloc[0]
    assert failed["status"] == "failed" and math.isnan(failed["grid_accuracy"])
    for r in table[table["status"] == "ok"].itertuples():
        rows = metrics[(metrics["variant"] == r.variant) & (metrics["seed"] == r.seed) & metrics["solvable"]]
        assert r.grid_accuracy == pytest.approx(rows["accuracy"].mean(), abs=1e-12)
        above = rows[rows["train_range"] == "above"]["accuracy"].mean()
        assert r.above_accuracy == pytest.approx(above, abs=1e-12)
        assert r.train_res_accuracy == pytest.approx(rows[rows["at_train_res"]]["accuracy"].mean(), abs=1e-12)
    md = (small / "report.md").read_text().split("## Per seed")[1].split("\n## ")[0]
    first = table.iloc[0]
    assert (f"| {first['title']} | abs_position | {first['seed']} | 1.000 | yes | "
            f"{100 * first['train_res_accuracy']:.1f} | {100 * first['grid_accuracy']:.1f} |") in md
    assert "| RoPE axial | abs_position | 1 | failed |" in md


def test_navit_fig10a_csv_is_in_percent(small):
    navit = pd.read_csv(small / "navit_fig10a.csv").set_index("variant")
    metrics = pd.read_csv(small / "metrics.csv")
    squares = metrics[(metrics["eval_height"] == metrics["eval_width"]) & (metrics["variant"] == "rope_axial")
                      & (metrics["seed"] != 1)]
    average = squares.groupby("seed")["accuracy"].mean()
    assert navit.at["rope_axial", "average_mean_pct"] == pytest.approx(100 * average.mean(), abs=1e-10)
    assert navit.at["rope_axial", "best_mean_pct"] == pytest.approx(
        100 * squares.groupby("seed")["accuracy"].max().mean(), abs=1e-10)
    ours = [c for c in navit.columns if c.startswith(("average_", "best_")) and not c.endswith("_n")]
    assert ours and all(c.endswith("_pct") for c in ours)
    assert navit[[c for c in ours if "mean" in c]].min().min() > 1  # no fraction left


# ---- chance, clipping, names -----------------------------------------------------------------

def test_chance_is_each_records_num_classes_derived_for_older_cells(tmp_path):
    """Chance = 1 / the CellRecord's num_classes; a cell file from before that field gets it (and
    its task) from the config it stores (bench.store), None when the config does not tell."""
    out = small_store(tmp_path, labels=("rope_axial",), seeds=(0,))
    results = load_results(out)
    assert results.cells["num_classes"].tolist() == [9] and (results.metrics["chance"] == 1 / 9).all()
    path = out / "cells" / "rope_axial__abs_position__0.json"
    cell = json.loads(path.read_text())
    path.write_text(json.dumps({**cell, "num_classes": 7}))   # the record's own count wins
    assert (load_results(out).metrics["chance"] == 1 / 7).all()
    older = {k: v for k, v in cell.items() if k not in ("task", "num_classes")}
    expected = {"abs_position": 9, "rel_position": 4, "control": 4}
    for task, n in expected.items():
        path.write_text(json.dumps({**older, "config": {**older["config"], "data": {"name": "synthetic", "task": task}}}))
        Store(out).rebuild_metrics()   # its rows carry the task
        cells = load_results(out).cells
        assert cells[["task", "num_classes"]].values.tolist() == [[task, n]] and n == len(CLASS_NAMES[task])
    path.write_text(json.dumps({**older, "config": {**older["config"], "data": {"name": "imagefolder", "root": "x"}}}))
    Store(out).rebuild_metrics()
    results = load_results(out)
    assert results.cells["task"].tolist() == ["imagefolder"] and results.cells["num_classes"].isna().all()
    assert results.metrics["chance"].isna().all()


def _horizontal_levels(ax) -> set[float]:
    """The levels of the axis-wide horizontal lines (axhline: x from 0 to 1 in axes units)."""
    lines = [l for l in ax.get_lines() if list(l.get_xdata()) == [0, 1]]
    return {round(float(l.get_ydata()[0]), 6) for l in lines if len(set(l.get_ydata())) == 1}


@pytest.mark.parametrize("stem", ["accuracy_vs_side", "accuracy_vs_aspect", "combine_modes"])
def test_accuracy_figures_draw_the_chance_line(small, stem):
    fig = drawn(load_results(small), stem)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert panels and all(round(100 / 9, 6) in _horizontal_levels(ax) for ax in panels)
    plt.close(fig)


def test_loss_figure_draws_ln_classes(small):
    fig = drawn(load_results(small), "training_loss")
    assert all(round(math.log(9), 6) in _horizontal_levels(ax) for ax in fig.axes if ax.get_visible())
    plt.close(fig)


def test_bands_and_intervals_are_clipped_to_0_100(tmp_path):
    # seeds at 100%, 100% and 40%: mean 80, std 35, a 95% t-interval from -6 to 166
    out = small_store(tmp_path, accuracy=lambda l, s, h, w: (1.0, 1.0, 0.4)[s])
    results = load_results(out)
    fig = drawn(results, "accuracy_vs_side")
    bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    ys = np.concatenate([p.vertices[:, 1] for c in bands for p in c.get_paths()])
    assert bands and ys.max() == pytest.approx(100) and ys.min() >= 0
    assert all(ax.get_ylim()[1] <= 103 for ax in fig.axes)
    plt.close(fig)
    fig = drawn(results, "ranking")
    whiskers = [x for ax in fig.axes for l in ax.get_lines() if len(l.get_xdata()) == 2
                and l.get_ydata()[0] == l.get_ydata()[1] for x in l.get_xdata()]
    assert whiskers and min(whiskers) == 0 and max(whiskers) == 100
    assert all(ax.get_xlim()[1] <= 103 for ax in fig.axes if ax.get_visible())
    plt.close(fig)


def test_display_names_and_declared_families():
    stack = display_name("factorized_abs_learned", "factorized_abs_learned+stack")
    assert stack == "Factorized abs. learned (stack)"
    assert display_name("rope_axial", "rope_axial+theta=10.0") == "RoPE axial (theta 10.0)"
    assert display_name("rope_axial", "my_rope") == "RoPE axial (my_rope)"
    assert display_name("gone_variant", "gone_variant") == "gone_variant"  # an old run's name

    class NewIdea(PositionalEmbedding):
        title, family = "New idea", "factorized absolute"
    with mock.patch.dict(_REGISTRY, {"zz_new_idea": NewIdea}):
        assert family_of("zz_new_idea") == "factorized absolute"
        assert display_name("zz_new_idea", "zz_new_idea") == "New idea"
    assert family_of("zz_new_idea") == "other"


def test_every_figure_and_table_uses_display_names(small):
    md = (small / "report.md").read_text()
    tables = md.split("## Findings")[1].split("## Figures")[0].split("## Summary", 1)[1]
    assert "Factorized abs. learned (stack)" in tables and "`factorized_abs_learned+stack`" not in tables
    svg = (small / "figures" / "accuracy_vs_side__abs_position.svg").read_text()
    assert "learned (stack)" in svg and "factorized_abs" not in svg
    assert "Factorized absolute" in svg  # the family's title, whole


# ---- figures: registry, formats, task ----------------------------------------------------------

def test_figures_are_numbered_by_the_registry_in_three_formats(small):
    md = (small / "report.md").read_text()
    stems = [s.stem for s in REGISTRY]
    assert len(set(stems)) == len(stems)
    for number, spec in enumerate(REGISTRY, 1):
        assert f"![Figure {number}](figures/{spec.stem}__abs_position.png)" in md
        for fmt in ("png", "pdf", "svg"):
            assert (small / "figures" / f"{spec.stem}__abs_position.{fmt}").stat().st_size > 1000
        svg = (small / "figures" / f"{spec.stem}__abs_position.svg").read_text()
        assert "Task: abs_position (9 classes, chance 11.1%)" in svg
    captions = re.findall(r"^\*Figure \d+ \(abs_position\)\. (.+)\*$", md, re.M)
    assert len(captions) == len(REGISTRY) and all("abs_position" in c for c in captions)


def test_heatmap_prints_every_cell_and_marks_the_training_range(small):
    results = load_results(small)
    fig = drawn(results, "accuracy_heatmaps")
    panel = next(ax for ax in fig.axes if ax.get_title(loc="left").startswith("RoPE axial"))
    texts = {t.get_text() for t in panel.texts}
    m = results.metrics
    cell = m[(m["variant"] == "rope_axial") & (m["nominal_side"] == 128) & (m["nominal_aspect"] == 2.0)]
    assert f"{100 * cell['accuracy'].mean():.0f}" in texts
    assert len(panel.texts) == 9  # 3 sides x 3 aspects, every one printed
    assert [t.get_text() for t in panel.get_xticklabels()] == ["1:2", "1:1", "2:1"]
    plt.close(fig)


# ---- report workflow: smoke banner, provenance, redraw, html ---------------------------------

def test_smoke_banner_from_the_config_key(tmp_path):
    out = small_store(tmp_path / "run", labels=("vit_1d_interp", "rope_axial"), seeds=(0,))
    write_report(out, {**CONFIG, "smoke": True}, ENV)
    md = (out / "report.md").read_text()
    assert md.startswith("# NaViT Bench report\n\n> **Smoke run: do not cite.** ")
    assert '<div class="note"><strong>Smoke run: do not cite.</strong>' in (out / "report.html").read_text()
    assert "SMOKE RUN: not converged, do not cite." in (out / "figures" / "ranking__abs_position.svg").read_text()
    write_report(out, CONFIG, ENV)
    assert "Smoke run" not in (out / "report.md").read_text()
    assert "SMOKE RUN" not in (out / "figures" / "ranking__abs_position.svg").read_text()
    for path in (out / "cells").glob("*.json"):  # rebuilt from the folder alone: the cells' config
        cell = json.loads(path.read_text())
        path.write_text(json.dumps({**cell, "config": {**cell["config"], "smoke": True}}))
    write_report(out)
    assert "> **Smoke run: do not cite.**" in (out / "report.md").read_text()


def test_provenance_from_run_json_without_temporary_paths(tmp_path):
    out = small_store(tmp_path / "q16", labels=("vit_1d_interp", "rope_axial"), seeds=(0,))
    (out / "run.json").write_text(json.dumps({
        "command": f"python run_all.py --config experiments/quick.yaml --out {out} --log={tmp_path}/x.log",
        "started": "2026-03-05T13:50:00+00:00", "finished": "2026-03-05T14:02:05+00:00",
        "wall_time_s": 725.4, "git_commit": "feedbee"}))
    write_report(out, CONFIG, ENV)
    md = (out / "report.md").read_text()
    head = md.split("## Findings")[0]
    assert ("Results folder `q16`; made by `python run_all.py --config experiments/quick.yaml --out q16 "
            "--log=x.log`; commit `feedbee`; finished 2026-03-05 14:02 UTC; wall time 12 min 5 s.") in head
    readme = tmp_path / "README.md"
    readme.write_text(f"{START}\n{END}\n")
    update_readme(out, readme, tmp_path / "img")
    for text in (md, (out / "report.html").read_text(), readme.read_text()):
        assert str(tmp_path) not in text and "/tmp" not in text
    assert "wall time 12 min 5 s" in readme.read_text()


def test_provenance_without_run_json_uses_the_cells(small):
    head = (small / "report.md").read_text().split("## Findings")[0]
    cells = [json.loads(p.read_text()) for p in (small / "cells").glob("*.json")]
    total = sum(c["train_time_s"] + c.get("eval_time_s", 0) for c in cells)
    assert f"commit `0123abc`; last cell written " in head
    assert f"; {int(total // 60)} min {round(total % 60)} s of training and evaluation summed over cells" in head


def test_redraw_without_readme_uses_the_cells_config(small, tmp_path, monkeypatch):
    out = shutil.copytree(small, tmp_path / "run")
    for name in ("report.md", "summary__abs_position.tex", "figures/ranking__abs_position.svg"):
        (out / name).unlink()
    monkeypatch.chdir(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\n")
    assert cli_main(["--out", str(out)]) == 0
    assert readme.read_text() == f"intro\n{START}\nold\n{END}\n"
    for name in ("report.md", "summary__abs_position.tex", "figures/ranking__abs_position.svg"):
        assert (out / name).is_file()
    md = (out / "report.md").read_text()
    config = md.split("## Experiment config")[1].split("\n## ")[0]
    assert "The config stored in the cells" in config and "task: abs_position" in config
    # the same numbers as the runner's report
    assert (out / "summary.csv").read_text() == (small / "summary.csv").read_text()


def test_html_has_contents_collapsed_config_and_scrolling_tables(small):
    page = (small / "report.html").read_text()
    headings = re.findall(r'<h2 id="([^"]+)">', page)
    assert len(headings) >= 10 and '<nav class="toc">' in page
    for anchor in headings:
        assert f'<a href="#{anchor}">' in page
    assert re.search(r"<details><summary>config \(YAML\)</summary>\n<pre><code>model:", page)
    assert ".wide { overflow-x: auto" in page
    assert page.count("<table>") == page.count('<div class="wide"><table>')


def test_one_seed_grammar(tmp_path):
    out = small_store(tmp_path, labels=("rope_axial",), seeds=(0,), aspects=(1.0,))
    write_report(out, CONFIG, ENV)
    md = (out / "report.md").read_text()
    assert "1 variant with 1 seed each was evaluated on 3 eval sizes" in md
    assert "1 seeds" not in md and "1 variants" not in md


# ---- compare -----------------------------------------------------------------------------------

def _base(label, seed, h, w):
    return 0.5 + 0.02 * math.log2(h * w) / 2 + 0.01 * seed


@pytest.fixture
def two_runs(tmp_path):
    """A and B: rope_axial +5 pp in B, nope only in A, vit seed 3 only in B, rope_axial seed 2
    failed in B, one eval size of vit seed 0 missing in B."""
    a = small_store(tmp_path / "A", labels=("vit_1d_interp", "rope_axial", "nope"), accuracy=_base)
    b = small_store(tmp_path / "B", labels=("vit_1d_interp", "rope_axial"), seeds=(0, 1, 2, 3),
                    failed={("rope_axial", 2)},
                    accuracy=lambda l, s, h, w: _base(l, s, h, w) + (0.05 if l == "rope_axial" else 0))
    (b / "cells" / "rope_axial__abs_position__3.json").unlink()
    metrics = pd.read_csv(b / "metrics.csv")
    drop = (metrics["variant"] == "rope_axial") & (metrics["seed"] == 3)
    drop |= (metrics["variant"] == "vit_1d_interp") & (metrics["seed"] == 0) & (metrics["eval_height"] == 128) \
        & (metrics["eval_width"] == 128)
    metrics[~drop].to_csv(b / "metrics.csv", index=False)
    return a, b


def test_compare_pairs_matching_cells_and_lists_the_rest(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "cmp"
    assert cli_main(["--compare", str(a), str(b), "--out-compare", str(out)]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "compare.csv").set_index("variant")
    assert list(table.index) == ["vit_1d_interp", "rope_axial"]
    assert table.at["rope_axial", "grid_diff_mean"] == pytest.approx(0.05)
    assert table.at["rope_axial", "seeds_paired"] == 2 and table.at["rope_axial", "grid_diff_n"] == 2
    assert table.at["vit_1d_interp", "grid_diff_mean"] == pytest.approx(0, abs=1e-12)
    assert table.at["vit_1d_interp", "seeds_paired"] == 3
    # B's whole-grid mean over the paired cells only, recomputed from B's metrics.csv
    mb = pd.read_csv(b / "metrics.csv")
    rope = mb[(mb["variant"] == "rope_axial") & mb["seed"].isin([0, 1])]
    assert table.at["rope_axial", "b_grid_mean"] == pytest.approx(rope.groupby("seed")["accuracy"].mean().mean())
    unmatched = pd.read_csv(out / "compare_unmatched.csv")
    listed = {(r.variant, r.seed): (r.where, r.detail if isinstance(r.detail, str) else "")
              for r in unmatched.itertuples()}
    assert listed == {
        ("nope", 0): ("only in A", ""), ("nope", 1): ("only in A", ""), ("nope", 2): ("only in A", ""),
        ("vit_1d_interp", 3): ("only in B", ""),
        ("rope_axial", 2): ("not paired", "status in A: ok, in B: failed"),
        ("vit_1d_interp", 0): ("eval sizes differ", "1 only in A, 0 only in B"),
    }
    md = (out / "compare.md").read_text()
    assert printed == md
    assert "| RoPE axial | abs_position | 2 |" in md and "+5.0 ± 0.0 (2/2 +)" in md and "| only in A |" in md
    for fmt in ("png", "pdf", "svg"):
        assert (out / f"compare__abs_position.{fmt}").stat().st_size > 1000


def test_compare_default_folder_is_inside_b(two_runs):
    a, b = two_runs
    result = compare_runs(a, b)
    assert (b / "compare_vs_A" / "compare.csv").is_file() and len(result.table) == 2


@pytest.mark.parametrize("damage", ["missing", "empty", "same"])
def test_compare_bad_input_is_one_line_and_writes_nothing(two_runs, tmp_path, capsys, damage):
    a, b = two_runs
    if damage == "missing":
        a = tmp_path / "nowhere"
    elif damage == "empty":
        a = tmp_path / "empty"
        a.mkdir()
    else:
        a = b
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert cli_main(["--compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_cli_bad_flags_are_one_line(capsys):
    assert cli_main([]) == 2
    assert cli_main(["--compare", "a", "b", "--readme", "README.md"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
