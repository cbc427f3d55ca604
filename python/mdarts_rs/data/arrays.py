"""In-memory arrays saved as a ``.npz`` file (``images``, ``labels``, optional ``class_names`` and test arrays)."""

from __future__ import annotations

import math
import os
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from mdarts_rs._core import DataFormatError
from mdarts_rs.data.dataset import Dataset, class_labels, from_arrays

__all__ = ["load_npz", "npz_has_test_set"]

#: What a .npz must hold, for the messages.
_EXPECTED = "--dataset arrays reads a .npz with 'images' and 'labels' (np.savez(path, images=..., labels=...))"
#: Deflate expands at most about 1032-fold: an entry claiming more than this many bytes per stored byte lies.
_MAX_DEFLATE_RATIO = 1100


def _check_file(path: Path) -> None:
    """FileNotFoundError or DataFormatError unless ``path`` is a non-empty regular file (a FIFO would block)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found ({_EXPECTED})") from None
    except OSError as e:
        raise OSError(e.errno, f"{path}: cannot read it ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a special file"
        raise DataFormatError(f"{path}: {what}, not a regular file; {_EXPECTED}")
    if st.st_size == 0:
        raise DataFormatError(f"{path}: an empty file (0 bytes); {_EXPECTED}")
    with open(path, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            raise DataFormatError(f"{path}: a .npy file (a single array), not a .npz; {_EXPECTED}")


def _check_entry(z: Any, key: str, path: Path, archive_bytes: int) -> None:
    """DataFormatError unless the array ``key`` of the open .npz ``z`` holds as many bytes as its header's shape
    and dtype claim, checked before numpy allocates the array (a header claiming an enormous shape would
    otherwise ask for that much memory)."""
    info = z.zip.getinfo(f"{key}.npy")
    stored = info.compress_type == zipfile.ZIP_STORED
    if info.compress_size > archive_bytes or info.file_size > (1 if stored else _MAX_DEFLATE_RATIO) * max(
        info.compress_size, 1
    ):
        raise DataFormatError(
            f"{path}: {key!r} claims {info.file_size:,} bytes in {info.compress_size:,} stored bytes; the file is damaged"
        )
    with z.zip.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise DataFormatError(f"{path}: {key!r} is a .npy of format {version}; expected format 1.0 or 2.0")
        held = info.file_size - f.tell()
    if dtype.hasobject:
        raise DataFormatError(f"{path}: {key!r} is an array of Python objects ({dtype}); expected numbers or strings")
    claimed = math.prod(shape) * dtype.itemsize
    if claimed != held:
        raise DataFormatError(
            f"{path}: {key!r} claims shape {shape} of {dtype} ({claimed:,} bytes) but holds {held:,} bytes; the file "
            "is damaged"
        )


def _read_npz(path: Path, keys: list[str]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays ``keys`` of the .npz ``path`` that it holds, each checked against its size first, and the names
    of all its arrays; a .npz holding one of ``test_images``/``test_labels`` without the other is refused."""
    try:
        # np.load is given an open file: on a damaged zip it leaves a file it opened itself open.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise DataFormatError(f"{path}: not a .npz of arrays; {_EXPECTED}")
            fields = set(z.files)
            test = {"test_images", "test_labels"} & fields
            if len(test) == 1:
                (given,) = test
                missing = ({"test_images", "test_labels"} - test).pop()
                raise DataFormatError(
                    f"{path}: {given!r} without {missing!r}; a test set needs both (or neither: training then "
                    "holds out a part of the images)"
                )
            out = {}
            for key in keys:
                if key in fields:
                    _check_entry(z, key, path, path.stat().st_size)
                    out[key] = z[key]
            return out, sorted(fields)
    except DataFormatError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, MemoryError) as e:
        raise DataFormatError(f"{path}: not a readable .npz of arrays ({type(e).__name__}: {e})") from None


def _class_names(path: Path, raw: np.ndarray | None) -> list[str] | None:
    if raw is None:
        return None
    if raw.ndim != 1 or raw.dtype.kind != "U":
        shown = repr(raw.tolist())[:60] if raw.size <= 1 else f"of shape {raw.shape}"
        raise DataFormatError(
            f"{path}: 'class_names' is a {raw.ndim}-d array of {raw.dtype} {shown}; expected a 1-D array of strings, "
            "one per class (np.array(['cat', 'dog', ...]))"
        )
    return [str(c) for c in raw.tolist()]


def load_npz(path: str | os.PathLike[str], prefix: str = "") -> Dataset:
    """``images``/``labels`` (or with ``prefix`` "test_", ``test_images``/``test_labels``) and the optional
    ``class_names`` of a ``.npz`` file, checked field by field (no pickled objects are loaded; each array's size
    against the file before it is read). Without ``class_names`` the classes are those of ``labels`` (0..K-1,
    every one present), and the test labels must be among them."""
    path = Path(path)
    _check_file(path)
    wanted = [f"{prefix}images", f"{prefix}labels", "class_names", *(["labels"] if prefix else [])]
    arrays, fields = _read_npz(path, wanted)
    for key in wanted[:2]:
        if key not in arrays:
            raise DataFormatError(f"{path}: no {key!r} array (holds {fields})")
    names = _class_names(path, arrays.get("class_names"))
    if prefix and names is None and "labels" in arrays:  # the training labels define the classes
        names = class_labels(arrays["labels"], len(arrays["labels"]), None, f"{path} (train set)")[1]
    images, labels = arrays[f"{prefix}images"], arrays[f"{prefix}labels"]
    return from_arrays(images, labels, names, kind="arrays", path=str(path), what=f"{path} ({prefix or 'train '}set)")


def npz_has_test_set(path: str | os.PathLike[str]) -> bool:
    """Whether the ``.npz`` file holds ``test_images`` and ``test_labels`` (False where it cannot be read)."""
    if not os.path.isfile(path):  # a FIFO would block np.load
        return False
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            return "test_images" in z.files and "test_labels" in z.files
    except (OSError, ValueError, EOFError, TypeError, AttributeError, zipfile.BadZipFile):
        return False
