"""Weight bundles: a compiled :class:`~nmengine.program.Program` in one ``.nmb`` file.

A bundle is a `safetensors <https://github.com/huggingface/safetensors>`_ file, written and framed by the
``safetensors`` library, so any safetensors reader can list and load its tensors, with the program itself
stored in the header metadata::

    offset 0        u64 little-endian N: length of the JSON header in bytes
    offset 8        N bytes of UTF-8 JSON (padded with spaces to a multiple of 8), an object
                      {"__metadata__": {"nmengine-bundle": "<JSON: format, schema_version, program, ...>"},
                       "<tensor>": {"dtype": "F32"|"I64"|"I8", "shape": [...], "data_offsets": [begin, end]},
                       ...}
    offset 8 + N    the tensor bytes, little-endian, back to back; offsets are relative to here

The nmengine metadata is one JSON object in the single metadata key ``"nmengine-bundle"``: the library
writes metadata keys in hash order, which changes from run to run, so one key is what keeps a bundle
byte-reproducible (``SOURCE_DATE_EPOCH``).  Files written before (schema versions 1 and 2 with the
same fields as separate metadata keys) load as they always did.

Tensors are every Program constant (under its own name) and every PWL table ``key`` as three float32
vectors ``table/<key>/breakpoints``, ``table/<key>/slopes`` and ``table/<key>/intercepts``.  The
metadata holds the program (ops, inputs, outputs, names and meta, as JSON), a SHA-256 of every tensor,
of the program JSON and of the whole header.  See ``docs/bundle.md`` for the full layout.

:func:`load` checks everything (framing, JSON, format and version, tensor index, checksums, PWL tables,
program structure) before it builds the Program, and raises :class:`BundleError` naming the problem:
its own checks of the framing come first (they name the problem precisely), then the library's
``safe_open`` reads the same file (anything it refuses, a panic included, is a BundleError too).
Nothing in a file is executed: no pickle, no eval.  With ``mmap=True`` (the default) the tensors are
read-only views of a memory map of the file, kept alive by the arrays themselves; with ``mmap=False``
the data section is read into memory in one read and the tensors are views of that buffer.  The
tensors' checksums are computed on up to 4 threads (hashlib releases the GIL).

:func:`save` writes to a temporary file next to the target, fsyncs it and renames it into place, so
readers (and a crash) only ever see the old file or the complete new one.

Why one module of this length: the file layout, every validation before use and the atomic writer are
one contract (docs/bundle.md) that reads best in one place.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import math
import mmap as _mmap
import os
import stat
import struct
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import safetensors
import safetensors.numpy

from .program import ROLES, Op, Program, ProgramError
from .pwl import PWLTable
from .spec import InputSpec

__all__ = ["BundleError", "save", "load", "inspect", "format_inspect", "FORMAT", "SCHEMA_VERSION", "MAX_HEADER_BYTES"]

#: Value of the metadata's ``format``; also the one ``__metadata__`` key that holds the metadata as JSON.
FORMAT = "nmengine-bundle"
#: The one ``__metadata__`` key of files written now (older files have the fields as separate keys).
METADATA_KEY = FORMAT
#: Newest schema version: :func:`load` reads versions ``1..SCHEMA_VERSION``.  :func:`save` writes 2
#: when the program has fused row ops (``softmax_rows`` / ``layernorm_rows``, which a version-1 reader
#: does not know) and 1 otherwise; a version-1 file is fused on load (nmengine.compile.fuse_program).
SCHEMA_VERSION = 2
#: Largest JSON header accepted (the safetensors limit).
MAX_HEADER_BYTES = 100_000_000
#: Largest tensor rank accepted.
MAX_RANK = 32

#: Bundle dtype code -> little-endian numpy dtype.
DTYPES: dict[str, np.dtype] = {"F32": np.dtype("<f4"), "I64": np.dtype("<i8"), "I8": np.dtype("i1")}
_DTYPE_CODES = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64", np.dtype(np.int8): "I8"}

TABLE_PARTS = ("breakpoints", "slopes", "intercepts")
_META_KEYS = (
    "format",
    "schema_version",
    "producer",
    "created",
    "program",
    "checksums",
    "program_sha256",
    "header_sha256",
)
_PROGRAM_KEYS = ("name", "meta", "inputs", "outputs", "ops", "constants", "tables")
_OP_REQUIRED = ("kind", "out", "args")
_OP_OPTIONAL = ("attrs", "layer", "what")


class BundleError(ValueError):
    """A bundle file that is malformed, corrupted, of an unsupported version, or a Program that cannot
    be stored in one.  The message names the file and the problem."""


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _table_tensor(key: str, part: str) -> str:
    """Tensor name of one vector of PWL table ``key``."""
    return f"table/{key}/{part}"


def _sha256(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(obj: Any) -> bytes:
    """The canonical JSON encoding the header digest is taken over (sorted keys, no spaces, ASCII)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def _header_digest(header: Mapping[str, Any], meta: Mapping[str, str]) -> str:
    """SHA-256 of the canonical header: every tensor's dtype and shape and the nmengine metadata ``meta``
    (the fields, however the file stores them) except ``header_sha256`` itself.  Data offsets are left
    out: they are checked structurally, the data by the per-tensor checksums, so another safetensors
    writer may lay the same tensors out in another order."""
    doc: dict[str, Any] = {}
    for name, entry in header.items():
        if name != "__metadata__":
            doc[name] = {"dtype": entry["dtype"], "shape": entry["shape"]}
    doc["__metadata__"] = {k: v for k, v in meta.items() if k != "header_sha256"}
    return _sha256(_canonical(doc))


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_hex64(x: Any) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def _to_json_value(x: Any, where: str) -> Any:
    """Plain-JSON copy of ``x`` (numpy scalars become Python numbers, tuples lists); anything that would
    not come back equal from JSON raises BundleError naming ``where``."""
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, np.generic) and x.dtype.kind in "biuf":
        return x.item()
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise BundleError(f"{where}: key {k!r} is a {type(k).__name__}; only string keys survive JSON")
            out[k] = _to_json_value(v, f"{where}[{k!r}]")
        return out
    if isinstance(x, (list, tuple)):
        return [_to_json_value(v, f"{where}[{i}]") for i, v in enumerate(x)]
    raise BundleError(f"{where}: a {type(x).__name__} cannot be stored in a bundle (JSON values only)")


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-finite number {token} is not allowed here")


def _parse_json(text: str, what: str, *, allow_nonfinite: bool, fail: Callable[[str], BundleError]) -> Any:
    """Strict JSON: duplicate keys are an error, ``NaN``/``Infinity`` only when ``allow_nonfinite``."""
    try:
        return json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=float if allow_nonfinite else _reject_constant
        )
    except RecursionError:
        raise fail(f"{what} is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, duplicate keys, non-finite constants
        raise fail(f"{what} is not valid JSON: {e}") from None


# ---------------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------------
def _program_json(program: Program) -> str:
    """The ``program`` metadata entry: everything but the tensor data, as a JSON string."""
    doc = {
        "name": _to_json_value(program.name, "program.name"),
        "meta": _to_json_value(program.meta, "program.meta"),
        "inputs": [
            {"name": k, "shape": [None if d is None else int(d) for d in spec.shape], "dtype": spec.dtype}
            for k, spec in program.inputs.items()
        ],
        "outputs": list(program.outputs),
        "ops": [_to_json_value(op.to_dict(), f"op {i} ({op.kind} -> {op.out!r})") for i, op in enumerate(program.ops)],
        "constants": list(program.constants),
        "tables": [
            {"key": k, "name": t.name, "meta": _to_json_value(t.meta, f"table {k!r} meta")}
            for k, t in program.tables.items()
        ],
    }
    # Non-finite floats in meta/attrs (e.g. an error bound of inf) are kept as NaN/Infinity tokens.
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def _le_array(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a C-contiguous little-endian array (no copy when it already is one)."""
    arr = np.ascontiguousarray(arr).reshape(arr.shape)  # (ascontiguousarray makes a 0-d array 1-d)
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and sys.byteorder == "big"):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def _raw_bytes(arr: np.ndarray) -> np.ndarray:
    """The bytes of a contiguous array as a flat uint8 view (what the data section holds)."""
    return arr.reshape(-1).view(np.uint8)


def _collect_tensors(program: Program) -> list[tuple[str, str, np.ndarray]]:
    """``(name, dtype code, little-endian array)`` for every constant and table vector."""
    items: list[tuple[str, str, np.ndarray]] = []
    for name, arr in program.constants.items():
        arr = np.asarray(arr)
        code = _DTYPE_CODES.get(arr.dtype.newbyteorder("="))
        if code is None:
            raise BundleError(f"constant {name!r} has dtype {arr.dtype}; bundles hold float32, int64 and int8 only")
        items.append((name, code, _le_array(arr)))
    for key, table in program.tables.items():
        for part in TABLE_PARTS:
            vec = np.asarray(getattr(table, part), dtype=np.float32)
            items.append((_table_tensor(key, part), "F32", _le_array(vec)))
    seen: set[str] = set()
    for name, *_ in items:
        if name == "__metadata__" or name in seen:
            raise BundleError(
                f"tensor name {name!r} is reserved or used twice (constant names must not be "
                f"'__metadata__' nor collide with 'table/<key>/<part>' names of the PWL tables)"
            )
        seen.add(name)
    return items


def _created() -> str:
    """ISO-8601 UTC timestamp; honours ``SOURCE_DATE_EPOCH`` for reproducible files."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    t = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_parts(program: Program) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and the one metadata entry of the bundle file (``safetensors`` lays the tensors out
    widest dtype first, so each is aligned to its item size)."""
    from . import __version__

    tensors = _collect_tensors(program)
    program_json = _program_json(program)
    meta: dict[str, str] = {
        "format": FORMAT,
        "schema_version": "2" if program.has_fused else "1",
        "producer": f"nmengine {__version__}",
        "created": _created(),
        "program": program_json,
        "program_sha256": _sha256(program_json.encode("ascii")),
        "checksums": json.dumps(
            {name: _sha256(_raw_bytes(arr)) for name, _, arr in tensors}, separators=(",", ":"), ensure_ascii=True
        ),
    }
    index = {name: {"dtype": code, "shape": list(arr.shape)} for name, code, arr in tensors}
    meta["header_sha256"] = _header_digest(index, meta)
    packed = json.dumps(meta, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return {name: arr for name, _, arr in tensors}, {METADATA_KEY: packed}


def _write_file(tensors: dict[str, np.ndarray], path: Path, metadata: dict[str, str]) -> None:
    """Frame and write the file with ``safetensors.numpy.save_file`` (a module-level seam, so tests can
    simulate a crash mid-write).  It streams the arrays to the file: ``safetensors.numpy.save`` first
    builds the whole file in one buffer, which took 2-3x as long for MiniLM's 87 MiB (same bytes)."""
    try:
        safetensors.numpy.save_file(tensors, os.fspath(path), metadata=metadata)
    except (OSError, MemoryError):
        raise
    except Exception as e:  # the library refuses something the checks above let through
        raise BundleError(f"safetensors cannot write this program: {e}") from None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported here (e.g. Windows): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_temp(directory: Path, stem: str) -> tuple[int, Path]:
    """A new, exclusively created file next to the target; created with mode 0o666 so the umask applies
    exactly as for a plain ``open(path, "wb")``."""
    for _ in range(100):
        tmp = directory / f".{stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a unique temporary file", str(directory))


def save(program: Program, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write ``program`` to the bundle file ``path`` and return its path.

    The file is written to a temporary file in the same directory, fsynced and renamed over ``path``, so
    ``path`` is never seen half written.  With ``overwrite=False`` an existing ``path`` raises
    :class:`FileExistsError`.  Raises :class:`BundleError` when the program cannot be stored (a constant
    of another dtype than float32/int64, meta that is not plain JSON, tensor names that collide) and
    :class:`~nmengine.program.ProgramError` when it is inconsistent.
    """
    if not isinstance(program, Program):
        raise TypeError(f"save expects a nmengine Program, got {type(program).__name__}")
    program.validate()
    path = Path(os.fspath(path))
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "cannot save a bundle over a directory", str(path))
    if not overwrite and path.exists():
        raise FileExistsError(errno.EEXIST, "bundle file exists (pass overwrite=True to replace it)", str(path))
    tensors, metadata = _file_parts(program)

    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = _open_temp(directory, path.name)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # 0o666 less the umask, as open(path, "wb") gives
        os.close(fd)  # the library writes the file by name (a seam for tests); the name is ours alone
        _write_file(tensors, tmp, metadata)
        os.chmod(tmp, mode)  # the library creates its file with mode 0o600
        with open(tmp, "rb+") as f:
            (n,) = struct.unpack("<Q", _read_exact(f, 8))
            if n > MAX_HEADER_BYTES:
                raise BundleError(f"bundle header would be {n} bytes, over the {MAX_HEADER_BYTES}-byte limit")
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic "create only if absent"
            except FileExistsError:
                raise FileExistsError(
                    errno.EEXIST, "bundle file exists (pass overwrite=True to replace it)", str(path)
                ) from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise FileExistsError(
                        errno.EEXIST, "bundle file exists (pass overwrite=True to replace it)", str(path)
                    ) from None
                os.replace(tmp, path)
            else:
                os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)
    return path


# ---------------------------------------------------------------------------------------------
# load / inspect: parsing and validation
# ---------------------------------------------------------------------------------------------
class _Entry:
    """One validated tensor index entry."""

    __slots__ = ("name", "code", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, code: str, shape: tuple[int, ...], begin: int, end: int) -> None:
        self.name, self.code, self.dtype, self.shape, self.begin, self.end = name, code, DTYPES[code], shape, begin, end

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


class _Parsed:
    """Everything :func:`_read_header` validated: the header, the tensor index and the program JSON."""

    def __init__(
        self,
        path: Path,
        file_size: int,
        header_len: int,
        raw_meta: dict[str, str],
        meta: dict[str, str],
        version: int,
        entries: dict[str, _Entry],
        checksums: dict[str, str],
        program: dict[str, Any],
    ) -> None:
        self.path, self.file_size, self.header_len, self.raw_meta = path, file_size, header_len, raw_meta
        self.meta, self.version, self.entries, self.checksums, self.program = meta, version, entries, checksums, program

    @property
    def data_start(self) -> int:
        return 8 + self.header_len


def _open_checked(path: str | os.PathLike[str]) -> tuple[Path, Any, int]:
    path = Path(os.fspath(path))
    st = os.stat(path)  # FileNotFoundError for a missing path
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "expected a bundle file, got a directory", str(path))
    if not stat.S_ISREG(st.st_mode):
        raise BundleError(f"{path}: not a regular file")
    f = open(path, "rb")
    return path, f, os.fstat(f.fileno()).st_size


def _read_exact(f: Any, n: int) -> bytes:
    chunks, left = [], n
    while left:
        b = f.read(min(left, 1 << 30))
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def _read_header(path: Path, f: Any, file_size: int) -> _Parsed:
    """Read and validate the header of an open bundle file: framing, JSON, metadata, tensor index,
    header and program digests, and the program JSON schema.  Tensor data is not touched."""

    def fail(msg: str) -> BundleError:
        return BundleError(f"{path}: {msg}")

    # -- framing ------------------------------------------------------------------------------
    if file_size < 8:
        raise fail(f"file too short ({file_size} bytes) to hold the 8-byte header length; not a bundle")
    (n,) = struct.unpack("<Q", _read_exact(f, 8))
    if n > MAX_HEADER_BYTES:
        raise fail(f"header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit (corrupt or not a bundle)")
    if n > file_size - 8:
        raise fail(
            f"header length {n} is larger than the rest of the file ({file_size - 8} bytes): truncated or corrupt"
        )
    if n < 2:
        raise fail(f"header length {n} is too small for a JSON object")
    raw = _read_exact(f, n)
    if len(raw) != n:
        raise fail("file shrank while being read")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail(f"header is not UTF-8 ({e.reason} at byte {8 + e.start})") from None
    if not text.startswith("{"):
        raise fail("header does not start with '{' (not a safetensors/bundle file)")
    header = _parse_json(text, "header", allow_nonfinite=False, fail=fail)
    if not isinstance(header, dict):
        raise fail(f"header is a JSON {type(header).__name__}, not an object")

    # -- metadata: format and version first, so newer files fail with the clearest message -------
    raw_meta = header.get("__metadata__")
    if raw_meta is None:
        raise fail("no __metadata__ in the header: a plain safetensors file, not an nmengine bundle")
    if not isinstance(raw_meta, dict) or not all(isinstance(v, str) for v in raw_meta.values()):
        raise fail("__metadata__ must be an object of string values")
    meta = raw_meta
    if set(raw_meta) == {METADATA_KEY}:  # the metadata as one JSON object (files written now)
        meta = _parse_json(raw_meta[METADATA_KEY], f"__metadata__[{METADATA_KEY!r}]", allow_nonfinite=False, fail=fail)
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise fail(f"__metadata__[{METADATA_KEY!r}] must be a JSON object of string values")
    if "format" not in meta:
        raise fail("__metadata__ has no 'format': not an nmengine bundle")
    if meta["format"] != FORMAT:
        raise fail(f"unknown format {meta['format']!r}; expected {FORMAT!r}")
    sv = meta.get("schema_version")
    if sv is None:
        raise fail("__metadata__ has no 'schema_version'")
    if not (sv.isascii() and sv.isdigit()) or len(sv) > 9 or int(sv) < 1:
        raise fail(f"schema_version {sv!r} is not a positive integer")
    version = int(sv)
    if version > SCHEMA_VERSION:
        raise fail(
            f"unsupported schema version {version}: this nmengine reads bundles up to version "
            f"{SCHEMA_VERSION}; upgrade nmengine to load it"
        )
    missing = [k for k in _META_KEYS if k not in meta]
    if missing:
        raise fail(f"__metadata__ is missing {missing}")
    unknown = sorted(k for k in meta if k not in _META_KEYS)
    if unknown:
        raise fail(f"__metadata__ has unknown keys {unknown}")
    try:
        datetime.fromisoformat(meta["created"].replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"'created' {meta['created']!r} is not an ISO-8601 timestamp") from None

    # -- tensor index -------------------------------------------------------------------------
    entries: dict[str, _Entry] = {}
    for name, ent in header.items():
        if name == "__metadata__":
            continue
        where = f"tensor {name!r}"
        if not isinstance(ent, dict) or set(ent) != {"dtype", "shape", "data_offsets"}:
            keys = sorted(ent) if isinstance(ent, dict) else type(ent).__name__
            raise fail(f"{where}: entry must have exactly 'dtype', 'shape', 'data_offsets', got {keys}")
        code, shape, offs = ent["dtype"], ent["shape"], ent["data_offsets"]
        if code not in DTYPES:
            raise fail(f"{where}: unsupported dtype {code!r}; bundles hold {sorted(DTYPES)}")
        if not isinstance(shape, list) or len(shape) > MAX_RANK or not all(_is_int(d) and d >= 0 for d in shape):
            raise fail(f"{where}: shape {shape!r} must be a list of at most {MAX_RANK} non-negative integers")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)):
            raise fail(f"{where}: data_offsets {offs!r} must be [begin, end] integers")
        begin, end = offs
        if begin < 0 or end < begin:
            raise fail(f"{where}: data_offsets [{begin}, {end}] must satisfy 0 <= begin <= end")
        need = math.prod(shape) * DTYPES[code].itemsize
        if end - begin != need:
            raise fail(
                f"{where}: data_offsets [{begin}, {end}] span {end - begin} bytes but shape {shape} of "
                f"{code} needs {need}"
            )
        entries[name] = _Entry(name, code, tuple(shape), begin, end)
    data_size = file_size - 8 - n

    def past_the_end(ent: _Entry) -> BundleError:
        return fail(
            f"tensor {ent.name!r}: data_offsets [{ent.begin}, {ent.end}] run past the data section "
            f"({data_size} bytes): truncated or corrupt"
        )

    for ent in entries.values():
        if ent.begin > data_size:
            raise past_the_end(ent)
    # In file order: a misplaced tensor is named for its overlap or gap before a truncation shows at the end.
    pos = 0
    for ent in sorted(entries.values(), key=lambda ent: (ent.begin, ent.end)):
        if ent.begin < pos:
            raise fail(
                f"tensor {ent.name!r}: data_offsets [{ent.begin}, {ent.end}] overlap the previous tensor "
                f"(which ends at {pos})"
            )
        if ent.begin > pos:
            raise fail(
                f"tensor {ent.name!r}: data_offsets start at {ent.begin}, leaving a gap after byte {pos}; "
                f"tensors must be contiguous"
            )
        if ent.end > data_size:
            raise past_the_end(ent)
        pos = ent.end
    if pos != data_size:
        raise fail(
            f"data section is {data_size} bytes but the tensors cover {pos}: "
            f"{'trailing bytes' if data_size > pos else 'truncated'}"
        )

    # -- digests of the program JSON and of the header --------------------------------------------
    if (
        not _is_hex64(meta["program_sha256"])
        or _sha256(meta["program"].encode("utf-8", "surrogatepass")) != meta["program_sha256"]
    ):
        raise fail("program checksum mismatch: the program JSON is corrupt or was edited")
    if not _is_hex64(meta["header_sha256"]) or _header_digest(header, meta) != meta["header_sha256"]:
        raise fail("header checksum mismatch: the header is corrupt or was edited")

    # -- per-tensor checksums -----------------------------------------------------------------
    checksums = _parse_json(meta["checksums"], "'checksums'", allow_nonfinite=False, fail=fail)
    if not isinstance(checksums, dict) or not all(_is_hex64(v) for v in checksums.values()):
        raise fail("'checksums' must map tensor names to lowercase hex SHA-256 digests")
    if set(checksums) != set(entries):
        extra, absent = sorted(set(checksums) - set(entries)), sorted(set(entries) - set(checksums))
        raise fail(f"'checksums' does not match the tensors (no such tensor: {extra}; no checksum: {absent})")

    program = _parse_json(meta["program"], "'program'", allow_nonfinite=True, fail=fail)
    _check_program_doc(program, entries, fail)
    return _Parsed(path, file_size, n, raw_meta, meta, version, entries, checksums, program)


def _check_program_doc(doc: Any, entries: Mapping[str, _Entry], fail: Callable[[str], BundleError]) -> None:
    """Schema of the program JSON, and that its constants and tables are exactly the file's tensors."""
    if not isinstance(doc, dict):
        raise fail(f"'program' is a JSON {type(doc).__name__}, not an object")
    if set(doc) != set(_PROGRAM_KEYS):
        raise fail(f"'program' must have exactly the keys {list(_PROGRAM_KEYS)}, got {sorted(doc)}")
    if not isinstance(doc["name"], str):
        raise fail("program name must be a string")
    if not isinstance(doc["meta"], dict):
        raise fail("program meta must be an object")
    if not isinstance(doc["inputs"], list):
        raise fail("program inputs must be a list")
    names: set[str] = set()
    for i, spec in enumerate(doc["inputs"]):
        if not (isinstance(spec, dict) and set(spec) == {"name", "shape", "dtype"} and isinstance(spec["name"], str)):
            raise fail(f"program input {i}: must be {{'name', 'shape', 'dtype'}}")
        if spec["name"] in names:
            raise fail(f"program input {spec['name']!r} is declared twice")
        names.add(spec["name"])
        if spec["dtype"] not in ("float32", "int64"):
            raise fail(f"program input {spec['name']!r}: dtype {spec['dtype']!r} must be 'float32' or 'int64'")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(d is None or (_is_int(d) and d >= 0) for d in shape):
            raise fail(f"program input {spec['name']!r}: shape {shape!r} must list non-negative integers or null")
    if not isinstance(doc["outputs"], list) or not all(isinstance(o, str) for o in doc["outputs"]):
        raise fail("program outputs must be a list of strings")
    if not isinstance(doc["ops"], list):
        raise fail("program ops must be a list")
    for i, op in enumerate(doc["ops"]):
        where = f"op {i}"
        if not isinstance(op, dict):
            raise fail(f"{where}: must be an object")
        missing = [k for k in _OP_REQUIRED if k not in op]
        unknown = sorted(k for k in op if k not in _OP_REQUIRED + _OP_OPTIONAL)
        if missing or unknown:
            raise fail(f"{where}: missing keys {missing}, unknown keys {unknown}")
        if op["kind"] not in ROLES:
            raise fail(f"{where}: unknown op kind {op['kind']!r}; expected one of {sorted(ROLES)}")
        if not isinstance(op["out"], str):
            raise fail(f"{where} ({op['kind']}): 'out' must be a string")
        args = op["args"]
        if not isinstance(args, dict) or not all(isinstance(v, str) for v in args.values()):
            raise fail(f"{where} ({op['kind']} -> {op['out']!r}): 'args' must map roles to buffer names")
        if not isinstance(op.get("attrs", {}), dict):
            raise fail(f"{where} ({op['kind']} -> {op['out']!r}): 'attrs' must be an object")
        for k in ("layer", "what"):
            if not isinstance(op.get(k, ""), str):
                raise fail(f"{where} ({op['kind']} -> {op['out']!r}): {k!r} must be a string")
    consts = doc["constants"]
    if not isinstance(consts, list) or not all(isinstance(c, str) for c in consts) or len(set(consts)) != len(consts):
        raise fail("program constants must be a list of distinct names")
    tables = doc["tables"]
    if not isinstance(tables, list):
        raise fail("program tables must be a list")
    keys: set[str] = set()
    for i, t in enumerate(tables):
        if not (isinstance(t, dict) and set(t) == {"key", "name", "meta"} and isinstance(t["key"], str)):
            raise fail(f"program table {i}: must be {{'key', 'name', 'meta'}}")
        if t["key"] in keys:
            raise fail(f"PWL table {t['key']!r} is declared twice")
        keys.add(t["key"])
        if not (t["name"] is None or isinstance(t["name"], str)) or not isinstance(t["meta"], dict):
            raise fail(f"PWL table {t['key']!r}: name must be a string or null and meta an object")

    expected: dict[str, tuple[str, ...] | None] = {c: None for c in consts}
    for t in tables:
        for part in TABLE_PARTS:
            name = _table_tensor(t["key"], part)
            if name in expected:
                raise fail(f"tensor name {name!r} is claimed by a constant and a PWL table")
            expected[name] = ("F32",)
    absent = [k for k in expected if k not in entries]
    if absent:
        raise fail(f"tensor(s) referenced by the program are missing from the file: {absent}")
    extra = [k for k in entries if k not in expected]
    if extra:
        raise fail(f"tensor(s) in the file are not referenced by the program: {extra}")
    for t in tables:
        for part in TABLE_PARTS:
            e = entries[_table_tensor(t["key"], part)]
            if e.code != "F32" or len(e.shape) != 1:
                raise fail(f"PWL table {t['key']!r}: {part} must be a 1-D F32 tensor, got {e.code} {list(e.shape)}")


def _library_check(parsed: _Parsed) -> None:
    """Open the validated file with the safetensors library (``safe_open``): it must accept the framing
    and see the same metadata and tensor index as :func:`_read_header`.  Whatever the library raises --
    a Rust panic included, which is not an ``Exception`` -- becomes a :class:`BundleError`."""

    def fail(msg: str) -> BundleError:
        return BundleError(f"{parsed.path}: {msg}")

    try:
        with safetensors.safe_open(os.fspath(parsed.path), framework="np") as sf:
            meta = sf.metadata() or {}
            names = set(sf.keys())
    except Exception as e:
        raise fail(f"the safetensors library refuses the file: {e}") from None
    except BaseException as e:  # pyo3's PanicException derives from BaseException
        if type(e).__name__ != "PanicException":
            raise
        raise fail(f"the safetensors library failed on the file: {e}") from None
    if meta != parsed.raw_meta or names != set(parsed.entries):
        raise fail("the safetensors library reads another header than nmengine did (did the file change?)")


def _map_data(f: Any, parsed: _Parsed) -> np.ndarray:
    """The data section as a read-only uint8 view of a memory map of the file."""
    size = parsed.file_size - parsed.data_start
    if size == 0:
        out = np.empty(0, dtype=np.uint8)
    else:
        mm = _mmap.mmap(f.fileno(), 0, access=_mmap.ACCESS_READ)
        if len(mm) != parsed.file_size:
            raise BundleError(f"{parsed.path}: file changed size while being loaded")
        # The array (and every tensor view of it) keeps the map alive; it is unmapped when they are freed.
        out = np.frombuffer(mm, dtype=np.uint8, count=size, offset=parsed.data_start)
    out.setflags(write=False)
    return out


def _read_data(f: Any, parsed: _Parsed) -> np.ndarray:
    """The data section read into memory (one read into a 64-byte aligned buffer), read-only."""
    size = parsed.file_size - parsed.data_start
    raw = np.empty(size + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    out = raw[start : start + size]
    f.seek(parsed.data_start)
    got = 0
    view = out.data  # the buffer as a writable memoryview
    while got < size:
        n = f.readinto(view[got:])
        if not n:
            raise BundleError(f"{parsed.path}: file changed size while being loaded")
        got += n
    out.setflags(write=False)
    return out


def _check_sums(data: np.ndarray, parsed: _Parsed) -> None:
    """Every tensor's SHA-256 against the header's, on up to 4 threads for large bundles; the first
    mismatch in file order is reported."""

    def bad(name: str) -> bool:
        e = parsed.entries[name]
        return _sha256(data[e.begin : e.end]) != parsed.checksums[name]

    names = list(parsed.entries)
    workers = min(4, os.cpu_count() or 1, len(names))
    if workers > 1 and data.size >= 8 << 20:
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="nm-bundle") as ex:
            verdicts = list(ex.map(bad, names))
    else:
        verdicts = [bad(n) for n in names]
    for name, wrong in zip(names, verdicts):
        if wrong:
            raise BundleError(f"{parsed.path}: checksum mismatch for tensor {name!r}: the data is corrupt")


def _tensor(data: np.ndarray, e: _Entry) -> np.ndarray:
    arr = data[e.begin : e.end].view(e.dtype).reshape(e.shape)
    if e.dtype.byteorder == "<" and sys.byteorder == "big":
        arr = arr.astype(e.dtype.newbyteorder("="))
    elif arr.size and arr.ctypes.data % e.dtype.alignment:
        arr = arr.copy()  # a file from another writer with an unaligned tensor: copy rather than misalign
    arr.setflags(write=False)
    return arr


def load(path: str | os.PathLike[str], *, mmap: bool = True) -> Program:
    """Load the bundle at ``path`` into a :class:`~nmengine.program.Program`.

    Validates the whole file before any tensor is used (see the module docstring and ``docs/bundle.md``)
    and raises :class:`BundleError` naming the problem.  With ``mmap=True`` the constants and tables are
    read-only views of a memory map of the file (pages load on demand; the map lives as long as the
    arrays); with ``mmap=False`` they are read into memory once (views of one buffer).  A
    missing path raises :class:`FileNotFoundError`, a directory :class:`IsADirectoryError`.
    """
    path, f, file_size = _open_checked(path)
    with f:
        parsed = _read_header(path, f, file_size)
        data = _map_data(f, parsed) if mmap else _read_data(f, parsed)
    _library_check(parsed)
    _check_sums(data, parsed)

    def fail(msg: str) -> BundleError:
        return BundleError(f"{path}: {msg}")

    def tensor(name: str) -> np.ndarray:
        return _tensor(data, parsed.entries[name])

    doc = parsed.program
    constants = {c: tensor(c) for c in doc["constants"]}
    tables: dict[str, PWLTable] = {}
    for t in doc["tables"]:
        vec = {p: tensor(_table_tensor(t["key"], p)) for p in TABLE_PARTS}
        try:
            tables[t["key"]] = PWLTable(
                vec["breakpoints"], vec["slopes"], vec["intercepts"], name=t["name"], meta=t["meta"]
            )
        except (ValueError, TypeError) as e:
            raise fail(f"PWL table {t['key']!r} is invalid: {e}") from None
    inputs = {s["name"]: InputSpec(tuple(s["shape"]), s["dtype"]) for s in doc["inputs"]}
    ops = [Op.from_dict(d) for d in doc["ops"]]
    try:
        program = Program(inputs, doc["outputs"], ops, constants, tables, name=doc["name"], meta=doc["meta"])
    except (ProgramError, ValueError, TypeError) as e:
        raise fail(f"invalid program: {e}") from None
    if parsed.version < 2:  # written before fused row ops existed: fuse its softmax / LayerNorm chains
        from .compile import fuse_program

        program = fuse_program(program)
    return program


def inspect(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Summary of a bundle from its header alone (tensor data is neither read nor checksummed).

    The header is fully validated (framing, format, version, tensor index, header and program
    checksums, program schema), so a file ``inspect`` accepts fails :func:`load` only on corrupt tensor
    data, bad PWL tables or an inconsistent op graph.  Returns a JSON-ready dict with ``schema_version``,
    ``producer``, ``created``, ``name``, ``n_ops``, ``ops_by_kind``, ``inputs``, ``outputs``,
    ``n_tensors``, ``n_constants``, ``n_tables``, byte sizes (``file_bytes``, ``header_bytes``,
    ``data_bytes``, ``constant_bytes``, ``table_bytes``), ``n_parameters``, per-tensor ``tensors`` and
    ``budget`` (the budgeted compile's record, ``None`` unless compiled with ``segments="auto"``).
    """
    path, f, file_size = _open_checked(path)
    with f:
        p = _read_header(path, f, file_size)
    _library_check(p)
    doc = p.program
    by_kind: dict[str, int] = {}
    for op in doc["ops"]:
        by_kind[op["kind"]] = by_kind.get(op["kind"], 0) + 1
    table_tensors = {_table_tensor(t["key"], part) for t in doc["tables"] for part in TABLE_PARTS}
    order = sorted(p.entries.values(), key=lambda e: e.begin)
    return {
        "path": str(path),
        "format": p.meta["format"],
        "schema_version": p.version,
        "producer": p.meta["producer"],
        "created": p.meta["created"],
        "name": doc["name"],
        "n_ops": len(doc["ops"]),
        "ops_by_kind": by_kind,
        "inputs": {s["name"]: {"shape": s["shape"], "dtype": s["dtype"]} for s in doc["inputs"]},
        "outputs": list(doc["outputs"]),
        "n_tensors": len(p.entries),
        "n_constants": len(doc["constants"]),
        "n_tables": len(doc["tables"]),
        "file_bytes": p.file_size,
        "header_bytes": p.header_len,
        "data_bytes": p.file_size - p.data_start,
        "constant_bytes": sum(e.nbytes for e in order if e.name not in table_tensors),
        "table_bytes": sum(e.nbytes for e in order if e.name in table_tensors),
        "n_parameters": sum(math.prod(e.shape) for e in order if e.name not in table_tensors),
        "tensors": [{"name": e.name, "dtype": e.code, "shape": list(e.shape), "nbytes": e.nbytes} for e in order],
        "data_verified": False,
        "budget": doc["meta"].get("budget"),
    }


def format_inspect(info: Mapping[str, Any], *, tensors: bool = False) -> str:
    """Human-readable text of an :func:`inspect` result (for ``nmengine inspect``)."""

    def size(n: float) -> str:
        for unit in ("B", "KiB", "MiB", "GiB"):
            if n < 1024 or unit == "GiB":
                return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1024
        return ""  # unreachable

    ops = ", ".join(f"{k} {v}" for k, v in sorted(info["ops_by_kind"].items(), key=lambda kv: -kv[1]))
    ins = ", ".join(
        f"{k}: {v['dtype']}[{', '.join('?' if d is None else str(d) for d in v['shape'])}]"
        for k, v in info["inputs"].items()
    )
    lines = [
        f"{info['path']}: {info['format']} v{info['schema_version']}, {size(info['file_bytes'])}",
        f"  program   {info['name']!r}, {info['n_ops']} ops ({ops})",
        f"  inputs    {ins}",
        f"  outputs   {', '.join(info['outputs'])}",
        f"  tensors   {info['n_tensors']} ({info['n_constants']} constants, {size(info['constant_bytes'])}, "
        f"{info['n_parameters']:,} values; {info['n_tables']} PWL tables, {size(info['table_bytes'])})",
        f"  header    {size(info['header_bytes'])}",
        f"  producer  {info['producer']}, created {info['created']}",
    ]
    if tensors:
        lines += [f"    {t['name']:<40s} {t['dtype']} {t['shape']} {size(t['nbytes'])}" for t in info["tensors"]]
    return "\n".join(lines)
