"""CIFAR-10 and CIFAR-100 (``mdarts_rs.data.cifar``): both versions, the errors naming file and record, and the
checked downloads."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import mdarts_rs as md
from mdarts_rs import data
from mdarts_rs._core import DataFormatError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder."""
    monkeypatch.setenv("MDARTS_CACHE", str(tmp_path / "cache"))


# ---- CIFAR-10 ---------------------------------------------------------------------------------------------


def records(labels, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    out = bytearray()
    for label in labels:
        out.append(label)
        out += rng.integers(0, 256, 3072, dtype=np.uint8).tobytes()
    return bytes(out)


@pytest.fixture()
def fake_bin(tmp_path):
    """A tiny binary-version folder: 3 training files of 4, 4, 2 records and a test file of 3."""
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    for i, labels in enumerate([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], start=1):
        (root / f"data_batch_{i}.bin").write_bytes(records(labels, seed=i))
    (root / "test_batch.bin").write_bytes(records([3, 3, 1], seed=9))
    return root


def test_data_reads_generated_binary_files(fake_bin):
    x, y = data.load_cifar10(fake_bin)
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == list(range(10))
    raw = (fake_bin / "data_batch_2.bin").read_bytes()
    assert x[4].tobytes() == raw[1:3073]  # R, G, B planes, row-major
    xt, yt = data.load_cifar10(fake_bin.parent, "test")  # the parent folder works too
    assert yt.tolist() == [3, 3, 1] and xt.shape[0] == 3


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (
            lambda r: (r / "data_batch_2.bin").write_bytes(records([1, 2]) + b"x" * 100),
            md.DataFormatError,
            r"data_batch_2.bin: truncated.*record 2 has only 100 bytes",
        ),
        (
            lambda r: (r / "data_batch_1.bin").write_bytes(records([1, 12, 3])),
            md.DataFormatError,
            r"data_batch_1.bin: record 1: label 12 is not a CIFAR-10 class",
        ),
        (lambda r: (r / "data_batch_3.bin").write_bytes(b""), md.DataFormatError, r"data_batch_3.bin: empty file"),
        (lambda r: (r / "data_batch_1.bin").unlink(), FileNotFoundError, r"data_batch_1.bin: file not found"),
        (
            lambda r: ((r / "data_batch_3.bin").unlink(), os.mkfifo(r / "data_batch_3.bin")),
            md.DataFormatError,
            r"data_batch_3.bin: a FIFO \(named pipe\), not a regular file; only regular files are read",
        ),
        (
            lambda r: (r / "data_batch_2.bin").unlink(),
            md.DataFormatError,
            r"data_batch_3.bin: data_batch_2.bin is missing",
        ),
    ],
)
def test_data_bad_files_get_clear_errors(fake_bin, mutate, error, message):
    mutate(fake_bin)
    with pytest.raises(error, match=message):
        data.load_cifar10(fake_bin)


def test_data_oversized_file(fake_bin):
    (fake_bin / "test_batch.bin").write_bytes(bytes(3073 * 10_001))
    with pytest.raises(md.DataFormatError, match=r"test_batch.bin: oversized: 10001 records"):
        data.load_cifar10(fake_bin, "test")


def test_data_wrong_folder_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="download the CIFAR-10 binary version"):
        data.load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        data.load_cifar10(tmp_path)
    with pytest.raises(md.DataFormatError, match="split must be"):
        data.load_cifar10(tmp_path, "val")


def test_data_python_version(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    with open(root / "data_batch_1", "wb") as f:
        pickle.dump({b"data": arr, b"labels": [0, 1, 2, 3, 9]}, f)
    x, y = data.load_cifar10(tmp_path)
    assert np.array_equal(x.reshape(5, -1), arr) and y.tolist() == [0, 1, 2, 3, 9]
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": arr, b"labels": [0, 1, 2, 3, 10]}, f)
    with pytest.raises(md.DataFormatError, match=r"test_batch: record 4: label 10"):
        data.load_cifar10(root, "test")
    (root / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(md.DataFormatError, match="data_batch_1: not a CIFAR-10 python batch"):
        data.load_cifar10(root)


def test_download_refuses_bad_version(tmp_path):
    with pytest.raises(md.DataFormatError, match="version"):
        data.download_cifar10(tmp_path, version="matlab")


def test_download_reuses_unpacked_cache(tmp_path, fake_bin):
    assert data.download_cifar10(fake_bin.parent) == fake_bin


def test_download_checks_md5(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(md.DataFormatError, match="does not match the published c32a1d4ab5d03f1284b67883e8d87530"):
        data.download_cifar10(tmp_path)


@pytest.mark.data
def test_data_real_mini_subset(cifar_mini):
    x, y = data.load_cifar10(cifar_mini)
    assert x.shape == (10_000, 3, 32, 32)
    assert np.bincount(y).tolist() == [1005, 974, 1032, 1016, 999, 937, 1030, 1001, 1025, 981]
    # Published pixels of train image 9999 (cur_s_000170.png): the record starts 62, 61, 60, ends 130, 130, 131.
    assert x[9999].reshape(-1)[:3].tolist() == [62, 61, 60]
    assert x[9999].reshape(-1)[-3:].tolist() == [130, 130, 131]
    xt, yt = data.load_cifar10(cifar_mini, "test")
    assert np.bincount(yt).tolist() == [196, 198, 195, 199, 198, 185, 216, 193, 217, 203]


@pytest.mark.data
def test_data_real_full_statistics(cifar_full):
    x, y = data.load_cifar10(cifar_full)
    assert x.shape == (50_000, 3, 32, 32)
    assert np.bincount(y).tolist() == [5000] * 10
    f = x.reshape(50_000, 3, -1).astype(np.float64) / 255
    np.testing.assert_allclose(f.mean(axis=(0, 2)), [0.4914, 0.4822, 0.4465], atol=6e-5)
    np.testing.assert_allclose(f.std(axis=(0, 2)), [0.2470, 0.2435, 0.2616], atol=6e-5)
    assert data.load_cifar10(cifar_full, "test")[0].shape[0] == 10_000


# ---- CIFAR-100 --------------------------------------------------------------------------------------------


def _records(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 20, n, dtype=np.uint8),
        rng.integers(0, 100, n, dtype=np.uint8),
    )


def _write_bin100(path: Path, x, coarse, fine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = np.concatenate([coarse[:, None], fine[:, None], x.reshape(len(x), -1)], axis=1)
    path.write_bytes(rec.tobytes())


def test_cifar100_binary_records_give_fine_or_coarse_labels(tmp_path):
    x, coarse, fine = _records(30)
    root = tmp_path / "cifar-100-binary"
    _write_bin100(root / "train.bin", x, coarse, fine)
    _write_bin100(root / "test.bin", x[:7], coarse[:7], fine[:7])
    d = data.load_cifar100(tmp_path, "train")  # the parent of cifar-100-binary works too
    assert np.array_equal(d.images, x) and np.array_equal(d.labels, fine)
    assert d.num_classes == 100 and d.class_names[:2] == ["apple", "aquarium_fish"]
    assert (d.mean, d.std) == (data.CIFAR100_MEAN, data.CIFAR100_STD)
    c = data.load_cifar100(root, "test", "coarse")
    assert np.array_equal(c.labels, coarse[:7]) and c.num_classes == 20 and c.describe()["label"] == "coarse"


@pytest.mark.parametrize(
    ("byte", "value", "message"),
    [
        (0, 20, r"train.bin: record 4: coarse label 20 is not a CIFAR-100 superclass \(0-19\)"),
        (1, 100, r"train.bin: record 4: fine label 100 is not a CIFAR-100 class \(0-99\)"),
    ],
)
def test_cifar100_binary_errors_name_file_and_record(tmp_path, byte, value, message):
    x, coarse, fine = _records(6)
    (coarse if byte == 0 else fine)[4] = value
    _write_bin100(tmp_path / "train.bin", x, coarse, fine)
    for label in ("fine", "coarse"):  # both labels of every record are checked, whichever is kept
        with pytest.raises(DataFormatError, match=message):
            data.load_cifar100(tmp_path, "train", label)
    (tmp_path / "train.bin").write_bytes(b"\0" * 3074 * 2 + b"\1\2")
    with pytest.raises(DataFormatError, match="record 2 has only 2 bytes"):
        data.load_cifar100(tmp_path, "train")


def test_cifar100_python_version_is_read_with_the_safe_unpickler(tmp_path):
    x, coarse, fine = _records(12, seed=3)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    d = {b"data": x.reshape(12, -1), b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}
    (root / "train").write_bytes(pickle.dumps(d))
    coarse_names = [f"super{i}".encode() for i in range(20)]
    (root / "meta").write_bytes(pickle.dumps({b"coarse_label_names": coarse_names, b"fine_label_names": []}))
    got = data.load_cifar100(tmp_path, "train", "coarse")
    assert np.array_equal(got.images, x) and np.array_equal(got.labels, coarse)
    assert got.class_names == [f"super{i}" for i in range(20)]  # from meta
    assert data.load_cifar100(tmp_path, "train").class_names[-1] == "worm"  # meta's empty list: the published
    d[b"fine_labels"][5] = 100
    (root / "train").write_bytes(pickle.dumps(d))
    with pytest.raises(DataFormatError, match=r"train: record 5: b'fine_labels' 100 is not a CIFAR-100 class"):
        data.load_cifar100(root, "train")
    (root / "train").write_bytes(pickle.dumps(os.system))
    with pytest.raises(DataFormatError, match="posix|system"):
        data.load_cifar100(root, "train")


def test_cifar100_download_checks_the_published_md5(tmp_path):
    from mdarts_rs.data import ARCHIVES_100, download_cifar100

    assert ARCHIVES_100["binary"][1] == "03b5dce01913d631647c71ecec9e9cb8"
    assert ARCHIVES_100["python"][1] == "eb9058c3a382ffc7106e4002c42a8d85"
    (tmp_path / "cifar-100-binary.tar.gz").write_bytes(b"not the archive")  # found in the cache: no download
    with pytest.raises(DataFormatError, match="cifar-100-binary.tar.gz: MD5 .* does not match the published 03b5dce0"):
        download_cifar100(tmp_path)
    with pytest.raises(DataFormatError, match="version"):
        download_cifar100(tmp_path, version="matlab")


def test_cifar100_real_archive_if_present():
    root = os.environ.get("MDARTS_CIFAR100") or str(
        Path(__file__).resolve().parents[2] / "shared/data/cifar-100-binary"
    )
    if not (Path(root) / "train.bin").exists():
        pytest.skip("real CIFAR-100 not found: set MDARTS_CIFAR100 or provide ../shared/data/cifar-100-binary")
    d = data.load_cifar100(root, "train")
    assert len(d) == 50_000 and set(np.unique(d.labels)) == set(range(100))
    mean, _ = data.channel_stats(d.images[:10_000])
    assert np.allclose(mean, data.CIFAR100_MEAN, atol=0.01)
