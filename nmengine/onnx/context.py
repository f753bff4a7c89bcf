"""The importer's working state: values of the ONNX graph, the op rule registry, emission helpers.

Every ONNX value is a :class:`Val`:

* ``const``: a numpy array known at import time (initializers, ``Constant``, folded subgraphs).  Shape
  vectors with free dims are object arrays whose entries are ints or :class:`~.dims.Sym`.
* ``tensor``: a Program buffer (``name``) with a logical ``shape`` (ints and Syms) and a ``dtype``:
  ``"f"`` float32, ``"i"`` int64, ``"b"`` boolean stored as float32 0/1 (so masks are arithmetic).

A value may be *lazily broadcast*: a ``const`` whose array is smaller than its logical ``shape``
(``ConstantOfShape`` of a dynamic shape) or a ``tensor`` produced by ``Expand``; elementwise consumers
broadcast it for free, others materialise it (:meth:`Ctx.dense`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..compile.lower import Builder
from ..spec import Layer
from .dims import Dim, Sym, fresh, is_static
from .errors import OnnxImportError, UnsupportedModelError

__all__ = ["RULES", "Ctx", "Rule", "Unsupported", "Val", "broadcast_dims", "rule"]


class Unsupported(Exception):
    """Raised by a rule for an operator form it cannot matrixize (collected into UnsupportedModelError)."""


@dataclass
class Val:
    kind: str  # "const" | "tensor"
    shape: tuple  # logical shape (ints and Syms)
    dtype: str = "f"  # "f" | "i" | "b"
    arr: np.ndarray | None = None  # const (read it through :attr:`array`)
    name: str = ""  # tensor buffer

    @property
    def is_const(self) -> bool:
        return self.kind == "const"

    @property
    def array(self) -> np.ndarray:
        """The constant's array (physical shape; may be smaller than ``shape`` when lazily broadcast).

        Rules read it after checking :attr:`is_const`; on a run-time tensor it raises
        :class:`~.errors.OnnxImportError` rather than handing back None.
        """
        if self.arr is None:
            raise OnnxImportError(
                f"expected a constant known at import time, got the run-time tensor {self.name!r} of shape {self.shape}"
            )
        return self.arr

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def pshape(self) -> tuple:
        """Physical shape: the array's, or the buffer's (may be smaller than ``shape`` when broadcast)."""
        return self.array.shape if self.kind == "const" else getattr(self, "_pshape", self.shape)


def const(arr: Any, shape: tuple | None = None) -> Val:
    a = np.asarray(arr)
    kind = "b" if a.dtype == np.bool_ else ("i" if a.dtype.kind in "iuO" else "f")
    return Val("const", tuple(a.shape) if shape is None else tuple(shape), kind, arr=a)


def tensor(name: str, shape: Sequence[Dim], dtype: str = "f", pshape: Sequence[Dim] | None = None) -> Val:
    v = Val("tensor", tuple(shape), dtype, name=name)
    if pshape is not None and tuple(pshape) != tuple(shape):
        v._pshape = tuple(pshape)  # type: ignore[attr-defined]
    return v


def broadcast_dims(*shapes: Sequence[Dim]) -> tuple:
    """Numpy broadcasting of symbolic shapes (1 broadcasts; equal dims stay)."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        ds = [d for d in dims if not (isinstance(d, int) and d == 1)]
        if not ds:
            out.append(1)
            continue
        first = ds[0]
        for d in ds[1:]:
            if d != first:
                if isinstance(d, int) and isinstance(first, int):
                    raise OnnxImportError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                if isinstance(first, Sym) and isinstance(d, int):
                    first = d  # the symbol must equal the static size
        out.append(first)
    return tuple(out)


@dataclass
class Rule:
    fn: Callable[..., list[Val]]
    how: str  # how it is matrixized (the op table's middle column)
    tables: str  # which PWL tables it uses


#: ONNX op type -> rule
RULES: dict[str, Rule] = {}


def rule(*op_types: str, how: str, tables: str = "-") -> Callable:
    def deco(fn: Callable[..., list[Val]]) -> Callable[..., list[Val]]:
        for t in op_types:
            RULES[t] = Rule(fn, how, tables)
        return fn

    return deco


class Ctx:
    """Emission state of one import: the Builder, symbolic-dim sources, the node being lowered."""

    def __init__(self, opset: int, max_len: int) -> None:
        self.b = Builder(max_len)
        self.opset = opset
        self.max_len = max_len
        self.layer = Layer("onnx", "graph", [], "")
        self.node: Any = None
        self.sym_source: dict[Sym, tuple[str, int]] = {}  # symbol -> (buffer, axis) carrying it
        self._n = 0
        self._const_names: dict[int, str] = {}

    # -- naming -------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._n += 1
        base = self.node.output[0] if self.node is not None and self.node.output else "v"
        return f"{base}#{hint}{self._n}"

    def out_name(self, i: int = 0) -> str:
        return self.node.output[i]

    # -- emission -----------------------------------------------------------------------------
    def op(self, kind: str, out: str, args: dict[str, str], what: str, **attrs: Any) -> str:
        return self.b.op(kind, out, args, self.layer, what, **attrs)

    def pwl(self, fn: str, role: str | None = None) -> dict[str, str]:
        return self.b.pwl(self.layer, role or fn, fn)

    def const_name(self, arr: np.ndarray, hint: str = "c") -> str:
        """A Program constant holding ``arr`` (float32, or int64 for integer arrays)."""
        a = np.asarray(arr)
        if a.dtype == object:
            raise Unsupported("a shape that depends on a dynamic dim is used as data")
        a = np.ascontiguousarray(a, dtype=np.int64 if a.dtype.kind in "iu" else np.float32)
        name = f"{self.layer.name}/{hint}{len(self.b.constants)}"
        while name in self.b.constants:
            name += "_"
        self.b.constants[name] = a
        return name

    def buf(self, v: Val, hint: str = "c") -> str:
        """The buffer name of a value (constants become Program constants, at their physical shape)."""
        if v.is_const:
            a = v.array
            if id(a) not in self._const_names:
                self._const_names[id(a)] = self.const_name(a.astype(np.float32) if v.dtype == "b" else a, hint)
            return self._const_names[id(a)]
        return v.name

    def record_dims(self, name: str, shape: Sequence[Dim]) -> None:
        for ax, d in enumerate(shape):
            if isinstance(d, Sym) and d not in self.sym_source:
                self.sym_source[d] = (name, ax)

    def dense(self, v: Val) -> Val:
        """A tensor (buffer) whose physical shape equals its logical shape."""
        if v.is_const:
            if tuple(v.array.shape) == tuple(v.shape):
                return tensor(self.buf(v), v.shape, v.dtype)
            if not is_static(v.shape):
                if v.array.size == 1:
                    return self.dynamic_fill(v)
                arr = v.array.reshape((1,) * (len(v.shape) - v.array.ndim) + v.array.shape)
                return self.dense(tensor(self.buf(const(arr)), v.shape, v.dtype, pshape=arr.shape))
            arr = np.broadcast_to(v.array, v.shape)
            return tensor(self.buf(const(np.ascontiguousarray(arr))), v.shape, v.dtype)
        if v.pshape == v.shape:
            return v
        if not is_static(v.shape):
            # broadcast by a product with ones of the missing (dynamic) dims, sliced to the run-time size
            ps = (1,) * (len(v.shape) - len(v.pshape)) + tuple(v.pshape)
            fill_shape = tuple(d if ps[i] != d else 1 for i, d in enumerate(v.shape))
            ones = self.dense(const(np.ones((1,) * len(v.shape), np.float32), fill_shape))
            out = self.op(
                "scale", self.fresh("expand"), {"x": v.name, "mul": ones.name}, "expand (broadcast by a diagonal GEMM)"
            )
            return tensor(out, v.shape, v.dtype)
        ones_name = self.const_name(np.ones([int(d) for d in v.shape], np.float32), "ones")
        out = self.op(
            "scale", self.fresh("expand"), {"x": v.name, "mul": ones_name}, "expand (broadcast by a diagonal GEMM)"
        )
        return tensor(out, v.shape, v.dtype)

    def dynamic_fill(self, v: Val) -> Val:
        """A constant-valued tensor of a dynamic shape: a slice of a max-size constant, ends from buffers."""
        if v.array.size != 1:
            raise Unsupported(f"a constant broadcast to the dynamic shape {v.shape}")
        if len(v.shape) > 4:
            raise Unsupported("dynamic fill of rank > 4")
        dims: list[int] = []
        like_ends: list[list[int]] = []
        like: str | None = None
        for ax, d in enumerate(v.shape):
            if isinstance(d, Sym):
                src = self.sym_source.get(d)
                if src is None or (like is not None and src[0] != like):
                    raise Unsupported(f"cannot tell the size of dynamic dim {d} at run time")
                like = src[0]
                like_ends.append([ax, src[1]])
                dims.append(self.max_len)
            else:
                dims.append(int(d))
        if like is None:
            raise OnnxImportError(f"dynamic_fill: the shape {v.shape} has no dynamic dim (use dense)")
        base = self.const_name(np.full(dims, v.array.reshape(()), dtype=np.float32), "fill")
        out = self.op(
            "slice",
            self.fresh("fill"),
            {"x": base, "like": like},
            "constant of a dynamic shape",
            starts=[0] * len(dims),
            ends=dims,
            axes=list(range(len(dims))),
            like_ends=like_ends,
        )
        return tensor(out, v.shape, v.dtype)

    def unsupported(self, msg: str) -> Unsupported:
        return Unsupported(msg)


def new_sym_for(dim_param: str, seen: dict[str, Sym]) -> Sym:
    if dim_param not in seen:
        seen[dim_param] = Sym(1, (dim_param,)) if dim_param else fresh("dim")
    return seen[dim_param]


__all__ += ["UnsupportedModelError", "const", "new_sym_for", "tensor"]
