"""The restricted unpickler and the checks of CIFAR-10's python version: crafted files are refused, with the
file, record and field named, and well-formed ones load as before."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import mdarts_rs as md
from mdarts_rs import data, safe_pickle


def batch(classes, /, seed=0, **fields) -> dict:
    """A batch as the official archives hold it: a dict with bytes keys, a uint8 array and a list of ints."""
    rng = np.random.default_rng(seed)
    d = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": list(classes),
        b"data": rng.integers(0, 256, (len(classes), 3072), dtype=np.uint8),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(len(classes))],
    }
    d.update((k.encode(), v) for k, v in fields.items())  # data=... replaces b"data"
    return d


def write(path, obj, protocol=pickle.DEFAULT_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


@pytest.fixture()
def fake_py(tmp_path):
    """A tiny python-version folder: data_batch_1..3 of 4, 4, 2 records, test_batch of 3, batches.meta."""
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i, labels in enumerate([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]], start=1):
        write(root / f"data_batch_{i}", batch(labels, seed=i))
    write(root / "test_batch", batch([3, 3, 1], seed=9))
    names = [
        n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    ]
    write(root / "batches.meta", {b"num_cases_per_batch": 10000, b"label_names": names, b"num_vis": 3072})
    return root


class Marker:
    """Unpickles as a call of ``make(*args)``, which creates a file: the file existing means code ran."""

    def __init__(self, make, *args):
        self.make, self.args = make, args

    def __reduce__(self):
        return self.make, self.args


@pytest.mark.parametrize("how", ["os.system", "open"])
# Below protocol 3, Python 3 writes bytes through _codecs.encode, which is refused before the payload.
@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_safe_pickle_code_in_a_batch_does_not_run(fake_py, tmp_path, how, protocol):
    marker = tmp_path / "pwned"
    make, args = (os.system, (f"touch '{marker}'",)) if how == "os.system" else (open, (str(marker), "w"))
    write(fake_py / "data_batch_1", batch([0, 1], payload=Marker(make, *args)), protocol)
    with pytest.raises(
        md.DataFormatError, match=r"data_batch_1: refuses to load '(\w|\.)+': not an array or plain data"
    ) as e:
        data.load_cifar10(fake_py)
    assert not marker.exists()
    assert f"'{make.__module__}.{make.__qualname__}'" in str(e.value)  # 'posix.system', 'io.open'


def test_safe_pickle_code_in_a_batch_names_the_global(fake_py):
    write(fake_py / "test_batch", batch([1], labels=Marker(os.system, "true")))
    with pytest.raises(
        md.DataFormatError, match=rf"test_batch: refuses to load '{os.name}\.system': not an array or plain data"
    ):
        data.load_cifar10(fake_py, "test")


@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_safe_pickle_refuses_object_arrays(fake_py, protocol):
    path = fake_py / "data_batch_1"
    write(path, batch([0, 1], data=np.zeros((2, 3072), np.uint8).astype(object)), protocol)
    with pytest.raises(
        md.DataFormatError, match=r"data_batch_1: refuses an array of dtype dtype\('O'\): object arrays"
    ):
        data.load_cifar10(fake_py)
    # an object field inside a structured dtype holds Python objects all the same
    write(path, np.zeros(2, dtype=[("a", np.uint8), ("b", object)]), protocol)
    with pytest.raises(md.DataFormatError, match=r"data_batch_1: refuses an array of dtype"):
        safe_pickle.load(path)


def test_safe_pickle_refuses_calling_ndarray_directly(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"cnumpy\nndarray\n(K\x02tR.")  # numpy.ndarray(2): an array made outside the checks
    with pytest.raises(md.DataFormatError, match=r"x: refuses to call 'numpy.ndarray'"):
        safe_pickle.load(path)


def test_safe_pickle_loads_plain_data_and_arrays(tmp_path):
    path = tmp_path / "x"
    obj = {b"a": [1, -2, 3.5, "s", b"b", (4, None, True)], "arr": np.arange(12, dtype=np.float32).reshape(3, 4)}
    for protocol in (3, 4, 5):  # below 3, Python 3 writes bytes through _codecs.encode, which is refused
        write(path, obj, protocol)
        got = safe_pickle.load(path)
        assert got[b"a"] == obj[b"a"] and np.array_equal(got["arr"], obj["arr"]) and got["arr"].dtype == np.float32
    (tmp_path / "bad").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(md.DataFormatError, match=r"bad: not a pickle of plain data \("):
        safe_pickle.load(tmp_path / "bad")


def test_safe_pickle_float_pixels_are_refused(fake_py):
    write(fake_py / "data_batch_2", batch([0, 1], data=np.zeros((2, 3072), dtype=np.float32)))
    with pytest.raises(
        md.DataFormatError, match=r"data_batch_2: field b'data' is an array of dtype float32; expected uint8"
    ):
        data.load_cifar10(fake_py)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0, 1.0, 2], r"data_batch_1: record 1: label 1.0 in b'labels' is a float, not an integer"),
        ([0, 1, b"2"], r"data_batch_1: record 2: label b'2' in b'labels' is a bytes, not an integer"),
        (["0", 1, 2], r"data_batch_1: record 0: label '0' in b'labels' is a str, not an integer"),
        (np.array([0, 1.5, 2]), r"data_batch_1: record 0: label 0.0 in b'labels' is a float, not an integer"),
        ([0, 1, 10], r"data_batch_1: record 2: label 10 is not a CIFAR-10 class \(0-9\)"),
    ],
)
def test_safe_pickle_non_integer_labels_are_refused(fake_py, labels, message):
    write(fake_py / "data_batch_1", batch([0, 1, 2], labels=labels))
    with pytest.raises(md.DataFormatError, match=message):
        data.load_cifar10(fake_py)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"data": np.zeros((2, 3072), np.uint8)},
            r"data_batch_3: field b'data' has 2 records but b'labels' has 3 labels",
        ),
        (
            {"data": np.zeros((3, 1024), np.uint8)},
            r"data_batch_3: field b'data' has shape \(3, 1024\); expected \(N, 3072\)",
        ),
        ({"data": [[0] * 3072] * 3}, r"data_batch_3: field b'data' is a list; expected uint8 pixels"),
    ],
)
def test_safe_pickle_bad_shapes_are_refused(fake_py, fields, message):
    write(fake_py / "data_batch_3", batch([0, 1, 2], **fields))
    with pytest.raises(md.DataFormatError, match=message):
        data.load_cifar10(fake_py)


def test_safe_pickle_gap_in_batches_is_refused(fake_py):
    (fake_py / "data_batch_2").unlink()
    with pytest.raises(
        md.DataFormatError,
        match=r"data_batch_3: data_batch_2 is missing but this later batch is present; the training files must be data_batch_1 onward without gaps",
    ):
        data.load_cifar10(fake_py)


def test_safe_pickle_meta_only_folder_names_the_python_version(tmp_path, fake_py):
    for f in fake_py.iterdir():
        if f.name != "batches.meta":
            f.unlink()
    for root in (fake_py, tmp_path):  # the folder itself or the one holding it
        with pytest.raises(
            FileNotFoundError,
            match=r"data_batch_1: file not found \(found batches.meta of CIFAR-10's python version but no data_batch_1..5; download the CIFAR-10 python version",
        ):
            data.load_cifar10(root)
    with pytest.raises(FileNotFoundError, match=r"test_batch: file not found \(download the CIFAR-10 python version"):
        data.load_cifar10(fake_py, "test")


def test_safe_pickle_well_formed_folder_loads_as_before(fake_py):
    x, y = data.load_cifar10(fake_py)
    assert x.shape == (10, 3, 32, 32) and x.dtype == np.uint8
    assert y.dtype == np.int64 and y.tolist() == list(range(10))
    with open(fake_py / "data_batch_2", "rb") as f:
        expected = pickle.load(f, encoding="bytes")[b"data"]  # the unrestricted reader of before, on our own file
    assert np.array_equal(x[4:8].reshape(4, -1), expected)
    xt, yt = data.load_cifar10(fake_py.parent, "test")
    assert yt.tolist() == [3, 3, 1] and xt.shape == (3, 3, 32, 32)


def test_safe_pickle_reads_the_archives_numpy_1_names(fake_py):
    # The official archives were written by numpy 1 (numpy.core.multiarray._reconstruct); protocol 3 writes
    # the global as text, so it can be renamed to that in place.
    d = batch([5, 6], seed=4)
    raw = pickle.dumps(d, protocol=3).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    (fake_py / "data_batch_1").write_bytes(raw)
    for n in (2, 3):
        (fake_py / f"data_batch_{n}").unlink()
    x, y = data.load_cifar10(fake_py)
    assert np.array_equal(x.reshape(2, -1), d[b"data"]) and y.tolist() == [5, 6]


class _Claims:
    """Unpickles as numpy's array reconstruction of ``shape`` (numpy allocates it before the data come)."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        return np.ndarray.__reduce__(np.zeros(0, np.uint8))[0], (np.ndarray, self.shape, b"b")


@pytest.mark.parametrize(
    ("where", "make", "message"),
    [
        (
            "data_batch_1",
            lambda p: write(p, batch([0], data=_Claims((10**9, 3072)))),
            r"data_batch_1: claims an array of shape \(1000000000, 3072\) of int8 \(3,072,000,000,000 bytes\), more",
        ),
        ("data_batch_1", lambda p: write(p, batch([0], data=_Claims((-1,)))), r"an array of shape \(-1,\); expected"),
        ("data_batch_2", os.mkfifo, r"data_batch_2: a FIFO, not a regular file; expected a CIFAR-10 python batch"),
        ("test_batch", os.mkfifo, r"test_batch: a FIFO, not a regular file"),
    ],
)
def test_safe_pickle_refuses_huge_claims_and_fifos_before_reading(fake_py, where, make, message):
    (fake_py / where).unlink()
    make(fake_py / where)
    with pytest.raises(md.DataFormatError, match=message):
        data.load_cifar10(fake_py, "test" if where == "test_batch" else "train")
