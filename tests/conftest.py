"""Shared fixtures: where the real CIFAR-10 lives, and the published genotypes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

_REPO = Path(__file__).resolve().parents[1]


def _data_dir(env: str, name: str) -> Path | None:
    """The CIFAR-10 folder from ``env``, else ``../shared/data/<name>`` beside the repository."""
    if os.environ.get(env):
        return Path(os.environ[env])
    p = _REPO.parent / "shared" / "data" / name
    return p if p.is_dir() else None


@pytest.fixture(scope="session")
def cifar_mini() -> Path:
    """The real CIFAR-10 subset (first 10,000 train, first 2,000 test images)."""
    p = _data_dir("MDARTS_CIFAR_MINI", "cifar10-mini")
    if p is None or not (p / "data_batch_1.bin").exists():
        pytest.skip("real CIFAR-10 subset not found: set MDARTS_CIFAR_MINI or provide ../shared/data/cifar10-mini")
    return p


@pytest.fixture(scope="session")
def cifar_full() -> Path:
    """The full real CIFAR-10 binary version."""
    p = _data_dir("MDARTS_CIFAR", "cifar-10-batches-bin")
    if p is None or not (p / "data_batch_5.bin").exists():
        pytest.skip("real CIFAR-10 not found: set MDARTS_CIFAR or provide ../shared/data/cifar-10-batches-bin")
    return p


def pytest_configure(config):
    """Under pytest-xdist each worker computes with one thread: the machine's cores go to the workers, not to
    threads competing inside each (and a float32 result never depends on how many threads computed it)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
