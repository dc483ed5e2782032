"""Each embedding is a function of (row, col) and the grid (h, w): equal inputs, equal outputs."""
import pytest
import torch
import torch.nn.functional as F

from bench.posembed import GridLimits, build_posembed, list_variants, variant_class, variant_options

DIM, HEADS, DEPTH = 32, 2, 2


def reads_positions(variant: str) -> bool:
    pos = build_posembed(variant, DIM, HEADS, DEPTH)
    coords, grids = torch.tensor([[0, 1]]), torch.tensor([[2, 2]])
    return pos.additive(coords, grids) is not None or pos.rotary(coords, grids) is not None


# Derived from the registry, so a new variant is tested without editing this file.
FRACTIONAL = [v for v in list_variants() if "_frac_" in v]
RESIZED = [v for v in list_variants() if "base_grid" in variant_options(v)]   # one table resized to each grid
ABSOLUTE = [v for v in list_variants() if v not in FRACTIONAL + RESIZED and reads_positions(v)]


def embed(pos, coords, grids):
    coords, grids = torch.tensor(coords), torch.tensor(grids)
    out = pos.additive(coords, grids)
    return out if out is not None else pos.rotary(coords, grids).transpose(0, 1).flatten(1)


def make(variant, **options):
    torch.manual_seed(0)
    return build_posembed(variant, DIM, HEADS, DEPTH, **options)


@pytest.mark.parametrize("variant", FRACTIONAL)
@pytest.mark.parametrize("combine", ["sum", "stack", "product"])
def test_fractional_equal_at_equal_relative_position(variant, combine):
    pos = make(variant, combine=combine)
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


def test_tables_are_sized_by_their_grid_defaults_hook():
    grids = GridLimits(largest_train=6, largest_eval=9, reference=3)
    assert variant_class("pix2struct_2d").grid_defaults(grids) == {"max_grid": 9}
    assert variant_class("factorized_abs_learned").grid_defaults(grids) == {"max_grid": 9}
    assert variant_class("vit_1d_interp").grid_defaults(grids) == {"base_grid": 3}
    assert variant_class("rope_axial").grid_defaults(grids) == {}, "the base class's: nothing depends on the grids"


def test_vit_1d_interp_on_its_base_grid_is_the_table():
    pos = make("vit_1d_interp", base_grid=(4, 6))
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij")
    coords = torch.stack([rows, cols], -1).view(-1, 2)
    out = pos.additive(coords, torch.tensor([[4, 6]]).expand(24, 2))
    assert torch.equal(out, pos.table)


def test_vit_1d_interp_resizes_with_antialiased_bicubic_once_per_grid():
    pos = make("vit_1d_interp")  # base 8x8
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
    coords = torch.stack([rows, cols], -1).view(-1, 2)
    out = pos.additive(coords, torch.tensor([[3, 5]]).expand(15, 2))
    grid = pos.table.T.reshape(1, DIM, 8, 8)
    expected = F.interpolate(grid, size=(3, 5), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(out, expected[0].flatten(1).T)


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
