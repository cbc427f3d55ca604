"""CIFAR-10 and CIFAR-100: the binary version (the Rust reader), the python version and checked downloads."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from mdarts_rs import safe_pickle
from mdarts_rs._core import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataFormatError,
    load_cifar10_bin,
    load_cifar100_bin,
)
from mdarts_rs.data.cache import default_cache_dir
from mdarts_rs.data.dataset import Dataset, check_split

__all__ = [
    "ARCHIVES",
    "ARCHIVES_100",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "CIFAR10_CLASSES",
    "download_cifar10",
    "download_cifar100",
    "load_cifar10",
    "load_cifar100",
    "load_cifar10_dataset",
]

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

#: CIFAR-10's official archives and their published MD5 checksums.
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

# ---- both: finding a version, checking a python-version file --------------------------------------------


def _is_entry(path: Path) -> bool:
    """Whether ``path`` is there and not a folder: a regular file, or a FIFO or device that the reader then refuses
    naming it (rather than skipping it as missing)."""
    return path.exists() and not path.is_dir()


def _folder_with(root: Path, sub: str, names: Iterable[str]) -> Path | None:
    """``root`` or else ``root/sub``, the first that holds a file of ``names``; None where neither does."""
    for cand in (root, root / sub):
        if any(_is_entry(cand / f) for f in names):
            return cand
    return None


def _python_pixels(path: Path, data: Any, *, joint: bool = False) -> np.ndarray:
    """A python-version file's b'data', checked as uint8 (N, 3072), as images (N, 3, 32, 32).

    CIFAR-10's messages say whether the dtype or the shape is wrong; with ``joint`` (CIFAR-100's) one message
    gives both."""
    expected = "expected uint8 pixels of shape (N, 3072)"
    is_array = isinstance(data, np.ndarray)
    # No conversion: a float or int64 "pixel" array would be cast (and wrapped) silently into other images.
    if is_array and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072:
        return data.reshape(-1, 3, 32, 32)
    if joint:
        got = f"{data.dtype} {data.shape}" if is_array else type(data).__name__
        raise DataFormatError(f"{path}: field b'data' is {got}; {expected}")
    if not is_array or data.dtype != np.uint8:
        kind = f"an array of dtype {data.dtype}" if is_array else f"a {type(data).__name__}"
        raise DataFormatError(f"{path}: field b'data' is {kind}; {expected}")
    raise DataFormatError(f"{path}: field b'data' has shape {data.shape}; expected (N, 3072)")


def _python_labels(
    path: Path, key: bytes, raw: Any, records: int, num_classes: int, what: str, *, by_key: bool = False
) -> np.ndarray:
    """The label list ``raw`` of field ``key`` (a list, a tuple or a 1-D array), checked as ``records``
    integers in 0..num_classes-1 (``what`` names one, e.g. "CIFAR-10 class").

    Messages call a value "label" and name ``key`` where it is not an integer; with ``by_key`` (CIFAR-100's
    files hold two label lists) they call it by its field."""
    if isinstance(raw, np.ndarray) and raw.ndim == 1:
        raw = raw.tolist()  # Python numbers, checked below like the archives' list
    if not isinstance(raw, (list, tuple)):
        raise DataFormatError(f"{path}: field {key!r} is a {type(raw).__name__}; expected a list of integers")
    name, where, unit = (repr(key), "", "") if by_key else ("label", f" in {key!r}", " labels")
    for i, v in enumerate(raw):
        # bool is an int subclass, and int(2.0) == 2: neither is a class label as written.
        if type(v) is not int:
            raise DataFormatError(f"{path}: record {i}: {name} {v!r}{where} is a {type(v).__name__}, not an integer")
        if not 0 <= v < num_classes:
            raise DataFormatError(f"{path}: record {i}: {name} {v} is not a {what} (0-{num_classes - 1})")
    if len(raw) != records:
        raise DataFormatError(f"{path}: field b'data' has {records} records but {key!r} has {len(raw)}{unit}")
    return np.asarray(raw, dtype=np.int64)


# ---- CIFAR-10 ---------------------------------------------------------------------------------------------

_PY_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_PY_FILES = (*_PY_TRAIN, "test_batch", "batches.meta")
_PY_HINT = (
    "download the CIFAR-10 python version (cifar-10-python.tar.gz) and point to its cifar-10-batches-py "
    "folder, or call mdarts_rs.data.download_cifar10(version='python')"
)


def _python_train_files(root: Path) -> list[Path]:
    """data_batch_1 onward up to the first missing one; like the binary reader, a gap is an error."""
    present = [_is_entry(root / n) for n in _PY_TRAIN]
    count = next((i for i, p in enumerate(present) if not p), len(present))
    if count == 0:
        found = ", ".join(f for f in _PY_FILES if _is_entry(root / f))
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
    images = _python_pixels(path, d[b"data"])
    key = b"labels" if b"labels" in d else b"fine_labels"
    if key not in d:
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch (no b'labels' field)")
    return images, _python_labels(path, key, d[key], len(images), 10, "CIFAR-10 class")


def _load_python_version(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The pickled "python version": dicts with b'data' (N, 3072) uint8 and b'labels'."""
    if split == "test":
        if not _is_entry(root / "test_batch"):
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
    check_split(split)
    root = Path(root)
    if _folder_with(root, "cifar-10-batches-bin", ("data_batch_1.bin", "test_batch.bin")) is None:
        # Any file of the python version marks its folder, so that a partial one (batches.meta alone, or a gap
        # in the training batches) is reported as the python version it is, not as a missing binary version.
        py_root = _folder_with(root, "cifar-10-batches-py", _PY_FILES)
        if py_root is not None:
            return _load_python_version(py_root, split)
    return load_cifar10_bin(root, split)


def load_cifar10_dataset(root: str | os.PathLike[str], split: str = "train") -> Dataset:
    """CIFAR-10 (binary or python version) with its classes and published statistics."""
    x, y = load_cifar10(root, split)
    return Dataset(x, y, list(CIFAR10_CLASSES), tuple(CIFAR10_MEAN), tuple(CIFAR10_STD), "cifar10", str(root))


# ---- CIFAR-100 --------------------------------------------------------------------------------------------


def _cifar100_python(root: Path, split: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    """One file of CIFAR-100's python version, checked: b'data' uint8 (N, 3072), both label lists in range."""
    path = root / split
    if not _is_entry(path):
        raise FileNotFoundError(
            f"{path}: file not found (the CIFAR-100 python version holds train, test and meta; download "
            "cifar-100-python.tar.gz or call mdarts_rs.data.download_cifar100(version='python'))"
        )
    d = safe_pickle.load(path, "a CIFAR-100 python file")
    if not isinstance(d, dict) or b"data" not in d:
        raise DataFormatError(f"{path}: not a CIFAR-100 python file (no b'data' field)")
    images = _python_pixels(path, d[b"data"], joint=True)
    out = {}
    for key, top, what in ((b"fine_labels", 100, "CIFAR-100 class"), (b"coarse_labels", 20, "CIFAR-100 superclass")):
        raw = d.get(key)
        if raw is None:
            raise DataFormatError(f"{path}: not a CIFAR-100 python file (no {key!r} field)")
        out[key] = _python_labels(path, key, raw, len(images), top, what, by_key=True)
    return images, out[b"fine_labels" if label == "fine" else b"coarse_labels"]


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
        txt = f"{label}_label_names.txt"
        folder = _folder_with(root, "cifar-100-binary", (txt,))
        if folder is not None:
            got = [ln.strip() for ln in (folder / txt).read_text(errors="replace").splitlines() if ln.strip()]
    return got if len(got) == len(names) else list(names)


def load_cifar100(root: str | os.PathLike[str], split: str = "train", label: str = "fine") -> Dataset:
    """CIFAR-100 from the binary version (``cifar-100-binary``: train.bin/test.bin, read in Rust) or the
    python version (``cifar-100-python``: read with the restricted unpickler); ``label`` "fine" gives the 100
    classes, "coarse" the 20 superclasses. Errors name the file and record."""
    check_split(split)
    if label not in ("fine", "coarse"):
        raise DataFormatError(f"label must be 'fine' or 'coarse', got {label!r}")
    root = Path(root)
    has_bin = _folder_with(root, "cifar-100-binary", ("train.bin", "test.bin")) is not None
    py_root = None if has_bin else _folder_with(root, "cifar-100-python", ("train", "test", "meta"))
    if py_root is not None:
        x, y = _cifar100_python(py_root, split, label)
    else:
        x, y = load_cifar100_bin(root, split, label)
    names = _cifar100_names(root, label, py_root)
    return Dataset(x, y, names, CIFAR100_MEAN, CIFAR100_STD, "cifar100", str(root), {"label": label})


# ---- downloads --------------------------------------------------------------------------------------------


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
