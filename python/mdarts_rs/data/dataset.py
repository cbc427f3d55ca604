"""The one ``Dataset`` type (uint8 images, int64 labels, classes, channel statistics) and its checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mdarts_rs._core import MAX_IMAGE_CHANNELS, MAX_SIDE, DataFormatError

__all__ = [
    "MAX_CLASSES",
    "SPLITS",
    "Dataset",
    "channel_stats",
    "check_split",
    "class_labels",
    "from_arrays",
    "holdout_split",
]

#: The splits every source reads: its training images and its test images.
SPLITS = ("train", "test")
#: Most classes of a dataset (ImageNet-21k has 21,841): each class is a row of the classifier, so a stray huge
#: label must be refused, not make a network of a million outputs.
MAX_CLASSES = 100_000


@dataclass
class Dataset:
    """Images and what a network needs to know about them.

    ``images`` uint8 (N, C, S, S); ``labels`` int64 in ``0..len(class_names)``; ``mean``/``std`` one value per
    channel (pixel / 255), those of the training images; ``info`` the rest of the description (the label kind of
    CIFAR-100, a folder's cache key, ...).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str
    path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert self.images.dtype == np.uint8 and self.images.ndim == 4, "images are uint8 (N, C, S, S)"
        assert self.images.shape[2] == self.images.shape[3], "images are square"
        assert len(self.mean) == len(self.std) == self.images.shape[1], "one mean and std per channel"

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[2])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> dict[str, Any]:
        """What a run records about its data (``config.json``'s ``dataset``, the checkpoints)."""
        return {
            "kind": self.kind,
            "path": self.path,
            "images": len(self.labels),
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "channels": self.channels,
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
            **self.info,
        }

    def subset(self, indices: np.ndarray) -> Dataset:
        """The images at ``indices`` (a copy), with this dataset's classes and statistics."""
        return Dataset(
            self.images[indices],
            self.labels[indices],
            self.class_names,
            self.mean,
            self.std,
            self.kind,
            self.path,
            dict(self.info),
        )


def check_split(split: str) -> None:
    """DataFormatError unless ``split`` is one of ``SPLITS``."""
    if split not in SPLITS:
        raise DataFormatError(f"split must be 'train' or 'test', got {split!r}")


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 images (N, C, S, S), as pixel / 255, rounded to 4
    digits. Exact: from a histogram of each channel's bytes, a chunk of images at a time (a memory-mapped cache
    is not read into memory at once)."""
    n, c = images.shape[:2]
    if n == 0:
        raise DataFormatError("no images to compute the channel mean and std from")
    hist = np.zeros((c, 256), dtype=np.int64)
    for i in range(0, n, chunk):
        x = np.asarray(images[i : i + chunk])
        for ch in range(c):
            hist[ch] += np.bincount(x[:, ch].ravel(), minlength=256)
    v = np.arange(256, dtype=np.float64)
    count = hist.sum(axis=1)
    mean = hist @ v / count
    std = np.sqrt(np.maximum(hist @ (v * v) / count - mean**2, 0.0))
    # A constant channel has std 0, which normalisation cannot divide by: 1/255 keeps its values finite.
    std = np.maximum(std, 1.0)
    return tuple(float(round(m / 255, 4)) for m in mean), tuple(float(round(s / 255, 4)) for s in std)


def _square_images(images: np.ndarray, what: str) -> np.ndarray:
    """``images`` as contiguous uint8 (N, C, S, S), from (N, C, S, S) or channels-last (N, S, S, C)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind_of = (
            f"dtype {images.dtype}" if isinstance(images, np.ndarray) else f"a {type(images).__name__}, not an array"
        )
        raise DataFormatError(f"{what}: 'images' is {kind_of}; expected uint8 pixels (N, C, H, W) or (N, H, W, C)")
    if images.ndim == 3:
        raise DataFormatError(
            f"{what}: 'images' has shape {images.shape}; add the channel axis, e.g. images[:, None] for grayscale"
        )
    if images.ndim != 4:
        raise DataFormatError(f"{what}: 'images' has shape {images.shape}; expected (N, C, H, W) or (N, H, W, C)")
    if images.shape[2] == images.shape[3] and images.shape[1] <= MAX_IMAGE_CHANNELS:
        pass  # (N, C, S, S)
    elif images.shape[1] == images.shape[2] and images.shape[3] <= MAX_IMAGE_CHANNELS:
        images = images.transpose(0, 3, 1, 2)  # (N, S, S, C) -> (N, C, S, S)
    else:
        raise DataFormatError(
            f"{what}: 'images' has shape {images.shape}; expected square images (N, C, S, S) or (N, S, S, C) with "
            f"at most {MAX_IMAGE_CHANNELS} channels (resize or crop them to a square first)"
        )
    if not 1 <= images.shape[2] <= MAX_SIDE:
        raise DataFormatError(f"{what}: images of {images.shape[2]} pixels; sides of 1 to {MAX_SIDE} are supported")
    if images.shape[0] == 0:
        raise DataFormatError(f"{what}: 'images' holds no image")
    return np.ascontiguousarray(images)


def class_labels(
    labels: np.ndarray, n: int, class_names: Sequence[str] | None, what: str
) -> tuple[np.ndarray, list[str]]:
    """``labels`` checked as ``n`` integer class indices from 0, and the class names. Without ``class_names`` the
    labels must be 0..K-1 with every class present (names ``"0"``, ``"1"``, ...): a stray large label is refused
    rather than read as classes without images. At most ``MAX_CLASSES`` classes."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise DataFormatError(
            f"{what}: 'labels' is {labels.dtype} of shape {labels.shape}; expected {n} integers (one per image)"
        )
    if len(labels) != n:
        raise DataFormatError(f"{what}: 'labels' has {len(labels)} entries for {n} images")
    if labels.min() < 0:
        i = int(np.argmin(labels))
        raise DataFormatError(f"{what}: labels[{i}] = {labels[i]} is negative; labels are class indices from 0")
    top, i = int(labels.max()), int(np.argmax(labels))
    if class_names is None:
        if top >= MAX_CLASSES:
            raise DataFormatError(
                f"{what}: labels[{i}] = {top} is above the limit of {MAX_CLASSES} classes (MAX_CLASSES); labels are "
                "class indices from 0"
            )
        present = np.unique(labels)
        if len(present) != top + 1:
            missing = np.setdiff1d(np.arange(top + 1), present)
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise DataFormatError(
                f"{what}: labels[{i}] = {top} makes {top + 1} classes, but {len(missing)} of them have no image "
                f"(labels {shown}); without 'class_names' the labels must be 0..K-1 with every class present: "
                "fix the labels, or give 'class_names' (one name per class)"
            )
        names = [str(c) for c in range(top + 1)]
    else:
        names = [str(c) for c in class_names]
        if len(names) > MAX_CLASSES:
            raise DataFormatError(
                f"{what}: 'class_names' has {len(names)} entries, above the limit of {MAX_CLASSES} (MAX_CLASSES)"
            )
        if top >= len(names):
            raise DataFormatError(
                f"{what}: labels[{i}] = {top} has no class name ('class_names' has {len(names)} entries)"
            )
        if len(set(names)) != len(names):
            raise DataFormatError(f"{what}: 'class_names' repeats a name")
    if len(names) < 2:
        raise DataFormatError(f"{what}: one class only ({names[0]!r}); a classifier needs at least two")
    return labels, names


def from_arrays(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    kind: str = "arrays",
    path: str | None = None,
    what: str = "images",
) -> Dataset:
    """A dataset of in-memory arrays, checked: ``images`` uint8 (N, C, S, S) or (N, S, S, C) (C at most
    ``MAX_IMAGE_CHANNELS``, taken as channels-last when the last axis is the small one), ``labels`` N
    integers from 0, every class 0..K-1 present unless ``class_names`` names them (``class_labels``; ValueError
    naming ``what`` and the field otherwise). ``mean``/``std`` default to the images' own."""
    images = _square_images(images, what)
    labels, names = class_labels(labels, images.shape[0], class_names, what)
    if mean is None or std is None:
        mean, std = channel_stats(images)
    return Dataset(images, labels.astype(np.int64), names, tuple(mean), tuple(std), kind, path)


def holdout_split(n: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``n`` images into training and test indices (each sorted), the test part
    ``round(fraction·n)`` images (at least one), for data without its own test set."""
    if n < 2:
        raise DataFormatError(f"{n} image(s) cannot be split into a training and a test set")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng([seed, 0x7E57]).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])
