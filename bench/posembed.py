"""Registry of positional embeddings.

Every embedding is a function of each token's ``coords`` (row, col) and its image's ``grids``
(h, w), both long tensors of shape [T, 2]; never of the token's place in the sequence. An
embedding contributes either an additive vector per token (``additive``) or rotary angles for
the queries and keys of every layer (``rotary``); NoPE contributes neither.

Adding a variant: write one small class, decorate it with ``@register("name")``, and add one
line to docs/embeddings.md. An option whose right value depends on the experiment's grids (a
table's size) gets its default from the class's ``grid_defaults`` hook.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Callable

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


def variant_options(name: str) -> dict[str, object]:
    """The keyword options a variant accepts, with their defaults."""
    params = inspect.signature(variant_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if p.kind is p.KEYWORD_ONLY}


def variant_class(name: str) -> type["PositionalEmbedding"]:
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
    reference: int       # side of the square grid that stands for the training resolution

    @property
    def largest(self) -> int:
        return max(self.largest_train, self.largest_eval)


class PositionalEmbedding(nn.Module):
    """Base class; on its own it is NoPE."""
    variant = "base"

    def __init__(self, dim: int, heads: int, depth: int):
        super().__init__()
        self.dim, self.heads, self.depth = dim, heads, depth

    @classmethod
    def grid_defaults(cls, grids: GridLimits) -> dict[str, object]:
        """Defaults of options that depend on the experiment's grids; the config can override
        each. A table-based variant sizes its table here."""
        return {}

    def additive(self, coords: Tensor, grids: Tensor) -> Tensor | None:
        """[T, dim] added to the patch embeddings, or None."""
        return None

    def rotary(self, coords: Tensor, grids: Tensor) -> Tensor | None:
        """Rotation angles [depth or 1, T, heads or 1, head_dim // 2] for queries and keys, or None."""
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


@register("vit_1d_interp")
class ViT1DInterp(PositionalEmbedding):
    """Vanilla ViT: a learned table for a base grid, resized (bicubic, antialiased) to other grids."""

    def __init__(self, dim, heads, depth, *, base_grid: int | tuple[int, int] = 8):
        super().__init__(dim, heads, depth)
        self.base_grid = _pair(base_grid)
        self.table = _normal_table(self.base_grid[0] * self.base_grid[1], dim)

    @classmethod
    def grid_defaults(cls, grids):
        # The table a vanilla ViT trained at the reference resolution would have.
        return {"base_grid": grids.reference}

    def additive(self, coords, grids):
        # Resize once per distinct grid, not once per image (many images share a size).
        unique, inverse = torch.unique(grids, dim=0, return_inverse=True)
        base = self.table.view(1, *self.base_grid, self.dim).permute(0, 3, 1, 2)
        tables, offsets, start = [], [], 0
        for h, w in unique.tolist():
            if (h, w) == self.base_grid:
                resized = self.table
            else:
                resized = F.interpolate(base, size=(h, w), mode="bicubic", antialias=True,
                                        align_corners=False)[0].permute(1, 2, 0).reshape(h * w, self.dim)
            tables.append(resized)
            offsets.append(start)
            start += h * w
        offsets = torch.tensor(offsets, device=coords.device)[inverse]
        index = offsets + coords[:, 0] * grids[:, 1] + coords[:, 1]
        return torch.cat(tables)[index]


@register("pix2struct_2d")
class Pix2StructJoint2D(PositionalEmbedding):
    """A joint learned table indexed by (row, col), as the NaViT paper describes Pix2Struct."""

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
    """Fixed sin/cos features with geometrically spaced frequencies."""

    def __init__(self, out_dim: int, lowest: float, highest: float):
        super().__init__()
        if out_dim % 2:
            raise ValueError(f"sinusoidal embeddings need an even width per axis, got {out_dim}")
        freqs = torch.exp(torch.linspace(math.log(lowest), math.log(highest), out_dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

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
        proj = x.float().unsqueeze(-1) @ self.w_r.T
        features = torch.cat([proj.cos(), proj.sin()], -1) / math.sqrt(self.num_features)
        return self.mlp(features)


class Factorized(PositionalEmbedding):
    """phi_y(row) and phi_x(col), one encoder per axis; subclasses choose coordinate and encoder.

    Absolute coordinates are the patch index p; fractional ones the patch centre (p + 0.5) / side,
    so they do not depend on the image size (and hide its aspect ratio).
    """
    fractional: bool

    def __init__(self, dim, heads, depth, combine: str, make_axis: Callable[[int], nn.Module]):
        super().__init__(dim, heads, depth)
        if combine not in ("sum", "stack", "product"):
            raise ValueError(f"variant {self.variant!r}: combine must be sum, stack or product, got {combine!r}")
        if combine == "stack" and dim % 2:
            raise ValueError(f"variant {self.variant!r}: combine='stack' needs an even dim, got {dim}")
        self.combine = combine
        axis_dim = dim // 2 if combine == "stack" else dim
        self.phi_y, self.phi_x = make_axis(axis_dim), make_axis(axis_dim)

    def additive(self, coords, grids):
        pos = (coords.float() + 0.5) / grids.float() if self.fractional else coords
        y, x = self.phi_y(pos[:, 0]), self.phi_x(pos[:, 1])
        if self.combine == "sum":
            return y + x
        if self.combine == "stack":
            return torch.cat([y, x], -1)
        return y * x


@register("factorized_abs_learned")
class FactorizedAbsLearned(Factorized):
    fractional = False

    def __init__(self, dim, heads, depth, *, combine: str = "sum", max_grid: int = 32):
        super().__init__(dim, heads, depth, combine, lambda d: _AxisLearned(d, max_grid))
        self.max_grid = max_grid

    @classmethod
    def grid_defaults(cls, grids):
        return {"max_grid": grids.largest}   # as pix2struct_2d's

    def additive(self, coords, grids):
        self._check_grid(grids, self.max_grid, self.max_grid)
        return super().additive(coords, grids)


@register("factorized_frac_learned")
class FactorizedFracLearned(Factorized):
    fractional = True

    def __init__(self, dim, heads, depth, *, combine: str = "sum", table_size: int = 32):
        super().__init__(dim, heads, depth, combine, lambda d: _AxisLearnedInterp(d, table_size))


@register("factorized_abs_sincos")
class FactorizedAbsSinCos(Factorized):
    fractional = False

    def __init__(self, dim, heads, depth, *, combine: str = "sum"):
        # The classic transformer range: wavelengths from 2*pi to 2*pi*10^4 patches.
        super().__init__(dim, heads, depth, combine, lambda d: _AxisSinCos(d, 1e-4, 1.0))


@register("factorized_frac_sincos")
class FactorizedFracSinCos(Factorized):
    fractional = True

    def __init__(self, dim, heads, depth, *, combine: str = "sum"):
        # r lies in [0, 1]: wavelengths from twice the image down to 1/16 of it (2 patches at 32).
        super().__init__(dim, heads, depth, combine, lambda d: _AxisSinCos(d, math.pi, 32 * math.pi))


@register("factorized_abs_fourier")
class FactorizedAbsFourier(Factorized):
    fractional = False

    def __init__(self, dim, heads, depth, *, combine: str = "sum", gamma: float = 1.0):
        # gamma 1: about one radian per patch.
        super().__init__(dim, heads, depth, combine, lambda d: _AxisFourier(d, gamma))


@register("factorized_frac_fourier")
class FactorizedFracFourier(Factorized):
    fractional = True

    def __init__(self, dim, heads, depth, *, combine: str = "sum", gamma: float = 10.0):
        # r = (p + 0.5) / side: gamma 10 gives about one radian per patch on a 10-patch side.
        super().__init__(dim, heads, depth, combine, lambda d: _AxisFourier(d, gamma))


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

    def __init__(self, dim, heads, depth, *, theta: float = 100.0):
        super().__init__(dim, heads, depth)
        self.register_buffer("freqs", self._magnitudes(theta), persistent=False)

    def rotary(self, coords, grids):
        y, x = coords.float().unbind(-1)
        angles = torch.cat([x[:, None] * self.freqs, y[:, None] * self.freqs], -1)  # [T, head_dim/2]
        return angles[None, :, None, :]


@register("rope_mixed")
class RoPEMixed(_Rotary):
    """Learnable frequency pairs (f_x, f_y) per layer and head: angle = f_x * col + f_y * row."""

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
