"""Real data from tiny files written here: image folders and CIFAR-format pickles."""
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from bench.config import DataConfig, DropConfig, ResolutionConfig
from bench.data import CifarSource, ImageFolderSource, TrainBatches, build_source
from bench.errors import DataError

SIZES = {"cat": [(20, 30), (40, 16), (24, 24), (30, 60)], "dog": [(16, 48), (36, 20), (28, 28), (60, 30)]}


def write_png(path, height, width, value=None, mode="RGB"):
    rng = np.random.default_rng(height * 1000 + width)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8) if value is None \
        else np.full((height, width, channels), value, dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(path)
    return pixels


def make_folder(root, corrupt=0):
    for name, sizes in SIZES.items():
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            write_png(root / name / f"{i}.png", h, w)
    (root / "cat" / "notes.txt").write_text("not an image, not counted")
    good = (root / "cat" / "0.png").read_bytes()
    for i in range(corrupt):   # garbage, then a truncated PNG
        (root / "dog" / f"bad{i}.png").write_bytes(b"garbage" if i % 2 == 0 else good[: len(good) // 2])
    return root


def test_imagefolder_keeps_native_sizes_and_splits_deterministically(tmp_path):
    root = make_folder(tmp_path / "pets")
    train = ImageFolderSource(str(root), "train", test_fraction=0.25)
    test = ImageFolderSource(str(root), "test", test_fraction=0.25)
    assert train.class_names == test.class_names == ["cat", "dog"] and train.num_classes == 2
    assert len(train) == 6 and len(test) == 2
    assert sorted(test.labels) == [0, 1], "the held-out share is taken from every class"
    assert not set(train.paths) & set(test.paths)
    again = ImageFolderSource(str(root), "test", test_fraction=0.25)
    assert again.paths == test.paths
    sizes = sorted([*map(train.native_size, range(len(train))), *map(test.native_size, range(len(test)))])
    assert sizes == sorted(s for v in SIZES.values() for s in v)


def test_imagefolder_loads_exact_pixels_at_native_size_and_resizes_otherwise(tmp_path):
    root = tmp_path / "solid"
    (root / "red").mkdir(parents=True)
    pixels = write_png(root / "red" / "a.png", 24, 40)
    write_png(root / "red" / "gray.png", 30, 30, value=200, mode="L")
    source = ImageFolderSource(str(root), "train", test_root=str(root))
    index = [p.name for p in source.paths].index("a.png")
    image, label = source.load(index, (24, 40))
    assert label == 0 and image.dtype == torch.float32
    assert torch.equal(image, torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    resized, _ = source.load(index, (16, 32))
    assert resized.shape == (3, 16, 32) and resized.min() >= 0 and resized.max() <= 1
    gray, _ = source.load(1 - index, (16, 48))
    assert gray.shape == (3, 16, 48) and torch.allclose(gray, torch.full_like(gray, 200 / 255), atol=1e-5)


def test_unreadable_files_are_counted_and_reported_once(tmp_path):
    root = make_folder(tmp_path / "pets", corrupt=2)
    with pytest.warns(UserWarning, match="skipped 2 unreadable of 10 train image files") as record:
        source = ImageFolderSource(str(root), "train", test_root=str(root))
    assert len(record) == 1
    assert len(source) == 8 and sorted(p.name for p in source.unreadable) == ["bad0.png", "bad1.png"]


def test_a_folder_of_only_unreadable_files_is_an_error_naming_path_and_key(tmp_path):
    root = tmp_path / "broken"
    (root / "a").mkdir(parents=True)
    for i in range(3):
        (root / "a" / f"{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"data.root: none of the 3 train image files under {root} could be read"):
        ImageFolderSource(str(root), "train", test_root=str(root))


@pytest.mark.parametrize("layout,message", [
    (None, "does not exist"),
    ([], "has no class subfolders"),
    (["a", "b"], "no train image files"),
])
def test_missing_or_empty_roots_are_errors_naming_path_and_key(tmp_path, layout, message):
    root = tmp_path / "data"
    if layout is not None:
        root.mkdir()
        for name in layout:
            (root / name).mkdir()
    with pytest.raises(DataError, match=message) as info:
        build_source(DataConfig(name="imagefolder", root=str(root)), "train")
    assert "data.root" in str(info.value) and str(root) in str(info.value)


def test_test_root_classes_must_be_train_classes(tmp_path):
    root = make_folder(tmp_path / "pets")
    other = tmp_path / "other"
    (other / "cow").mkdir(parents=True)
    write_png(other / "cow" / "0.png", 8, 8)
    with pytest.raises(DataError, match="data.test_root: class folders cow"):
        ImageFolderSource(str(root), "test", test_root=str(other))
    with pytest.raises(DataError, match=f"data.test_root: {tmp_path / 'missing'} does not exist"):
        build_source(DataConfig(name="imagefolder", root=str(root), test_root=str(tmp_path / "missing")), "test")


def test_imagefolder_batches_keep_each_image_aspect_ratio(tmp_path):
    root = make_folder(tmp_path / "pets")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # a clean folder reports nothing
        source = build_source(DataConfig(name="imagefolder", root=str(root), test_fraction=0.25), "train")
    batches = TrainBatches(source, ResolutionConfig(min_side=32, max_side=64), DropConfig(), 8, 512, 128, seed=0)
    batch, labels = batches[0]
    for pick, (rows, cols) in zip(batches.picks(0), batch.grids.tolist()):
        height, width = source.native_size(pick.index)
        assert abs(np.log(cols / rows) - np.log(width / height)) < 0.45   # up to rounding to whole patches
    assert set(labels.tolist()) <= {0, 1} and batch.num_tokens > 0.8 * 512


def write_cifar(root, name, train_counts=(4, 4, 4, 4, 4), test_count=3):
    """The python-pickle layout of CIFAR-10 (or CIFAR-100), with a few images per file."""
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = [(f"data_batch_{i + 1}", n) for i, n in enumerate(train_counts)] + [("test_batch", test_count)]
        meta, names_key, labels_key = "batches.meta", "label_names", "labels"
    else:
        folder = root / "cifar-100-python"
        files = [("train", sum(train_counts)), ("test", test_count)]
        meta, names_key, labels_key = "meta", "fine_label_names", "fine_labels"
    folder.mkdir(parents=True)
    written = {}
    for file, count in files:
        entry = {"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
                 labels_key: rng.integers(0, classes, count).tolist()}
        (folder / file).write_bytes(pickle.dumps(entry))
        written[file] = entry
    (folder / meta).write_bytes(pickle.dumps({names_key: [f"class{i}" for i in range(classes)]}))
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_tiny_local_files(tmp_path, name):
    written = write_cifar(tmp_path, name)
    train = build_source(DataConfig(name=name, root=str(tmp_path)), "train")
    test = build_source(DataConfig(name=name, root=str(tmp_path)), "test")
    assert isinstance(train, CifarSource) and len(train) == 20 and len(test) == 3
    assert train.num_classes == (10 if name == "cifar10" else 100) and train.class_names[3] == "class3"
    first = written["data_batch_1" if name == "cifar10" else "train"]
    labels_key = "labels" if name == "cifar10" else "fine_labels"
    image, label = train.load(2, (32, 32))
    assert label == first[labels_key][2]
    assert torch.equal(image, torch.from_numpy(first["data"][2]).view(3, 32, 32).float() / 255)
    assert train.native_size(0) == (32, 32)
    images, labels = test.load_many([0, 2], (48, 64))
    assert images.shape == (2, 3, 48, 64) and labels.tolist() == [written["test_batch" if name == "cifar10"
                                                                           else "test"][labels_key][i] for i in (0, 2)]


def test_missing_cifar_files_are_errors_naming_path_and_key(tmp_path):
    with pytest.raises(DataError, match="data.root: .*cifar-10-batches-py not found.*data.download: true"):
        build_source(DataConfig(name="cifar10", root=str(tmp_path)), "train")
    with pytest.raises(DataError, match=f"data.root: {tmp_path / 'nowhere'} does not exist"):
        build_source(DataConfig(name="cifar100", root=str(tmp_path / "nowhere")), "test")
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data.root: cannot read .*data_batch_3"):
        build_source(DataConfig(name="cifar10", root=str(tmp_path)), "train")
