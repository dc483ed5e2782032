"""Properties of Patch n' Pack, checked on random batches with hypothesis."""
from unittest import mock

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import packing
from bench.packing import PAD, keep_count, pack, patchify, plan_rows

P = 2
grid_sides = st.integers(min_value=1, max_value=9)
grids = st.lists(st.tuples(grid_sides, grid_sides), min_size=1, max_size=12)
budgets = st.one_of(st.none(), st.integers(min_value=1, max_value=64))


def images_for(sizes):
    # Each pixel encodes (image, channel, y, x), so any misplaced token is visible.
    return [torch.arange(2 * h * P * w * P, dtype=torch.float32).view(2, h * P, w * P) + 1000 * i
            for i, (h, w) in enumerate(sizes)]


def check_packing(batch, images, max_seq_len, expected_kept):
    ids = batch.image_ids
    for i, image in enumerate(images):
        where = (ids == i).nonzero()
        assert len(where) == expected_kept[i], "every kept token appears exactly once"
        row = where[0, 0]
        assert (where[:, 0] == row).all(), "an image lives in one row"
        cols = where[:, 1]
        assert torch.equal(cols, torch.arange(cols[0], cols[0] + len(cols))), "tokens are contiguous"
        h, w = batch.grids[i].tolist()
        coords = batch.coords[row, cols]
        flat = coords[:, 0] * w + coords[:, 1]
        assert (flat.diff() > 0).all(), "tokens keep their order"
        assert torch.equal(batch.patches[row, cols], patchify(image, P)[flat]), "each patch sits at its coordinate"
    real = ids != PAD
    for r in range(batch.num_rows):
        members = ids[r][real[r]].unique()
        if max_seq_len is not None and len(members) > 1:
            assert real[r].sum() <= max_seq_len, "a shared row respects the budget"
    assert batch.num_tokens == sum(expected_kept)
    assert abs(batch.padding_fraction - (1 - sum(expected_kept) / ids.numel())) < 1e-9
    assert (batch.patches[~real] == 0).all()


@settings(max_examples=60, deadline=None)
@given(sizes=grids, max_seq_len=budgets)
def test_packing_conserves_every_token_once_in_order_within_budget(sizes, max_seq_len):
    images = images_for(sizes)
    batch = pack(images, P, max_seq_len)
    check_packing(batch, images, max_seq_len, [h * w for h, w in sizes])
    assert batch.num_dropped == 0


@settings(max_examples=60, deadline=None)
@given(sizes=grids, max_seq_len=budgets, rates=st.lists(st.floats(0, 1), min_size=12, max_size=12),
       seed=st.integers(0, 2**31 - 1))
def test_token_dropping_keeps_at_least_one_token_and_true_coordinates(sizes, max_seq_len, rates, seed):
    images = images_for(sizes)
    rates = torch.tensor(rates[:len(sizes)])
    batch = pack(images, P, max_seq_len, drop_rates=rates, generator=torch.Generator().manual_seed(seed))
    lengths = torch.tensor([h * w for h, w in sizes])
    kept = torch.tensor([keep_count(n, r) for n, r in zip(lengths.tolist(), rates.tolist())])
    assert (kept >= 1).all() and (kept <= lengths).all()
    check_packing(batch, images, max_seq_len, kept.tolist())
    assert batch.num_dropped == int((lengths - kept).sum())


@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=30), max_seq_len=st.integers(1, 48))
def test_first_fit_rows_are_full_enough(lengths, max_seq_len):
    rows = plan_rows(lengths, max_seq_len)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    fills = [sum(lengths[i] for i in row) for row in rows]
    for r, row in enumerate(rows):
        assert len(row) == 1 or fills[r] <= max_seq_len
        # first fit: no image of a later row would have fitted into an earlier row when it was placed
        # (checked loosely: the smallest later image does not fit an earlier row's final room)
        later = [lengths[i] for row2 in rows[r + 1:] for i in row2]
        if later:
            assert min(later) > max_seq_len - fills[r] or fills[r] > max_seq_len


def test_one_per_row_is_the_padded_baseline():
    images = images_for([(1, 2), (3, 3), (2, 2)])
    batch = pack(images, P, 256, one_per_row=True)
    assert batch.num_rows == 3 and batch.row_len == 9
    assert batch.needs_mask  # two rows carry padding
    same = pack(images_for([(2, 2), (2, 2)]), P, one_per_row=True)
    assert not same.needs_mask  # equal sizes: dense attention is exact


def random_images(sizes, patch, channels, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (channels, h * patch, w * patch), generator=g).to(dtype) for h, w in sizes]


def reference_pack(images, patch, max_seq_len, one_per_row):
    """pack() written the plain way: one image at a time, from patchify()."""
    grids = [(img.shape[1] // patch, img.shape[2] // patch) for img in images]
    rows = plan_rows([h * w for h, w in grids], max_seq_len, one_per_row)
    row_len = max(sum(grids[i][0] * grids[i][1] for i in row) for row in rows)
    dim = images[0].shape[0] * patch * patch
    patches = torch.zeros(len(rows), row_len, dim, dtype=images[0].dtype)
    ids = torch.full((len(rows), row_len), PAD)
    coords = torch.zeros(len(rows), row_len, 2, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            h, w = grids[i]
            patches[r, at:at + h * w] = patchify(images[i], patch)
            ids[r, at:at + h * w] = i
            coords[r, at:at + h * w] = torch.tensor([(y, x) for y in range(h) for x in range(w)]).view(-1, 2)
            at += h * w
    return patches, ids, coords, torch.tensor(grids)


# pack() copies big whole images one by one and gathers the rest: these thresholds make it take
# one way for every image, either way by size, or the other way for every image.
copy_thresholds = st.sampled_from([0, packing._COPY_MIN_NUMEL, 1 << 40])


@settings(max_examples=80, deadline=None)
@given(sizes=grids, patch=st.sampled_from([1, 2, 8]), channels=st.sampled_from([1, 3]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.uint8]), max_seq_len=budgets,
       one_per_row=st.booleans(), copy_min=copy_thresholds, seed=st.integers(0, 2**31 - 1))
def test_pack_equals_a_per_image_reference(sizes, patch, channels, dtype, max_seq_len, one_per_row, copy_min, seed):
    images = random_images(sizes, patch, channels, dtype, seed)
    with mock.patch.object(packing, "_COPY_MIN_NUMEL", copy_min):
        batch = pack(images, patch, max_seq_len, one_per_row=one_per_row)
    patches, ids, coords, grids_ = reference_pack(images, patch, max_seq_len, one_per_row)
    assert batch.patches.dtype == dtype
    assert torch.equal(batch.patches, patches)
    assert torch.equal(batch.image_ids, ids)
    assert torch.equal(batch.coords, coords)
    assert torch.equal(batch.grids, grids_)
    assert batch.num_dropped == 0


@settings(max_examples=60, deadline=None)
@given(sizes=grids, patch=st.sampled_from([2, 8]), channels=st.sampled_from([1, 3]), max_seq_len=budgets,
       rates=st.lists(st.sampled_from([0.0, 0.3, 0.5, 0.9, 1.0]) | st.floats(0, 1), min_size=12, max_size=12),
       copy_min=copy_thresholds, seed=st.integers(0, 2**31 - 1))
def test_dropping_keeps_patchify_rows_at_their_coords_and_follows_the_seed(
        sizes, patch, channels, max_seq_len, rates, copy_min, seed):
    images = random_images(sizes, patch, channels, torch.float32, seed)
    rates = torch.tensor(rates[:len(sizes)])
    with mock.patch.object(packing, "_COPY_MIN_NUMEL", copy_min):
        batch = pack(images, patch, max_seq_len, drop_rates=rates, generator=torch.Generator().manual_seed(seed))
        again = pack(images, patch, max_seq_len, drop_rates=rates, generator=torch.Generator().manual_seed(seed))
    kept = [keep_count(h * w, rate) for (h, w), rate in zip(sizes, rates.tolist())]
    for i, image in enumerate(images):
        where = batch.image_ids == i
        assert where.sum() == kept[i]
        w = sizes[i][1]
        index = batch.coords[where][:, 0] * w + batch.coords[where][:, 1]
        assert (index.diff() > 0).all(), "kept tokens stay in grid order"
        assert torch.equal(batch.patches[where], patchify(image, patch)[index])
    for name in ("patches", "image_ids", "coords", "grids"):
        assert torch.equal(getattr(batch, name), getattr(again, name)), "same seed, same batch"
    assert batch.num_dropped == again.num_dropped


def test_dropping_keeps_a_uniform_subset_independently_per_image():
    images = [torch.zeros(1, 8, 8)] * 1000  # 16 tokens each with patch 2, 8 kept
    batch = pack(images, P, None, drop_rates=torch.full((1000,), 0.5), generator=torch.Generator().manual_seed(0))
    flat = batch.coords[..., 0] * 4 + batch.coords[..., 1]
    kept = torch.zeros(1000, 16).scatter_(1, flat[:, :8], 1.0)
    assert (batch.image_ids[:, :8] == torch.arange(1000)[:, None]).all()
    assert ((kept.mean(0) - 0.5).abs() < 0.1).all(), "every token is kept about half the time"
    assert len(kept.unique(dim=0)) > 900, "images draw their own subsets"


def test_images_must_share_their_channel_count():
    with pytest.raises(ValueError, match=r"images have \[1, 3\] channels"):
        pack([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)], P)
