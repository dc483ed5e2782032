"""NaViT: a ViT over packed sequences of images of any size.

images -> pack (bench.packing) -> patch embedding -> + positional embedding (-> one CLS slot
per image appended to its row) -> blocks with block-diagonal attention -> pooling per image ->
classifier. Every mask is derived from the one per-token image-id tensor; a relative attention
bias (posembed's ``bias`` kind) is added to the scores of the pairs of tokens of one image.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import POOLS   # mean | map | cls: the config schema names them once
from .packing import DEFAULT_MAX_SEQ_LEN, PAD, PackedBatch, needs_mask, pack, pad_to_buckets
from .posembed import PairBias, build_posembed, pair_column

# A float mask's score between two images: finite, never -inf, so no row can turn NaN (and every
# row keeps keys of its own: padding attends to padding); its softmax weight underflows to 0.
MASKED = -1e30
# Without gradients, the encoder runs on chunks of rows whose float mask (a relative bias,
# [rows, heads, L, L] in fp32) and the int64 pair columns it is gathered from stay under this size
# together, or on one row where a single row is larger: 4 bytes a head and at most 24 of columns a
# (query, key) pair (measured: 33 bytes a pair at 3 and at 4 heads).
MASK_BYTES = 32 << 20
MASK_BUILD_BYTES = 24

def attention_mask(image_ids: Tensor) -> Tensor:
    """[R, 1, L, L] bool: a token attends to tokens of its own image only.

    Padding (id PAD) attends to padding, so no row is fully masked (no NaN), while real tokens
    never see padding and padding never sees real tokens.
    """
    return (image_ids[:, None, :, None] == image_ids[:, None, None, :])


def flex_block_mask(image_ids: Tensor):
    """FlexAttention document mask, built once per batch and shared by every layer.

    Tiles of 128 x 128 (query, key) tokens that share no image are skipped by the kernel; padding
    attends to padding, so no query has an empty row.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def same_image(b, h, q, kv):
        return image_ids[b, q] == image_ids[b, kv]

    rows, length = image_ids.shape
    return create_block_mask(same_image, rows, None, length, length, device=image_ids.device)


class RelativeBias(NamedTuple):
    """A batch's relative attention bias as the model applies it: the variant's table with two
    columns of its own appended, 0 for any pair involving a slot without a position (a CLS token,
    padding) and MASKED for a pair of two images."""
    pairs: PairBias      # its table: [heads, K + 2]
    ids: Tensor          # [R, L'] the encoder's image ids
    positioned: Tensor   # [R, L'] bool: the patch tokens

    @classmethod
    def of(cls, pairs: PairBias, ids: Tensor, positioned: Tensor) -> "RelativeBias":
        table = torch.cat([pairs.table, pairs.table.new_tensor([0.0, MASKED]).expand(len(pairs.table), 2)], 1)
        # Its width follows the batch's grids: a compiled encoder (FlexAttention) must not recompile for each.
        torch._dynamo.maybe_mark_dynamic(table, 1)
        return cls(pairs._replace(table=table), ids, positioned)

    @property
    def table(self) -> Tensor:
        return self.pairs.table

    def column(self, b: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        """The table column of each pair (index tensors as posembed.pair_column's)."""
        unpositioned, masked = self.table.shape[1] - 2, self.table.shape[1] - 1
        both = self.positioned[b, q] & self.positioned[b, kv]
        own = torch.where(both, pair_column(self.pairs, b, q, kv), unpositioned)
        return torch.where(self.ids[b, q] == self.ids[b, kv], own, masked)

    def dense(self, rows: slice) -> Tensor:
        """[R', heads, L', L'] SDPA float mask of ``rows``: one gather of every pair's column."""
        device = self.ids.device
        b = torch.arange(self.ids.shape[0], device=device)[rows].view(-1, 1, 1)
        q = torch.arange(self.ids.shape[1], device=device).view(1, -1, 1)
        columns = self.column(b, q, q.transpose(1, 2))
        return self.table.index_select(1, columns.flatten()).view(len(self.table), *columns.shape).transpose(0, 1)


class BiasedBlockMask(NamedTuple):
    """FlexAttention's document mask (None: every row is one whole image) with a relative bias,
    added by a score_mod."""
    block_mask: object
    bias: RelativeBias


_compiled_flex: Callable | None = None


def flex(q: Tensor, k: Tensor, v: Tensor, mask) -> Tensor:
    """flex_attention is only fused when compiled: on CUDA it is compiled once here (or traced into
    a compiled encoder); on CPU the unfused reference runs, forward only. ``mask``: a BlockMask or a
    BiasedBlockMask."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention
    block_mask, score_mod = mask, None
    if isinstance(mask, BiasedBlockMask):
        block_mask, bias = mask

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias.table[h, bias.column(b, q_idx, kv_idx)].to(score.dtype)
    if not q.is_cuda or torch.compiler.is_compiling():
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention)
    return _compiled_flex(q, k, v, score_mod=score_mod, block_mask=block_mask)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x_i, x_{i + d/2}) of the last dim by the given angles."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        rows, length, dim = x.shape
        q, k, v = self.qkv(x).view(rows, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = rotate(q, *rope).to(v.dtype), rotate(k, *rope).to(v.dtype)
        if mask is None or isinstance(mask, Tensor):
            if mask is not None and mask.is_floating_point():   # SDPA wants the queries' dtype (bf16 under autocast)
                mask = mask.to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            out = flex(q, k, v, mask)
        return self.proj(out.transpose(1, 2).reshape(rows, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x, mask, rope):
        x = x + self.attn(self.norm1(x), mask, rope)
        return x + self.mlp(self.norm2(x))


def masked_mean(tokens: Tensor, image_ids: Tensor, num_images: int) -> Tensor:
    """Mean of each image's tokens. tokens [T, D], image_ids [T] (real tokens only)."""
    sums = tokens.new_zeros(num_images, tokens.shape[-1]).index_add_(0, image_ids, tokens)
    counts = torch.bincount(image_ids, minlength=num_images).clamp(min=1).to(tokens.dtype)
    return sums / counts[:, None]


class AttentionPool(nn.Module):
    """Masked attention pooling (MAP): one learned query attends to each image's own tokens."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.probe = nn.Parameter(torch.randn(dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, tokens: Tensor, image_ids: Tensor, num_images: int) -> Tensor:
        t, dim = tokens.shape
        q = self.q(self.probe).view(self.heads, -1)
        k, v = self.kv(tokens).view(t, 2, self.heads, -1).unbind(1)
        scores = (k * q).sum(-1) * q.shape[-1] ** -0.5                     # [T, heads]
        # Softmax over each image's tokens: a segment softmax keyed by image id.
        index = image_ids[:, None].expand_as(scores)
        peak = scores.new_full((num_images, self.heads), float("-inf"))
        peak = peak.scatter_reduce(0, index, scores, "amax").detach()
        weights = (scores - peak[image_ids]).exp()
        weights = weights / weights.new_zeros(num_images, self.heads).index_add_(0, image_ids, weights)[image_ids]
        pooled = v.new_zeros(num_images, self.heads, v.shape[-1]).index_add_(0, image_ids, weights[..., None] * v)
        pooled = self.proj(pooled.reshape(num_images, dim))
        return pooled + self.mlp(self.norm(pooled))


class NaViT(nn.Module):
    def __init__(self, variant: str, num_classes: int, patch_size: int = 16, dim: int = 192,
                 depth: int = 6, heads: int = 3, *, channels: int = 3, mlp_ratio: float = 4.0,
                 pool: str = "mean", attention: str = "sdpa", **pos_options):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if attention not in ("sdpa", "flex"):
            raise ValueError(f"attention must be 'sdpa' or 'flex', got {attention!r}")
        self.variant, self.patch_size, self.channels = variant, patch_size, channels
        self.attention = attention
        self.pos = build_posembed(variant, dim, heads, depth, **pos_options)
        # bias=False, as in the seed's patch embedding.
        self.patch_embed = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.cls_token = nn.Parameter(torch.randn(dim) * 0.02) if pool == "cls" else None
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pool = AttentionPool(dim, heads, mlp_ratio) if pool == "map" else None
        self.head = nn.Linear(dim, num_classes)
        self.compiled_encode: Callable | None = None  # set by compile_encoder

    def embed_patches(self, patches: Tensor) -> Tensor:
        """Pixels in [0, 1] -> centred to [-1, 1] -> the bias-free Conv2d, as a matmul on pre-cut
        patches (identical numbers; dropped or padded tokens cost nothing to cut).

        Centring matters without a bias: uncentred pixels are all positive, so a patch's embedding
        grows with its brightness along one shared direction, and the first LayerNorm divides the
        magnitude away: a bright target patch and a dark background patch then look alike. In the
        default experiment most seeds of most variants sat on the chance plateau for hundreds of
        steps without it (docs/embeddings.md)."""
        return F.linear(patches * 2 - 1, self.patch_embed.weight.flatten(1), self.patch_embed.bias)

    def pack(self, images: Sequence[Tensor], max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN) -> PackedBatch:
        return pack(images, self.patch_size, max_seq_len, channels=self.channels)

    def forward(self, images: Sequence[Tensor] | PackedBatch,
                max_seq_len: int | None = DEFAULT_MAX_SEQ_LEN) -> Tensor:
        batch = images if isinstance(images, PackedBatch) else self.pack(images, max_seq_len)
        if batch.num_dropped and not self.training:
            raise ValueError("token dropping is for training only: this batch dropped "
                             f"{batch.num_dropped} tokens but the model is in eval mode")
        batch = batch.to(self.head.weight.device)
        if self.compiled_encode is not None:   # a few shapes for the compiled blocks, not one per batch
            batch = batch.derive("bucketed", lambda: pad_to_buckets(batch))
        x, ids, rope = self.embed(batch)
        bias = self.relative_bias(batch, ids)
        encode = self.compiled_encode or self.encode
        parts = [encode(x[rows], self.mask(batch, ids, bias, rows),
                        None if rope is None else tuple(r[:, rows] for r in rope))
                 for rows in self.row_chunks(ids, bias)]
        x = self.norm(parts[0] if len(parts) == 1 else torch.cat(parts))
        return self.head(self.pooled(x, ids, batch))

    def row_chunks(self, ids: Tensor, bias: RelativeBias | None) -> list[slice]:
        """The rows the encoder runs on together: all of them, except that without gradients a relative
        bias's float mask and its build are bounded by MASK_BYTES per chunk (with gradients, autograd
        keeps every chunk's mask for the backward, so chunking would bound nothing)."""
        rows, length = ids.shape
        if bias is None or self.attention == "flex" or torch.is_grad_enabled():
            return [slice(0, rows)]
        per_chunk = max(1, MASK_BYTES // ((4 * self.pos.heads + MASK_BUILD_BYTES) * length ** 2))
        return [slice(start, start + per_chunk) for start in range(0, rows, per_chunk)]

    def pooled(self, x: Tensor, ids: Tensor, batch: PackedBatch) -> Tensor:
        """[N, dim], one vector per image, from the encoder's normed output x and its ids."""
        if self.cls_token is not None:   # the CLS slots follow the batch's rows
            slots, states = ids[:, batch.row_len:], x[:, batch.row_len:]
            real = slots != PAD
            return x.new_zeros(batch.num_images, x.shape[-1]).index_copy(0, slots[real], states[real])
        valid, real_ids = batch.valid, batch.derive("real_ids", lambda: ids[batch.valid])
        if self.pool is None:
            return masked_mean(x[valid], real_ids, batch.num_images)
        return self.pool(x[valid], real_ids, batch.num_images)

    def embed(self, batch: PackedBatch) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
        """The encoder's inputs: tokens [R, L', dim], their image ids [R, L'] and the rotary
        (cos, sin) or None. L' is the batch's row length L, plus, with pool="cls", one CLS slot per
        image of the row (as many as the fullest row has images; PAD fills the rest). A CLS token
        gets no additive embedding and angle 0 (no rotation), as RoPE-ViT leaves its class token."""
        ids, positioned = batch.image_ids, batch.valid
        coords = batch.derive("real_coords", lambda: batch.coords[positioned])
        grids = batch.derive("real_grids", lambda: batch.token_grids()[positioned])
        x = self.embed_patches(batch.patches.to(self.head.weight.dtype))
        # Training-time augmentation is drawn per image; each token gets its own image's draw.
        draws = self.pos.draw(batch.num_images) if self.training else None
        real_ids = batch.derive("real_ids", lambda: ids[positioned])
        per_token = {} if draws is None else {"draws": draws.to(x.device)[real_ids]}
        extra = self.pos.additive(coords, grids, **per_token)
        if extra is not None:
            x = x.masked_scatter(positioned[..., None], (x[positioned] + extra).to(x.dtype))
        if self.cls_token is not None:
            slots, ids, positioned = batch.derive("cls", lambda: _with_cls_slots(batch))
            x = torch.cat([x, torch.where((slots != PAD)[..., None], self.cls_token.to(x.dtype), 0)], 1)
        return x, ids, self._rope(positioned, coords, grids, per_token)

    def relative_bias(self, batch: PackedBatch, ids: Tensor) -> RelativeBias | None:
        """The relative attention bias of a bias variant (else None), built once per batch and shared
        by every layer. ``ids``: the encoder's [R, L'] ids; the CLS slots past the batch's rows carry
        no position (coordinate 0 and grid (1, 1) for the table), so their pairs get bias 0."""
        if self.pos.kind != "bias":
            return None
        extra = ids.shape[1] - batch.row_len
        coords = torch.cat([batch.coords, batch.coords.new_zeros(batch.num_rows, extra, 2)], 1)
        grids = torch.cat([batch.token_grids(), batch.coords.new_ones(batch.num_rows, extra, 2)], 1)
        positioned = torch.cat([batch.valid, ids.new_zeros(batch.num_rows, extra, dtype=torch.bool)], 1)
        return RelativeBias.of(self.pos.bias(coords, grids), ids, positioned)

    def mask(self, batch: PackedBatch, ids: Tensor, bias: RelativeBias | None, rows: slice):
        """``build_mask`` of these rows, kept with the batch when it depends on the ids alone."""
        if bias is not None:   # learned values: built anew every step
            return self.build_mask(ids[rows], bias, rows)
        return batch.derive(("mask", self.attention, ids.shape[1], rows.start, rows.stop),
                            lambda: self.build_mask(ids[rows]))

    def build_mask(self, image_ids: Tensor, bias: RelativeBias | None = None, rows: slice = slice(None)):
        """The attention mask of these image ids (those of the batch's ``rows``), built once and shared
        by every layer. Without a bias: None when every row is one whole image (dense attention is
        exact), else a flex block mask or a bool mask. With one: a BiasedBlockMask or a float mask."""
        if bias is None:
            if not needs_mask(image_ids):
                return None
            return flex_block_mask(image_ids) if self.attention == "flex" else attention_mask(image_ids)
        if self.attention == "flex":
            return BiasedBlockMask(flex_block_mask(image_ids) if needs_mask(image_ids) else None, bias)
        return bias.dense(rows)

    def encode(self, x: Tensor, mask, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        """The transformer blocks on [R, L, dim]: all of the model's attention and most of its FLOPs."""
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if rope is None else tuple(r[min(i, r.shape[0] - 1)] for r in rope))
        return x

    def compile_encoder(self, **options) -> None:
        """torch.compile the blocks only. Their shapes are (rows, row length), which forward keeps
        to a few by padding each batch with packing.pad_to_buckets (CLS slots add the most images
        of a row to the length); embedding and pooling stay eager because their shapes follow the
        number of real tokens and images, which changes every batch."""
        self.compiled_encode = torch.compile(self.encode, **options)

    def _rope(self, positioned: Tensor, coords: Tensor, grids: Tensor, per_token: dict):
        """(cos, sin), each [depth or 1, R, heads or 1, L, head_dim/2]; the tokens of ``positioned``
        ([R, L] bool) are rotated by their angles, the others (padding, CLS) by angle 0."""
        angles = self.pos.rotary(coords, grids, **per_token)
        if angles is None:
            return None
        layers, _, heads, half = angles.shape
        full = angles.new_zeros(layers, *positioned.shape, heads, half)
        full[:, positioned] = angles
        full = full.permute(0, 1, 3, 2, 4)
        return full.cos(), full.sin()


def _with_cls_slots(batch: PackedBatch) -> tuple[Tensor, Tensor, Tensor]:
    """(the CLS slots [R, K], the ids [R, L + K] and the positioned mask [R, L + K]) of a batch."""
    slots = cls_slots(batch.image_ids, batch.num_images)
    positioned = torch.cat([batch.valid, torch.zeros_like(slots, dtype=torch.bool)], 1)
    return slots, torch.cat([batch.image_ids, slots], 1), positioned


def cls_slots(image_ids: Tensor, num_images: int) -> Tensor:
    """[R, K] the image id of each CLS slot: one per image of each row, PAD for the rest; K is the
    most images any row holds. An image's slot goes to the row holding its tokens (packing never
    splits an image), so it attends to its own image only, through the same id-derived mask."""
    real = image_ids != PAD
    rows = torch.arange(image_ids.shape[0], device=image_ids.device)[:, None].expand_as(image_ids)
    row_of = image_ids.new_zeros(num_images).scatter_(0, image_ids[real], rows[real])
    order = torch.argsort(row_of, stable=True)   # images grouped by row, each row's in id order
    counts = torch.bincount(row_of, minlength=image_ids.shape[0])
    first = torch.cumsum(counts, 0) - counts
    slots = image_ids.new_full((image_ids.shape[0], int(counts.max())), PAD)
    slots[row_of[order], torch.arange(num_images, device=image_ids.device) - first[row_of[order]]] = order
    return slots


def build_model(variant: str, num_classes: int, patch_size: int = 16, dim: int = 192, depth: int = 6,
                heads: int = 3, **options) -> NaViT:
    """Build a NaViT with the named positional embedding. Unknown options are errors."""
    return NaViT(variant, num_classes, patch_size, dim, depth, heads, **options)
