"""The Hugging Face commands of the command line: ``nmengine embed``, ``nmengine export-hf``, ``nmengine hf-report``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

from ..hf.bert import INPUT_NAMES
from ..hf.config import default_model_dir
from ..hf.embedder import SentenceEmbedder
from ..hf.load import DEFAULT_SEGMENTS, export, load_bert
from .compile_options import add_precision_arg, add_segments_args, segments_options

__all__ = ["add_embed_parser", "run_embed", "add_export_parser", "run_export", "add_hf_report_parser", "run_hf_report"]


def _add_model_arg(p: argparse.ArgumentParser, *, bundle: bool = False) -> None:
    default = default_model_dir()
    what = "Hugging Face BERT directory" + (" or a bundle from `nmengine export-hf`" if bundle else "")
    p.add_argument(
        "--model", default=default, required=default is None, help=what + (f" (default: {default})" if default else "")
    )


def add_embed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nmengine embed``: sentences (one per line, stdin) -> embeddings (stdout)."""
    p = subparsers.add_parser(
        "embed",
        help="embed sentences (one per line) with a BERT sentence model",
        description="Read sentences, one per line, and write their embeddings: a .npy "
        "array (n, hidden) float32, or JSON lines with --format jsonl.",
    )
    _add_model_arg(p, bundle=True)
    p.add_argument("--exact", action="store_true", help="run the true nonlinearities instead of the PWL tables")
    p.add_argument("--format", choices=("npy", "jsonl"), default="npy", help="output format (default npy)")
    p.add_argument("--batch-size", type=int, default=32)
    add_segments_args(p, DEFAULT_SEGMENTS)
    add_precision_arg(p, None)
    p.add_argument("--input", "-i", default="-", help="input file (default stdin)")
    p.add_argument("--output", "-o", default="-", help="output file (default stdout)")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise beyond the model's pipeline")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    p.set_defaults(func=run_embed)
    return p


def run_embed(args: argparse.Namespace) -> int:
    """Run ``nmengine embed``; returns the exit code."""
    if args.input == "-":
        text = sys.stdin.read()
    else:
        with open(args.input, encoding="utf-8") as f:
            text = f.read()
    lines = text.splitlines()
    mode = "exact" if args.exact else "matrixized"
    if os.path.isfile(args.model):  # a compiled bundle: its tables are fixed
        if getattr(args, "segments", None) is not None:
            raise ValueError(
                f"--segments cannot change the compiled bundle {args.model!r}; "
                "export it again with `nmengine export-hf --segments N`"
            )
        if getattr(args, "precision", None) is not None:
            raise ValueError(
                f"--precision cannot change the compiled bundle {args.model!r}; "
                "export it again with `nmengine export-hf --precision P`"
            )
        emb = SentenceEmbedder(args.model, mode=mode)
    else:
        opts: dict[str, Any] = segments_options(args)
        if getattr(args, "precision", None) is not None:
            opts["precision"] = args.precision
        if args.exact and opts.get("precision", "float32") == "float32":
            opts["calibrate"] = False  # exact mode does not use the tables
        emb = SentenceEmbedder(args.model, mode=mode, progress=bool(args.progress), **opts)
    vecs = emb.encode(
        lines, batch_size=args.batch_size, normalize=not args.no_normalize, show_progress=bool(args.progress)
    )
    if args.format == "npy":
        if args.output == "-":
            np.save(sys.stdout.buffer, vecs)
            sys.stdout.buffer.flush()
        else:
            with open(args.output, "wb") as f:
                np.save(f, vecs)
    else:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
        try:
            for s, v in zip(lines, vecs):
                out.write(json.dumps({"text": s, "embedding": [float(x) for x in v]}) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
    return 0


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nmengine export-hf``: compile a checkpoint once into a self-contained bundle."""
    p = subparsers.add_parser(
        "export-hf",
        help="compile a BERT checkpoint into one self-contained bundle",
        description="Compile a Hugging Face BERT directory (tables calibrated on the "
        "corpus) and save program, configuration and tokenizer in one .nmb "
        "file that `nmengine embed --model`, `nmengine serve` and "
        "nm.hf.SentenceEmbedder start from in well under a second.",
    )
    p.add_argument("model_dir", help="Hugging Face BERT / sentence-transformers directory")
    p.add_argument("--output", "-o", required=True, help="bundle to write (.nmb)")
    add_segments_args(p, DEFAULT_SEGMENTS)
    add_precision_arg(p, None)
    p.add_argument("--no-cache", action="store_true", help="compile even when a cached program exists")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Run ``nmengine export-hf``; returns the exit code."""
    opts: dict[str, Any] = {"progress": bool(args.progress), **segments_options(args)}
    if args.precision is not None:
        opts["precision"] = args.precision
    if args.no_cache:
        opts["cache"] = False
    path = export(args.model_dir, args.output, **opts)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return 0


def add_hf_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nmengine hf-report``: the per-layer accelerator cost of a BERT checkpoint."""
    p = subparsers.add_parser(
        "hf-report",
        help="per-layer cost report of a BERT checkpoint",
        description="Compile a BERT checkpoint and print its per-layer cost report.",
    )
    _add_model_arg(p)
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--config", default=None, help="accelerator configuration for the cost model (default: its default)")
    p.add_argument("--segments", type=int, default=None, help=f"PWL segments (default {DEFAULT_SEGMENTS})")
    add_precision_arg(p, None)
    p.set_defaults(func=run_hf_report)
    return p


def run_hf_report(args: argparse.Namespace) -> int:
    """Run ``nmengine hf-report``; returns the exit code (2 when the cost model is unavailable)."""
    try:
        import importlib

        importlib.import_module("nmengine.cost")
    except ImportError as exc:
        print(f"nmengine hf-report: the cost model (nmengine.cost) is not available: {exc}", file=sys.stderr)
        return 2
    opts: dict[str, Any] = {"calibrate": False}
    if getattr(args, "segments", None) is not None:
        opts["segments"] = args.segments
    if getattr(args, "precision", None) is not None:
        opts["precision"] = args.precision
    program = load_bert(args.model, **opts)
    shape = (int(args.batch), int(args.seq_len))
    report = program.cost(args.config, {k: shape for k in INPUT_NAMES})
    print(report.table() if hasattr(report, "table") else report)
    return 0
