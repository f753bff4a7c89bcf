"""Fidelity of matrixized sentence embeddings against exact ones, and the segments/fidelity trade-off.

Used by the benchmarks, the tests and ``docs/bert.md``; importable as ``nm.hf.fidelity`` and ``nm.hf.tradeoff``.
"""

from __future__ import annotations

import sys
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .config import PathLike, resolve_model_dir
from .embedder import SentenceEmbedder
from .load import DEFAULT_FUNCTIONS

__all__ = ["fidelity", "tradeoff"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def fidelity(approx: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Agreement of two embedding matrices of the same sentences.

    ``mean_cosine``/``min_cosine`` between matching rows, and ``nn_agreement``: the share of sentences
    whose most similar *other* sentence (cosine) is the same under both embeddings.
    """
    a, e = _unit(approx), _unit(exact)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"fidelity needs two (n, d) arrays of one shape, got {a.shape} and {e.shape}")
    cos = np.sum(a * e, axis=1)
    out = {"n": int(a.shape[0]), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    if a.shape[0] >= 2:
        sa, se = a @ a.T, e @ e.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(se, -np.inf)
        out["nn_agreement"] = float(np.mean(sa.argmax(1) == se.argmax(1)))
    return out


def tradeoff(
    model_dir: Optional[PathLike] = None,
    segment_counts: Sequence[int] = (8, 16, 32, 64),
    *,
    n_sentences: int = 500,
    batch_size: int = 32,
    functions: Optional[Mapping[str, Mapping[str, Any]]] = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Fidelity of matrixized vs exact embeddings on ``n_sentences`` corpus sentences per segment count.

    Every function gets ``segments`` segments on the ranges of :data:`DEFAULT_FUNCTIONS` (``functions``
    overrides apply on top).  Returns one row per segment count with the :func:`fidelity` figures.
    The exact embeddings are computed once.  Command line::

        python -c "from nmengine import hf; [print(r) for r in hf.tradeoff()]"
    """
    from .. import corpus

    sents = corpus.sentences(n_sentences)
    d = resolve_model_dir(model_dir)
    exact = None
    rows = []
    for seg in segment_counts:
        # every function gets `seg` segments; the default ranges (lo/hi) are kept
        fns = {
            fn: {**DEFAULT_FUNCTIONS.get(fn, {}), "segments": seg}
            for fn in ("exp", "reciprocal", "rsqrt", "gelu", "gelu_tanh")
        }
        for k, v in (functions or {}).items():
            fns[k] = {**fns.get(k, {}), **dict(v)}
        emb = SentenceEmbedder(d, segments=seg, functions=fns)
        if exact is None:
            exact = emb.with_mode("exact").encode(sents, batch_size=batch_size)
        approx = emb.encode(sents, batch_size=batch_size)
        row = {"segments": seg, **fidelity(approx, exact)}
        rows.append(row)
        if progress:
            print(f"segments={seg}: {row}", file=sys.stderr)
    return rows
