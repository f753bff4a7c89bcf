"""Catalog of the nonlinear functions NeuralMatrix replaces with piecewise-linear (PWL) tables.

Each entry is a frozen :class:`Function` that carries everything the fitter, the runtime's exact mode
and the trainer need to know about one scalar function:

* ``f``  -- the exact reference, evaluated in float64 with numpy / scipy.special.  Every reference
  returns its limit at ``+-inf`` (e.g. ``gelu(-inf) == 0`` rather than ``-inf * 0 = NaN``) and
  propagates NaN.
* ``df`` -- the derivative in float64 (the trainer's straight-through gradient; the fitter also
  differentiates it numerically to get the curvature ``f''`` that drives breakpoint placement).
* ``lo, hi`` -- the default fitting range: wide enough that outside it the true asymptote is within
  float32-ish precision (gelu on [-8, 8]: ``|gelu(-8)| < 1e-14``).
* ``relative`` -- wide dynamic-range functions (``reciprocal``, ``rsqrt``, ``sqrt``) whose error is
  measured relative to ``|f|`` and whose breakpoints are spaced geometrically (uniformly in
  ``log x``); their range must be positive.
* ``left, right`` -- :class:`Tail` rules for the behaviour outside ``[lo, hi]``: the fitter adds an
  outer segment that follows the true asymptote (``Tail.line``), holds the edge value
  (``Tail.clamp``), or simply extends the edge segment (``Tail.extend``).
* ``domain`` -- where fitting makes sense: ranges taken from calibration data are clipped to it
  (beyond it the tails are exact to float32 precision, or the function is undefined / overflows).
* ``exact`` -- for functions that *are* piecewise linear (``relu``), the exact table.

User callables are wrapped by :func:`get_function` (a range is then required; the derivative is
taken by central differences).

(About 550 lines: one reference, derivative and float32 form per function, kept side by side so each
function is read in one place.)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
from scipy import special

__all__ = [
    "Function",
    "Tail",
    "FUNCTIONS",
    "get_function",
    "exact_float32",
    "function_names",
    "gelu",
    "gelu_derivative",
    "gelu_tanh",
    "gelu_tanh_derivative",
    "GELU_TANH_K",
    "GELU_TANH_A",
]

Array = np.ndarray
RealFn = Callable[[Array], Array]

_SQRT2 = math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
#: The tanh approximation of GELU, ``0.5 x (1 + tanh(K (x + A x^3)))`` (Hendrycks & Gimpel, 2016): the one
#: place these constants live (the catalog entry, the trainer and the docs use :func:`gelu_tanh`).
GELU_TANH_K = math.sqrt(2.0 / math.pi)
GELU_TANH_A = 0.044715


#: How far past the range end a ``clamp_far`` tail switches from the constant to the asymptote.
FAR_FACTOR = 2.0**20


@dataclass(frozen=True)
class Tail:
    """What a fitted table does outside its fitted range on one side.

    ``kind`` is one of

    * ``"line"``   -- an outer segment ``slope * x + intercept`` (the function's asymptote, e.g.
      ``(0, 0)`` for gelu at ``-inf``, ``(1, 0)`` at ``+inf``, ``(0, 1)`` for tanh at ``+inf``);
    * ``"clamp"``  -- an outer constant segment equal to ``f`` at the range end (saturation, used
      below the range of ``reciprocal``/``rsqrt``/``sqrt`` where there is no finite asymptote);
    * ``"extend"`` -- no outer segment: the edge segment's line continues (``PWLTable`` semantics);
    * ``"clamp_far"`` -- a constant ``f(end)`` segment, then, ``FAR_FACTOR`` times further out, the
      asymptote ``slope * x + intercept`` (``1/x`` and ``1/sqrt(x)`` above their range: a value a little
      past the calibrated range keeps a nearby value instead of dropping to 0, and ``+inf`` still gives
      the IEEE limit 0).

    Constant outer segments make ``+-inf`` inputs exact (``PWLTable`` clamps before multiplying).
    """

    kind: str = "extend"
    slope: float = 0.0
    intercept: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("line", "clamp", "extend", "clamp_far"):
            raise ValueError(f"Tail kind must be 'line', 'clamp', 'clamp_far' or 'extend', got {self.kind!r}")
        if not (math.isfinite(self.slope) and math.isfinite(self.intercept)):
            raise ValueError("Tail slope and intercept must be finite")

    @classmethod
    def line(cls, slope: float, intercept: float) -> "Tail":
        """An outer segment following the asymptote ``slope * x + intercept``."""
        return cls("line", float(slope), float(intercept))

    @classmethod
    def clamp(cls) -> "Tail":
        """An outer constant segment holding ``f`` at the range end."""
        return cls("clamp")

    @classmethod
    def clamp_far(cls, slope: float, intercept: float) -> "Tail":
        """A constant ``f(end)`` segment, then the asymptote ``slope * x + intercept`` far out."""
        return cls("clamp_far", float(slope), float(intercept))

    @classmethod
    def extend(cls) -> "Tail":
        """No outer segment: the edge segment extrapolates."""
        return cls("extend")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (used in table metadata)."""
        if self.kind in ("line", "clamp_far"):
            return {"kind": self.kind, "slope": self.slope, "intercept": self.intercept}
        return {"kind": self.kind}


@dataclass(frozen=True)
class Function:
    """One scalar function the accelerator approximates with a PWL table.

    Attributes
    ----------
    name:
        Catalog name (``"gelu"``...) or a label for a user callable.
    f:
        Exact float64 reference, vectorised over numpy arrays.
    df:
        Derivative ``f'``, float64, vectorised.
    lo, hi:
        Default fitting range (finite, ``lo < hi``).
    relative:
        True for wide dynamic-range functions: geometric breakpoints, relative error metric.
    left, right:
        Behaviour below ``lo`` / above ``hi`` (see :class:`Tail`).
    domain:
        Interval calibration-derived ranges are clipped to.
    exact:
        ``(breakpoints, slopes, intercepts)`` for functions that are exactly piecewise linear.
    description:
        One-line human description.
    """

    name: str
    f: RealFn
    df: RealFn
    lo: float
    hi: float
    relative: bool = False
    left: Tail = Tail()
    right: Tail = Tail()
    domain: tuple[float, float] = (-math.inf, math.inf)
    exact: Optional[tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]] = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError("Function name must be a non-empty string")
        if not callable(self.f) or not callable(self.df):
            raise TypeError("Function f and df must be callables")
        check_range(self.lo, self.hi, relative=self.relative, what=f"function {self.name!r}")

    @property
    def range(self) -> tuple[float, float]:
        """The default fitting range ``(lo, hi)``."""
        return (self.lo, self.hi)

    def __call__(self, x: Any) -> Array:
        """Evaluate the float64 reference."""
        return self.f(np.asarray(x, dtype=np.float64))

    def with_range(self, lo: float | None = None, hi: float | None = None) -> "Function":
        """A copy with another default range (validated)."""
        lo = self.lo if lo is None else as_real("lo", lo)
        hi = self.hi if hi is None else as_real("hi", hi)
        return dataclasses.replace(self, lo=lo, hi=hi)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def as_real(what: str, value: Any) -> float:
    """``value`` as a Python float, TypeError for non-real input."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a real number, got {type(value).__name__}")
    return float(value)


def check_range(lo: float, hi: float, *, relative: bool, what: str) -> None:
    """ValueError unless ``lo < hi`` are finite (and positive for relative functions)."""
    lo = as_real("lo", lo)
    hi = as_real("hi", hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what}: range bounds must be finite, got lo={lo}, hi={hi}")
    if lo >= hi:
        raise ValueError(f"{what}: need lo < hi, got lo={lo}, hi={hi}")
    if relative and lo <= 0:
        raise ValueError(f"{what}: is a relative (wide dynamic range) function and needs a positive range, got lo={lo}")


def _with_limits(core: RealFn, at_neg_inf: float, at_pos_inf: float) -> RealFn:
    """Wrap ``core`` so that ``+-inf`` map to the given limits (NaN still propagates)."""

    def wrapped(x: Array) -> Array:
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            inf = np.isinf(x)
            if not inf.any():
                return core(x)
            y = core(np.where(inf, 0.0, x))
            return np.where(x == np.inf, at_pos_inf, np.where(x == -np.inf, at_neg_inf, y))

    wrapped.__name__ = getattr(core, "__name__", "f")
    wrapped.__doc__ = core.__doc__
    return wrapped


def _quiet(core: RealFn) -> RealFn:
    """Wrap ``core`` to take float64 arrays and ignore floating-point warnings (1/0 -> inf...)."""

    def wrapped(x: Array) -> Array:
        with np.errstate(all="ignore"):
            return core(np.asarray(x, dtype=np.float64))

    wrapped.__name__ = getattr(core, "__name__", "f")
    wrapped.__doc__ = core.__doc__
    return wrapped


# -- reference implementations (float64; accurate in the tails: no 1 - 1 cancellation) ---------
def gelu(x: Array) -> Array:
    """x * Phi(x), Phi the standard normal CDF (erfc form avoids cancellation for x < 0)."""
    return x * 0.5 * special.erfc(-x / _SQRT2)


def gelu_derivative(x: Array) -> Array:
    """Phi(x) + x * phi(x)."""
    return 0.5 * special.erfc(-x / _SQRT2) + x * _INV_SQRT_2PI * np.exp(-0.5 * x * x)


def gelu_tanh(x: Array) -> Array:
    """0.5 x (1 + tanh(k (x + a x^3))) written as x * sigmoid(2 k (x + a x^3))."""
    z = GELU_TANH_K * (x + GELU_TANH_A * x**3)
    return x * special.expit(2.0 * z)


def gelu_tanh_derivative(x: Array) -> Array:
    """d/dx of :func:`gelu_tanh`."""
    z = GELU_TANH_K * (x + GELU_TANH_A * x**3)
    s = special.expit(2.0 * z)
    dz = GELU_TANH_K * (1.0 + 3.0 * GELU_TANH_A * x * x)
    return s + x * 2.0 * s * (1.0 - s) * dz


def _sigmoid_d(x: Array) -> Array:
    s = special.expit(x)
    return s * (1.0 - s)


def _tanh_d(x: Array) -> Array:
    return 1.0 / np.cosh(x) ** 2


def _silu(x: Array) -> Array:
    return x * special.expit(x)


def _silu_d(x: Array) -> Array:
    s = special.expit(x)
    return s * (1.0 + x * (1.0 - s))


def _softplus(x: Array) -> Array:
    return np.logaddexp(0.0, x)


def _erf_d(x: Array) -> Array:
    return _TWO_OVER_SQRT_PI * np.exp(-x * x)


def _reciprocal(x: Array) -> Array:
    return 1.0 / x


def _reciprocal_d(x: Array) -> Array:
    return -1.0 / (x * x)


def _rsqrt(x: Array) -> Array:
    return 1.0 / np.sqrt(x)


def _rsqrt_d(x: Array) -> Array:
    return -0.5 / (x * np.sqrt(x))


def _sqrt_d(x: Array) -> Array:
    return 0.5 / np.sqrt(x)


def _square(x: Array) -> Array:
    return x * x


def _square_d(x: Array) -> Array:
    return 2.0 * x


def _relu(x: Array) -> Array:
    return np.maximum(x, 0.0)  # NaN propagates


def _relu_d(x: Array) -> Array:
    return np.where(np.isnan(x), np.nan, (x > 0).astype(np.float64))


def _relu6(x: Array) -> Array:
    return np.minimum(np.maximum(x, 0.0), 6.0)  # NaN propagates


def _relu6_d(x: Array) -> Array:
    return np.where(np.isnan(x), np.nan, ((x > 0) & (x < 6)).astype(np.float64))


_POS = (1e-37, 1e37)  # positive float32 range where 1/x, 1/sqrt(x), sqrt(x) stay finite and normal


def _entries() -> dict[str, Function]:
    zero, ident = Tail.line(0.0, 0.0), Tail.line(1.0, 0.0)
    entries = [
        Function(
            "gelu",
            _with_limits(gelu, 0.0, math.inf),
            _with_limits(gelu_derivative, 0.0, 1.0),
            -8.0,
            8.0,
            left=zero,
            right=ident,
            domain=(-10.0, 10.0),
            description="x * Phi(x) (exact erf form)",
        ),
        Function(
            "gelu_tanh",
            _with_limits(gelu_tanh, 0.0, math.inf),
            _with_limits(gelu_tanh_derivative, 0.0, 1.0),
            -8.0,
            8.0,
            left=zero,
            right=ident,
            domain=(-10.0, 10.0),
            description="0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))",
        ),
        Function(
            "exp",
            _quiet(np.exp),
            _quiet(np.exp),
            -16.0,
            0.0,
            left=zero,
            right=Tail.extend(),
            domain=(-104.0, 88.0),
            description="e^x (softmax after max subtraction: x <= 0)",
        ),
        Function(
            "sigmoid",
            _quiet(special.expit),
            _quiet(_sigmoid_d),
            -16.0,
            16.0,
            left=zero,
            right=Tail.line(0.0, 1.0),
            domain=(-20.0, 20.0),
            description="1 / (1 + e^-x)",
        ),
        Function(
            "tanh",
            _quiet(np.tanh),
            _quiet(_tanh_d),
            -8.0,
            8.0,
            left=Tail.line(0.0, -1.0),
            right=Tail.line(0.0, 1.0),
            domain=(-10.0, 10.0),
            description="hyperbolic tangent",
        ),
        Function(
            "silu",
            _with_limits(_silu, 0.0, math.inf),
            _with_limits(_silu_d, 0.0, 1.0),
            -20.0,
            20.0,
            left=zero,
            right=ident,
            domain=(-40.0, 40.0),
            description="x * sigmoid(x) (swish)",
        ),
        Function(
            "softplus",
            _quiet(_softplus),
            _quiet(special.expit),
            -16.0,
            16.0,
            left=zero,
            right=ident,
            domain=(-40.0, 40.0),
            description="log(1 + e^x)",
        ),
        Function(
            "erf",
            _quiet(special.erf),
            _quiet(_erf_d),
            -4.0,
            4.0,
            left=Tail.line(0.0, -1.0),
            right=Tail.line(0.0, 1.0),
            domain=(-6.0, 6.0),
            description="error function",
        ),
        Function(
            "reciprocal",
            _quiet(_reciprocal),
            _quiet(_reciprocal_d),
            1e-6,
            1e6,
            relative=True,
            left=Tail.clamp(),
            right=Tail.clamp_far(0.0, 0.0),
            domain=_POS,
            description="1 / x (x > 0)",
        ),
        Function(
            "rsqrt",
            _quiet(_rsqrt),
            _quiet(_rsqrt_d),
            1e-6,
            1e6,
            relative=True,
            left=Tail.clamp(),
            right=Tail.clamp_far(0.0, 0.0),
            domain=_POS,
            description="1 / sqrt(x) (x > 0)",
        ),
        Function(
            "sqrt",
            _quiet(np.sqrt),
            _quiet(_sqrt_d),
            1e-6,
            1e6,
            relative=True,
            left=Tail.clamp(),
            right=Tail.extend(),
            domain=_POS,
            description="sqrt(x) (x > 0)",
        ),
        Function("square", _quiet(_square), _quiet(_square_d), -8.0, 8.0, domain=(-1e18, 1e18), description="x^2"),
        Function(
            "relu",
            _quiet(_relu),
            _quiet(_relu_d),
            -1.0,
            1.0,
            left=zero,
            right=ident,
            exact=((-1.0, 0.0, 1.0), (0.0, 1.0), (0.0, 0.0)),
            description="max(x, 0) (exact with 2 segments)",
        ),
        Function(
            "relu6",
            _quiet(_relu6),
            _quiet(_relu6_d),
            -1.0,
            7.0,
            left=zero,
            right=Tail.line(0.0, 6.0),
            exact=((-1.0, 0.0, 6.0, 7.0), (0.0, 1.0, 0.0), (0.0, 0.0, 6.0)),
            description="min(max(x, 0), 6) (exact with 3 segments: ONNX Clip(0, 6), MobileNet's ReLU6)",
        ),
    ]
    return {e.name: e for e in entries}


#: The catalog: name -> :class:`Function` (read-only).
FUNCTIONS: Mapping[str, Function] = MappingProxyType(_entries())


def function_names() -> list[str]:
    """Sorted catalog names."""
    return sorted(FUNCTIONS)


def _numeric_derivative(f: RealFn) -> RealFn:
    """Central-difference derivative of a float64 callable (step ~ eps^(1/3) * max(1, |x|))."""

    def df(x: Array) -> Array:
        x = np.asarray(x, dtype=np.float64)
        h = 6e-6 * np.maximum(1.0, np.abs(x))
        with np.errstate(all="ignore"):
            hi = np.asarray(f(x + h), dtype=np.float64)
            lo = np.asarray(f(x - h), dtype=np.float64)
            return (hi - lo) / (2.0 * h)

    return df


def _wrap_user(fn: Callable[..., Any]) -> RealFn:
    def f(x: Array) -> Array:
        with np.errstate(all="ignore"):
            y = np.asarray(fn(np.asarray(x, dtype=np.float64)), dtype=np.float64)
        if y.shape != np.shape(x):
            y = np.broadcast_to(y, np.shape(x)).copy()
        return y

    f.__name__ = getattr(fn, "__name__", "custom")
    return f


def get_function(
    name_or_callable: Union[str, Function, Callable[[Array], Array]],
    lo: float | None = None,
    hi: float | None = None,
) -> Function:
    """Resolve a catalog name, a :class:`Function` or a user callable to a :class:`Function`.

    ``lo``/``hi`` override the default range (a user callable has none, so both are then required).
    Raises ValueError for unknown names (listing the valid ones) or a bad range, TypeError for
    anything that is neither a string nor callable.
    """
    if isinstance(name_or_callable, Function):
        func = name_or_callable
    elif isinstance(name_or_callable, str):
        key = name_or_callable.strip().lower()
        if key not in FUNCTIONS:
            raise ValueError(
                f"unknown function {name_or_callable!r}; valid names: {', '.join(function_names())} "
                "(or pass a callable with lo= and hi=)"
            )
        func = FUNCTIONS[key]
    elif callable(name_or_callable):
        if lo is None or hi is None:
            raise ValueError("a user callable needs a range: pass both lo= and hi=")
        lo_f, hi_f = as_real("lo", lo), as_real("hi", hi)
        name = getattr(name_or_callable, "__name__", "") or "custom"
        if name == "<lambda>":
            name = "custom"
        f = _wrap_user(name_or_callable)
        return Function(name, f, _numeric_derivative(f), lo_f, hi_f, description="user callable")
    else:
        raise TypeError(f"expected a function name, a Function or a callable, got {type(name_or_callable).__name__}")
    if lo is None and hi is None:
        return func
    return func.with_range(lo, hi)


def exact_float32(name: Union[str, Function], x: Any) -> Array:
    """The exact function evaluated in float64 and rounded once to float32 (the runtime's exact mode).

    NaN propagates; ``+-inf`` give the function's limits; out-of-domain inputs give NaN/inf as IEEE
    arithmetic does (``reciprocal(0) == inf``, ``sqrt(-1)`` is NaN).
    """
    func = get_function(name)
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"exact_float32 input must be real numbers, got dtype {arr.dtype}")
    with np.errstate(all="ignore"):
        return np.asarray(func.f(arr.astype(np.float64)), dtype=np.float64).astype(np.float32)
