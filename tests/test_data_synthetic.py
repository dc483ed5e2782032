"""The embedded synthetic dataset: determinism, geometry, labels, and position-free chance."""
import math

import numpy as np
import pytest
import torch

import bench
from bench.config import TASKS
from bench.data import SyntheticSource
from bench.data.synthetic import NUM_WAVES, SHAPES, EMPTY, Scenes, render, sample_scenes, shape_sdf
from bench.packing import pack


def one_object_scene(shape: str, centers, radius: float, color=(1.0, 1.0, 1.0), background=0.0) -> Scenes:
    """Scenes on a flat background (no waves), each with one object; centers is [[x, y], ...]."""
    n = len(centers)
    return Scenes(labels=torch.zeros(n, dtype=torch.long), background=torch.full((n, 3), background),
                  waves=torch.zeros(n, NUM_WAVES, 4),
                  shapes=torch.full((n, 1), list(SHAPES).index(shape)),
                  centers=torch.tensor(centers, dtype=torch.float32)[:, None],
                  radii=torch.full((n, 1), radius), colors=torch.tensor([color] * n)[:, None])


@pytest.mark.parametrize("task", TASKS)
def test_rendering_is_deterministic_by_seed_split_index(task):
    a = SyntheticSource(task, "train", 100, seed=3)
    b = SyntheticSource(task, "train", 100, seed=3)
    images, labels = a.load_many([5, 17, 42], (40, 72))
    again, again_labels = b.load_many([42, 5, 17], (40, 72))   # another order, another object
    assert torch.equal(images[[2, 0, 1]], again) and torch.equal(labels[[2, 0, 1]], again_labels)
    alone, label = a.load(17, (40, 72))
    assert torch.allclose(alone, images[1], atol=1e-6) and label == labels[1]
    other_seed, _ = SyntheticSource(task, "train", 100, seed=4).load_many([5, 17, 42], (40, 72))
    assert not torch.allclose(images, other_seed)
    assert images.shape == (3, 3, 40, 72) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1


def test_train_and_test_scenes_are_disjoint():
    train = SyntheticSource("abs_position", "train", 400)
    test = SyntheticSource("abs_position", "test", 400)
    params = []
    for source in (train, test):
        s = source.scenes(range(400))
        params.append(torch.cat([s.background, s.waves.flatten(1), s.centers.flatten(1), s.radii], 1))
    # No test scene equals any train scene (every parameter is a continuous draw).
    distance = torch.cdist(params[0].double(), params[1].double())
    assert distance.min() > 1e-3
    # The same index is a different scene in the two splits.
    assert not torch.allclose(train.load(7, (32, 32))[0], test.load(7, (32, 32))[0])


@pytest.mark.parametrize("size", [(48, 144), (144, 48), (96, 96)])
def test_a_circle_stays_a_circle_at_any_aspect_ratio(size):
    height, width = size
    image = render(one_object_scene("circle", [[0.5, 0.5]], radius=0.3), height, width)[0, 0]
    inside = image > 0.5
    rows_hit = inside.any(1).sum().item()
    cols_hit = inside.any(0).sum().item()
    diameter = 2 * 0.3 * min(height, width)
    assert abs(rows_hit - diameter) <= 1 and abs(cols_hit - diameter) <= 1
    area = image.sum().item()   # anti-aliased coverage integrates to the disc's area
    assert area == pytest.approx(math.pi * (diameter / 2) ** 2, rel=0.02)


def whole_image_render(scenes: Scenes, height: int, width: int) -> torch.Tensor:
    """The renderer's definition in float64 array code: every object evaluated at every pixel,
    every wave summed directly (no bounding boxes, no separable texture, no rotated phasors)."""
    short = min(height, width)
    xs = (torch.arange(width, dtype=torch.float64) + 0.5) / short
    ys = (torch.arange(height, dtype=torch.float64) + 0.5) / short
    images = []
    for i in range(len(scenes)):
        direction, cycles, phase, amplitude = scenes.waves[i].double().unbind(-1)
        k = 2 * math.pi * cycles
        angle = (k * direction.cos())[:, None, None] * xs.double() + (k * direction.sin())[:, None, None] * ys.double()[:, None]
        texture = (amplitude[:, None, None] * torch.sin(angle + phase[:, None, None])).sum(0)
        image = (scenes.background[i].double()[:, None, None] + texture).clamp(0, 1)
        for slot in range(scenes.shapes.shape[1]):
            shape = int(scenes.shapes[i, slot])
            if shape == EMPTY:
                continue
            cx, cy = scenes.centers[i, slot].double() * torch.tensor([width / short, height / short])
            sdf = shape_sdf(shape, (xs - cx).numpy()[None, :], (ys - cy).numpy()[:, None], float(scenes.radii[i, slot]))
            coverage = (0.5 - torch.from_numpy(sdf) * short).clamp(0, 1)
            image = image + coverage * (scenes.colors[i, slot].double()[:, None, None] - image)
        images.append(image)
    return torch.stack(images).float()


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("size", [(8, 8), (12, 40), (40, 12), (20, 24), (64, 64), (96, 288)])
def test_rendering_equals_evaluating_every_object_everywhere(task, size):
    # The kernel evaluates each object only in a box around it, with a separable texture.
    scenes = sample_scenes(task, 0, "test", range(100))
    expected = whole_image_render(scenes, *size)
    rendered = render(scenes, *size)
    for i in range(len(scenes)):
        assert (rendered[i] - expected[i]).abs().max() < 1e-5, f"scene {i}"


@pytest.mark.parametrize("shape", SHAPES)
def test_bounding_boxes_hold_every_pixel_an_object_touches(shape):
    # Single objects at random sub-pixel centres and radii, so every way an edge can fall between
    # pixel centres is tried; a box too tight would cut the anti-aliasing ramp.
    generator = torch.Generator().manual_seed(0)
    centers = 0.1 + 0.8 * torch.rand(300, 2, generator=generator)
    radii = 0.02 + 0.2 * torch.rand(300, generator=generator)
    scenes = one_object_scene(shape, centers.tolist(), 0.0)
    scenes.radii = radii[:, None]
    assert (render(scenes, 16, 24) - whole_image_render(scenes, 16, 24)).abs().amax((1, 2, 3)).max() < 1e-5


def rendered_alone_and_packed(source, indices, sizes, patch, max_seq_len, **options):
    """pack() of each image rendered alone, and load_packed(): the same token dropping for both."""
    images = [source.load(i, size)[0] for i, size in zip(indices, sizes)]
    generator = lambda: torch.Generator().manual_seed(5)
    return (pack(images, patch, max_seq_len, generator=generator(), **options),
            source.load_packed(indices, sizes, patch, max_seq_len, generator=generator(), **options))


@pytest.mark.parametrize("task", TASKS)
def test_rendering_into_rows_equals_packing_images_rendered_alone(task):
    source = SyntheticSource(task, "train", 500, seed=2)
    indices = [3, 77, 3, 410, 12, 250, 9, 33, 499, 0]
    sizes = [(8, 8), (16, 40), (40, 16), (24, 24), (12, 36), (64, 8), (4, 4), (20, 12), (32, 32), (8, 60)]
    expected, (packed, labels) = rendered_alone_and_packed(source, indices, sizes, 4, 64)
    assert torch.equal(labels, torch.stack([torch.tensor(source.load(i, (8, 8))[1]) for i in indices]))
    for field in ("patches", "image_ids", "coords", "grids"):
        assert torch.equal(getattr(packed, field), getattr(expected, field)), field
    # Token dropping renders only the kept tokens, the ones pack() keeps from whole images.
    expected, (packed, _) = rendered_alone_and_packed(source, indices, sizes, 4, 64,
                                                      drop_rates=torch.linspace(0.0, 0.9, 10))
    assert packed.num_dropped == expected.num_dropped > 0
    for field in ("patches", "image_ids", "coords"):
        assert torch.equal(getattr(packed, field), getattr(expected, field)), field


def test_sizes_that_are_not_multiples_of_the_patch_are_named():
    with pytest.raises(ValueError, match="image 1 has size 10x8: H and W must be positive multiples of patch_size=4"):
        SyntheticSource("control", "train", 10).load_packed([0, 1], [(8, 8), (10, 8)], 4, 64)


def test_edges_are_anti_aliased():
    image = render(one_object_scene("circle", [[0.5, 0.5]], radius=0.3, background=0.0), 64, 64)[0, 0]
    partial = ((image > 0.02) & (image < 0.98)).sum().item()
    circumference = 2 * math.pi * 0.3 * 64
    # Off-grid circle edges cross about one partly covered pixel per unit of length.
    assert 0.6 * circumference < partial < 2.0 * circumference
    assert (image == 0).any() and (image == 1).any()


def test_objects_scale_with_the_short_side_and_keep_their_relative_position():
    small = render(one_object_scene("square", [[0.25, 0.75]], radius=0.2), 32, 64)[0, 0]
    large = render(one_object_scene("square", [[0.25, 0.75]], radius=0.2), 64, 128)[0, 0]
    # The 2x rendering, averaged over 2x2 blocks, is the 1x rendering up to edge pixels.
    pooled = torch.nn.functional.avg_pool2d(large[None, None], 2)[0, 0]
    assert (pooled - small).abs().mean() < 0.01
    ys, xs = (large > 0.5).nonzero().float().mean(0)
    assert xs / 128 == pytest.approx(0.25, abs=0.01) and ys / 64 == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("task", TASKS)
def test_labels_are_balanced(task):
    source = SyntheticSource(task, "train", 3000)
    counts = torch.bincount(source.scenes(range(3000)).labels, minlength=source.num_classes)
    expected = 3000 / source.num_classes
    assert len(counts) == source.num_classes == len(source.class_names)
    assert (counts - expected).abs().max() < 0.25 * expected


def centroid(mask):
    ys, xs = mask.nonzero().float().unbind(1)
    return (xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0]


@pytest.mark.parametrize("size", [(48, 144), (144, 48)])
def test_abs_position_label_is_the_cell_of_the_bright_target(size):
    source = SyntheticSource("abs_position", "test", 60)
    images, labels = source.load_many(range(60), size)
    for image, label in zip(images, labels):
        x, y = centroid(image.min(0).values > 0.7)   # only the target is this bright in every channel
        assert int(3 * y) * 3 + int(3 * x) == label


@pytest.mark.parametrize("size", [(48, 144), (144, 48)])
def test_rel_position_label_is_where_blue_sits_relative_to_red(size):
    source = SyntheticSource("rel_position", "test", 60)
    images, labels = source.load_many(range(60), size)
    for image, label in zip(images, labels):
        r, g, b = image
        red_x, red_y = centroid((r > 0.7) & (g < 0.3) & (b < 0.3))
        blue_x, blue_y = centroid((b > 0.7) & (r < 0.3))
        dx, dy = blue_x - red_x, blue_y - red_y     # relative coordinates
        expected = (0 if dx > 0 else 1) if abs(dx) > abs(dy) else (2 if dy > 0 else 3)
        assert expected == label
        assert max(abs(dx), abs(dy)) >= 0.29


def test_control_label_is_the_shape_of_the_large_object():
    source = SyntheticSource("control", "test", 40)
    scenes = source.scenes(range(40))
    main = scenes.shapes[:, -1]
    assert torch.equal(main, scenes.labels)
    assert (scenes.radii[:, -1] > scenes.radii[:, :-1].max(1).values).all()
    assert [source.class_names[i] for i in range(4)] == list(SHAPES)[:4]


def mirrored_pair(task):
    """Two scenes, one patch-permutation apart at 64x64 with 8-px patches, with different labels."""
    flat = dict(background=torch.full((2, 3), 0.2), waves=torch.zeros(2, NUM_WAVES, 4))
    if task == "rel_position":
        # Red and blue swap places; the two centres are 32 px = 4 patches apart.
        red, blue = [0.25, 0.5], [0.75, 0.5]
        return Scenes(labels=torch.tensor([0, 1]), shapes=torch.tensor([[0, 1], [0, 1]]),
                      centers=torch.tensor([[red, blue], [blue, red]]), radii=torch.full((2, 2), 0.1),
                      colors=torch.tensor([[[0.9, 0.1, 0.1], [0.1, 0.3, 0.9]]] * 2), **flat)
    # abs_position: the target moves from the left cell to the right one, (5/6 - 1/6) * 48 = 32 px.
    return Scenes(labels=torch.tensor([3, 5]), shapes=torch.tensor([[2], [2]]),
                  centers=torch.tensor([[[1 / 6, 0.5]], [[5 / 6, 0.5]]]), radii=torch.full((2, 1), 0.1),
                  colors=torch.ones(2, 1, 3), **flat)


@pytest.mark.parametrize("task,size", [("rel_position", (64, 64)), ("abs_position", (48, 48))])
def test_a_model_without_positions_cannot_tell_mirrored_arrangements_apart(task, size):
    # Symmetry argument: a NoPE model sees an unordered bag of patches. The sampler draws every
    # arrangement and its mirror (rel_position) or shifted twin (abs_position) alike, and here
    # the twin's patches are exactly a permutation of the scene's: the logits must coincide.
    scenes = mirrored_pair(task)
    images = render(scenes, *size)
    patches = [bench.pack([image], 8, None).patches[0] for image in images]
    rounded = [np.round(p.numpy(), 4) for p in patches]   # rows sorted lexicographically: a bag
    as_bags = [r[np.lexsort(r.T[::-1])] for r in rounded]
    assert np.allclose(as_bags[0], as_bags[1], atol=2e-4), "the two scenes are one bag of patches"
    assert scenes.labels[0] != scenes.labels[1]
    torch.manual_seed(0)
    nope = bench.build_model("nope", 9, patch_size=8, dim=32, depth=2, heads=2).eval()
    positional = bench.build_model("factorized_frac_sincos", 9, patch_size=8, dim=32, depth=2, heads=2).eval()
    with torch.no_grad():
        blind = nope(list(images))
        seeing = positional(list(images))
    # Float rounding alone separates the NoPE logits (about 1e-7); positions, 1e-4 and more.
    assert (blind[0] - blind[1]).abs().max() < 1e-5
    assert (seeing[0] - seeing[1]).abs().max() > 1e-4, "a model with positions does tell them apart"


def test_native_aspect_ratios_follow_the_configured_range():
    source = SyntheticSource("control", "train", 1000, aspect_range=(0.5, 2.0))
    aspects = torch.tensor([w / h for h, w in map(source.native_size, range(1000))])
    assert aspects.min() >= 0.49 and aspects.max() <= 2.01
    # Log-uniform: as many tall scenes as wide ones.
    assert abs((aspects > 1).float().mean() - 0.5) < 0.06
    assert SyntheticSource("control", "train", 10, aspect_range=(1.0, 1.0)).native_size(3) == (64, 64)


def test_out_of_range_index_is_an_error():
    with pytest.raises(IndexError, match="out of range"):
        SyntheticSource("control", "train", 10).load(10, (32, 32))


def test_keyed_uniforms_depend_only_on_their_key_and_index():
    from bench.data.streams import keyed_uniforms
    table = keyed_uniforms(1, 7, 0, index=range(2000), count=64)
    assert table.shape == (2000, 64) and table.min() >= 0 and table.max() < 1
    # A row does not depend on its batch-mates, and another key is another table.
    assert (keyed_uniforms(1, 7, 0, index=[1999, 5], count=64) == table[[1999, 5]]).all()
    for other in [(1, 8, 0), (1, 7, 1), (2, 7, 0)]:
        assert (keyed_uniforms(*other, index=range(2000), count=64) != table).mean() > 0.999
    # Uniform, and no correlation between neighbouring indices or draws.
    assert abs(table.mean() - 0.5) < 0.005 and abs(table.var() - 1 / 12) < 0.002
    neighbours = np.corrcoef(table[:-1].ravel(), table[1:].ravel())[0, 1]        # ~0.003 by chance
    next_draw = np.corrcoef(table[:, :-1].ravel(), table[:, 1:].ravel())[0, 1]
    assert abs(neighbours) < 0.015 and abs(next_draw) < 0.015
