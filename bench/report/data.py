"""Load and check the runner's results store: DIR/cells/*.json and DIR/metrics.csv.

metrics.csv is the source of every accuracy; the cells (read as the store's CellRecords) add
what a row does not carry (status, failure reason, parameter count, training range, options,
training losses, the config they were made with, and which test images each eval size got
right). The two must describe the same ok cells with the same accuracies: a mismatch means a
stale metrics.csv, and a report built on it would mislead.

Every comparison of variants happens within one task: ``Results.of_task`` is the view the
tables, findings and figures work on.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import positional
from ..errors import BenchError
from ..plan import default_baseline
from ..posembed import list_variants, variant_info
from ..store import CELL_AXES, METRIC_TYPES, METRICS_COLUMNS, CellRecord, Store
from .stats import learned_margin

CELL_KEYS = [*CELL_AXES, "seed"]   # what tells one cell from another

# Families in display order; a variant declares its own (posembed's ``family`` attribute), and a
# family not listed here comes after these, in registry order.
FAMILY_ORDER = ("1D learned", "2D joint learned", "factorized absolute", "factorized fractional",
                "rotary (RoPE)", "relative bias", "none")
OTHER_FAMILY = "other"  # the base class's default, and the family of an unregistered name
COMBINE_MODES = ("sum", "stack", "product")  # "sum" is the plain label's default

# "Extreme aspect" = elongation max(W/H, H/W) of 2:1 or more; 1.9 rather than 2 because eval
# sides are rounded to whole patches (e.g. 48x88 stands for 1:2).
EXTREME_ELONGATION = 1.9


def family_of(base_variant: str) -> str:
    return variant_info(base_variant).family


def display_name(base_variant: str, label: str) -> str:
    """'Factorized abs. learned (stack)': the variant's title, then the options its label names.

    The label, not the stored options, says what was chosen: cells store every option resolved
    (e.g. a table size fitted to the grid), while a default label lists only those the config set
    ('factorized_abs_learned+stack', 'rope_axial+theta=10'). A label of the user's own is shown
    as it is.
    """
    title = variant_info(base_variant).title or base_variant
    if label == base_variant:
        return title
    if label.startswith(base_variant + "+"):
        chosen = label[len(base_variant) + 1:].split("+")
        return f"{title} ({', '.join(part.replace('=', ' ') for part in chosen)})"
    return f"{title} ({label})"


@dataclass(frozen=True)
class Results:
    cells: pd.DataFrame    # one row per cell, ok and failed, with "learned" (see _learned)
    metrics: pd.DataFrame  # eval rows of ok cells with every cell axis, plus "extreme", "nominal_side",
    #                        "nominal_aspect", the cell's "chance" (NaN when unknown) and "learned"
    variants: pd.DataFrame  # one row per label, in display order (title, family, base, combine
    #                         mode, "about" and "paper": the variant's one-line summary and source);
    #                         its counts, chance and ranking hold for one task (of_task)
    losses: pd.DataFrame   # training loss per (variant, task, seed, step) of ok cells
    config: dict           # the run's resolved config (Store.config without the runner's)
    baseline: str | None   # the label every variant is compared with (the config's ``baseline``)
    hits: np.ndarray       # bool [metrics row, test image]: which images that row got right;
    #                        all False for a row whose cell predates them (metrics "has_hits")

    @property
    def failed(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "failed"]

    @property
    def ok_variants(self) -> list[str]:
        """Labels with at least one ok cell, in display order."""
        return [v for v in self.variants.index if self.variants.at[v, "seeds_ok"] > 0]

    @property
    def ranked_variants(self) -> list[str]:
        """Of one task's variants, those ranked (every ok seed learned, not the floor), in display order."""
        return [v for v in self.ok_variants if self.variants.at[v, "ranked"]]

    @property
    def tasks(self) -> list[str]:
        """The tasks of the cells, in the config's order."""
        listed = ((self.config.get("data") or {}).get("task")) or []
        listed = [listed] if isinstance(listed, str) else list(listed)
        present = set(self.cells["task"])
        return sorted(present, key=lambda t: (listed.index(t) if t in listed else len(listed), t))

    def of_task(self, task: str) -> "Results":
        """The view of one task: every comparison of variants happens within it."""
        keep = (self.metrics["task"] == task).to_numpy()
        cells = self.cells[self.cells["task"] == task].reset_index(drop=True)
        return dataclasses.replace(self, cells=cells, metrics=self.metrics[keep].reset_index(drop=True),
                                   variants=_variant_table(cells), hits=self.hits[keep],
                                   losses=self.losses[self.losses["task"] == task].reset_index(drop=True))

    def flag(self, variant: str) -> str:
        """Why a variant of one task is not ranked ('' when it is): it is the floor (no positional
        information on a positional task), or some of its seeds did not learn."""
        info = self.variants.loc[variant]
        missed = int(info["seeds_ok"] - info["seeds_learned"])
        parts = (["floor: no positional information"] if info["floor"] else []) + (
            [f"{missed}/{int(info['seeds_ok'])} {'seed' if info['seeds_ok'] == 1 else 'seeds'} did not learn"]
            if missed else [])
        return "; ".join(parts)

    @property
    def smoke(self) -> bool:
        """A smoke run (config key ``smoke``): its report says it is not to be cited."""
        return bool(self.config.get("smoke"))

    def title(self, variant: str) -> str:
        """The label's display name; a label without cells (a baseline not run yet) as it is."""
        return str(self.variants.at[variant, "title"]) if variant in self.variants.index else variant

    def task_text(self) -> str:
        """'Task: abs_position (9 classes, chance 11.1%)', for figure headers and captions."""
        parts = []
        for task in self.tasks:
            n = self.cells.loc[self.cells["task"] == task, "num_classes"].dropna()
            parts.append(f"{task} ({int(n.iloc[0])} classes, chance {100 / n.iloc[0]:.1f}%)"
                         if len(n) else task)
        return ("Task: " if len(parts) == 1 else "Tasks: ") + ", ".join(parts)


def load_results(out_dir: Path, config: dict | None = None) -> Results:
    """``config``: the run's resolved config, when the caller has it (the runner); by default
    the folder's (``Store.config``: what the cells hold, with the run's own keys from config.json).
    A config without a ``baseline`` key (a folder from before the key) gets the plan's default."""
    store = Store(out_dir)
    records = _read_records(store)
    cells = pd.DataFrame([_cell_row(record) for record in records])
    _check_cells(cells, store.cells_dir)
    config = store.config(records) if config is None else config
    metrics = _match(_load_metrics(store.metrics_path), cells, store.metrics_path)
    _check_reference(metrics, store.metrics_path)
    elongation = np.maximum(metrics["aspect"], 1 / metrics["aspect"])
    metrics = metrics.assign(extreme=elongation >= EXTREME_ELONGATION,
                             nominal_side=_nominal_sides(metrics))
    metrics = metrics.assign(nominal_aspect=_nominal_aspects(metrics, config))
    cells = _learned(cells, metrics)
    metrics = metrics.merge(cells[[*CELL_KEYS, "chance", "learned"]], on=CELL_KEYS, how="left")
    hits, has_hits = _hits(metrics, records, store.metrics_path)
    variants = _variant_table(cells)
    baseline = (config["baseline"] if "baseline" in config
                else default_baseline(zip(variants.index, variants["base_variant"])))
    return Results(cells, metrics.assign(has_hits=has_hits), variants, _losses(records), config, baseline, hits)


def _learned(cells: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Each cell's accuracy at its training resolution and whether it learned: an ok cell did not
    when that accuracy is at most chance + learned_margin(chance, its test images). A cell whose
    chance is unknown (an image folder from before num_classes) counts as learned."""
    reference = metrics[metrics["at_train_res"]].groupby(CELL_KEYS)["accuracy"].mean()
    accuracy = reference.reindex(pd.MultiIndex.from_frame(cells[CELL_KEYS])).to_numpy()
    margin = np.array([learned_margin(c, n) for c, n in zip(cells["chance"], cells["images"])])
    learned = (cells["status"] == "ok").to_numpy() & ~(accuracy <= cells["chance"].to_numpy() + margin)
    return cells.assign(train_res_accuracy=accuracy, learned=learned)


def _hits(metrics: pd.DataFrame, records: list[CellRecord], path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(bool [row, test image], bool [row]): each metrics row's hits from its cell's record, and
    whether it has them. BenchError when a row's accuracy is not that of its hits (a stale
    metrics.csv)."""
    by_key = {(cell.variant, cell.task, cell.seed, row.point.eval_height, row.point.eval_width): row.score.hits
              for cell in records if cell.status == "ok" for row in cell.eval}
    keys = zip(*(metrics[c] for c in [*CELL_KEYS, "eval_height", "eval_width"]))
    rows = [by_key.get(key) for key in keys]
    counts = {h.count for h in rows if h is not None}
    if len(counts) > 1:
        raise BenchError(f"{path.parent / 'cells'}: cells of {len(counts)} test-set sizes; one folder holds one "
                         f"experiment")
    hits = np.zeros((len(rows), counts.pop() if counts else 0), bool)
    for i, h in enumerate(rows):
        if h is not None:
            hits[i] = h.array()
    has = np.array([h is not None for h in rows], bool)
    stale = has & ~np.isclose(hits.mean(1) if hits.shape[1] else 0.0, metrics["accuracy"].to_numpy(), atol=1e-9)
    if stale.any():
        row = metrics.iloc[int(np.argmax(stale))]
        raise BenchError(f"{path}: accuracy of {row['variant']} {row['task']} seed {row['seed']} at "
                         f"{row['eval_height']}x{row['eval_width']} differs from its cell's; metrics.csv is stale, "
                         f"rebuild it from cells/")
    return hits, has


def _nominal_sides(metrics: pd.DataFrame) -> np.ndarray:
    """Each row's equal-area group: the nearest square eval side, within a quarter octave.

    ``side`` is round(sqrt(H*W)) of sizes already rounded to whole patches, so the sizes of one
    nominal side at several aspect ratios come out as e.g. 63, 64 and 65 px.
    """
    squares = np.sort(metrics.loc[metrics["eval_height"] == metrics["eval_width"], "side"].unique())
    if not len(squares):
        return np.full(len(metrics), np.nan)
    dist = np.abs(np.log2(metrics["side"].to_numpy(float)[:, None] / squares[None, :]))
    return np.where(dist.min(1) <= 0.25, squares[dist.argmin(1)], np.nan)


def _nominal_aspects(metrics: pd.DataFrame, config: dict) -> np.ndarray:
    """Each row's aspect ratio as the grid names it: the nearest (in log ratio) of the config's
    ``eval.grid.aspects``, else of the aspects measured at the largest side. Sides rounded to
    whole patches move small sizes off their nominal ratio (2:1 at 8 px is 12x8 = 1.5:1)."""
    nominal = ((config.get("eval") or {}).get("grid") or {}).get("aspects")
    if not nominal:
        largest = metrics.loc[metrics["nominal_side"] == metrics["nominal_side"].max(), "aspect"]
        nominal = largest.unique() if len(largest) else metrics["aspect"].unique()
    nominal = np.asarray(sorted(nominal), dtype=float)
    if not len(nominal):
        return np.full(len(metrics), np.nan)
    dist = np.abs(np.log(metrics["aspect"].to_numpy(float)[:, None] / nominal[None, :]))
    return nominal[dist.argmin(1)]


def _read_records(store: Store) -> list[CellRecord]:
    """Every cell file's record, sorted by file name."""
    records = list(store.cells().values())  # raises StoreError (a BenchError) naming a file that is not a cell
    if not records:
        raise BenchError(f"{store.cells_dir}: no result cells (*.json); is this a results directory?")
    return records


def _check_cells(cells: pd.DataFrame, folder: Path) -> None:
    """One file per cell."""
    dup = cells[cells.duplicated(CELL_KEYS, keep=False)]
    if len(dup):
        raise BenchError(f"{folder}: variant {dup['variant'].iloc[0]} task {dup['task'].iloc[0]} seed "
                         f"{dup['seed'].iloc[0]} appears in more than one cell file")


def _losses(records: list[CellRecord]) -> pd.DataFrame:
    frames = [pd.DataFrame({"variant": cell.variant, "task": cell.task, "seed": cell.seed,
                            "step": np.arange(1, len(cell.train_losses) + 1),
                            "loss": np.asarray(cell.train_losses, dtype=float)})
              for cell in records if cell.status == "ok" and cell.train_losses]
    if not frames:
        return pd.DataFrame({"variant": pd.Series(dtype=str), "task": pd.Series(dtype=str),
                             "seed": pd.Series(dtype=int), "step": pd.Series(dtype=int),
                             "loss": pd.Series(dtype=float)})
    return pd.concat(frames, ignore_index=True)


def _cell_row(cell: CellRecord) -> dict:
    return {**{axis: getattr(cell, axis) for axis in CELL_AXES},
            "base_variant": cell.base_variant, "seed": cell.seed, "status": cell.status,
            "reason": cell.reason or "", "title": display_name(cell.base_variant, cell.variant),
            "combine": str(cell.options.get("combine", "sum")), "param_count": cell.param_count,
            "train_min_side": cell.train_resolution.min_side, "train_max_side": cell.train_resolution.max_side,
            # the record's num_classes (derived from the stored config for files from before it)
            "num_classes": cell.num_classes, "chance": 1 / cell.num_classes if cell.num_classes else math.nan,
            "images": _test_images(cell),
            "steps": cell.steps, "final_train_loss": cell.final_train_loss, "time_s": cell.train_time_s + cell.eval_time_s,
            "device": cell.device, "world_size": cell.world_size}


def _test_images(cell: CellRecord) -> float:
    """The cell's test-set size: its hits', else (a cell from before them) its synthetic config's
    test_size; NaN when neither tells."""
    hits = next((row.score.hits for row in cell.eval if row.score.hits is not None), None)
    if hits is not None:
        return hits.count
    data = cell.config.get("data", {})
    return data.get("test_size", math.nan) if data.get("name") == "synthetic" else math.nan


def _load_metrics(path: Path) -> pd.DataFrame:
    try:
        metrics = pd.read_csv(path)
    except FileNotFoundError:
        raise BenchError(f"{path}: missing; the runner writes it from cells/") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BenchError(f"{path}: unreadable ({reason})") from None
    missing = [c for c in METRICS_COLUMNS if c not in metrics.columns]
    if missing:
        raise BenchError(f"{path}: missing columns {', '.join(missing)}; if it predates them, rebuild it "
                         f"from cells/ (python run_all.py --out DIR --report-only)")
    metrics = metrics[METRICS_COLUMNS].copy()
    for col in METRICS_COLUMNS:
        if metrics[col].isna().any():
            row = int(metrics.index[metrics[col].isna()][0]) + 2  # header is line 1
            raise BenchError(f"{path}: line {row}: empty {col}")
    for col, kind in METRIC_TYPES.items():   # each column as the record it comes from types it
        if kind in (int, float):
            try:
                metrics[col] = pd.to_numeric(metrics[col]).astype(kind)
            except (ValueError, TypeError) as exc:
                raise BenchError(f"{path}: non-numeric value in column {col} ({exc})") from None
        elif kind is bool:
            metrics[col] = _as_bool(metrics[col], path, col)
        else:
            metrics[col] = metrics[col].astype(str)
            choices = typing.get_args(kind)
            bad = sorted(set(metrics[col]) - set(choices)) if choices else []
            if bad:
                raise BenchError(f"{path}: {col} must be {'/'.join(choices)}, got {bad[0]!r}")
    return metrics


def _as_bool(col: pd.Series, path: Path, name: str) -> pd.Series:
    if col.dtype == bool:
        return col
    words = col.astype(str).str.strip().str.lower()
    known = {"true": True, "1": True, "false": False, "0": False}
    bad = ~words.isin(list(known))
    if bad.any():
        raise BenchError(f"{path}: column {name} must be true/false, got {col[bad].iloc[0]!r}")
    return words.map(known).astype(bool)


def _match(metrics: pd.DataFrame, cells: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The eval rows of ok cells; any other disagreement between the two files is an error."""
    status = cells.set_index(CELL_KEYS)["status"]
    keys = pd.MultiIndex.from_frame(metrics[CELL_KEYS])
    unknown = ~keys.isin(status.index)
    if unknown.any():
        variant, task, seed = keys[unknown][0]
        raise BenchError(f"{path}: rows for {variant} {task} seed {seed} have no cell in cells/; "
                         f"metrics.csv is stale, rebuild it from cells/")
    ok_keys = status.index[status == "ok"]
    without_rows = ok_keys[~ok_keys.isin(keys)]
    if len(without_rows):
        variant, task, seed = without_rows[0]
        raise BenchError(f"{path}: no rows for ok cell {variant} {task} seed {seed}; "
                         f"metrics.csv is stale, rebuild it from cells/")
    return metrics[keys.isin(ok_keys)].reset_index(drop=True)


def _check_reference(metrics: pd.DataFrame, path: Path) -> None:
    """Relative accuracy needs exactly one training-resolution size per variant."""
    sizes = metrics.loc[metrics["at_train_res"], ["variant", "eval_height", "eval_width"]]
    counts = sizes.drop_duplicates()["variant"].value_counts()
    if (counts > 1).any():
        raise BenchError(f"{path}: {counts.index[counts > 1][0]} has more than one at_train_res size")


def _variant_table(cells: pd.DataFrame) -> pd.DataFrame:
    ok = cells[cells["status"] == "ok"]
    rows = []
    for variant, group in cells.groupby("variant", sort=False):
        good = ok[ok["variant"] == variant]
        first = (good if len(good) else group).sort_values("seed").iloc[0]
        family = family_of(first["base_variant"])
        learned = int(good["learned"].sum())
        floor = family == "none" and positional(first["task"])
        rows.append({
            "variant": variant, "base_variant": first["base_variant"], "title": first["title"],
            "family": family, "combine": first["combine"],
            "about": variant_info(first["base_variant"]).summary,
            "paper": variant_info(first["base_variant"]).paper,
            "param_count": first["param_count"], "seeds_ok": len(good),
            "seeds_failed": len(group) - len(good), "seeds_learned": learned, "floor": floor,
            "ranked": len(good) > 0 and learned == len(good) and not floor,
            "train_min_side": first["train_min_side"], "train_max_side": first["train_max_side"],
            "task": first["task"], "chance": first["chance"],
        })
    table = pd.DataFrame(rows)
    registry = {name: i for i, name in enumerate(list_variants())}  # learned, sincos, fourier...
    declared = dict.fromkeys([*FAMILY_ORDER, *map(family_of, registry), *table["family"]])
    families = [f for f in declared if f != OTHER_FAMILY] + [OTHER_FAMILY]
    combine_rank = {m: i for i, m in enumerate(COMBINE_MODES)}
    order = table.assign(
        _f=table["family"].map(families.index),
        _b=table["base_variant"].map(lambda b: registry.get(b, len(registry))),
        _c=table["combine"].map(lambda c: combine_rank.get(c, len(COMBINE_MODES))),
    ).sort_values(["_f", "_b", "base_variant", "_c", "variant"])
    return order.drop(columns=["_f", "_b", "_c"]).set_index("variant")
