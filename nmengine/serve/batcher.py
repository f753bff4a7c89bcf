"""Dynamic batching of sentence embeddings: concurrent requests become few large engine calls.

:class:`Batcher` takes texts from any number of concurrent coroutines, groups their sentences into
batches bounded by padded tokens (``max_batch_tokens``) and time (``max_wait_ms``), runs each batch as
one engine call in a worker thread (the engine releases the GIL, so the event loop keeps serving) and
hands every caller its own rows back in input order::

    batcher = nm.serve.Batcher(nm.hf.SentenceEmbedder(path), max_batch_tokens=1024, max_wait_ms=2)
    await batcher.start()                  # inside the running event loop
    vectors = await batcher.encode(["one sentence", "another"])      # (2, dim) float32, unit rows
    await batcher.close()                  # finishes queued work, then stops the worker

How batches form.  Sentences are tokenized once, when they are submitted (in the caller's thread),
and queued.  When the engine is free, the batcher takes the oldest queued sentence and the queued
sentences closest to it in token count, as many as fit ``max_batch_tokens`` (sentences x the longest
of them) and ``max_batch_size``: padding costs the engine little (the dense layers see only real
tokens, and a session runs attention on each sentence at its own length), similar lengths keep the
padded inputs small, and the oldest sentence always goes first, so nothing starves.  A batch runs when it is full, when its oldest
sentence has waited ``max_wait_ms``; while the engine is busy, the next batch fills by itself (its
oldest sentence has usually waited long enough by the time the engine is free).

Independence from batch mates, bit for bit.  The engine packs the real tokens of a batch for every
dense layer (rows are computed independently), and its attention softmax is independent of trailing
padding: the row max is a fixed-width left-to-right ``m + relu(x - m)`` reduction (a masked column
leaves it unchanged), masked columns get an exact 0 from the exp table, and the row sum and the
probabilities-times-values GEMM add those zeros exactly.  So a sentence's embedding is the same bits
whatever else it is batched with and however far its batch pads it: ``Batcher.encode`` rows equal
``embedder.encode([text])`` of each text alone (the tests check it).

Requests that are cancelled while queued (a client that went away) are dropped before the engine sees
them; a batch already running completes and its rows for cancelled requests are discarded.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Mapping, Optional, Sequence, Union

import numpy as np

from nmengine.hf.tokenizer import encode_ids, pad_batch

__all__ = ["Batcher", "QueueFullError", "BatchStats"]

#: a tokenized sentence: (token ids, token type ids), truncated, with [CLS] and [SEP]
TokenRow = tuple[list[int], list[int]]


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


@dataclass(eq=False)
class _Request:
    texts: list[str]
    rows: list[TokenRow]
    future: "asyncio.Future[np.ndarray]"
    out: Optional[np.ndarray] = None
    remaining: int = 0
    dropped: bool = False  # the caller went away (set in the event loop, read by the worker)


@dataclass(eq=False)
class _Item:
    request: _Request
    index: int
    length: int
    seq: int  # arrival order (ties in length go to the older)
    arrived: float
    queued: bool = True

    @property
    def key(self) -> tuple[int, int]:
        return (self.length, self.seq)


class Batcher:
    """Queue, group and run sentence embeddings for concurrent callers (see the module docstring).

    Parameters
    ----------
    embedder:
        A :class:`nmengine.hf.SentenceEmbedder` (anything with its ``tokenizer``, ``pipeline``,
        ``config``, ``max_length``, ``session``, ``encode`` and ``program``).
    max_batch_tokens:
        Upper bound on ``sentences x longest sentence`` (padded tokens) of one engine call (a single
        sentence longer than this still runs, alone).  The default, 1024, keeps a batch's activations
        in cache (about 32 sentences of 30 tokens); much larger batches run slower per sentence.
    max_wait_ms:
        How long the oldest queued sentence may wait for batch mates before its batch runs anyway.
        Batches also form by themselves while the engine is busy.
    max_queue:
        Most sentences waiting at once; :meth:`encode` raises :class:`QueueFullError` beyond it
        (a request larger than ``max_queue`` is still accepted into an empty queue).
    max_batch_size:
        Upper bound on sentences per engine call.
    normalize:
        Rescale rows to unit length, as ``SentenceEmbedder.encode(normalize=True)`` does.
    on_batch:
        Called with a :class:`BatchStats` after every engine call (in the event loop).

    Engine calls run on the batcher's own worker thread, which takes the next batch from the queue
    itself as soon as the previous one is done (the event loop only queues sentences and hands rows
    back).  :meth:`call` runs other engine work on that thread, between batches.
    """

    def __init__(
        self,
        embedder: Any,
        *,
        max_batch_tokens: int = 1024,
        max_wait_ms: float = 2.0,
        max_queue: int = 4096,
        max_batch_size: int = 256,
        normalize: bool = True,
        on_batch: Optional[Callable[[BatchStats], None]] = None,
    ) -> None:
        for name, v in (
            ("max_batch_tokens", max_batch_tokens),
            ("max_queue", max_queue),
            ("max_batch_size", max_batch_size),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be a number >= 0, got {max_wait_ms!r}")
        for attr in ("tokenizer", "pipeline", "config", "max_length", "encode", "program"):
            if not hasattr(embedder, attr):
                raise TypeError(f"embedder must be a SentenceEmbedder (needs .{attr}), got {type(embedder).__name__}")
        self.embedder = embedder
        self.max_batch_tokens = max_batch_tokens
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        self.normalize = normalize
        self.on_batch = on_batch
        # a program that pools itself gives one row per sentence; otherwise encode() pools on the host
        # (over the padded token axis), and a batch then holds sentences of one length only
        self._pooled = list(embedder.program.outputs) == ["sentence_embedding"]
        self._mode = getattr(embedder, "mode", "matrixized")
        self._lower = bool(getattr(embedder.pipeline, "do_lower_case", False))
        # the queue, shared by the event loop (submit) and the worker thread (take), under _cond
        self._cond = threading.Condition(threading.Lock())
        self._by_length: list[tuple[int, int]] = []  # keys of queued items, sorted
        self._items: dict[tuple[int, int], _Item] = {}
        self._fifo: Deque[_Item] = collections.deque()  # arrival order (taken items are skipped)
        self._jobs: Deque[tuple[Callable[[], Any], asyncio.Future]] = collections.deque()
        self._seq = itertools.count()
        self._depth = 0
        self._closing = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._stopped: Optional[asyncio.Future] = None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closing

    @property
    def queue_depth(self) -> int:
        """Sentences waiting for the engine."""
        return self._depth

    async def start(self) -> None:
        """Start the worker thread, bound to the running event loop (idempotent)."""
        if self.running:
            return
        if self._thread is not None:  # closing or closed: let it finish first
            await self.close()
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._stopped = self._loop.create_future()
        self._thread = threading.Thread(target=self._work, name="nmengine-engine", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Run everything already queued, then stop the worker.  New work is refused meanwhile."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._stopped is not None:
            await asyncio.shield(self._stopped)
        if self._thread is not None:
            self._thread.join()
        self._thread = self._stopped = None

    async def __aenter__(self) -> "Batcher":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # -- public calls --------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> list[TokenRow]:
        """Token ids and types of each text, truncated as the engine will see them (no padding)."""
        if not texts:
            return []
        emb = self.embedder
        items = [t.lower() for t in texts] if self._lower else list(texts)  # as SentenceEmbedder.tokenize
        return encode_ids(emb.tokenizer, items, emb.max_length)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token count of each text after truncation (what the engine will see)."""
        return [len(ids) for ids, _ in self.tokenize(texts)]

    async def encode(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
        """Embeddings of ``texts``: ``(n, dim)`` float32 in input order (``(dim,)`` for one str)."""
        vectors, _ = await self.encode_with_usage(texts)
        return vectors

    async def encode_with_usage(self, texts: Union[str, Sequence[str]]) -> tuple[np.ndarray, int]:
        """``(embeddings, token count)``."""
        single = isinstance(texts, str)
        items = _check_texts(texts)
        if not items:
            dim = int(getattr(self.embedder, "dim", 0))
            return np.zeros((0, dim), dtype=np.float32), 0
        rows = self.tokenize(items)
        out = await self.submit(items, rows)
        return (out[0] if single else out), sum(len(r[0]) for r in rows)

    def submit(self, texts: Sequence[str], rows: Sequence[TokenRow]) -> "asyncio.Future[np.ndarray]":
        """Queue texts with their :meth:`tokenize` rows; the future resolves to their ``(n, dim)`` rows.

        Call it from the batcher's event loop.  Cancelling the future drops the sentences that have
        not reached the engine yet.
        """
        if not self.running:
            raise RuntimeError(
                "the batcher is shutting down"
                if self._closing and self._thread is not None
                else "the batcher is not running (call `await batcher.start()` first)"
            )
        if len(rows) != len(texts):
            raise ValueError(f"{len(rows)} token rows for {len(texts)} texts")
        assert self._loop is not None
        n = len(texts)
        req = _Request(list(texts), list(rows), self._loop.create_future(), remaining=n)
        if n == 0:
            req.future.set_result(np.zeros((0, int(getattr(self.embedder, "dim", 0))), dtype=np.float32))
            return req.future
        now = time.monotonic()
        with self._cond:
            if self._depth > 0 and self._depth + n > self.max_queue:
                raise QueueFullError(self._depth, n, self.max_queue)
            for i, (ids, _) in enumerate(req.rows):
                it = _Item(req, i, max(len(ids), 1), next(self._seq), now)
                self._fifo.append(it)
                self._items[it.key] = it
                bisect.insort(self._by_length, it.key)
            self._depth += n
            self._cond.notify()
        req.future.add_done_callback(lambda f: setattr(req, "dropped", f.cancelled()))
        return req.future

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the engine's worker thread, between batches (other engine work, serialised
        with the embeddings)."""
        if not self.running:
            raise RuntimeError("the batcher is not running (call `await batcher.start()` first)")
        assert self._loop is not None
        fut = self._loop.create_future()
        with self._cond:
            self._jobs.append((lambda: fn(*args), fut))
            self._cond.notify()
        return await fut

    # -- the queue (callers hold self._cond) ---------------------------------------------------
    def _oldest(self) -> Optional[_Item]:
        while self._fifo and not self._fifo[0].queued:
            self._fifo.popleft()
        return self._fifo[0] if self._fifo else None

    def _ready(self, oldest: _Item, now: float) -> float:
        """0 when a batch should run now, else how long until the oldest sentence's deadline."""
        if self._closing or self._batch_full() or now - oldest.arrived >= self.max_wait:
            return 0.0
        return self.max_wait - (now - oldest.arrived)

    def _batch_full(self) -> bool:
        """Whether the queue holds at least one full batch (by count, or by the shortest sentences)."""
        if self._depth >= self.max_batch_size:
            return True
        keys = self._by_length
        k = min(len(keys), self.max_batch_size)
        return k * keys[k - 1][0] >= self.max_batch_tokens  # the k shortest already fill a batch

    def _take(self, anchor: _Item) -> list[_Item]:
        """The anchor (the oldest sentence) and the queued sentences nearest to it in length, as
        many as fit the batch limits; the rest stay queued."""
        keys = self._by_length
        a = bisect.bisect_left(keys, anchor.key)
        lo, hi = a, a + 1  # the window keys[lo:hi], contiguous in length order
        longest = anchor.length
        while hi - lo < self.max_batch_size:
            left = keys[lo - 1] if lo > 0 else None
            right = keys[hi] if hi < len(keys) else None
            if not self._pooled:  # host pooling: one length per batch
                left = left if left is not None and left[0] == anchor.length else None
                right = right if right is not None and right[0] == anchor.length else None
            # the nearer length first; on a tie the shorter (it pads nothing)
            if left is not None and (right is None or anchor.length - left[0] <= right[0] - anchor.length):
                if (hi - lo + 1) * longest > self.max_batch_tokens:
                    break
                lo -= 1
            elif right is not None:
                if (hi - lo + 1) * right[0] > self.max_batch_tokens:
                    break
                hi += 1
                longest = right[0]
            else:
                break
        window = keys[lo:hi]
        del keys[lo:hi]
        taken = []
        for key in window:
            it = self._items.pop(key)
            it.queued = False
            self._depth -= 1
            if not it.request.dropped:  # cancelled (client gone): costs nothing further
                taken.append(it)
        return taken

    # -- the worker thread ---------------------------------------------------------------------
    def _next(self) -> Union[None, list[_Item], tuple[Callable[[], Any], asyncio.Future]]:
        """Block until there is a job or a batch to run; None once closing with nothing left."""
        with self._cond:
            while True:
                if self._jobs:
                    return self._jobs.popleft()
                oldest = self._oldest()
                if oldest is None:
                    if self._closing:
                        return None
                    self._cond.wait()
                    continue
                wait = self._ready(oldest, time.monotonic())
                if wait <= 0:
                    batch = self._take(oldest)
                    if batch:
                        return batch
                    continue
                self._cond.wait(timeout=wait)

    def _work(self) -> None:
        loop = self._loop
        assert loop is not None and self._stopped is not None
        stopped = self._stopped
        try:
            while True:
                task = self._next()
                if task is None:
                    break
                if isinstance(task, tuple):
                    fn, fut = task
                    try:
                        result, error = fn(), None
                    except BaseException as e:  # noqa: BLE001 - handed to the awaiting caller
                        result, error = None, e
                    loop.call_soon_threadsafe(_settle, fut, result, error)
                    continue
                rows = [it.request.rows[it.index] for it in task]
                texts = [it.request.texts[it.index] for it in task]
                t0 = time.perf_counter()
                try:
                    out, error = self._run_engine(texts, rows), None
                except Exception as e:  # noqa: BLE001 - the error goes to every caller of the batch
                    out, error = None, e
                stats = BatchStats(
                    len(rows), max(len(r[0]) for r in rows), sum(len(r[0]) for r in rows), time.perf_counter() - t0
                )
                loop.call_soon_threadsafe(self._deliver, task, out, error, stats)
        except RuntimeError:  # the event loop was closed under us: nobody is waiting any more
            return
        finally:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, stopped, None, None)

    def _deliver(
        self, batch: list[_Item], out: Optional[np.ndarray], error: Optional[Exception], stats: BatchStats
    ) -> None:
        """Hand a batch's rows (or its error) to the callers (in the event loop)."""
        for i, it in enumerate(batch):
            req = it.request
            if req.future.done():
                continue
            if error is not None:
                req.future.set_exception(error)
                continue
            assert out is not None
            if req.out is None:
                req.out = np.empty((len(req.texts), out.shape[1]), dtype=np.float32)
            req.out[it.index] = out[i]
            req.remaining -= 1
            if req.remaining == 0:
                req.future.set_result(req.out)
        if error is None and self.on_batch is not None:
            self.on_batch(stats)

    def _run_engine(self, texts: list[str], rows: list[TokenRow]) -> np.ndarray:
        """One engine call (worker thread): the rows padded to the longest of them."""
        emb = self.embedder
        if self._pooled:
            batch = pad_batch(rows, emb.config.pad_token_id)
            session = getattr(emb, "session", None)
            if self._mode == "matrixized" and session is not None:
                y = session.run(batch)  # the embedder's own session: its plans and packed weights
            else:
                y = emb.program.run(batch, mode=self._mode)
            out = np.array(y, dtype=np.float32)
        else:  # host-side pooling: the texts have one length (no padding)
            out = np.asarray(emb.encode(texts, batch_size=len(texts), normalize=False), dtype=np.float32)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


def _settle(fut: asyncio.Future, result: Any, error: Optional[BaseException]) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


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
