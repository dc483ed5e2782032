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
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .source import ImageSource, group_by_size
from .streams import ASPECT, SCENE, SPLITS, stream

NOMINAL_SIDE = 64     # native_size is sqrt(H * W) = 64 px; resolution policies only use its aspect
NUM_UNIFORMS = 64     # random numbers drawn per scene, enough for every task
NUM_WAVES = 3
EMPTY = -1            # shape id of an unused object slot

SQRT3 = math.sqrt(3.0)
SQRT2 = math.sqrt(2.0)


# ---- shapes: signed distance (negative inside) in short-side units; r is the circumradius ----
# Polygons use the largest of their edges' half-plane distances: exact along the edges, which is
# all a one-pixel anti-aliasing ramp needs. Every shape fits inside its circle of radius r.

def _circle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return torch.hypot(dx, dy) - r


def _square(dx, dy, r):
    return torch.maximum(dx.abs(), dy.abs()) - r / SQRT2


def _triangle(dx, dy, r):
    up = -dy  # image rows grow downwards; the apex points up
    return torch.maximum(-up, SQRT3 / 2 * dx.abs() + up / 2) - r / 2


def _cross(dx, dy, r):
    arm, half_width = 0.94 * r, 0.32 * r
    ax, ay = dx.abs(), dy.abs()
    return torch.minimum(torch.maximum(ax - arm, ay - half_width), torch.maximum(ax - half_width, ay - arm))


def _diamond(dx, dy, r):
    return (dx.abs() + dy.abs() - r) / SQRT2


def _ring(dx, dy, r):
    return (torch.hypot(dx, dy) - 0.72 * r).abs() - 0.28 * r


SHAPES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "circle": _circle, "square": _square, "triangle": _triangle,
    "cross": _cross, "diamond": _diamond, "ring": _ring,
}
SHAPE_SDFS = list(SHAPES.values())
CONTROL_SHAPES = tuple(SHAPES)[:4]   # circle, square, triangle, cross: label = shape id

CLASS_NAMES = {
    "abs_position": ["top-left", "top", "top-right", "left", "centre", "right",
                     "bottom-left", "bottom", "bottom-right"],
    "rel_position": ["blue right of red", "blue left of red", "blue below red", "blue above red"],
    "control": list(CONTROL_SHAPES),
}


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

    def select(self, rows: Sequence[int]) -> "Scenes":
        index = torch.as_tensor(rows, dtype=torch.long)
        return Scenes(*(getattr(self, f.name)[index] for f in fields(self)))


# ---- sampling -------------------------------------------------------------------------------

class _Draws:
    """Hands out columns of a [B, NUM_UNIFORMS] table, so each field of a scene is vectorised."""

    def __init__(self, uniforms: Tensor):
        self._uniforms, self._next = uniforms, 0

    def _take(self, shape: tuple[int, ...]) -> Tensor:
        n = math.prod(shape)
        if self._next + n > self._uniforms.shape[1]:
            raise RuntimeError("scene sampler needs more than NUM_UNIFORMS random numbers")
        cols = self._uniforms[:, self._next:self._next + n]
        self._next += n
        return cols.reshape(-1, *shape)

    def uniform(self, low, high, *shape: int) -> Tensor:
        """[B, *shape] float32; low and high may be [B] tensors when shape is empty."""
        return (low + (high - low) * self._take(shape)).float()

    def integer(self, count: int) -> Tensor:
        """[B] long, uniform over range(count)."""
        return (self._take(()) * count).long().clamp(max=count - 1)


def _color(d: _Draws, low: float, high: float, saturation: float) -> Tensor:
    """[B, 3] with brightness in [low, high]; saturation 0 gives greys."""
    value = d.uniform(low, high)
    return value[:, None] * (1 - saturation * d.uniform(0.0, 1.0, 3))


Slot = tuple[Tensor, Tensor, Tensor, Tensor]   # shape [B], centre [B, 2], radius [B], colour [B, 3]


def _distractors(d: _Draws, max_count: int, saturation: float) -> list[Slot]:
    count = d.integer(max_count + 1)
    slots = []
    for k in range(max_count):
        shape = torch.where(count > k, d.integer(len(SHAPES)), EMPTY)
        slots.append((shape, d.uniform(0.08, 0.92, 2), d.uniform(0.04, 0.08), _color(d, 0.35, 0.6, saturation)))
    return slots


TARGET_RADIUS = (0.07, 0.10)   # in units of the shorter side


def _abs_position(d: _Draws) -> tuple[Tensor, list[Slot]]:
    slots = _distractors(d, 2, saturation=0.8)
    cell = d.integer(9)
    radius = d.uniform(*TARGET_RADIUS)
    corner = torch.stack([cell % 3, cell // 3], -1).float() / 3
    # The centre is uniform over its whole cell: pinned near the cell's middle, the target would sit
    # at a fixed offset from the patch borders at each size, a cue that a model without positions
    # reads from the patches alone. Keeping it >= radius from the border (radius is relative to the
    # shorter side, so it is a safe margin on both axes) means the target is never clipped.
    low = corner.clamp(min=radius[:, None])
    high = (corner + 1 / 3).clamp(max=1 - radius[:, None])
    center = low + (high - low) * d.uniform(0.0, 1.0, 2)
    target = (d.integer(len(SHAPES)), center, radius, _color(d, 0.85, 1.0, 0.15))
    return cell, slots + [target]


REL_MARGIN = 0.11    # the largest radius: centres this far from the border stay inside the image


def _rel_position(d: _Draws) -> tuple[Tensor, list[Slot]]:
    slots = _distractors(d, 2, saturation=0.0)
    axis = d.integer(2)            # 0: the pair lies along x, 1: along y
    blue_first = d.integer(2)      # the mirror coin: swaps red and blue, nothing else
    gap = d.uniform(0.3, 0.6)      # >= 0.3 along the axis, > the two radii: no overlap
    first = d.uniform(REL_MARGIN, 1 - REL_MARGIN - gap)
    second = first + gap
    across = d.uniform(REL_MARGIN + 0.04, 1 - REL_MARGIN - 0.04)
    wobble = d.uniform(-0.04, 0.04, 2)
    red_along = torch.where(blue_first == 1, second, first)
    blue_along = torch.where(blue_first == 1, first, second)

    def place(along: Tensor, off: Tensor) -> Tensor:
        return torch.where(axis[:, None] == 0, torch.stack([along, off], -1), torch.stack([off, along], -1))

    red_color = torch.stack([d.uniform(0.8, 1.0), d.uniform(0.0, 0.2), d.uniform(0.0, 0.2)], -1)
    blue_color = torch.stack([d.uniform(0.0, 0.2), d.uniform(0.2, 0.45), d.uniform(0.8, 1.0)], -1)
    red = (d.integer(len(SHAPES)), place(red_along, across + wobble[:, 0]), d.uniform(0.07, 0.11), red_color)
    blue = (d.integer(len(SHAPES)), place(blue_along, across + wobble[:, 1]), d.uniform(0.07, 0.11), blue_color)
    return 2 * axis + blue_first, slots + [red, blue]


def _control(d: _Draws) -> tuple[Tensor, list[Slot]]:
    slots = _distractors(d, 2, saturation=0.8)
    shape = d.integer(len(CONTROL_SHAPES))
    main = (shape, d.uniform(0.3, 0.7, 2), d.uniform(0.2, 0.3), _color(d, 0.6, 1.0, 0.6))
    return shape, slots + [main]


_TASK_SAMPLERS = {"abs_position": _abs_position, "rel_position": _rel_position, "control": _control}


def scenes_from_uniforms(task: str, uniforms: Tensor) -> Scenes:
    """Scenes from a [B, NUM_UNIFORMS] table of uniforms in [0, 1)."""
    d = _Draws(uniforms)
    background = d.uniform(0.0, 0.3, 3)
    waves = torch.stack([d.uniform(0.0, math.pi, NUM_WAVES), d.uniform(0.5, 3.0, NUM_WAVES),
                         d.uniform(0.0, 2 * math.pi, NUM_WAVES), d.uniform(0.0, 0.05, NUM_WAVES)], -1)
    labels, slots = _TASK_SAMPLERS[task](d)
    shapes, centers, radii, colors = (torch.stack(parts, 1) for parts in zip(*slots))
    return Scenes(labels, background, waves, shapes, centers, radii, colors)


def sample_scenes(task: str, seed: int, split: str, indices: Sequence[int]) -> Scenes:
    """Scene i depends only on (seed, split, task, i): train and test draw from disjoint streams."""
    task_id = list(_TASK_SAMPLERS).index(task)
    uniforms = torch.from_numpy(np.stack([stream(SCENE, seed, SPLITS[split], task_id, int(i)).random(NUM_UNIFORMS)
                                          for i in indices]))
    return scenes_from_uniforms(task, uniforms)


# ---- rendering ------------------------------------------------------------------------------

def render(scenes: Scenes, height: int, width: int) -> Tensor:
    """[B, 3, H, W] float32 in [0, 1]. Object centres must lie inside [0, 1]^2."""
    b = len(scenes)
    short = min(height, width)
    image = torch.empty(b, 3, height, width)
    torch.add(scenes.background[:, :, None, None], _texture(scenes.waves, height, width)[:, None], out=image)
    image.clamp_(0.0, 1.0)

    # Each object is drawn in a window around it, not over the whole image: whole-image passes
    # per object would dominate the cost. A window that would cross the border is shifted inside
    # instead of clipped: it still holds the object's visible part, and no pixel repeats.
    flat = image.view(b, 3, height * width)
    centers_px = scenes.centers * torch.tensor([width, height])
    for k in range(scenes.shapes.shape[1]):
        size = math.ceil(2 * float(scenes.radii[:, k].max()) * short) + 2
        window_w, window_h = min(size, width), min(size, height)
        start = (centers_px[:, k] - size / 2).floor().long()
        start = torch.minimum(start.clamp(min=0), torch.tensor([width - window_w, height - window_h]))
        cols = start[:, 0, None] + torch.arange(window_w)                        # [B, window_w]
        rows = start[:, 1, None] + torch.arange(window_h)                        # [B, window_h]
        # Offsets from the object's centre in short-side units, at pixel centres.
        dx = (cols + 0.5 - centers_px[:, k, 0, None]) / short
        dy = (rows + 0.5 - centers_px[:, k, 1, None]) / short
        shape_ids = scenes.shapes[:, k, None, None]
        dx, dy, radius = dx[:, None, :], dy[:, :, None], scenes.radii[:, k, None, None]
        sdf = torch.full((b, window_h, window_w), math.inf)   # EMPTY slots stay outside everything
        # Every shape present in this slot is evaluated on all windows (they are small) and
        # selected per scene: cheaper than gathering each shape's scenes.
        for shape_id in scenes.shapes[:, k].unique().tolist():
            if shape_id != EMPTY:
                sdf = torch.where(shape_ids == shape_id, SHAPE_SDFS[shape_id](dx, dy, radius), sdf)
        coverage = (0.5 - sdf * short).clamp_(0.0, 1.0).view(b, 1, -1)   # one-pixel ramp across the edge
        # gather / scatter over flattened pixels: much cheaper than 4-D advanced indexing.
        pixels = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, -1).expand(b, 3, -1)
        inside = flat.gather(2, pixels)
        flat.scatter_(2, pixels, torch.lerp(inside, scenes.colors[:, k, :, None], coverage))
    return image


def _texture(waves: Tensor, height: int, width: int) -> Tensor:
    """[B, H, W]: a sum of plane waves a * sin(k . (x, y) + phase), x and y in short-side units."""
    short = min(height, width)
    xs = (torch.arange(width) + 0.5) / short
    ys = (torch.arange(height) + 0.5) / short
    direction, cycles, phase, amplitude = waves.unbind(-1)               # each [B, NUM_WAVES]
    kx = (2 * math.pi * cycles * direction.cos())[..., None]
    ky = (2 * math.pi * cycles * direction.sin())[..., None]
    along_x = kx * xs + phase[..., None]                                 # [B, NUM_WAVES, W]
    along_y = ky * ys                                                    # [B, NUM_WAVES, H]
    a = amplitude[..., None]
    # sin(u + v) = sin u cos v + cos u sin v: sums of outer products, no per-pixel sines.
    # (torch.bmm would do, but it is erratically slow on CPU for a batch of one.)
    over_y = torch.cat([a * along_y.cos(), a * along_y.sin()], 1)     # [B, 2 * NUM_WAVES, H]
    over_x = torch.cat([along_x.sin(), along_x.cos()], 1)             # [B, 2 * NUM_WAVES, W]
    texture = torch.zeros(waves.shape[0], height, width)
    for n in range(over_y.shape[1]):
        texture.addcmul_(over_y[:, n, :, None], over_x[:, n, None, :])
    return texture


# ---- the dataset ----------------------------------------------------------------------------

class SyntheticSource(ImageSource):
    """``size`` scenes of one task and split; each has a native aspect ratio for training variety."""
    channels = 3

    def __init__(self, task: str, split: str, size: int, seed: int = 0,
                 aspect_range: Sequence[float] = (0.5, 2.0)):
        if task not in _TASK_SAMPLERS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(_TASK_SAMPLERS)}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        self.task, self.split, self.size, self.seed = task, split, size, seed
        self.aspect_range = (float(aspect_range[0]), float(aspect_range[1]))
        self.class_names = list(CLASS_NAMES[task])
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.size

    def _check(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise IndexError(f"scene {index} out of range for {self.size} {self.split} scenes")
        return int(index)

    def scenes(self, indices: Sequence[int]) -> Scenes:
        return sample_scenes(self.task, self.seed, self.split, [self._check(i) for i in indices])

    def native_size(self, index: int) -> tuple[int, int]:
        # Log-uniform aspect (W / H), so a and 1 / a are equally likely; its own stream keeps it cheap.
        low, high = self.aspect_range
        u = stream(ASPECT, self.seed, SPLITS[self.split], self._check(index)).random()
        aspect = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        return round(NOMINAL_SIDE / math.sqrt(aspect)), round(NOMINAL_SIDE * math.sqrt(aspect))

    def load(self, index: int, size: tuple[int, int]) -> tuple[Tensor, int]:
        images, labels = self.load_many([index], size)
        return images[0], int(labels[0])

    def load_many(self, indices: Sequence[int], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        scenes = self.scenes(indices)
        return render(scenes, *size), scenes.labels

    def load_sized(self, indices: Sequence[int], sizes: Sequence[tuple[int, int]]) -> tuple[list[Tensor], Tensor]:
        scenes = self.scenes(indices)   # sampled once for the whole batch, then rendered per size
        images: list[Tensor | None] = [None] * len(indices)
        for size, positions in group_by_size(sizes).items():
            for i, image in zip(positions, render(scenes.select(positions), *size)):
                images[i] = image
        return images, scenes.labels
