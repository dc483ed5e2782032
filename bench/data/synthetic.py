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

from .source import ImageSource
from .streams import ASPECT, SCENE, SPLITS, keyed_uniforms

NOMINAL_SIDE = 64     # native_size is sqrt(H * W) = 64 px; resolution policies only use its aspect
NUM_UNIFORMS = 64     # random numbers drawn per scene, enough for every task
NUM_WAVES = 3
EMPTY = -1            # shape id of an unused object slot
ASPECT_BLOCK = 4096   # native sizes are drawn for this many consecutive scenes at a time

SQRT3 = math.sqrt(3.0)
SQRT2 = math.sqrt(2.0)


# ---- shapes: signed distance (negative inside) in short-side units; r is the circumradius ----
# Polygons use the largest of their edges' half-plane distances: exact along the edges, which is
# all a one-pixel anti-aliasing ramp needs. Every shape fits inside its circle of radius r.

def _radial(dx: Tensor, dy: Tensor) -> Tensor:
    return (dx * dx + dy * dy).sqrt_()   # several times faster than torch.hypot on CPU


def _circle(dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    return _radial(dx, dy) - r


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
    return (_radial(dx, dy) - 0.72 * r).abs() - 0.28 * r


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

# Scenes are sampled with numpy: dozens of operations on arrays of a few dozen numbers each, where
# numpy's per-call overhead is a fraction of torch's.

class _Draws:
    """Hands out columns of a [B, NUM_UNIFORMS] table, so each field of a scene is vectorised."""

    def __init__(self, uniforms: np.ndarray):
        self._uniforms, self._next = uniforms, 0

    def _take(self, shape: tuple[int, ...]) -> np.ndarray:
        n = math.prod(shape)
        if self._next + n > self._uniforms.shape[1]:
            raise RuntimeError("scene sampler needs more than NUM_UNIFORMS random numbers")
        cols = self._uniforms[:, self._next:self._next + n]
        self._next += n
        return cols.reshape(-1, *shape)

    def uniform(self, low, high, *shape: int) -> np.ndarray:
        """[B, *shape]; low and high may be [B] arrays when shape is empty."""
        return low + (high - low) * self._take(shape)

    def integer(self, count: int) -> np.ndarray:
        """[B] int64, uniform over range(count)."""
        return np.minimum((self._take(()) * count).astype(np.int64), count - 1)


def _color(d: _Draws, low: float, high: float, saturation: float) -> np.ndarray:
    """[B, 3] with brightness in [low, high]; saturation 0 gives greys."""
    value = d.uniform(low, high)
    return value[:, None] * (1 - saturation * d.uniform(0.0, 1.0, 3))


Slot = tuple[np.ndarray, ...]   # shape [B], centre [B, 2], radius [B], colour [B, 3]


def _distractors(d: _Draws, max_count: int, saturation: float) -> list[Slot]:
    count = d.integer(max_count + 1)
    slots = []
    for k in range(max_count):
        shape = np.where(count > k, d.integer(len(SHAPES)), EMPTY)
        slots.append((shape, d.uniform(0.08, 0.92, 2), d.uniform(0.04, 0.08), _color(d, 0.35, 0.6, saturation)))
    return slots


TARGET_RADIUS = (0.07, 0.10)   # in units of the shorter side


def _abs_position(d: _Draws) -> tuple[np.ndarray, list[Slot]]:
    slots = _distractors(d, 2, saturation=0.8)
    cell = d.integer(9)
    radius = d.uniform(*TARGET_RADIUS)
    corner = np.stack([cell % 3, cell // 3], -1) / 3
    # The centre is uniform over its whole cell: pinned near the cell's middle, the target would sit
    # at a fixed offset from the patch borders at each size, a cue that a model without positions
    # reads from the patches alone. Keeping it >= radius from the border (radius is relative to the
    # shorter side, so it is a safe margin on both axes) means the target is never clipped.
    low = np.maximum(corner, radius[:, None])
    high = np.minimum(corner + 1 / 3, 1 - radius[:, None])
    center = low + (high - low) * d.uniform(0.0, 1.0, 2)
    target = (d.integer(len(SHAPES)), center, radius, _color(d, 0.85, 1.0, 0.15))
    return cell, slots + [target]


REL_MARGIN = 0.11    # the largest radius: centres this far from the border stay inside the image


def _rel_position(d: _Draws) -> tuple[np.ndarray, list[Slot]]:
    slots = _distractors(d, 2, saturation=0.0)
    axis = d.integer(2)            # 0: the pair lies along x, 1: along y
    blue_first = d.integer(2)      # the mirror coin: swaps red and blue, nothing else
    gap = d.uniform(0.3, 0.6)      # >= 0.3 along the axis, > the two radii: no overlap
    first = d.uniform(REL_MARGIN, 1 - REL_MARGIN - gap)
    second = first + gap
    across = d.uniform(REL_MARGIN + 0.04, 1 - REL_MARGIN - 0.04)
    wobble = d.uniform(-0.04, 0.04, 2)
    red_along = np.where(blue_first == 1, second, first)
    blue_along = np.where(blue_first == 1, first, second)

    def place(along: np.ndarray, off: np.ndarray) -> np.ndarray:
        return np.where(axis[:, None] == 0, np.stack([along, off], -1), np.stack([off, along], -1))

    red_color = np.stack([d.uniform(0.8, 1.0), d.uniform(0.0, 0.2), d.uniform(0.0, 0.2)], -1)
    blue_color = np.stack([d.uniform(0.0, 0.2), d.uniform(0.2, 0.45), d.uniform(0.8, 1.0)], -1)
    red = (d.integer(len(SHAPES)), place(red_along, across + wobble[:, 0]), d.uniform(0.07, 0.11), red_color)
    blue = (d.integer(len(SHAPES)), place(blue_along, across + wobble[:, 1]), d.uniform(0.07, 0.11), blue_color)
    return 2 * axis + blue_first, slots + [red, blue]


def _control(d: _Draws) -> tuple[np.ndarray, list[Slot]]:
    slots = _distractors(d, 2, saturation=0.8)
    shape = d.integer(len(CONTROL_SHAPES))
    main = (shape, d.uniform(0.3, 0.7, 2), d.uniform(0.2, 0.3), _color(d, 0.6, 1.0, 0.6))
    return shape, slots + [main]


_TASK_SAMPLERS = {"abs_position": _abs_position, "rel_position": _rel_position, "control": _control}


def scenes_from_uniforms(task: str, uniforms: np.ndarray) -> Scenes:
    """Scenes from a [B, NUM_UNIFORMS] table of uniforms in [0, 1)."""
    d = _Draws(uniforms)
    background = d.uniform(0.0, 0.3, 3)
    waves = np.stack([d.uniform(0.0, math.pi, NUM_WAVES), d.uniform(0.5, 3.0, NUM_WAVES),
                         d.uniform(0.0, 2 * math.pi, NUM_WAVES), d.uniform(0.0, 0.05, NUM_WAVES)], -1)
    labels, slots = _TASK_SAMPLERS[task](d)
    shapes, centers, radii, colors = (np.stack(parts, 1) for parts in zip(*slots))
    return Scenes(*(torch.from_numpy(np.ascontiguousarray(a, np.int64 if a.dtype.kind == "i" else np.float32))
                    for a in (labels, background, waves, shapes, centers, radii, colors)))


def sample_scenes(task: str, seed: int, split: str, indices: Sequence[int]) -> Scenes:
    """Scene i depends only on (seed, split, task, i): train and test draw from disjoint streams."""
    task_id = list(_TASK_SAMPLERS).index(task)
    uniforms = keyed_uniforms(SCENE, seed, SPLITS[split], task_id, index=indices, count=NUM_UNIFORMS)
    return scenes_from_uniforms(task, uniforms)


# ---- rendering ------------------------------------------------------------------------------

def render(scenes: Scenes, height: int, width: int) -> Tensor:
    """[B, 3, H, W] float32 in [0, 1]. Object centres must lie inside [0, 1]^2."""
    sizes = torch.tensor([[height, width]]).expand(len(scenes), 2)
    return _render_canvas(scenes, sizes)


def render_sized(scenes: Scenes, sizes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Scene i at sizes[i], each [3, H_i, W_i], all rendered in one call.

    A training batch holds dozens of small images of a dozen sizes: per-size calls would cost far
    more in per-op overhead than the arithmetic, so each image is drawn on a common canvas with its
    own size's geometry, then cropped (a view).
    """
    canvas = _render_canvas(scenes, torch.tensor(sizes, dtype=torch.long).view(len(scenes), 2))
    return [image[:, :height, :width] for image, (height, width) in zip(canvas, sizes)]


def _render_canvas(scenes: Scenes, sizes: Tensor) -> Tensor:
    """[B, 3, max H, max W]: scene b at sizes[b] = (H_b, W_b) in its top-left corner."""
    b, num_slots = scenes.shapes.shape
    heights, widths = sizes.unbind(1)
    canvas_h, canvas_w = int(heights.max()), int(widths.max())
    short = torch.minimum(heights, widths).float()[:, None]                # [B, 1]
    # One spare element after all images: window pixels outside their image write there.
    flat = torch.empty(b * 3 * canvas_h * canvas_w + 1)
    image = flat[:-1].view(b, 3, canvas_h, canvas_w)
    torch.add(scenes.background[:, :, None, None], _texture(scenes.waves, canvas_h, canvas_w, short)[:, None],
              out=image)
    image.clamp_(0.0, 1.0)
    _paint(flat, scenes, sizes, short, canvas_w, canvas_h)
    return image


# Coverage is non-zero less than 1 px beyond an object's circumradius r (at a triangle's corners),
# so the pixels it touches are those after c - r - 1.5 and before c + r + 0.5 (pixel i is centred
# at i + 0.5): a window from floor(c - r - 0.5) of ceil(2 r) + WINDOW_MARGIN px holds them all.
WINDOW_MARGIN = 2


def _paint(flat: Tensor, scenes: Scenes, sizes: Tensor, short: Tensor, canvas_w: int, canvas_h: int) -> None:
    """Paint the objects, in slot order, onto ``flat``: B canvases [3, canvas_h, canvas_w], then a spare."""
    b, num_slots = scenes.shapes.shape
    spare = flat.numel() - 1
    # Each window pixel's index in ``flat``, per channel.
    offsets = (torch.arange(b) * (3 * canvas_h * canvas_w))[:, None, None] + torch.arange(3)[:, None] * (canvas_h * canvas_w)
    windows = [math.ceil(float((2 * scenes.radii[:, k] * short[:, 0]).max())) + WINDOW_MARGIN for k in range(num_slots)]
    slot_windows = {}
    for group in _window_groups(windows):
        coverage, pixels = _windows(scenes, group, max(windows[k] for k in group), sizes, short, canvas_w)
        slot_windows.update({k: (coverage[:, i], pixels[:, i]) for i, k in enumerate(group)})
    # gather / scatter over flattened pixels: much cheaper than 4-D advanced indexing.
    for k in range(num_slots):   # later objects cover earlier ones
        coverage, pixels = slot_windows[k]
        index = torch.where(pixels >= 0, pixels + offsets, spare).view(-1)   # [B * 3 * window^2]
        under = flat.gather(0, index).view(b, 3, -1)
        flat.scatter_(0, index, torch.lerp(under, scenes.colors[:, k, :, None], coverage).view(-1))


def _window_groups(windows: list[int]) -> list[list[int]]:
    """Slots whose window sizes are within 1.5x of each other share one pass at the largest size.

    Small batches are bound by per-op overhead, so fewer passes win; a small object in a large
    object's window would waste more than that in big images.
    """
    groups: list[list[int]] = []
    for k in sorted(range(len(windows)), key=windows.__getitem__):
        if groups and windows[k] <= 1.5 * windows[groups[-1][0]]:
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


def _windows(scenes: Scenes, slots: list[int], size: int, sizes: Tensor, short: Tensor,
             canvas_w: int) -> tuple[Tensor, Tensor]:
    """For objects ``slots``, each in a size x size window: (coverage [B, S, 1, size^2] in [0, 1],
    each window pixel's index in its image's canvas [B, S, 1, size^2], -1 outside the image).

    A window that would cross the image's border is shifted inside instead of clipped: it still
    holds the object's visible part, and no pixel repeats.
    """
    b = len(scenes)
    heights, widths = sizes.unbind(1)
    window = torch.arange(size)
    window_w, window_h = widths.clamp(max=size)[:, None], heights.clamp(max=size)[:, None]   # [B, 1]
    centers_px = scenes.centers[:, slots] * sizes.flip(1)[:, None]          # [B, S, 2] (x, y) in pixels
    reach = (scenes.radii[:, slots] * short)[..., None] + 0.5
    start = (centers_px - reach).floor().long().clamp(min=0)
    start = torch.minimum(start, torch.stack([widths[:, None] - window_w, heights[:, None] - window_h], -1))
    cols = start[..., 0, None] + window                                    # [B, S, size]
    rows = start[..., 1, None] + window
    # Offsets from the object's centre in short-side units, at pixel centres.
    dx = ((cols + 0.5 - centers_px[..., 0, None]) / short[..., None])[:, :, None, :]
    dy = ((rows + 0.5 - centers_px[..., 1, None]) / short[..., None])[:, :, :, None]
    shapes = scenes.shapes[:, slots]
    radius, shape_ids = scenes.radii[:, slots, None, None], shapes[..., None, None]
    sdf = torch.full((b, len(slots), size, size), math.inf)   # EMPTY slots stay outside everything
    # Every shape present is evaluated on all windows (they are small) and selected per object:
    # cheaper than gathering each shape's objects.
    for shape_id in set(shapes.view(-1).tolist()) - {EMPTY}:   # (torch.unique costs more than the set)
        sdf = torch.where(shape_ids == shape_id, SHAPE_SDFS[shape_id](dx, dy, radius), sdf)
    coverage = (0.5 - sdf * short[..., None, None]).clamp_(0.0, 1.0)       # a one-pixel ramp across the edge
    inside = (window < window_h)[:, None, :, None] & (window < window_w)[:, None, None, :]
    pixels = torch.where(inside, rows[..., :, None] * canvas_w + cols[..., None, :], -1)
    return coverage.view(b, len(slots), 1, -1), pixels.view(b, len(slots), 1, -1)


def _texture(waves: Tensor, height: int, width: int, short: Tensor) -> Tensor:
    """[B, H, W]: a sum of plane waves a * sin(k . (x, y) + phase), x and y in units of each
    image's shorter side ``short`` ([B, 1])."""
    xs = (torch.arange(width) + 0.5) / short                           # [B, W]
    ys = (torch.arange(height) + 0.5) / short                          # [B, H]
    direction, cycles, phase, amplitude = waves.unbind(-1)               # each [B, NUM_WAVES]
    kx = (2 * math.pi * cycles * direction.cos())[..., None]
    ky = (2 * math.pi * cycles * direction.sin())[..., None]
    along_x = kx * xs[:, None] + phase[..., None]                        # [B, NUM_WAVES, W]
    along_y = ky * ys[:, None]                                           # [B, NUM_WAVES, H]
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
        self._native_sizes: dict[int, list[tuple[int, int]]] = {}   # by block of ASPECT_BLOCK scenes

    def __len__(self) -> int:
        return self.size

    def _check(self, index: int) -> int:
        if not 0 <= index < self.size:
            raise IndexError(f"scene {index} out of range for {self.size} {self.split} scenes")
        return int(index)

    def scenes(self, indices: Sequence[int]) -> Scenes:
        return sample_scenes(self.task, self.seed, self.split, [self._check(i) for i in indices])

    def native_size(self, index: int) -> tuple[int, int]:
        block, offset = divmod(self._check(index), ASPECT_BLOCK)
        if block not in self._native_sizes:
            self._native_sizes[block] = self._native_block(block)
        return self._native_sizes[block][offset]

    def _native_block(self, block: int) -> list[tuple[int, int]]:
        """Native sizes of scenes block * ASPECT_BLOCK, ...: one vectorised draw, not one per scene."""
        # Log-uniform aspect (W / H), so a and 1 / a are equally likely; its own stream keeps it cheap.
        indices = np.arange(block * ASPECT_BLOCK, min((block + 1) * ASPECT_BLOCK, self.size))
        u = keyed_uniforms(ASPECT, self.seed, SPLITS[self.split], index=indices, count=1)[:, 0]
        low, high = np.log(self.aspect_range)
        root = np.sqrt(np.exp(low + u * (high - low)))
        return list(zip(np.rint(NOMINAL_SIDE / root).astype(int).tolist(), np.rint(NOMINAL_SIDE * root).astype(int).tolist()))

    def load(self, index: int, size: tuple[int, int]) -> tuple[Tensor, int]:
        images, labels = self.load_many([index], size)
        return images[0], int(labels[0])

    def load_many(self, indices: Sequence[int], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        scenes = self.scenes(indices)
        return render(scenes, *size), scenes.labels

    def load_sized(self, indices: Sequence[int], sizes: Sequence[tuple[int, int]]) -> tuple[list[Tensor], Tensor]:
        scenes = self.scenes(indices)
        return render_sized(scenes, sizes), scenes.labels
