"""Evaluation over the resolution x aspect grid: every test image at every grid size, packed."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import EvalConfig
from .data import eval_batches
from .model import NaViT
from .runtime import Interrupted, autocast, progress


@dataclass(frozen=True)
class Hits:
    """Which test images a model classified correctly at one eval size, in index order. Kept as
    bits so a cell file stays small (512 images: 88 characters): the report pairs variants image
    by image with them and resamples the test set."""
    count: int   # test images
    bits: str    # base64 of numpy.packbits(correct): image 0 is the highest bit of the first byte

    @classmethod
    def of(cls, correct: np.ndarray) -> "Hits":
        return cls(len(correct), base64.b64encode(np.packbits(correct.astype(bool))).decode("ascii"))

    def array(self) -> np.ndarray:
        """bool [count]: image i classified correctly."""
        return np.unpackbits(np.frombuffer(base64.b64decode(self.bits), np.uint8), count=self.count).astype(bool)


@dataclass(frozen=True)
class Score:
    """What a model scores at one eval size, over the whole test split."""
    accuracy: float   # top-1
    loss: float       # mean cross-entropy
    hits: Hits | None = None   # None: a record from before they were kept


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
    """One score per (H, W) of ``sizes``, in order, with which test images were right."""
    model.eval()
    scores = []
    for height, width in progress(iterable=sizes, desc=f"{label} eval", leave=False, position=1,
                                  disable=not show_progress):
        if should_stop():
            raise Interrupted(f"stopped while evaluating {height}x{width}")
        loss_sum, correct = 0.0, []
        for batch, labels in eval_set.batches((height, width)):   # images in index order
            labels = labels.to(device)
            with autocast(device):
                logits = model(batch.to(device)).float()
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            correct.append((logits.argmax(-1) == labels).cpu())
        right = torch.cat(correct).numpy()
        scores.append(Score(int(right.sum()) / len(right), loss_sum / len(right), Hits.of(right)))
    return scores
