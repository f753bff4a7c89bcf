"""PWL approximation of nonlinear functions: the catalog, fitting, bias correction, error reports.

NeuralMatrix (Sun et al., arXiv 2305.14405) computes every nonlinearity of a network as a
piecewise-linear (PWL) table evaluated in the GEMM epilogue.  This package builds those tables:

* :mod:`~nmengine.approx.catalog` -- the functions (``gelu``, ``exp``, ``tanh``, ``reciprocal`` ...)
  with float64 references, derivatives, default ranges and asymptotes; :func:`get_function`,
  :func:`exact_float32`.
* :mod:`~nmengine.approx.fit` -- :func:`fit`: *horizontal size optimisation* (uniform or
  equal-ripple non-uniform breakpoints, geometric for wide dynamic-range functions, data-focused with
  calibration activations, or the fewest segments for a ``max_error``), plus outer segments that
  follow the true asymptotes; :func:`error_report`.
* :mod:`~nmengine.approx.bias` -- *vertical bias correction*: per-segment minimax lines
  (:func:`minimax_line`) and the data-driven correction of the next layer's bias
  (:func:`mean_error`, :func:`bias_correction`).
* :mod:`~nmengine.approx.plot` -- :func:`plot_fit` (optional matplotlib).

The ``nmengine approx`` command that prints these tables is :mod:`nmengine.cli.approx`.

Example::

    import nmengine as nm
    table = nm.approx.fit("gelu", segments=32)        # max abs error ~5e-4 on [-8, 8]
    y = table(x)                                      # float32, bit-identical to the C epilogue
    table.error("gelu")                               # {"max_abs": ..., "max_rel": ..., ...}
"""

from __future__ import annotations

from .bias import bias_correction, centered_chord, mean_error, minimax_line, minimax_lines
from .catalog import FUNCTIONS, Function, Tail, exact_float32, function_names, get_function
from .fit import METHODS, error_report, fit
from .plot import PlotDependencyError, plot_fit

__all__ = [
    "FUNCTIONS",
    "Function",
    "Tail",
    "get_function",
    "function_names",
    "exact_float32",
    "fit",
    "METHODS",
    "error_report",
    "minimax_line",
    "minimax_lines",
    "centered_chord",
    "mean_error",
    "bias_correction",
    "plot_fit",
    "PlotDependencyError",
]
