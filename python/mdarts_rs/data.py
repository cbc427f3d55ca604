"""CIFAR-10 for search and training: reading (binary or python version), the search split, an opt-in
checked download, and a loader that hands Rust-made batches to torch without copying them."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mdarts_rs import safe_pickle
from mdarts_rs._core import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    BatchLoader,
    DataFormatError,
    augment_images,
    load_cifar10_bin,
    search_split,
)

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "BatchLoader",
    "CifarLoader",
    "augment_images",
    "crop_padding_for",
    "DataLocationError",
    "resolve_data",
    "default_cache_dir",
    "download_cifar10",
    "download_cifar100",
    "load_cifar10",
    "search_split",
]

#: The official archives and their published MD5 checksums.
ARCHIVES = {
    "binary": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        "c32a1d4ab5d03f1284b67883e8d87530",
        "cifar-10-batches-bin",
    ),
    "python": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
    ),
}
#: CIFAR-100's official archives and their published MD5 checksums.
ARCHIVES_100 = {
    "binary": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        "03b5dce01913d631647c71ecec9e9cb8",
        "cifar-100-binary",
    ),
    "python": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
    ),
}
_PY_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]


def crop_padding_for(side: int) -> int:
    """DARTS' 4 pixels of crop padding at 32 pixels, scaled with the image side (8 at 64, 28 at 224)."""
    return max(1, round(4 * side / 32))


def default_cache_dir() -> Path:
    """``$MDARTS_CACHE``, else ``~/.cache/mdarts_rs``."""
    return Path(os.environ.get("MDARTS_CACHE", Path.home() / ".cache" / "mdarts_rs"))


_PY_FILES = (*_PY_TRAIN, "test_batch", "batches.meta")
_PY_HINT = (
    "download the CIFAR-10 python version (cifar-10-python.tar.gz) and point to its cifar-10-batches-py "
    "folder, or call mdarts_rs.data.download_cifar10(version='python')"
)


def _python_version_root(root: Path) -> Path | None:
    # Any file of the python version marks its folder, so that a partial one (batches.meta alone, or a gap in
    # the training batches) is reported as the python version it is, not as a missing binary version.
    for cand in (root, root / "cifar-10-batches-py"):
        if any((cand / f).is_file() for f in _PY_FILES):
            return cand
    return None


def _python_train_files(root: Path) -> list[Path]:
    """data_batch_1 onward up to the first missing one; like the binary reader, a gap is an error."""
    present = [(root / n).is_file() for n in _PY_TRAIN]
    count = next((i for i, p in enumerate(present) if not p), len(present))
    if count == 0:
        found = ", ".join(f for f in _PY_FILES if (root / f).is_file())
        raise FileNotFoundError(
            f"{root / _PY_TRAIN[0]}: file not found (found {found} of CIFAR-10's python version but no "
            f"data_batch_1..5; {_PY_HINT})"
        )
    if True in present[count:]:
        later = _PY_TRAIN[present.index(True, count)]
        raise DataFormatError(
            f"{root / later}: {_PY_TRAIN[count]} is missing but this later batch is present; the training "
            "files must be data_batch_1 onward without gaps"
        )
    return [root / n for n in _PY_TRAIN[:count]]


def _python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch, checked: b'data' a uint8 array (N, 3072), b'labels' N integers in 0..9."""
    d = safe_pickle.load(path, "a CIFAR-10 python batch")
    if not isinstance(d, dict):
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch (holds a {type(d).__name__}, not a dict)")
    if b"data" not in d:
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch (no b'data' field; has {sorted(map(repr, d))})")
    data = d[b"data"]
    # No conversion: a float or int64 "pixel" array would be cast (and wrapped) silently into other images.
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = f"an array of dtype {data.dtype}" if isinstance(data, np.ndarray) else f"a {type(data).__name__}"
        raise DataFormatError(f"{path}: field b'data' is {kind}; expected uint8 pixels of shape (N, 3072)")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataFormatError(f"{path}: field b'data' has shape {data.shape}; expected (N, 3072)")
    key = b"labels" if b"labels" in d else b"fine_labels"
    if key not in d:
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch (no b'labels' field)")
    raw = d[key]
    if isinstance(raw, np.ndarray) and raw.ndim == 1:
        raw = raw.tolist()  # Python numbers, checked below like the archives' list
    if not isinstance(raw, (list, tuple)):
        raise DataFormatError(f"{path}: field {key!r} is a {type(raw).__name__}; expected a list of integers")
    for i, v in enumerate(raw):
        # bool is an int subclass, and int(2.0) == 2: neither is a class label as written.
        if type(v) is not int:
            raise DataFormatError(f"{path}: record {i}: label {v!r} in {key!r} is a {type(v).__name__}, not an integer")
        if not 0 <= v <= 9:
            raise DataFormatError(f"{path}: record {i}: label {v} is not a CIFAR-10 class (0-9)")
    if len(raw) != data.shape[0]:
        raise DataFormatError(f"{path}: field b'data' has {data.shape[0]} records but {key!r} has {len(raw)} labels")
    return data.reshape(-1, 3, 32, 32), np.asarray(raw, dtype=np.int64)


def _load_python_version(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The pickled "python version": dicts with b'data' (N, 3072) uint8 and b'labels'."""
    if split == "test":
        if not (root / "test_batch").is_file():
            raise FileNotFoundError(f"{root / 'test_batch'}: file not found ({_PY_HINT})")
        return _python_batch(root / "test_batch")
    xs, ys = zip(*(_python_batch(p) for p in _python_train_files(root)))
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar10(root: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 as ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    ``root`` is the binary version's folder (``cifar-10-batches-bin``) or the python version's
    (``cifar-10-batches-py``), or a folder holding either. The binary version is read by the Rust reader,
    which checks every record; errors name the file and record.
    """
    if split not in ("train", "test"):
        raise DataFormatError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    has_bin = any(
        (d / f).is_file() for d in (root, root / "cifar-10-batches-bin") for f in ("data_batch_1.bin", "test_batch.bin")
    )
    if not has_bin:
        py_root = _python_version_root(root)
        if py_root is not None:
            return _load_python_version(py_root, split)
    return load_cifar10_bin(root, split)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_cifar10(cache_dir: str | os.PathLike[str] | None = None, version: str = "binary") -> Path:
    """Download and unpack the official CIFAR-10 archive into ``cache_dir``, checked against its published
    MD5; returns the data folder. An archive already in the cache is checked and reused.

    Offline, this fails with a message saying where to put the files instead.
    """
    if version not in ARCHIVES:
        raise DataFormatError(f"version must be one of {sorted(ARCHIVES)}, got {version!r}")
    return _download(*ARCHIVES[version], cache_dir)


def download_cifar100(cache_dir: str | os.PathLike[str] | None = None, version: str = "binary") -> Path:
    """Download and unpack the official CIFAR-100 archive (binary or python version) into ``cache_dir``,
    checked against its published MD5; returns the data folder. An archive already in the cache is checked
    and reused."""
    if version not in ARCHIVES_100:
        raise DataFormatError(f"version must be one of {sorted(ARCHIVES_100)}, got {version!r}")
    return _download(*ARCHIVES_100[version], cache_dir)


def _download(url: str, md5: str, folder: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / folder
    if target.is_dir() and any(target.iterdir()):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / url.rsplit("/", 1)[1]
    if not archive.exists():
        tmp = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise ConnectionError(
                f"could not download {url} ({e}). Download it elsewhere and unpack it so that {target} holds "
                f"the {folder} files, or pass --data to the folder where you keep them."
            ) from None
        os.replace(tmp, archive)
    got = _md5(archive)
    if got != md5:
        raise DataFormatError(f"{archive}: MD5 {got} does not match the published {md5}; delete it and retry")
    with tempfile.TemporaryDirectory(dir=cache) as tmpdir, tarfile.open(archive, "r:gz") as tar:
        for m in tar.getmembers():
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in Path(m.name).parts:
                raise DataFormatError(f"{archive}: unexpected member {m.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmpdir, filter="data")
        else:  # members checked above
            tar.extractall(tmpdir)
        os.replace(Path(tmpdir) / folder, target)
    return target


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


class CifarLoader:
    """Augmented batches of square images (N, C, S, S) as torch tensors, made in Rust worker threads;
    CIFAR-10 by default (its mean and std, 4 pixels of crop padding).

    Each epoch reshuffles (seeded by ``(seed, epoch)``) and augments every image with randomness keyed by
    ``(seed, epoch, batch, position)``, so a run is reproducible whatever the number of workers. Batches
    reach torch through ``torch.from_numpy`` on arrays Rust owns, without a copy. With ``normalize=False``
    the batches stay uint8 until they reach ``device``, where they are normalised (less to move to a GPU).
    ``pin_memory`` copies each batch into page-locked memory for an asynchronous host-to-device copy.
    ``mean``/``std`` (pixel / 255, one per channel) default to CIFAR-10's; ``crop_padding`` defaults to 4
    pixels at 32 and scales with the image side; ``num_classes`` checks every label.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray | None = None,
        *,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = True,
        augment: bool = True,
        cutout: int = 0,
        normalize: bool = True,
        channels_last: bool = False,
        seed: int = 0,
        workers: int | None = None,
        prefetch: int = 2,
        device: str | torch.device = "cpu",
        pin_memory: bool = False,
        mean: tuple[float, ...] | list[float] | None = None,
        std: tuple[float, ...] | list[float] | None = None,
        num_classes: int = 10,
        crop_padding: int | None = None,
    ) -> None:
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        if crop_padding is None:
            crop_padding = crop_padding_for(images.shape[-1])
        if mean is None and std is None:
            mean, std = CIFAR10_MEAN, CIFAR10_STD
        self._loader = BatchLoader(
            np.ascontiguousarray(images, dtype=np.uint8),
            np.ascontiguousarray(labels, dtype=np.int64),
            None if indices is None else np.ascontiguousarray(indices, dtype=np.int64),
            batch_size=batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            crop_padding=crop_padding if augment else 0,
            flip=augment,
            cutout=cutout,
            normalize=normalize,
            channels_last=channels_last,
            seed=seed,
            workers=workers,
            prefetch=prefetch,
            mean=list(mean),  # type: ignore[arg-type]
            std=list(std),  # type: ignore[arg-type]
            num_classes=num_classes,
        )
        self.normalize = normalize
        self.channels_last = channels_last
        self.device = torch.device(device)
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.epoch = 0
        c = images.shape[1]
        mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, c, 1, 1)  # type: ignore[arg-type]
        std_t = torch.tensor(list(std), dtype=torch.float32).view(1, c, 1, 1)  # type: ignore[arg-type]
        self._mean, self._std = mean_t.to(self.device), std_t.to(self.device)

    def __len__(self) -> int:
        return len(self._loader)

    @property
    def num_images(self) -> int:
        return self._loader.num_images

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` next (for resuming a run)."""
        self.epoch = epoch

    def _to_torch(self, x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        if self.channels_last:
            xt = xt.permute(0, 3, 1, 2)  # (N, H, W, C) memory seen as (N, C, H, W), channels-last strides
        if self.pin_memory:
            xt, yt = xt.pin_memory(), yt.pin_memory()
        if self.device.type != "cpu":
            xt = xt.to(self.device, non_blocking=True)
            yt = yt.to(self.device, non_blocking=True)
        if not self.normalize and self.device.type != "cpu":
            xt = (xt.float().div_(255.0) - self._mean) / self._std
        return xt, yt

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``start`` on (to resume inside an epoch)."""
        for x, y in self._loader.epoch(epoch, start):
            yield self._to_torch(x, y)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self.batches(epoch)
