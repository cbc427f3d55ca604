"""Image folders (one sub-folder per class), decoded once by the Rust core into a cache that later runs map."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
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
# ``header.json`` (labels, class names, per-channel mean and std, the files skipped, the pixels' hash). The key
# hashes the folder's file list with each file's size and modification time, the image size and the resize
# settings, so a cache is reused while nothing changed and rebuilt when a file is added, removed or touched. A
# cache whose header or pixels do not match what was written is rebuilt, never read as data.

#: Bumped whenever the decoding or the cache layout changes, so that older caches are rebuilt.
CACHE_FORMAT = 1
#: How every image is brought to S×S (recorded in the key and the header).
RESIZE = "rgb8, exif orientation, shorter side to S with a bilinear (triangle) convolution, centre crop"
#: Images decoded (and hashed) per call, so that progress shows and memory stays bounded.
_CHUNK = 2048


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


def scan_folder(root: str | os.PathLike[str]) -> tuple[list[str], list[Path], list[int], list[os.stat_result]]:
    """The classes of an image folder (its sub-folders, sorted by name; hidden ones ignored), and its files
    (every non-hidden regular file of each class folder, sorted by class, then by file name), their labels
    and their stat results. A file whose name is not UTF-8 is read by its bytes; a class folder must be
    named in UTF-8. DataFormatError for a folder without two classes or with an empty class folder."""
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
        entries = sorted((e for e in os.scandir(d) if not _is_hidden(e.name)), key=lambda e: os.fsencode(e.name))
        found = 0
        for e in entries:
            if e.is_file():
                files.append(Path(e.path))
                labels.append(label)
                stats.append(e.stat())
                found += 1
        if found == 0:
            raise DataFormatError(f"{d}: an empty class folder (no image files); add images or remove it")
    if len(files) > MAX_IMAGES:
        raise DataFormatError(f"{root}: {len(files)} files is above the limit of {MAX_IMAGES} images (MAX_IMAGES)")
    return names, files, labels, stats


def cache_key(root: Path, files: list[Path], stats: list[os.stat_result], size: int) -> str:
    """A hash of the file list (paths relative to ``root``, as bytes), each file's size and modification
    time, the image size and the resize settings."""
    h = hashlib.sha256(f"mdarts-rs folder cache {CACHE_FORMAT}\n{RESIZE}\nsize {size}\n".encode())
    for f, st in zip(files, stats):
        h.update(os.fsencode(f.relative_to(root)))
        h.update(f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _pixels_hash(images: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for i in range(0, len(images), _CHUNK):
        h.update(np.ascontiguousarray(images[i : i + _CHUNK]).data)
    return h.hexdigest()


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


def _read_cache(folder: Path, key: str, size: int) -> tuple[dict[str, Any], np.ndarray] | None:
    """The cache in ``folder`` if its header is whole and matches ``key`` and its pixels match the header's
    hash; None where there is none. A damaged one is reported (it is then rebuilt)."""
    header_path, pixels_path = folder / "header.json", folder / "images.u8"
    if not header_path.exists():
        return None
    problem = None
    try:
        header = json.loads(header_path.read_text())
        n = int(header["count"])
        if header.get("format") != CACHE_FORMAT or header.get("key") != key or header.get("image_size") != size:
            problem = "its header does not match this folder"
        elif len(header["labels"]) != n or pixels_path.stat().st_size != n * 3 * size * size:
            problem = f"{pixels_path.name} does not hold {n} images of {size}×{size}"
        else:
            images = np.memmap(pixels_path, dtype=np.uint8, mode="r", shape=(n, 3, size, size))
            if _pixels_hash(images) != header["pixels_blake2b"]:
                problem = "its pixels do not match the hash written with them"
            else:
                return header, images
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"{type(e).__name__}: {e}"
    print(f"mdarts-rs: the image cache {folder} is damaged ({problem}); rebuilding it", file=sys.stderr)
    return None


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
    its header and its pixels, memory-mapped."""
    n = len(files)
    _check_free_space(folder.parent, n * 3 * size * size)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
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
        del images
        with open(tmp / "header.json", "w") as f:
            json.dump(header, f)
            f.flush()
            os.fsync(f.fileno())
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return header, np.memmap(folder / "images.u8", dtype=np.uint8, mode="r", shape=(len(keep), 3, size, size))


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
    caches = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "folders"
    caches.mkdir(parents=True, exist_ok=True)
    folder = caches / key
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    with _locked(caches / f"{key}.lock"):
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
