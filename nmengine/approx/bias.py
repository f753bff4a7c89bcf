"""Vertical bias correction: where each segment's line sits, and how the next layer absorbs the rest.

NeuralMatrix corrects the approximation error of a PWL table in two places.

**Per segment (part of every fit).**  Once the breakpoints are placed (horizontal size
optimisation, :mod:`nmengine.approx.fit`), each segment ``[a, b]`` gets the line ``s x + c`` that
minimises the *maximum* error on it -- the Chebyshev (minimax) line.  For a convex or concave piece
this is the chord shifted vertically by half its maximum deviation, so the error alternates
``+E, -E, +E`` (equal ripple) instead of being one-sided as for interpolation: half the error of the
chord for free.  Pieces with an inflection point are handled by a three-point Remez exchange on a
dense sample of the segment, which converges to the true discrete minimax line in a few steps.  The
same machinery minimises a *weighted* error ``w(x) |f(x) - s x - c|`` with ``w = 1/|f|`` for
relative-error functions (``reciprocal``, ``rsqrt``, ``sqrt``).  :func:`minimax_lines` does this for
many segments at once (vectorised over segments), :func:`minimax_line` for one,
:func:`centered_chord` is the simple chord-plus-shift variant.

**Data-driven (after calibration).**  What is left is a small signed error ``table(x) - f(x)`` whose
*mean* over real activations is generally not zero.  Feeding the activations into the next linear
layer ``y = a @ W + bias`` turns a per-feature mean error ``m`` into a mean output shift
``m @ W``.  :func:`bias_correction` returns ``-(m @ W)``, the vector to add to that layer's bias so
that its mean output on the calibration data equals the exact network's.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Union

import numpy as np

from .catalog import Function, get_function

__all__ = [
    "minimax_lines",
    "minimax_line",
    "centered_chord",
    "mean_error",
    "bias_correction",
]

Array = np.ndarray

#: Samples per segment used by default for the final line fit.
DEFAULT_POINTS = 257


def segment_samples(a: Array, b: Array, points: int, geometric: bool) -> Array:
    """``(n, points)`` sample abscissae per segment, endpoints included (geometric: uniform in log x)."""
    t = np.linspace(0.0, 1.0, points)
    if geometric:
        la, lb = np.log(a), np.log(b)
        x = np.exp(la[:, None] + (lb - la)[:, None] * t[None, :])
    else:
        x = a[:, None] + (b - a)[:, None] * t[None, :]
    x[:, 0] = a
    x[:, -1] = b
    return x


def refined_peak(r: Array, k: Array) -> Array:
    """Row maxima of ``r`` at indices ``k``, refined by the parabola through the two neighbours.

    The samples of a segment miss its true extremum by up to half a step; the parabolic vertex
    recovers the continuous maximum to ``O(step^4)`` for smooth residuals.
    """
    n, p = r.shape
    rows = np.arange(n)
    val = r[rows, k]
    inner = (k > 0) & (k < p - 1)
    if not inner.any():
        return val
    ki = np.clip(k, 1, p - 2)
    a, b, c = r[rows, ki - 1], r[rows, ki], r[rows, ki + 1]
    curv = a - 2.0 * b + c
    ok = inner & (curv < 0)
    with np.errstate(all="ignore"):
        delta = np.where(ok, (a - c) / (2.0 * np.where(ok, curv, -1.0)), 0.0)
        peak = b - 0.25 * (a - c) * delta
    return np.where(ok & (np.abs(delta) <= 0.5), np.maximum(peak, val), val)


def remez_lines(x: Array, y: Array, w: Array | None, *, max_iter: int = 25) -> tuple[Array, Array, Array]:
    """Weighted discrete minimax lines, one per row.

    For each row ``r`` find ``(s, c)`` minimising ``max_k w[r,k] |y[r,k] - s x[r,k] - c|`` with a
    three-point Remez exchange: solve the equal-ripple system on a reference ``k0 < k1 < k2``
    (errors ``+E, -E, +E`` after weighting), swap in the sample with the largest error keeping the
    sign alternation, repeat.  Rows must have increasing ``x``.  Returns ``(slopes, intercepts,
    max weighted errors)`` in float64; the errors are measured on the samples for the returned lines.
    """
    n, p = x.shape
    if p < 3:
        raise ValueError("need at least 3 samples per segment")
    rows = np.arange(n)
    x0 = x[:, :1]
    span = x[:, -1:] - x0
    t = (x - x0) / span  # [0, 1] per row: well-conditioned whatever the scale of x
    scale = np.max(np.abs(y), axis=1, keepdims=True)
    scale = np.where(scale > 0, scale, 1.0)
    yn = y / scale
    wn = np.ones_like(yn) if w is None else w * scale
    inv_w = 1.0 / wn

    # initial reference: both ends and the largest deviation from the chord (exact for convex pieces)
    chord = yn[:, :1] + (yn[:, -1:] - yn[:, :1]) * t
    dev = np.abs(yn - chord) * wn
    dev[:, 0] = dev[:, -1] = -1.0
    mid = np.argmax(dev, axis=1)
    mid = np.clip(mid, 1, p - 2)
    ref = np.stack([np.zeros(n, dtype=np.intp), mid, np.full(n, p - 1, dtype=np.intp)], axis=1)

    sigma = np.array([1.0, -1.0, 1.0])
    alpha = np.zeros(n)
    beta = np.zeros(n)
    active = np.ones(n, dtype=bool)
    for _ in range(max_iter):
        idx = rows[active]
        if idx.size == 0:
            break
        r_ref = ref[idx]
        tr = t[idx[:, None], r_ref]
        A = np.empty((idx.size, 3, 3))
        A[:, :, 0] = tr
        A[:, :, 1] = 1.0
        A[:, :, 2] = sigma[None, :] * inv_w[idx[:, None], r_ref]
        rhs = yn[idx[:, None], r_ref]
        try:
            sol = np.linalg.solve(A, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:  # degenerate reference (cannot happen for distinct points)
            sol = np.stack([np.linalg.lstsq(A[i], rhs[i], rcond=None)[0] for i in range(idx.size)])
        alpha[idx], beta[idx] = sol[:, 0], sol[:, 1]
        e_ref = np.abs(sol[:, 2])
        res = wn[idx] * (yn[idx] - alpha[idx, None] * t[idx] - beta[idx, None])
        k = np.argmax(np.abs(res), axis=1)
        rk = res[np.arange(idx.size), k]
        done = np.abs(rk) <= e_ref * (1.0 + 1e-9) + 1e-15
        active[idx[done]] = False
        # exchange on the rows that are not done
        nd = ~done
        if not nd.any():
            break
        i2 = idx[nd]
        k, rk = k[nd], rk[nd]
        r0, r1, r2 = ref[i2, 0], ref[i2, 1], ref[i2, 2]
        sref = np.sign(res[nd][np.arange(i2.size)[:, None], ref[i2]])
        sk = np.sign(rk)
        new = np.stack([r0, r1, r2], axis=1)
        below, above = k < r0, k > r2
        left, right = (k > r0) & (k < r1), (k > r1) & (k < r2)
        same0, same1, same2 = sk == sref[:, 0], sk == sref[:, 1], sk == sref[:, 2]
        cases = [
            (below & same0, (k, r1, r2)),
            (below & ~same0, (k, r0, r1)),
            (above & same2, (r0, r1, k)),
            (above & ~same2, (r1, r2, k)),
            (left & same0, (k, r1, r2)),
            (left & ~same0, (r0, k, r2)),
            (right & same1, (r0, k, r2)),
            (right & ~same1, (r0, r1, k)),
        ]
        for mask, trip in cases:
            if mask.any():
                new[mask] = np.stack([np.asarray(v)[mask] for v in trip], axis=1)
        stuck = ~(below | above | left | right)  # k already in the reference: numerically converged
        active[i2[stuck]] = False
        ref[i2] = new

    res = wn * (yn - alpha[:, None] * t - beta[:, None])
    if w is None:
        # vertical centring: for the chosen slope, the intercept that balances the error exactly
        hi, lo = refined_peak(res, np.argmax(res, axis=1)), -refined_peak(-res, np.argmin(res, axis=1))
        beta = beta + 0.5 * (hi + lo)
        err = 0.5 * (hi - lo)
    else:
        err = refined_peak(np.abs(res), np.argmax(np.abs(res), axis=1))
    slope = alpha * scale[:, 0] / span[:, 0]
    intercept = beta * scale[:, 0] - slope * x0[:, 0]
    return slope, intercept, err * (scale[:, 0] if w is None else 1.0)


def _resolve(fn: Union[str, Function, Callable[[Array], Array]]) -> Callable[[Array], Array]:
    if isinstance(fn, (str, Function)):
        return get_function(fn).f
    if callable(fn):
        return fn
    raise TypeError(f"fn must be a function name, a Function or a callable, got {type(fn).__name__}")


def minimax_lines(
    fn: Union[str, Function, Callable[[Array], Array]],
    a: Any,
    b: Any,
    *,
    relative: bool = False,
    points: int = DEFAULT_POINTS,
) -> tuple[Array, Array, Array]:
    """Minimax lines for many segments ``[a[i], b[i]]`` at once.

    ``relative=True`` minimises the relative error ``|f - line| / |f|`` (samples spaced
    geometrically; needs ``0 < a``).  Returns float64 ``(slopes, intercepts, errors)`` where
    ``errors[i]`` is the max (absolute or relative) error of line ``i`` on ``points`` samples of its
    segment.
    """
    f = _resolve(fn)
    a = np.atleast_1d(np.asarray(a, dtype=np.float64))
    b = np.atleast_1d(np.asarray(b, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(a < b)):
        raise ValueError("every segment needs finite a < b")
    if relative and np.any(a <= 0):
        raise ValueError("relative minimax lines need positive segments (a > 0)")
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)):
        raise TypeError("points must be an integer")
    if points < 3:
        raise ValueError("points must be >= 3")
    x = segment_samples(a, b, int(points), geometric=relative)
    y = np.asarray(f(x), dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError("the function is not finite on some segment")
    w = None
    if relative:
        ay = np.abs(y)
        w = 1.0 / np.maximum(ay, np.finfo(np.float64).tiny + 1e-300 * ay.max(initial=0.0))
    return remez_lines(x, y, w)


def minimax_line(
    fn: Union[str, Function, Callable[[Array], Array]],
    a: float,
    b: float,
    *,
    relative: bool = False,
    points: int = DEFAULT_POINTS,
) -> tuple[float, float, float]:
    """The minimax line ``(slope, intercept, max_error)`` of ``fn`` on one segment ``[a, b]``."""
    s, c, e = minimax_lines(fn, [a], [b], relative=relative, points=points)
    return float(s[0]), float(c[0]), float(e[0])


def centered_chord(
    fn: Union[str, Function, Callable[[Array], Array]],
    a: float,
    b: float,
    *,
    points: int = DEFAULT_POINTS,
) -> tuple[float, float, float]:
    """The chord through ``(a, f(a)), (b, f(b))`` shifted vertically to balance its error.

    Returns ``(slope, intercept, max_abs_error)``.  Equals :func:`minimax_line` when ``f`` is convex
    or concave on ``[a, b]``.
    """
    f = _resolve(fn)
    a, b = float(a), float(b)
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ValueError(f"need finite a < b, got a={a}, b={b}")
    x = np.linspace(a, b, int(points))
    y = np.asarray(f(x), dtype=np.float64)
    s = (y[-1] - y[0]) / (b - a)
    r = (y - (y[0] + s * (x - a)))[None, :]
    hi = float(refined_peak(r, np.argmax(r, axis=1))[0])
    lo = -float(refined_peak(-r, np.argmin(r, axis=1))[0])
    c = y[0] - s * a + 0.5 * (hi + lo)
    return float(s), float(c), 0.5 * (hi - lo)


# ---------------------------------------------------------------------------------------------
# data-driven correction
# ---------------------------------------------------------------------------------------------
def _activations(activations: Any) -> Array:
    arr = np.asarray(activations)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"activations must be real numbers, got dtype {arr.dtype}")
    if arr.ndim < 1:
        raise ValueError("activations need at least one axis (features on the last axis)")
    if arr.size == 0:
        raise ValueError(f"activations are empty (shape {arr.shape})")
    return arr


def mean_error(table: Any, fn: Union[str, Function, Callable[[Array], Array]], activations: Any) -> Array:
    """Per-feature mean of ``table(x) - f(x)`` over all axes but the last (float64, shape ``(F,)``).

    ``table(x)`` is evaluated in float32 as the accelerator does; ``f`` in float64.  Non-finite
    values (in the data or the errors) are ignored in the mean.
    """
    if not callable(table):
        raise TypeError(f"table must be a PWLTable (callable), got {type(table).__name__}")
    f = _resolve(fn)
    x = _activations(activations)
    feats = x.shape[-1]
    x2 = x.reshape(-1, feats)
    approx = np.asarray(table(x2.astype(np.float32)), dtype=np.float64)
    exact = np.asarray(f(x2.astype(np.float64)), dtype=np.float64)
    err = approx - exact
    ok = np.isfinite(err)
    count = ok.sum(axis=0)
    total = np.where(ok, err, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return mean


def bias_correction(
    table: Any,
    fn: Union[str, Function, Callable[[Array], Array]],
    activations: Any,
    next_weight: Any,
) -> Array:
    """The vector to ADD to the next GEMM's bias so its mean output matches the exact network's.

    ``activations`` are the inputs of the nonlinearity (features on the last axis, ``F`` of them);
    ``next_weight`` is the following linear layer's weight in GEMM layout ``(K, N)`` with ``K == F``.
    Returns ``-(mean_error(table, fn, activations) @ next_weight)``, float64 of shape ``(N,)``.
    """
    m = mean_error(table, fn, activations)
    w = np.asarray(next_weight)
    if w.dtype.kind not in "fiu":
        raise TypeError(f"next_weight must be real numbers, got dtype {w.dtype}")
    if w.ndim != 2:
        raise ValueError(f"next_weight must be 2-D (in_features, out_features), got shape {w.shape}")
    if w.shape[0] != m.shape[0]:
        raise ValueError(
            f"next_weight has {w.shape[0]} input features (rows) but the activations have "
            f"{m.shape[0]} features on their last axis; expected GEMM layout (K, N) = ({m.shape[0]}, N)"
        )
    return -(m @ w.astype(np.float64))
