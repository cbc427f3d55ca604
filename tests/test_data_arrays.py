"""Arrays saved as ``.npz`` (``mdarts_rs.data.arrays``): layouts, channels, and each field checked."""

from __future__ import annotations

import numpy as np
import pytest

from mdarts_rs import data
from mdarts_rs._core import DataFormatError


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
