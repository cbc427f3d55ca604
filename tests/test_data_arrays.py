"""Arrays saved as ``.npz`` (``mdarts_rs.data.arrays``): layouts, channels, and each field checked."""

from __future__ import annotations

import io
import os
import zipfile

import numpy as np
import pytest

from mdarts_rs import data
from mdarts_rs._core import DataFormatError
from mdarts_rs.config import SearchConfig
from mdarts_rs.search import run_search


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder."""
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cache"))


def test_arrays_npz_nchw_nhwc_and_grayscale(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 1, 28, 28), dtype=np.uint8)
    y = np.arange(20) % 4
    np.savez(tmp_path / "g.npz", images=x, labels=y, class_names=np.array(["a", "b", "c", "d"]))
    d = data.load_dataset("arrays", tmp_path / "g.npz")
    assert (d.channels, d.image_size, d.class_names) == (1, 28, ["a", "b", "c", "d"])
    assert len(d.mean) == 1 and 0.4 < d.mean[0] < 0.6
    np.savez(tmp_path / "c.npz", images=x.repeat(5, axis=1).transpose(0, 2, 3, 1), labels=y)
    d5 = data.load_npz(tmp_path / "c.npz")
    assert d5.images.shape == (20, 5, 28, 28) and d5.class_names == ["0", "1", "2", "3"]
    assert np.array_equal(d5.images[:, 3], x[:, 0])


@pytest.mark.parametrize(
    ("images", "labels", "names", "message"),
    [
        (np.zeros((4, 3, 8, 8), np.float32), [0, 1, 0, 1], None, "'images' is dtype float32; expected uint8"),
        (np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1], None, "add the channel axis"),
        (np.zeros((4, 3, 8, 6), np.uint8), [0, 1, 0, 1], None, "expected square images"),
        (np.zeros((4, 3, 8, 8), np.uint8), [0, 1, 0], None, "'labels' has 3 entries for 4 images"),
        (np.zeros((4, 3, 8, 8), np.uint8), [0, 1, -1, 1], None, r"labels\[2\] = -1 is negative"),
        (np.zeros((4, 3, 8, 8), np.uint8), [0.0, 1.0, 0.0, 1.0], None, "'labels' is float64"),
        (np.zeros((4, 3, 8, 8), np.uint8), [0, 1, 2, 1], ["a", "b"], r"labels\[2\] = 2 has no class name"),
        (np.zeros((4, 3, 8, 8), np.uint8), [0, 0, 0, 0], None, "one class only"),
        (
            np.zeros((4, 3, 8, 8), np.uint8),
            [0, 1, 1_000_000, 1],
            None,
            r"labels\[2\] = 1000000 is above the limit of 100000 classes \(MAX_CLASSES\)",
        ),
        (np.zeros((4, 3, 8, 8), np.uint8), [0, 1, 2**63 - 2, 1], None, r"labels\[2\] = 9223372036854775806 is above"),
        (
            np.zeros((4, 3, 8, 8), np.uint8),
            [0, 1, 5, 1],
            None,
            r"labels\[2\] = 5 makes 6 classes, but 3 of them have no image \(labels 2, 3, 4\); without 'class_n",
        ),
        (
            np.zeros((4, 3, 8, 8), np.uint8),
            [0, 1, 0, 1],
            "abcd",
            r"'class_names' is a 0-d array of <U4 'abcd'; expected",
        ),
        (np.zeros((4, 3, 8, 8), np.uint8), [0, 1, 0, 1], [["a", "b"]], r"'class_names' is a 2-d array"),
    ],
)
def test_arrays_are_checked_field_by_field(tmp_path, images, labels, names, message):
    extra = {} if names is None else {"class_names": np.array(names)}
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array(labels), **extra)
    with pytest.raises(DataFormatError, match=message) as e:
        data.load_npz(tmp_path / "bad.npz")
    assert "bad.npz" in str(e.value)


def test_arrays_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        data.load_npz(tmp_path / "missing.npz")
    np.savez(tmp_path / "x.npz", pixels=np.zeros(3))
    with pytest.raises(DataFormatError, match=r"no 'images' array \(holds \['pixels'\]\)"):
        data.load_npz(tmp_path / "x.npz")
    (tmp_path / "t.npz").write_text("text")
    with pytest.raises(DataFormatError, match="t.npz: not a readable .npz"):
        data.load_npz(tmp_path / "t.npz")


def _npy(array_header: dict, body: bytes) -> bytes:
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, array_header)
    return f.getvalue() + body


def _good_npz() -> bytes:
    f = io.BytesIO()
    np.savez(f, images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.array([0, 1, 0, 1]))
    return f.getvalue()


def _claiming_npz() -> bytes:
    """An .npz whose 'images' header claims 10⁹ images of 3×32×32 (3 TB) over 12 bytes of data."""
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("images.npy", _npy({"descr": "|u1", "fortran_order": False, "shape": (10**9, 3, 32, 32)}, bytes(12)))
        z.writestr("labels.npy", _npy({"descr": "<i8", "fortran_order": False, "shape": (2,)}, bytes(16)))
    return f.getvalue()


def _only(*keys: str) -> bytes:
    f = io.BytesIO()
    arrays = {"test_images": np.zeros((2, 3, 8, 8), np.uint8), "test_labels": np.array([0, 1])}
    np.savez(f, images=np.zeros((4, 3, 8, 8), np.uint8), labels=np.array([0, 1, 0, 1]), **{k: arrays[k] for k in keys})
    return f.getvalue()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"x.npz: an empty file \(0 bytes\); --dataset arrays reads a .npz with 'images' and 'labels'"),
        (lambda: _good_npz()[:200], r"x.npz: not a readable .npz of arrays \(BadZipFile: "),
        (
            lambda: _npy({"descr": "|u1", "fortran_order": False, "shape": (2,)}, b"ab"),
            r"x.npz: a .npy file \(a single",
        ),
        (_claiming_npz, r"x.npz: 'images' claims shape \(1000000000, 3, 32, 32\) of uint8 \(3,072,000,000,000 bytes\)"),
        (lambda: _only("test_images"), r"x.npz: 'test_images' without 'test_labels'; a test set needs both"),
        (lambda: _only("test_labels"), r"x.npz: 'test_labels' without 'test_images'; a test set needs both"),
        (None, r"x.npz: a FIFO, not a regular file"),
    ],
)
def test_damaged_or_incomplete_npz_files_are_refused_naming_them(tmp_path, content, message):
    path = tmp_path / "x.npz"
    if content is None:
        os.mkfifo(path)  # must not block
    else:
        path.write_bytes(content() if callable(content) else content)
    with pytest.raises(DataFormatError, match=message):
        data.load_dataset("arrays", path)
    assert not data.npz_has_test_set(path)


def test_test_labels_take_the_training_classes(tmp_path):
    x = np.zeros((6, 3, 8, 8), np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.array([0, 1, 2, 0, 1, 2]), test_images=x[:2], test_labels=[0, 2])
    test = data.load_dataset("arrays", tmp_path / "a.npz", "test")  # class 1 has no test image: still 3 classes
    assert test.class_names == ["0", "1", "2"] and test.labels.tolist() == [0, 2]


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (
            np.zeros((8, 3, 32, 32), np.uint8),
            np.full(8, 0.9),
            r"'labels' is float64 of shape \(8,\); expected 8 integers",
        ),
        (
            [[0] * 3] * 8,
            np.zeros(8, np.int64),
            r"CIFAR-10 images have shape \(N, 3, 32, 32\), got a list: pass a numpy",
        ),
        (
            np.zeros((8, 3, 32, 32), np.float32),
            np.zeros(8, np.int64),
            r"got float32 \(8, 3, 32, 32\): pass a numpy uint8",
        ),
        (np.zeros((8, 3, 32, 32), np.uint8), np.full(8, 10), r"labels\[0\] = 10 has no class name"),
    ],
)
def test_run_search_refuses_arrays_that_are_not_cifar10s(tmp_path, images, labels, message):
    cfg = SearchConfig(
        out=tmp_path / "run", epochs=1, batch_size=4, layers=5, init_channels=4, device="cpu", quiet=True
    )
    with pytest.raises(DataFormatError, match=message):
        run_search(cfg, images, labels)
