"""The HTTP application (Starlette): OpenAI-compatible embeddings over a :class:`~.batcher.Batcher`.

Routes::

    POST /v1/embeddings   {"input": str | [str], "model": str, "encoding_format": "float"|"base64"}
                          -> {"object": "list", "data": [{"object": "embedding", "index": i,
                              "embedding": [...] | base64 float32}], "model": ..., "usage": {...}}
    POST /embed           [str] or {"inputs": str | [str]} -> [[float, ...], ...]
    POST /v1/run          {"inputs": {name: nested list | {"npy": base64 .npy}}, "format": "json"|"npy"}
                          -> {"outputs": {name: nested list | {"npy": ..., "shape": ..., "dtype": ...}}}
    GET  /health          model description, queue depth; 503 while draining
    GET  /metrics         Prometheus text (:mod:`.metrics`)

Errors are JSON ``{"error": {"message", "type", "code", ...}}`` (:mod:`.limits` lists the statuses);
a full queue answers 503 with ``Retry-After``.  A client that disconnects while its sentences wait
has them dropped from the queue.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import logging
from typing import Any, Awaitable, Optional

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .batcher import Batcher, QueueFullError
from .limits import Limits, RequestError, check_texts, encode_array, parse_json, read_body, run_inputs, texts_field
from .metrics import Metrics, MetricsMiddleware
from .model import ServedModel

__all__ = ["create_app", "PATHS"]

_log = logging.getLogger("nmengine.serve")

PATHS = ("/v1/embeddings", "/embed", "/v1/run", "/health", "/metrics")
_TOKENIZE_INLINE_CHARS = 20_000  # larger requests are tokenized in a thread, off the event loop

try:  # orjson writes float32 rows straight from numpy, about 15x faster than json over .tolist()
    import orjson as _orjson
except ImportError:  # pragma: no cover - the serve extra installs it
    _orjson = None  # type: ignore[assignment]
orjson: Any = _orjson


class _JSON(Response):
    """A JSON response whose content may hold float32 numpy rows (written as the shortest decimal
    that reads back to the same float32, so clients recover the exact bits)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if orjson is not None:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        return json.dumps(content, separators=(",", ":"), default=_tolist).encode("utf-8")


def _tolist(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class _Disconnected(Exception):
    pass


def _error(e: RequestError, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse(e.body, status_code=e.status, headers=headers)


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _or_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work`` unless the client goes away first (then cancel it: it costs nothing further)."""
    fut = asyncio.ensure_future(work)
    watch = asyncio.get_running_loop().create_task(_until_disconnect(request))
    watch.add_done_callback(lambda w: w.cancelled() or fut.cancel())  # gone: drop the queued work
    try:
        return await fut
    except asyncio.CancelledError:
        if watch.done() and not watch.cancelled():
            raise _Disconnected() from None
        raise
    finally:
        watch.cancel()


def create_app(
    model: ServedModel,
    *,
    limits: Optional[Limits] = None,
    max_batch_tokens: int = 1024,
    max_wait_ms: float = 2.0,
    max_queue: int = 4096,
    metrics: Optional[Metrics] = None,
) -> Any:
    """The ASGI app serving ``model`` (see the module docstring); the batcher starts with the app."""
    limits = limits or Limits()
    # engine work runs on one thread: the batcher's worker for a text model, else this executor
    executor: Optional[concurrent.futures.ThreadPoolExecutor] = None
    batcher: Optional[Batcher] = None
    metrics = metrics or Metrics()
    if model.is_text:
        batcher = Batcher(
            model.embedder,
            max_batch_tokens=max_batch_tokens,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            on_batch=lambda s: metrics.batch_done(s.sentences, s.sentences * s.padded_length, s.real_tokens, s.seconds),
        )
        metrics.queue_depth = lambda: batcher.queue_depth
    else:
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="nmengine-engine")
    state = {"draining": False}

    async def on_engine(fn: Any) -> Any:
        """``fn()`` on the engine thread (between embedding batches, for a text model)."""
        if batcher is not None:
            return await batcher.call(fn)
        return await asyncio.get_running_loop().run_in_executor(executor, fn)

    async def body_json(request: Request) -> Any:
        body = await read_body(request.stream(), limits, request.headers.get("content-length"))
        return parse_json(body)

    async def embed_texts(request: Request, texts: list[str]) -> tuple[np.ndarray, int]:
        if batcher is None:
            raise RequestError(
                404,
                f"model {model.name!r} is not a text model (its inputs are "
                f"{sorted(model.program.inputs)}); use POST /v1/run",
                kind="not_found",
            )
        texts = check_texts(texts, limits)
        if not texts:
            return np.zeros((0, model.dim or 0), dtype=np.float32), 0
        if sum(len(t) for t in texts) > _TOKENIZE_INLINE_CHARS:
            rows = await asyncio.to_thread(batcher.tokenize, texts)
        else:
            rows = batcher.tokenize(texts)
        try:
            fut = batcher.submit(texts, rows)
        except QueueFullError as e:
            raise RequestError(
                503, str(e), kind="overloaded", limit="max_queue", allowed=e.max_queue, queued=e.depth
            ) from None
        except RuntimeError as e:
            raise RequestError(503, str(e), kind="unavailable") from None
        vectors = await _or_disconnect(request, fut)
        return vectors, sum(len(ids) for ids, _ in rows)

    def handler(fn):
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)
            except RequestError as e:
                return _error(e, {"Retry-After": "1"} if e.status == 503 else None)
            except (_Disconnected, ClientDisconnect):
                metrics.disconnected()
                return Response(status_code=499)

        return endpoint

    async def embeddings(request: Request) -> Response:
        doc = await body_json(request)
        texts = texts_field(doc, "input")
        fmt = doc.get("encoding_format", "float") if isinstance(doc, dict) else "float"
        if fmt not in ("float", "base64"):
            raise RequestError(422, f"encoding_format must be 'float' or 'base64', got {fmt!r}")
        name = doc.get("model", model.name)
        if not isinstance(name, str):
            raise RequestError(422, f"model must be a string, got {type(name).__name__}")
        dims = doc.get("dimensions")
        if dims is not None and dims != model.dim:
            raise RequestError(422, f"dimensions={dims!r} is not supported: this model gives {model.dim}")
        vectors, tokens = await embed_texts(request, texts)
        if fmt == "base64":
            rows = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            rows = list(vectors)  # float32 rows, written by _JSON
        return _JSON(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": r} for i, r in enumerate(rows)],
                "model": model.name,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def embed(request: Request) -> Response:
        doc = await body_json(request)
        texts = doc if isinstance(doc, list) else texts_field(doc, "inputs")
        vectors, _ = await embed_texts(request, texts)
        return _JSON(list(vectors))

    async def run(request: Request) -> Response:
        doc = await body_json(request)
        inputs, fmt = run_inputs(doc, model.program.inputs)

        def call() -> Any:
            return model.program.run(inputs, mode=model.mode)

        try:
            out = await _or_disconnect(request, on_engine(call))
        except (ValueError, TypeError, KeyError) as e:  # ProgramError is a ValueError
            raise RequestError(422, f"the program refused the inputs: {e}") from None
        outs = out if isinstance(out, dict) else {model.program.outputs[0]: out}
        return JSONResponse(
            {"outputs": {k: encode_array(np.asarray(v), fmt) for k, v in outs.items()}, "model": model.name}
        )

    async def health(request: Request) -> Response:
        info = {
            "status": "draining" if state["draining"] else "ok",
            **model.describe(),
            "queue_depth": batcher.queue_depth if batcher else 0,
        }
        return JSONResponse(info, status_code=503 if state["draining"] else 200)

    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        if batcher is not None and model.embedder is not None:  # a text model
            await batcher.start()
            # the first engine call packs the weights for the GEMM kernel: pay it before listening
            await batcher.call(model.embedder.encode, ["warm-up"])
        try:
            yield
        finally:
            state["draining"] = True
            if batcher is not None:
                await batcher.close()
            if executor is not None:
                executor.shutdown(wait=True)

    direct = {"/v1/embeddings": handler(embeddings), "/embed": handler(embed)}
    routes = [
        Route("/v1/embeddings", direct["/v1/embeddings"], methods=["POST"]),
        Route("/embed", direct["/embed"], methods=["POST"]),
        Route("/v1/run", handler(run), methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.model = model
    app.state.batcher = batcher
    app.state.metrics = metrics
    return MetricsMiddleware(_Direct(app, direct), metrics, PATHS)


class _Direct:
    """ASGI: the embedding endpoints' POSTs go straight to their handlers; everything else (and those
    paths with other methods) through the Starlette app.

    The handlers already answer every refusal themselves (JSON errors, 499 for a client gone), so
    Starlette's routing and exception middleware add nothing to them but about a tenth of the
    server's CPU per one-sentence request under load; an unexpected exception still becomes a 500.
    """

    def __init__(self, app: Any, routes: dict[str, Any]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        endpoint = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if endpoint is None or scope.get("method") != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        scope.setdefault("app", self.app)
        try:
            response = await endpoint(Request(scope, receive))
        except Exception:  # a bug, not a refusal: logged, answered 500, the connection kept
            _log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            response = JSONResponse(
                {"error": {"message": "internal server error", "type": "server_error", "code": 500}},
                status_code=500,
            )
        await response(scope, receive, send)
