"""A resumable corpus-embedding job: shard plan, manifest, atomic shard files, reading the result.

Layout of an output directory::

    OUTDIR/manifest.json            the job (inputs with size and mtime, model, options, shard plan)
    OUTDIR/shard-000000.index.npy   (rows, 2) int64: [source number in manifest["sources"], row]
    OUTDIR/shard-000000.npy         (rows, dim) float32 embeddings of those rows, in the same order

``row`` is the 0-based line number in a text file (one sentence per line, ``\\n`` or ``\\r\\n``) or the
0-based row number in a Parquet file.  Shards cut every source into runs of ``shard_size`` rows; shard
numbers follow the order of the inputs, so concatenating the shards gives the corpus in input order.

Each shard is written by the worker that computed it: index first, embeddings last, each through a
temporary file that is fsynced and renamed into place.  A shard is finished exactly when both files are
present with the planned row count, so a job killed at any point and run again redoes only unfinished
shards, and no row is lost or written twice.  Workers read their rows from the source files and write
the shards themselves: inputs and OUTDIR must be at the same path on every worker (a shared filesystem).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Optional, Sequence

import numpy as np

from .worker import embed_texts, load_embedder, resolve_model, set_threads

__all__ = [
    "JobError",
    "Job",
    "plan_sources",
    "prepare",
    "run_shard",
    "shard_done",
    "read_output",
    "MANIFEST",
    "DEFAULT_SHARD_SIZE",
]

MANIFEST = "manifest.json"
FORMAT = "nmengine-embed-corpus"
DEFAULT_SHARD_SIZE = 10_000
_CHUNK = 1 << 24  # bytes per read when scanning a text file


class JobError(ValueError):
    """The output directory holds another job, or an input changed under a running one."""


# ---------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------
def _is_parquet(path: str) -> bool:
    if path.lower().endswith((".parquet", ".pq")):
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _scan_text(path: str, shard_size: int) -> tuple[int, list[int]]:
    """Line count of a text file and the byte offset where every shard starts."""
    starts = [0]
    lines = 0
    pos = 0
    last = b"\n"
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            nl = np.flatnonzero(np.frombuffer(chunk, dtype=np.uint8) == 10)
            # the newline at nl[t] ends line number lines + t (0-based); a shard starts after every
            # shard_size-th line
            first = (-lines - 1) % shard_size
            starts.extend(pos + int(j) + 1 for j in nl[first::shard_size])
            lines += len(nl)
            pos += len(chunk)
            last = chunk[-1:]
    if last != b"\n":  # a last line without a newline
        lines += 1
    if starts and starts[-1] >= pos:
        starts.pop()  # the file ends exactly at a shard boundary
    return lines, starts


def plan_sources(inputs: Sequence[str], *, shard_size: int, column: str = "text") -> tuple[list[dict], list[dict]]:
    """``(sources, shards)`` for the input files (text, or Parquet with a ``column`` of str)."""
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ValueError(f"shard_size must be a positive int, got {shard_size!r}")
    if not inputs:
        raise ValueError("no input files given")
    sources: list[dict] = []
    shards: list[dict] = []
    for path in inputs:
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"input {path!r} is not a file")
        st = os.stat(path)
        src: dict[str, Any] = {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        k = len(sources)
        if _is_parquet(path):
            try:
                import pyarrow.parquet as pq
            except ImportError as e:
                raise ImportError(f"{path} is a Parquet file: reading it needs pyarrow (pip install pyarrow)") from e
            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            if column not in names:
                raise ValueError(f"{path}: no column {column!r} (columns: {names}); choose one with --column")
            rows = int(pf.metadata.num_rows)
            src.update(kind="parquet", column=column, rows=rows)
            for s in range(0, rows, shard_size):
                shards.append({"source": k, "start": s, "rows": min(shard_size, rows - s)})
        else:
            rows, starts = _scan_text(path, shard_size)
            src.update(kind="text", rows=rows)
            ends = starts[1:] + [st.st_size]
            for i, (b0, b1) in enumerate(zip(starts, ends)):
                shards.append(
                    {
                        "source": k,
                        "start": i * shard_size,
                        "rows": min(shard_size, rows - i * shard_size),
                        "bytes": [b0, b1],
                    }
                )
        sources.append(src)
    for i, sh in enumerate(shards):
        sh["id"] = i
        sh["name"] = f"shard-{i:06d}"
    return sources, shards


def _model_stamp(path: str) -> dict[str, Any]:
    """What identifies the model's content cheaply: size and mtime of its weight file."""
    target = path
    if os.path.isdir(path):
        for name in ("model.safetensors", "config.json"):
            if os.path.exists(os.path.join(path, name)):
                target = os.path.join(path, name)
                break
    st = os.stat(target)
    return {"path": path, "file": os.path.basename(target), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------------------------
# Reading rows and writing shards (runs on the workers)
# ---------------------------------------------------------------------------------------------
def read_rows(source: dict, shard: dict) -> list[str]:
    """The shard's sentences, read from its source file."""
    path = source["path"]
    n = int(shard["rows"])
    if source["kind"] == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        start, stop = int(shard["start"]), int(shard["start"]) + n
        groups, offset, first = [], 0, None
        for g in range(pf.metadata.num_row_groups):
            m = pf.metadata.row_group(g).num_rows
            if offset + m > start and offset < stop:
                groups.append(g)
                first = offset if first is None else first
            offset += m
        table = pf.read_row_groups(groups, columns=[source["column"]]) if groups else None
        values = [] if table is None or first is None else table.column(0).slice(start - first, n).to_pylist()
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise TypeError(
                    f"{path}: column {source['column']!r} row {start + i} is {type(v).__name__}, expected a string"
                )
        rows = values
    else:
        b0, b1 = shard["bytes"]
        with open(path, "rb") as f:
            f.seek(b0)
            data = f.read(b1 - b0)
        try:
            text = data.decode("utf-8-sig" if b0 == 0 else "utf-8")
        except UnicodeDecodeError as e:
            line = shard["start"] + data[: e.start].count(b"\n")
            raise ValueError(f"{path}: line {line + 1} is not valid UTF-8 ({e.reason})") from None
        rows = text.split("\n")
        if rows and rows[-1] == "":
            rows.pop()
        rows = [r[:-1] if r.endswith("\r") else r for r in rows]
    if len(rows) != n:
        raise JobError(
            f"{path}: shard {shard['name']} should hold {n} rows but has {len(rows)}: "
            "the file changed after the job was planned"
        )
    return rows


def _write_atomic(path: str, array: np.ndarray) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - platforms without directory fsync
        pass


def _npy_shape(path: str) -> Optional[tuple[int, ...]]:
    try:
        return tuple(np.load(path, mmap_mode="r").shape)
    except (OSError, ValueError):
        return None


def shard_done(outdir: str, shard: dict, dim: int) -> bool:
    """Whether the shard's two files are in place with the planned shapes."""
    base = os.path.join(outdir, shard["name"])
    n = int(shard["rows"])
    return _npy_shape(base + ".npy") == (n, dim) and _npy_shape(base + ".index.npy") == (n, 2)


def run_shard(
    outdir: str,
    source: dict,
    shard: dict,
    model: str,
    options: dict,
    batch_size: int = 32,
    threads: Optional[int] = None,
) -> dict[str, Any]:
    """Compute one shard and write it atomically; returns ``{"id", "rows", "seconds", "pid"}``."""
    t0 = time.perf_counter()
    if threads is None:
        from .on_dask import worker_threads

        threads = worker_threads(None)
    set_threads(threads)
    texts = read_rows(source, shard)
    emb = load_embedder(model, mode=options["mode"], max_length=options.get("max_length"))
    vectors = embed_texts(emb, texts, batch_size=batch_size, normalize=options["normalize"])
    index = np.empty((len(texts), 2), dtype=np.int64)
    index[:, 0] = shard["source"]
    index[:, 1] = np.arange(shard["start"], shard["start"] + len(texts), dtype=np.int64)
    base = os.path.join(outdir, shard["name"])
    _write_atomic(base + ".index.npy", index)
    _write_atomic(base + ".npy", vectors)  # written last: its presence marks the shard finished
    return {"id": shard["id"], "rows": len(texts), "seconds": time.perf_counter() - t0, "pid": os.getpid()}


# ---------------------------------------------------------------------------------------------
# The job: create or resume, run, read
# ---------------------------------------------------------------------------------------------
@dataclass
class Job:
    """A planned job in ``outdir`` (see :func:`prepare`)."""

    outdir: str
    model: str
    options: dict
    dim: int
    sources: list
    shards: list
    shard_size: int
    resumed: bool = False
    stats: dict = field(default_factory=dict)

    def pending(self) -> list[dict]:
        """Shards not finished yet."""
        return [s for s in self.shards if not shard_done(self.outdir, s, self.dim)]

    @property
    def rows(self) -> int:
        return sum(int(s["rows"]) for s in self.shards)

    def run(
        self,
        submit: Optional[Callable[[list[dict]], Iterable[dict]]] = None,
        *,
        batch_size: int = 32,
        threads: Optional[int] = None,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Compute the unfinished shards and mark the job complete; returns a summary.

        ``submit(shards)`` runs :func:`run_shard` for each shard (anywhere) and yields its results as they
        finish; without it the shards run one by one in this process.
        """
        todo = self.pending()
        done_rows = self.rows - sum(int(s["rows"]) for s in todo)
        t0 = time.perf_counter()
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.rows, initial=done_rows, unit="rows", desc="embed-corpus", smoothing=0.1)
        computed, rows = 0, 0
        try:
            if submit is None:
                results: Iterable[dict] = (
                    run_shard(self.outdir, self.sources[s["source"]], s, self.model, self.options, batch_size, threads)
                    for s in todo
                )
            else:
                results = submit(todo)
            for r in results:
                computed += 1
                rows += int(r["rows"])
                if bar is not None:
                    bar.update(int(r["rows"]))
        finally:
            if bar is not None:
                bar.close()
        missing = self.pending()
        if missing:
            raise JobError(f"{len(missing)} shards are still missing after the run (first: {missing[0]['name']})")
        seconds = time.perf_counter() - t0
        self.stats = {
            "shards": len(self.shards),
            "rows": self.rows,
            "skipped_shards": len(self.shards) - len(todo),
            "computed_shards": computed,
            "computed_rows": rows,
            "seconds": seconds,
        }
        _write_manifest(self, complete=True)
        _remove_stale_temporaries(self.outdir)
        return dict(self.stats)


def _job_key(model: str, options: dict, sources: list, shard_size: int) -> dict[str, Any]:
    return {
        "model": _model_stamp(model),
        "options": options,
        "shard_size": shard_size,
        "sources": [{k: s[k] for k in ("path", "size", "mtime_ns", "kind", "column") if k in s} for s in sources],
    }


def _write_manifest(job: Job, *, complete: bool) -> None:
    doc = {
        "format": FORMAT,
        "version": 1,
        "complete": complete,
        "job": _job_key(job.model, job.options, job.sources, job.shard_size),
        "dim": job.dim,
        "rows": job.rows,
        "sources": job.sources,
        "shards": job.shards,
    }
    path = os.path.join(job.outdir, MANIFEST)
    fd, tmp = tempfile.mkstemp(dir=job.outdir, prefix="." + MANIFEST + ".", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_stale_temporaries(outdir: str) -> None:
    for name in os.listdir(outdir):
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(outdir, name))
            except OSError:  # pragma: no cover - a concurrent writer just renamed it
                pass


def _read_manifest(outdir: str) -> Optional[dict]:
    path = os.path.join(outdir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        raise JobError(f"{path} is not a readable job manifest: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise JobError(f"{path} is not an embed-corpus manifest")
    return doc


def prepare(
    inputs: Sequence[str],
    outdir: str,
    model: Any,
    *,
    mode: str = "matrixized",
    normalize: bool = True,
    max_length: Optional[int] = None,
    shard_size: Optional[int] = None,
    column: str = "text",
    dim: Optional[int] = None,
) -> Job:
    """Plan a new job in ``outdir``, or resume the one already there.

    A job is resumed when its manifest names the same inputs (path, size, mtime), model, options and
    shard size (``shard_size=None`` takes the manifest's); anything else raises :class:`JobError`.
    """
    from .worker import embedding_dim

    if mode not in ("matrixized", "exact"):
        raise ValueError(f"mode must be 'matrixized' or 'exact', got {mode!r}")
    path = resolve_model(model)
    outdir = os.path.abspath(os.fspath(outdir))
    os.makedirs(outdir, exist_ok=True)
    old = _read_manifest(outdir)
    old_key = old.get("job") if old is not None else None
    if old is not None and not isinstance(old_key, dict):
        raise JobError(f"{outdir}/{MANIFEST} has no job description")
    size = shard_size if shard_size is not None else (old_key["shard_size"] if old_key else DEFAULT_SHARD_SIZE)
    options = {"mode": mode, "normalize": bool(normalize), "max_length": max_length}
    sources, shards = plan_sources(inputs, shard_size=size, column=column)
    width = int(dim) if dim is not None else embedding_dim(path)
    job = Job(outdir, path, options, width, sources, shards, size)
    if old_key is not None:
        new_key = _job_key(path, options, sources, size)
        diff = [k for k in new_key if old_key.get(k) != new_key[k]]
        if diff:
            raise JobError(
                f"{outdir} holds another job (different {', '.join(diff)}); use a new output directory or remove it"
            )
        job.resumed = True
    else:
        stray = [n for n in os.listdir(outdir) if n.startswith("shard-")]
        if stray:
            raise JobError(f"{outdir} has shard files but no {MANIFEST}: use an empty output directory")
    _write_manifest(job, complete=False)
    return job


def read_output(outdir: str, *, mmap: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(embeddings (n, dim) float32, index (n, 2) int64 [source, row], source paths)`` of a finished job."""
    doc = _read_manifest(os.path.abspath(outdir))
    if doc is None:
        raise FileNotFoundError(f"{outdir} has no {MANIFEST}: not an embed-corpus output directory")
    dim = int(doc["dim"])
    missing = [s["name"] for s in doc["shards"] if not shard_done(outdir, s, dim)]
    if missing:
        raise JobError(
            f"{outdir}: {len(missing)} of {len(doc['shards'])} shards are not finished "
            f"(first: {missing[0]}); run the job again to complete it"
        )
    mode: Optional[Literal["r"]] = "r" if mmap else None
    vecs = [np.load(os.path.join(outdir, s["name"] + ".npy"), mmap_mode=mode) for s in doc["shards"]]
    idx = [np.load(os.path.join(outdir, s["name"] + ".index.npy"), mmap_mode=mode) for s in doc["shards"]]
    if not vecs:
        return np.zeros((0, dim), np.float32), np.zeros((0, 2), np.int64), [s["path"] for s in doc["sources"]]
    return np.concatenate(vecs), np.concatenate(idx), [s["path"] for s in doc["sources"]]
