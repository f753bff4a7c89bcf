"""Piecewise-linear (PWL) tables: the one nonlinearity the accelerator has.

A :class:`PWLTable` with ``n`` segments holds ``n + 1`` strictly increasing float32 breakpoints
``b[0] < ... < b[n]`` and, per segment ``i``, a slope ``s[i]`` and an intercept ``c[i]``.  It computes

    f(x) = s[i] * x + c[i]        for  b[i] <= x < b[i+1]

with segment 0 extended to ``x < b[0]`` and segment ``n - 1`` to ``x >= b[n]`` (out-of-range inputs use
the first/last segment).  Both products and sums are single float32 roundings with no fused
multiply-add, so this numpy evaluation and the C epilogue (``csrc/nm_pwl.h``) agree bit for bit.

Segment lookup is O(1) for any spacing.  At construction a *hint grid* is built: a key function maps
``x`` to one of at most 4096 bins, either linearly (``floor((x - origin) * scale)``) or by the float's
exponent and top mantissa bits (``bits(x) >> shift``, for geometrically spaced tables such as 1/x over
[1e-6, 1e6]).  ``hint[k]`` is the number of interior breakpoints whose key is below ``k``, which is a
lower bound on the segment of every ``x`` in bin ``k``; at most ``steps`` comparisons with the next
interior breakpoint then finish the lookup.  The key function is monotone, so this is exact: the segment
found is always the one the breakpoints define.  The grid is chosen so that ``steps`` is usually 1.

IEEE special values: NaN in gives NaN out.  ``+-inf`` land in the outer segments; where an outer
segment is constant (slope 0, e.g. tanh -> +-1) the input is first clamped to the table's end so that
the result is the constant rather than ``0 * inf = NaN``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Union

import numpy as np

__all__ = ["PWLTable", "MAX_HINT_BINS"]

#: Largest hint grid a table may use (int32 entries: 16 KiB, L1/L2 resident).
MAX_HINT_BINS = 4096

KEY_LINEAR = 0
KEY_LOG2 = 1

ArrayLike = Union[np.ndarray, "list[float]", "tuple[float, ...]"]


def _as_f32_vector(name: str, values: Any, length: int | None = None) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"PWLTable {name} must be real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"PWLTable {name} must be 1-D, got shape {arr.shape}")
    if length is not None and arr.shape[0] != length:
        raise ValueError(f"PWLTable {name} must have {length} entries, got {arr.shape[0]}")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"PWLTable {name} must be finite (in float32), got non-finite values")
    out.setflags(write=False)
    return out


def _linear_keys(x: np.ndarray, origin: np.float32, scale: np.float32, nhint: int) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # inf/NaN keys are clamped below, as in C
        v = (x - origin) * scale  # float32, two roundings: identical in C
    v = np.fmin(np.fmax(v, np.float32(0.0)), np.float32(nhint - 1))  # NaN -> 0
    return np.floor(v).astype(np.int32)


def _log2_keys(x: np.ndarray, shift: int, base: int, nhint: int) -> np.ndarray:
    bits = x.view(np.int32)
    k = (bits >> np.int32(shift)) - np.int32(base)
    return np.clip(k, 0, nhint - 1).astype(np.int32)


def _hint_for(keys_of_interior: np.ndarray, nhint: int) -> tuple[np.ndarray, int]:
    counts = np.bincount(keys_of_interior, minlength=nhint)[:nhint]
    hint = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    steps = int(counts.max()) if counts.size else 0
    return hint, steps


class PWLTable:
    """A piecewise-linear function: sorted breakpoints, per-segment slopes and intercepts.

    Parameters
    ----------
    breakpoints:
        ``n + 1`` strictly increasing finite values (stored as float32).
    slopes, intercepts:
        ``n`` finite values each: segment ``i`` computes ``slopes[i] * x + intercepts[i]``.
    name:
        Optional label (the catalog function it approximates), kept in :meth:`to_dict`.
    meta:
        Optional JSON-serialisable dict (fit options, measured error...), kept in :meth:`to_dict`.

    Calling the table evaluates it in float32 exactly as the GEMM epilogue does.
    """

    __slots__ = (
        "breakpoints",
        "slopes",
        "intercepts",
        "name",
        "meta",
        "key_mode",
        "nhint",
        "steps",
        "origin",
        "scale",
        "shift",
        "base",
        "hint",
        "edges",
        "xmin",
        "xmax",
        "__weakref__",  # kernels caches a table's C descriptor while the table lives
    )

    def __init__(
        self,
        breakpoints: ArrayLike,
        slopes: ArrayLike,
        intercepts: ArrayLike,
        *,
        name: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        b = _as_f32_vector("breakpoints", breakpoints)
        if b.shape[0] < 2:
            raise ValueError(f"PWLTable needs at least 2 breakpoints (1 segment), got {b.shape[0]}")
        if not np.all(np.diff(b) > 0):
            raise ValueError("PWLTable breakpoints must be strictly increasing (after rounding to float32)")
        n = b.shape[0] - 1
        self.breakpoints = b
        self.slopes = _as_f32_vector("slopes", slopes, n)
        self.intercepts = _as_f32_vector("intercepts", intercepts, n)
        self.name = name
        self.meta = dict(meta) if meta else {}
        self.xmin = np.float32(b[0] if self.slopes[0] == 0 else -np.inf)
        self.xmax = np.float32(b[-1] if self.slopes[-1] == 0 else np.inf)
        edges = np.empty(n, dtype=np.float32)
        edges[: n - 1] = b[1:-1]
        edges[n - 1] = np.nan  # x >= NaN is false: the last segment never moves on
        edges.setflags(write=False)
        self.edges = edges
        self._build_hint()

    # -- lookup structure ---------------------------------------------------------------------
    def _build_hint(self) -> None:
        b = self.breakpoints
        interior = b[1:-1]
        best: Any = None
        # Linear grids over [b0, bn]: the finest power of two (<= MAX_HINT_BINS) wins ties on steps.
        for nhint in (64, 256, 1024, MAX_HINT_BINS):
            origin = np.float32(b[0])
            scale = np.float32(nhint / (float(b[-1]) - float(b[0])))
            hint, steps = _hint_for(_linear_keys(interior, origin, scale, nhint), nhint)
            cand = (steps, nhint, KEY_LINEAR, hint, origin, scale, 0, 0)
            if best is None or cand[:2] < best[:2]:
                best = cand
            if steps <= 1:
                break
        # Octave grids (exponent + m mantissa bits) when the domain is positive: O(1) for geometric spacing.
        if b[0] > 0:
            lo_bits = int(b[:1].view(np.int32)[0])
            hi_bits = int(b[-1:].view(np.int32)[0])
            for m in range(0, 13):
                shift = 23 - m
                base = lo_bits >> shift
                nhint = (hi_bits >> shift) - base + 1
                if nhint > MAX_HINT_BINS:
                    break
                hint, steps = _hint_for(_log2_keys(interior, shift, base, nhint), nhint)
                cand = (steps, nhint, KEY_LOG2, hint, np.float32(0), np.float32(0), shift, base)
                if cand[:2] < best[:2]:
                    best = cand
                if steps <= 1:
                    break
        steps, nhint, mode, hint, origin, scale, shift, base = best
        hint.setflags(write=False)
        self.steps, self.nhint, self.key_mode, self.hint = int(steps), int(nhint), int(mode), hint
        self.origin, self.scale, self.shift, self.base = origin, scale, int(shift), int(base)

    def segment_index(self, x: np.ndarray) -> np.ndarray:
        """Segment used for each float32 input (the C epilogue's lookup, step for step)."""
        x = np.asarray(x, dtype=np.float32)
        if self.key_mode == KEY_LINEAR:
            keys = _linear_keys(x, self.origin, self.scale, self.nhint)
        else:
            keys = _log2_keys(np.ascontiguousarray(x).reshape(-1), self.shift, self.base, self.nhint).reshape(x.shape)
        seg = self.hint[keys]
        with np.errstate(invalid="ignore"):
            for _ in range(self.steps):
                seg = seg + (x >= self.edges[seg])
        return seg

    # -- evaluation ---------------------------------------------------------------------------
    def __call__(self, x: Any) -> np.ndarray:
        """Evaluate in float32, bit-identical to the fused GEMM epilogue."""
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"PWLTable input must be real numbers, got dtype {arr.dtype}")
        xf = np.asarray(arr, dtype=np.float32)
        seg = self.segment_index(xf)
        xc = np.minimum(np.maximum(xf, self.xmin), self.xmax)  # NaN propagates
        with np.errstate(invalid="ignore", over="ignore"):
            return self.slopes[seg] * xc + self.intercepts[seg]

    @property
    def n_segments(self) -> int:
        return int(self.slopes.shape[0])

    @property
    def lo(self) -> float:
        return float(self.breakpoints[0])

    @property
    def hi(self) -> float:
        return float(self.breakpoints[-1])

    def error(
        self,
        fn: Union[str, Callable[[np.ndarray], np.ndarray]],
        lo: float | None = None,
        hi: float | None = None,
        *,
        points: int = 200_001,
    ) -> dict[str, float]:
        """Error of this table against ``fn`` (a catalog name or a float64 callable) on a dense grid.

        Returns ``{"max_abs", "max_rel", "mean_abs", "lo", "hi", "points"}``; relative error is
        ``|table - f| / max(|f|, tiny)`` and is meaningful where ``f`` stays away from zero.
        """
        if isinstance(fn, str):
            from .approx.catalog import get_function  # resolved lazily: names live in the catalog

            ref = get_function(fn).f
        elif callable(fn):
            ref = fn
        else:
            raise TypeError(f"fn must be a catalog name or a callable, got {type(fn).__name__}")
        lo = self.lo if lo is None else float(lo)
        hi = self.hi if hi is None else float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
            raise ValueError(f"need finite lo < hi, got lo={lo}, hi={hi}")
        if lo > 0 and hi / lo > 1e3:
            grid = np.geomspace(lo, hi, points)
        else:
            grid = np.linspace(lo, hi, points)
        x32 = grid.astype(np.float32)
        approx = self(x32).astype(np.float64)
        exact = np.asarray(ref(x32.astype(np.float64)), dtype=np.float64)
        err = np.abs(approx - exact)
        rel = err / np.maximum(np.abs(exact), np.finfo(np.float64).tiny)
        return {
            "max_abs": float(err.max()),
            "max_rel": float(rel.max()),
            "mean_abs": float(err.mean()),
            "lo": lo,
            "hi": hi,
            "points": int(points),
        }

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; float32 values are written as exact decimal floats."""
        return {
            "breakpoints": [float(v) for v in self.breakpoints],
            "slopes": [float(v) for v in self.slopes],
            "intercepts": [float(v) for v in self.intercepts],
            "name": self.name,
            "meta": dict(self.meta),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PWLTable":
        if not isinstance(d, Mapping):
            raise TypeError(f"PWLTable.from_dict expects a mapping, got {type(d).__name__}")
        missing = [k for k in ("breakpoints", "slopes", "intercepts") if k not in d]
        if missing:
            raise ValueError(f"PWLTable dict is missing {missing}")
        return cls(d["breakpoints"], d["slopes"], d["intercepts"], name=d.get("name"), meta=d.get("meta"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PWLTable):
            return NotImplemented
        return (
            np.array_equal(self.breakpoints, other.breakpoints)
            and np.array_equal(self.slopes, other.slopes)
            and np.array_equal(self.intercepts, other.intercepts)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return (
            f"PWLTable({label}{self.n_segments} segments on [{self.lo:.6g}, {self.hi:.6g}], "
            f"lookup={'linear' if self.key_mode == KEY_LINEAR else 'log2'}x{self.nhint}, steps={self.steps})"
        )
