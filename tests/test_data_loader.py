"""The search split, augmentation and the zero-copy loader (``mdarts_rs.data.loader`` over the Rust BatchLoader)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import mdarts_rs as md
from mdarts_rs import data

MEAN = np.array(data.CIFAR10_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array(data.CIFAR10_STD, dtype=np.float32).reshape(1, 3, 1, 1)


def test_data_search_split_halves_and_is_seeded():
    t, v = data.search_split(50_000, 1.0, seed=2)
    assert len(t) == len(v) == 25_000
    assert len(np.intersect1d(t, v)) == 0 and t.dtype == np.int64
    assert np.array_equal(data.search_split(50_000, 1.0, seed=2)[0], t)
    assert not np.array_equal(data.search_split(50_000, 1.0, seed=3)[0], t)
    assert len(data.search_split(50_000, 0.1)[0]) == 2_500
    with pytest.raises(md.DataFormatError, match="portion"):
        data.search_split(100, 1.5)


images4 = arrays(np.uint8, st.tuples(st.integers(1, 3), st.just(3), st.just(32), st.just(32)))


@settings(max_examples=25, deadline=None)
@given(images4, st.integers(0, 2**63), st.sampled_from([0, 8, 16]), st.booleans())
def test_data_augmentation_keeps_shape_dtype_range(x, seed, cutout, channels_last):
    out = data.augment_images(x, seed=seed, cutout=cutout, channels_last=channels_last)
    assert out.dtype == np.float32
    assert out.shape == ((x.shape[0], 32, 32, 3) if channels_last else x.shape)
    lo, hi = ((0 - MEAN) / STD).min(), ((1 - MEAN) / STD).max()
    assert np.isfinite(out).all() and out.min() >= lo - 1e-6 and out.max() <= hi + 1e-6
    raw = data.augment_images(x, seed=seed, cutout=cutout, normalize=False)
    assert raw.dtype == np.uint8 and raw.shape == x.shape


@settings(max_examples=25, deadline=None)
@given(images4)
def test_data_augmentation_off_is_normalisation(x):
    out = data.augment_images(x, crop_padding=0, flip=False)
    np.testing.assert_allclose(out, (x / np.float32(255) - MEAN) / STD, rtol=1e-5, atol=1e-6)
    nhwc = data.augment_images(x, crop_padding=0, flip=False, channels_last=True)
    assert np.array_equal(nhwc, out.transpose(0, 2, 3, 1))
    assert np.array_equal(data.augment_images(x, crop_padding=0, flip=False, normalize=False), x)


def test_data_augmentation_is_keyed_by_seed_epoch_batch():
    x = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)
    a = data.augment_images(x, seed=1, epoch=2, batch=3, cutout=16)
    assert np.array_equal(a, data.augment_images(x, seed=1, epoch=2, batch=3, cutout=16))
    assert not np.array_equal(a, data.augment_images(x, seed=1, epoch=3, batch=3, cutout=16))
    # Flips happen to about half of the images, and a flip of a flip-only augmentation mirrors the image.
    f = data.augment_images(x, crop_padding=0, flip=True, normalize=False, seed=5)
    flipped = [np.array_equal(f[i], x[i, :, :, ::-1]) for i in range(16)]
    kept = [np.array_equal(f[i], x[i]) for i in range(16)]
    assert all(a or b for a, b in zip(flipped, kept)) and 2 <= sum(flipped) <= 14


def small_set(n=100):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def test_loader_batches_are_zero_copy():
    x, y = small_set()
    loader = md.data.BatchLoader(x, y, batch_size=10, workers=1)
    xb, yb = next(iter(loader.epoch(0)))
    # The arrays wrap buffers Rust allocated (numpy does not own them) and torch shares their memory.
    assert not xb.flags.owndata and type(xb.base).__name__ == "PySliceContainer"
    t = torch.from_numpy(xb)
    assert t.data_ptr() == xb.ctypes.data
    assert torch.from_numpy(yb).data_ptr() == yb.ctypes.data


def test_loader_serves_each_image_once_with_its_label():
    x, y = small_set()
    idx = np.arange(10, 90)
    loader = data.CifarLoader(x, y, idx, batch_size=16, augment=False, normalize=False, workers=2)
    assert len(loader) == 5 and loader.num_images == 80
    seen = []
    for xb, yb in loader:
        assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.uint8 and yb.dtype == torch.int64
        for img, label in zip(xb.numpy(), yb.numpy()):
            (i,) = [j for j in idx if np.array_equal(x[j], img)]
            assert y[i] == label
            seen.append(i)
    assert sorted(seen) == list(range(10, 90))


def test_loader_is_deterministic_across_workers_and_reshuffles():
    x, y = small_set()

    def epoch(workers, e):
        return [b for b, _ in md.data.BatchLoader(x, y, batch_size=7, cutout=16, seed=4, workers=workers).epoch(e)]

    a = epoch(0, 1)
    for w in (1, 2, 3):
        assert all(np.array_equal(p, q) for p, q in zip(a, epoch(w, 1)))
    assert not np.array_equal(a[0], epoch(2, 2)[0])


def test_loader_torch_tensors_and_channels_last():
    x, y = small_set()
    loader = data.CifarLoader(x, y, batch_size=8, channels_last=True, workers=1, drop_last=False)
    assert len(loader) == 13
    sizes = []
    for xb, yb in loader:
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32)
        assert xb.is_contiguous(memory_format=torch.channels_last)
        sizes.append(len(yb))
    assert sizes[-1] == 4 and loader.epoch == 1


def test_loader_rejects_bad_arguments():
    x, y = small_set(10)
    with pytest.raises(md.DataFormatError, match=r"indices\[1\] = 10 is out of range"):
        md.data.BatchLoader(x, y, np.array([0, 10]), batch_size=2)
    with pytest.raises(md.DataFormatError, match="labels has 9 entries"):
        md.data.BatchLoader(x, y[:9], batch_size=2)
    bad = y.copy()
    bad[3] = 11
    with pytest.raises(md.DataFormatError, match=r"labels\[3\] = 11"):
        md.data.BatchLoader(x, bad, batch_size=2)
    with pytest.raises(md.DataFormatError, match="batch_size must be positive"):
        md.data.BatchLoader(x, y, batch_size=0)
    with pytest.raises(md.DataFormatError, match=r"shape \(N, C, S, S\) \(square images\), got \[2, 32, 32, 3\]"):
        md.data.BatchLoader(np.zeros((2, 32, 32, 3), np.uint8), y[:2], batch_size=1)
