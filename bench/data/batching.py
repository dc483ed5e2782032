"""Batches built to a token budget and packed once, for training and for evaluation.

A training batch is a pure function of (config, seed, step): resuming after an interruption
is just starting at the next step, every variant sees the same data for a seed, and any number
of DataLoader workers gives the same batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..config import DropConfig, ResolutionConfig
from ..errors import ConfigError
from ..packing import PackedBatch, keep_count, plan_rows
from .resolution import train_sizes
from .source import ImageSource
from .streams import BATCH, stream


CANDIDATE_CHUNK = 64   # candidate images drawn per call while a batch fills


@dataclass
class Pick:
    """One image of a training batch."""
    index: int                 # in the source
    size: tuple[int, int]      # (H, W) it is rendered or resized to
    drop_rate: float
    kept: int                  # tokens left after token dropping


def rows_per_step(tokens_per_batch: int, max_seq_len: int, world_size: int) -> int:
    """Packed rows of one training batch; each of the ``world_size`` ranks needs at least one."""
    rows = tokens_per_batch // max_seq_len
    if rows < world_size:
        raise ConfigError("tokens_per_batch", f"{tokens_per_batch} gives {rows} rows of max_seq_len "
                                              f"{max_seq_len}; each of the {world_size} ranks needs at least one")
    return rows


class TrainBatches(Dataset):
    """``batches[step]`` -> (PackedBatch, labels [N] long) for that training step.

    Images are drawn uniformly with replacement, each with a size from the resolution policy and
    a drop rate, until the batch's rows (tokens_per_batch // max_seq_len rows of max_seq_len
    tokens) are full: the first image that fits no row (first fit, in draw order) ends the batch.
    The images are then packed longest first, which often needs a row less (less padding to
    compute). The budget counts tokens kept after dropping. tokens_per_batch is global: with
    world_size > 1, rank r takes the packed rows r, r + world_size, ... of the same global batch.
    The resolution is the plan's to check (bench.plan), against the patch size and max_seq_len.
    """

    def __init__(self, source: ImageSource, resolution: ResolutionConfig, drop: DropConfig, patch_size: int,
                 tokens_per_batch: int, max_seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
        self.num_rows = rows_per_step(tokens_per_batch, max_seq_len, world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.source, self.resolution, self.drop = source, resolution, drop
        self.patch_size, self.max_seq_len, self.seed = patch_size, max_seq_len, seed
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return 2 ** 62   # steps are indexed, not enumerated

    def __getitem__(self, step: int) -> tuple[PackedBatch, Tensor]:
        rng = stream(BATCH, self.seed, step)
        mine = self._share(self._draw(rng))
        drop_rates = None if self.drop.kind == "none" else torch.tensor([pick.drop_rate for pick in mine])
        generator = torch.Generator().manual_seed(int(rng.integers(2 ** 32)))   # which tokens are dropped
        return self.source.load_packed([pick.index for pick in mine], [pick.size for pick in mine], self.patch_size,
                                       self.max_seq_len, drop_rates=drop_rates, generator=generator)

    def picks(self, step: int) -> list[Pick]:
        """This rank's images of batch ``step``, in the order of the batch's labels."""
        return self._share(self._draw(stream(BATCH, self.seed, step)))

    def _share(self, picks: list[Pick]) -> list[Pick]:
        rows = plan_rows([pick.kept for pick in picks], self.max_seq_len)
        return [picks[i] for i in sorted(i for row in rows[self.rank::self.world_size] for i in row)]

    def _draw(self, rng: np.random.Generator) -> list[Pick]:
        """The global batch, identical on every rank."""
        p, length = self.patch_size, self.max_seq_len
        room = [length] * self.num_rows
        picks: list[Pick] = []
        while True:   # candidates come a chunk at a time: one numpy call per quantity, not per image
            indices = rng.integers(len(self.source), size=CANDIDATE_CHUNK)
            sizes = train_sizes(self.resolution, self.source.native_sizes(indices), p, rng, length)
            tokens = (sizes[:, 0] // p) * (sizes[:, 1] // p)
            for index, size, n, rate in zip(indices.tolist(), sizes.tolist(), tokens.tolist(), self._drop_rates(rng)):
                kept = keep_count(n, rate) if rate else n
                for row, free in enumerate(room):
                    if free >= kept:
                        room[row] -= kept
                        picks.append(Pick(index, tuple(size), rate, kept))
                        break
                else:   # the first image that fits no row ends the batch
                    return self._fit(picks)

    def _fit(self, picks: list[Pick]) -> list[Pick]:
        # The packing plan (longest first) now and then needs one row more than the first fit that
        # chose the images: drop the last images until it fits.
        while len(plan_rows([pick.kept for pick in picks], self.max_seq_len)) > self.num_rows:
            picks.pop()
        return picks

    def _drop_rates(self, rng: np.random.Generator) -> list[float]:
        if self.drop.kind == "constant":
            return [self.drop.rate] * CANDIDATE_CHUNK
        if self.drop.kind == "beta":
            return rng.beta(self.drop.alpha, self.drop.beta, size=CANDIDATE_CHUNK).tolist()
        return [0.0] * CANDIDATE_CHUNK


def train_loader(batches: TrainBatches, start_step: int, num_steps: int, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Yields batches[start_step], ..., batches[num_steps - 1] in order.

    Its own generator: starting an iterator draws a worker seed, which would otherwise advance torch's
    global RNG, that a model draws training-time augmentation from, once more on every resume."""
    if not 0 <= start_step <= num_steps:
        raise ValueError(f"need 0 <= start_step <= num_steps (got {start_step}, {num_steps})")
    return DataLoader(batches, batch_size=None, sampler=range(start_step, num_steps),
                      num_workers=num_workers, pin_memory=pin_memory, generator=torch.Generator())


class _EvalChunks(Dataset):
    """Chunk i: consecutive test images, all at one size, packed."""

    def __init__(self, source: ImageSource, size: tuple[int, int], patch_size: int, per_batch: int,
                 max_seq_len: int):
        self.source, self.size, self.patch_size = source, size, patch_size
        self.per_batch, self.max_seq_len = per_batch, max_seq_len

    def __len__(self) -> int:
        return math.ceil(len(self.source) / self.per_batch)

    def __getitem__(self, chunk: int) -> tuple[PackedBatch, Tensor]:
        start = chunk * self.per_batch
        indices = range(start, min(start + self.per_batch, len(self.source)))
        return self.source.load_packed(indices, [self.size] * len(indices), self.patch_size, self.max_seq_len)


def eval_batches(source: ImageSource, size: tuple[int, int], patch_size: int, tokens_per_batch: int,
                 max_seq_len: int, num_workers: int = 0) -> Iterable[tuple[PackedBatch, Tensor]]:
    """Every image of ``source`` at (H, W), in index order, packed; never any token dropping.

    A batch holds as many whole rows of images as tokens_per_batch allows (an image longer than
    max_seq_len gets a row of its own), and at least one image.
    """
    height, width = size   # packing refuses a size that is not a multiple of the patch
    tokens = (height // patch_size) * (width // patch_size)
    if tokens <= max_seq_len:
        per_batch = max(1, tokens_per_batch // max_seq_len) * (max_seq_len // tokens)
    else:
        per_batch = max(1, tokens_per_batch // tokens)
    chunks = _EvalChunks(source, size, patch_size, per_batch, max_seq_len)
    return DataLoader(chunks, batch_size=None, num_workers=num_workers)
