"""The ``nmengine`` command line.

Subcommands (each imports what it needs only when it runs)::

    nmengine demo                      train a CNN on digits, AAT, compile, export, report (the main job)
    nmengine train --model cnn|vit ... train, fine-tune with the PWL tables, write a bundle
    nmengine eval model.nmb            exact vs matrixized accuracy of a bundle on the digits test split
    nmengine approx gelu --segments 32 PWL error table (and --plot)
    nmengine report model.nmb          accelerator cost report (--measure adds CPU wall time)
    nmengine inspect model.nmb         bundle header summary
    nmengine embed --model DIR|NMB     sentence embeddings of stdin lines
    nmengine export-hf DIR -o M.nmb    compile a BERT checkpoint once into a self-contained bundle
    nmengine hf-report --model DIR     cost report of an imported BERT
    nmengine kernel-info               the GEMM core in use
    nmengine serve MODEL               embeddings / program runs over HTTP (OpenAI-compatible)
    nmengine import model.onnx -o m.nmb  import an ONNX model (op mapping summary, coverage)
    nmengine run model.nmb --input x.npz run any bundle on named arrays
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _kernel_info(args: argparse.Namespace) -> int:
    from . import kernels

    if args.threads:
        kernels.set_num_threads(args.threads)
    print(json.dumps(kernels.kernel_info(), indent=2))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .bundle import format_inspect, inspect

    info = inspect(args.bundle)
    print(json.dumps(info, indent=2, default=str) if args.json else format_inspect(info, tensors=args.tensors))
    if info.get("budget") and not args.json:
        from .compile.budget import format_report

        print(format_report(info["budget"]))
    if args.plot:
        if not info.get("budget"):
            raise ValueError(f"{args.bundle}: no budget record to plot (compile with segments='auto')")
        from .compile.budget import plot_curve

        plot_curve(info["budget"], args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _add_commands(sub: argparse._SubParsersAction) -> None:
    """Each module registers the subcommands it implements."""
    from . import cost, hf, workflow
    from .approx import cli as approx_cli
    from .distributed import cli as distributed_cli
    from .serve import cli as serve_cli

    workflow.add_parsers(sub)
    approx_cli.add_parser(sub)
    cost.add_report_parser(sub)
    hf.add_embed_parser(sub)
    hf.add_hf_report_parser(sub)
    hf.add_export_parser(sub)
    serve_cli.add_parser(sub)
    distributed_cli.add_parser(sub)
    try:
        from .onnx import cli as onnx_cli
    except ImportError as e:  # pragma: no cover - the onnx extra is not installed
        _missing_extra(sub, ("import", "run"), e)
    else:
        onnx_cli.add_parser(sub)


def _missing_extra(
    sub: argparse._SubParsersAction, names: tuple[str, ...], error: ImportError
) -> None:  # pragma: no cover
    """Register commands whose extra is missing: they exit with the ImportError's advice."""

    def fail(args: argparse.Namespace) -> int:
        print(f"nmengine {args.command}: {error}", file=sys.stderr)
        return 2

    for name in names:
        p = sub.add_parser(name, help="(needs an extra that is not installed)")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=fail)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nmengine", description="NeuralMatrix: networks as GEMM + PWL tables.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_commands(sub)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"nmengine {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
