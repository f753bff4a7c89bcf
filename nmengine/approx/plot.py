"""Plotting a fitted table against its function (optional: needs matplotlib, ``pip install nmengine[plot]``).

matplotlib is imported inside :func:`plot_fit` only, so importing :mod:`nmengine.approx` never
requires it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..pwl import PWLTable
from .catalog import Function, get_function

__all__ = ["plot_fit", "PlotDependencyError", "INSTALL_HINT"]

INSTALL_HINT = "pip install nmengine[plot]"


class PlotDependencyError(ImportError):
    """matplotlib is not installed."""


def _matplotlib() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised with a patched import in the tests
        raise PlotDependencyError(f"plotting needs matplotlib: {INSTALL_HINT}") from exc
    return plt


def plot_fit(
    tables: Union[PWLTable, Sequence[PWLTable]],
    fn: Union[str, Function, Callable[[np.ndarray], np.ndarray], None] = None,
    *,
    lo: Optional[float] = None,
    hi: Optional[float] = None,
    path: Optional[str] = None,
    points: int = 4001,
) -> Any:
    """Draw ``fn`` with one or more fitted tables (top) and their error curves (bottom).

    ``fn`` defaults to the catalog function named by the first table; the range defaults to the
    fitted range (``table.meta``) widened by 15 % on each side so the outer segments show.  Relative
    functions get a log x axis and a relative error curve.  Breakpoints are marked on the error
    axis.  Saves to ``path`` if given (then closes the figure) and returns the matplotlib Figure.
    Raises :class:`PlotDependencyError` (an ImportError) when matplotlib is missing.
    """
    if isinstance(tables, PWLTable):
        tables = [tables]
    tables = list(tables)
    if not tables or not all(isinstance(t, PWLTable) for t in tables):
        raise TypeError("plot_fit needs a PWLTable or a sequence of PWLTables")
    first = tables[0]
    if fn is None:
        if not first.name:
            raise ValueError("the table has no name: pass fn=")
        fn = first.meta.get("fn", first.name)
    func = fn if isinstance(fn, Function) else None
    if func is None and isinstance(fn, str):
        func = get_function(fn)
    ref = func.f if func is not None else fn
    if not callable(ref):
        raise TypeError("fn must be a function name, a Function or a callable")
    relative = bool(func.relative) if func is not None else False
    flo = float(first.meta.get("lo", first.lo))
    fhi = float(first.meta.get("hi", first.hi))
    if relative:
        span = np.log(fhi) - np.log(flo)
        a = flo * np.exp(-0.15 * span) if lo is None else float(lo)
        b = fhi * np.exp(0.15 * span) if hi is None else float(hi)
        x = np.geomspace(a, b, points)
    else:
        a = flo - 0.15 * (fhi - flo) if lo is None else float(lo)
        b = fhi + 0.15 * (fhi - flo) if hi is None else float(hi)
        x = np.linspace(a, b, points)
    plt = _matplotlib()
    x32 = x.astype(np.float32)
    exact = np.asarray(ref(x32.astype(np.float64)), dtype=np.float64)
    fig, (ax_f, ax_e) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    name = func.name if func is not None else getattr(ref, "__name__", "f")
    ax_f.plot(x, exact, color="black", lw=2.2, label=f"{name} (exact)")
    inrange = (x >= flo) & (x <= fhi)
    worst_in, worst_all = 0.0, 0.0
    for t in tables:
        label = f"{t.meta.get('method', 'table')}, {t.meta.get('segments', t.n_segments)} segments"
        y = t(x32).astype(np.float64)
        ax_f.plot(x, y, lw=1.1, label=label)
        err = y - exact
        if relative:
            with np.errstate(all="ignore"):
                err = err / np.abs(exact)
        ax_e.plot(x, err, lw=0.9, label=label)
        finite = np.isfinite(err)
        worst_in = max(worst_in, float(np.max(np.abs(err[inrange & finite]), initial=0.0)))
        worst_all = max(worst_all, float(np.max(np.abs(err[finite]), initial=0.0)))
        inside = t.breakpoints[(t.breakpoints >= a) & (t.breakpoints <= b)]
        ax_e.plot(inside, np.zeros_like(inside), "|", ms=8, color=ax_e.lines[-1].get_color())
    for ax in (ax_f, ax_e):
        ax.axvspan(flo, fhi, color="0.93", zorder=0)
        ax.grid(True, lw=0.3)
        if relative:
            ax.set_xscale("log")
    if relative and np.all(exact[np.isfinite(exact)] > 0):
        ax_f.set_yscale("log")
    if worst_in > 0 and worst_all > 3.0 * worst_in:
        # outer segments (clamp / asymptote) may be far off: keep the fitted range's error readable
        ax_e.set_ylim(-1.6 * worst_in, 1.6 * worst_in)
        ax_e.text(
            0.01, 0.97, "outside the fitted range: clipped", transform=ax_e.transAxes, va="top", fontsize=7, color="0.4"
        )
    ax_f.set_ylabel("f(x)")
    ax_f.legend(loc="best", fontsize=8)
    ax_f.set_title(f"PWL approximation of {name} on [{flo:.4g}, {fhi:.4g}] (shaded)")
    ax_e.set_ylabel("relative error" if relative else "table - f")
    ax_e.set_xlabel("x")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig
