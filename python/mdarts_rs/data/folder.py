"""Image folders (one sub-folder per class), decoded once by the Rust core into a cache that later runs map."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import shutil
import stat
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mdarts_rs._core import MAX_IMAGES, MAX_SIDE, DataFormatError, decode_images
from mdarts_rs.data.cache import default_cache_dir
from mdarts_rs.data.dataset import Dataset, channel_stats, check_split

__all__ = [
    "CACHE_FORMAT",
    "RESIZE",
    "SkippedImagesWarning",
    "cache_key",
    "has_split_dirs",
    "load_folder",
    "scan_folder",
]

# A cache lives in ``default_cache_dir()/folders/<key>/``: ``images.u8`` (the raw (N, 3, S, S) pixels) and
# ``header.json`` (labels, class names, per-channel mean and std, the files skipped, the pixels' hash, and a hash
# of all of that). The key hashes the folder's absolute path and its file list with each file's size,
# modification time, inode and status-change time (ctime), the image size and the resize settings, so a cache
# belongs to one folder, is reused while nothing changed and is rebuilt when a file is added, removed, touched or
# rewritten: as in git's index, the ctime and inode change whenever a file is written or replaced, and no tool
# restoring modification times can set a ctime back. A cache whose header or pixels do not match what was
# written is rebuilt, never read as data.

#: Bumped whenever the decoding or the cache layout changes, so that older caches are rebuilt.
CACHE_FORMAT = 2
#: How every image is brought to S×S (recorded in the key and the header).
RESIZE = "rgb8, exif orientation, shorter side to S with a bilinear (triangle) convolution, centre crop"
#: Images decoded (and hashed) per call, so that progress shows and memory stays bounded.
_CHUNK = 2048
#: The header's fields and the type of each (checked before a cache is used).
_HEADER_FIELDS = {
    "format": int,
    "key": str,
    "root": str,
    "image_size": int,
    "resize": str,
    "count": int,
    "class_names": list,
    "labels": list,
    "mean": list,
    "std": list,
    "skipped": list,
    "pixels_blake2b": str,
    "header_blake2b": str,
}


class SkippedImagesWarning(UserWarning):
    """``--skip-bad-images`` left out files that could not be decoded; the message lists every one."""


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _utf8_name(path: Path, what: str) -> str:
    """``path``'s name, which must be valid UTF-8 (a class name is written to JSON and shown to users)."""
    raw = os.fsencode(path.name)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataFormatError(
            f"{path.parent}: the {what} named {raw!r} is not valid UTF-8; rename it (class names must be text)"
        ) from None


def _class_files(folder: Path) -> list[tuple[Path, os.stat_result]]:
    """Every non-hidden file under the class folder ``folder``, in its sub-folders too (as torchvision's
    ImageFolder reads them; symbolic links followed), sorted by the path's parts as bytes, with its stat result
    (the link's own where the link leads nowhere: the decoder then reports it). Anything but a folder is listed
    as a file (a FIFO too: the decoder refuses it naming it). DataFormatError for a link back to a folder
    that holds it."""
    found: list[tuple[tuple[bytes, ...], Path, os.stat_result]] = []
    todo: list[tuple[Path, tuple[bytes, ...], tuple[tuple[int, int], ...]]] = []
    st = folder.stat()
    todo.append((folder, (), ((st.st_dev, st.st_ino),)))
    while todo:
        d, parts, above = todo.pop()
        try:
            entries = [e for e in os.scandir(d) if not _is_hidden(e.name)]
        except OSError as e:
            raise OSError(e.errno, f"{d}: cannot list the folder ({e.strerror})") from None
        for e in entries:
            try:
                st = os.stat(e.path)
            except OSError:  # a link that leads nowhere or loops: listed, so that the decoder names it
                st = os.lstat(e.path)
            rel = (*parts, os.fsencode(e.name))
            if stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in above:
                    raise DataFormatError(
                        f"{e.path}: a symbolic link to a folder that holds it, so the folder would hold itself; "
                        "remove the link"
                    )
                todo.append((Path(e.path), rel, (*above, (st.st_dev, st.st_ino))))
            else:
                found.append((rel, Path(e.path), st))
    found.sort(key=lambda f: f[0])
    return [(path, st) for _, path, st in found]


def scan_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[Path], list[int], list[os.stat_result]]:
    """The classes of an image folder (its sub-folders, sorted by name; hidden ones ignored), and its files
    (every non-hidden file of each class folder and of its sub-folders, at any depth, sorted by class, then by
    path), their labels and their stat results. A file whose name is not UTF-8 is read by its bytes; a class
    folder must be named in UTF-8. DataFormatError for a folder without two classes or with an empty class
    folder."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (an image folder holds one sub-folder per class)")
    dirs = sorted((p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name)), key=lambda p: p.name)
    if not dirs:
        loose = [p.name for p in root.iterdir() if p.is_file() and not _is_hidden(p.name)][:3]
        hint = (
            f" (it holds files such as {loose}: put each class's images in a sub-folder named after it)"
            if loose
            else ""
        )
        raise DataFormatError(f"{root}: no class folders{hint}")
    names = [_utf8_name(d, "class folder") for d in dirs]
    if len(dirs) == 1:
        raise DataFormatError(
            f"{root}: one class folder only ({names[0]!r}); a classifier needs at least two class folders"
        )
    files: list[Path] = []
    labels: list[int] = []
    stats: list[os.stat_result] = []
    for label, d in enumerate(dirs):
        found = _class_files(d)
        if not found:
            raise DataFormatError(f"{d}: an empty class folder (no image files); add images or remove it")
        files += [f for f, _ in found]
        stats += [st for _, st in found]
        labels += [label] * len(found)
    if len(files) > MAX_IMAGES:
        raise DataFormatError(f"{root}: {len(files)} files is above the limit of {MAX_IMAGES} images (MAX_IMAGES)")
    return names, files, labels, stats


def cache_key(root: Path, files: list[Path], stats: list[os.stat_result], size: int) -> str:
    """A hash of the folder's absolute path, its file list (paths relative to ``root``, as bytes) with each file's
    size, modification time, inode and status-change time, the image size and the resize settings."""
    h = hashlib.sha256(f"mdarts-rs folder cache {CACHE_FORMAT}\n{RESIZE}\nsize {size}\n".encode())
    h.update(os.fsencode(Path(root).resolve()) + b"\0\n")
    for f, st in zip(files, stats):
        h.update(os.fsencode(f.relative_to(root)))
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\0{st.st_ctime_ns}\n".encode())
    return h.hexdigest()[:32]


def _pixels_hash(images: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for i in range(0, len(images), _CHUNK):
        h.update(np.ascontiguousarray(images[i : i + _CHUNK]).data)
    return h.hexdigest()


def _header_hash(header: dict[str, Any]) -> str:
    """The hash of every field of a header but this hash itself (the pixels' hash among them)."""
    fields = {k: v for k, v in header.items() if k != "header_blake2b"}
    return hashlib.blake2b(json.dumps(fields, sort_keys=True).encode(), digest_size=16).hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive OS lock on ``path`` (one process builds a cache while the others, under torchrun too,
    wait and then reuse it)."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_number_list(v: Any, n: int) -> bool:
    return isinstance(v, list) and len(v) == n and all(type(x) in (int, float) and math.isfinite(x) for x in v)


def _header_problem(header: Any, key: str, size: int) -> str | None:
    """What makes ``header`` unusable for the cache ``key`` of ``size``-pixel images (None when nothing): another
    folder's or format's header, a field of the wrong type or length, or fields changed after it was written."""
    if not isinstance(header, dict):
        return f"its header holds a {type(header).__name__}, not a JSON object"
    if header.get("format") != CACHE_FORMAT or header.get("key") != key or header.get("image_size") != size:
        return "its header does not match this folder"
    for field, kind in _HEADER_FIELDS.items():
        if type(header.get(field)) is not kind:
            return f"its header's {field!r} is {type(header.get(field)).__name__}, not {kind.__name__}"
    names, labels, count = header["class_names"], header["labels"], header["count"]
    if len(names) < 2 or not all(type(c) is str for c in names) or len(set(names)) != len(names):
        return "its header's 'class_names' are not two or more distinct strings"
    if len(labels) != count or not all(type(v) is int and 0 <= v < len(names) for v in labels):
        return f"its header's 'labels' are not {count} class indices below {len(names)}"
    if not _is_number_list(header["mean"], 3) or not _is_number_list(header["std"], 3) or min(header["std"]) <= 0:
        return "its header's 'mean' and 'std' are not 3 finite numbers each (std above 0)"
    if not all(type(m) is str for m in header["skipped"]):
        return "its header's 'skipped' are not messages"
    if header["header_blake2b"] != _header_hash(header):
        return "its header was changed after it was written (it does not match the hash written in it)"
    return None


def _read_cache(folder: Path, key: str, size: int) -> tuple[dict[str, Any], np.ndarray] | None:
    """The cache in ``folder`` if its header is whole, of the right types, unchanged since it was written and
    matches ``key``, and its pixels match the header's hash; None where there is none. A damaged one is reported
    (it is then rebuilt)."""
    header_path, pixels_path = folder / "header.json", folder / "images.u8"
    if not os.path.lexists(folder):
        return None
    problem = None
    try:
        if not folder.is_dir():
            problem = "it is a file, not a folder"
        elif not header_path.exists():
            problem = "it has no header.json"
        else:
            header = json.loads(header_path.read_text())
            problem = _header_problem(header, key, size)
        if problem is None:
            n = header["count"]
            if pixels_path.stat().st_size != n * 3 * size * size:
                problem = f"{pixels_path.name} does not hold {n} images of {size}×{size}"
            else:
                images = np.memmap(pixels_path, dtype=np.uint8, mode="r", shape=(n, 3, size, size))
                if _pixels_hash(images) != header["pixels_blake2b"]:
                    problem = "its pixels do not match the hash written with them"
                else:
                    return header, images
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        problem = f"{type(e).__name__}: {e}"
    print(f"mdarts-rs: the image cache {folder} is damaged ({problem}); rebuilding it", file=sys.stderr)
    return None


def _remove(path: Path) -> None:
    """Remove ``path``, a folder (with what it holds), a file or a link, where it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _check_free_space(where: Path, needed: int) -> None:
    free = shutil.disk_usage(where).free
    if free < needed + (64 << 20):
        raise OSError(
            errno.ENOSPC,
            f"the image cache needs {needed / 1e6:,.0f} MB in {where}, but only {free / 1e6:,.0f} MB are free: "
            "free some space, set MDARTS_CACHE to a larger disk, or choose a smaller --image-size",
        )


def _decode(tmp: Path, root: Path, files: list[Path], size: int, workers: int, quiet: bool) -> list[tuple[int, str]]:
    """Decode ``files`` into ``tmp/all.u8`` (N, 3, S, S), a chunk at a time; returns the index and message of
    each file that could not be decoded."""
    n = len(files)
    raw = np.memmap(tmp / "all.u8", dtype=np.uint8, mode="w+", shape=(n, 3, size, size))
    failed: list[tuple[int, str]] = []
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        failed += [(start + i, m) for i, m in decode_images(files[start:stop], raw[start:stop], workers)]
        if not quiet and n > _CHUNK:
            print(f"mdarts-rs: decoded {stop:,} of {n:,} images of {root}", file=sys.stderr)
    raw.flush()
    return failed


def _kept(
    root: Path, names: list[str], labels: list[int], failed: list[tuple[int, str]], skip_bad_images: bool
) -> np.ndarray:
    """The indices of the files the cache keeps: those that decoded, where ``skip_bad_images`` allows leaving
    the others out (a DataFormatError listing them otherwise), as long as every class keeps an image."""
    n = len(labels)
    bad = sorted(i for i, _ in failed)
    if failed and not skip_bad_images:
        lines = "\n".join(m for _, m in failed[:20]) + (
            f"\n... and {len(failed) - 20} more" if len(failed) > 20 else ""
        )
        raise DataFormatError(
            f"{root}: {len(failed)} of {n} files cannot be read as images (pass --skip-bad-images to leave "
            f"them out, with a warning listing them):\n{lines}"
        )
    keep = np.setdiff1d(np.arange(n), np.asarray(bad, dtype=np.int64))
    left = {labels[i] for i in keep}
    empty = [names[c] for c in range(len(names)) if c not in left]
    if empty:
        raise DataFormatError(f"{root}: no readable image left in class folder(s) {empty}")
    if len(keep) == 0:
        raise DataFormatError(f"{root}: no readable image")
    return keep


def _keep_images(tmp: Path, keep: np.ndarray, n: int, size: int) -> np.ndarray:
    """``tmp/images.u8``, the images of ``tmp/all.u8`` at ``keep`` (the file itself, renamed, where all are
    kept), memory-mapped."""
    if len(keep) == n:
        os.replace(tmp / "all.u8", tmp / "images.u8")
        return np.memmap(tmp / "images.u8", dtype=np.uint8, mode="r", shape=(n, 3, size, size))
    raw = np.memmap(tmp / "all.u8", dtype=np.uint8, mode="r", shape=(n, 3, size, size))
    images = np.memmap(tmp / "images.u8", dtype=np.uint8, mode="w+", shape=(len(keep), 3, size, size))
    for i in range(0, len(keep), _CHUNK):
        images[i : i + _CHUNK] = raw[keep[i : i + _CHUNK]]
    images.flush()
    del raw
    (tmp / "all.u8").unlink()
    return images


def _build_cache(
    folder: Path,
    key: str,
    root: Path,
    names: list[str],
    files: list[Path],
    labels: list[int],
    size: int,
    skip_bad_images: bool,
    workers: int,
    quiet: bool,
) -> tuple[dict[str, Any], np.ndarray]:
    """Decode ``files`` into a new cache in ``folder`` (written beside it, then renamed into place); returns
    its header and its pixels, memory-mapped. The caller holds the key's lock, so the unfinished caches of this
    key that other processes left (killed while building) are removed first."""
    n = len(files)
    for stale in folder.parent.glob(f"{folder.name}.tmp-*"):
        _remove(stale)
    _check_free_space(folder.parent, n * 3 * size * size)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        failed = _decode(tmp, root, files, size, workers, quiet)
        keep = _kept(root, names, labels, failed, skip_bad_images)
        images = _keep_images(tmp, keep, n, size)
        mean, std = channel_stats(images)
        header = {
            "format": CACHE_FORMAT,
            "key": key,
            "root": os.fsdecode(root),
            "image_size": size,
            "resize": RESIZE,
            "count": len(keep),
            "class_names": names,
            "labels": [labels[i] for i in keep],
            "mean": list(mean),
            "std": list(std),
            "skipped": [m for _, m in failed],
            "pixels_blake2b": _pixels_hash(images),
        }
        header["header_blake2b"] = _header_hash(header)
        del images
        with open(tmp / "header.json", "w") as f:
            json.dump(header, f)
            f.flush()
            os.fsync(f.fileno())
        _remove(folder)
        os.replace(tmp, folder)
    finally:
        _remove(tmp)
    return header, np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(len(keep), 3, size, size))


_CACHE_HINT = "set MDARTS_CACHE to a writable folder with free space"


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """The folder of the image caches (``cache_dir``, else ``$MDARTS_CACHE/folders``), created; an OSError naming
    the path where it cannot be (a file in its place, no permission)."""
    caches = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "folders"
    try:
        caches.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in (caches, *caches.parents) if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else e.strerror
        raise OSError(e.errno, f"{caches}: cannot create the image cache folder ({why}); {_CACHE_HINT}") from None
    return caches


@contextmanager
def _cache_errors(caches: Path) -> Iterator[None]:
    """OSErrors of the files of the cache ``caches`` as messages naming the file (the CLI shows an OSError's
    text, which alone names nothing)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:  # a message of our own, which says where
            raise
        raise OSError(e.errno, f"{e.filename}: {e.strerror} (in the image cache {caches}; {_CACHE_HINT})") from None


def has_split_dirs(path: str | os.PathLike[str]) -> bool:
    """Whether the image folder is split into ``train/`` and ``val/`` (its "test" split is then ``val/``)."""
    base = Path(path)
    return (base / "train").is_dir() and (base / "val").is_dir()


def load_folder(
    path: str | os.PathLike[str],
    split: str = "train",
    image_size: int = 32,
    *,
    skip_bad_images: bool = False,
    workers: int | None = None,
    quiet: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """An image folder as a dataset of (N, 3, image_size, image_size) images, through its cache.

    With ``path/train`` and ``path/val``, split "train" reads ``train`` and "test" reads ``val``; otherwise
    "train" reads every class folder of ``path`` and "test" is refused (hold out a part with
    ``holdout_split``). A file that cannot be decoded is a DataFormatError naming it, or with
    ``skip_bad_images`` is left out and listed in a ``SkippedImagesWarning``.
    """
    check_split(split)
    if not 1 <= image_size <= MAX_SIDE:
        raise DataFormatError(f"image_size must be 1 to {MAX_SIDE}, got {image_size}")
    base = Path(path)
    split_dirs = has_split_dirs(base)
    if split == "test" and not split_dirs:
        raise DataFormatError(f"{base}: no train/ and val/ folders, so no test set (training holds out a part)")
    root = base / ("train" if split == "train" else "val") if split_dirs else base
    names, files, labels, stats = scan_folder(root)
    key = cache_key(root, files, stats, image_size)
    caches = _cache_root(cache_dir)
    folder = caches / key
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    with _cache_errors(caches), _locked(caches / f"{key}.lock"):
        found = _read_cache(folder, key, image_size)
        if found is None:
            if not quiet:
                print(f"mdarts-rs: decoding {len(files):,} images of {root} into {folder}", file=sys.stderr)
            found = _build_cache(folder, key, root, names, files, labels, image_size, skip_bad_images, workers, quiet)
    header, images = found
    if header["skipped"]:
        if not skip_bad_images:
            raise DataFormatError(
                f"{root}: the cache was built with --skip-bad-images, leaving out {len(header['skipped'])} files; "
                "pass --skip-bad-images again or fix the files:\n" + "\n".join(header["skipped"][:20])
            )
        warnings.warn(
            SkippedImagesWarning(
                f"{root}: left out {len(header['skipped'])} files that are not readable images:\n"
                + "\n".join(header["skipped"])
            ),
            stacklevel=2,
        )
    info = {"cache_key": key, "cache": str(folder), "split_dirs": split_dirs, "resize": RESIZE}
    return Dataset(
        images,
        np.asarray(header["labels"], dtype=np.int64),
        list(header["class_names"]),
        tuple(header["mean"]),
        tuple(header["std"]),
        "folder",
        os.fsdecode(base),
        info,
    )
