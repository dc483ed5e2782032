"""Registry of positional embeddings.

Every embedding is a function of each token's ``coords`` (row, col) and its image's ``grids``
(h, w), both long tensors of shape [T, 2]; never of the token's place in the sequence. An
embedding contributes an additive vector per token (``additive``), rotary angles for the queries
and keys of every layer (``rotary``) or an attention bias over the relative positions of two
tokens of one image (``bias``); NoPE contributes none of them.

Adding a variant: write one small class, decorate it with ``@register("name")``, and add one
line to docs/embeddings.md. Its ``kind`` (additive, rotary, bias or none) follows from the method
it overrides; ``coordinates`` says what its embedding is a function of (the tests check it). An
option whose right value depends on the experiment's grids (a table's size) gets its default
from the class's ``grid_defaults`` hook.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_REGISTRY: dict[str, type["PositionalEmbedding"]] = {}


def register(name: str):
    def decorate(cls):
        if name in _REGISTRY:
            raise ValueError(f"positional embedding {name!r} is registered twice")
        cls.variant = name
        _REGISTRY[name] = cls
        return cls
    return decorate


def list_variants() -> list[str]:
    return list(_REGISTRY)


class VariantInfo(NamedTuple):
    """What reports and ``--list`` say about a variant (the class attributes of that name)."""
    title: str | None
    family: str
    summary: str
    paper: str


def variant_info(name: str) -> VariantInfo:
    """The variant's description; a name this checkout does not register (an old run's) gets the
    base class's: no title, family "other", no summary or paper."""
    cls = _REGISTRY.get(name, PositionalEmbedding)
    return VariantInfo(cls.title, cls.family, cls.summary, cls.paper)


def variant_options(name: str) -> dict[str, object]:
    """The keyword options a variant accepts, with their defaults."""
    params = inspect.signature(variant_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


def variant_class(name: str) -> type["PositionalEmbedding"]:
    """The registered class: its attributes (kind, coordinates, fixed_square_training) describe it."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown variant {name!r}; valid variants: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build_posembed(name: str, dim: int, heads: int, depth: int, **options) -> "PositionalEmbedding":
    allowed = variant_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise ValueError(f"variant {name!r} got unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    return variant_class(name)(dim, heads, depth, **options)


@dataclass(frozen=True)
class GridLimits:
    """The patch grids an experiment gives a variant, in patches per side."""
    largest_train: int   # longest side of any training image
    largest_eval: int    # longest side of any eval image
    train_square: int    # side of the square grid of the largest training side sqrt(H * W)

    @property
    def largest(self) -> int:
        return max(self.largest_train, self.largest_eval)


class PositionalEmbedding(nn.Module):
    """Base class; on its own it is NoPE."""
    variant = "base"
    kind = "none"   # "additive", "rotary", "bias" or "none": set from the method a subclass overrides
    # What the embedding is a function of: "absolute", each token's (row, col) alone; "fractional",
    # its patch centre relative to the grid, ((row + 0.5) / h, (col + 0.5) / w), alone; "grid",
    # (row, col) and (h, w) together (a table resized to each grid). A bias is a function of the
    # offset (dy, dx) between two tokens of one image: alone ("relative") or with the image's grid
    # (h, w) ("relative_grid").
    coordinates = "absolute"
    # True: a vanilla ViT, trained at one fixed square resolution. An experiment gives it one (its
    # reference square side) unless the variant's entry sets its own resolution.
    fixed_square_training = False
    # For reports and --list: a display name, the family it is grouped and coloured with, one line
    # on what it does and where it comes from. A variant without them is shown by its registry name.
    title: str | None = None
    family = "other"
    summary = ""
    paper = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for kind in ("additive", "rotary", "bias"):
            if getattr(cls, kind) is not getattr(PositionalEmbedding, kind):
                cls.kind = kind

    def __init__(self, dim: int, heads: int, depth: int):
        super().__init__()
        self.dim, self.heads, self.depth = dim, heads, depth

    @classmethod
    def grid_defaults(cls, grids: GridLimits) -> dict[str, object]:
        """Defaults of options that depend on the experiment's grids; the config can override
        each. A table-based variant sizes its table here."""
        return {}

    def draw(self, num_images: int) -> Tensor | None:
        """Training-time random parameters, one row per image ([N, k]), or None (the default: the
        variant draws nothing). The model calls it in training only, and hands each token its own
        image's row as ``draws`` ([T, k]), so an image's embedding never depends on its batch-mates."""
        return None

    def additive(self, coords: Tensor, grids: Tensor, draws: Tensor | None = None) -> Tensor | None:
        """[T, dim] added to the patch embeddings, or None."""
        return None

    def rotary(self, coords: Tensor, grids: Tensor, draws: Tensor | None = None) -> Tensor | None:
        """Rotation angles [depth or 1, T, heads or 1, head_dim // 2] for queries and keys, or None."""
        return None

    def bias(self, coords: Tensor, grids: Tensor) -> "PairBias | None":
        """The attention bias of every pair of tokens of one image (``PairBias``), or None. Unlike the
        others it takes the packed rows, coords and grids [R, L, 2]; the model calls it once per batch
        and every layer shares it."""
        return None

    def _check_grid(self, grids: Tensor, max_h: int, max_w: int) -> None:
        # An absolute table has no row for an unseen index: say so instead of crashing in indexing.
        if grids.numel() and (grids[:, 0].max() > max_h or grids[:, 1].max() > max_w):
            h, w = grids.max(0).values.tolist()
            raise ValueError(f"variant {self.variant!r}: image grid of up to {h}x{w} patches exceeds its "
                             f"table of {max_h}x{max_w}; raise the variant's max_grid option")


def _normal_table(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * 0.02)


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


@register("nope")
class NoPE(PositionalEmbedding):
    """No positional information: the floor every other variant must beat."""
    title = "No embedding (NoPE)"
    family = "none"
    summary = "No positional information: the floor every other variant must beat"
    paper = "Kazemnejad et al. 2023 (NoPE); Dosovitskiy et al. 2021 (ViT ablation)"


def _resized_rows(table: Tensor, coords: Tensor, grids: Tensor, mode: str, antialias: bool,
                  align_corners: bool) -> Tensor:
    """Each token's row of ``table`` ([h0, w0, dim]) resized to its image's grid.

    The table is resized once per distinct grid in the batch (many images share a size), never per
    image, and each grid's resize depends on the table alone, never on the batch-mates.
    """
    unique, inverse = torch.unique(grids, dim=0, return_inverse=True)
    image = table.permute(2, 0, 1)[None]
    tables, offsets, start = [], [], 0
    for h, w in unique.tolist():
        # The same size is an exact copy, so the base grid reads the table itself.
        resized = F.interpolate(image, size=(h, w), mode=mode, antialias=antialias, align_corners=align_corners)
        tables.append(resized[0].permute(1, 2, 0).reshape(h * w, -1))
        offsets.append(start)
        start += h * w
    offsets = torch.tensor(offsets, device=coords.device)[inverse]
    return torch.cat(tables)[offsets + coords[:, 0] * grids[:, 1] + coords[:, 1]]


INTERPOLATIONS = ("bilinear", "bicubic")


class _ResizedTable(PositionalEmbedding):
    """A learned joint table for a base grid, resized to each image's grid (``_resized_rows``).

    ``align_corners`` maps the corner patch centres onto each other, so distinct positions stay
    distinct on every grid; the half-pixel resize (False) repeats the outer rows and columns when
    it enlarges a table 3x or more. ``antialias`` only acts when a table shrinks, and needs the
    half-pixel resize (torch's antialiased kernels ignore align_corners).
    """
    coordinates = "grid"

    def __init__(self, dim, heads, depth, base_grid, interpolation: str, antialias: bool, align_corners: bool):
        super().__init__(dim, heads, depth)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"variant {self.variant!r}: interpolation must be bilinear or bicubic, "
                             f"got {interpolation!r}")
        if antialias and align_corners:
            raise ValueError(f"variant {self.variant!r}: antialias needs align_corners false "
                             "(torch's antialiased resize ignores align_corners)")
        self.base_grid, self.interpolation = _pair(base_grid), interpolation
        self.antialias, self.align_corners = antialias, align_corners
        self.table = _normal_table(*self.base_grid, dim)

    @classmethod
    def grid_defaults(cls, grids):
        # The square grid of the largest training side: a vanilla ViT's own training grid (it
        # trains at one square side), and for a table resized to every grid the largest square
        # grid it trains on.
        return {"base_grid": grids.train_square}

    def additive(self, coords, grids):
        return _resized_rows(self.table, coords, grids, self.interpolation, self.antialias, self.align_corners)


@register("vit_1d_interp")
class ViT1DInterp(_ResizedTable):
    """Vanilla ViT: trained at one fixed square resolution, its learned table of (R/P)^2 rows (kept as
    the grid they cover) is linearly interpolated to other grids, i.e. at evaluation, as the seed says."""
    title = "1D learned, interpolated (ViT)"
    family = "1D learned"
    summary = "Trained at one fixed square resolution; its learned table is interpolated to other grids at evaluation"
    paper = "Dosovitskiy et al. 2021 (ViT)"
    fixed_square_training = True

    def __init__(self, dim, heads, depth, *, base_grid: int | tuple[int, int] = 8, interpolation: str = "bilinear",
                 antialias: bool = False, align_corners: bool = True):
        # The seed ViT's own resize (vit_jax): scipy.ndimage.zoom(order=1), linear with aligned corners.
        super().__init__(dim, heads, depth, base_grid, interpolation, antialias, align_corners)


@register("learned_2d_resized")
class Learned2DResized(_ResizedTable):
    """The same table resized to every image's grid in training and evaluation: SigLIP 2 NaFlex and
    big_vision NaFlex (bilinear, antialiased, half-pixel: the defaults), timm NaFlexViT (bicubic)."""
    title = "2D learned, resized (NaFlex)"
    family = "2D joint learned"
    summary = "One learned 2D table resized to every image's grid, in training and evaluation"
    paper = "Tschannen et al. 2025 (SigLIP 2 NaFlex); timm NaFlexViT"

    def __init__(self, dim, heads, depth, *, base_grid: int | tuple[int, int] = 8, interpolation: str = "bilinear",
                 antialias: bool = True, align_corners: bool = False):
        super().__init__(dim, heads, depth, base_grid, interpolation, antialias, align_corners)


@register("pix2struct_2d")
class Pix2StructJoint2D(PositionalEmbedding):
    """A joint learned table indexed by (row, col), as the NaViT paper describes Pix2Struct."""
    title = "2D joint learned (Pix2Struct)"
    family = "2D joint learned"
    summary = "A joint learned table indexed by (row, col), as the NaViT paper describes Pix2Struct"
    paper = "Lee et al. 2023 (Pix2Struct), as described by Dehghani et al. 2023 (NaViT)"

    def __init__(self, dim, heads, depth, *, max_grid: int | tuple[int, int] = 32):
        super().__init__(dim, heads, depth)
        self.max_grid = _pair(max_grid)
        self.table = _normal_table(*self.max_grid, dim)

    @classmethod
    def grid_defaults(cls, grids):
        # Every grid the experiment meets has its rows, so unseen coordinates stay at their
        # initial values rather than crash: that failure is what the benchmark measures.
        return {"max_grid": grids.largest}

    def additive(self, coords, grids):
        self._check_grid(grids, *self.max_grid)
        return self.table[coords[:, 0], coords[:, 1]]


# ---- factorized: phi_y(row) and phi_x(col), combined by sum, stack or product ----------------

class _AxisLearned(nn.Module):
    """Learned table over the absolute patch index."""

    def __init__(self, out_dim: int, size: int):
        super().__init__()
        self.table = _normal_table(size, out_dim)

    def forward(self, index: Tensor) -> Tensor:
        return self.table[index.long()]


class _AxisLearnedInterp(nn.Module):
    """Learned table over [0, 1], sampled at a fractional coordinate by linear interpolation."""

    def __init__(self, out_dim: int, size: int):
        super().__init__()
        self.table = _normal_table(size, out_dim)

    def forward(self, r: Tensor) -> Tensor:
        u = r * (self.table.shape[0] - 1)
        lo = u.floor().long().clamp(0, self.table.shape[0] - 2)
        t = (u - lo).unsqueeze(-1)
        return self.table[lo] * (1 - t) + self.table[lo + 1] * t


class _AxisSinCos(nn.Module):
    """Fixed sin/cos features of one axis (0: rows, 1: columns).

    Both axes draw from one geometric ladder of distinct wavelengths, interleaved (rows take the
    even rungs, columns the odd ones): no frequency serves both axes, so sum and product tell
    (r, c) from (c, r) as stack does.
    """

    def __init__(self, out_dim: int, axis: int, longest: float, shortest: float):
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"sinusoidal embeddings need an even width per axis, got {out_dim}")
        wavelengths = torch.exp(torch.linspace(math.log(longest), math.log(shortest), out_dim))
        self.register_buffer("freqs", 2 * math.pi / wavelengths[axis::2], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        angles = x.float().unsqueeze(-1) * self.freqs
        return torch.cat([angles.sin(), angles.cos()], -1)


class _AxisFourier(nn.Module):
    """Learned Fourier features (Li et al. 2021): cos/sin of a learnable W_r x, then an MLP."""

    def __init__(self, out_dim: int, gamma: float):
        super().__init__()
        self.num_features = 2 * max(1, out_dim // 2)
        self.w_r = nn.Parameter(torch.randn(self.num_features // 2, 1) * gamma)
        self.mlp = nn.Sequential(nn.Linear(self.num_features, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        proj = x.to(self.w_r.dtype).unsqueeze(-1) @ self.w_r.T
        features = torch.cat([proj.cos(), proj.sin()], -1) / math.sqrt(self.num_features)
        return self.mlp(features)


class Factorized(PositionalEmbedding):
    """phi_y(row) and phi_x(col), one encoder per axis; subclasses choose coordinate and encoder.

    Absolute coordinates are the patch index p; fractional ones the patch centre (p + 0.5) / side,
    so they do not depend on the image size (and hide its aspect ratio). ``make_axis(width, axis)``
    builds the encoder of one axis (0: rows, 1: columns).
    """

    def __init__(self, dim, heads, depth, combine: str, make_axis: Callable[[int, int], nn.Module]):
        super().__init__(dim, heads, depth)
        if combine not in ("sum", "stack", "product"):
            raise ValueError(f"variant {self.variant!r}: combine must be sum, stack or product, got {combine!r}")
        if combine == "stack" and dim % 2:
            raise ValueError(f"variant {self.variant!r}: combine='stack' needs an even dim, got {dim}")
        self.combine = combine
        axis_dim = dim // 2 if combine == "stack" else dim
        self.phi_y, self.phi_x = make_axis(axis_dim, 0), make_axis(axis_dim, 1)

    def position(self, coords: Tensor, grids: Tensor) -> Tensor:
        """The coordinate each axis encoder reads: [T, 2]."""
        return (coords.float() + 0.5) / grids.float() if self.coordinates == "fractional" else coords

    def additive(self, coords, grids):
        pos = self.position(coords, grids)
        y, x = self.phi_y(pos[:, 0]), self.phi_x(pos[:, 1])
        if self.combine == "sum":
            return y + x
        if self.combine == "stack":
            return torch.cat([y, x], -1)
        return y * x


@register("factorized_abs_learned")
class FactorizedAbsLearned(Factorized):
    title = "Factorized abs. learned"
    family = "factorized absolute"
    summary = "Learned row and column tables over the absolute patch index"
    paper = "Dehghani et al. 2023 (NaViT)"

    def __init__(self, dim, heads, depth, *, combine: str = "sum", max_grid: int = 32):
        super().__init__(dim, heads, depth, combine, lambda d, _: _AxisLearned(d, max_grid))
        self.max_grid = max_grid

    @classmethod
    def grid_defaults(cls, grids):
        return {"max_grid": grids.largest}   # as pix2struct_2d's

    def additive(self, coords, grids):
        self._check_grid(grids, self.max_grid, self.max_grid)
        return super().additive(coords, grids)


@register("factorized_frac_learned")
class FactorizedFracLearned(Factorized):
    title = "Factorized frac. learned"
    family = "factorized fractional"
    summary = "Learned row and column tables over [0, 1], interpolated at the patch centre's fraction of the side"
    paper = "Dehghani et al. 2023 (NaViT)"
    coordinates = "fractional"

    def __init__(self, dim, heads, depth, *, combine: str = "sum", table_size: int = 8):
        super().__init__(dim, heads, depth, combine, lambda d, _: _AxisLearnedInterp(d, table_size))

    @classmethod
    def grid_defaults(cls, grids):
        # As many rows as the longest training side has patches, so every row sits near a trained
        # coordinate. At 32 rows for 4-8-patch grids, one seed in six stayed on the chance plateau
        # until step 454 of 800 (47% at the training resolution, against 93-96% for the others).
        return {"table_size": max(2, grids.largest_train)}


# Sin/cos wavelengths, longest first, for the grids we use (training 4-6 patches a side, evaluation
# up to 24): from 96 patches (4x the largest side, so the slowest channel is monotone over every
# grid) down to 2.5 patches (just above the 2-patch Nyquist limit).
ABS_WAVELENGTHS = (96.0, 2.5)
# Fractional r lies in (0, 1): the same ladder in units of a 24-patch side.
FRAC_WAVELENGTHS = (96.0 / 24, 2.5 / 24)
# sum's per-channel RMS is about ``scale`` (stack 0.7x, product 0.5x). At 0.2 the features' spread
# over the tokens of a batch (std 0.12 abs, 0.18 frac) matches the centred patch content's at init
# (0.12): position is as visible as content without swamping it. In the default experiment the loss
# left the chance plateau after 300-550 steps at 0.04, 100-200 at 0.1, 80-130 at 0.2 (docs/embeddings.md).
SINCOS_SCALE = 0.2


class _FactorizedSinCos(Factorized):
    """Fixed sin/cos features per axis (``_AxisSinCos``), combined, then times ``scale``."""
    wavelengths: tuple[float, float]

    def __init__(self, dim, heads, depth, combine: str, scale: float):
        longest, shortest = self.wavelengths
        super().__init__(dim, heads, depth, combine, lambda d, axis: _AxisSinCos(d, axis, longest, shortest))
        self.scale = scale

    def additive(self, coords, grids):
        return self.scale * super().additive(coords, grids)


@register("factorized_abs_sincos")
class FactorizedAbsSinCos(_FactorizedSinCos):
    title = "Factorized abs. sin-cos"
    family = "factorized absolute"
    summary = "Fixed sin/cos features of the absolute patch index, per axis"
    paper = "Vaswani et al. 2017; Dehghani et al. 2023 (NaViT)"
    wavelengths = ABS_WAVELENGTHS

    def __init__(self, dim, heads, depth, *, combine: str = "sum", scale: float = SINCOS_SCALE):
        super().__init__(dim, heads, depth, combine, scale)

    def position(self, coords, grids):
        # The patch centre p + 0.5: at p = 0 every sin would vanish, and product would lose whole
        # rows and columns of channels with it.
        return coords.float() + 0.5


@register("factorized_frac_sincos")
class FactorizedFracSinCos(_FactorizedSinCos):
    title = "Factorized frac. sin-cos"
    family = "factorized fractional"
    summary = "Fixed sin/cos features of the patch centre's fraction of the side, per axis"
    paper = "Vaswani et al. 2017; Dehghani et al. 2023 (NaViT)"
    coordinates = "fractional"
    wavelengths = FRAC_WAVELENGTHS

    def __init__(self, dim, heads, depth, *, combine: str = "sum", scale: float = SINCOS_SCALE):
        super().__init__(dim, heads, depth, combine, scale)


@register("factorized_abs_fourier")
class FactorizedAbsFourier(Factorized):
    title = "Factorized abs. Fourier"
    family = "factorized absolute"
    summary = "Learned Fourier features (then an MLP) of the absolute patch index, per axis"
    paper = "Li et al. 2021; Dehghani et al. 2023 (NaViT)"

    def __init__(self, dim, heads, depth, *, combine: str = "sum", gamma: float = 1.0):
        # gamma 1: about one radian per patch.
        super().__init__(dim, heads, depth, combine, lambda d, _: _AxisFourier(d, gamma))


@register("factorized_frac_fourier")
class FactorizedFracFourier(Factorized):
    title = "Factorized frac. Fourier"
    family = "factorized fractional"
    summary = "Learned Fourier features (then an MLP) of the patch centre's fraction of the side, per axis"
    paper = "Li et al. 2021; Dehghani et al. 2023 (NaViT)"
    coordinates = "fractional"

    def __init__(self, dim, heads, depth, *, combine: str = "sum", gamma: float = 10.0):
        # r = (p + 0.5) / side: gamma 10 gives about one radian per patch on a 10-patch side.
        super().__init__(dim, heads, depth, combine, lambda d, _: _AxisFourier(d, gamma))


# ---- 2D rotary (Heo et al. 2024, RoPE-ViT) ----------------------------------------------------

class _Rotary(PositionalEmbedding):
    def __init__(self, dim, heads, depth):
        super().__init__(dim, heads, depth)
        head_dim = dim // heads
        if head_dim % 4:
            raise ValueError(f"variant {self.variant!r} needs head_dim (dim / heads) divisible by 4, got {head_dim}")
        self.head_dim = head_dim

    def _magnitudes(self, theta: float) -> Tensor:
        return 1.0 / theta ** (torch.arange(0, self.head_dim, 4)[: self.head_dim // 4].float() / self.head_dim)


@register("rope_axial")
class RoPEAxial(_Rotary):
    """Half of each head's rotation pairs turn with the column, half with the row; fixed frequencies."""
    title = "RoPE axial"
    family = "rotary (RoPE)"
    summary = "Rotary: half of each head's pairs turn with the column, half with the row; fixed frequencies"
    paper = "Heo et al. 2024 (RoPE-ViT)"

    def __init__(self, dim, heads, depth, *, theta: float = 100.0):
        super().__init__(dim, heads, depth)
        self.register_buffer("freqs", self._magnitudes(theta), persistent=False)

    def rotary(self, coords, grids, draws=None):
        y, x = self.position(coords, grids, draws).unbind(-1)
        angles = torch.cat([x[:, None] * self.freqs, y[:, None] * self.freqs], -1)  # [T, head_dim/2]
        return angles[None, :, None, :]

    def position(self, coords: Tensor, grids: Tensor, draws: Tensor | None) -> Tensor:
        """The (row, col) the angles turn with: [T, 2] float."""
        return coords.float()


@register("rope_axial_normalized")
class RoPEAxialNormalized(RoPEAxial):
    """Axial RoPE over normalised coordinates, as DINOv3 builds it: each axis's patch centres span
    [-1, 1] (2 (p + 0.5) / side - 1), so the frequencies are per image extent, not per patch, and
    angle = 2 pi c / period with periods base^(4i / head_dim), i < head_dim / 4.

    Training-time augmentation (DINOv3), drawn per image: c -> (c + shift) * jitter * rescale, with
    shift ~ U[-shift, shift] and jitter ~ logU[1/jitter, jitter] per axis, rescale ~
    logU[1/rescale, rescale] common to both axes. Off in evaluation.
    """
    coordinates = "fractional"
    title = "RoPE axial, normalised coordinates"
    family = "rotary (RoPE)"
    summary = "Axial RoPE over patch centres normalised to [-1, 1] per axis; optional per-image shift, jitter, rescale"
    paper = "Simeoni et al. 2025 (DINOv3); Chu et al. 2024 (VisionLLaMA)"

    def __init__(self, dim, heads, depth, *, base: float = 100.0, shift: float = 0.0, jitter: float = 1.0,
                 rescale: float = 1.0):
        super().__init__(dim, heads, depth, theta=base)
        self.freqs.mul_(2 * math.pi)
        if shift < 0 or jitter < 1 or rescale < 1:
            raise ValueError(f"variant {self.variant!r}: needs shift >= 0, jitter >= 1 and rescale >= 1 "
                             f"(got {shift}, {jitter}, {rescale})")
        self.shift, self.jitter, self.rescale = shift, jitter, rescale

    def draw(self, num_images):
        if not self.shift and self.jitter == 1 and self.rescale == 1:
            return None
        # On the CPU, from torch's global generator: the trainer seeds it per cell and checkpoints it,
        # so a cell draws the same numbers on any device, resumed or not.
        u = 2 * torch.rand(num_images, 5) - 1
        log_scale = u[:, 2:4] * math.log(self.jitter) + u[:, 4:] * math.log(self.rescale)
        return torch.cat([u[:, :2] * self.shift, log_scale.exp()], 1)   # [N, 4]: shift (y, x), scale (y, x)

    def position(self, coords, grids, draws):
        centres = 2 * (coords.float() + 0.5) / grids.float() - 1
        return centres if draws is None else (centres + draws[:, :2]) * draws[:, 2:]


@register("rope_mixed")
class RoPEMixed(_Rotary):
    """Learnable frequency pairs (f_x, f_y) per layer and head: angle = f_x * col + f_y * row."""
    title = "RoPE mixed"
    family = "rotary (RoPE)"
    summary = "Rotary with learnable frequency pairs (f_x, f_y) per layer and head"
    paper = "Heo et al. 2024 (RoPE-ViT)"

    def __init__(self, dim, heads, depth, *, theta: float = 10.0):
        super().__init__(dim, heads, depth)
        mag = self._magnitudes(theta)
        # Each head starts from the axial frequencies rotated by a random angle, as RoPE-ViT does.
        phase = torch.rand(depth, heads, 1) * 2 * math.pi
        fx = torch.cat([mag * torch.cos(phase), mag * torch.cos(phase + math.pi / 2)], -1)
        fy = torch.cat([mag * torch.sin(phase), mag * torch.sin(phase + math.pi / 2)], -1)
        self.freqs = nn.Parameter(torch.stack([fx, fy]))  # [2, depth, heads, head_dim/2]

    def rotary(self, coords, grids):
        y, x = coords.float().unbind(-1)
        fx, fy = self.freqs
        return x[None, :, None, None] * fx[:, None] + y[None, :, None, None] * fy[:, None]


# ---- additive attention bias over relative positions -----------------------------------------

class PairBias(NamedTuple):
    """A batch's attention bias (``_RelativeBias.bias``): column k of ``table`` is the per-head bias
    of one offset (dy, dx) in one block; a block holds every offset of one grid (or of the batch's
    largest grid, for a bias of the offset alone). ``pair_column`` finds a pair's column."""
    table: Tensor    # [heads, K]
    row: Tensor      # [R, L] each slot's row and column in its image's grid
    col: Tensor
    centre: Tensor   # [R, L] the column of offset (0, 0) in the slot's block
    width: Tensor    # [R, L] its block's 2 * max |dx| + 1: the column step of dy += 1


def pair_column(bias: PairBias, b: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """The table column of query q and key kv of row b, when both are tokens of one image, for index
    tensors that broadcast (every pair of a row, for SDPA's float mask) or scalars (a FlexAttention
    score_mod): the one relative-offset computation of every bias variant. For a pair of two images
    it is any number, maybe outside the table: the model masks those pairs before reading it."""
    dy, dx = bias.row[b, q] - bias.row[b, kv], bias.col[b, q] - bias.col[b, kv]
    return bias.centre[b, q] + dy * bias.width[b, q] + dx


class _RelativeBias(PositionalEmbedding):
    """An additive attention bias b(dy, dx) per head, between two tokens of one image; dy, dx = the
    query's (row, col) minus the key's. A subclass gives ``values``; ``bias`` evaluates it once per
    batch on every offset a pair of the batch can have, never per pair and never per image."""
    coordinates = "relative"

    def values(self, offsets: Tensor, grids: Tensor | None) -> Tensor:
        """[K, heads] the bias of K offsets (dy, dx) ([K, 2] long); ``grids`` ([K, 2]) is each
        offset's image grid for coordinates "relative_grid", None for "relative"."""
        raise NotImplementedError

    def bias(self, coords, grids):
        flat = grids.reshape(-1, 2)
        if self.coordinates == "relative_grid":   # a block per distinct grid (many images share one)
            keys, block_of = torch.unique(flat[:, 0] << 32 | flat[:, 1], return_inverse=True)   # 1D: 20x faster
            blocks = torch.stack([keys >> 32, keys & 0xFFFFFFFF], 1)
        else:   # one block of every offset of the batch: values of the offset alone, so no batch-mate changes them
            blocks, block_of = flat.amax(0, keepdim=True), flat.new_zeros(len(flat))
        spans = 2 * blocks - 1
        sizes = spans.prod(1)
        starts = sizes.cumsum(0) - sizes
        column_block = torch.repeat_interleave(torch.arange(len(blocks), device=flat.device), sizes)
        local = torch.arange(len(column_block), device=flat.device) - starts[column_block]
        side, width = blocks[column_block], spans[column_block, 1]
        offsets = torch.stack([local // width - side[:, 0] + 1, local % width - side[:, 1] + 1], 1)
        table = self.values(offsets, side if self.coordinates == "relative_grid" else None)
        centre = (starts + (blocks[:, 0] - 1) * spans[:, 1] + blocks[:, 1] - 1)[block_of].view(grids.shape[:-1])
        return PairBias(table.T, coords[..., 0], coords[..., 1], centre, spans[block_of, 1].view(grids.shape[:-1]))


@register("swin_rpb")
class SwinRelativeBias(_RelativeBias):
    """Swin's learned relative position bias: a per-head table over (dy, dx) in [-max_offset, max_offset]^2;
    a larger offset reads the table's edge (each axis clamped), as no table row exists for it."""
    title = "Swin relative position bias"
    family = "relative bias"
    summary = "Learned per-head attention bias table over (dy, dx), clamped to +-max_offset"
    paper = "Liu et al. 2021 (Swin Transformer)"

    def __init__(self, dim, heads, depth, *, max_offset: int = 7):
        super().__init__(dim, heads, depth)
        if max_offset < 1:
            raise ValueError(f"variant {self.variant!r}: max_offset must be at least 1, got {max_offset}")
        self.max_offset = max_offset
        side = 2 * max_offset + 1
        self.table = nn.Parameter(nn.init.trunc_normal_(torch.empty(side, side, heads), std=0.02))

    @classmethod
    def grid_defaults(cls, grids):
        # Every offset a training image holds has its own entry; longer ones, met only in
        # evaluation, read the table's edge.
        return {"max_offset": max(1, grids.largest_train - 1)}

    def values(self, offsets, grids):
        index = offsets.clamp(-self.max_offset, self.max_offset) + self.max_offset
        return self.table[index[:, 0], index[:, 1]]


@register("swinv2_cpb")
class SwinV2ContinuousBias(_RelativeBias):
    """Swin V2's continuous position bias: an MLP (2 -> hidden -> heads, ReLU) over log-spaced offsets
    d' = sign(d) log2(1 + 8 |d| / (reference_grid - 1)) / log2(8), then 16 sigmoid(.)."""
    title = "Swin V2 continuous position bias"
    family = "relative bias"
    summary = "MLP over log-spaced relative offsets (dy, dx), 16 sigmoid; designed to transfer across sizes"
    paper = "Liu et al. 2022 (Swin Transformer V2)"

    def __init__(self, dim, heads, depth, *, hidden: int = 512, reference_grid: int = 8):
        super().__init__(dim, heads, depth)
        if hidden < 1 or reference_grid < 2:
            raise ValueError(f"variant {self.variant!r}: needs hidden >= 1 and reference_grid >= 2 "
                             f"(got {hidden}, {reference_grid})")
        self.reference_grid = reference_grid
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, heads, bias=False))

    @classmethod
    def grid_defaults(cls, grids):
        # Swin V2 normalises offsets by the window it was trained at: here the largest training grid.
        return {"reference_grid": max(2, grids.largest_train)}

    def values(self, offsets, grids):
        scaled = 8 * offsets.to(self.mlp[0].weight.dtype) / (self.reference_grid - 1)
        return 16 * torch.sigmoid(self.mlp(scaled.sign() * torch.log2(1 + scaled.abs()) / math.log2(8)))


@register("fire_2d")
class FIRE2D(_RelativeBias):
    """FIRE (Li et al. 2023) in 2D: one MLP (2 -> hidden -> heads, ReLU) over both axes' progressively
    interpolated offsets, u = sign(d) psi(|d|) / psi(max(side, threshold)) with psi(x) = log(c x + 1),
    side the image's grid side on that axis; c and threshold are learned."""
    coordinates = "relative_grid"
    title = "FIRE, 2D"
    family = "relative bias"
    summary = "MLP over both axes' offsets, log-compressed and normalised by the image's side on that axis"
    paper = "Li et al. 2023 (FIRE; ICLR 2024)"

    def __init__(self, dim, heads, depth, *, hidden: int = 32, c: float = 0.1, threshold: float = 4.0):
        super().__init__(dim, heads, depth)
        if hidden < 1 or c <= 0 or threshold <= 0:
            raise ValueError(f"variant {self.variant!r}: needs hidden >= 1, c > 0 and threshold > 0 "
                             f"(got {hidden}, {c}, {threshold})")
        # One MLP over both axes, not a sum of one per axis: it can learn how the two offsets interact
        # (a round neighbourhood, a diagonal), which a sum b_y(dy) + b_x(dx) cannot represent.
        self.mlp = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, heads))
        self.c = nn.Parameter(torch.tensor(float(c)))
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def values(self, offsets, grids):
        # FIRE's causal offsets are never negative; both signs occur here, so the sign is kept: without
        # it b(dy, dx) = b(-dy, dx), and an image and its mirror image would give the same logits.
        normaliser = self._psi(torch.maximum(grids.to(self.c.dtype), self.threshold.abs())) + 1e-6
        return self.mlp(offsets.sign() * self._psi(offsets.abs().to(self.c.dtype)) / normaliser)

    def _psi(self, x: Tensor) -> Tensor:
        return torch.log(self.c.abs() * x + 1)
