"""``nmengine approx``: fit PWL tables from the command line and print their errors.

Examples::

    nmengine approx                                   # list the catalog
    nmengine approx gelu --segments 32                # one optimized table, its errors
    nmengine approx gelu exp tanh                     # uniform vs optimized, 8/16/32/64 segments
    nmengine approx gelu --segments 16 32 --method both --lo -6 --hi 6
    nmengine approx reciprocal --max-error 1e-3       # fewest segments meeting the bound
    nmengine approx gelu --segments 32 --plot gelu.png --save gelu.json
    nmengine approx gelu exp tanh sigmoid silu --compare --markdown   # docs/approx.md table

:mod:`nmengine.cli` wires :func:`add_parser` / :func:`run`; ``python -m nmengine.cli.approx`` works standalone.
Exit codes: 0 ok, 1 invalid request (message on stderr), 2 plotting requested without matplotlib.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Optional, Sequence, TextIO

from ..approx.catalog import FUNCTIONS, function_names, get_function
from ..approx.fit import METHODS, fit

__all__ = ["add_parser", "configure_parser", "run", "main", "format_rows", "format_comparison"]

DEFAULT_SEGMENTS = (8, 16, 32, 64)
_DESCRIPTION = (
    "Fit PWL tables for catalog functions (NeuralMatrix horizontal size optimisation + vertical bias "
    "correction) and print max abs / max rel / mean abs errors."
)
_EPILOG = "examples:" + (__doc__ or "").split("Examples::", 1)[-1].split(":mod:`nmengine.cli` wires", 1)[0]


def configure_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``approx`` arguments to an existing parser."""
    p.add_argument(
        "functions",
        nargs="*",
        metavar="FUNCTION",
        help=f"catalog function(s): {', '.join(function_names())}; none = list the catalog",
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--segments",
        "-n",
        type=int,
        nargs="+",
        metavar="N",
        help=f"segment count(s) inside [lo, hi] (default: {' '.join(map(str, DEFAULT_SEGMENTS))})",
    )
    size.add_argument(
        "--max-error",
        type=float,
        metavar="E",
        help="fewest segments with max error <= E (relative error for reciprocal/rsqrt/sqrt)",
    )
    size.add_argument("--width", type=float, metavar="W", help="uniform segments of width W")
    p.add_argument(
        "--method",
        choices=[*METHODS, "both"],
        default=None,
        help="breakpoint placement (default: optimized with --segments/--max-error, both for the default report)",
    )
    p.add_argument("--lo", type=float, default=None, help="range start (default: the function's)")
    p.add_argument("--hi", type=float, default=None, help="range end (default: the function's)")
    p.add_argument("--points", type=int, default=200_001, help="grid points for the error measurement")
    p.add_argument(
        "--plot", metavar="PNG", default=None, help="draw function, tables and error curves (needs matplotlib)"
    )
    p.add_argument("--save", metavar="JSON", default=None, help="write the fitted table(s) as JSON")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument(
        "--compare",
        action="store_true",
        help="one row per (function, segments): uniform vs optimized max error and ratio",
    )
    return p


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``approx`` on an ``argparse`` subparsers object; sets ``func=run`` as default."""
    p = subparsers.add_parser(
        "approx",
        help="fit piecewise-linear tables and report their error",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    configure_parser(p)
    p.set_defaults(func=run)
    return p


def _fmt(v: float) -> str:
    return f"{v:.3e}" if v == v else "nan"


def _fmt_rel(v: float) -> str:
    # relative error is meaningless where f crosses zero (gelu(0) = 0): don't print 1e+304
    return ">1e6" if v > 1e6 else _fmt(v)


def format_rows(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Rows from :func:`run`/``error_report`` as an aligned text (or markdown) table."""
    head = ["function", "method", "segments", "table", "max_abs", "max_rel", "mean_abs", "range", "fit_ms"]
    body = [
        [
            r["function"],
            r["method"],
            str(r["segments"]),
            str(r["table_segments"]),
            _fmt(r["max_abs"]),
            _fmt_rel(r["max_rel"]),
            _fmt(r["mean_abs"]),
            f"[{r['lo']:.6g}, {r['hi']:.6g}]",
            f"{r['fit_ms']:.1f}",
        ]
        for r in rows
    ]
    return _table(head, body, markdown)


def format_comparison(rows: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Uniform vs optimized max error (and their ratio) per (function, segments)."""
    key: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        key.setdefault((r["function"], r["segments"]), {})[r["method"]] = r
    head = ["function", "range", "segments", "uniform max_abs", "optimized max_abs", "ratio", "optimized mean_abs"]
    body = []
    for (name, n), by in key.items():
        u, o = by.get("uniform"), by.get("optimized")
        ratio = u["max_abs"] / o["max_abs"] if u and o and o["max_abs"] > 0 else float("nan")
        any_row: dict[str, Any] = o or u or {}
        body.append(
            [
                name,
                f"[{any_row['lo']:.6g}, {any_row['hi']:.6g}]",
                str(n),
                _fmt(u["max_abs"]) if u else "-",
                _fmt(o["max_abs"]) if o else "-",
                f"{ratio:.1f}x" if ratio == ratio else "-",
                _fmt(o["mean_abs"]) if o else "-",
            ]
        )
    return _table(head, body, markdown)


def _table(head: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*r) for r in body])


def _list_catalog(out: TextIO) -> None:
    out.write("PWL catalog (nmengine approx FUNCTION ...):\n")
    for name in function_names():
        f = FUNCTIONS[name]
        kind = "relative" if f.relative else ("exact" if f.exact else "absolute")
        out.write(f"  {name:11s} [{f.lo:g}, {f.hi:g}]  {kind:8s}  {f.description}\n")


def run(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    """Execute ``nmengine approx`` for parsed ``args``; returns the exit code."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    names = list(getattr(args, "functions", []) or [])
    if not names:
        _list_catalog(out)
        return 0
    segs = getattr(args, "segments", None)
    max_error = getattr(args, "max_error", None)
    width = getattr(args, "width", None)
    method = getattr(args, "method", None)
    if method is None:
        method = "optimized" if (segs or max_error is not None) else ("uniform" if width else "both")
    methods = list(METHODS) if method == "both" else [method]
    if width is not None and methods != ["uniform"]:
        err.write("error: --width sets uniform segments; use it with --method uniform\n")
        return 1
    if getattr(args, "plot", None) and len(names) != 1:
        err.write("error: --plot draws one function at a time\n")
        return 1
    rows: list[dict[str, Any]] = []
    tables = []
    func = None
    try:
        for name in names:
            func = get_function(name, args.lo, args.hi)
            for m in methods:
                sizes: list[dict[str, Any]]
                if max_error is not None:
                    sizes = [{"max_error": max_error}]
                elif width is not None:
                    sizes = [{"width": width}]
                else:
                    sizes = [{"segments": n} for n in (segs or DEFAULT_SEGMENTS)]
                for size in sizes:
                    t0 = time.perf_counter()
                    table = fit(func, method=m, lo=func.lo, hi=func.hi, **size)
                    ms = 1e3 * (time.perf_counter() - t0)
                    lo, hi = float(table.meta["lo"]), float(table.meta["hi"])
                    e = table.error(func.f, lo, hi, points=int(args.points))
                    rows.append(
                        {
                            "function": func.name,
                            "method": table.meta.get("method", m),
                            "segments": int(table.meta["segments"]),
                            "table_segments": table.n_segments,
                            "lo": lo,
                            "hi": hi,
                            "max_abs": e["max_abs"],
                            "max_rel": e["max_rel"],
                            "mean_abs": e["mean_abs"],
                            "fit_ms": ms,
                        }
                    )
                    tables.append(table)
    except ValueError as exc:
        err.write(f"error: {exc}\n")
        return 1

    if getattr(args, "compare", False):
        out.write(format_comparison(rows, markdown=args.markdown) + "\n")
    else:
        out.write(format_rows(rows, markdown=args.markdown) + "\n")

    if getattr(args, "save", None):
        payload = tables[0].to_dict() if len(tables) == 1 else [t.to_dict() for t in tables]
        with open(args.save, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=1)
        out.write(f"saved {len(tables)} table(s) to {args.save}\n")

    if getattr(args, "plot", None):
        from ..approx.plot import INSTALL_HINT, PlotDependencyError, plot_fit

        try:
            plot_fit(tables, func, path=args.plot)
        except PlotDependencyError:
            err.write(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}\n")
            return 2
        out.write(f"plot written to {args.plot}\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Standalone entry point: ``python -m nmengine.cli.approx ...``."""
    parser = argparse.ArgumentParser(
        prog="nmengine approx",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
