"""The interface every dataset offers to batching: indexed images of any requested size."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..packing import PackedBatch, pack


class ImageSource:
    """Indexed images, each loaded at a requested (H, W).

    Subclasses set ``num_classes``, ``channels`` and ``class_names`` and implement ``__len__``,
    ``native_size`` and ``load``; ``load_many`` (one size), ``load_sized`` (a size per image) and
    ``load_packed`` (a size per image, packed into rows) are the batched paths, worth overriding
    when a source can batch its work.
    """
    num_classes: int
    channels: int
    class_names: list[str]

    def __len__(self) -> int:
        raise NotImplementedError

    def native_size(self, index: int) -> tuple[int, int]:
        """(H, W) in pixels; its aspect ratio is what aspect-preserving resolution policies keep."""
        raise NotImplementedError

    def native_sizes(self, indices: np.ndarray) -> np.ndarray:
        """[N, 2] int64: native_size of each index."""
        return np.array([self.native_size(i) for i in indices.tolist()], np.int64).reshape(-1, 2)

    def load(self, index: int, size: tuple[int, int]) -> tuple[Tensor, int]:
        """(image [C, H, W] float32 in [0, 1], label)."""
        raise NotImplementedError

    def load_many(self, indices: Sequence[int], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(images [N, C, H, W], labels long [N]) for images that share one size."""
        pairs = [self.load(i, size) for i in indices]
        return torch.stack([img for img, _ in pairs]), torch.tensor([lab for _, lab in pairs], dtype=torch.long)

    def load_sized(self, indices: Sequence[int], sizes: Sequence[tuple[int, int]]) -> tuple[list[Tensor], Tensor]:
        """Image indices[i] at sizes[i]: ([C, H_i, W_i] each, labels long [N]); one load_many per size."""
        images: list[Tensor | None] = [None] * len(indices)
        labels = torch.empty(len(indices), dtype=torch.long)
        for size, positions in group_by_size(sizes).items():
            loaded, loaded_labels = self.load_many([indices[i] for i in positions], size)
            labels[positions] = loaded_labels
            for i, image in zip(positions, loaded):
                images[i] = image
        return images, labels

    def load_packed(self, indices: Sequence[int], sizes: Sequence[tuple[int, int]], patch_size: int,
                    max_seq_len: int | None, *, drop_rates: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[PackedBatch, Tensor]:
        """(``pack`` of image indices[i] at sizes[i], labels long [N]); see ``packing.layout``."""
        images, labels = self.load_sized(indices, sizes)
        return pack(images, patch_size, max_seq_len, drop_rates=drop_rates, generator=generator,
                    channels=self.channels), labels


def group_by_size(sizes: Sequence[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """Positions of each distinct size, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for position, size in enumerate(sizes):
        groups.setdefault(tuple(size), []).append(position)
    return groups
