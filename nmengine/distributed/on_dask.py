"""Dask: embed a bag (or dataframe column) of sentences, or run a Program over a Dask array or dataframe.

Each partition becomes one task that receives the *model path* and the partition's data; the worker
process loads the model once (:mod:`nmengine.distributed.worker`) and reuses it for every later task.
Output types are declared up front (``dtype``/``meta``/``chunks`` from the model's config or the
Program's shape inference), so Dask never calls the model on dummy data to guess them.

Usage::

    import dask.bag as db
    from nmengine.distributed import embed_bag, map_program

    bag = db.read_text("corpus-*.txt").map(str.rstrip)
    vectors = embed_bag(bag, "minilm.nmb", batch_size=64)      # dask.array (n, 384) float32
    vectors.to_zarr(...)  # or .compute()

    scores = map_program(images, "cnn.nmb", "x")                # dask.array (n, classes)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .worker import (
    check_texts,
    embed_texts,
    embedding_dim,
    load_embedder,
    load_program,
    resolve_model,
    set_threads,
)

__all__ = ["embed_bag", "map_program", "worker_threads"]


def worker_threads(threads: Optional[int]) -> Optional[int]:
    """``threads`` if given, else the thread count of the Dask worker running this task (None outside one)."""
    if threads is not None:
        return threads
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):
        return None


def embed_partition(
    texts: Any,
    model: str,
    mode: str,
    max_length: Optional[int],
    batch_size: int,
    normalize: bool,
    threads: Optional[int],
) -> np.ndarray:
    """Task body: embed one partition (a list of str, or a pandas Series of str) in this worker."""
    if hasattr(texts, "tolist"):
        texts = texts.tolist()
    items = check_texts(texts, "partition")
    set_threads(worker_threads(threads))
    emb = load_embedder(model, mode=mode, max_length=max_length)
    return embed_texts(emb, items, batch_size=batch_size, normalize=normalize)


def _partitions(data: Any) -> list[Any]:
    """The delayed partitions of a Dask bag or dataframe column (Series)."""
    try:
        import dask.bag as db
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("embed_bag needs Dask: pip install 'nmengine[dask]'") from e
    if isinstance(data, db.Bag):
        return list(data.to_delayed())
    kind = type(data).__name__
    if kind == "DataFrame":
        raise TypeError("embed_bag takes one text column: pass df['column'] (a Dask Series), not the whole DataFrame")
    if kind == "Series" and hasattr(data, "to_delayed") and hasattr(data, "npartitions"):
        return list(data.to_delayed())
    raise TypeError(f"embed_bag expects a dask.bag.Bag of str or a Dask dataframe column (Series), got {kind}")


def embed_bag(
    data: Any,
    model: Any,
    *,
    batch_size: int = 32,
    mode: str = "matrixized",
    normalize: bool = True,
    max_length: Optional[int] = None,
    threads: Optional[int] = None,
    dim: Optional[int] = None,
):
    """Embed every sentence of a Dask bag (or dataframe column): a Dask array ``(n, dim)`` float32.

    Rows keep the order of the bag; partition ``k`` of the bag is block ``k`` of the result (row counts
    are unknown until computed: ``.compute_chunk_sizes()`` finds them).  Every row equals
    ``SentenceEmbedder(model).encode([sentence])`` bit for bit, however the bag is partitioned.

    Parameters
    ----------
    data:
        ``dask.bag.Bag`` of str, or a Dask dataframe column of str.
    model:
        ``.nmb`` bundle or Hugging Face directory, at the same path on every worker.
    batch_size:
        Most sentences per Program run inside a task.
    mode, normalize, max_length:
        As for :class:`~nmengine.hf.SentenceEmbedder` and its ``encode``.
    threads:
        Core threads per worker process (default: the worker's ``nthreads``).
    dim:
        Embedding width (default: read from the model's config without compiling it).
    """
    import dask
    import dask.array as da

    path = resolve_model(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if mode not in ("matrixized", "exact"):
        raise ValueError(f"mode must be 'matrixized' or 'exact', got {mode!r}")
    width = int(dim) if dim is not None else embedding_dim(path)
    parts = _partitions(data)
    if not parts:
        return da.zeros((0, width), dtype=np.float32, chunks=((0,), (width,)))
    task = dask.delayed(embed_partition, pure=True)
    blocks = [
        da.from_delayed(
            task(p, path, mode, max_length, batch_size, bool(normalize), threads),
            shape=(np.nan, width),
            dtype=np.float32,
            meta=np.empty((0, width), np.float32),
        )
        for p in parts
    ]
    return da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]


# ---------------------------------------------------------------------------------------------
# map_program: any Program over the rows of a Dask array or dataframe
# ---------------------------------------------------------------------------------------------
def run_block(
    block: Any,
    model: str,
    input_name: str,
    output: str,
    mode: str,
    threads: Optional[int],
    columns: Optional[Sequence[str]] = None,
    column_names: Optional[Sequence[str]] = None,
) -> Any:
    """Task body: run the Program on one block (numpy array or pandas DataFrame partition)."""
    set_threads(worker_threads(threads))
    program = load_program(model)
    spec = program.inputs[input_name]
    frame = None
    if column_names is not None:  # a dataframe partition
        frame = block
        block = frame[list(columns)].to_numpy() if columns is not None else frame.to_numpy()
    x = np.ascontiguousarray(block, dtype=np.dtype(spec.dtype))
    if x.shape[0] == 0:
        tail = program.infer_shapes({input_name: (1, *x.shape[1:])})[output][1:]
        y = np.zeros((0, *tail), dtype=np.float32)
    else:
        y = program.run({input_name: x}, mode=mode)
        if isinstance(y, Mapping):
            y = y[output]
        y = np.asarray(y)
    if frame is None or column_names is None:  # (both or neither: a dataframe partition has both)
        return y
    import pandas as pd

    return pd.DataFrame(y.reshape(len(y), -1), index=frame.index, columns=list(column_names))


def _output_tail(
    model: str,
    input_name: str,
    output: Optional[str],
    row_shape: tuple[int, ...],
    output_shape: Optional[Sequence[int]],
) -> tuple[str, tuple[int, ...]]:
    """Output name and per-row output shape, from ``output_shape`` or the Program's shape inference."""
    if output_shape is not None and output is not None:
        return output, tuple(int(d) for d in output_shape)
    program = load_program(model)  # a bundle is memory-mapped; nothing runs
    if input_name not in program.inputs:
        raise ValueError(f"the program has no input {input_name!r}; its inputs are {sorted(program.inputs)}")
    others = sorted(set(program.inputs) - {input_name})
    if others:
        raise ValueError(f"map_program feeds one input ({input_name!r}) but the program also needs {others}")
    if output is None:
        if len(program.outputs) != 1:
            raise ValueError(f"the program has outputs {program.outputs}: pass output=<name>")
        output = program.outputs[0]
    elif output not in program.outputs:
        raise ValueError(f"the program has no output {output!r}; its outputs are {program.outputs}")
    if output_shape is not None:
        return output, tuple(int(d) for d in output_shape)
    shape = program.infer_shapes({input_name: (1, *row_shape)})[output]
    return output, tuple(int(d) for d in shape[1:])


def map_program(
    data: Any,
    model: Any,
    input_name: str,
    *,
    output: Optional[str] = None,
    mode: str = "matrixized",
    threads: Optional[int] = None,
    columns: Optional[Sequence[str]] = None,
    output_shape: Optional[Sequence[int]] = None,
):
    """Run a Program on every row of a Dask array or dataframe; returns a Dask array or dataframe.

    * Dask array ``(n, ...)``: the program's ``input_name`` gets each row block (other axes are merged into
      one chunk); the result is a Dask array ``(n, *output_row_shape)`` float32 with the same row chunks.
    * Dask dataframe: each partition's ``columns`` (default all) form the input rows ``(rows, features)``;
      the result is a Dask dataframe with the same index and float32 columns ``<output>_0 .. <output>_{k-1}``.

    ``output`` names the program output (default: its only output).  The output row shape comes from
    ``output_shape`` or the Program's shape inference (the client memory-maps a bundle, or compiles a
    Hugging Face directory once); Dask is given ``meta`` and never runs the model on dummies.  The program
    must have exactly one input.
    """
    path = resolve_model(model)
    if not isinstance(input_name, str):
        raise TypeError(f"input_name must be a str, got {type(input_name).__name__}")
    if mode not in ("matrixized", "exact"):
        raise ValueError(f"mode must be 'matrixized' or 'exact', got {mode!r}")
    import dask.array as da

    if isinstance(data, da.Array):
        if data.ndim < 1:
            raise ValueError("map_program needs an array with a leading row axis, got a 0-d array")
        x = data.rechunk({i: -1 for i in range(1, data.ndim)}) if data.ndim > 1 else data
        output, tail = _output_tail(path, input_name, output, tuple(int(d) for d in x.shape[1:]), output_shape)
        out_ndim = 1 + len(tail)
        kwargs: dict[str, Any] = {}
        if out_ndim < x.ndim:
            kwargs["drop_axis"] = list(range(out_ndim, x.ndim))
        elif out_ndim > x.ndim:
            kwargs["new_axis"] = list(range(x.ndim, out_ndim))
        return x.map_blocks(
            run_block,  # type: ignore[arg-type]  # dask's annotations type map_blocks' func as an Array
            path,
            input_name,
            output,
            mode,
            threads,
            dtype=np.float32,
            chunks=(x.chunks[0], *((d,) for d in tail)),
            meta=np.empty((0,) * out_ndim, np.float32),
            **kwargs,
        )
    if type(data).__name__ == "DataFrame" and hasattr(data, "map_partitions"):
        import pandas as pd

        cols = list(columns) if columns is not None else list(data.columns)
        missing = [c for c in cols if c not in data.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the dataframe (it has {list(data.columns)})")
        output, tail = _output_tail(path, input_name, output, (len(cols),), output_shape)
        if len(tail) != 1:
            raise ValueError(f"a dataframe result needs a 1-D output row, the program gives {tail}: use a Dask array")
        names = [f"{output}_{i}" for i in range(tail[0])]
        meta = pd.DataFrame({n: pd.Series([], dtype=np.float32) for n in names})
        return data.map_partitions(
            run_block, path, input_name, output, mode, threads, cols, names, meta=meta, align_dataframes=False
        )
    raise TypeError(f"map_program expects a dask.array.Array or a Dask DataFrame, got {type(data).__name__}")
