"""``nmengine report``: the cost report of a saved bundle (:func:`nmengine.cost.run_report`) from the command line."""

from __future__ import annotations

from typing import Any

from ..cost import run_report

__all__ = ["add_report_arguments", "add_report_parser", "report_main"]


def add_report_arguments(parser: Any) -> Any:
    """Add the ``nmengine report`` arguments to an ``argparse`` (sub)parser."""
    parser.add_argument("bundle", help="a saved program bundle (.nmb)")
    parser.add_argument("--config", default=None, help="accelerator config JSON (see AcceleratorConfig)")
    parser.add_argument("--measure", action="store_true", help="also run on this CPU and show measured time")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length for free dims (default 128)")
    parser.add_argument("--plot", default=None, help="write a per-layer bar chart to this file")
    parser.add_argument("--metric", choices=("cycles", "energy"), default="cycles", help="what --plot shows")
    parser.add_argument("--format", dest="fmt", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats with --measure (best of)")
    parser.add_argument(
        "--cpu-power",
        dest="cpu_power_w",
        type=float,
        default=None,
        help="CPU power in W, for measured energy and GOPS/W",
    )
    return parser


def report_main(args: Any) -> int:
    """Run ``nmengine report`` from parsed arguments (see :func:`add_report_arguments`); prints, returns 0."""
    print(
        run_report(
            args.bundle,
            config_path=args.config,
            measure=args.measure,
            batch=args.batch,
            seq=args.seq,
            plot=args.plot,
            metric=args.metric,
            fmt=args.fmt,
            repeat=args.repeat,
            cpu_power_w=args.cpu_power_w,
        )
    )
    return 0


def add_report_parser(subparsers: Any) -> Any:
    """Register ``nmengine report`` on the CLI's subparsers (called by :mod:`nmengine.cli`)."""
    p = subparsers.add_parser(
        "report",
        help="accelerator cost report of a bundle (--measure adds CPU wall time)",
        description="Per-layer MACs, PWL evaluations, DRAM traffic, cycles and energy of a saved program on "
        "a GEMM accelerator (see docs/cost.md); --measure also times it on this CPU.",
    )
    add_report_arguments(p)
    p.set_defaults(func=report_main)
    return p
