"""The options every compiling command shares (train, the Hugging Face commands, import):
``--segments N|auto``, ``--target SPEC`` and ``--precision float32|int8``."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from ..compile.budget import parse_target

__all__ = ["segments_arg", "add_segments_args", "segments_options", "add_precision_arg"]


def segments_arg(value: str) -> int | str:
    """argparse type of ``--segments``: a positive integer or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value!r}")
    return n


def add_segments_args(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """Add ``--segments N|auto`` and ``--target SPEC`` to a command."""
    parser.add_argument(
        "--segments",
        type=segments_arg,
        default=None,
        help=f"PWL segments per table, or 'auto' to choose them for --target (default {default})",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="with --segments auto: e.g. 'cosine=0.9999', 'bytes=15k', "
        "'cosine=0.9999,bytes=15k' (default cosine=0.9999)",
    )


def segments_options(args: argparse.Namespace) -> dict[str, Any]:
    """``segments``/``target`` keyword arguments from parsed ``--segments``/``--target``."""
    segments, target = getattr(args, "segments", None), getattr(args, "target", None)
    if target is not None and segments != "auto":
        raise ValueError("--target needs --segments auto")
    opts: dict[str, Any] = {}
    if segments is not None:
        opts["segments"] = segments
    if target is not None:
        parse_target(target, labels=np.zeros(1, dtype=np.int64))  # fail early on a malformed --target
        opts["target"] = target
    return opts


def add_precision_arg(parser: argparse.ArgumentParser, default: str | None = "float32") -> None:
    """Add ``--precision float32|int8`` (``default`` None: the command keeps what its model has)."""
    parser.add_argument(
        "--precision",
        choices=("float32", "int8"),
        default=default,
        help="GEMM precision of the linear layers and convolutions (default float32; int8: docs/int8.md)",
    )
