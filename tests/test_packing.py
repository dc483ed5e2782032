"""Properties of Patch n' Pack, checked on random batches with hypothesis."""
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.packing import PAD, keep_counts, pack, patchify, plan_rows

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
    kept = keep_counts(lengths, rates)
    assert (kept >= 1).all()
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
