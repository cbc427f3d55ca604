"""Read pickled data files without running code from them: plain data and numeric numpy arrays only.

``pickle.load`` calls whatever global a file names (``posix.system`` included), so a crafted CIFAR-10
batch could run a shell command. :func:`load` allows only what the real archives hold: dicts, lists, tuples,
bytes, str, ints and floats (built by pickle opcodes, without any global) and numpy's array reconstruction.
Everything else is refused with :class:`~mdarts_rs.DataFormatError` naming the file and the global.
"""

from __future__ import annotations

import math
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import numpy as np

from mdarts_rs._core import DataFormatError

__all__ = ["load"]

# Take numpy's reconstruction functions from numpy's own pickling, not by module name: numpy 2 moved them
# from numpy.core to numpy._core, and importing numpy.core warns there.
_RECONSTRUCT: Any = np.ndarray.__reduce__(np.zeros(0, np.uint8))[0]  # what pickle protocols 0-4 call
_FROMBUFFER: Any = np.ndarray.__reduce_ex__(np.zeros(0, np.uint8), 5)[0]  # protocol 5 (Python 3.14's default)


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are wrappers that check what numpy is asked to build."""

    def __init__(self, file: Any, path: Path, size: int) -> None:
        # encoding="bytes" keeps the Python 2 strs of the official archives (keys, pixel buffers) as bytes.
        super().__init__(file, encoding="bytes")
        self.path, self.size = path, size
        self.arrays: list[np.ndarray] = []
        self.dtypes: list[np.dtype] = []
        # The archives name numpy.ndarray only as _reconstruct's first argument. It is handed out as this
        # stand-in, which _reconstruct swaps back, so that a file cannot call ndarray itself (e.g. to make
        # an object array outside the checks below).
        self._ndarray = _NdarrayStandIn(path)
        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy.core.multiarray", "_reconstruct"): self._reconstruct,  # numpy 1 (the official archives)
            ("numpy._core.multiarray", "_reconstruct"): self._reconstruct,  # numpy 2
            ("numpy.core.numeric", "_frombuffer"): self._frombuffer,
            ("numpy._core.numeric", "_frombuffer"): self._frombuffer,
            ("numpy", "ndarray"): self._ndarray,
            ("numpy", "dtype"): self._dtype,
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataFormatError(
                f"{self.path}: refuses to load '{module}.{name}': not an array or plain data"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataFormatError(f"{self.path}: refuses a persistent id ({pid!r}): not an array or plain data")

    def _check_dtype(self, dtype: np.dtype) -> np.dtype:
        # Object arrays hold references to Python objects rather than numbers; none of the data is one.
        if dtype.hasobject:
            raise DataFormatError(
                f"{self.path}: refuses an array of dtype {dtype!r}: object arrays hold Python objects, not numbers"
            )
        return dtype

    def _dtype(self, *args: Any) -> np.dtype:
        d = self._check_dtype(np.dtype(*args))
        self.dtypes.append(d)  # checked again after loading: the pickle's state for it comes later
        return d

    def _reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        if subtype is not self._ndarray:
            raise DataFormatError(f"{self.path}: refuses to reconstruct {subtype!r}: only numpy.ndarray is allowed")
        dtype = self._check_dtype(np.dtype(typecode))
        # numpy allocates this shape before the data arrive: one larger than the file is a lie, not an array.
        dims = shape if isinstance(shape, tuple) else (shape,)
        if not all(type(d) is int and d >= 0 for d in dims):
            raise DataFormatError(f"{self.path}: an array of shape {shape!r}; expected non-negative integers")
        if math.prod(dims) * dtype.itemsize > self.size:
            raise DataFormatError(
                f"{self.path}: claims an array of shape {shape!r} of {dtype} ({math.prod(dims) * dtype.itemsize:,} "
                f"bytes), more than the file's {self.size:,} bytes"
            )
        a = _RECONSTRUCT(np.ndarray, shape, typecode)
        self.arrays.append(a)  # its dtype and data come in the pickle's state, set after this call
        return a

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        self._check_dtype(np.dtype(dtype))
        a = _FROMBUFFER(buf, dtype, shape, order)
        self.arrays.append(a)
        return a

    def check_loaded(self) -> None:
        """The dtypes the pickle's states gave every array and dtype it built."""
        for d in self.dtypes:
            self._check_dtype(d)
        for a in self.arrays:
            self._check_dtype(a.dtype)


class _NdarrayStandIn:
    """What the file gets for ``numpy.ndarray``: usable only as ``_reconstruct``'s first argument."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise DataFormatError(
            f"{self.path}: refuses to call 'numpy.ndarray': arrays load only through numpy's array reconstruction"
        )

    def __repr__(self) -> str:
        return "numpy.ndarray"


def load(path: str | os.PathLike[str], what: str = "a pickle of plain data") -> Any:
    """Unpickle ``path``, allowing only plain data and numeric numpy arrays.

    A refused global or object array raises :class:`~mdarts_rs.DataFormatError` naming the file and what was
    refused; a file that is not a readable pickle raises it as ``"<path>: not <what> (<reason>)"``.
    """
    path = Path(path)
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # opening a FIFO would block for ever
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a special file"
        raise DataFormatError(f"{path}: {kind}, not a regular file; expected {what}")
    with open(path, "rb") as f:
        unpickler = _RestrictedUnpickler(f, path, st.st_size)
        try:
            obj = unpickler.load()
        except DataFormatError:
            raise
        except MemoryError:
            raise DataFormatError(f"{path}: not {what} (it asks for more memory than there is)") from None
        except (
            pickle.UnpicklingError,
            EOFError,
            AttributeError,
            IndexError,
            KeyError,
            TypeError,
            ValueError,
            OverflowError,
            RecursionError,
        ) as e:
            raise DataFormatError(f"{path}: not {what} ({e})") from None
    unpickler.check_loaded()
    return obj
