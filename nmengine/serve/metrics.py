"""Server metrics in the Prometheus text exposition format (no client library needed).

Exposed at ``GET /metrics``::

    nmengine_requests_total{endpoint,status}         counter   every HTTP request by route and status
    nmengine_errors_total{status}                    counter   responses with status >= 400
    nmengine_request_duration_seconds{endpoint}      histogram wall time from request to response
    nmengine_batch_size                              histogram sentences per engine call
    nmengine_batch_padded_tokens                     histogram sentences x padded length per call
    nmengine_engine_duration_seconds                 histogram wall time of one engine call
    nmengine_queue_depth                             gauge     sentences waiting for the engine
    nmengine_requests_in_flight                      gauge     requests being handled
    nmengine_tokens_total                            counter   real tokens embedded
    nmengine_sentences_total                         counter   sentences embedded
    nmengine_tokens_per_second                       gauge     tokens embedded per second, last 10 s
    nmengine_client_disconnects_total                counter   requests abandoned by their client
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from typing import Any, Callable, Deque, Optional, Sequence

__all__ = ["Histogram", "Metrics", "MetricsMiddleware"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768)


def _labels(**kv: Any) -> str:
    if not kv:
        return ""

    def esc(v: Any) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    body = ",".join(f'{k}="{esc(v)}"' for k, v in sorted(kv.items()))
    return "{" + body + "}"


def _num(v: float) -> str:
    return repr(float(v)) if v != int(v) else str(int(v))


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: ``le`` buckets, ``_sum``, ``_count``)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(sorted(buckets))
        self.counts = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, v)] += 1
        self.sum += v
        self.count += 1

    def render(self, name: str, **labels: Any) -> list[str]:
        out, acc = [], 0
        for le, c in zip(list(self.buckets) + [float("inf")], self.counts):
            acc += c
            out.append(f"{name}_bucket{_labels(**labels, le='+Inf' if le == float('inf') else _num(le))} {acc}")
        out.append(f"{name}_sum{_labels(**labels)} {self.sum!r}")
        out.append(f"{name}_count{_labels(**labels)} {self.count}")
        return out


class Metrics:
    """Counters, gauges and histograms of one server (thread-safe)."""

    def __init__(self, queue_depth: Optional[Callable[[], int]] = None, window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = collections.Counter()
        self.errors: dict[int, int] = collections.Counter()
        self.durations: dict[str, Histogram] = {}
        self.batch_size = Histogram(SIZE_BUCKETS)
        self.batch_tokens = Histogram(TOKEN_BUCKETS)
        self.engine = Histogram(LATENCY_BUCKETS)
        self.tokens = 0
        self.sentences = 0
        self.disconnects = 0
        self.in_flight = 0
        self.queue_depth = queue_depth or (lambda: 0)
        self.window_s = window_s
        self._recent: Deque[tuple[float, int]] = collections.deque()

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(endpoint, status)] += 1
            if status >= 400:
                self.errors[status] += 1
            self.durations.setdefault(endpoint, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch_done(self, sentences: int, padded_tokens: int, real_tokens: int, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            self.batch_size.observe(sentences)
            self.batch_tokens.observe(padded_tokens)
            self.engine.observe(seconds)
            self.tokens += real_tokens
            self.sentences += sentences
            self._recent.append((now, real_tokens))
            self._trim(now)

    def disconnected(self) -> None:
        with self._lock:
            self.disconnects += 1

    def _trim(self, now: float) -> None:
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            return sum(n for _, n in self._recent) / self.window_s

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        tps = self.tokens_per_second()
        depth = self.queue_depth()
        with self._lock:
            lines = [
                "# HELP nmengine_requests_total HTTP requests by endpoint and status.",
                "# TYPE nmengine_requests_total counter",
            ]
            lines += [
                f"nmengine_requests_total{_labels(endpoint=e, status=s)} {n}"
                for (e, s), n in sorted(self.requests.items())
            ]
            lines += [
                "# HELP nmengine_errors_total HTTP responses with status >= 400.",
                "# TYPE nmengine_errors_total counter",
            ]
            lines += [f"nmengine_errors_total{_labels(status=s)} {n}" for s, n in sorted(self.errors.items())]
            lines += [
                "# HELP nmengine_request_duration_seconds Request latency.",
                "# TYPE nmengine_request_duration_seconds histogram",
            ]
            for e, h in sorted(self.durations.items()):
                lines += h.render("nmengine_request_duration_seconds", endpoint=e)
            for name, h, text in (
                ("nmengine_batch_size", self.batch_size, "Sentences per engine call."),
                ("nmengine_batch_padded_tokens", self.batch_tokens, "Sentences times padded length per engine call."),
                ("nmengine_engine_duration_seconds", self.engine, "Wall time of one engine call."),
            ):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} histogram", *h.render(name)]
            for name, kind, value, text in (
                ("nmengine_queue_depth", "gauge", depth, "Sentences waiting for the engine."),
                ("nmengine_requests_in_flight", "gauge", self.in_flight, "Requests being handled."),
                ("nmengine_tokens_total", "counter", self.tokens, "Real tokens embedded."),
                ("nmengine_sentences_total", "counter", self.sentences, "Sentences embedded."),
                (
                    "nmengine_tokens_per_second",
                    "gauge",
                    tps,
                    f"Tokens embedded per second over the last {self.window_s:g} s.",
                ),
                (
                    "nmengine_client_disconnects_total",
                    "counter",
                    self.disconnects,
                    "Requests abandoned by their client before the response.",
                ),
            ):
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware: counts every HTTP request by route path and response status, with its latency."""

    def __init__(self, app: Any, metrics: Metrics, known_paths: Sequence[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.known = set(known_paths)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in self.known else "other"
        status = [500]
        t0 = time.perf_counter()

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        self.metrics.request_started()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.request_done(endpoint, status[0], time.perf_counter() - t0)
