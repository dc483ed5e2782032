"""Estimates with intervals within one task: a variant's accuracy over a regime (a set of eval
sizes), the paired difference of two variants on it, or a variant's drop between two sizes.

Each is a contrast of metrics rows: per seed, the mean accuracy of some rows minus that of
others on the same seed (none for a plain accuracy). Every cell of a task is tested on the same
images, so the same contrast taken image by image (each row's hits, averaged over the sizes and
then the seeds) gives one value per test image: the test-image noise that ``stats.seed_stats``
adds to the seed noise. Cells from before hits were kept give no image values: their interval is
over seeds alone (``SeedStats.image_se`` is NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import Results
from .stats import SeedStats, seed_stats

@dataclass(frozen=True)
class Estimate:
    per_seed: pd.Series   # the contrast in each seed, indexed by seed
    stats: SeedStats      # over those seeds, with the test images' noise when known


def contrast(view: Results, rows: pd.DataFrame, minus: pd.DataFrame | None = None) -> Estimate:
    """Per seed, the mean accuracy of ``rows`` (rows of ``view.metrics``) minus that of ``minus``,
    on the seeds both have; test images paired across the two."""
    seeds, images = _per_seed(view, rows)
    if minus is not None:
        other, other_images = _per_seed(view, minus)
        shared = seeds.index.intersection(other.index)
        seeds = seeds[shared] - other[shared]
        images = None if images is None or other_images is None else {
            s: images[s] - other_images[s] for s in shared}
    pooled = None if images is None or not len(seeds) else np.mean([images[s] for s in seeds.index], axis=0)
    return Estimate(seeds, seed_stats(seeds, pooled))


def _per_seed(view: Results, rows: pd.DataFrame) -> tuple[pd.Series, dict[int, np.ndarray] | None]:
    """Each seed's mean accuracy over ``rows``, and its hits averaged over them (None when a row
    has none)."""
    means = rows.groupby("seed")["accuracy"].mean()
    if not rows["has_hits"].all():
        return means, None
    return means, {seed: view.hits[index].mean(axis=0) for seed, index in rows.groupby("seed").groups.items()}


def regime_rows(view: Results, select, variant: str) -> pd.DataFrame:
    """The variant's metrics rows that the regime (a Subset's select) keeps."""
    m = view.metrics
    return m[(m["variant"] == variant) & select(m)]


def accuracy(view: Results, subset, variant: str) -> Estimate:
    """The variant's accuracy over the regime ``subset``."""
    return contrast(view, regime_rows(view, subset.select, variant))


def difference(view: Results, subset, a: str, b: str) -> Estimate:
    """``a`` minus ``b`` over the regime ``subset``, paired: the same seeds, test images and eval
    sizes (those in the regime for both, when their training ranges differ)."""
    rows_a, rows_b = (regime_rows(view, subset.select, v) for v in (a, b))
    shared = _sizes(rows_a) & _sizes(rows_b)
    return contrast(view, _at(rows_a, shared), _at(rows_b, shared))


def _sizes(rows: pd.DataFrame) -> set[tuple[int, int]]:
    return set(zip(rows["eval_height"], rows["eval_width"]))


def _at(rows: pd.DataFrame, sizes: set[tuple[int, int]]) -> pd.DataFrame:
    return rows[np.array([size in sizes for size in zip(rows["eval_height"], rows["eval_width"])], bool)]
