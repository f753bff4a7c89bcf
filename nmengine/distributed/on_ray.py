"""Ray Data: a callable class that embeds a text column, loading the model once per actor.

Usage::

    import ray
    from nmengine.distributed import RayEmbedder

    ds = ray.data.read_text("s3://bucket/corpus/")                 # column "text"
    ds = ds.map_batches(RayEmbedder, concurrency=8, batch_size=256, num_cpus=1,
                        fn_constructor_kwargs={"model": "/shared/minilm.nmb"})
    ds.write_parquet("s3://bucket/embeddings/")                     # column "embedding": (384,) float32

Each actor is one process: its constructor loads the model through the per-process cache of
:mod:`nmengine.distributed.worker` (compiled or memory-mapped once) and every batch reuses it.  Rows are
embedded with partition-independent batching, so a row's embedding does not depend on which batch Ray
put it in.  Importing this module does not import Ray.
"""

from __future__ import annotations

from typing import Any, Optional

from .worker import embed_texts, load_embedder, resolve_model, set_threads

__all__ = ["RayEmbedder"]


def _assigned_cpus() -> Optional[int]:
    """Whole CPUs Ray assigned to the current actor or task (None outside Ray)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # noqa: BLE001 - outside a Ray worker every failure means "unknown"
        return None
    return max(1, int(round(cpus))) if cpus else None


class RayEmbedder:
    """Callable class for ``Dataset.map_batches``: adds an embedding column to each batch.

    Parameters
    ----------
    model:
        ``.nmb`` bundle or Hugging Face directory, at the same path on every node.
    column:
        Input column of str (default ``"text"``, what ``ray.data.read_text`` produces).
    output_column:
        Column that receives the ``(rows, dim)`` float32 embeddings (default ``"embedding"``).
    batch_size:
        Most sentences per Program run inside one Ray batch.
    mode, normalize, max_length:
        As for :class:`~nmengine.hf.SentenceEmbedder` and its ``encode``.
    threads:
        Core threads of this actor (default: the CPUs Ray assigned to it, else 1).

    Batches may be dicts of numpy arrays (Ray's default ``batch_format``) or pandas DataFrames; the
    result has the same kind, with every input column kept.
    """

    def __init__(
        self,
        model: Any,
        *,
        column: str = "text",
        output_column: str = "embedding",
        batch_size: int = 32,
        mode: str = "matrixized",
        normalize: bool = True,
        max_length: Optional[int] = None,
        threads: Optional[int] = None,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.model = resolve_model(model)
        self.column = column
        self.output_column = output_column
        self.batch_size = batch_size
        self.normalize = bool(normalize)
        self.threads = threads if threads is not None else (_assigned_cpus() or 1)
        set_threads(self.threads)
        self.embedder = load_embedder(self.model, mode=mode, max_length=max_length)

    def __call__(self, batch: Any) -> Any:
        if self.column not in batch:
            have = list(batch.columns) if hasattr(batch, "columns") else list(batch)
            raise KeyError(f"RayEmbedder: the batch has no column {self.column!r} (columns: {have})")
        texts = batch[self.column]
        texts = texts.tolist() if hasattr(texts, "tolist") else list(texts)
        vectors = embed_texts(self.embedder, texts, batch_size=self.batch_size, normalize=self.normalize)
        if hasattr(batch, "assign"):  # pandas DataFrame: one array per row
            return batch.assign(**{self.output_column: list(vectors)})
        out = dict(batch)
        out[self.output_column] = vectors
        return out

    def __repr__(self) -> str:
        return f"RayEmbedder({self.model!r}, column={self.column!r}, batch_size={self.batch_size})"
