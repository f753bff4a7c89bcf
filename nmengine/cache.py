"""A disk cache of compiled programs, so a model is compiled once and later starts from a bundle.

Compiling a checkpoint (reading its weights, calibrating and fitting the PWL tables) takes seconds;
loading the compiled :class:`~nmengine.program.Program` from a bundle takes milliseconds.  Frontends
call :func:`cached` with a *key*: everything the compiled program depends on (a fingerprint of the
source files, every compile option, the nmengine version and bundle schema).  The first call compiles
and saves ``<cache dir>/<sha256 of the key>.nmb`` atomically; later calls load it.

The cache directory is, in order: the ``cache_dir`` argument, the ``NMENGINE_CACHE_DIR`` environment
variable, ``$XDG_CACHE_HOME/nmengine``, ``~/.cache/nmengine``.  ``NMENGINE_CACHE=0`` turns caching off.
A cache entry that fails to load (truncated, corrupted, written by an incompatible version) is
recompiled and replaced, with a warning; a cache directory that cannot be written is a warning too,
never an error: the cache only ever saves time.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .program import Program

__all__ = ["cache_dir", "cache_enabled", "cached", "code_fingerprint", "file_fingerprint", "key_digest"]

_CHUNK = 1 << 20


def cache_enabled() -> bool:
    """False when ``NMENGINE_CACHE`` is ``0``, ``false``, ``no`` or ``off``."""
    return os.environ.get("NMENGINE_CACHE", "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The directory compiled programs are cached in (see the module docstring for the order)."""
    if override is not None:
        return Path(override)
    env = os.environ.get("NMENGINE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nmengine"


def file_fingerprint(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 over the names and contents of ``paths`` (missing files count as absent, not as errors)."""
    h = hashlib.sha256()
    for p in paths:
        path = Path(p)
        h.update(path.name.encode("utf-8") + b"\0")
        if not path.is_file():
            h.update(b"<absent>\0")
            continue
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the package's Python sources: a cached program never outlives the code that compiled it."""
    root = Path(__file__).resolve().parent
    return file_fingerprint(sorted(root.rglob("*.py")))


def key_digest(key: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``key`` (sorted keys; tuples as lists)."""
    from . import __version__
    from .bundle import SCHEMA_VERSION

    full = {"nmengine": __version__, "bundle_schema": SCHEMA_VERSION, **key}
    text = json.dumps(full, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cached(
    key: Mapping[str, Any],
    build: Callable[[], Program],
    *,
    directory: str | os.PathLike[str] | None = None,
    enabled: bool | None = None,
) -> Program:
    """Load the program cached under ``key``, or ``build()`` it and cache it.

    ``enabled=None`` follows :func:`cache_enabled`; ``False`` always builds and writes nothing.
    """
    if enabled is None:
        enabled = cache_enabled()
    if not enabled:
        return build()
    from .bundle import BundleError, load, save

    path = cache_dir(directory) / f"{key_digest(key)}.nmb"
    if path.is_file():
        try:
            return load(path)
        except (BundleError, OSError) as exc:
            warnings.warn(f"nmengine cache: {path} could not be loaded ({exc}); recompiling", stacklevel=2)
    program = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save(program, path)
    except OSError as exc:
        warnings.warn(f"nmengine cache: could not write {path} ({exc}); the program was not cached", stacklevel=2)
    return program
