"""Data: datasets, resolution policies, token-budget batching and token dropping.

build_source(DataConfig, split) gives an ImageSource (indexed images loadable at any size);
TrainBatches turns one into packed training batches indexed by step; eval_batches packs every
test image at one size of the evaluation grid (eval_sizes). The config sections it reads
(DataConfig, ResolutionConfig, DropConfig, EvalGridConfig) are bench.config's. See docs/data.md.
"""
from __future__ import annotations

from ..config import DataConfig
from .batching import TrainBatches, eval_batches, rows_per_step, train_loader
from .real import CifarSource, ImageFolderSource
from .resolution import aspect_size, budget_grid, budget_size, check_resolution, eval_sizes
from .source import ImageSource
from .streams import SPLITS
from .synthetic import CLASS_NAMES, MIN_GRID, SyntheticSource

# Bumped whenever the same config gives other images or batches (renderer, batch drawing), so a
# results folder never mixes cells of two versions: it is part of every cell's config hash.
DATA_VERSION = 2
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def build_source(cfg: DataConfig, split: str, task: str | None = None) -> ImageSource:
    """The ``split`` ("train" or "test") of the configured dataset; for synthetic data, of
    ``task``, one of the config's tasks (default: its first).

    Raises DataError naming the path and the key (data.root, data.test_root) when a folder is
    missing, empty or unreadable.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if cfg.name == "synthetic":
        task = cfg.tasks[0] if task is None else task
        if task not in cfg.tasks:
            raise ValueError(f"task {task!r} is not one of the config's ({', '.join(cfg.tasks)})")
        size = cfg.train_size if split == "train" else cfg.test_size
        return SyntheticSource(task, split, size, cfg.seed, cfg.aspect_range)
    if cfg.name == "imagefolder":
        return ImageFolderSource(cfg.root, split, cfg.test_root, cfg.test_fraction)
    return CifarSource(cfg.name, cfg.root, split, cfg.download)


def known_num_classes(name: str, task: str) -> int | None:
    """The class count of a dataset that its config alone gives (None for an image folder,
    whose subfolders decide it)."""
    return len(CLASS_NAMES[task]) if name == "synthetic" else CIFAR_CLASSES.get(name)


def solvable(task: str, rows: int, cols: int) -> bool:
    """Whether a rows x cols patch grid is large enough for ``task``'s label to show at patch
    level (MIN_GRID); a real dataset (its name is the task) needs no particular grid."""
    need = MIN_GRID.get(task, 1)
    return rows >= need and cols >= need


def positional(task: str) -> bool:
    """Whether ``task``'s label depends on position: a model without positions is at chance."""
    return MIN_GRID.get(task, 1) > 1


__all__ = [
    "DATA_VERSION", "CifarSource", "ImageFolderSource", "ImageSource", "SyntheticSource", "TrainBatches",
    "aspect_size", "budget_grid", "budget_size", "build_source", "check_resolution", "eval_batches", "eval_sizes",
    "known_num_classes", "positional", "rows_per_step", "solvable", "train_loader",
]
