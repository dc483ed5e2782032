"""Real images: a folder with one subfolder per class, and CIFAR-10/100 from a local root.

Each image keeps its native size (and so its aspect ratio) as metadata; load() resizes it, with
antialiasing, to the size a resolution policy asks for. Pixel values are floats in [0, 1].
"""
from __future__ import annotations

import hashlib
import math
import pickle
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import DataError
from .source import ImageSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _transforms():
    """torchvision's functional transforms, imported on first use: torchvision takes about two
    seconds to import (it loads torch's compiler stack), which every run on synthetic data, and
    every cell worker, would pay for nothing."""
    from torchvision.transforms.v2 import functional
    return functional


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8 [..., C, h, w] -> float32 [..., C, H, W] in [0, 1]."""
    images = images.float() / 255
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return _transforms().resize(images, list(size), antialias=True)


def _existing_dir(path: str, key: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"{key}: {folder} does not exist")
    if not folder.is_dir():
        raise DataError(f"{key}: {folder} is not a folder")
    return folder


def _class_folders(folder: Path, key: str) -> list[str]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{key}: {folder} has no class subfolders; expected {folder}/<class>/<image>")
    return classes


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


class ImageFolderSource(ImageSource):
    """``root/<class>/<image>``, images at their native size.

    The test split is ``test_root`` (same class folder names) when given; otherwise a held-out
    share of each class of root: its files ordered by a hash of their path relative to root, the
    first ceil(n * test_fraction) (at most n - 1) for test, the rest for train. The split never
    changes between runs and needs no seed. Unreadable files are skipped, counted in
    ``unreadable`` and reported in one warning; a split without any readable image is an error.
    """
    channels = 3

    def __init__(self, root: str, split: str, test_root: str | None = None, test_fraction: float = 0.1):
        root_dir = _existing_dir(root, "data.root")
        self.class_names = _class_folders(root_dir, "data.root")
        self.num_classes = len(self.class_names)
        folder, key = root_dir, "data.root"
        if test_root is not None and split == "test":
            folder, key = _existing_dir(test_root, "data.test_root"), "data.test_root"
            extra = sorted(set(_class_folders(folder, key)) - set(self.class_names))
            if extra:
                raise DataError(f"{key}: class folders {', '.join(extra)} of {folder} are not classes of {root_dir}")

        files: list[tuple[Path, int]] = []
        for label, name in enumerate(self.class_names):
            paths = _image_files(folder / name)
            if test_root is None:
                paths = self._held_out(paths, root_dir, split, test_fraction)
            files += [(path, label) for path in paths]
        if not files:
            raise DataError(f"{key}: no {split} image files under {folder}; expected {folder}/<class>/<image> "
                            f"with one of the extensions {', '.join(IMAGE_EXTENSIONS)}")

        self.paths: list[Path] = []     # in index order, with their labels and native (H, W)
        self.labels: list[int] = []
        self._sizes: list[tuple[int, int]] = []
        self.unreadable: list[Path] = []
        for path, label in files:
            try:
                with Image.open(path) as image:
                    width, height = image.size
                    image.verify()
            except Exception:  # PIL signals a bad file with many exception types
                self.unreadable.append(path)
                continue
            self.paths.append(path)
            self.labels.append(label)
            self._sizes.append((height, width))
        if not self.paths:
            raise DataError(f"{key}: none of the {len(files)} {split} image files under {folder} could be read "
                            f"(e.g. {self.unreadable[0]})")
        if self.unreadable:
            warnings.warn(f"{folder}: skipped {len(self.unreadable)} unreadable of {len(files)} {split} image files "
                          f"(e.g. {self.unreadable[0]})", stacklevel=2)

    @staticmethod
    def _held_out(paths: list[Path], root: Path, split: str, fraction: float) -> list[Path]:
        order = sorted(paths, key=lambda p: hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest())
        num_test = max(0, min(len(order) - 1, math.ceil(len(order) * fraction)))
        return order[:num_test] if split == "test" else order[num_test:]

    def __len__(self) -> int:
        return len(self.paths)

    def native_size(self, index: int) -> tuple[int, int]:
        return self._sizes[index]

    def load(self, index: int, size: tuple[int, int]) -> tuple[Tensor, int]:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                pixels = _transforms().pil_to_tensor(image.convert("RGB"))
        except OSError as error:   # passed verify() but its pixel data is broken
            raise DataError(f"{path}: cannot decode image ({error})") from error
        return _resize(pixels, size), self.labels[index]


_CIFAR = {
    # name: (folder, train files, test files, meta file, class-name key, label key, torchvision dataset)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels", "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels",
                 "CIFAR100"),
}


class CifarSource(ImageSource):
    """CIFAR-10/100 in the python pickle layout under ``root`` (32x32 images).

    torchvision fetches the files when ``download`` is on (checking their md5 sums); we read them
    ourselves, because torchvision refuses any file whose md5 differs from the official release,
    tiny test fixtures included. The files are pickles: only point root at files you trust.
    """
    channels = 3

    def __init__(self, name: str, root: str, split: str, download: bool = False):
        base, train_files, test_files, meta_file, names_key, labels_key, fetcher = _CIFAR[name]
        if download:
            import torchvision   # imported only to download (see _transforms)
            try:
                getattr(torchvision.datasets, fetcher)(root, train=split == "train", download=True)
            except (OSError, RuntimeError) as error:
                raise DataError(f"data.download: fetching {name} into {root} failed: {error}") from error
        folder = _existing_dir(root, "data.root") / base
        if not folder.is_dir():
            raise DataError(f"data.root: {folder} not found: {root} holds no python-version {name} "
                            f"(set data.download: true to fetch it there)")
        self.class_names = [str(n) for n in self._unpickle(folder / meta_file)[names_key]]
        self.num_classes = len(self.class_names)
        pixels, labels = [], []
        for file in train_files if split == "train" else test_files:
            entry = self._unpickle(folder / file)
            pixels.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += [int(label) for label in entry[labels_key]]
        self._pixels = torch.from_numpy(np.concatenate(pixels))
        self._labels = torch.tensor(labels, dtype=torch.long)

    @staticmethod
    def _unpickle(path: Path) -> dict:
        try:
            with open(path, "rb") as file:
                return pickle.load(file, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError) as error:
            raise DataError(f"data.root: cannot read {path} ({error})") from error

    def __len__(self) -> int:
        return len(self._labels)

    def native_size(self, index: int) -> tuple[int, int]:
        return 32, 32

    def load(self, index: int, size: tuple[int, int]) -> tuple[Tensor, int]:
        return _resize(self._pixels[index], size), int(self._labels[index])

    def load_many(self, indices: Sequence[int], size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return _resize(self._pixels[index], size), self._labels[index]
