"""Differentiable neural-network operations on :class:`~nmengine.train.tensor.Tensor`.

Each op computes its forward pass with numpy and registers a backward closure through
:func:`~nmengine.train.tensor.make_result`.  Heavy ops have hand-written ("fused") backward passes:

* ``linear`` and ``conv2d`` are GEMMs; ``conv2d`` uses im2col (one strided copy per kernel offset,
  then a single ``(Co, Ci*kh*kw) @ (Ci*kh*kw, N*Ho*Wo)`` product) and col2im for the input gradient;
* ``layer_norm``, ``batch_norm2d``, ``softmax``, ``log_softmax`` and ``cross_entropy`` use the closed-form
  gradients of normalisation/softmax;
* max pooling remembers the arg-max kernel offset per output.

The rest (attention, mean pooling, patchify, ...) is composed from Tensor algebra and so is
differentiated by the engine.

Nonlinearity hooks
------------------
``layer_norm``, ``softmax``, ``multi_head_self_attention``, ``l2_normalize`` and masked ``mean_pool`` accept ``nl``: a callable
``nl(role, x, valid=None) -> Tensor`` evaluating the named scalar function ``role`` ("exp",
"reciprocal", "rsqrt") on ``x``.  When ``nl`` is given the op switches from its fused exact form to the
*decomposed* form the compiler emits (LayerNorm: ``rsqrt(var + eps)``; softmax: ``e = exp(x - rowmax)``,
``r = reciprocal(sum e)``, ``p = e * r``; masked mean pooling: ``reciprocal(token count)``;
L2 normalisation: ``rsqrt(sum x^2 + eps^2)``), so that approximation-aware training (:mod:`.aat`) can swap
each scalar function for a PWL table and the engine differentiates the result exactly.  ``valid``
marks the entries that are meaningful (attention keys that are not padding), for activation recording.

:func:`pwl` evaluates a :class:`~nmengine.pwl.PWLTable` in the tensor's dtype (bit-identical to the
table's own float32 evaluation for float32 inputs); its backward uses the table's slope on the segment,
or the exact derivative of the approximated function (``straight_through=True``).

Why one module of this length: it is the trainer's op library, one forward/backward pair per op; the
scalar functions' exact forms come from :mod:`nmengine.approx.catalog`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
from scipy.special import erf, expit

from ..approx.catalog import gelu as exact_gelu
from ..approx.catalog import gelu_derivative as exact_gelu_derivative
from ..approx.catalog import gelu_tanh as exact_gelu_tanh
from ..approx.catalog import gelu_tanh_derivative as exact_gelu_tanh_derivative
from ..pwl import PWLTable
from .tensor import Tensor, as_tensor, make_result

__all__ = [
    "relu",
    "gelu",
    "gelu_tanh",
    "tanh",
    "sigmoid",
    "silu",
    "exp",
    "log",
    "reciprocal",
    "rsqrt",
    "sqrt",
    "linear",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "global_avg_pool",
    "batch_norm2d",
    "layer_norm",
    "softmax",
    "log_softmax",
    "cross_entropy",
    "distillation_loss",
    "mse_loss",
    "embedding",
    "patchify",
    "position_add",
    "mean_pool",
    "l2_normalize",
    "concat",
    "stack",
    "dropout",
    "multi_head_self_attention",
    "pwl",
    "flatten",
    "EXACT_FUNCTIONS",
    "EXACT_DERIVATIVES",
    "exact_nonlinearity",
    "Nonlinearity",
]

#: ``nl(role, x, valid=None) -> Tensor``: how decomposed ops evaluate their scalar functions.
Nonlinearity = Callable[..., Tensor]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v!r}")
    return t  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# scalar functions: numpy forms (float64 references for tables and straight-through gradients)


# (the GELU forms are the approximation catalog's: one definition for tables, trainer and runtime)
def _np_silu_grad(x: np.ndarray) -> np.ndarray:
    s = expit(x)
    return s * (1.0 + x * (1.0 - s))


#: role/op name -> exact numpy function (used to fit reference tables and by tests).
EXACT_FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": exact_gelu,
    "gelu_tanh": exact_gelu_tanh,
    "tanh": np.tanh,
    "sigmoid": expit,
    "silu": lambda x: x * expit(x),
    "exp": np.exp,
    "reciprocal": lambda x: 1.0 / x,
    "rsqrt": lambda x: 1.0 / np.sqrt(x),
}

#: role/op name -> exact derivative (for straight-through approximation-aware training).
EXACT_DERIVATIVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "relu": lambda x: (x > 0).astype(x.dtype),
    "gelu": exact_gelu_derivative,
    "gelu_tanh": exact_gelu_tanh_derivative,
    "tanh": lambda x: 1.0 - np.tanh(x) ** 2,
    "sigmoid": lambda x: expit(x) * (1.0 - expit(x)),
    "silu": _np_silu_grad,
    "exp": np.exp,
    "reciprocal": lambda x: -1.0 / (x * x),
    "rsqrt": lambda x: -0.5 / (x * np.sqrt(x)),
}


def _elementwise(x: Tensor, fn: Callable[[np.ndarray], np.ndarray], op: str) -> Tensor:
    X = x.data
    y = np.asarray(fn(X), dtype=X.dtype)
    grad = EXACT_DERIVATIVES[op]
    return make_result(y, (x,), lambda g: (g * grad(X).astype(X.dtype, copy=False),), op)


def relu(x: Tensor) -> Tensor:
    """max(x, 0); the gradient at 0 is 0."""
    X = x.data
    mask = X > 0
    return make_result(np.where(mask, X, X.dtype.type(0)), (x,), lambda g: (g * mask,), "relu")


def gelu(x: Tensor) -> Tensor:
    """GELU with the exact Gaussian CDF: ``0.5 x (1 + erf(x / sqrt 2))``."""
    X = x.data
    cdf = 0.5 * (1.0 + erf(X * (1.0 / _SQRT2)))

    def backward(g: np.ndarray) -> tuple[np.ndarray]:
        return (g * (cdf + X * _INV_SQRT_2PI * np.exp(-0.5 * X * X)),)

    return make_result(X * cdf, (x,), backward, "gelu")


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU, tanh approximation (``gelu_tanh`` in the spec)."""
    return _elementwise(x, exact_gelu_tanh, "gelu_tanh")


def tanh(x: Tensor) -> Tensor:
    X = x.data
    y = np.tanh(X)
    return make_result(y, (x,), lambda g: (g * (1.0 - y * y),), "tanh")


def sigmoid(x: Tensor) -> Tensor:
    X = x.data
    y = expit(X).astype(X.dtype, copy=False)
    return make_result(y, (x,), lambda g: (g * y * (1.0 - y),), "sigmoid")


def silu(x: Tensor) -> Tensor:
    """x * sigmoid(x)."""
    return _elementwise(x, EXACT_FUNCTIONS["silu"], "silu")


def exp(x: Tensor) -> Tensor:
    y = np.exp(x.data)
    return make_result(y, (x,), lambda g: (g * y,), "exp")


def log(x: Tensor) -> Tensor:
    X = x.data
    return make_result(np.log(X), (x,), lambda g: (g / X,), "log")


def reciprocal(x: Tensor) -> Tensor:
    X = x.data
    y = 1.0 / X
    return make_result(y, (x,), lambda g: (-g * y * y,), "reciprocal")


def rsqrt(x: Tensor) -> Tensor:
    X = x.data
    y = 1.0 / np.sqrt(X)
    return make_result(y, (x,), lambda g: (-0.5 * g * y / X,), "rsqrt")


def sqrt(x: Tensor) -> Tensor:
    y = np.sqrt(x.data)
    return make_result(y, (x,), lambda g: (0.5 * g / y,), "sqrt")


_EXACT_OPS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": relu,
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "silu": silu,
    "exp": exp,
    "reciprocal": reciprocal,
    "rsqrt": rsqrt,
}


def exact_nonlinearity(role: str, x: Tensor, valid: np.ndarray | None = None) -> Tensor:
    """The exact differentiable op for ``role`` (the default ``nl`` of decomposed ops)."""
    try:
        return _EXACT_OPS[role](x)
    except KeyError:
        raise KeyError(f"unknown nonlinearity role {role!r}; expected one of {sorted(_EXACT_OPS)}") from None


def pwl(x: Tensor, table: PWLTable, role: str | None = None, *, straight_through: bool = False) -> Tensor:
    """Evaluate a PWL table on ``x`` (differentiably).

    The segment is the table's own lookup of ``float32(x)``; the value ``slope * x + intercept`` is computed
    in ``x``'s dtype, so float32 results equal ``table(x)`` bit for bit.  The gradient is the segment's
    slope, or with ``straight_through=True`` the exact derivative of ``role`` (the function the table
    approximates) at ``x``.
    """
    if not isinstance(table, PWLTable):
        raise TypeError(f"pwl() needs a PWLTable, got {type(table).__name__}")
    X = x.data
    dt = X.dtype
    seg = table.segment_index(X)
    s = table.slopes[seg]
    c = table.intercepts[seg]
    if dt != np.float32:
        s, c = s.astype(dt), c.astype(dt)
    xc = np.minimum(np.maximum(X, dt.type(table.xmin)), dt.type(table.xmax))
    y = s * xc + c
    if straight_through:
        if role not in EXACT_DERIVATIVES:
            raise ValueError(
                f"straight-through gradient needs a known role, got {role!r}; expected one of {sorted(EXACT_DERIVATIVES)}"
            )
        deriv = EXACT_DERIVATIVES[role]
        return make_result(y, (x,), lambda g: (g * deriv(X).astype(dt, copy=False),), f"pwl:{role}")
    return make_result(y, (x,), lambda g: (g * s,), f"pwl:{role}")


# ---------------------------------------------------------------------------------------------
# GEMM layers


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``x @ weight.T + bias`` over the last axis; ``weight`` is ``(out, in)`` (PyTorch layout)."""
    X, W = x.data, weight.data
    if W.ndim != 2 or X.shape[-1] != W.shape[1]:
        raise ValueError(
            f"linear: input (..., {X.shape[-1] if X.ndim else '?'}) does not match weight {W.shape} (out, in)"
        )
    out = X @ W.T
    parents: tuple[Tensor, ...] = (x, weight)
    if bias is not None:
        if bias.shape != (W.shape[0],):
            raise ValueError(f"linear: bias shape {bias.shape} != ({W.shape[0]},)")
        out = out + bias.data
        parents = (x, weight, bias)

    def backward(g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        g2 = g.reshape(-1, W.shape[0])
        gx = g @ W if x.requires_grad else None
        gw = g2.T @ X.reshape(-1, W.shape[1]) if weight.requires_grad else None
        if bias is None:
            return gx, gw
        return gx, gw, g2.sum(axis=0)

    return make_result(out, parents, backward, "linear")


def _conv_out(size: int, k: int, s: int, p: int, what: str) -> int:
    o = (size + 2 * p - k) // s + 1
    if o <= 0:
        raise ValueError(f"{what}: input size {size} with kernel {k}, stride {s}, padding {p} gives no output")
    return o


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
) -> Tensor:
    """2-D convolution (cross-correlation), NCHW input, ``(Co, Ci, kh, kw)`` weight, zero padding."""
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"conv2d: need x (N, C, H, W) and weight (Co, Ci, kh, kw), got {x.shape} and {weight.shape}")
    N, C, H, Wd = x.shape
    Co, Ci, kh, kw = weight.shape
    if C != Ci:
        raise ValueError(f"conv2d: input has {C} channels but weight expects {Ci}")
    sh, sw = _pair(stride, "stride")
    ph, pw = _pair(padding, "padding")
    Ho, Wo = _conv_out(H, kh, sh, ph, "conv2d"), _conv_out(Wd, kw, sw, pw, "conv2d")
    X = x.data
    dt = X.dtype
    xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else X
    cols = np.empty((C, kh, kw, N, Ho, Wo), dtype=dt)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw].transpose(1, 0, 2, 3)
    cols2 = cols.reshape(C * kh * kw, N * Ho * Wo)
    W2 = weight.data.reshape(Co, -1)
    out = np.ascontiguousarray((W2 @ cols2).reshape(Co, N, Ho, Wo).transpose(1, 0, 2, 3))
    parents: tuple[Tensor, ...] = (x, weight)
    if bias is not None:
        if bias.shape != (Co,):
            raise ValueError(f"conv2d: bias shape {bias.shape} != ({Co},)")
        out += bias.data.reshape(1, Co, 1, 1)
        parents = (x, weight, bias)

    def backward(g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        g2 = g.transpose(1, 0, 2, 3).reshape(Co, -1)
        gw = (g2 @ cols2.T).reshape(weight.shape) if weight.requires_grad else None
        gx = None
        if x.requires_grad:
            dcols = (W2.T @ g2).reshape(C, kh, kw, N, Ho, Wo)
            dxp = np.zeros(xp.shape, dtype=dt)
            for i in range(kh):
                for j in range(kw):
                    dxp[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw] += dcols[:, i, j].transpose(1, 0, 2, 3)
            gx = dxp[:, :, ph : ph + H, pw : pw + Wd]
        if bias is None:
            return gx, gw
        return gx, gw, g2.sum(axis=1)

    return make_result(out, parents, backward, "conv2d")


# ---------------------------------------------------------------------------------------------
# pooling


def _pool_geometry(x: Tensor, kernel: Any, stride: Any, padding: Any, what: str) -> tuple[int, ...]:
    if x.ndim != 4:
        raise ValueError(f"{what}: need x (N, C, H, W), got shape {x.shape}")
    kh, kw = _pair(kernel, "kernel")
    sh, sw = _pair(kernel if stride is None else stride, "stride")
    ph, pw = _pair(padding, "padding")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"{what}: padding {padding} must be at most half the kernel {kernel}")
    H, W = x.shape[2:]
    return kh, kw, sh, sw, ph, pw, _conv_out(H, kh, sh, ph, what), _conv_out(W, kw, sw, pw, what)


def max_pool2d(
    x: Tensor, kernel: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0
) -> Tensor:
    """Max pooling (stride defaults to the kernel; padding counts as -inf).  Ties go to the first offset."""
    kh, kw, sh, sw, ph, pw, Ho, Wo = _pool_geometry(x, kernel, stride, padding, "max_pool2d")
    X = x.data
    H, W = X.shape[2:]
    xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf) if (ph or pw) else X
    wins = np.stack([xp[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw] for i in range(kh) for j in range(kw)])
    arg = wins.argmax(axis=0)  # first maximal kernel offset
    best = np.take_along_axis(wins, arg[None], axis=0)[0]

    def backward(g: np.ndarray) -> tuple[np.ndarray]:
        dxp = np.zeros(xp.shape, dtype=X.dtype)
        for idx in range(kh * kw):
            i, j = divmod(idx, kw)
            dxp[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw] += np.where(arg == idx, g, 0)
        return (dxp[:, :, ph : ph + H, pw : pw + W],)

    return make_result(best, (x,), backward, "max_pool2d")


def avg_pool2d(
    x: Tensor, kernel: int | Sequence[int], stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0
) -> Tensor:
    """Average pooling; zero padding is counted in the average (PyTorch's ``count_include_pad=True``)."""
    kh, kw, sh, sw, ph, pw, Ho, Wo = _pool_geometry(x, kernel, stride, padding, "avg_pool2d")
    X = x.data
    H, W = X.shape[2:]
    xp = np.pad(X, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else X
    out = np.zeros(X.shape[:2] + (Ho, Wo), dtype=X.dtype)
    for i in range(kh):
        for j in range(kw):
            out += xp[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw]
    inv = 1.0 / (kh * kw)
    out *= X.dtype.type(inv)

    def backward(g: np.ndarray) -> tuple[np.ndarray]:
        dxp = np.zeros(xp.shape, dtype=X.dtype)
        gs = g * inv
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i : i + sh * Ho : sh, j : j + sw * Wo : sw] += gs
        return (dxp[:, :, ph : ph + H, pw : pw + W],)

    return make_result(out, (x,), backward, "avg_pool2d")


def global_avg_pool(x: Tensor) -> Tensor:
    """Mean over H and W: (N, C, H, W) -> (N, C)."""
    if x.ndim != 4:
        raise ValueError(f"global_avg_pool: need x (N, C, H, W), got shape {x.shape}")
    return x.mean(axis=(2, 3))


def flatten(x: Tensor) -> Tensor:
    """(N, ...) -> (N, prod(...))."""
    return x.reshape(x.shape[0], -1)


# ---------------------------------------------------------------------------------------------
# normalisation


def batch_norm2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    *,
    training: bool,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """BatchNorm over (N, H, W) per channel.

    Training normalises with the batch statistics (biased variance) and updates ``running_mean`` /
    ``running_var`` in place (unbiased variance, exponential average with ``momentum``), like PyTorch;
    evaluation uses the running statistics.
    """
    if x.ndim != 4 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"batch_norm2d: need x (N, {weight.shape[0]}, H, W), got {x.shape}")
    C = x.shape[1]
    shp = (1, C, 1, 1)
    X = x.data
    if not training:
        inv = (1.0 / np.sqrt(running_var.astype(X.dtype) + X.dtype.type(eps))).reshape(shp)
        xhat = (x - running_mean.astype(X.dtype).reshape(shp)) * inv
        return xhat * weight.reshape(shp) + bias.reshape(shp)
    axes = (0, 2, 3)
    n = X.size // C
    mu = X.mean(axis=axes, keepdims=True)
    xc = X - mu
    var = (xc * xc).mean(axis=axes, keepdims=True)
    rstd = 1.0 / np.sqrt(var + X.dtype.type(eps))
    xhat = xc * rstd
    Wt = weight.data.reshape(shp)
    out = xhat * Wt + bias.data.reshape(shp)
    with np.errstate(all="ignore"):
        running_mean *= 1.0 - momentum
        running_mean += momentum * mu.reshape(C).astype(running_mean.dtype)
        running_var *= 1.0 - momentum
        running_var += momentum * var.reshape(C).astype(running_var.dtype) * (n / max(n - 1, 1))

    def backward(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gxhat = g * Wt
        gx = rstd * (
            gxhat - gxhat.mean(axis=axes, keepdims=True) - xhat * (gxhat * xhat).mean(axis=axes, keepdims=True)
        )
        return gx, (g * xhat).sum(axis=axes), g.sum(axis=axes)

    return make_result(out, (x, weight, bias), backward, "batch_norm2d")


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5, nl: Nonlinearity | None = None) -> Tensor:
    """LayerNorm over the last axis: ``(x - mean) * rsqrt(var + eps) * weight + bias``.

    With ``nl`` the decomposed form is used and ``rsqrt`` is evaluated by ``nl("rsqrt", var + eps)``.
    """
    D = x.shape[-1]
    if weight.shape != (D,) or bias.shape != (D,):
        raise ValueError(f"layer_norm: weight/bias must be ({D},), got {weight.shape} and {bias.shape}")
    if nl is not None:
        xc = x - x.mean(axis=-1, keepdims=True)
        var = (xc * xc).mean(axis=-1, keepdims=True)
        r = nl("rsqrt", var + eps)
        return xc * r * weight + bias
    X = x.data
    xc = X - X.mean(axis=-1, keepdims=True)
    var = (xc * xc).mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + X.dtype.type(eps))
    xhat = xc * rstd
    Wd = weight.data

    def backward(g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        gxhat = g * Wd
        gx = rstd * (gxhat - gxhat.mean(axis=-1, keepdims=True) - xhat * (gxhat * xhat).mean(axis=-1, keepdims=True))
        return gx, g * xhat, g

    return make_result(xhat * Wd + bias.data, (x, weight, bias), backward, "layer_norm")


# ---------------------------------------------------------------------------------------------
# softmax and losses

_MASK_FILL = -1e9  # score given to masked entries (exp underflows to exactly 0)


def softmax(x: Tensor, axis: int = -1, *, mask: np.ndarray | None = None, nl: Nonlinearity | None = None) -> Tensor:
    """Softmax along ``axis``.

    ``mask`` (broadcastable to ``x``, nonzero = keep) gives masked entries probability 0; a row with no
    kept entry is all zeros.  With ``nl`` the decomposed form ``e = exp(x - rowmax)``,
    ``r = reciprocal(sum e)``, ``p = e * r`` is used with both functions evaluated by ``nl``.
    """
    keep = None if mask is None else np.broadcast_to(np.asarray(mask) != 0, x.shape)
    if nl is not None:
        xm = x
        if keep is not None:
            xm = x * keep + np.where(keep, 0.0, _MASK_FILL).astype(x.dtype)
        z = xm - xm.max(axis=axis, keepdims=True)
        e = nl("exp", z, valid=keep)
        if keep is not None:
            e = e * keep
        r = nl("reciprocal", e.sum(axis=axis, keepdims=True))
        return e * r
    X = x.data
    if keep is not None:
        X = np.where(keep, X, X.dtype.type(_MASK_FILL))
    e = np.exp(X - X.max(axis=axis, keepdims=True))
    if keep is not None:
        e *= keep
    s = e.sum(axis=axis, keepdims=True)
    p = e / np.maximum(s, np.finfo(X.dtype).tiny)

    def backward(g: np.ndarray) -> tuple[np.ndarray]:
        return (p * (g - (g * p).sum(axis=axis, keepdims=True)),)

    return make_result(p, (x,), backward, "softmax")


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    X = x.data
    z = X - X.max(axis=axis, keepdims=True)
    y = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))

    def backward(g: np.ndarray) -> tuple[np.ndarray]:
        return (g - np.exp(y) * g.sum(axis=axis, keepdims=True),)

    return make_result(y, (x,), backward, "log_softmax")


def cross_entropy(logits: Tensor, targets: Any, *, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy of ``logits (N, C)`` against integer ``targets (N,)``, with optional label smoothing."""
    L = logits.data
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    if L.ndim != 2 or t.shape != (L.shape[0],):
        raise ValueError(f"cross_entropy: need logits (N, C) and targets (N,), got {L.shape} and {t.shape}")
    if t.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be integer class ids, got {t.dtype}")
    N, C = L.shape
    if t.size and (t.min() < 0 or t.max() >= C):
        raise ValueError(f"cross_entropy: targets must be in [0, {C}), got range [{t.min()}, {t.max()}]")
    z = L - L.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    q = np.full((N, C), label_smoothing / C, dtype=L.dtype)
    q[np.arange(N), t] += 1.0 - label_smoothing
    loss = -(q * logp).sum() / N

    def backward(g: np.ndarray) -> tuple[np.ndarray]:
        return (g * (np.exp(logp) - q) / N,)

    return make_result(np.asarray(loss, dtype=L.dtype), (logits,), backward, "cross_entropy")


def distillation_loss(logits: Tensor, teacher_logits: Any, *, temperature: float = 1.0) -> Tensor:
    """Mean ``T^2 KL(softmax(teacher / T) || softmax(logits / T))`` over the rows (Hinton et al., 2015).

    ``teacher_logits`` is a plain ``(N, C)`` array (no gradient); ``temperature`` > 0.
    """
    L = logits.data
    Tl = np.asarray(teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits, dtype=np.float64)
    if L.ndim != 2 or Tl.shape != L.shape:
        raise ValueError(
            f"distillation_loss: need logits and teacher logits of one (N, C) shape, got {L.shape} and {Tl.shape}"
        )
    if not temperature > 0:
        raise ValueError(f"distillation_loss: temperature must be > 0, got {temperature}")
    T = float(temperature)
    N = L.shape[0]
    z = L.astype(np.float64) / T
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    zt = Tl / T
    zt = zt - zt.max(axis=1, keepdims=True)
    logq = zt - np.log(np.exp(zt).sum(axis=1, keepdims=True))
    q = np.exp(logq)
    loss = T * T * float((q * (logq - logp)).sum()) / max(N, 1)

    def backward(g: np.ndarray) -> tuple[np.ndarray]:
        return ((g * T * (np.exp(logp) - q) / max(N, 1)).astype(L.dtype),)

    return make_result(np.asarray(loss, dtype=L.dtype), (logits,), backward, "distillation_loss")


def mse_loss(pred: Tensor, target: Any) -> Tensor:
    """Mean squared error."""
    t = as_tensor(target, like=pred)
    if t.shape != pred.shape:
        raise ValueError(f"mse_loss: prediction {pred.shape} and target {t.shape} differ")
    d = pred - t
    return (d * d).mean()


# ---------------------------------------------------------------------------------------------
# sequence/vision-transformer helpers


def embedding(ids: Any, weight: Tensor) -> Tensor:
    """Gather rows: ``weight[ids]`` (ids an integer array of any shape); repeated ids accumulate gradients."""
    idx = np.asarray(ids)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: ids must be integers, got {idx.dtype}")
    if idx.size and (idx.min() < 0 or idx.max() >= weight.shape[0]):
        raise ValueError(f"embedding: ids must be in [0, {weight.shape[0]}), got range [{idx.min()}, {idx.max()}]")
    return weight[idx]


def patchify(x: Tensor, patch: int) -> Tensor:
    """(N, C, H, W) -> (N, T, C*p*p): row-major non-overlapping patches, features in (C, kh, kw) order."""
    if x.ndim != 4:
        raise ValueError(f"patchify: need x (N, C, H, W), got {x.shape}")
    N, C, H, W = x.shape
    p = int(patch)
    if H % p or W % p:
        raise ValueError(f"patchify: image {H}x{W} is not divisible by patch {p}")
    y = x.reshape(N, C, H // p, p, W // p, p).transpose(0, 2, 4, 1, 3, 5)
    return y.reshape(N, (H // p) * (W // p), C * p * p)


def position_add(x: Tensor, weight: Tensor) -> Tensor:
    """x (N, T, D) + weight[:T] (a learned position table of shape (T_max, D))."""
    if x.ndim != 3 or weight.ndim != 2 or x.shape[2] != weight.shape[1] or x.shape[1] > weight.shape[0]:
        raise ValueError(f"position_add: x {x.shape} does not fit position table {weight.shape}")
    return x + weight[: x.shape[1]]


def mean_pool(x: Tensor, mask: np.ndarray | None = None, nl: Nonlinearity | None = None) -> Tensor:
    """Mean over tokens: (N, T, D) -> (N, D); with ``mask (N, T)`` only kept tokens count.

    With a mask and ``nl``, the division is ``nl("reciprocal", token_count)`` (the compiler's form).
    """
    if x.ndim != 3:
        raise ValueError(f"mean_pool: need x (N, T, D), got {x.shape}")
    if mask is None:
        return x.mean(axis=1)
    m = (np.asarray(mask) != 0).astype(x.dtype)
    if m.shape != x.shape[:2]:
        raise ValueError(f"mean_pool: mask shape {m.shape} != {x.shape[:2]}")
    total = (x * m[:, :, None]).sum(axis=1)
    cnt = m.sum(axis=1, keepdims=True)
    if nl is not None:
        return total * nl("reciprocal", Tensor(cnt))
    return total * (1.0 / np.maximum(cnt, 1.0))


def l2_normalize(x: Tensor, eps: float = 1e-12, nl: Nonlinearity | None = None) -> Tensor:
    """``x * rsqrt(sum(x^2) + eps^2)`` over the last axis (``rsqrt`` through ``nl`` when given)."""
    s = (x * x).sum(axis=-1, keepdims=True) + eps * eps
    return x * (rsqrt(s) if nl is None else nl("rsqrt", s))


def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Concatenate along ``axis``."""
    ts = list(tensors)
    if not ts:
        raise ValueError("concat of no tensors")
    ax = axis % ts[0].ndim
    sizes = [t.shape[ax] for t in ts]
    try:
        out = np.concatenate([t.data for t in ts], axis=ax)
    except ValueError as e:
        raise ValueError(f"concat: shapes {[t.shape for t in ts]} do not match off axis {axis}") from e
    splits = np.cumsum(sizes)[:-1]
    return make_result(out, tuple(ts), lambda g: tuple(np.split(g, splits, axis=ax)), "concat")


def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
    """Stack equal-shaped tensors along a new ``axis``."""
    ts = list(tensors)
    if not ts or any(t.shape != ts[0].shape for t in ts):
        raise ValueError(f"stack needs equal shapes, got {[t.shape for t in ts]}")
    ax = axis % (ts[0].ndim + 1)
    out = np.stack([t.data for t in ts], axis=ax)
    return make_result(out, tuple(ts), lambda g: tuple(np.moveaxis(g, ax, 0)), "stack")


def dropout(x: Tensor, p: float, rng: np.random.Generator, training: bool = True) -> Tensor:
    """Inverted dropout: zero with probability ``p`` and scale the rest by ``1 / (1 - p)``."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = (rng.random(x.shape) >= p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * keep


def multi_head_self_attention(
    x: Tensor,
    q_weight: Tensor,
    q_bias: Tensor,
    k_weight: Tensor,
    k_bias: Tensor,
    v_weight: Tensor,
    v_bias: Tensor,
    o_weight: Tensor,
    o_bias: Tensor,
    heads: int,
    mask: np.ndarray | None = None,
    nl: Nonlinearity | None = None,
) -> Tensor:
    """``softmax(Q K^T / sqrt(D / heads) (+ key mask)) V`` per head, then the output projection.

    ``x`` is ``(N, T, D)``; ``mask (N, T)`` marks keys to keep (1) or ignore (0).  ``nl`` selects the
    decomposed softmax (see :func:`softmax`).
    """
    if x.ndim != 3:
        raise ValueError(f"mhsa: need x (N, T, D), got {x.shape}")
    N, T, D = x.shape
    if D % heads:
        raise ValueError(f"mhsa: model dim {D} is not divisible by heads={heads}")
    dh = D // heads

    def split(t: Tensor) -> Tensor:
        return t.reshape(N, T, heads, dh).transpose(0, 2, 1, 3)

    q = split(linear(x, q_weight, q_bias))
    k = split(linear(x, k_weight, k_bias))
    v = split(linear(x, v_weight, v_bias))
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / math.sqrt(dh))
    keep = None
    if mask is not None:
        m = np.asarray(mask)
        if m.shape != (N, T):
            raise ValueError(f"mhsa: mask shape {m.shape} != (N, T) = {(N, T)}")
        keep = (m != 0)[:, None, None, :]
    p = softmax(scores, axis=-1, mask=keep, nl=nl)
    o = (p @ v).transpose(0, 2, 1, 3).reshape(N, T, D)
    return linear(o, o_weight, o_bias)
