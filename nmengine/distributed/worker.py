"""What runs inside a worker process: the per-process model cache and partition-independent batching.

Every distributed entry point (Dask tasks, Ray actors, ``nmengine embed-corpus`` shards) sends only the
*path* of the model to a worker.  The worker process loads it on first use through :func:`load_embedder`
or :func:`load_program` and keeps it for the life of the process, so a model is compiled (HF directory)
or memory-mapped (``.nmb`` bundle) once per process and never pickled through a scheduler.
:func:`load_counts` reports how often this process loaded each model (tests and users check it).

:func:`embed_texts` is the batching every entry point uses.  A sentence's embedding depends on the length
it is padded to (about 1e-6 between paddings, see docs/distributed.md), so batching the way
:meth:`~nmengine.hf.SentenceEmbedder.encode` does (sorted, padded to the longest of each batch) would make
a row depend on its neighbours, i.e. on how the corpus was partitioned.  :func:`embed_texts` instead
groups sentences of exactly the same token count and encodes each group with no padding at all; a row
then equals ``SentenceEmbedder.encode([sentence])`` bit for bit, whatever partition, batch, worker or
retry computed it.
"""

from __future__ import annotations

import os
import threading
from collections import Counter, defaultdict
from typing import Any, Optional, Sequence, Union

import numpy as np

__all__ = [
    "resolve_model",
    "load_embedder",
    "load_program",
    "load_counts",
    "embedding_dim",
    "set_threads",
    "embed_texts",
    "check_texts",
]

PathLike = Union[str, "os.PathLike[str]"]

_lock = threading.RLock()
_embedders: dict[str, Any] = {}
_programs: dict[str, Any] = {}
_loads: Counter = Counter()


def resolve_model(model: PathLike) -> str:
    """Absolute path of ``model``: an existing ``.nmb`` bundle file or Hugging Face model directory."""
    if isinstance(model, bytes) or not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a path (a .nmb bundle or a Hugging Face directory), got {type(model).__name__}")
    path = os.path.abspath(os.fspath(model))
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"model {path!r} does not exist (expected a .nmb bundle or a Hugging Face "
            "directory, reachable at the same path on every worker)"
        )
    return path


def set_threads(threads: Optional[int]) -> None:
    """Set this process's core threads (``None`` leaves them as they are)."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    from ..kernels import get_num_threads, set_num_threads

    if get_num_threads() != int(threads):
        set_num_threads(int(threads))


def load_embedder(model: PathLike, *, mode: str = "matrixized", max_length: Optional[int] = None):
    """This process's :class:`~nmengine.hf.SentenceEmbedder` for ``model`` (loaded on first use).

    A bundle is memory-mapped once (shared with :func:`load_program`); a Hugging Face directory is
    compiled once (or read from the compile cache, :mod:`nmengine.cache`).  The Program is shared by
    every ``mode`` and ``max_length`` of one model path.
    """
    from ..hf import SentenceEmbedder

    path = resolve_model(model)
    with _lock:
        base = _embedders.get(path)
        if base is None:
            if os.path.isdir(path):
                base = SentenceEmbedder(path)
                _loads[path] += 1
                _programs.setdefault(path, base.program)
            else:
                base = SentenceEmbedder(program=load_program(path))
            _embedders[path] = base
        if max_length is not None and max_length != base.max_length:
            key = f"{path}\0max_length={max_length}"
            emb = _embedders.get(key)
            if emb is None:  # same Program, other truncation
                emb = SentenceEmbedder(
                    path if os.path.isdir(path) else None, program=base.program, max_length=max_length
                )
                _embedders[key] = emb
            base = emb
    return base if mode == base.mode else base.with_mode(mode)


def load_program(model: PathLike):
    """This process's :class:`~nmengine.program.Program` for ``model`` (loaded on first use).

    A bundle file is memory-mapped (:func:`nmengine.load`); a Hugging Face directory is compiled once
    (shared with :func:`load_embedder`).
    """
    path = resolve_model(model)
    with _lock:
        prog = _programs.get(path)
        if prog is not None:
            return prog
        if os.path.isdir(path):
            return load_embedder(path).program
        from ..bundle import load

        prog = load(path, mmap=True)
        _loads[path] += 1
        _programs[path] = prog
        return prog


def load_counts() -> dict[str, Any]:
    """``{"pid": ..., "loads": {model path: times loaded}}`` for this process."""
    with _lock:
        return {"pid": os.getpid(), "loads": dict(_loads)}


def embedding_dim(model: PathLike) -> int:
    """Embedding width of ``model`` without compiling it when that can be avoided.

    A Hugging Face directory's ``config.json`` gives it directly; a bundle is memory-mapped (cheap).
    """
    path = resolve_model(model)
    if os.path.isdir(path):
        from ..hf import read_config

        return int(read_config(path).hidden_size)
    hidden = load_program(path).meta.get("hf", {}).get("config", {}).get("hidden_size")
    return int(hidden) if hidden else int(load_embedder(path).dim)


def check_texts(texts: Any, where: str = "texts") -> list[str]:
    """``texts`` as a list of str, or TypeError naming the first item that is not one."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{where} must be a sequence of str, got a single {type(texts).__name__}")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{where}[{i}] must be a str, got {type(t).__name__} ({t!r:.60})")
    return items


def embed_texts(embedder: Any, texts: Sequence[str], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
    """Embed ``texts`` with ``embedder`` (a SentenceEmbedder): ``(n, dim)`` float32, in input order.

    Sentences are grouped by exact token count and each group is encoded in batches of at most
    ``batch_size`` with no padding, so row ``i`` equals ``embedder.encode([texts[i]], normalize=...)``
    bit for bit however ``texts`` was cut into partitions.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    items = check_texts(texts)
    out = np.zeros((len(items), int(embedder.dim)), dtype=np.float32)
    if not items:
        return out
    groups: dict[int, list[int]] = defaultdict(list)
    for s in range(0, len(items), 1024):  # token counts, a bounded slice at a time
        lengths = np.asarray(embedder.tokenize(items[s : s + 1024])["attention_mask"]).sum(axis=1)
        for i, n in enumerate(lengths.tolist(), start=s):
            groups[int(n)].append(i)
    for n in sorted(groups, reverse=True):
        idx = groups[n]
        for s in range(0, len(idx), int(batch_size)):
            chunk = idx[s : s + int(batch_size)]
            out[chunk] = embedder.encode([items[i] for i in chunk], batch_size=len(chunk), normalize=normalize)
    return out
