"""Procedural scenes whose labels depend on position, rendered natively at any (H, W).

A scene lives in continuous coordinates. Object centres are relative positions (x across the
width, y down the height, both in [0, 1]); object sizes and the background texture are measured
in units of the image's shorter side, so nothing stretches with the aspect ratio: a circle stays
a circle. Shapes are signed distance fields, anti-aliased by a one-pixel ramp across the edge.
Backgrounds are stationary (a base colour plus random plane waves), so no pixel statistic
reveals where in the image a patch came from.

Tasks, and the accuracy a model without positional information can reach ("chance"):
  abs_position  which cell of a 3x3 layout holds the bright target: 9 classes, chance 1/9
  rel_position  where the blue object sits relative to the red one (right, left, below, above):
                4 classes, chance 1/4. Every arrangement comes with its mirror image (red and
                blue swapped) at equal probability, so the bag of objects says nothing.
  control       the shape of the large object: 4 classes, position plays no part
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch
from numba import njit, vectorize
from torch import Tensor

from ..config import TASKS
from ..packing import Layout, PackedBatch, layout, patch_grids
from .source import ImageSource
from .streams import ASPECT, SCENE, SPLITS, keyed_uniforms

NOMINAL_SIDE = 64     # native_size is sqrt(H * W) = 64 px; resolution policies only use its aspect
NUM_UNIFORMS = 64     # random numbers drawn per scene, enough for every task
NUM_WAVES = 3
EMPTY = -1            # shape id of an unused object slot

SQRT3 = math.sqrt(3.0)
SQRT2 = math.sqrt(2.0)


# ---- shapes: signed distance (negative inside) in short-side units; r is the circumradius ----
# Polygons use the largest of their edges' half-plane distances: exact along the edges, which is
# all a one-pixel anti-aliasing ramp needs. Every shape fits inside its circle of radius r.

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")   # shape id = position
CONTROL_SHAPES = SHAPES[:4]   # circle, square, triangle, cross: label = shape id


@vectorize(["float64(int64, float64, float64, float64)"], cache=True)
def shape_sdf(shape: int, dx: float, dy: float, r: float) -> float:
    """Signed distance of the point (dx, dy) from the centre of shape ``shape`` (an id into
    SHAPES) of circumradius r; +inf for EMPTY. A numpy ufunc, also called by the renderer."""
    ax, ay = abs(dx), abs(dy)
    if shape == 0:
        return math.sqrt(dx * dx + dy * dy) - r
    if shape == 1:
        return max(ax, ay) - r / SQRT2
    if shape == 2:   # image rows grow downwards: the apex points up
        return max(dy, SQRT3 / 2 * ax - dy / 2) - r / 2
    if shape == 3:
        arm, half_width = 0.94 * r, 0.32 * r
        return min(max(ax - arm, ay - half_width), max(ax - half_width, ay - arm))
    if shape == 4:
        return (ax + ay - r) / SQRT2
    if shape == 5:
        return abs(math.sqrt(dx * dx + dy * dy) - 0.72 * r) - 0.28 * r
    return math.inf


CLASS_NAMES = {
    "abs_position": ["top-left", "top", "top-right", "left", "centre", "right",
                     "bottom-left", "bottom", "bottom-right"],
    "rel_position": ["blue right of red", "blue left of red", "blue below red", "blue above red"],
    "control": list(CONTROL_SHAPES),
}
# Patches a grid needs along each axis for the label to show at patch level. The 3x3 layout needs
# 3: with fewer, some third of the image has no patch of its own. Left/right needs 2 columns and
# above/below 2 rows, and the label may be either. The control shape needs no position: 1, every
# grid counts. A task needing more than 1 is positional: without positions a model is at chance.
MIN_GRID = {"abs_position": 3, "rel_position": 2, "control": 1}


@dataclass
class Scenes:
    """A batch of B scenes with K object slots each, painted in slot order."""
    labels: Tensor      # [B] long
    background: Tensor  # [B, 3] base colour
    waves: Tensor       # [B, NUM_WAVES, 4]: direction (rad), cycles per short side, phase, amplitude
    shapes: Tensor      # [B, K] long: index into SHAPES, EMPTY for an unused slot
    centers: Tensor     # [B, K, 2] (x, y) relative to (W, H)
    radii: Tensor       # [B, K] circumradius in short-side units
    colors: Tensor      # [B, K, 3]

    def __len__(self) -> int:
        return self.labels.shape[0]


# ---- sampling -------------------------------------------------------------------------------
# Each scene reads its random numbers in order from its own row of uniforms in [0, 1), a field at
# a time. A compiled loop over scenes costs a fraction of sampling each field for the whole batch
# with array operations, a hundred calls on arrays of a few dozen numbers.

NUM_SLOTS = {"abs_position": 3, "rel_position": 4, "control": 3}   # two distractor slots, then the task's
TARGET_RADIUS = (0.07, 0.10)   # in units of the shorter side
REL_MARGIN = 0.11    # the largest radius: centres this far from the border stay inside the image
RED_BLUE = ((0.8, 1.0, 0.0, 0.2, 0.0, 0.2), (0.0, 0.2, 0.2, 0.45, 0.8, 1.0))   # (low, high) per channel


@njit(cache=True)
def _uniform(u: float, low: float, high: float) -> float:
    return low + (high - low) * u


@njit(cache=True)
def _integer(u: float, count: int) -> int:
    """Uniform over range(count)."""
    return min(int(u * count), count - 1)


@njit(cache=True)
def _place(u, at, center_low, center_high, radius_low, radius_high, centers, radii, k):
    """Slot k's centre, uniform in [center_low, center_high]^2, and radius; returns the next draw."""
    centers[k, 0] = _uniform(u[at], center_low, center_high)
    centers[k, 1] = _uniform(u[at + 1], center_low, center_high)
    radii[k] = _uniform(u[at + 2], radius_low, radius_high)
    return at + 3


@njit(cache=True)
def _color(u, at, low, high, saturation, colors, k):
    """Slot k's colour, brightness in [low, high], saturation 0 for greys; returns the next draw."""
    value = _uniform(u[at], low, high)
    for c in range(3):
        colors[k, c] = value * (1 - saturation * u[at + 1 + c])
    return at + 4


@njit(cache=True)
def _sample(task, uniforms, labels, background, waves, shapes, centers, radii, colors):
    for b in range(uniforms.shape[0]):
        u = uniforms[b]
        for c in range(3):
            background[b, c] = _uniform(u[c], 0.0, 0.3)
        for n in range(NUM_WAVES):   # direction (rad), cycles per short side, phase, amplitude
            waves[b, n, 0] = _uniform(u[3 + n], 0.0, math.pi)
            waves[b, n, 1] = _uniform(u[3 + NUM_WAVES + n], 0.5, 3.0)
            waves[b, n, 2] = _uniform(u[3 + 2 * NUM_WAVES + n], 0.0, 2 * math.pi)
            waves[b, n, 3] = _uniform(u[3 + 3 * NUM_WAVES + n], 0.0, 0.05)
        at = 3 + 4 * NUM_WAVES
        # Two distractor slots, 0 to 2 of them used; grey in rel_position, where colours are the task.
        count = _integer(u[at], 3)
        at += 1
        for k in range(2):
            shapes[b, k] = _integer(u[at], len(SHAPES)) if count > k else EMPTY
            at = _place(u, at + 1, 0.08, 0.92, 0.04, 0.08, centers[b], radii[b], k)
            at = _color(u, at, 0.35, 0.6, 0.0 if task == 1 else 0.8, colors[b], k)
        if task == 0:   # abs_position: which cell of a 3x3 layout holds the bright target
            cell = _integer(u[at], 9)
            radius = _uniform(u[at + 1], TARGET_RADIUS[0], TARGET_RADIUS[1])
            # The centre is uniform over its whole cell: pinned near the cell's middle, the target
            # would sit at a fixed offset from the patch borders at each size, a cue that a model
            # without positions reads from the patches alone. Keeping it >= radius from the border
            # (radius is relative to the shorter side: a safe margin on both axes) never clips it.
            for axis, corner in enumerate((cell % 3 / 3, cell // 3 / 3)):
                centers[b, 2, axis] = _uniform(u[at + 2 + axis], max(corner, radius), min(corner + 1 / 3, 1 - radius))
            shapes[b, 2], radii[b, 2] = _integer(u[at + 4], len(SHAPES)), radius
            _color(u, at + 5, 0.85, 1.0, 0.15, colors[b], 2)
            labels[b] = cell
        elif task == 1:   # rel_position: where the blue object sits relative to the red one
            axis = _integer(u[at], 2)               # 0: the pair lies along x, 1: along y
            blue_first = _integer(u[at + 1], 2)     # the mirror coin: swaps red and blue, nothing else
            gap = _uniform(u[at + 2], 0.3, 0.6)     # >= 0.3 along the axis, > the two radii: no overlap
            first = _uniform(u[at + 3], REL_MARGIN, 1 - REL_MARGIN - gap)
            across = _uniform(u[at + 4], REL_MARGIN + 0.04, 1 - REL_MARGIN - 0.04)
            along = (first + gap, first) if blue_first == 1 else (first, first + gap)   # red's, blue's
            for k in range(2):   # slot 2 is red, slot 3 blue
                for c in range(3):
                    colors[b, 2 + k, c] = _uniform(u[at + 7 + 3 * k + c], RED_BLUE[k][2 * c], RED_BLUE[k][2 * c + 1])
                shapes[b, 2 + k] = _integer(u[at + 13 + 2 * k], len(SHAPES))
                centers[b, 2 + k, axis] = along[k]
                centers[b, 2 + k, 1 - axis] = across + _uniform(u[at + 5 + k], -0.04, 0.04)
                radii[b, 2 + k] = _uniform(u[at + 14 + 2 * k], 0.07, 0.11)
            labels[b] = 2 * axis + blue_first
        else:   # control: the shape of the large object
            shape = _integer(u[at], len(CONTROL_SHAPES))
            shapes[b, 2] = shape
            _color(u, _place(u, at + 1, 0.3, 0.7, 0.2, 0.3, centers[b], radii[b], 2), 0.6, 1.0, 0.6, colors[b], 2)
            labels[b] = shape


def scenes_from_uniforms(task: str, uniforms: np.ndarray) -> Scenes:
    """Scenes from a [B, NUM_UNIFORMS] table of uniforms in [0, 1)."""
    b, k = len(uniforms), NUM_SLOTS[task]
    scenes = Scenes(labels=torch.empty(b, dtype=torch.long), background=torch.empty(b, 3),
                    waves=torch.empty(b, NUM_WAVES, 4), shapes=torch.empty(b, k, dtype=torch.long),
                    centers=torch.empty(b, k, 2), radii=torch.empty(b, k), colors=torch.empty(b, k, 3))
    _sample(TASKS.index(task), uniforms, *(getattr(scenes, f.name).numpy() for f in fields(Scenes)))
    return scenes


def sample_scenes(task: str, seed: int, split: str, indices: Sequence[int]) -> Scenes:
    """Scene i depends only on (seed, split, task, i): train and test draw from disjoint streams."""
    uniforms = keyed_uniforms(SCENE, seed, SPLITS[split], TASKS.index(task), index=indices, count=NUM_UNIFORMS)
    return scenes_from_uniforms(task, uniforms)


# ---- rendering ------------------------------------------------------------------------------
# One compiled kernel paints rectangular tiles of images straight into any buffer: whole images
# into [B, 3, H, W], or each token's p x p patch into its slot of the packed rows. A training batch
# of dozens of small images at a dozen sizes then costs one call, where array code paid per-call
# overhead for every size, shape and object.

def render(scenes: Scenes, height: int, width: int) -> Tensor:
    """[B, 3, H, W] float32 in [0, 1]. Object centres must lie inside [0, 1]^2."""
    b = len(scenes)
    images = torch.empty(b, 3, height, width)
    tiles = np.zeros((b, 6), np.int64)   # scene, top, left, height, width, first value
    tiles[:, 0] = np.arange(b)
    tiles[:, 3:5] = height, width
    tiles[:, 5] = np.arange(b) * (3 * height * width)
    sizes = np.tile(np.array([[height, width]], np.int64), (b, 1))
    _paint(images.view(-1), tiles, height * width, width, sizes, scenes)
    return images


def render_packed(scenes: Scenes, sizes: Sequence[tuple[int, int]], plan: Layout, patch_size: int) -> Tensor:
    """The patches ([R * L, 3*p*p]) of scene i at sizes[i], straight into the rows ``plan`` lays
    out: only kept tokens are rendered, each in patchify's (C, p, p) order."""
    p = patch_size
    patches = plan.new_patches(3 * p * p)
    tiles = np.full((len(plan.slot), 6), p)
    tiles[:, 0], tiles[:, 1], tiles[:, 2], tiles[:, 5] = plan.image, plan.y * p, plan.x * p, plan.slot * (3 * p * p)
    _paint(patches.view(-1), tiles, p * p, p, np.asarray(sizes, np.int64).reshape(-1, 2), scenes)
    return patches


def _paint(out: Tensor, tiles: np.ndarray, channel_stride: int, row_stride: int, sizes: np.ndarray,
           scenes: Scenes) -> None:
    _paint_tiles(out.numpy(), tiles, channel_stride, row_stride, sizes, scenes.background.numpy(),
                 scenes.waves.numpy(), scenes.shapes.numpy(), scenes.centers.numpy(), scenes.radii.numpy(),
                 scenes.colors.numpy())


# Coverage is non-zero up to 1 px beyond an object's circumradius r (at a triangle's corners, where
# the 0.5 px offsets of two edges meet). An object's box, [floor(c - reach), ceil(c + reach)) on
# each axis, holds every pixel whose centre lies within reach - 0.5 px of the object's centre c:
# reach = r + 1.5 px holds every pixel it touches. (The tests' random objects pass down to 0.5.)
REACH_MARGIN_PX = 1.5


@njit(cache=True)
def _paint_tiles(out, tiles, channel_stride, row_stride, sizes, background, waves, shapes, centers, radii,
                 colors):
    """Tile t is pixels [top, top + height) x [left, left + width) of scene s = tiles[t, 0] at
    sizes[s]; its value (c, y, x) goes to out[first + c * channel_stride + y * row_stride + x]."""
    num_scenes, num_waves = waves.shape[0], waves.shape[1]
    # The background texture is a sum of plane waves a * sin(kx u + ky v + phase), u and v in
    # short-side units: sin(A + B) = sin A cos B + cos A sin B makes it separable, so each image
    # needs (sin, cos) per column and per row, not per pixel.
    along_x = np.empty((num_scenes, num_waves, 2, sizes[:, 1].max()))
    along_y = np.empty((num_scenes, num_waves, 2, sizes[:, 0].max()))
    for s in range(num_scenes):
        height, width = sizes[s, 0], sizes[s, 1]
        for n in range(num_waves):
            direction, cycles, phase, amplitude = waves[s, n, 0], waves[s, n, 1], waves[s, n, 2], waves[s, n, 3]
            kx = 2 * math.pi * cycles * math.cos(direction) / min(height, width)   # radians per pixel
            ky = 2 * math.pi * cycles * math.sin(direction) / min(height, width)
            _phasor(along_x[s, n, 0, :width], along_x[s, n, 1, :width], kx, 0.5 * kx + phase, 1.0)
            _phasor(along_y[s, n, 1, :height], along_y[s, n, 0, :height], ky, 0.5 * ky, amplitude)
    # Each object's centre in pixels and the box of pixels it may touch: [x0, x1) x [y0, y1).
    num_slots = shapes.shape[1]
    center_px = np.empty((num_scenes, num_slots, 2))
    boxes = np.zeros((num_scenes, num_slots, 4), np.int64)   # EMPTY slots: an empty box
    for s in range(num_scenes):
        for k in range(num_slots):
            if shapes[s, k] != EMPTY:
                cx, cy = centers[s, k, 0] * sizes[s, 1], centers[s, k, 1] * sizes[s, 0]
                reach = radii[s, k] * min(sizes[s, 0], sizes[s, 1]) + REACH_MARGIN_PX
                center_px[s, k, 0], center_px[s, k, 1] = cx, cy
                boxes[s, k, 0], boxes[s, k, 1] = math.floor(cx - reach), math.ceil(cx + reach)
                boxes[s, k, 2], boxes[s, k, 3] = math.floor(cy - reach), math.ceil(cy + reach)
    texture = np.empty(tiles[:, 4].max())   # one row of a tile
    for t in range(tiles.shape[0]):
        s, top, left, tile_h, tile_w, first = tiles[t, 0], tiles[t, 1], tiles[t, 2], tiles[t, 3], tiles[t, 4], tiles[t, 5]
        for y in range(top, top + tile_h):
            for x in range(tile_w):
                texture[x] = 0.0
            for n in range(num_waves):
                cos_y, sin_y = along_y[s, n, 0, y], along_y[s, n, 1, y]
                for x in range(tile_w):
                    texture[x] += cos_y * along_x[s, n, 0, left + x] + sin_y * along_x[s, n, 1, left + x]
            at = first + (y - top) * row_stride
            for c in range(3):
                base = background[s, c]
                for x in range(tile_w):
                    out[at + c * channel_stride + x] = min(max(base + texture[x], 0.0), 1.0)
        short = min(sizes[s, 0], sizes[s, 1])
        for k in range(num_slots):   # in slot order: later objects cover earlier ones
            x0, x1 = max(left, boxes[s, k, 0]), min(left + tile_w, boxes[s, k, 1])
            y0, y1 = max(top, boxes[s, k, 2]), min(top + tile_h, boxes[s, k, 3])
            if x0 >= x1 or y0 >= y1:
                continue
            shape, r, cx, cy = shapes[s, k], radii[s, k], center_px[s, k, 0], center_px[s, k, 1]
            for y in range(y0, y1):
                for x in range(x0, x1):
                    coverage = 0.5 - shape_sdf(shape, (x + 0.5 - cx) / short, (y + 0.5 - cy) / short, r) * short
                    if coverage <= 0.0:
                        continue
                    coverage = min(coverage, 1.0)   # a one-pixel ramp across the edge
                    at = first + (y - top) * row_stride + (x - left)
                    for c in range(3):
                        under = out[at + c * channel_stride]
                        out[at + c * channel_stride] = under + coverage * (colors[s, k, c] - under)


@njit(cache=True)
def _phasor(sines, cosines, step, start, scale):
    """sines[i], cosines[i] = scale * sin(start + i * step), scale * cos(start + i * step), by
    rotating a unit vector: two trigonometric calls in all instead of two per entry."""
    rotate_sin, rotate_cos = math.sin(step), math.cos(step)
    sin, cos = math.sin(start), math.cos(start)
    for i in range(sines.shape[0]):
        sines[i], cosines[i] = scale * sin, scale * cos
        sin, cos = sin * rotate_cos + cos * rotate_sin, cos * rotate_cos - sin * rotate_sin


# ---- the dataset ----------------------------------------------------------------------------

class SyntheticSource(ImageSource):
    """``size`` scenes of one task and split; each has a native aspect ratio for training variety."""
    channels = 3

    def __init__(self, task: str, split: str, size: int, seed: int = 0,
                 aspect_range: Sequence[float] = (0.5, 2.0)):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.task, self.split, self.size, self.seed = task, split, size, seed
        self.aspect_range = (float(aspect_range[0]), float(aspect_range[1]))
        self.class_names = list(CLASS_NAMES[task])
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.size

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """int64 scene indices; IndexError names the first one out of range."""
        array = np.asarray(indices, np.int64).reshape(-1)
        outside = (array < 0) | (array >= self.size)
        if outside.any():
            raise IndexError(f"scene {array[outside][0]} out of range for {self.size} {self.split} scenes")
        return array

    def scenes(self, indices: Sequence[int]) -> Scenes:
        return sample_scenes(self.task, self.seed, self.split, self._indices(indices))

    def native_size(self, index: int) -> tuple[int, int]:
        height, width = self.native_sizes(np.array([index])).tolist()[0]
        return height, width

    def native_sizes(self, indices: np.ndarray) -> np.ndarray:
        indices = self._indices(indices)
        # Log-uniform aspect (W / H), so a and 1 / a are equally likely; its own stream keeps it cheap.
        u = keyed_uniforms(ASPECT, self.seed, SPLITS[self.split], index=indices, count=1)[:, 0]
        low, high = np.log(self.aspect_range)
        root = np.sqrt(np.exp(low + u * (high - low)))
        return np.stack([np.rint(NOMINAL_SIDE / root), np.rint(NOMINAL_SIDE * root)], 1).astype(np.int64)

    def load(self, index: int, size: tuple[int, int]) -> tuple[Tensor, int]:
        images, labels = self.load_many([index], size)
        return images[0], int(labels[0])

    def load_many(self, indices: Sequence[int], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        scenes = self.scenes(indices)
        return render(scenes, *size), scenes.labels

    def load_packed(self, indices: Sequence[int], sizes: Sequence[tuple[int, int]], patch_size: int,
                    max_seq_len: int | None, *, drop_rates: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[PackedBatch, Tensor]:
        # Rendered straight into the rows: no image is ever materialised, dropped tokens are not drawn.
        plan = layout(patch_grids(sizes, patch_size), max_seq_len, drop_rates=drop_rates, generator=generator)
        scenes = self.scenes(indices)
        return plan.batch(render_packed(scenes, sizes, plan, patch_size)), scenes.labels
