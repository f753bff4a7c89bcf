"""``nmengine embed-corpus``: embed text or Parquet files into resumable shards on a Dask cluster.

::

    nmengine embed-corpus corpus/*.txt -o out/ --local-workers 2          # a local cluster, 2 x 1 thread
    nmengine embed-corpus data.parquet --column text -o out/ --scheduler tcp://10.0.0.1:8786
    nmengine embed-corpus corpus.txt -o out/ --local-workers 0            # in this process, no Dask

Run the same command again after a crash or Ctrl-C: finished shards are kept, the rest are computed.
The output layout is described in :mod:`nmengine.distributed.job`; read it back with
:func:`nmengine.distributed.read_output`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any, Iterator, Optional

from ..distributed import job as job_mod

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nmengine embed-corpus``."""
    from ..hf import default_model_dir

    default = default_model_dir()
    p = subparsers.add_parser(
        "embed-corpus",
        help="embed text/Parquet files into resumable .npy shards (Dask)",
        description="Embed every sentence (one per line of a text file, or one per row of a Parquet column) "
        "into OUTDIR as .npy shards with an index of source file and row. Re-running the same "
        "command skips finished shards.",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="text files (one sentence per line) or Parquet files")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output directory")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="address of a running Dask scheduler")
    where.add_argument(
        "--local-workers",
        type=int,
        metavar="N",
        default=None,
        help="start a local Dask cluster of N worker processes (default: one per core); "
        "0 runs in this process without Dask",
    )
    p.add_argument("--threads-per-worker", type=int, default=1, help="threads of each local worker process (default 1)")
    p.add_argument(
        "--model",
        default=default,
        required=default is None,
        help=".nmb bundle or Hugging Face directory, at the same path on every worker"
        + (f" (default: {default})" if default else ""),
    )
    p.add_argument("--batch-size", type=int, default=32, help="most sentences per Program run (default 32)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=None,
        help=f"rows per shard (default {job_mod.DEFAULT_SHARD_SIZE}, or the resumed job's)",
    )
    p.add_argument("--column", default="text", help="Parquet column holding the sentences (default 'text')")
    p.add_argument("--exact", action="store_true", help="run the true nonlinearities instead of the PWL tables")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise beyond the model's pipeline")
    p.add_argument("--max-length", type=int, default=None, help="truncation length in tokens (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _positive(name: str, value: Optional[int], *, allow_zero: bool = False) -> None:
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '>= 1'}, got {value}")


def _dask_submit(client: Any, job: job_mod.Job, batch_size: int):
    """``submit(shards)`` for :meth:`Job.run`: one Dask task per shard, results as they finish."""
    from distributed import as_completed

    # one key per (output directory, shard): a re-run attaches to a task still held by the scheduler
    tag = hashlib.sha1(job.outdir.encode()).hexdigest()[:12]

    def submit(shards: list[dict]) -> Iterator[dict]:
        futures = [
            client.submit(
                job_mod.run_shard,
                job.outdir,
                job.sources[s["source"]],
                s,
                job.model,
                job.options,
                batch_size,
                None,
                key=f"embed-corpus-{tag}-{s['name']}",
                pure=False,
            )
            for s in shards
        ]
        for fut in as_completed(futures):
            yield fut.result()

    return submit


def run(args: argparse.Namespace) -> int:
    """Run ``nmengine embed-corpus``; returns the exit code."""
    _positive("--batch-size", args.batch_size)
    _positive("--shard-size", args.shard_size)
    _positive("--threads-per-worker", args.threads_per_worker)
    _positive("--local-workers", args.local_workers, allow_zero=True)
    _positive("--max-length", args.max_length)
    progress = not args.no_progress
    job = job_mod.prepare(
        args.inputs,
        args.output,
        args.model,
        mode="exact" if args.exact else "matrixized",
        normalize=not args.no_normalize,
        max_length=args.max_length,
        shard_size=args.shard_size,
        column=args.column,
    )
    pending = len(job.pending())
    print(
        f"embed-corpus: {len(job.sources)} files, {job.rows} rows in {len(job.shards)} shards -> {job.outdir}"
        + (f" (resuming: {len(job.shards) - pending} shards already done)" if job.resumed else ""),
        file=sys.stderr,
    )
    client = cluster = None
    submit = None
    try:
        if pending and args.local_workers != 0:
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                print(
                    "nmengine embed-corpus: error: running on a cluster needs Dask: pip install 'nmengine[dask]' "
                    "(or --local-workers 0 to run in this process)",
                    file=sys.stderr,
                )
                return 2
            if args.scheduler:
                client = Client(args.scheduler)
            else:
                n = args.local_workers or os.cpu_count() or 1
                cluster = LocalCluster(
                    n_workers=min(n, pending),
                    threads_per_worker=args.threads_per_worker,
                    processes=True,
                    dashboard_address=None,
                )
                client = Client(cluster)
            submit = _dask_submit(client, job, args.batch_size)
        threads = None if submit is not None else (os.cpu_count() or 1)
        stats = job.run(submit, batch_size=args.batch_size, threads=threads, progress=progress)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    rate = stats["computed_rows"] / stats["seconds"] if stats["seconds"] > 0 else 0.0
    print(
        f"embed-corpus: done: {stats['rows']} rows in {stats['shards']} shards; skipped {stats['skipped_shards']} "
        f"finished shards, computed {stats['computed_shards']} ({stats['computed_rows']} rows, "
        f"{stats['seconds']:.1f} s, {rate:.1f} rows/s)",
        file=sys.stderr,
    )
    return 0
