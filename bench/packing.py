"""Patch n' Pack: cut images into patches and pack several images into each row.

Everything downstream (attention mask, pooling, positional embeddings) is derived from two
per-token tensors made here: the image id (``PAD`` for padding) and the (row, col) coordinate
of the token inside its image's patch grid. Token order inside a row never carries meaning.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PAD = -1
DEFAULT_MAX_SEQ_LEN = 256


@dataclass
class PackedBatch:
    patches: Tensor    # [R, L, C*p*p] pixels of each token's patch, zeros at padding
    image_ids: Tensor  # [R, L] long: index of the token's image in the input list, PAD for padding
    coords: Tensor     # [R, L, 2] long: (row, col) of the token in its image's patch grid
    grids: Tensor      # [N, 2] long: (h, w) patch grid of each image
    num_dropped: int = 0  # tokens removed by token dropping (always 0 for evaluation)

    @property
    def num_images(self) -> int:
        return self.grids.shape[0]

    @property
    def num_rows(self) -> int:
        return self.image_ids.shape[0]

    @property
    def row_len(self) -> int:
        return self.image_ids.shape[1]

    @property
    def valid(self) -> Tensor:
        return self.image_ids != PAD

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.valid.sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.num_tokens / max(1, self.image_ids.numel())

    @property
    def needs_mask(self) -> bool:
        """False when every row is exactly one whole image: dense attention is then exact."""
        ids = self.image_ids
        return bool((ids != ids[:, :1]).any() or (ids == PAD).any())

    def token_grids(self) -> Tensor:
        """[R, L, 2] grid (h, w) of each token's image; (1, 1) at padding."""
        grids = torch.cat([self.grids, self.grids.new_ones(1, 2)])  # index PAD = -1 -> (1, 1)
        return grids[self.image_ids]

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        return PackedBatch(**{f.name: _move(getattr(self, f.name), device, non_blocking)
                              for f in fields(self)})

    def pin_memory(self) -> "PackedBatch":
        return PackedBatch(**{f.name: v.pin_memory() if isinstance(v, Tensor) else v
                              for f in fields(self) for v in [getattr(self, f.name)]})


def _move(value, device, non_blocking):
    return value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value


def validate_images(images: Sequence[Tensor], patch_size: int, channels: int | None = None) -> None:
    """Raise ValueError naming the first bad image (its index and shape)."""
    if len(images) == 0:
        raise ValueError("empty image list: pass at least one (C, H, W) tensor")
    for i, img in enumerate(images):
        shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
        if not isinstance(img, Tensor) or img.dim() != 3:
            raise ValueError(f"image {i} has shape {shape}; expected a (C, H, W) tensor")
        if channels is not None and img.shape[0] != channels:
            raise ValueError(f"image {i} has shape {shape}: {img.shape[0]} channels, "
                             f"the model expects {channels}")
        h, w = img.shape[1:]
        if h < patch_size or w < patch_size or h % patch_size or w % patch_size:
            raise ValueError(f"image {i} has shape {shape}: H and W must be positive multiples "
                             f"of patch_size={patch_size}")


def patchify(image: Tensor, patch_size: int) -> Tensor:
    """(C, H, W) -> (h*w, C*p*p), row-major over the patch grid.

    Each patch is flattened in (C, p, p) order, the order of a Conv2d weight's flatten(1), so a
    linear map with that weight equals the strided convolution.
    """
    c, H, W = image.shape
    p = patch_size
    h, w = H // p, W // p
    return image.reshape(c, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, c * p * p)


def plan_rows(lengths: Sequence[int], max_seq_len: int | None, one_per_row: bool = False) -> list[list[int]]:
    """Assign images (by index) to rows.

    Greedy as in NaViT, visiting images longest first: of two such plans (first fit, and rows
    filled as full as the remaining images allow), the one with fewer rows wins; every row is then
    full in the sense that no image of a later row would fit its room. The per-image result never
    depends on the plan. An image longer than a row gets a row of its own. ``one_per_row`` gives
    the padded baseline: every image alone in a row.
    """
    if one_per_row or max_seq_len is None:
        return [[i] for i in range(len(lengths))]
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    return min(_first_fit(order, lengths, max_seq_len), _fullest_rows(order, lengths, max_seq_len), key=len)


def _first_fit(order: list[int], lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(max(max_seq_len - n, 0))
    return rows


def _fullest_rows(order: list[int], lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Each row: the longest image left, then the subset of the others that fills it most.

    An exact subset sum over the row's room, with Python ints as bitsets (bit t set: some subset
    sums to t), so a row costs O(images) big-int operations. Ties keep the longer images.
    """
    rows: list[list[int]] = []
    left = order
    while left:
        first, rest = left[0], left[1:]
        room = max_seq_len - lengths[first]
        if room <= 0:
            rows.append([first])
            left = rest
            continue
        fits = (1 << (room + 1)) - 1
        reach = [1]  # reach[k]: sums reachable with rest[:k]
        for i in rest:
            reach.append((reach[-1] | reach[-1] << lengths[i]) & fits)
        target, taken = reach[-1].bit_length() - 1, []
        for k in range(len(rest), 0, -1):  # walk back, skipping the shortest images when possible
            if not reach[k - 1] >> target & 1:
                taken.append(rest[k - 1])
                target -= lengths[rest[k - 1]]
        rows.append([first, *reversed(taken)])
        chosen = set(taken)
        left = [i for i in rest if i not in chosen]
    return rows


def keep_counts(lengths: Tensor, drop_rates: Tensor) -> Tensor:
    """Tokens kept per image under continuous token dropping: at least one per image."""
    kept = torch.round(lengths.double() * (1.0 - drop_rates.double().clamp(0.0, 1.0))).long()
    return kept.clamp(min=1, max=None).minimum(lengths)


def pack(images: Sequence[Tensor], patch_size: int, max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN,
         *, one_per_row: bool = False, drop_rates: Tensor | None = None,
         generator: torch.Generator | None = None, channels: int | None = None) -> PackedBatch:
    """Patchify a list of (C, H, W) images, optionally drop tokens, and pack them into rows.

    ``drop_rates`` ([N] in [0, 1]) enables continuous token dropping: each image keeps a random
    subset of its tokens, in their original order, and each kept token keeps its coordinate.
    The row length is the fullest row's length, so no row carries unused capacity.
    """
    validate_images(images, patch_size, channels)
    p = patch_size
    grids = torch.tensor([[img.shape[1] // p, img.shape[2] // p] for img in images], dtype=torch.long)
    lengths = grids[:, 0] * grids[:, 1]
    kept = lengths if drop_rates is None else keep_counts(lengths, torch.as_tensor(drop_rates))

    kept_list, grid_list = kept.tolist(), grids.tolist()
    rows = plan_rows(kept_list, max_seq_len, one_per_row)
    row_len = max(sum(kept_list[i] for i in row) for row in rows)
    c = images[0].shape[0]
    dtype = images[0].dtype
    patches = torch.empty(len(rows), row_len, c * p * p, dtype=dtype)  # zeroed at padding below
    image_ids = torch.full((len(rows), row_len), PAD, dtype=torch.long)
    coords = torch.zeros(len(rows), row_len, 2, dtype=torch.long)
    grid_coords: dict[tuple[int, int], Tensor] = {}  # images of one size share their (row, col) table

    for r, row in enumerate(rows):
        start = 0
        for i in row:
            h, w = grid_list[i]
            n = kept_list[i]
            if (h, w) not in grid_coords:
                rows_cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
                grid_coords[h, w] = torch.stack(rows_cols, -1).view(-1, 2)
            rc = grid_coords[h, w]
            if n < h * w:
                keep = torch.randperm(h * w, generator=generator)[:n].sort().values
                patches[r, start:start + n] = patchify(images[i], p)[keep]
                rc = rc[keep]
            else:  # cut the patches straight into the row: one copy, as patchify orders them
                cut = images[i].reshape(c, h, p, w, p).permute(1, 3, 0, 2, 4)
                patches[r, start:start + n].view(h, w, c, p, p).copy_(cut)
            image_ids[r, start:start + n] = i
            coords[r, start:start + n] = rc
            start += n
        patches[r, start:] = 0
    return PackedBatch(patches, image_ids, coords, grids, int((lengths - kept).sum()))


def bucket(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= n; past the largest bucket, the next multiple of it."""
    fits = [b for b in buckets if b >= n]
    return min(fits) if fits else -(-n // max(buckets)) * max(buckets)


# Shapes for a compiled model: row counts in steps of 4 up to 32, then four steps per doubling;
# lengths in multiples of FlexAttention's 128-token blocks.
ROW_BUCKETS = (*range(4, 33, 4), *range(40, 65, 8), *range(80, 129, 16), *range(160, 257, 32))
LEN_BUCKETS = (128,)


def pad_to_buckets(batch: PackedBatch, row_buckets: Sequence[int] = ROW_BUCKETS,
                   len_buckets: Sequence[int] = LEN_BUCKETS) -> PackedBatch:
    """Pad the row count and the row length up to buckets (see ``bucket``) with padding tokens.

    A compiled model then sees a few shapes instead of one per batch; padding changes no
    image's output, only costs its compute.
    """
    rows, length = batch.num_rows, batch.row_len
    extra_rows, extra_len = bucket(rows, row_buckets) - rows, bucket(length, len_buckets) - length
    if not extra_rows and not extra_len:
        return batch
    return PackedBatch(F.pad(batch.patches, (0, 0, 0, extra_len, 0, extra_rows)),
                       F.pad(batch.image_ids, (0, extra_len, 0, extra_rows), value=PAD),
                       F.pad(batch.coords, (0, 0, 0, extra_len, 0, extra_rows)),
                       batch.grids, batch.num_dropped)
