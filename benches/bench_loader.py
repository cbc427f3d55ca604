"""Augmented CIFAR-10 images per second: the Rust loader against torchvision's transforms + DataLoader.

Run: ``pytest benches/bench_loader.py`` (needs the ``bench`` extra: torchvision matching torch).
One epoch of 10,000 images, batch 64, pad-4 crop + flip + normalise to float32, as many workers as cores.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mdarts_rs import data

from conftest import record

tv = pytest.importorskip("torchvision", reason="the baseline needs torchvision (pip install '.[bench]')")
from PIL import Image  # noqa: E402  (torchvision brings Pillow)
from torchvision import transforms  # noqa: E402

BATCH = 64
WORKERS = os.cpu_count() or 1


class TorchvisionCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10.__getitem__ does, over the same arrays (HWC uint8 -> PIL -> transform)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.data = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
        self.targets = labels.tolist()
        self.transform = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(data.CIFAR10_MEAN, data.CIFAR10_STD),
            ]
        )

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.data[i])), self.targets[i]


def _epoch(loader) -> int:
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n


@pytest.mark.benchmark(group="loader")
def test_baseline_torchvision(benchmark, cifar_train):
    x, y = cifar_train
    dl = torch.utils.data.DataLoader(
        TorchvisionCifar(x, y),
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=WORKERS,
        persistent_workers=True,
    )
    xb, _ = next(iter(dl))
    assert xb.shape == (BATCH, 3, 32, 32) and xb.dtype == torch.float32
    n = benchmark.pedantic(_epoch, args=(dl,), rounds=2, warmup_rounds=1)
    assert n == len(dl) * BATCH
    record("loader", "baseline_torchvision", benchmark, n)


@pytest.mark.parametrize(("normalize", "channels_last"), [(True, False), (True, True), (False, False)])
@pytest.mark.benchmark(group="loader")
def test_rust_loader(benchmark, cifar_train, normalize, channels_last):
    x, y = cifar_train
    loader = data.CifarLoader(x, y, batch_size=BATCH, normalize=normalize, channels_last=channels_last, workers=WORKERS)
    xb, _ = next(iter(loader))
    assert xb.shape == (BATCH, 3, 32, 32)
    assert xb.dtype == (torch.float32 if normalize else torch.uint8)
    # Same normalisation as torchvision's transforms on an unaugmented image.
    ref = data.augment_images(x[:4], crop_padding=0, flip=False)
    tvn = transforms.Normalize(data.CIFAR10_MEAN, data.CIFAR10_STD)(torch.from_numpy(x[:4]).float() / 255)
    torch.testing.assert_close(torch.from_numpy(ref), tvn, rtol=1e-5, atol=1e-5)
    n = benchmark.pedantic(_epoch, args=(loader,), rounds=5, warmup_rounds=1)
    assert n == len(loader) * BATCH
    kind = ("f32" if normalize else "u8") + ("_channels_last" if channels_last else "")
    record("loader", f"rust_{kind}", benchmark, n)
