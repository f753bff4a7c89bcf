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

One module per command group, each registering its parsers and holding its commands: :mod:`.train`
(demo, train, eval), :mod:`.approx`, :mod:`.cost` (report), :mod:`.hf` (embed, export-hf, hf-report),
:mod:`.serve`, :mod:`.distributed` (embed-corpus), :mod:`.onnx` (import, run) and :mod:`.info` (inspect,
kernel-info).  This package is the outermost layer: it imports the library, and no library module
imports it (tests/test_structure.py checks).  What a command computes lives in the library (e.g.
:func:`nmengine.cost.run_report`, :func:`nmengine.hf.fidelity`), where benchmarks and Python users reach it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _add_commands(sub: argparse._SubParsersAction) -> None:
    """Each module of this package registers the subcommands it implements."""
    from . import approx, cost, distributed, hf, info, serve, train

    train.add_parsers(sub)
    approx.add_parser(sub)
    cost.add_report_parser(sub)
    hf.add_embed_parser(sub)
    hf.add_hf_report_parser(sub)
    hf.add_export_parser(sub)
    serve.add_parser(sub)
    distributed.add_parser(sub)
    try:
        from . import onnx
    except ImportError as e:  # pragma: no cover - the onnx extra is not installed
        _missing_extra(sub, ("import", "run"), e)
    else:
        onnx.add_parser(sub)
    info.add_parsers(sub)


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
