"""Evaluation over the resolution x aspect grid: every test image at every grid size, packed."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .config import EvalConfig
from .data import eval_batches
from .model import NaViT
from .train import Interrupted, autocast, progress


def grid_row(height: int, width: int, patch_size: int, train_range: tuple[int, int], reference_side: int) -> dict:
    """Where one eval size sits relative to the training resolutions (accuracy/loss come later).

    ``side`` is the side of the square with the same area, so a 32x128 image counts as side 64:
    that is what sets the token count, the quantity a resolution range really bounds.
    """
    side = round(math.sqrt(height * width))
    low, high = train_range
    return {"eval_height": height, "eval_width": width, "aspect": width / height, "side": side,
            "num_tokens": (height // patch_size) * (width // patch_size),
            "in_train_range": low <= side <= high,
            "train_range": "below" if side < low else "above" if side > high else "in",
            "at_train_res": height == width == reference_side}


class EvalSet:
    """Every test image packed at every grid size; kept in memory after the first pass when
    ``keep`` is set, since each cell evaluates the very same batches."""

    def __init__(self, source, patch_size: int, config: EvalConfig, keep: bool):
        self.source, self.patch_size, self.config, self.keep = source, patch_size, config, keep
        self.memo: dict[tuple[int, int], list] = {}

    def batches(self, size: tuple[int, int]):
        if size in self.memo:
            return self.memo[size]
        batches = eval_batches(self.source, size, self.patch_size, self.config.tokens_per_batch,
                               self.config.max_seq_len, self.config.num_workers)
        if not self.keep:
            return batches
        self.memo[size] = list(batches)
        return self.memo[size]


@torch.no_grad()
def evaluate(model: NaViT, eval_set: EvalSet, sizes: list[tuple[int, int]], device: torch.device,
             train_range: tuple[int, int], reference_side: int, should_stop: Callable[[], bool] = lambda: False,
             label: str = "", show_progress: bool = True) -> list[dict]:
    """One row per grid size: accuracy and mean cross-entropy over the whole test split."""
    model.eval()
    patch = model.patch_size
    rows = []
    for height, width in progress(iterable=sizes, desc=f"{label} eval", leave=False, position=1,
                                  disable=not show_progress):
        if should_stop():
            raise Interrupted(f"stopped while evaluating {height}x{width}")
        loss_sum, correct, count = 0.0, 0, 0
        for batch, labels in eval_set.batches((height, width)):
            labels = labels.to(device)
            with autocast(device):
                logits = model(batch.to(device)).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct += int((logits.argmax(-1) == labels).sum())
            count += labels.numel()
        row = grid_row(height, width, patch, train_range, reference_side)
        rows.append({**row, "accuracy": correct / count, "loss": loss_sum / count})
    return rows
