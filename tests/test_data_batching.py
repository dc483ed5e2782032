"""Token-budget batches, token dropping, evaluation batches and DataLoader workers."""
from dataclasses import fields

import pytest
import torch

from bench.config import DataConfig, DropConfig, ResolutionConfig
from bench.data import SyntheticSource, TrainBatches, build_source, eval_batches, train_loader
from bench.errors import ConfigError
from bench.packing import PAD, keep_count, patchify

P = 8


@pytest.fixture(scope="module")
def source():
    return build_source(DataConfig(task="abs_position", train_size=5000), "train")


def batches_for(source, drop=DropConfig(), resolution=ResolutionConfig(), tokens=2048, seq=256, seed=0, **kw):
    return TrainBatches(source, resolution, drop, P, tokens, seq, seed, **kw)


def assert_same_batch(a, b):
    (batch_a, labels_a), (batch_b, labels_b) = a, b
    assert torch.equal(labels_a, labels_b)
    for f in fields(batch_a):
        va, vb = getattr(batch_a, f.name), getattr(batch_b, f.name)
        assert torch.equal(va, vb) if isinstance(va, torch.Tensor) else va == vb, f.name


def assert_tokens_at_their_coordinates(batch, images):
    """Every real token is its image's patch at the token's (row, col)."""
    for i, image in enumerate(images):
        where = batch.image_ids == i
        h, w = batch.grids[i].tolist()
        flat = batch.coords[where][:, 0] * w + batch.coords[where][:, 1]
        assert torch.equal(batch.patches[where], patchify(image, P)[flat])


def test_a_batch_fills_its_token_budget(source):
    batches = batches_for(source, tokens=2048, seq=256)
    for step in range(4):
        batch, labels = batches[step]
        assert batch.num_rows == 2048 // 256 and batch.row_len <= 256
        assert 0.9 * 2048 <= batch.num_tokens <= 2048
        assert batch.padding_fraction == pytest.approx(1 - batch.num_tokens / (batch.num_rows * batch.row_len))
        assert batch.padding_fraction < 0.1
        assert labels.dtype == torch.long and len(labels) == batch.num_images
        assert batch.num_dropped == 0
    grids = {tuple(g) for step in range(4) for g in batches[step][0].grids.tolist()}
    assert len(grids) > 10, "NaViT sizes vary in side and aspect ratio"


def test_batches_depend_only_on_config_seed_and_step(source):
    batches = batches_for(source)
    later_first = batches[5]
    batches[2]
    assert_same_batch(later_first, batches[5])
    assert_same_batch(batches[5], batches_for(source)[5])
    assert not torch.equal(batches[5][1], batches[6][1])
    assert not torch.equal(batches[5][1], batches_for(source, seed=1)[5][1])


def test_packed_images_are_the_picked_images(source):
    batches = batches_for(source, tokens=1024)
    batch, labels = batches[7]
    picks = batches.picks(7)
    images = [source.load(pick.index, pick.size)[0] for pick in picks]
    assert labels.tolist() == [source.load(pick.index, (32, 32))[1] for pick in picks]
    assert batch.grids.tolist() == [[h // P, w // P] for h, w in (pick.size for pick in picks)]
    assert_tokens_at_their_coordinates(batch, images)


@pytest.mark.parametrize("resolution,check", [
    (ResolutionConfig(mode="fixed", side=48), lambda h, w: (h, w) == (6, 6)),
    (ResolutionConfig(mode="budget", max_tokens=48), lambda h, w: 30 <= h * w <= 48),
    (ResolutionConfig(min_side=32, max_side=64, distribution="truncnorm"), lambda h, w: 9 <= h * w <= 80),
])
def test_every_resolution_mode_batches(source, resolution, check):
    batches = batches_for(source, resolution=resolution)
    steps = [batches[step][0] for step in range(10)]
    assert all(check(h, w) for batch in steps for h, w in batch.grids.tolist())
    # A batch ends at the first image that fits no row (up to 48-80 tokens here, in rows of 256).
    assert sum(batch.num_tokens for batch in steps) >= 0.85 * 10 * 2048


def test_constant_token_dropping_keeps_coordinates_and_at_least_one_token(source):
    batches = batches_for(source, drop=DropConfig(kind="constant", rate=0.5), tokens=1024)
    batch, _ = batches[3]
    picks = batches.picks(3)
    lengths = batch.grids.prod(1)
    kept = torch.bincount(batch.image_ids[batch.valid], minlength=batch.num_images)
    assert kept.tolist() == [keep_count(n, 0.5) for n in lengths.tolist()]
    assert batch.num_dropped == int((lengths - kept).sum()) > 0
    assert_tokens_at_their_coordinates(batch, [source.load(p.index, p.size)[0] for p in picks])
    # More images fit the same budget once tokens are dropped.
    assert batch.num_images > 1.6 * batches_for(source, tokens=1024)[3][0].num_images

    nearly_all, _ = batches_for(source, drop=DropConfig(kind="constant", rate=0.99), tokens=512)[0]
    per_image = torch.bincount(nearly_all.image_ids[nearly_all.valid], minlength=nearly_all.num_images)
    assert (per_image >= 1).all()


def test_beta_drop_rates_vary_per_image(source):
    batches = batches_for(source, drop=DropConfig(kind="beta", alpha=2.0, beta=6.0), tokens=4096)
    rates = torch.tensor([p.drop_rate for step in range(3) for p in batches.picks(step)])
    assert rates.std() > 0.05 and rates.mean() == pytest.approx(0.25, abs=0.05)
    batch, _ = batches[0]
    kept = torch.bincount(batch.image_ids[batch.valid], minlength=batch.num_images)
    assert torch.equal(kept, torch.tensor([p.kept for p in batches.picks(0)]))


def test_ranks_share_the_global_batch_disjointly(source):
    key = lambda pick: (pick.index, pick.size)
    whole = sorted(map(key, batches_for(source, tokens=2048).picks(4)))
    shares = [batches_for(source, tokens=2048, rank=r, world_size=2).picks(4) for r in range(2)]
    assert sorted(map(key, shares[0] + shares[1])) == whole
    assert shares[0] and shares[1]
    batch, labels = batches_for(source, tokens=2048, rank=1, world_size=2)[4]
    assert batch.num_images == len(shares[1]) == len(labels)


def test_too_few_rows_for_the_ranks_names_the_key(source):
    with pytest.raises(ConfigError) as info:
        batches_for(source, tokens=512, seq=256, world_size=4)
    assert info.value.key == "tokens_per_batch"


def test_dataloader_workers_give_the_same_batches_and_resume_mid_way(source):
    batches = batches_for(source, drop=DropConfig(kind="beta"), tokens=1024)
    single = list(train_loader(batches, 0, 4, num_workers=0))
    parallel = list(train_loader(batches, 0, 4, num_workers=2))
    resumed = list(train_loader(batches, 2, 4, num_workers=0))
    assert len(single) == len(parallel) == 4 and len(resumed) == 2
    for a, b in zip(single, parallel):
        assert_same_batch(a, b)
    for a, b in zip(single[2:], resumed):
        assert_same_batch(a, b)


def test_starting_the_train_loader_leaves_the_global_rng_alone(source):
    # A model draws training-time augmentation from it: a resume must not shift those draws.
    state = torch.get_rng_state()
    next(iter(train_loader(batches_for(source), 1, 2)))
    assert torch.equal(torch.get_rng_state(), state)


def test_eval_batches_pack_every_test_image_once_without_dropping():
    test = SyntheticSource("rel_position", "test", 50)
    seen = []
    for batch, labels in eval_batches(test, (32, 64), P, tokens_per_batch=512, max_seq_len=256):
        assert batch.num_dropped == 0 and len(labels) == batch.num_images
        assert (batch.grids == torch.tensor([4, 8])).all()
        assert (torch.bincount(batch.image_ids[batch.valid]) == 32).all()   # every token kept
        assert batch.num_rows < batch.num_images, "several images share a row"
        seen.append(labels)
    expected = test.load_many(range(50), (32, 64))[1]
    assert torch.equal(torch.cat(seen), expected)

    first, labels = next(iter(eval_batches(test, (32, 64), P, 512, 256)))
    images, _ = test.load_many(range(len(labels)), (32, 64))
    assert_tokens_at_their_coordinates(first, images)


def test_eval_images_longer_than_a_row_get_a_row_each():
    test = SyntheticSource("control", "test", 5)
    batches = list(eval_batches(test, (256, 128), P, tokens_per_batch=1024, max_seq_len=256))
    assert [len(labels) for _, labels in batches] == [2, 2, 1]
    batch, _ = batches[0]
    assert batch.num_rows == 2 and batch.row_len == 512 and (batch.image_ids != PAD).all()


def test_eval_batches_with_workers_match():
    test = SyntheticSource("abs_position", "test", 40)
    single = list(eval_batches(test, (48, 48), P, 1024, 256))
    parallel = list(eval_batches(test, (48, 48), P, 1024, 256, num_workers=2))
    assert len(single) == len(parallel) > 1
    for a, b in zip(single, parallel):
        assert_same_batch(a, b)
