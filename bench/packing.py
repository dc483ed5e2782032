"""Patch n' Pack: cut images into patches and pack several images into each row.

Everything downstream (attention mask, pooling, positional embeddings) is derived from two
per-token tensors made here: the image id (``PAD`` for padding) and the (row, col) coordinate
of the token inside its image's patch grid. Token order inside a row never carries meaning.
"""
from __future__ import annotations

import functools
from array import array
from dataclasses import dataclass, field, fields
from typing import Callable, Sequence, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit
from torch import Tensor

PAD = -1
T = TypeVar("T")
DEFAULT_MAX_SEQ_LEN = 256


@dataclass
class PackedBatch:
    patches: Tensor    # [R, L, C*p*p] pixels of each token's patch, zeros at padding
    image_ids: Tensor  # [R, L] long: index of the token's image in the input list, PAD for padding
    coords: Tensor     # [R, L, 2] long: (row, col) of the token in its image's patch grid
    grids: Tensor      # [N, 2] long: (h, w) patch grid of each image
    num_dropped: int = 0  # tokens removed by token dropping (always 0 for evaluation)
    # Masks and index tensors derived from the batch alone, built once (``derive``): a training
    # batch serves every variant of its seed, an eval batch every cell, so none is rebuilt per step.
    derived: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def derive(self, key, make: Callable[[], T]) -> T:
        """``make()``, computed on the first call for ``key`` and kept with the batch. Only for values
        of the batch alone (never of a model's parameters), and never modified in place."""
        if key not in self.derived:
            self.derived[key] = make()
        return self.derived[key]

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
        return self.derive("valid", lambda: self.image_ids != PAD)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens."""
        return int(self.valid.sum())

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.num_tokens / max(1, self.image_ids.numel())

    @property
    def needs_mask(self) -> bool:
        return self.derive("needs_mask", lambda: needs_mask(self.image_ids))

    def token_grids(self) -> Tensor:
        """[R, L, 2] grid (h, w) of each token's image; (1, 1) at padding."""
        def make():
            grids = torch.cat([self.grids, self.grids.new_ones(1, 2)])  # index PAD = -1 -> (1, 1)
            return grids[self.image_ids]
        return self.derive("token_grids", make)

    def to(self, device, non_blocking: bool = False) -> "PackedBatch":
        """This batch on ``device``: itself when it is there already, else a copy made once and kept
        (a kept training batch then crosses to the GPU once, not once per variant), each with what
        it derived."""
        device = torch.device(device)
        if all(_on(getattr(self, f.name), device) for f in fields(self) if f.init):
            return self
        return self.derive(("on", str(device)), lambda: PackedBatch(
            **{f.name: _move(getattr(self, f.name), device, non_blocking) for f in fields(self) if f.init}))

    def pin_memory(self) -> "PackedBatch":
        return PackedBatch(**{f.name: v.pin_memory() if isinstance(v, Tensor) else v
                              for f in fields(self) if f.init for v in [getattr(self, f.name)]})


def needs_mask(image_ids: Tensor) -> bool:
    """False when every row is exactly one whole image: dense attention is then exact."""
    return bool((image_ids != image_ids[:, :1]).any() or (image_ids == PAD).any())


def _on(value, device: torch.device) -> bool:
    if not isinstance(value, Tensor):
        return True
    return value.device.type == device.type and (device.index is None or value.device.index == device.index)


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
        if not _divides(patch_size, *img.shape[1:]):
            raise ValueError(f"image {i} has shape {shape}: H and W must be positive multiples "
                             f"of patch_size={patch_size}")


def patch_grids(sizes: Sequence[tuple[int, int]], patch_size: int) -> list[tuple[int, int]]:
    """The (h, w) patch grid of each image size (H, W); ValueError names the first bad size."""
    for i, (height, width) in enumerate(sizes):
        if not _divides(patch_size, height, width):
            raise ValueError(f"image {i} has size {height}x{width}: H and W must be positive multiples "
                             f"of patch_size={patch_size}")
    return [(height // patch_size, width // patch_size) for height, width in sizes]


def _divides(patch_size: int, height: int, width: int) -> bool:
    return height >= patch_size and width >= patch_size and not height % patch_size and not width % patch_size


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
    return [list(row) for row in _plan(tuple(lengths), max_seq_len)]


@functools.lru_cache(maxsize=64)
def _plan(lengths: tuple[int, ...], max_seq_len: int) -> tuple[tuple[int, ...], ...]:
    # Memoised: filling a training batch, sharing it across ranks and packing it need one plan.
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    rows = _first_fit(order, lengths, max_seq_len)
    if len(rows) > -(-sum(lengths) // max_seq_len):   # first fit missed the lower bound: try the other
        rows = min(rows, _fullest_rows(order, lengths, max_seq_len), key=len)
    return tuple(map(tuple, rows))


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
    """Each row: the longest image left, then the subset of the others that fills it most."""
    row_of = _fullest_row_ids(np.array([lengths[i] for i in order], np.int64), max_seq_len)
    rows: list[list[int]] = [[] for _ in range(int(row_of.max()) + 1)]
    for i, row in zip(order, row_of.tolist()):
        rows[row].append(i)
    return rows


@njit(cache=True)
def _fullest_row_ids(lengths: np.ndarray, max_seq_len: int) -> np.ndarray:
    """The row of each image (``lengths`` in visiting order), rows numbered as they open.

    An exact subset sum per row (reach[k, t]: some subset of the first k candidates sums to t),
    compiled: a batch plans in microseconds. Ties keep the longer images: the walk back skips the
    latest candidates whenever the target stays reachable without them.
    """
    n = lengths.shape[0]
    row_of = np.full(n, -1, np.int64)
    reach = np.zeros((n + 1, max_seq_len + 1), np.bool_)
    candidates = np.empty(n, np.int64)
    row = 0
    for first in range(n):
        if row_of[first] >= 0:
            continue
        row_of[first] = row
        room = max_seq_len - lengths[first]
        if room > 0:
            m = 0
            for k in range(first + 1, n):
                if row_of[k] < 0:
                    candidates[m] = k
                    m += 1
            reach[0, :] = False
            reach[0, 0] = True
            end = m
            for k in range(m):
                w = lengths[candidates[k]]
                for t in range(room + 1):
                    reach[k + 1, t] = reach[k, t] or (t >= w and reach[k, t - w])
                if reach[k + 1, room]:   # the row can be filled exactly: later candidates would be skipped
                    end = k + 1
                    break
            target = room
            while not reach[end, target]:
                target -= 1
            for k in range(end, 0, -1):
                if not reach[k - 1, target]:
                    row_of[candidates[k - 1]] = row
                    target -= lengths[candidates[k - 1]]
        row += 1
    return row_of


def keep_count(length: int, drop_rate: float) -> int:
    """Tokens an image of ``length`` tokens keeps under continuous token dropping: at least one."""
    return min(length, max(1, round(length * (1.0 - min(max(drop_rate, 0.0), 1.0)))))


@dataclass
class Layout:
    """Where every kept token of a list of images goes in the packed rows; no pixels yet."""
    num_rows: int
    row_len: int
    fills: list[int]        # real tokens in each row
    kept: list[int]         # tokens each image keeps
    first_slot: list[int]   # slot of each image's first kept token in the flattened [R, L] rows
    # numpy int64 arrays: a dozen operations on a thousand numbers cost less there than in torch.
    image: np.ndarray       # [T], per kept token: its image
    y: np.ndarray           # [T]: its (row, col) in the image's patch grid
    x: np.ndarray
    slot: np.ndarray        # [T]: its position in the flattened [R, L] rows
    grids: np.ndarray       # [N, 2]: (h, w) patch grid of each image
    num_dropped: int

    def new_patches(self, dim: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
        """[R * L, dim], zeros at padding; each real token's values are the caller's to write."""
        device = torch.device("cpu") if device is None else device
        if dtype == torch.float32 and device.type == "cpu":   # numpy's zeros is calloc: no fill pass
            return torch.from_numpy(np.zeros((self.num_rows * self.row_len, dim), np.float32))
        patches = torch.empty(self.num_rows * self.row_len, dim, dtype=dtype, device=device)
        for r, fill in enumerate(self.fills):   # only the rows' tails
            patches[r * self.row_len + fill:(r + 1) * self.row_len] = 0
        return patches

    def batch(self, patches: Tensor) -> PackedBatch:
        """The PackedBatch of ``patches`` ([R * L, dim], see ``new_patches``), once filled."""
        rows, length = self.num_rows, self.row_len
        image_ids = np.full((rows, length), PAD, np.int64)
        coords = np.zeros((rows, length, 2), np.int64)
        image_ids.reshape(-1)[self.slot] = self.image
        coords.reshape(-1, 2)[self.slot] = np.stack((self.y, self.x), 1)
        device = patches.device
        return PackedBatch(patches.view(rows, length, -1), torch.from_numpy(image_ids).to(device),
                           torch.from_numpy(coords).to(device), torch.from_numpy(self.grids).to(device),
                           self.num_dropped)


def layout(grids: Sequence[tuple[int, int]], max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN, *,
           one_per_row: bool = False, drop_rates: Tensor | Sequence[float] | None = None,
           generator: torch.Generator | None = None) -> Layout:
    """Plan the rows for images of these (h, w) patch grids (``plan_rows``) and place each kept token.

    ``drop_rates`` ([N] in [0, 1]) enables continuous token dropping: each image keeps a random
    subset of its tokens, in their original order, and each kept token keeps its coordinate.
    The row length is the fullest row's length, so no row carries unused capacity.
    """
    lengths = [h * w for h, w in grids]
    kept = lengths
    if drop_rates is not None:
        kept = [keep_count(n, rate) for n, rate in zip(lengths, torch.as_tensor(drop_rates).tolist())]
    rows = plan_rows(kept, max_seq_len, one_per_row)
    fills = [sum(kept[i] for i in row) for row in rows]
    row_len = max(fills)
    # One line of plain ints per image, in packed order: tokens | tokens of the images before it |
    # kept tokens | slot of its first kept token minus the kept tokens before it | image | grid width.
    table, first_slot = [], [0] * len(grids)
    seen = kept_seen = 0
    for r, row in enumerate(rows):
        slot = r * row_len
        for i in row:
            table += (lengths[i], seen, kept[i], slot - kept_seen, i, grids[i][1])
            first_slot[i] = slot
            seen, kept_seen, slot = seen + lengths[i], kept_seen + kept[i], slot + kept[i]
    table = np.array(table, np.int64).reshape(-1, 6)
    tokens = np.repeat(table, table[:, 0], axis=0)
    j = np.arange(seen) - tokens[:, 1]  # the token's patch index, row-major in its grid
    if drop_rates is not None:
        # Rank each image's tokens in a random order: a stable sort by (image, random key) keeps
        # every image's tokens in their own range of positions, so the token sorted to position
        # s has rank j[s]. Those ranked below the image's kept count stay, in grid order.
        key = tokens[:, 1] * (1 << 31) + torch.randint(1 << 31, (seen,), generator=generator).numpy()
        keep = np.empty(seen, bool)
        keep[np.argsort(key, kind="stable")] = j < tokens[:, 2]
        tokens, j = tokens[keep], j[keep]
    shift, image, w = tokens[:, 3], tokens[:, 4], tokens[:, 5]
    y = j // w
    return Layout(len(rows), row_len, fills, kept, first_slot, image, y, j - y * w, np.arange(kept_seen) + shift,
                  np.array(grids, np.int64).reshape(-1, 2), seen - kept_seen)


# A whole image of at least this many values is copied into its row on its own: one strided
# copy then beats concatenating it first. Smaller images are gathered all at once.
_COPY_MIN_NUMEL = 1 << 13


def pack(images: Sequence[Tensor], patch_size: int, max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN,
         *, one_per_row: bool = False, drop_rates: Tensor | None = None,
         generator: torch.Generator | None = None, channels: int | None = None) -> PackedBatch:
    """Patchify a list of (C, H, W) images, optionally drop tokens (see ``layout``), and pack
    them into rows, built on the images' device."""
    validate_images(images, patch_size, channels)
    p, c = patch_size, images[0].shape[0]
    shapes = [img.shape for img in images]
    if any(shape[0] != c for shape in shapes):
        raise ValueError(f"images have {sorted({shape[0] for shape in shapes})} channels: "
                         "all must have the same")
    grids = [(H // p, W // p) for _, H, W in shapes]
    plan = layout(grids, max_seq_len, one_per_row=one_per_row, drop_rates=drop_rates, generator=generator)
    device = images[0].device
    patches = plan.new_patches(c * p * p, images[0].dtype, device)

    # Each gathered image's first value in the gathered buffer, in runs of p values (-1: copied).
    starts, gathered, copied, start = [], [], [], 0
    for i, (h, w) in enumerate(grids):
        if plan.kept[i] == h * w and c * h * w * p * p >= _COPY_MIN_NUMEL:
            copied.append(i)
            starts.append(-1)
        else:
            gathered.append(images[i].reshape(-1))
            starts.append(start)
            start += c * h * w * p
    if gathered:
        image, y, x, slot, grid = (torch.from_numpy(v).to(device) for v in (plan.image, plan.y, plan.x, plan.slot,
                                                                          plan.grids))
        per_image = torch.cat([_longs(starts).to(device).view(-1, 1), grid.prod(1, keepdim=True), grid[:, 1:]], 1)
        start, n, w = per_image.index_select(0, image).unbind(1)
        if copied:
            picked = start >= 0
            start, y, x, w, n, slot = (v[picked] for v in (start, y, x, w, n, slot))
        # Value (channel ch, pixel row y*p + py, pixel column x*p + px) of an image of n tokens
        # and grid width w lies in run start + (y*p*w + x) + ch*(n*p) + py*w of the buffer, at px.
        runs = torch.stack((torch.addcmul(start + x, y, w, value=p), n * p, w), 1) @ _run_steps(c, p).to(device)
        flat = torch.cat(gathered).view(-1, p)
        patches.index_copy_(0, slot, flat.index_select(0, runs.view(-1)).view(len(slot), -1))
    for i in copied:  # straight from the image, in patchify's order
        (h, w), img, at = grids[i], images[i], plan.first_slot[i]
        patches[at:at + h * w].view(h, w, c, p, p).copy_(img.reshape(c, h, p, w, p).permute(1, 3, 0, 2, 4))
    return plan.batch(patches)


def _run_steps(channels: int, patch_size: int) -> Tensor:
    """[3, C*p]: (1, ch, py) of each run of p values of a patch, in (C, p) order."""
    runs = [(ch, py) for ch in range(channels) for py in range(patch_size)]
    return _longs([1] * len(runs) + [ch for ch, _ in runs] + [py for _, py in runs]).view(3, -1)


def _longs(values: list[int]) -> Tensor:
    """A long tensor of Python ints: torch.tensor() converts them one by one, ten times slower."""
    return torch.frombuffer(array("q", values), dtype=torch.long)


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
