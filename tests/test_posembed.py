"""Each embedding is a function of (row, col) and the grid (h, w): equal inputs, equal outputs.
A relative bias is a function of the offset between two tokens of one image (and its grid)."""
import math

import pytest
import torch
import torch.nn.functional as F

from bench.data import SyntheticSource
from bench.model import build_model
from bench.posembed import (GridLimits, _FactorizedSinCos, build_posembed, list_variants, pair_column, variant_class,
                            variant_options)

DIM, HEADS, DEPTH = 32, 2, 2
# Derived from the registry, so a new variant is tested without editing this file.
VARIANTS = list_variants()
POSITIONAL = [v for v in VARIANTS if variant_class(v).kind != "none"]
FRACTIONAL = [v for v in VARIANTS if variant_class(v).coordinates == "fractional"]
ABSOLUTE = [v for v in POSITIONAL if variant_class(v).coordinates == "absolute"]
RESIZED = [v for v in VARIANTS if variant_class(v).coordinates == "grid"]
SINCOS = [v for v in VARIANTS if issubclass(variant_class(v), _FactorizedSinCos)]
BIAS = [v for v in VARIANTS if variant_class(v).kind == "bias"]
RELATIVE = [v for v in BIAS if variant_class(v).coordinates == "relative"]
RELATIVE_GRID = [v for v in BIAS if variant_class(v).coordinates == "relative_grid"]
COMBINES = ["sum", "stack", "product"]
# Every positional variant under each of its combine modes (one entry if it has none).
CONFIGS = [(v, {"combine": c} if "combine" in variant_options(v) else {})
           for v in POSITIONAL for c in (COMBINES if "combine" in variant_options(v) else [None])]
FRACTIONAL_CONFIGS = [(v, options) for v, options in CONFIGS if v in FRACTIONAL]


def embed(pos, coords, grids):
    coords, grids = torch.tensor(coords), torch.tensor(grids)
    out = pos.additive(coords, grids)
    return out if out is not None else pos.rotary(coords, grids).transpose(0, 1).flatten(1)


def make(variant, **options):
    torch.manual_seed(0)
    return build_posembed(variant, DIM, HEADS, DEPTH, **options)


def every_position(h, w):
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([rows, cols], -1).view(-1, 2), torch.tensor([[h, w]]).expand(h * w, 2)


def config_id(config):
    variant, options = config
    return "+".join([variant, *options.values()])


def pair_biases(pos, coords, grids):
    """[heads, T, T]: the bias of every pair of the tokens (coords, grids [T, 2]) laid out in one row."""
    t = len(coords)
    with torch.no_grad():
        bias = pos.bias(coords[None], grids[None])
        return bias.table[:, pair_column(bias, torch.tensor(0), torch.arange(t)[:, None], torch.arange(t)[None])]


def offset_biases(pos, h, w):
    """(offsets [K, 2], biases [K, heads]) of an h x w image: each offset (dy, dx) its pairs have and
    its bias, once every pair with that offset is checked to get the same bias."""
    coords, grids = every_position(h, w)
    per_pair = pair_biases(pos, coords, grids).flatten(1).T
    offsets, inverse = (coords[:, None] - coords[None]).view(-1, 2).unique(dim=0, return_inverse=True)
    biases = per_pair.new_zeros(len(offsets), pos.heads).index_copy_(0, inverse, per_pair)
    torch.testing.assert_close(per_pair, biases[inverse], atol=1e-6, rtol=0)
    return offsets, biases


def position_codes(pos, h, w):
    """What distinct positions of an h x w grid must differ in, for a variant of each kind. Additive:
    the vectors; rotary: the rotations (cos and sin of every angle); bias: for a relative bias the
    positions are the offsets (dy, dx) between two tokens, and distinct offsets within its range (a
    ``max_offset`` clamps the rest to the table's edge) must get distinct per-head biases."""
    coords, grids = every_position(h, w)
    with torch.no_grad():
        if pos.kind == "additive":
            return pos.additive(coords, grids)
        if pos.kind == "rotary":
            angles = pos.rotary(coords, grids).transpose(0, 1).flatten(1)
            return torch.cat([angles.cos(), angles.sin()], 1)
    if pos.kind == "bias":
        offsets, biases = offset_biases(pos, h, w)
        inside = offsets.abs().max(1).values <= getattr(pos, "max_offset", max(h, w))
        return biases[inside] - biases[inside].mean(0)   # against their spread: a constant moves no weight
    raise AssertionError(f"kind {pos.kind!r} has no distinct-position test: add one here")


# The closest two positions' codes, relative to the codes' size, must be above this. A bias maps the
# offsets (up to 47 x 47 of them) into a few heads, so at init two far offsets of a continuous (MLP)
# bias may pass close; what must never happen is the exact tie of a symmetry or a clamp (a dropped
# sign, |d| alone). Computed in float64, such a tie is below 1e-12.
DISTINCT = {"additive": 1e-3, "rotary": 1e-3, "bias": 1e-9}


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_distinct_positions_of_a_grid_get_distinct_embeddings(config):
    variant, options = config
    if variant_class(variant).coordinates == "grid":   # within 2x of the base grid for a half-pixel resize
        options = {**options, "base_grid": 12}
    pos = make(variant, **options).double()
    for h, w in [(2, 2), (3, 3), (5, 5), (4, 6), (6, 4), (1, 9), (7, 3), (24, 24)]:
        out = position_codes(pos, h, w)
        gaps = torch.cdist(out, out) + torch.eye(len(out), dtype=torch.float64).mul(1e9)
        closest = gaps.min().item()
        assert closest > DISTINCT[pos.kind] * out.norm(dim=1).mean().item(), (
            f"{variant} {options}: two positions of a {h}x{w} grid are {closest:.2e} apart")


@pytest.mark.parametrize("config", FRACTIONAL_CONFIGS, ids=config_id)
def test_fractional_equal_at_equal_relative_position(config):
    variant, options = config
    pos = make(variant, **options)
    # (p + 0.5) / side: p of 2 matches 3p + 1 of 6, p of 10 matches 3p + 1 of 30.
    small = embed(pos, [[0, 1], [1, 0], [0, 3]], [[2, 2], [2, 10], [2, 10]])
    large = embed(pos, [[1, 4], [4, 1], [1, 10]], [[6, 6], [6, 30], [6, 30]])
    torch.testing.assert_close(small, large, atol=1e-5, rtol=0)
    # and the same index on another grid is another position
    assert not torch.allclose(embed(pos, [[1, 1]], [[2, 2]]), embed(pos, [[1, 1]], [[6, 6]]), atol=1e-4)


@pytest.mark.parametrize("variant", ABSOLUTE)
def test_absolute_equal_at_equal_index(variant):
    pos = make(variant)
    a = embed(pos, [[0, 1], [3, 2], [2, 5]], [[4, 4], [5, 3], [3, 9]])
    b = embed(pos, [[0, 1], [3, 2], [2, 5]], [[9, 2], [20, 31], [30, 6]])
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(a[0], a[1])


@pytest.mark.parametrize("variant", RESIZED)
def test_resized_table_on_its_base_grid_is_the_table(variant):
    pos = make(variant, base_grid=(4, 6))
    out = pos.additive(*every_position(4, 6))
    assert torch.equal(out, pos.table.flatten(0, 1))


def test_tables_are_sized_by_their_grid_defaults_hook():
    grids = GridLimits(largest_train=6, largest_eval=9, train_square=3)
    for variant in VARIANTS:
        hook = variant_class(variant).grid_defaults(grids)
        if variant in RESIZED:   # the vanilla ViT's training grid; the largest square a resized table trains on
            assert hook == {"base_grid": 3}, variant
        elif "max_grid" in variant_options(variant):   # every grid the experiment meets
            assert hook == {"max_grid": 9}, variant
        elif "max_offset" in variant_options(variant):   # every offset of a training image
            assert hook == {"max_offset": 5}, variant
        elif "reference_grid" in variant_options(variant):   # Swin V2's pretraining window
            assert hook == {"reference_grid": 6}, variant
        elif "table_size" in variant_options(variant):   # a fractional table: a row per training patch
            assert hook == {"table_size": 6}, variant
        else:
            assert hook == {}, f"{variant}: the base class's, nothing depends on the grids"


@pytest.mark.parametrize("variant", RESIZED)
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias,align_corners", [(True, False), (False, False), (False, True)])
def test_resized_table_follows_its_interpolation_once_per_grid(variant, interpolation, antialias, align_corners):
    pos = make(variant, interpolation=interpolation, antialias=antialias, align_corners=align_corners)  # base 8x8
    grid = pos.table.permute(2, 0, 1)[None]
    (c35, g35), (c12, g12) = every_position(3, 5), every_position(12, 10)
    out = pos.additive(torch.cat([c35, c12, c35]), torch.cat([g35, g12, g35]))
    for size, rows in [((3, 5), out[:15]), ((12, 10), out[15:135]), ((3, 5), out[135:])]:
        expected = F.interpolate(grid, size=size, mode=interpolation, antialias=antialias,
                                 align_corners=align_corners)
        torch.testing.assert_close(rows, expected[0].flatten(1).T)


@pytest.mark.parametrize("variant", RESIZED)
def test_resized_table_rejects_an_unknown_interpolation_and_antialiased_aligned_corners(variant):
    with pytest.raises(ValueError, match=f"{variant}.*interpolation must be bilinear or bicubic, got 'nearest'"):
        make(variant, interpolation="nearest")
    with pytest.raises(ValueError, match=f"{variant}.*antialias needs align_corners false"):
        make(variant, antialias=True, align_corners=True)


@pytest.mark.parametrize("variant", RESIZED)
def test_half_pixel_resize_repeats_the_edges_when_enlarging_3x_and_aligned_corners_do_not(variant):
    coords, grids = every_position(8, 24)   # columns from a base of 8, rows as they are
    cols = lambda out: out.view(8, 24, DIM).transpose(0, 1).flatten(1)
    half_pixel = cols(make(variant, antialias=False, align_corners=False).additive(coords, grids))
    aligned = cols(make(variant, antialias=False, align_corners=True).additive(coords, grids))
    torch.testing.assert_close(half_pixel[[0, -1]], half_pixel[[1, -2]], atol=1e-7, rtol=0)
    assert torch.cdist(aligned, aligned).add(torch.eye(24)).min() > 1e-3
    torch.testing.assert_close(aligned[[0, -1]], make(variant).table[:, [0, -1]].transpose(0, 1).flatten(1))


def test_the_vit_resizes_as_the_seed_and_the_naflex_variant_as_big_vision():
    assert (variant_options("vit_1d_interp")["align_corners"], variant_options("vit_1d_interp")["antialias"]) \
        == (True, False)
    assert (variant_options("learned_2d_resized")["align_corners"], variant_options("learned_2d_resized")["antialias"]) \
        == (False, True)


def test_only_the_vanilla_vit_trains_at_one_fixed_square_resolution():
    assert [v for v in VARIANTS if variant_class(v).fixed_square_training] == ["vit_1d_interp"]


@pytest.mark.parametrize("variant", SINCOS)
@pytest.mark.parametrize("combine", COMBINES)
def test_sincos_axes_share_no_frequency_and_scale_sets_the_size(variant, combine):
    pos = make(variant, combine=combine)
    assert not set(pos.phi_y.freqs.tolist()) & set(pos.phi_x.freqs.tolist())
    coords, grids = every_position(5, 5)   # a training grid
    out = pos.additive(coords, grids)
    # At init, as visible as the centred patch content of real scenes, without swamping it.
    spread = out.std(0).mean()
    assert 0.4 * CONTENT_SPREAD < spread < 1.6 * CONTENT_SPREAD, (spread, CONTENT_SPREAD)   # product: half the RMS
    torch.testing.assert_close(make(variant, combine=combine, scale=1.0).additive(coords, grids) * pos.scale, out)


def _content_spread() -> float:
    """Token-to-token std of the patch content at init: a nope model's embedding of synthetic scenes."""
    torch.manual_seed(0)
    model = build_model("nope", 9, patch_size=4, dim=DIM, depth=DEPTH, heads=HEADS)
    batch, _ = SyntheticSource("abs_position", "train", 64).load_packed(range(64), [(20, 20)] * 64, 4, 64)
    with torch.no_grad():
        return float(model.embed_patches(batch.patches[batch.valid]).std(0).mean())


CONTENT_SPREAD = _content_spread()


def test_pix2struct_table_is_joint_not_factorized():
    pos = make("pix2struct_2d")
    e = embed(pos, [[0, 0], [0, 1], [1, 0], [1, 1]], [[4, 4]] * 4)
    # a row+col sum would satisfy e00 + e11 == e01 + e10; a joint table does not
    assert not torch.allclose(e[0] + e[3], e[1] + e[2], atol=1e-4)


def test_rope_axial_rotates_half_with_col_and_half_with_row():
    pos = make("rope_axial")
    angles = pos.rotary(torch.tensor([[0, 3], [5, 0]]), torch.tensor([[8, 8], [8, 8]]))[0, :, 0]
    half = angles.shape[-1] // 2
    assert torch.all(angles[0, half:] == 0) and torch.all(angles[0, :half] > 0)   # col only
    assert torch.all(angles[1, :half] == 0) and torch.all(angles[1, half:] > 0)   # row only


def test_rope_mixed_has_per_layer_per_head_learnable_frequencies():
    pos = make("rope_mixed")
    assert pos.freqs.requires_grad and pos.freqs.shape == (2, DEPTH, HEADS, DIM // HEADS // 2)
    angles = pos.rotary(torch.tensor([[1, 2]]), torch.tensor([[4, 4]]))
    assert angles.shape == (DEPTH, 1, HEADS, DIM // HEADS // 2)
    assert not torch.allclose(angles[0], angles[1])


def test_rope_needs_head_dim_divisible_by_four():
    with pytest.raises(ValueError, match="rope_axial.*divisible by 4"):
        build_posembed("rope_axial", 24, 4, 1)


def test_bad_combine_is_named():
    with pytest.raises(ValueError, match="factorized_frac_sincos.*combine must be sum, stack or product"):
        make("factorized_frac_sincos", combine="mean")


@pytest.mark.parametrize("variant", RELATIVE)
def test_relative_bias_is_a_function_of_the_offset_alone(variant):
    pos = make(variant)
    small, small_biases = offset_biases(pos, 3, 5)
    large, large_biases = offset_biases(pos, 24, 24)
    index = ((small[:, None] == large[None]).all(-1)).float().argmax(1)   # each small offset among the large
    torch.testing.assert_close(small_biases, large_biases[index], atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", RELATIVE_GRID)
def test_grid_relative_bias_is_a_function_of_the_offset_and_the_grid(variant):
    pos = make(variant)
    (offsets_5, biases_5), (offsets_24, biases_24) = offset_biases(pos, 5, 5), offset_biases(pos, 24, 24)
    one_down = lambda offsets: ((offsets == torch.tensor([1, 0])).all(1)).nonzero().item()   # noqa: E731
    assert not torch.allclose(biases_5[one_down(offsets_5)], biases_24[one_down(offsets_24)], atol=1e-4)


@pytest.mark.parametrize("variant", BIAS)
def test_a_bias_ignores_the_other_images_of_its_row(variant):
    """The table covers the row's largest grid (or one block per grid): an image's pairs read the same."""
    pos = make(variant)
    mine = every_position(3, 4)
    big, tiny = every_position(24, 20), every_position(1, 1)
    alone = pair_biases(pos, *mine)
    packed = pair_biases(pos, *(torch.cat(parts) for parts in zip(big, mine, tiny)))
    torch.testing.assert_close(packed[:, 480:492, 480:492], alone, atol=1e-6, rtol=0)


def test_swin_rpb_reads_its_table_and_clamps_each_axis_beyond_it():
    pos = make("swin_rpb", max_offset=3)
    assert pos.table.shape == (7, 7, HEADS)
    offsets = torch.tensor([[0, 0], [2, -3], [9, -1], [-20, 30]])
    expected = pos.table[[3, 5, 6, 0], [3, 0, 2, 6]]
    torch.testing.assert_close(pos.values(offsets, None), expected, atol=0, rtol=0)


def test_swinv2_cpb_is_16_sigmoid_of_an_mlp_over_log_spaced_offsets():
    pos = make("swinv2_cpb", reference_grid=5)
    offsets = torch.tensor([[0, 0], [4, -1], [-9, 2]])
    d = 8 * offsets.float() / 4
    expected = 16 * torch.sigmoid(pos.mlp(torch.sign(d) * torch.log2(1 + d.abs()) / 3))
    torch.testing.assert_close(pos.values(offsets, None), expected)
    far = pos.values(torch.tensor([[40, -40]]), None)
    assert ((far > 0) & (far < 16)).all()


def test_fire_2d_normalises_each_axis_by_its_side_or_the_threshold():
    pos = make("fire_2d", c=0.5, threshold=4.0)
    offsets, grids = torch.tensor([[2, -1], [-7, 0], [1, 1]]), torch.tensor([[3, 9], [12, 2], [1, 30]])
    psi = lambda x: math.log(0.5 * x + 1)   # noqa: E731
    # sides below the threshold (4) are normalised by it
    u = torch.tensor([[psi(2) / psi(4), -psi(1) / psi(9)], [-psi(7) / psi(12), 0.0],
                      [psi(1) / psi(4), psi(1) / psi(30)]])
    torch.testing.assert_close(pos.values(offsets, grids), pos.mlp(u), atol=1e-5, rtol=0)


def test_relative_bias_options_are_checked():
    with pytest.raises(ValueError, match="swin_rpb.*max_offset must be at least 1"):
        make("swin_rpb", max_offset=0)
    with pytest.raises(ValueError, match="swinv2_cpb.*reference_grid >= 2"):
        make("swinv2_cpb", reference_grid=1)
    with pytest.raises(ValueError, match="fire_2d.*c > 0"):
        make("fire_2d", c=0.0)


def test_rope_axial_normalized_turns_with_patch_centres_in_minus_one_to_one():
    pos = make("rope_axial_normalized")
    head_dim = DIM // HEADS
    periods = 100.0 ** (4 * torch.arange(head_dim // 4) / head_dim)   # DINOv3's, in units of the coordinate
    angles = pos.rotary(torch.tensor([[0, 4], [2, 0]]), torch.tensor([[3, 5], [3, 5]]))[0, :, 0]
    # (row, col) (0, 4) of 3 x 5: centres (-2/3, 0.8); (2, 0): (2/3, -0.8). Columns first, then rows.
    expected = 2 * math.pi * torch.tensor([[0.8, -2 / 3], [-0.8, 2 / 3]]).repeat_interleave(head_dim // 4, 1) \
        / periods.repeat(2)
    torch.testing.assert_close(angles, expected)


def test_coordinate_augmentation_draws_one_row_per_image_within_its_ranges():
    assert make("rope_axial_normalized").draw(4) is None   # off by default
    torch.manual_seed(3)
    draws = make("rope_axial_normalized", shift=0.2, jitter=1.5, rescale=2.0).draw(4000)
    torch.manual_seed(3)
    assert torch.equal(make("rope_axial_normalized", shift=0.2, jitter=1.5, rescale=2.0).draw(4000), draws)
    shift, log_scale = draws[:, :2], draws[:, 2:].log()
    assert draws.shape == (4000, 4) and shift.abs().max() <= 0.2 and shift.abs().max() > 0.19
    assert log_scale.abs().max() <= math.log(1.5 * 2.0) + 1e-6
    assert (shift[:, 0] - shift[:, 1]).abs().max() > 0.1   # per axis
    only_rescale = make("rope_axial_normalized", rescale=2.0).draw(100)
    assert torch.all(only_rescale[:, :2] == 0) and torch.equal(only_rescale[:, 2], only_rescale[:, 3])   # common
    only_jitter = make("rope_axial_normalized", jitter=1.5).draw(100)
    assert (only_jitter[:, 2] != only_jitter[:, 3]).all()   # per axis
    with pytest.raises(ValueError, match="rope_axial_normalized.*jitter >= 1"):
        make("rope_axial_normalized", jitter=0.5)


def test_augmented_rotation_moves_each_token_by_its_images_draw():
    pos = make("rope_axial_normalized", shift=0.2)
    coords, grids = every_position(2, 3)
    draws = torch.tensor([[0.1, -0.2, 1.5, 0.5]]).expand(6, 4)
    centres = 2 * (coords + 0.5) / grids - 1
    torch.testing.assert_close(pos.position(coords, grids, draws), (centres + draws[:, :2]) * draws[:, 2:])
