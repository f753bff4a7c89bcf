"""``nmengine serve``: sentence embeddings and program runs over HTTP, with dynamic batching.

* :class:`Batcher` (no HTTP needed): ``await batcher.encode(texts)`` from any number of coroutines;
  concurrent sentences are grouped into few engine calls (:mod:`nmengine.serve.batcher`).
* :func:`create_app`: the Starlette application (OpenAI-compatible ``/v1/embeddings``, ``/embed``,
  ``/v1/run``, ``/health``, ``/metrics``; :mod:`nmengine.serve.app`).  Needs the ``serve`` extra.
* :func:`load_model`: a Hugging Face directory, a bundle (.nmb) or an .onnx file as a served model.
* ``nmengine serve MODEL``: the command line (:mod:`nmengine.cli.serve`).

See docs/serve.md.
"""

from __future__ import annotations

from typing import Any

from .batcher import Batcher, BatchStats, QueueFullError
from .limits import Limits, RequestError
from .model import ServedModel, load_model

__all__ = [
    "Batcher",
    "BatchStats",
    "QueueFullError",
    "Limits",
    "RequestError",
    "ServedModel",
    "load_model",
    "create_app",
]


def create_app(*args: Any, **kwargs: Any):
    """The Starlette app (see :func:`nmengine.serve.app.create_app`); imported on first use."""
    from .app import create_app as _create

    return _create(*args, **kwargs)
