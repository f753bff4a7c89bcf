"""Dynamic batching of sentence embeddings: concurrent requests become few large engine calls.

:class:`Batcher` takes texts from any number of concurrent coroutines, groups their sentences into
batches bounded by padded tokens (``max_batch_tokens``) and time (``max_wait_ms``), runs each batch as
one engine call in a worker thread (the engine releases the GIL, so the event loop keeps serving) and
hands every caller its own rows back in input order::

    batcher = nm.serve.Batcher(nm.hf.SentenceEmbedder(path), max_batch_tokens=4096, max_wait_ms=2)
    await batcher.start()                  # inside the running event loop
    vectors = await batcher.encode(["one sentence", "another"])      # (2, dim) float32, unit rows
    await batcher.close()                  # finishes queued work, then stops the worker

Independence from batch mates, bit for bit.  The engine packs the real tokens of a batch for every
dense layer (rows are computed independently), but attention runs on the padded ``[batch, tokens]``
grid and its softmax row bound is a pairwise ``b + relu(a - b)`` tree whose rounding depends on the
padded length.  So a sentence's embedding depends on how far it is padded, not on who its mates are.
The batcher therefore pads every sentence to a length that depends on the sentence alone: its token
count rounded up to ``pad_multiple`` (default 8, capped at the model's maximum length), and a batch only
holds sentences of one such length.  The result of a sentence is then the same bits whatever else is
in flight.  ``pad_multiple=1`` pads nothing, and every row is bit-identical to
``embedder.encode([text])``; larger multiples trade a little padding inside attention (the dense layers
never see padding) for fuller batches.  Against ``embedder.encode`` of a list (which pads to the longest
sentence of each batch of 32, so *its* rows do depend on their neighbours) rows agree to float32
rounding (about 1e-6).

Requests that are cancelled while queued (a client that went away) are dropped before the engine sees
them; a batch already running completes and its rows for cancelled requests are discarded.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["Batcher", "QueueFullError", "BatchStats"]


class QueueFullError(RuntimeError):
    """The batcher's queue holds ``max_queue`` sentences already: retry later (HTTP 503)."""

    def __init__(self, depth: int, wanted: int, max_queue: int) -> None:
        super().__init__(f"queue full: {depth} sentences waiting, {wanted} more requested, max_queue={max_queue}")
        self.depth, self.wanted, self.max_queue = depth, wanted, max_queue


@dataclass
class BatchStats:
    """One engine call, as reported to the ``on_batch`` callback (metrics)."""

    sentences: int
    padded_length: int
    real_tokens: int
    seconds: float


@dataclass
class _Request:
    texts: list[str]
    lengths: list[int]
    future: "asyncio.Future[np.ndarray]"
    out: Optional[np.ndarray] = None
    remaining: int = 0


@dataclass
class _Item:
    request: _Request
    index: int
    length: int
    arrived: float


@dataclass
class _Bucket:
    items: Deque[_Item] = field(default_factory=collections.deque)
    padded_tokens: int = 0  # len(items) * padded length


class Batcher:
    """Queue, group and run sentence embeddings for concurrent callers (see the module docstring).

    Parameters
    ----------
    embedder:
        A :class:`nmengine.hf.SentenceEmbedder` (anything with ``tokenize``, ``encode`` and ``program``).
    max_batch_tokens:
        Upper bound on ``sentences x padded length`` of one engine call (a single sentence longer than
        this still runs, alone).
    max_wait_ms:
        How long the oldest queued sentence may wait for batch mates before its batch runs anyway.
        Batches also form by themselves while the engine is busy.
    max_queue:
        Most sentences waiting at once; :meth:`encode` raises :class:`QueueFullError` beyond it
        (a request larger than ``max_queue`` is still accepted into an empty queue).
    max_batch_size:
        Upper bound on sentences per engine call.
    pad_multiple:
        Sentences are padded to their token count rounded up to this (see the module docstring;
        1 when the program does not pool, since pooling then happens in ``encode``).
    normalize:
        Rescale rows to unit length, as ``SentenceEmbedder.encode(normalize=True)`` does.
    on_batch:
        Called with a :class:`BatchStats` after every engine call (in the event loop).
    executor:
        Where engine calls run (default: a worker thread of the batcher's own).  Share a one-thread
        executor to serialise other engine work with the batches.
    """

    def __init__(
        self,
        embedder: Any,
        *,
        max_batch_tokens: int = 8192,
        max_wait_ms: float = 2.0,
        max_queue: int = 4096,
        max_batch_size: int = 256,
        pad_multiple: int = 8,
        normalize: bool = True,
        on_batch: Optional[Callable[[BatchStats], None]] = None,
        executor: Optional[concurrent.futures.Executor] = None,
    ) -> None:
        for name, v in (
            ("max_batch_tokens", max_batch_tokens),
            ("max_queue", max_queue),
            ("max_batch_size", max_batch_size),
            ("pad_multiple", pad_multiple),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        for attr in ("tokenize", "encode", "program"):
            if not hasattr(embedder, attr):
                raise TypeError(f"embedder must be a SentenceEmbedder (needs .{attr}), got {type(embedder).__name__}")
        self.embedder = embedder
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.pad_multiple = pad_multiple
        self.normalize = normalize
        self.on_batch = on_batch
        program = embedder.program
        self._pooled = list(program.outputs) == ["sentence_embedding"]
        if not self._pooled:  # pooling happens in encode(), which pads to the longest: never pad
            self.pad_multiple = 1
        self._mode = getattr(embedder, "mode", "matrixized")
        self.max_length = int(getattr(embedder, "max_length", 0) or 0) or None
        self._buckets: dict[int, _Bucket] = {}
        self._depth = 0
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None
        self._closing = False
        self._given_executor = executor
        self._executor: Optional[concurrent.futures.Executor] = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queue_depth(self) -> int:
        """Sentences waiting for the engine."""
        return self._depth

    async def start(self) -> None:
        """Start the scheduling task in the running event loop (idempotent)."""
        if self.running:
            return
        self._closing = False
        self._wake = asyncio.Event()
        self._executor = self._given_executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="nmengine-engine"
        )
        self._task = asyncio.get_running_loop().create_task(self._schedule(), name="nmengine-batcher")

    async def close(self) -> None:
        """Run everything already queued, then stop the worker.  New work is refused meanwhile."""
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        if self._executor is not None:
            if self._executor is not self._given_executor:
                self._executor.shutdown(wait=True)
            self._executor = None

    async def __aenter__(self) -> "Batcher":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- public calls --------------------------------------------------------------------------
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation (what the engine will see)."""
        if not texts:
            return []
        mask = self.embedder.tokenize(list(texts))["attention_mask"]
        return [int(n) for n in mask.sum(axis=1)]

    async def encode(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """Embeddings of ``texts``: ``(n, dim)`` float32 in input order (``(dim,)`` for one str)."""
        vectors, _ = await self.encode_with_usage(texts)
        return vectors

    async def encode_with_usage(
        self, texts: Union[str, Sequence[str]], lengths: Optional[Sequence[int]] = None
    ) -> tuple[np.ndarray, int]:
        """``(embeddings, token count)``; ``lengths`` may pass token counts already computed."""
        single = isinstance(texts, str)
        items = _check_texts(texts)
        if lengths is None:
            lengths = self.count_tokens(items)
        elif len(lengths) != len(items):
            raise ValueError(f"{len(lengths)} lengths for {len(items)} texts")
        if not items:
            dim = int(getattr(self.embedder, "dim", 0))
            return np.zeros((0, dim), dtype=np.float32), 0
        fut = self.submit(items, lengths)
        out = await fut
        return (out[0] if single else out), int(sum(lengths))

    def submit(self, texts: list[str], lengths: Sequence[int]) -> "asyncio.Future[np.ndarray]":
        """Queue texts (with their token counts); the future resolves to their ``(n, dim)`` rows.

        Cancelling the future drops the sentences that have not reached the engine yet.
        """
        if not self.running:
            raise RuntimeError("the batcher is not running (call `await batcher.start()` first)")
        if self._closing:
            raise RuntimeError("the batcher is shutting down")
        n = len(texts)
        if self._depth > 0 and self._depth + n > self.max_queue:
            raise QueueFullError(self._depth, n, self.max_queue)
        loop = asyncio.get_running_loop()
        req = _Request(list(texts), [int(x) for x in lengths], loop.create_future(), remaining=n)
        now = time.monotonic()
        for i, length in enumerate(req.lengths):
            padded = self.padded_length(length)
            b = self._buckets.setdefault(padded, _Bucket())
            b.items.append(_Item(req, i, length, now))
            b.padded_tokens += padded
        self._depth += n
        assert self._wake is not None
        self._wake.set()
        return req.future

    def padded_length(self, length: int) -> int:
        """The length a sentence of ``length`` tokens is padded to (depends on nothing else)."""
        m = self.pad_multiple
        p = -(-max(int(length), 1) // m) * m
        return max(min(p, self.max_length), int(length)) if self.max_length else p

    # -- scheduling ----------------------------------------------------------------------------
    def _pick(self, now: float) -> tuple[Optional[int], float]:
        """The bucket to run now (full, or its oldest sentence waited long enough, or closing), and
        otherwise how long until the next deadline."""
        best, best_age, wait = None, -1.0, float("inf")
        for padded, b in self._buckets.items():
            if not b.items:
                continue
            age = now - b.items[0].arrived
            full = b.padded_tokens >= self.max_batch_tokens or len(b.items) >= self.max_batch_size
            if full or age >= self.max_wait or self._closing:
                if age > best_age:
                    best, best_age = padded, age
            else:
                wait = min(wait, self.max_wait - age)
        return best, wait

    def _take(self, padded: int) -> list[_Item]:
        b = self._buckets[padded]
        taken: list[_Item] = []
        while (
            b.items
            and len(taken) < self.max_batch_size
            and (not taken or (len(taken) + 1) * padded <= self.max_batch_tokens)
        ):
            it = b.items.popleft()
            b.padded_tokens -= padded
            self._depth -= 1
            if not it.request.future.done():  # cancelled (client gone): costs nothing further
                taken.append(it)
        if not b.items:
            del self._buckets[padded]
        taken.sort(key=lambda it: it.length)
        return taken

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            if not self._buckets:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            padded, wait = self._pick(time.monotonic())
            if padded is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=max(wait, 0.0))
                except asyncio.TimeoutError:
                    pass
                continue
            batch = self._take(padded)
            if not batch:
                continue
            texts = [it.request.texts[it.index] for it in batch]
            t0 = time.perf_counter()
            try:
                rows = await loop.run_in_executor(self._executor, self._run_engine, texts, padded)
            except Exception as e:  # noqa: BLE001 - the error goes to every caller of the batch
                for it in batch:
                    if not it.request.future.done():
                        it.request.future.set_exception(e)
                continue
            seconds = time.perf_counter() - t0
            for it, row in zip(batch, rows):
                req = it.request
                if req.future.done():
                    continue
                if req.out is None:
                    req.out = np.empty((len(req.texts), rows.shape[1]), dtype=np.float32)
                req.out[it.index] = row
                req.remaining -= 1
                if req.remaining == 0:
                    req.future.set_result(req.out)
            if self.on_batch is not None:
                self.on_batch(BatchStats(len(batch), padded, sum(it.length for it in batch), seconds))

    def _run_engine(self, texts: list[str], padded: int) -> np.ndarray:
        """One engine call (worker thread): every text padded to ``padded`` tokens."""
        emb = self.embedder
        if self._pooled:
            batch = emb.tokenize(texts, pad_to=padded)
            out = np.asarray(emb.program.run(batch, mode=self._mode), dtype=np.float32)
        else:  # host-side pooling: pad_multiple is 1, so these texts have one length (no padding)
            out = np.asarray(emb.encode(texts, batch_size=len(texts), normalize=False), dtype=np.float32)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray, Mapping)) or not hasattr(texts, "__iter__"):
        raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    items = list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
    return items
