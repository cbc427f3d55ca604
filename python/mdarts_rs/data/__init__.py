"""Data for search, training and testing: CIFAR-10/100, arrays and image folders as one Dataset, and the loader."""

# Layers, each module importing only from those before it: ``cache``, ``dataset`` and ``loader``; the sources
# ``cifar``, ``arrays`` and ``folder``; ``sources`` (the kinds by name, where a run's data is); this file.

from __future__ import annotations

from mdarts_rs._core import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    MAX_IMAGE_CHANNELS,
    MAX_IMAGES,
    MAX_SIDE,
    BatchLoader,
    DataFormatError,
    augment_images,
    decode_images,
    load_cifar10_bin,
    load_cifar100_bin,
    search_split,
)
from mdarts_rs.data.arrays import load_npz, npz_has_test_set
from mdarts_rs.data.cache import default_cache_dir
from mdarts_rs.data.cifar import (
    ARCHIVES,
    ARCHIVES_100,
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    CIFAR100_MEAN,
    CIFAR100_STD,
    download_cifar10,
    download_cifar100,
    load_cifar10,
    load_cifar10_dataset,
    load_cifar100,
)
from mdarts_rs.data.dataset import SPLITS, Dataset, channel_stats, check_split, from_arrays, holdout_split
from mdarts_rs.data.folder import (
    CACHE_FORMAT,
    RESIZE,
    SkippedImagesWarning,
    cache_key,
    has_split_dirs,
    load_folder,
    scan_folder,
)
from mdarts_rs.data.loader import CifarLoader, crop_padding_for
from mdarts_rs.data.sources import (
    DATASETS,
    SAME_DATA_FIELDS,
    DataLocationError,
    as_dataset,
    description_conflicts,
    has_test_set,
    load_dataset,
    resolve_data,
)

__all__ = [
    "ARCHIVES",
    "ARCHIVES_100",
    "CACHE_FORMAT",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "MAX_IMAGE_CHANNELS",
    "MAX_IMAGES",
    "MAX_SIDE",
    "RESIZE",
    "SAME_DATA_FIELDS",
    "SPLITS",
    "BatchLoader",
    "CifarLoader",
    "DataFormatError",
    "DataLocationError",
    "Dataset",
    "SkippedImagesWarning",
    "as_dataset",
    "augment_images",
    "cache_key",
    "channel_stats",
    "check_split",
    "crop_padding_for",
    "decode_images",
    "default_cache_dir",
    "description_conflicts",
    "download_cifar10",
    "download_cifar100",
    "from_arrays",
    "has_split_dirs",
    "has_test_set",
    "holdout_split",
    "load_cifar10",
    "load_cifar10_bin",
    "load_cifar100",
    "load_cifar100_bin",
    "load_cifar10_dataset",
    "load_dataset",
    "load_folder",
    "load_npz",
    "resolve_data",
    "npz_has_test_set",
    "scan_folder",
    "search_split",
]
