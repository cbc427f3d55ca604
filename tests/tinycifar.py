"""Tiny random CIFAR-10-shaped data for search and training tests, in memory or as a binary-version folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_images(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random uint8 images (n, 3, 32, 32) and int64 labels in 0..9."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def write_bin(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """``folder`` holding the images as CIFAR-10's binary ``data_batch_1.bin`` (label byte, 3,072 pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rec = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(labels), -1)], axis=1)
    (folder / "data_batch_1.bin").write_bytes(rec.tobytes())
    return folder
