"""Scale out on Dask and Ray: embed or score a corpus larger than one machine.

Nothing here imports Dask or Ray until it is used (extras ``nmengine[dask]``, ``nmengine[ray]``)::

    from nmengine.distributed import embed_bag, map_program, RayEmbedder, read_output

* :func:`embed_bag` -- a Dask bag (or dataframe column) of sentences -> Dask array of embeddings;
* :func:`map_program` -- any single-input Program over a Dask array or dataframe;
* :class:`RayEmbedder` -- callable class for Ray Data's ``Dataset.map_batches``;
* ``nmengine embed-corpus`` (:mod:`.job`; the command in :mod:`nmengine.cli.distributed`) -- files ->
  resumable .npy shards; :func:`read_output` reads them back.

Workers receive the model's path, never the model: each worker process loads it once
(:mod:`.worker`) and reuses it.  Guide: docs/distributed.md.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "embed_bag": "on_dask",
    "map_program": "on_dask",
    "RayEmbedder": "on_ray",
    "read_output": "job",
    "JobError": "job",
    "embed_texts": "worker",
    "load_embedder": "worker",
    "load_program": "worker",
    "load_counts": "worker",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'nmengine.distributed' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
