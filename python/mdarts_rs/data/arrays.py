"""In-memory arrays saved as a ``.npz`` file (``images``, ``labels``, optional ``class_names`` and test arrays)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mdarts_rs._core import DataFormatError
from mdarts_rs.data.dataset import Dataset, from_arrays

__all__ = ["load_npz", "npz_has_test_set"]


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


def npz_has_test_set(path: str | os.PathLike[str]) -> bool:
    """Whether the ``.npz`` file holds ``test_images`` and ``test_labels`` (False where it cannot be read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "test_images" in z.files and "test_labels" in z.files
    except (OSError, ValueError):
        return False
