"""Symbolic tensor dimensions: a free dim (batch, sequence) is a monomial over named symbols.

Exporters compute shapes at run time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``); the
importer folds those chains at import time with the free dims kept symbolic, so a ``Reshape`` to
``[batch, seq, heads, d]`` becomes the Program's ``[0, 0, heads, d]`` and stays dynamic.

A dim is a plain ``int`` or a :class:`Sym` ``coeff * s1 * s2 ...``.  Products and exact quotients of
monomials are monomials; anything else (``seq - 1``) is an opaque new symbol.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Union

import numpy as np

__all__ = ["Dim", "Sym", "ddiv", "dmul", "dprod", "fresh", "is_static"]

_counter = [0]


class Sym:
    """``coeff * prod(factors)``; factors are symbol names (sorted, with repetition)."""

    __slots__ = ("coeff", "factors")

    def __init__(self, coeff: int, factors: Sequence[str]) -> None:
        self.coeff = int(coeff)
        self.factors = tuple(sorted(factors))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sym) and self.coeff == other.coeff and self.factors == other.factors

    def __hash__(self) -> int:
        return hash((self.coeff, self.factors))

    def __repr__(self) -> str:
        body = "*".join(self.factors)
        return body if self.coeff == 1 else f"{self.coeff}*{body}"


Dim = Union[int, Sym]


def fresh(hint: str = "d") -> Sym:
    """A new opaque symbol (for dims the importer cannot express, e.g. ``seq - 1``)."""
    _counter[0] += 1
    return Sym(1, (f"{hint}~{_counter[0]}",))


def _mono(d: Dim) -> tuple[int, Counter]:
    if isinstance(d, Sym):
        return d.coeff, Counter(d.factors)
    return int(d), Counter()


def _make(coeff: int, factors: Counter) -> Dim:
    fs = list(factors.elements())
    return int(coeff) if not fs or coeff == 0 else Sym(coeff, fs)


def dmul(a: Dim, b: Dim) -> Dim:
    ca, fa = _mono(a)
    cb, fb = _mono(b)
    return _make(ca * cb, fa + fb)


def ddiv(a: Dim, b: Dim) -> Dim | None:
    """``a / b`` when it is exact, else None."""
    ca, fa = _mono(a)
    cb, fb = _mono(b)
    if cb == 0 or ca % cb or any(fa[k] < v for k, v in fb.items()):
        return None
    return _make(ca // cb, fa - fb)


def dprod(dims: Sequence[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dmul(out, d)
    return out


def is_static(shape: Sequence[Dim]) -> bool:
    return all(not isinstance(d, Sym) for d in shape)


def to_int_array(values: np.ndarray) -> np.ndarray | None:
    """An object array of dims as int64 when every entry is an int, else None."""
    if any(isinstance(v, Sym) for v in values.ravel()):
        return None
    return values.astype(np.int64)
