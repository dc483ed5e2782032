"""Invariance tests of the packed model, for every registered variant and every pooling.

CI runs them on the CPU; scripts/gpu_check.sh runs them on CUDA with each attention kernel, through
NAVIT_TEST_DEVICE (cpu | cuda) and NAVIT_TEST_ATTENTION (sdpa | flex; flex has no CPU backward)."""
import os

import pytest
import torch
import torch.nn.functional as F

import bench
import bench.model
from bench.model import MASKED, POOLS, attention_mask
from bench.packing import PAD, PackedBatch, pack, pad_to_buckets
from bench.posembed import variant_class, variant_options

PATCH = 8
ALL_VARIANTS = bench.list_variants()
COMBINED = [v for v in ALL_VARIANTS if "combine" in variant_options(v)]
ROTARY = [v for v in ALL_VARIANTS if variant_class(v).kind == "rotary"]
BIAS = [v for v in ALL_VARIANTS if variant_class(v).kind == "bias"]
# Options that turn a variant's training-time augmentation on (drawn per image by its ``draw``).
AUGMENTATION = {"shift": 0.5, "jitter": 1.5, "rescale": 2.0}
AUGMENTED = [(v, {k: x for k, x in AUGMENTATION.items() if k in variant_options(v)})
             for v in ALL_VARIANTS if AUGMENTATION.keys() & variant_options(v).keys()]
# Every variant with its default options, plus every other combine mode of the factorized ones.
CONFIGS = [(v, {}) for v in ALL_VARIANTS] + [(v, {"combine": c}) for v in COMBINED for c in ("stack", "product")]
ODD_GRIDS = [(1, 1), (1, 7), (3, 17), (16, 5)]


DEVICE = torch.device(os.environ.get("NAVIT_TEST_DEVICE", "cpu"))
ATTENTION = os.environ.get("NAVIT_TEST_ATTENTION", "sdpa")


def make_model(variant, pool="mean", seed=0, **options):
    torch.manual_seed(seed)
    options.setdefault("attention", ATTENTION)
    return bench.build_model(variant, num_classes=5, patch_size=PATCH, dim=32, depth=2, heads=2,
                             pool=pool, **options).to(DEVICE).eval()


def images_for(grids, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h * PATCH, w * PATCH, generator=g) for h, w in grids]


MIXED = images_for([(2, 3), (4, 4), (1, 7), (5, 2), (3, 17), (16, 5), (1, 1)])


def alone(model, images):
    with torch.no_grad():
        return torch.cat([model([img]) for img in images])


def config_id(config):
    variant, options = config
    return "+".join([variant, *map(str, options.values())])


def with_draws(model, images, draws, **kwargs):
    """The model's output in training when its images draw ``draws`` (one row each, in order)."""
    def draw(num_images):
        assert num_images == len(draws)
        return draws
    model.pos.draw = draw
    with torch.no_grad():
        return model(images, **kwargs)


def only(batch, i):
    """Image ``i``'s tokens of a packed batch, alone in one row, as they were packed."""
    mine = batch.image_ids == i
    return PackedBatch(batch.patches[mine][None], torch.zeros(1, int(mine.sum()), dtype=torch.long),
                       batch.coords[mine][None], batch.grids[i:i + 1], batch.num_dropped)


def transposed(image):
    """The patch-transposed twin: patch (r, c) of an h x w grid moves to (c, r) of a w x h grid."""
    c, height, width = image.shape
    h, w = height // PATCH, width // PATCH
    return image.view(c, h, PATCH, w, PATCH).permute(0, 3, 2, 1, 4).reshape(c, w * PATCH, h * PATCH)


@pytest.fixture(params=[(v, pool) for v in ALL_VARIANTS for pool in POOLS], ids=lambda p: f"{p[0]}-{p[1]}")
def model(request):
    variant, pool = request.param
    return make_model(variant, pool)


def test_pools_include_cls_and_unknown_pools_are_named():
    assert set(POOLS) == {"mean", "map", "cls"}
    with pytest.raises(ValueError, match="pool must be one of mean, map, cls, got 'max'"):
        make_model("nope", "max")


def test_packed_equals_alone_and_ignores_batch_mates_budget_and_order(model):
    reference = alone(model, MIXED)
    with torch.no_grad():
        for max_seq_len in (16, 64, 100, 1000):
            torch.testing.assert_close(model(MIXED, max_seq_len=max_seq_len), reference, atol=1e-5, rtol=0)
        order = [4, 0, 6, 2, 5, 1, 3]
        shuffled = model([MIXED[i] for i in order], max_seq_len=64)
        torch.testing.assert_close(shuffled, reference[order], atol=1e-5, rtol=0)
        mates = model([MIXED[0]] + images_for([(6, 6), (2, 9), (1, 3)], seed=7), max_seq_len=64)
        torch.testing.assert_close(mates[:1], reference[:1], atol=1e-5, rtol=0)


def test_tokens_shuffled_with_their_coordinates_give_the_same_outputs(model):
    batch = pack(MIXED, PATCH, 64)
    g = torch.Generator().manual_seed(3)
    perm = torch.stack([torch.randperm(batch.row_len, generator=g) for _ in range(batch.num_rows)])
    rows = torch.arange(batch.num_rows)[:, None]
    shuffled = PackedBatch(batch.patches[rows, perm], batch.image_ids[rows, perm], batch.coords[rows, perm],
                           batch.grids)
    assert not torch.equal(shuffled.image_ids, batch.image_ids)  # padding is interleaved now too
    with torch.no_grad():
        torch.testing.assert_close(model(shuffled), model(batch), atol=1e-5, rtol=0)


def test_padding_content_never_leaks(model):
    """Garbage in extra padding columns changes nothing: the padding mask is not inverted."""
    batch = pack(MIXED, PATCH, 64)
    extra = 9
    rows = batch.num_rows
    padded = PackedBatch(
        torch.cat([batch.patches, 100 * torch.randn(rows, extra, batch.patches.shape[-1])], 1),
        torch.cat([batch.image_ids, torch.full((rows, extra), PAD)], 1),
        torch.cat([batch.coords, torch.randint(0, 5, (rows, extra, 2))], 1),
        batch.grids)
    with torch.no_grad():
        out = model(padded)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, model(batch), atol=1e-5, rtol=0)


def test_token_dropping_in_training_keeps_each_image_independent_of_batch_mates(model):
    model.train()
    dropped = pack(MIXED, PATCH, 64, drop_rates=torch.full((len(MIXED),), 0.5),
                   generator=torch.Generator().manual_seed(0))
    assert dropped.num_dropped > 0 and dropped.needs_mask
    with torch.no_grad():
        packed = model(dropped)
        kept_alone = torch.cat([model(only(dropped, i)) for i in range(len(MIXED))])
    torch.testing.assert_close(packed, kept_alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("grid", [(5, 5), (2, 2), (3, 7)])
def test_patch_transposed_twin_differs_unless_the_variant_carries_no_position(config, pool, grid):
    variant, options = config
    model = make_model(variant, pool, **options).double()   # float64: a real gap is far above rounding
    image = images_for([grid])[0].double()
    with torch.no_grad():
        gap = (model([image]) - model([transposed(image)])).abs().max()
    if variant_class(variant).kind == "none":   # a bag of patches: the twin is the same bag
        assert gap < 1e-12
    else:
        assert gap > 1e-9, f"{variant} {options}: an image and its transposed twin give the same logits"


@pytest.mark.parametrize("config", AUGMENTED, ids=config_id)
@pytest.mark.parametrize("pool", POOLS)
def test_an_images_own_draw_alone_decides_its_output_in_training(config, pool):
    """Training-time augmentation with each image's draw held fixed: packed == alone, and batch-mates,
    order, max_seq_len and token dropping change nothing; the augmentation does move the output."""
    variant, options = config
    model = make_model(variant, pool, **options).train()
    torch.manual_seed(5)
    draws, others = model.pos.draw(len(MIXED)), model.pos.draw(3)
    reference = torch.cat([with_draws(model, [image], draws[i:i + 1]) for i, image in enumerate(MIXED)])
    for max_seq_len in (16, 64, 1000):
        torch.testing.assert_close(with_draws(model, MIXED, draws, max_seq_len=max_seq_len), reference,
                                   atol=1e-5, rtol=0)
    order = [4, 0, 6, 2, 5, 1, 3]
    shuffled = with_draws(model, [MIXED[i] for i in order], draws[order], max_seq_len=64)
    torch.testing.assert_close(shuffled, reference[order], atol=1e-5, rtol=0)
    mates = with_draws(model, [MIXED[0]] + images_for([(6, 6), (2, 9), (1, 3)], seed=7),
                       torch.cat([draws[:1], others]), max_seq_len=64)
    torch.testing.assert_close(mates[:1], reference[:1], atol=1e-5, rtol=0)
    dropped = pack(MIXED, PATCH, 64, drop_rates=torch.full((len(MIXED),), 0.5),
                   generator=torch.Generator().manual_seed(0))
    kept_alone = torch.cat([with_draws(model, only(dropped, i), draws[i:i + 1]) for i in range(len(MIXED))])
    torch.testing.assert_close(with_draws(model, dropped, draws), kept_alone, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert not torch.allclose(model.eval()(MIXED), reference, atol=1e-4)


@pytest.mark.parametrize("config", AUGMENTED, ids=config_id)
def test_augmentation_is_per_image_off_in_eval_and_the_same_for_a_seed(config):
    variant, options = config
    model, plain = make_model(variant, **options), make_model(variant)   # the same weights
    twins = [MIXED[1], MIXED[1]]
    with torch.no_grad():
        torch.testing.assert_close(model(MIXED), plain(MIXED), atol=0, rtol=0)
        model.train()
        outs = []
        for seed in (1, 1, 2):
            torch.manual_seed(seed)
            outs.append(model(twins))
    assert torch.equal(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2], atol=1e-4)
    assert not torch.allclose(outs[0][0], outs[0][1], atol=1e-4)   # one draw per image, not per batch


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_cls_token_gets_no_additive_embedding_rotation_or_bias(variant):
    model = make_model(variant, "cls")
    batch = pack(MIXED, PATCH, 64)
    length, real = batch.row_len, batch.valid
    with torch.no_grad():
        x, ids, rope = model.embed(batch)
        bias = model.relative_bias(batch, ids)
        patches = model.embed_patches(batch.patches)
    slots = ids[:, length:]
    assert sorted(slots[slots != PAD].tolist()) == list(range(len(MIXED)))   # one CLS token per image
    for row in range(batch.num_rows):   # each in its image's row
        assert set(slots[row][slots[row] != PAD].tolist()) == set(batch.image_ids[row][real[row]].tolist())
    assert torch.equal(x[:, length:][slots != PAD], model.cls_token.expand(len(MIXED), -1))
    assert torch.all(x[:, length:][slots == PAD] == 0)
    kind = variant_class(variant).kind
    assert torch.equal(x[:, :length][real], patches[real]) == (kind != "additive")
    assert (rope is not None) == (kind == "rotary")
    if rope is not None:
        cos, sin = (r.transpose(2, 3) for r in rope)   # [layers, R, L', heads, half]
        assert torch.all(cos[:, :, length:] == 1) and torch.all(sin[:, :, length:] == 0)
        assert not torch.all(sin[:, :, :length][:, real] == 0)
    assert (bias is not None) == (kind == "bias")
    if bias is not None:
        with torch.no_grad():
            mask = model.build_mask(ids, bias)   # [R, heads, L', L'] float
        same = attention_mask(ids).expand_as(mask)
        slot = torch.arange(ids.shape[1])
        cls_pair = ((slot[:, None] >= length) | (slot[None] >= length)).expand_as(mask)
        assert torch.all(mask[same & cls_pair] == 0) and torch.all(mask[~same] == MASKED)
        assert not torch.all(mask[same & ~cls_pair] == 0)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("variant", ["rope_mixed", *BIAS])
@pytest.mark.parametrize("pool", POOLS)
def test_flex_attention_matches_sdpa_for_every_pool(variant, pool):
    """A relative bias: SDPA's float mask on CPU, FlexAttention's score_mod on the document mask on CUDA."""
    flex, sdpa = make_model(variant, pool, attention="flex"), make_model(variant, pool, attention="sdpa")
    with torch.no_grad():
        torch.testing.assert_close(flex(MIXED, max_seq_len=64), sdpa(MIXED, max_seq_len=64), atol=1e-5, rtol=0)
        one_per_row = pack(MIXED[:2], PATCH, None)   # no document mask: the score_mod alone
        torch.testing.assert_close(flex(one_per_row), sdpa(one_per_row), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", BIAS)
def test_without_gradients_row_chunks_bound_the_float_mask_and_change_nothing(variant, monkeypatch):
    model = make_model(variant)
    batch = pack(MIXED, PATCH, 16)
    with torch.no_grad():
        reference = model(batch)
    per_pair = 4 * model.pos.heads + bench.model.MASK_BUILD_BYTES
    monkeypatch.setattr(bench.model, "MASK_BYTES", 2 * per_pair * batch.row_len ** 2)   # two rows
    built, build = [], model.build_mask
    model.build_mask = lambda *args: built.append(build(*args)) or built[-1]
    with torch.no_grad():
        torch.testing.assert_close(model(batch), reference, atol=1e-5, rtol=0)
    assert len(built) == -(-batch.num_rows // 2) and max(len(mask) for mask in built) == 2
    x, ids, _ = model.embed(batch)
    assert model.row_chunks(ids, model.relative_bias(batch, ids)) == [slice(0, batch.num_rows)]   # with gradients


@pytest.mark.parametrize("variant", ["rope_axial", *BIAS])
def test_cls_with_bucketed_batches_and_a_compiled_encoder(variant):
    model, reference = make_model(variant, "cls"), make_model(variant, "cls")
    model.compile_encoder(backend="eager")
    batch = pack(MIXED, PATCH, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(pad_to_buckets(batch)), reference(batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("pool", POOLS)
def test_odd_grids_forward_backward_and_every_parameter_learns(variant, pool):
    model = make_model(variant, pool).train()
    logits = model(images_for(ODD_GRIDS), max_seq_len=32)
    assert logits.shape == (len(ODD_GRIDS), 5) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.arange(len(ODD_GRIDS))).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{variant}: {name} got no gradient"


@pytest.mark.parametrize("variant", COMBINED)
@pytest.mark.parametrize("combine", ["sum", "stack", "product"])
def test_every_combine_mode_is_packing_invariant(variant, combine):
    model = make_model(variant, combine=combine)
    with torch.no_grad():
        torch.testing.assert_close(model(MIXED, max_seq_len=48), alone(model, MIXED), atol=1e-5, rtol=0)


def test_combine_modes_differ():
    outs = [make_model("factorized_abs_learned", combine=c)(MIXED[:2]) for c in ("sum", "stack", "product")]
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[0], outs[2])


def test_nope_is_invariant_to_any_permutation_of_an_images_tokens():
    image = images_for([(4, 6)])[0]
    batch = pack([image], PATCH)
    perm = torch.randperm(batch.row_len, generator=torch.Generator().manual_seed(0))
    scrambled = PackedBatch(batch.patches[:, perm], batch.image_ids, batch.coords, batch.grids)  # coords stay
    with torch.no_grad():
        nope = make_model("nope")
        torch.testing.assert_close(nope(scrambled), nope(batch), atol=1e-5, rtol=0)
        positional = make_model("factorized_abs_learned")
        assert not torch.allclose(positional(scrambled), positional(batch), atol=1e-4)


@pytest.mark.parametrize("variant", ROTARY)
def test_rope_depends_only_on_relative_position(variant):
    # Mean pooling: an unrotated CLS token would see absolute angles.
    batch = pack(MIXED, PATCH, 64)
    shifted = PackedBatch(batch.patches, batch.image_ids, batch.coords + torch.tensor([3, 11]), batch.grids)
    model = make_model(variant)
    with torch.no_grad():
        torch.testing.assert_close(model(shifted), model(batch), atol=1e-4, rtol=0)


def test_patch_embedding_is_the_conv2d_without_bias_on_centred_pixels():
    model = make_model("nope")
    assert model.patch_embed.bias is None
    image = images_for([(3, 5)])[0]
    conv = model.patch_embed(2 * image[None] - 1).flatten(2)[0].T  # [tokens, dim], row-major over the grid
    batch = pack([image], PATCH)
    torch.testing.assert_close(model.embed_patches(batch.patches)[0], conv, atol=1e-5, rtol=0)


def test_attention_mask_is_block_diagonal_and_never_empty():
    ids = torch.tensor([[0, 0, 1, PAD], [2, PAD, PAD, PAD]])
    mask = attention_mask(ids)[:, 0]
    expected = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
                             [[1, 0, 0, 0], [0, 1, 1, 1], [0, 1, 1, 1], [0, 1, 1, 1]]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    assert mask.any(-1).all()


def test_eval_mode_refuses_dropped_tokens_and_training_accepts_them():
    model = make_model("factorized_frac_learned")
    dropped = pack(MIXED, PATCH, 64, drop_rates=torch.full((len(MIXED),), 0.5),
                   generator=torch.Generator().manual_seed(0))
    assert dropped.num_dropped > 0
    with pytest.raises(ValueError, match="eval mode"):
        model(dropped)
    assert model.train()(dropped).shape == (len(MIXED), 5)


def test_bad_images_name_their_index_and_shape():
    model = make_model("nope")
    with pytest.raises(ValueError, match=r"image 1 has shape \(3, 12, 16\).*multiples of patch_size=8"):
        model([torch.zeros(3, 8, 8), torch.zeros(3, 12, 16)])
    with pytest.raises(ValueError, match=r"image 0 has shape \(1, 8, 8\).*expects 3"):
        model([torch.zeros(1, 8, 8)])
    with pytest.raises(ValueError, match="empty image list"):
        model([])
    with pytest.raises(ValueError, match=r"image 0 has shape \(3, 4, 8\)"):
        model([torch.zeros(3, 4, 8)])


@pytest.mark.parametrize("variant,grid", [("pix2struct_2d", (8, 33)), ("factorized_abs_learned", (40, 2))])
def test_absolute_tables_reject_grids_beyond_them(variant, grid):
    model = make_model(variant)
    with pytest.raises(ValueError, match=rf"{variant}.*{grid[0]}x{grid[1]}.*32x32.*max_grid"):
        model(images_for([grid]))
    bigger = make_model(variant, max_grid=40)
    assert torch.isfinite(bigger(images_for([grid]))).all()


def test_unknown_options_are_errors_not_dropped():
    with pytest.raises(ValueError, match="unknown option.*combin.*valid options: combine, max_grid"):
        bench.build_model("factorized_abs_learned", num_classes=2, combin="sum")
    with pytest.raises(ValueError, match="unknown option.*combine.*valid options: none"):
        bench.build_model("nope", num_classes=2, combine="sum")
    with pytest.raises(ValueError, match="unknown variant 'vit'.*rope_mixed"):
        bench.build_model("vit", num_classes=2)


def test_same_seed_same_numbers():
    a = make_model("rope_mixed", "map", seed=4)(MIXED)
    b = make_model("rope_mixed", "map", seed=4)(MIXED)
    assert torch.equal(a, b)
