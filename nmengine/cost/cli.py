"""``nmengine report``: the cost report of a saved bundle, from the command line or Python."""

from __future__ import annotations

import os
from typing import Any

from ..program import Program
from .config import AcceleratorConfig
from .model import cost_report, default_input_shapes, example_inputs

__all__ = ["run_report", "add_report_arguments", "add_report_parser", "report_main"]


def _load_program(bundle_path: str | os.PathLike) -> Program:
    from .. import bundle  # imported when a report is asked for

    obj = bundle.load(bundle_path)
    if isinstance(obj, Program):
        return obj
    prog = getattr(obj, "program", None)
    if isinstance(prog, Program):
        return prog
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], Program):
        return obj[0]
    raise TypeError(f"{bundle_path}: the bundle does not hold a Program (got {type(obj).__name__})")


def run_report(
    bundle_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    measure: bool = False,
    batch: int = 1,
    seq: int = 128,
    plot: str | os.PathLike | None = None,
    metric: str = "cycles",
    fmt: str = "table",
    repeat: int = 3,
    cpu_power_w: float | None = None,
) -> str:
    """``nmengine report``: the cost report of a saved bundle, as text.

    Loads the Program with :func:`nmengine.bundle.load`, takes the accelerator from ``config_path``
    (JSON; defaults otherwise) and input shapes from ``batch``/``seq``.  With ``measure`` the program
    also runs on random inputs (best of ``repeat``) and measured time per layer goes next to the
    estimate.  ``plot`` writes a bar chart of ``metric``.  ``fmt`` is ``"table"``, ``"json"`` or ``"csv"``.
    """
    if fmt not in ("table", "json", "csv"):
        raise ValueError(f"fmt must be 'table', 'json' or 'csv', got {fmt!r}")
    program = _load_program(bundle_path)
    cfg = AcceleratorConfig.from_json(config_path) if config_path else AcceleratorConfig()
    shapes = default_input_shapes(program, batch=batch, seq=seq)
    report = cost_report(program, cfg, shapes, batch=batch)
    if measure:
        inputs = example_inputs(program, shapes)
        report.attach_measurements(program.profile(inputs, repeat=repeat), cpu_power_w=cpu_power_w)
    text = report.table() if fmt == "table" else report.to_json() if fmt == "json" else report.to_csv()
    if plot:
        report.plot(plot, metric=metric)
        if fmt == "table":
            text += f"\nplot written to {os.fspath(plot)}"
    return text


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
