"""Load and check the runner's results store: DIR/cells/*.json and DIR/metrics.csv.

metrics.csv is the source of every accuracy; the cells (read as the store's CellRecords) add
what a row does not carry (status, failure reason, parameter count, training range, options, and
the cell axes metrics.csv lacks, e.g. the task). The two must describe the same ok cells: a
mismatch means a stale metrics.csv, and a report built on it would mislead.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import BenchError
from ..posembed import list_variants
from ..store import CELL_AXES, METRIC_TYPES, METRICS_COLUMNS, CellRecord, Store

# (family, registry-name prefix) in display order. Matching on the prefix puts a newly
# registered variant into its family without editing this table.
FAMILIES = (
    ("1D learned", "vit_1d"),
    ("2D joint", "pix2struct"),
    ("factorized absolute", "factorized_abs"),
    ("factorized fractional", "factorized_frac"),
    ("rope", "rope"),
    ("none", "nope"),
)
OTHER_FAMILY = "other"
COMBINE_MODES = ("sum", "stack", "product")  # "sum" is the plain label's default

# "Extreme aspect" = elongation max(W/H, H/W) of 2:1 or more; 1.9 rather than 2 because eval
# sides are rounded to whole patches (e.g. 48x88 stands for 1:2).
EXTREME_ELONGATION = 1.9



def family_of(base_variant: str) -> str:
    return next((name for name, prefix in FAMILIES if base_variant.startswith(prefix)), OTHER_FAMILY)


@dataclass(frozen=True)
class Results:
    cells: pd.DataFrame    # one row per cell, ok and failed
    metrics: pd.DataFrame  # eval rows of ok cells with every cell axis, plus "extreme" (aspect) and "nominal_side"
    variants: pd.DataFrame  # one row per label, in display order (family, base, combine mode)
    baseline: str | None   # the label every variant is compared with (the experiment's ``baseline``)

    @property
    def failed(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "failed"]

    @property
    def ok_variants(self) -> list[str]:
        """Labels with at least one ok cell, in display order."""
        return [v for v in self.variants.index if self.variants.at[v, "seeds_ok"] > 0]


def load_results(out_dir: Path, baseline: str | None) -> Results:
    store = Store(out_dir)
    cells = _load_cells(store)
    metrics = _match(_load_metrics(store.metrics_path), cells, store.metrics_path)
    _check_reference(metrics, store.metrics_path)
    elongation = np.maximum(metrics["aspect"], 1 / metrics["aspect"])
    metrics = metrics.assign(extreme=elongation >= EXTREME_ELONGATION,
                             nominal_side=_nominal_sides(metrics))
    return Results(cells, _with_axes(metrics, cells), _variant_table(cells), baseline)


def _with_axes(metrics: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The cell axes that metrics.csv does not carry, taken from each row's cell."""
    missing = [axis for axis in CELL_AXES if axis not in metrics.columns]
    return metrics.merge(cells[["variant", "seed", *missing]], on=["variant", "seed"], how="left")


def _other_axes_single(cells: pd.DataFrame, folder: Path) -> None:
    """The tables, findings and figures compare variants within one value of every other cell
    axis; until they keep tasks apart, results of several tasks are refused, not averaged."""
    for axis in (a for a in CELL_AXES if a != "variant"):
        values = sorted(cells[axis].unique())
        if len(values) > 1:
            raise BenchError(f"{folder}: holds cells of several {axis}s ({', '.join(map(str, values))}); "
                             f"the report compares variants within one {axis}")


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


def _load_cells(store: Store) -> pd.DataFrame:
    records = store.cells()  # raises StoreError (a BenchError) naming a file that is not a cell
    if not records:
        raise BenchError(f"{store.cells_dir}: no result cells (*.json); is this a results directory?")
    cells = pd.DataFrame([_cell_row(record) for record in records.values()])
    dup = cells[cells.duplicated([*CELL_AXES, "seed"], keep=False)]
    if len(dup):
        raise BenchError(f"{store.cells_dir}: variant {dup['variant'].iloc[0]} seed "
                         f"{dup['seed'].iloc[0]} appears in more than one cell file")
    _other_axes_single(cells, store.cells_dir)
    return cells


def _cell_row(cell: CellRecord) -> dict:
    return {**{axis: getattr(cell, axis) for axis in CELL_AXES},
            "base_variant": cell.base_variant, "seed": cell.seed, "status": cell.status,
            "reason": cell.reason or "", "num_classes": cell.num_classes,
            "combine": str(cell.options.get("combine", "sum")), "param_count": cell.param_count,
            "train_min_side": cell.train_resolution.min_side, "train_max_side": cell.train_resolution.max_side}


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
        raise BenchError(f"{path}: missing columns {', '.join(missing)}")
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
    status = cells.set_index(["variant", "seed"])["status"]
    keys = pd.MultiIndex.from_frame(metrics[["variant", "seed"]])
    unknown = ~keys.isin(status.index)
    if unknown.any():
        variant, seed = keys[unknown][0]
        raise BenchError(f"{path}: rows for {variant} seed {seed} have no cell in cells/; "
                         f"metrics.csv is stale, rebuild it from cells/")
    ok_keys = status.index[status == "ok"]
    without_rows = ok_keys[~ok_keys.isin(keys)]
    if len(without_rows):
        variant, seed = without_rows[0]
        raise BenchError(f"{path}: no rows for ok cell {variant} seed {seed}; "
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
        rows.append({
            "variant": variant, "base_variant": first["base_variant"],
            "family": family_of(first["base_variant"]), "combine": first["combine"],
            "param_count": first["param_count"], "seeds_ok": len(good),
            "seeds_failed": len(group) - len(good),
            "train_min_side": first["train_min_side"], "train_max_side": first["train_max_side"],
        })
    table = pd.DataFrame(rows)
    families = [name for name, _ in FAMILIES] + [OTHER_FAMILY]
    registry = {name: i for i, name in enumerate(list_variants())}  # learned, sincos, fourier...
    combine_rank = {m: i for i, m in enumerate(COMBINE_MODES)}
    order = table.assign(
        _f=table["family"].map(families.index),
        _b=table["base_variant"].map(lambda b: registry.get(b, len(registry))),
        _c=table["combine"].map(lambda c: combine_rank.get(c, len(COMBINE_MODES))),
    ).sort_values(["_f", "_b", "base_variant", "_c", "variant"])
    return order.drop(columns=["_f", "_b", "_c"]).set_index("variant")
