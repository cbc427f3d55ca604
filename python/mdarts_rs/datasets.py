"""Datasets for search, training and testing: CIFAR-10, CIFAR-100, arrays (``.npz``) and image folders, each
as uint8 images (N, C, S, S), int64 labels, class names, the per-channel mean and std the loader normalises
with, and a description that every run records in ``config.json``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdarts_rs import safe_pickle
from mdarts_rs._core import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MAX_IMAGE_CHANNELS,
    MAX_SIDE,
    DataFormatError,
    load_cifar100_bin,
)

__all__ = [
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_CLASSES",
    "DATASETS",
    "Dataset",
    "channel_stats",
    "from_arrays",
    "as_dataset",
    "holdout_split",
    "load_cifar100",
    "load_dataset",
    "load_npz",
]

#: The ``--dataset`` choices of search, sweep, train and test (``imagenet`` is train's torchvision recipe).
DATASETS = ("cifar10", "cifar100", "arrays", "folder")

#: CIFAR-10's classes, in label order (the dataset's batches.meta).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
#: CIFAR-100's training-set channel means and standard deviations (pixel / 255), as published with the
#: common CIFAR-100 training code (e.g. weiaicunzai/pytorch-cifar100) and computed again from train.bin.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
#: CIFAR-100's fine classes in label order (the archive's fine_label_names).
CIFAR100_FINE_CLASSES = tuple(
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can "
    "castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin "
    "elephant flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster "
    "man maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
    "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk "
    "skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger "
    "tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm".split()
)
#: CIFAR-100's 20 superclasses in label order (the archive's coarse_label_names).
CIFAR100_COARSE_CLASSES = tuple(
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables household_electrical_devices "
    "household_furniture insects large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes "
    "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles small_mammals trees "
    "vehicles_1 vehicles_2".split()
)
assert len(CIFAR100_FINE_CLASSES) == 100 and len(CIFAR100_COARSE_CLASSES) == 20, "CIFAR-100 has 100/20 classes"


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


#: The fields of a description that a resumed run must share with the one it continues (the path and a
#: folder's cache key may change: the images' hash, checked separately, says whether the data did).
SAME_DATA_FIELDS = ("kind", "class_names", "image_size", "channels", "label")


def description_conflicts(saved: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """The fields of ``SAME_DATA_FIELDS`` in which two descriptions differ, as ``field: old -> new`` lines;
    a run saved before descriptions existed counts as CIFAR-10."""
    saved = saved or {"kind": "cifar10", "class_names": list(CIFAR10_CLASSES), "image_size": 32, "channels": 3}
    out = []
    for k in SAME_DATA_FIELDS:
        if saved.get(k) != current.get(k):
            old, new = saved.get(k), current.get(k)
            if k == "class_names" and old and new:
                old, new = f"{len(old)} classes {old[:3]}...", f"{len(new)} classes {new[:3]}..."
            out.append(f"{k}: {old!r} -> {new!r}")
    return out


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
    integers from 0 (ValueError naming ``what`` and the field otherwise). ``mean``/``std`` default to the
    images' own."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind_of = f"dtype {images.dtype}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataFormatError(f"{what}: 'images' is {kind_of}; expected uint8 pixels (N, C, H, W) or (N, H, W, C)")
    if images.ndim == 3:
        raise DataFormatError(
            f"{what}: 'images' has shape {images.shape}; add the channel axis, e.g. images[:, None] for grayscale"
        )
    if images.ndim != 4:
        raise DataFormatError(f"{what}: 'images' has shape {images.shape}; expected (N, C, H, W) or (N, H, W, C)")
    n = images.shape[0]
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
    if n == 0:
        raise DataFormatError(f"{what}: 'images' holds no image")
    images = np.ascontiguousarray(images)
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
    top = int(labels.max())
    if class_names is None:
        class_names = [str(i) for i in range(top + 1)]
    else:
        class_names = [str(c) for c in class_names]
        if top >= len(class_names):
            i = int(np.argmax(labels))
            raise DataFormatError(
                f"{what}: labels[{i}] = {top} has no class name ('class_names' has {len(class_names)} entries)"
            )
        if len(set(class_names)) != len(class_names):
            raise DataFormatError(f"{what}: 'class_names' repeats a name")
    if len(class_names) < 2:
        raise DataFormatError(f"{what}: one class only ({class_names[0]!r}); a classifier needs at least two")
    if mean is None or std is None:
        mean, std = channel_stats(images)
    return Dataset(images, labels.astype(np.int64), list(class_names), tuple(mean), tuple(std), kind, path)


def load_npz(path: str | os.PathLike[str], prefix: str = "") -> Dataset:
    """``images``/``labels`` (or with ``prefix`` "test_", ``test_images``/``test_labels``) and the optional
    ``class_names`` of a ``.npz`` file, checked field by field (no pickled objects are loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found (--dataset arrays reads a .npz with 'images' and 'labels')")
    try:
        with np.load(path, allow_pickle=False) as z:
            fields = set(z.files)
            for key in (f"{prefix}images", f"{prefix}labels"):
                if key not in fields:
                    raise DataFormatError(f"{path}: no {key!r} array (holds {sorted(fields)})")
            images, labels = z[f"{prefix}images"], z[f"{prefix}labels"]
            names = z["class_names"].tolist() if "class_names" in fields else None
    except (OSError, ValueError) as e:
        if isinstance(e, DataFormatError):
            raise
        raise DataFormatError(f"{path}: not a readable .npz of arrays ({type(e).__name__}: {e})") from None
    if names is not None and not all(isinstance(c, str) for c in names):
        raise DataFormatError(f"{path}: 'class_names' must be strings")
    return from_arrays(images, labels, names, kind="arrays", path=str(path), what=f"{path} ({prefix or 'train '}set)")


def _cifar100_python_root(root: Path) -> Path | None:
    for cand in (root, root / "cifar-100-python"):
        if (cand / "train").is_file() or (cand / "test").is_file() or (cand / "meta").is_file():
            return cand
    return None


def _cifar100_python(root: Path, split: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One file of CIFAR-100's python version, checked: b'data' uint8 (N, 3072), both label lists in range."""
    path = root / split
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: file not found (the CIFAR-100 python version holds train, test and meta; download "
            "cifar-100-python.tar.gz or call mdarts_rs.data.download_cifar100(version='python'))"
        )
    d = safe_pickle.load(path, "a CIFAR-100 python file")
    if not isinstance(d, dict) or b"data" not in d:
        raise DataFormatError(f"{path}: not a CIFAR-100 python file (no b'data' field)")
    data = d[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"{path}: field b'data' is {got}; expected uint8 pixels of shape (N, 3072)")
    out = {}
    for key, top, what in ((b"fine_labels", 100, "class (0-99)"), (b"coarse_labels", 20, "superclass (0-19)")):
        raw = d.get(key)
        if raw is None:
            raise DataFormatError(f"{path}: not a CIFAR-100 python file (no {key!r} field)")
        if isinstance(raw, np.ndarray) and raw.ndim == 1:
            raw = raw.tolist()
        if not isinstance(raw, (list, tuple)):
            raise DataFormatError(f"{path}: field {key!r} is a {type(raw).__name__}; expected a list of integers")
        for i, v in enumerate(raw):
            if type(v) is not int:
                raise DataFormatError(f"{path}: record {i}: {key!r} {v!r} is a {type(v).__name__}, not an integer")
            if not 0 <= v < top:
                raise DataFormatError(f"{path}: record {i}: {key!r} {v} is not a CIFAR-100 {what}")
        if len(raw) != data.shape[0]:
            raise DataFormatError(f"{path}: field b'data' has {data.shape[0]} records but {key!r} has {len(raw)}")
        out[key] = np.asarray(raw, dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), out[b"fine_labels" if label == "fine" else b"coarse_labels"]


def _cifar100_names(root: Path, label: str, py_root: Path | None) -> list[str]:
    """The class names the archive in ``root`` holds (binary: ``*_label_names.txt``; python: ``meta``), else the
    published ones."""
    names = CIFAR100_FINE_CLASSES if label == "fine" else CIFAR100_COARSE_CLASSES
    got: list[str] = []
    if py_root is not None and (py_root / "meta").is_file():
        meta = safe_pickle.load(py_root / "meta", "CIFAR-100's meta file")
        raw = meta.get(f"{label}_label_names".encode()) if isinstance(meta, dict) else None
        if isinstance(raw, list) and all(isinstance(n, (bytes, str)) for n in raw):
            got = [n.decode(errors="replace") if isinstance(n, bytes) else n for n in raw]
    else:
        for txt in (root / f"{label}_label_names.txt", root / "cifar-100-binary" / f"{label}_label_names.txt"):
            if txt.is_file():
                got = [ln.strip() for ln in txt.read_text(errors="replace").splitlines() if ln.strip()]
                break
    return got if len(got) == len(names) else list(names)


def load_cifar100(root: str | os.PathLike[str], split: str = "train", label: str = "fine") -> Dataset:
    """CIFAR-100 from the binary version (``cifar-100-binary``: train.bin/test.bin, read in Rust) or the
    python version (``cifar-100-python``: read with the restricted unpickler); ``label`` "fine" gives the 100
    classes, "coarse" the 20 superclasses. Errors name the file and record."""
    if split not in ("train", "test"):
        raise DataFormatError(f"split must be 'train' or 'test', got {split!r}")
    if label not in ("fine", "coarse"):
        raise DataFormatError(f"label must be 'fine' or 'coarse', got {label!r}")
    root = Path(root)
    has_bin = any((d / f).is_file() for d in (root, root / "cifar-100-binary") for f in ("train.bin", "test.bin"))
    py_root = None if has_bin else _cifar100_python_root(root)
    if py_root is not None:
        x, y = _cifar100_python(py_root, split, label)
    else:
        x, y = load_cifar100_bin(root, split, label)
    names = _cifar100_names(root, label, py_root)
    return Dataset(x, y, names, CIFAR100_MEAN, CIFAR100_STD, "cifar100", str(root), {"label": label})


def load_cifar10_dataset(root: str | os.PathLike[str], split: str = "train") -> Dataset:
    """CIFAR-10 (binary or python version) with its classes and published statistics."""
    from mdarts_rs.data import load_cifar10

    x, y = load_cifar10(root, split)
    return Dataset(x, y, list(CIFAR10_CLASSES), tuple(CIFAR10_MEAN), tuple(CIFAR10_STD), "cifar10", str(root))


def as_dataset(images: Dataset | np.ndarray, labels: np.ndarray | None, kind: str = "cifar10") -> Dataset:
    """``images`` itself when it is a Dataset; else in-memory arrays as a dataset: CIFAR-10's (its classes and
    published statistics) for ``kind`` "cifar10", checked arrays with their own statistics otherwise."""
    if isinstance(images, Dataset):
        if kind != images.kind:
            raise ValueError(f"the configuration says dataset {kind!r} but the data is {images.kind!r}")
        return images
    if labels is None:
        raise ValueError("labels are needed with an images array")
    if kind == "cifar10":
        if images.shape[1:] != (3, 32, 32):
            raise DataFormatError(f"CIFAR-10 images have shape (N, 3, 32, 32), got {images.shape}")
        return Dataset(
            images,
            np.asarray(labels, dtype=np.int64),
            list(CIFAR10_CLASSES),
            tuple(CIFAR10_MEAN),
            tuple(CIFAR10_STD),
            "cifar10",
        )
    return from_arrays(images, labels, kind=kind)


def holdout_split(n: int, seed: int, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``n`` images into training and test indices (each sorted), the test part
    ``round(fraction·n)`` images (at least one), for data without its own test set."""
    if n < 2:
        raise DataFormatError(f"{n} image(s) cannot be split into a training and a test set")
    k = min(n - 1, max(1, round(fraction * n)))
    perm = np.random.default_rng([seed, 0x7E57]).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def load_dataset(
    kind: str,
    path: str | os.PathLike[str] | None,
    split: str = "train",
    *,
    label: str = "fine",
    image_size: int | None = None,
    skip_bad_images: bool = False,
    workers: int | None = None,
    quiet: bool = True,
) -> Dataset:
    """The ``split`` ("train" or "test") of a dataset: ``kind`` one of ``DATASETS``.

    For a folder, "train" is ``DIR/train`` where ``DIR/train`` and ``DIR/val`` exist, else every image; "test"
    is ``DIR/val`` (a folder without one has no test set: use ``holdout_split``). An arrays file's test set is
    its ``test_images``/``test_labels``."""
    if kind not in DATASETS:
        raise DataFormatError(f"dataset must be one of {', '.join(DATASETS)}, got {kind!r}")
    if path is None:
        raise DataFormatError(f"--dataset {kind} needs --data")
    if kind == "cifar10":
        return load_cifar10_dataset(path, split)
    if kind == "cifar100":
        return load_cifar100(path, split, label)
    if kind == "arrays":
        return load_npz(path, "" if split == "train" else "test_")
    from mdarts_rs.folder import load_folder

    return load_folder(path, split, image_size or 32, skip_bad_images=skip_bad_images, workers=workers, quiet=quiet)


def has_test_set(kind: str, path: str | os.PathLike[str]) -> bool:
    """Whether the dataset brings its own test set (else training holds out a seeded part of it)."""
    if kind in ("cifar10", "cifar100"):
        return True
    if kind == "arrays":
        try:
            with np.load(path, allow_pickle=False) as z:
                return "test_images" in z.files and "test_labels" in z.files
        except (OSError, ValueError):
            return False
    p = Path(path)
    return (p / "train").is_dir() and (p / "val").is_dir()
