"""Evaluation over the resolution x aspect grid: every test image at every grid size, packed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .config import EvalConfig
from .data import eval_batches
from .model import NaViT
from .runtime import Interrupted, autocast, progress


@dataclass(frozen=True)
class Score:
    """What a model scores at one eval size, over the whole test split."""
    accuracy: float   # top-1
    loss: float       # mean cross-entropy


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
             should_stop: Callable[[], bool] = lambda: False, label: str = "",
             show_progress: bool = True) -> list[Score]:
    """One score per (H, W) of ``sizes``, in order."""
    model.eval()
    scores = []
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
        scores.append(Score(correct / count, loss_sum / count))
    return scores
