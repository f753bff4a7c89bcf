"""Named arrays in and out of files: the ``.npz`` / ``.npy`` inputs and outputs of the command line.

:func:`read_arrays` never unpickles (``allow_pickle=False``), accepts only numeric and boolean arrays,
and turns every way a file can be broken (not a zip, truncated member, bad ``.npy`` header, object
arrays) into one :class:`ValueError` that names the file and the problem.  :func:`write_arrays` writes
atomically: a reader never sees half a file, and a failed write leaves no file behind.
"""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Mapping, Union

import numpy as np

__all__ = ["read_arrays", "write_arrays"]

Source = Union[str, os.PathLike, IO[bytes]]


def _label(source: Source) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<stream>"


def read_arrays(source: Source, *, default_name: str = "x") -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` (by member name) or an ``.npy`` (named ``default_name``).

    Raises :class:`FileNotFoundError` for a missing path and :class:`ValueError` for anything that is
    not a readable file of numeric or boolean arrays.
    """
    label = _label(source)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise FileNotFoundError(f"{label}: no such file")
    try:
        loaded = np.load(source, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {default_name: loaded}
        else:
            with loaded:
                arrays = {name: loaded[name] for name in loaded.files}
    except (
        OSError,
        EOFError,
        ValueError,
        KeyError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        RuntimeError,
        UnicodeDecodeError,
        OverflowError,
        MemoryError,
    ) as exc:
        raise ValueError(f"{label}: not a readable .npz/.npy file of arrays ({type(exc).__name__}: {exc})") from None
    for name, arr in arrays.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
            kind = arr.dtype if isinstance(arr, np.ndarray) else type(arr).__name__
            raise ValueError(f"{label}: array {name!r} has dtype {kind}; expected numbers or booleans")
    return arrays


def write_arrays(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write ``arrays`` as an ``.npz`` (or a single array as ``.npy`` when ``path`` ends in .npy), atomically."""
    target = Path(path)
    if target.suffix == ".npy":
        if len(arrays) != 1:
            raise ValueError(f"{target}: a .npy file holds one array, got {len(arrays)} ({sorted(arrays)})")
    buf = io.BytesIO()
    if target.suffix == ".npy":
        np.save(buf, np.asarray(next(iter(arrays.values()))), allow_pickle=False)
    else:
        named: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}
        np.savez(buf, **named)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent if str(target.parent) else "."
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return target
