"""Image folders: building the cache (Rust decoding in worker threads) against Pillow doing the same work in a
torch DataLoader, and epochs of augmented batches from the cache against an ImageFolder pipeline that decodes
every file each epoch.

Run: ``pytest benches/bench_folder.py`` (add ``-k cache`` or ``-k epoch`` for one group). A folder of
``IMAGES`` generated JPEGs (10 classes, 160-240 × 120-180 pixels, quality 90) is written once per session;
both sides use ``WORKERS`` workers and resize to ``SIZE`` (shorter side, bilinear, centre crop).

The epoch baseline is torchvision's ``ImageFolder`` + ``Resize``/``CenterCrop``/``RandomCrop(padding)``/
``RandomHorizontalFlip``/``ToTensor``/``Normalize`` + ``DataLoader`` when torchvision is installed; without it
(no torchvision release matches every torch) the same steps written with Pillow and torch, which is what those
transforms run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mdarts_rs.data import CifarLoader, load_folder, scan_folder

from conftest import record

IMAGES = int(os.environ.get("MDARTS_BENCH_IMAGES", "3000"))
SIZE = 64
WORKERS = os.cpu_count() or 1
BATCH = 64
CLASSES = 10


@pytest.fixture(scope="session")
def jpeg_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        c = i % CLASSES
        w, h = int(rng.integers(160, 241)), int(rng.integers(120, 181))
        y, x = np.mgrid[0:h, 0:w]
        a = np.stack(
            [128 + 100 * np.sin(x / (7 + c) + y / 29), 128 + 90 * np.cos(y / (5 + c)), 60 + 10 * c + 0 * x], -1
        )
        a = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
        (root / f"class{c}").mkdir(exist_ok=True)
        Image.fromarray(a).save(root / f"class{c}" / f"{i:05d}.jpg", quality=90)
    return root


def _pillow_resized(path: str, size: int, draft: bool = True) -> Image.Image:
    """Pillow's decode: JPEG draft (DCT scaling to at least the target), RGB, shorter side to ``size``
    (bilinear), centre crop."""
    with Image.open(path) as im:
        if draft:
            im.draft("RGB", (size, size))
        im = im.convert("RGB")
        w, h = im.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return im.crop((left, top, left + size, top + size))


class PillowFiles(torch.utils.data.Dataset):
    """Decode and resize each file (the cache-building work, done by Pillow)."""

    def __init__(self, files: list[Path]):
        self.files = [str(f) for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(_pillow_resized(self.files[i], SIZE)).transpose(2, 0, 1).copy())


def _pillow_cache(files: list[Path]) -> np.ndarray:
    dl = torch.utils.data.DataLoader(PillowFiles(files), batch_size=BATCH, num_workers=WORKERS)
    return torch.cat(list(dl)).numpy()


@pytest.mark.benchmark(group="folder_cache")
def test_baseline_pillow_cache(benchmark, jpeg_folder):
    _, files, _, _ = scan_folder(jpeg_folder)
    out = benchmark.pedantic(_pillow_cache, args=(files,), rounds=2, warmup_rounds=1)
    assert out.shape == (IMAGES, 3, SIZE, SIZE) and out.dtype == np.uint8
    record("folder_cache", "baseline_pillow_draft", benchmark, IMAGES)


@pytest.mark.benchmark(group="folder_cache")
def test_rust_cache(benchmark, jpeg_folder, tmp_path):
    _, files, _, _ = scan_folder(jpeg_folder)
    k = 0

    def build() -> np.ndarray:
        nonlocal k
        k += 1
        cache = tmp_path / f"cache{k}"  # a new cache each round: the build, not the reuse, is timed
        d = load_folder(jpeg_folder, image_size=SIZE, workers=WORKERS, cache_dir=cache)
        images = np.asarray(d.images)
        shutil.rmtree(cache)
        return images

    images = benchmark.pedantic(build, rounds=2, warmup_rounds=1)
    assert images.shape == (IMAGES, 3, SIZE, SIZE)
    # The same images as Pillow without draft (full-size decode): within the decoders' rounding.
    ref = np.stack([np.asarray(_pillow_resized(str(f), SIZE, draft=False)).transpose(2, 0, 1) for f in files[:20]])
    diff = np.abs(images[:20].astype(int) - ref.astype(int))
    assert diff.mean() < 1.0 and diff.max() <= 6, (diff.mean(), diff.max())
    record("folder_cache", "rust_cache_build", benchmark, IMAGES)


class ImageFolderPipeline(torch.utils.data.Dataset):
    """torchvision's ImageFolder + Resize(SIZE) + CenterCrop(SIZE) + RandomCrop(SIZE, padding=SIZE//8) +
    RandomHorizontalFlip + ToTensor + Normalize, each file decoded every epoch."""

    def __init__(self, files: list[Path], labels: list[int], mean, std):
        self.files, self.labels = [str(f) for f in files], labels
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        try:
            from torchvision import transforms
        except ImportError:
            self.tv = None
        else:
            self.tv = transforms.Compose(
                [
                    transforms.Resize(SIZE),
                    transforms.CenterCrop(SIZE),
                    transforms.RandomCrop(SIZE, padding=SIZE // 8),
                    transforms.RandomHorizontalFlip(),
                    transforms.ToTensor(),
                    transforms.Normalize(mean, std),
                ]
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        if self.tv is not None:
            with Image.open(self.files[i]) as im:
                return self.tv(im.convert("RGB")), self.labels[i]
        x = torch.from_numpy(np.asarray(_pillow_resized(self.files[i], SIZE, draft=False)).transpose(2, 0, 1).copy())
        pad = SIZE // 8
        x = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        dy, dx = np.random.randint(0, 2 * pad + 1, 2)
        x = x[:, dy : dy + SIZE, dx : dx + SIZE]
        if np.random.rand() < 0.5:
            x = x.flip(2)
        return (x.float().div_(255) - self.mean) / self.std, self.labels[i]


def _epoch(loader) -> int:
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n


@pytest.mark.benchmark(group="folder_epoch")
def test_baseline_imagefolder_epoch(benchmark, jpeg_folder):
    _, files, labels, _ = scan_folder(jpeg_folder)
    d = load_folder(jpeg_folder, image_size=SIZE, workers=WORKERS)
    ds = ImageFolderPipeline(files, labels, d.mean, d.std)
    dl = torch.utils.data.DataLoader(
        ds, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=WORKERS, persistent_workers=True
    )
    xb, _ = next(iter(dl))
    assert xb.shape == (BATCH, 3, SIZE, SIZE) and xb.dtype == torch.float32
    n = benchmark.pedantic(_epoch, args=(dl,), rounds=2, warmup_rounds=1)
    assert n == len(dl) * BATCH
    name = "baseline_torchvision_imagefolder" if ds.tv is not None else "baseline_pillow_imagefolder"
    record("folder_epoch", name, benchmark, n)


@pytest.mark.benchmark(group="folder_epoch")
def test_rust_cache_epoch(benchmark, jpeg_folder):
    d = load_folder(jpeg_folder, image_size=SIZE, workers=WORKERS)
    loader = CifarLoader(
        d.images, d.labels, batch_size=BATCH, workers=WORKERS, mean=d.mean, std=d.std, num_classes=d.num_classes
    )
    xb, _ = next(iter(loader))
    assert xb.shape == (BATCH, 3, SIZE, SIZE) and xb.dtype == torch.float32
    n = benchmark.pedantic(_epoch, args=(loader,), rounds=5, warmup_rounds=1)
    assert n == len(loader) * BATCH
    record("folder_epoch", "rust_cache_f32", benchmark, n)
