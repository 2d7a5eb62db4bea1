"""A restricted unpickler: a dataset file is data, never code.

The CIFAR files are pickles, and `pickle.load` runs whatever a planted object's `__reduce__` asks for. Every CIFAR
file passes `check` before torchvision reads it: only the globals a numpy array needs are admitted, so dicts,
lists, strings, bytes, numbers and numpy arrays load, and anything else is refused with one line.
"""

from __future__ import annotations

import os
import pickle

from search.errors import DataError

# What pickled numpy arrays and dtypes reference (numpy 1.x and 2.x spellings); nothing here runs code.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol 2 writes Python 3 bytes as encode(text, "latin1"): a pure function
}  # fmt: skip


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refused to unpickle {module}.{name}")
        return super().find_class(module, name)


def load(path: str | os.PathLike, encoding: str = "latin1") -> object:
    """Unpickles a data file, admitting only data.

    Raises:
        DataError: one line naming the file and the refused global, or a length claiming more memory than there is.
    """
    with open(path, "rb") as f:
        try:
            return _Restricted(f, encoding=encoding).load()
        except MemoryError:  # a length field claiming terabytes
            raise DataError(
                f"{path}: its {os.path.getsize(path)} bytes claim more memory than this machine has: corrupt or not "
                "a dataset file; replace the file"
            ) from None
        except pickle.UnpicklingError as exc:
            if "refused" not in str(exc):
                raise
            raise DataError(
                f"{path}: {exc}: a dataset file holds only arrays, lists, dicts and strings; replace the file"
            ) from None


def check(path: str | os.PathLike) -> None:
    """Loads a data file with `load` and drops it: raises DataError if it holds anything but data."""
    load(path)
