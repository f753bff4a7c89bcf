"""A small numpy Tensor with reverse-mode automatic differentiation.

Design
------
A :class:`Tensor` wraps a float numpy array (``float32`` by default, ``float64`` when created from a
float64 array: the dtype follows the inputs, which is how the gradient checks run in double precision).
Every differentiable operation returns a new Tensor that remembers its ``parents`` and a ``backward``
closure mapping the output gradient to one gradient per parent (``None`` for "no gradient").  The
closures may return gradients in the *broadcast* shape of the output; the engine sums them back to each
parent's shape (:func:`unbroadcast`) and casts them to the parent's dtype, so broadcasting never has to
be handled op by op.

:meth:`Tensor.backward` orders the graph topologically (iteratively, no recursion limit), pushes the
gradients from the output towards the leaves and *accumulates* them into ``.grad`` of the leaf tensors
that have ``requires_grad=True`` (parameters, or inputs of a gradient check).  Intermediate gradients
live only during the backward pass, and the graph is released afterwards (one backward per forward,
like PyTorch's default).  Inside ``with no_grad():`` operations build no graph at all, which is what
evaluation uses.

Only the generic tensor algebra lives here (arithmetic with broadcasting, matmul, reductions, reshape,
transpose, indexing); neural-network operations are in :mod:`nmengine.train.functional`, built with the
same :func:`make_result` helper.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import numpy as np

__all__ = [
    "Tensor",
    "Parameter",
    "no_grad",
    "enable_grad",
    "is_grad_enabled",
    "as_tensor",
    "make_result",
    "unbroadcast",
]

_GRAD_ENABLED = True

BackwardFn = Callable[[np.ndarray], Sequence[Union[np.ndarray, None]]]


class no_grad:
    """Context manager (and decorator) that disables graph construction: ``with no_grad(): ...``."""

    def __enter__(self) -> "no_grad":
        global _GRAD_ENABLED
        self._prev = _GRAD_ENABLED
        _GRAD_ENABLED = False
        return self

    def __exit__(self, *exc: Any) -> None:
        global _GRAD_ENABLED
        _GRAD_ENABLED = self._prev

    def __call__(self, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with no_grad():
                return fn(*args, **kwargs)

        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper


class enable_grad(no_grad):
    """Re-enable graph construction inside a ``no_grad`` block."""

    def __enter__(self) -> "enable_grad":
        global _GRAD_ENABLED
        self._prev = _GRAD_ENABLED
        _GRAD_ENABLED = True
        return self


def is_grad_enabled() -> bool:
    """Whether operations currently record a graph."""
    return _GRAD_ENABLED


def _as_float_array(data: Any, dtype: Any = None) -> np.ndarray:
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=dtype)
    arr = np.asarray(data)
    if arr.dtype == np.float32 or arr.dtype == np.float64:
        return arr
    return arr.astype(np.float32)


class Tensor:
    """An n-d float array with an optional gradient.

    Parameters
    ----------
    data:
        Array-like.  float32 and float64 numpy arrays keep their dtype; anything else becomes float32
        unless ``dtype`` is given.
    requires_grad:
        Whether :meth:`backward` should accumulate a gradient into ``.grad`` for this (leaf) tensor.
    """

    __slots__ = ("data", "grad", "requires_grad", "_parents", "_backward", "op")
    __array_priority__ = 1000  # numpy scalars/arrays on the left defer to Tensor's reflected operators

    def __init__(self, data: Any, requires_grad: bool = False, dtype: Any = None) -> None:
        self.data: np.ndarray = _as_float_array(data, dtype)
        if self.data.dtype.kind != "f":
            raise TypeError(f"Tensor data must be floating point, got {self.data.dtype}")
        self.grad: np.ndarray | None = None
        self.requires_grad = bool(requires_grad)
        self._parents: tuple[Tensor, ...] = ()
        self._backward: BackwardFn | None = None
        self.op = ""

    # -- basic properties ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def size(self) -> int:
        return self.data.size

    def __len__(self) -> int:
        return len(self.data)

    def numpy(self) -> np.ndarray:
        """The underlying array (not a copy)."""
        return self.data

    def item(self) -> float:
        return float(self.data.item())

    def detach(self) -> "Tensor":
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def __repr__(self) -> str:
        g = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self.op!r}" if self.op else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{g}{op})"

    # -- autograd -----------------------------------------------------------------------------
    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf) * grad into ``.grad`` of every leaf that requires a gradient.

        ``grad`` defaults to 1 for a single-element tensor and is required otherwise.
        """
        if not self.requires_grad:
            raise RuntimeError(
                "backward() on a tensor that does not require grad (built under no_grad or from constants, "
                "or backward() already ran through its graph)"
            )
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() needs an explicit gradient for a non-scalar tensor of shape {self.shape}"
                )
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"backward(): gradient shape {grad.shape} does not match tensor shape {self.shape}")

        order = _topological_order(self)
        grads: dict[int, np.ndarray] = {id(self): grad}
        for node in reversed(order):
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None:  # a leaf
                node.grad = g.copy() if node.grad is None else node.grad + g
                continue
            parent_grads = node._backward(g)
            if len(parent_grads) != len(node._parents):
                raise RuntimeError(
                    f"op {node.op!r}: backward returned {len(parent_grads)} grads for {len(node._parents)} inputs"
                )
            for p, pg in zip(node._parents, parent_grads):
                if pg is None or not p.requires_grad:
                    continue
                pg = unbroadcast(np.asarray(pg), p.shape)
                if pg.dtype != p.dtype:
                    pg = pg.astype(p.dtype)
                k = id(p)
                grads[k] = pg if k not in grads else grads[k] + pg
            # Free the graph as we go: one backward per forward.
            node._parents = ()
            node._backward = None
            node.requires_grad = False

    def zero_grad(self) -> None:
        self.grad = None

    # -- arithmetic ---------------------------------------------------------------------------
    def __add__(self, other: Any) -> "Tensor":
        o = as_tensor(other, like=self)
        _check_broadcast("add", self.shape, o.shape)
        return make_result(self.data + o.data, (self, o), lambda g: (g, g), "add")

    __radd__ = __add__

    def __sub__(self, other: Any) -> "Tensor":
        o = as_tensor(other, like=self)
        _check_broadcast("sub", self.shape, o.shape)
        return make_result(self.data - o.data, (self, o), lambda g: (g, -g), "sub")

    def __rsub__(self, other: Any) -> "Tensor":
        return as_tensor(other, like=self) - self

    def __mul__(self, other: Any) -> "Tensor":
        o = as_tensor(other, like=self)
        _check_broadcast("mul", self.shape, o.shape)
        a, b = self.data, o.data
        return make_result(a * b, (self, o), lambda g: (g * b, g * a), "mul")

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> "Tensor":
        o = as_tensor(other, like=self)
        _check_broadcast("div", self.shape, o.shape)
        a, b = self.data, o.data
        out = a / b
        return make_result(out, (self, o), lambda g: (g / b, -g * out / b), "div")

    def __rtruediv__(self, other: Any) -> "Tensor":
        return as_tensor(other, like=self) / self

    def __neg__(self) -> "Tensor":
        return make_result(-self.data, (self,), lambda g: (-g,), "neg")

    def __pow__(self, exponent: float) -> "Tensor":
        if isinstance(exponent, Tensor):
            raise TypeError("Tensor ** Tensor is not supported; use exp/log")
        e = float(exponent)
        a = self.data
        return make_result(a**e, (self,), lambda g: (g * e * a ** (e - 1.0),), "pow")

    def __matmul__(self, other: Any) -> "Tensor":
        return matmul(self, as_tensor(other, like=self))

    def __rmatmul__(self, other: Any) -> "Tensor":
        return matmul(as_tensor(other, like=self), self)

    # -- reductions ---------------------------------------------------------------------------
    def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> "Tensor":
        shape = self.shape
        ax = _norm_axes(axis, self.ndim)

        def backward(g: np.ndarray) -> tuple[np.ndarray]:
            if not keepdims:
                g = np.expand_dims(g, ax)
            return (np.broadcast_to(g, shape),)

        return make_result(self.data.sum(axis=ax, keepdims=keepdims), (self,), backward, "sum")

    def mean(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> "Tensor":
        ax = _norm_axes(axis, self.ndim)
        n = int(np.prod([self.shape[i] for i in ax])) if ax else 1
        return self.sum(axis=ax, keepdims=keepdims) * (1.0 / max(n, 1))

    def max(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> "Tensor":
        """Maximum; the gradient is shared equally among tied maxima."""
        ax = _norm_axes(axis, self.ndim)
        a = self.data
        m = a.max(axis=ax, keepdims=True)

        def backward(g: np.ndarray) -> tuple[np.ndarray]:
            if not keepdims:
                g = np.expand_dims(g, ax)
            mask = (a == m).astype(a.dtype)
            return (mask * (g / mask.sum(axis=ax, keepdims=True)),)

        out = m if keepdims else np.squeeze(m, axis=ax)
        return make_result(out, (self,), backward, "max")

    # -- shape --------------------------------------------------------------------------------
    def reshape(self, *shape: Any) -> "Tensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        old = self.shape
        try:
            out = self.data.reshape(shape)
        except ValueError as e:
            raise ValueError(f"cannot reshape tensor of shape {old} into {shape}") from e
        return make_result(out, (self,), lambda g: (g.reshape(old),), "reshape")

    def transpose(self, *axes: int) -> "Tensor":
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        if not axes:
            axes = tuple(reversed(range(self.ndim)))
        if sorted(a % self.ndim for a in axes) != list(range(self.ndim)):
            raise ValueError(f"transpose axes {axes} are not a permutation of {self.ndim} dims")
        inv = tuple(np.argsort([a % self.ndim for a in axes]))
        return make_result(self.data.transpose(axes), (self,), lambda g: (g.transpose(inv),), "transpose")

    @property
    def T(self) -> "Tensor":
        return self.transpose()

    def swapaxes(self, a: int, b: int) -> "Tensor":
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(*axes)

    def flatten(self, start_dim: int = 1) -> "Tensor":
        """Merge dims ``start_dim..`` into one (default: keep the batch dim)."""
        return self.reshape(self.shape[:start_dim] + (-1,))

    def __getitem__(self, index: Any) -> "Tensor":
        if isinstance(index, Tensor):
            index = index.data
        shape, dtype = self.shape, self.dtype
        basic = _is_basic_index(index)

        def backward(g: np.ndarray) -> tuple[np.ndarray]:
            full = np.zeros(shape, dtype=dtype)
            if basic:
                full[index] = g
            else:
                np.add.at(full, index, g)
            return (full,)

        return make_result(self.data[index], (self,), backward, "getitem")


class Parameter(Tensor):
    """A leaf tensor owned by a module: ``requires_grad=True``, float32 unless created otherwise."""

    __slots__ = ()

    def __init__(self, data: Any, dtype: Any = None) -> None:
        arr = np.asarray(data.data if isinstance(data, Tensor) else data)
        if dtype is None:
            dtype = arr.dtype if arr.dtype in (np.float32, np.float64) else np.float32
        super().__init__(np.array(arr, dtype=dtype), requires_grad=True)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


# ---------------------------------------------------------------------------------------------
# helpers shared with functional.py


def as_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """``x`` if it is a Tensor, else a constant Tensor (in ``like``'s dtype when given)."""
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return Tensor(np.asarray(x, dtype=like.dtype))
    return Tensor(x)


def make_result(data: np.ndarray, parents: tuple[Tensor, ...], backward: BackwardFn, op: str = "") -> Tensor:
    """Wrap ``data`` as the output of an op; record the graph when some parent requires a gradient."""
    out = Tensor.__new__(Tensor)
    out.data = data if isinstance(data, np.ndarray) else np.asarray(data)
    out.grad = None
    out.op = op
    if _GRAD_ENABLED and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents = parents
        out._backward = backward
    else:
        out.requires_grad = False
        out._parents = ()
        out._backward = None
    return out


def unbroadcast(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``g`` over the dimensions that broadcasting added or stretched to reach ``shape``."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"gradient of shape {g.shape} cannot be reduced to {shape}")
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, (gs, s) in enumerate(zip(g.shape, shape)) if s == 1 and gs != 1)
    if stretched:
        g = g.sum(axis=stretched, keepdims=True)
    if g.shape != shape:
        raise ValueError(f"gradient of shape {g.shape} cannot be reduced to {shape}")
    return g


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """Batched matrix product of two tensors with ``ndim >= 2`` (leading dims broadcast)."""
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"matmul needs operands with ndim >= 2, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul shape mismatch: {a.shape} @ {b.shape} (inner dims {a.shape[-1]} != {b.shape[-2]})")
    _check_broadcast("matmul", a.shape[:-2], b.shape[:-2])
    A, B = a.data, b.data

    def backward(g: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        ga = g @ np.swapaxes(B, -1, -2) if a.requires_grad else None
        gb = np.swapaxes(A, -1, -2) @ g if b.requires_grad else None
        return ga, gb

    return make_result(A @ B, (a, b), backward, "matmul")


def _check_broadcast(op: str, s1: tuple[int, ...], s2: tuple[int, ...]) -> None:
    for x, y in zip(reversed(s1), reversed(s2)):
        if x != y and x != 1 and y != 1:
            raise ValueError(f"{op}: shapes {s1} and {s2} do not broadcast")


def _norm_axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (int(axis),)
    out = []
    for a in axis:
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} out of range for a tensor with {ndim} dims")
        out.append(a % ndim)
    return tuple(sorted(out))


def _is_basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (slice, int, np.integer, type(None), type(Ellipsis))) for i in items)


def _topological_order(root: Tensor) -> list[Tensor]:
    order: list[Tensor] = []
    seen: set[int] = set()
    stack: list[tuple[Tensor, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        for p in node._parents:
            if p.requires_grad and id(p) not in seen:
                stack.append((p, False))
    return order
