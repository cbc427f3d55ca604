"""Tiny random CIFAR-10-shaped data for search and training tests, in memory or as a binary-version folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from mdarts_rs.config import SearchConfig, TrainConfig
from mdarts_rs.search import Searcher


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


def tiny_cfg(tmp_path: Path, **kw) -> SearchConfig:
    """A search of a tiny supernet (5 cells, C = 4, batch 4, 3 steps per epoch, 2 epochs) on the CPU writing to
    ``tmp_path / "run"``, quiet and without plots; ``kw`` overrides any field."""
    base = dict(
        out=tmp_path / "run",
        epochs=2,
        batch_size=4,
        init_channels=4,
        layers=5,
        steps_per_epoch=3,
        gap_images=8,
        workers=1,
        quiet=True,
        plots=False,
        device="cpu",
        seed=0,
    )
    base.update(kw)
    return SearchConfig(**base)


def tiny_train_cfg(out: Path, **kw) -> TrainConfig:
    """A training of a tiny network (5 cells, C = 4, batch 8, 2 steps per epoch, 2 epochs) on the CPU writing to
    ``out``, quiet; ``kw`` sets the genotype, the data and overrides any field."""
    base = dict(
        out=out,
        epochs=2,
        batch_size=8,
        init_channels=4,
        layers=5,
        steps_per_epoch=2,
        workers=1,
        device="cpu",
        quiet=True,
        seed=0,
    )
    return TrainConfig(**{**base, **kw})


def interrupt_after(monkeypatch, calls: int, sig: int = signal.SIGINT):
    """Make ``Searcher.train_step`` send ``sig`` to this process after its ``calls``-th call; returns a function
    that restores the plain step."""
    original, done = Searcher.train_step, {"n": 0}

    def step_then_interrupt(self, *args):
        out = original(self, *args)
        done["n"] += 1
        if done["n"] == calls:
            os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(Searcher, "train_step", step_then_interrupt)
    return lambda: monkeypatch.setattr(Searcher, "train_step", original)
