"""``nmengine inspect`` (a bundle's header) and ``nmengine kernel-info`` (the GEMM core in use)."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parsers"]


def _kernel_info(args: argparse.Namespace) -> int:
    from .. import kernels

    if args.threads:
        kernels.set_num_threads(args.threads)
    print(json.dumps(kernels.kernel_info(), indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ..bundle import format_inspect, inspect

    info = inspect(args.bundle)
    print(json.dumps(info, indent=2, default=str) if args.json else format_inspect(info, tensors=args.tensors))
    if info.get("budget") and not args.json:
        from ..compile.budget_report import format_report

        print(format_report(info["budget"]))
    if args.plot:
        if not info.get("budget"):
            raise ValueError(f"{args.bundle}: no budget record to plot (compile with segments='auto')")
        from ..compile.budget_report import plot_curve

        plot_curve(info["budget"], args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``inspect`` and ``kernel-info``."""
    p = sub.add_parser("inspect", help="summarise a bundle's header without loading its tensors")
    p.add_argument("bundle")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--json", action="store_true", help="print the raw header summary as JSON")
    p.add_argument(
        "--plot",
        metavar="PNG",
        default=None,
        help="segments='auto' bundles: save the table bytes vs fidelity plot (needs matplotlib)",
    )
    p.set_defaults(func=_inspect)
    p = sub.add_parser("kernel-info", help="show the GEMM kernel path, blocking and threads")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_kernel_info)
