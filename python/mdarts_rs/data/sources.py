"""The dataset kinds by name: loading one (``load_dataset``), its test set, and the descriptions runs record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from mdarts_rs._core import CIFAR10_MEAN, CIFAR10_STD, DataFormatError
from mdarts_rs.config import DATASETS
from mdarts_rs.data.arrays import load_npz, npz_has_test_set
from mdarts_rs.data.cache import default_cache_dir
from mdarts_rs.data.cifar import (
    CIFAR10_CLASSES,
    download_cifar10,
    download_cifar100,
    load_cifar10_dataset,
    load_cifar100,
)
from mdarts_rs.data.dataset import Dataset, class_labels, from_arrays
from mdarts_rs.data.folder import has_split_dirs, load_folder

__all__ = [
    "DATASETS",
    "SAME_DATA_FIELDS",
    "DataLocationError",
    "as_dataset",
    "description_conflicts",
    "has_test_set",
    "load_dataset",
    "load_split",
    "resolve_data",
]

#: The ``--dataset`` choices of search, sweep, train and test (``imagenet`` is train's torchvision recipe).
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
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != (3, 32, 32):
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else f"a {type(images).__name__}"
            raise DataFormatError(
                f"CIFAR-10 images have shape (N, 3, 32, 32), got {got}: pass a numpy uint8 array of that shape "
                "(or a Dataset)"
            )
        checked, _ = class_labels(labels, len(images), CIFAR10_CLASSES, "CIFAR-10 arrays")
        return Dataset(
            images,
            checked.astype(np.int64),
            list(CIFAR10_CLASSES),
            tuple(CIFAR10_MEAN),
            tuple(CIFAR10_STD),
            "cifar10",
        )
    return from_arrays(images, labels, kind=kind)


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
    return load_folder(path, split, image_size or 32, skip_bad_images=skip_bad_images, workers=workers, quiet=quiet)


def load_split(settings: Any, split: str = "train", quiet: bool = True) -> Dataset:
    """The ``split`` of a run's dataset, as its settings (a SearchConfig, TrainConfig or ProtocolConfig: data,
    dataset, label, image_size, skip_bad_images, workers) describe it."""
    return load_dataset(
        settings.dataset,
        settings.data,
        split,
        label=settings.label,
        image_size=settings.image_size,
        skip_bad_images=settings.skip_bad_images,
        workers=settings.workers,
        quiet=quiet,
    )


def has_test_set(kind: str, path: str | os.PathLike[str]) -> bool:
    """Whether the dataset brings its own test set (else training holds out a seeded part of it)."""
    if kind in ("cifar10", "cifar100"):
        return True
    if kind == "arrays":
        return npz_has_test_set(path)
    return has_split_dirs(path)


class DataLocationError(ValueError):
    """No data where a run looks for it (no ``--data``, no ``$MDARTS_DATA``, nothing in the download cache)."""


def resolve_data(data: Path | None, download: bool, dataset: str = "cifar10") -> Path:
    """The data folder of a run: ``data`` where given; for CIFAR, else ``$MDARTS_DATA``, else the download cache,
    else (``download``) the official archive, checked. DataLocationError where none can be found."""
    if data is not None:
        return data
    if dataset in ("arrays", "folder", "imagenet"):
        what = {"arrays": "a .npz file", "folder": "an image folder", "imagenet": "an ImageFolder"}[dataset]
        raise DataLocationError(f"--dataset {dataset} needs --data ({what})")
    if os.environ.get("MDARTS_DATA"):
        return Path(os.environ["MDARTS_DATA"])
    cifar100 = dataset == "cifar100"
    cached = default_cache_dir() / ("cifar-100-binary" if cifar100 else "cifar-10-batches-bin")
    if cached.is_dir():
        return cached
    if download:
        return download_cifar100() if cifar100 else download_cifar10()
    name = "CIFAR-100" if cifar100 else "CIFAR-10"
    raise DataLocationError(
        f"no {name} folder: pass --data DIR (binary or python version), set MDARTS_DATA, or add --download"
    )
