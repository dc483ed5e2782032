"""Data: datasets, resolution policies, token-budget batching and token dropping.

build_source(DataConfig, split) gives an ImageSource (indexed images loadable at any size);
TrainBatches turns one into packed training batches indexed by step; eval_batches packs every
test image at one size of the evaluation grid (eval_sizes). See docs/data.md.
"""
from __future__ import annotations

from .batching import TrainBatches, eval_batches, train_loader
from .config import (DATASETS, DROP_KINDS, RESOLUTION_MODES, SIDE_DISTRIBUTIONS, TASKS, DataConfig, DropConfig,
                     EvalGridConfig, ResolutionConfig)
from .real import CifarSource, ImageFolderSource
from .resolution import budget_grid, budget_size, eval_sizes
from .source import ImageSource
from .streams import SPLITS
from .synthetic import SyntheticSource


def build_source(cfg: DataConfig, split: str) -> ImageSource:
    """The ``split`` ("train" or "test") of the configured dataset.

    Raises DataError naming the path and the key (data.root, data.test_root) when a folder is
    missing, empty or unreadable.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if cfg.name == "synthetic":
        size = cfg.train_size if split == "train" else cfg.test_size
        return SyntheticSource(cfg.task, split, size, cfg.seed, cfg.aspect_range)
    if cfg.name == "imagefolder":
        return ImageFolderSource(cfg.root, split, cfg.test_root, cfg.test_fraction)
    return CifarSource(cfg.name, cfg.root, split, cfg.download)


__all__ = [
    "DATASETS", "DROP_KINDS", "RESOLUTION_MODES", "SIDE_DISTRIBUTIONS", "TASKS",
    "CifarSource", "DataConfig", "DropConfig", "EvalGridConfig", "ImageFolderSource", "ImageSource",
    "ResolutionConfig", "SyntheticSource", "TrainBatches", "budget_grid", "budget_size", "build_source",
    "eval_batches", "eval_sizes", "train_loader",
]
