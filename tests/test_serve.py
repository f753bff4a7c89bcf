"""The HTTP server against a real uvicorn on a loopback port: results equal SentenceEmbedder.encode,
the OpenAI response schema, every error status (and the server answering afterwards), backpressure,
client disconnects, metrics and /v1/run on a non-text program."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import time

import httpx  # noqa: E402  (after serve_helpers skipped the module if the serve extra is missing)
import numpy as np
import pytest

from nmengine.serve import Limits, ServedModel, create_app  # noqa: E402
from tests.serve_helpers import ThreadServer, embedder, reference_token_counts, sentences

LIMITS = Limits(max_body_bytes=64 * 1024, max_inputs=32, max_input_chars=2000)


def _served(emb) -> ServedModel:
    return ServedModel("minilm", emb.program, emb, source="test")


@pytest.fixture(scope="module")
def server():
    with ThreadServer(create_app(_served(embedder()), limits=LIMITS, max_wait_ms=5)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def _embed(client, texts, **extra):
    r = client.post("/v1/embeddings", json={"input": texts, "model": "minilm", **extra})
    assert r.status_code == 200, r.text
    return r.json()


def _still_answers(client):
    assert client.get("/health").json()["status"] == "ok"
    out = _embed(client, ["still here"])
    assert len(out["data"]) == 1 and len(out["data"][0]["embedding"]) == 384


# -- results and schema -------------------------------------------------------------------------
def test_embeddings_equal_sentence_embedder_encode(client):
    texts = list(sentences()[:24])
    doc = _embed(client, texts)
    got = np.array([d["embedding"] for d in doc["data"]], dtype=np.float32)
    want = embedder().encode(texts)
    assert got.shape == want.shape == (24, 384)
    # the same bits: the JSON floats read back to the float32 values, and neither the server's batches
    # nor encode's padding change a sentence's embedding
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_openai_response_schema(client):
    texts = ["The cat sat on the mat.", "A second, somewhat longer input sentence for the schema test."]
    doc = _embed(client, texts)
    assert set(doc) == {"object", "data", "model", "usage"}
    assert doc["object"] == "list" and doc["model"] == "minilm"
    assert [d["index"] for d in doc["data"]] == [0, 1]
    for d in doc["data"]:
        assert set(d) == {"object", "index", "embedding"} and d["object"] == "embedding"
        assert all(isinstance(v, float) for v in d["embedding"])
    n = sum(reference_token_counts(texts))
    assert doc["usage"] == {"prompt_tokens": n, "total_tokens": n}


def test_single_string_and_base64(client):
    text = "Base64 carries the same float32 bits."
    floats = _embed(client, text)
    b64 = _embed(client, text, encoding_format="base64")
    assert len(floats["data"]) == len(b64["data"]) == 1
    raw = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(raw, np.array(floats["data"][0]["embedding"], dtype=np.float32))
    np.testing.assert_allclose(raw, embedder().encode(text), atol=1e-5, rtol=0)


def test_embed_route_and_empty_input(client):
    texts = list(sentences()[:3])
    a = client.post("/embed", json=texts).json()
    b = client.post("/embed", json={"inputs": texts}).json()
    assert a == b and np.array(a).shape == (3, 384)
    np.testing.assert_allclose(np.array(a, dtype=np.float32), embedder().encode(texts), atol=1e-5, rtol=0)
    assert client.post("/embed", json=[]).json() == []
    empty = _embed(client, [])
    assert empty["data"] == [] and empty["usage"]["prompt_tokens"] == 0


def test_embedding_does_not_depend_on_batch_mates_bit_for_bit(server, client):
    """Each sentence alone (one request at a time: batches of one) vs. all of them in concurrent
    requests mixed into shared batches: identical bits."""
    texts = list(sentences()[:32])
    alone = {t: np.array(_embed(client, t)["data"][0]["embedding"], dtype=np.float32) for t in texts}

    async def burst():
        rng = np.random.default_rng(0)
        groups = [list(rng.choice(texts, size=int(rng.integers(1, 6)), replace=False)) for _ in range(24)]
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            rs = await asyncio.gather(*(c.post("/v1/embeddings", json={"input": g}) for g in groups))
        return groups, rs

    groups, rs = asyncio.run(burst())
    before = _metric(client, "nmengine_batch_size_count")
    assert before > 0
    for g, r in zip(groups, rs):
        assert r.status_code == 200
        for t, d in zip(g, r.json()["data"]):
            assert np.array_equal(np.array(d["embedding"], dtype=np.float32), alone[t]), t
    # the burst really was batched: fewer engine calls than sentences
    sizes = _histogram_sum(client, "nmengine_batch_size")
    assert sizes[1] > sizes[0]  # sum of batch sizes exceeds the number of batches


# -- errors: status, JSON body naming the problem, and the server still answering ---------------
def _post_raw(client, path, content, headers=None):
    return client.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b'{"input": ["a",', 400, "not valid JSON"),
        (b'\xff\xfe{"input": "a"}', 400, "UTF-8"),
        (b"", 400, "empty"),
        (b'{"input": "\\ud800"}', 400, "surrogate"),
        (b'{"model": "m"}', 422, "missing field 'input'"),
        (b'{"input": 5}', 422, "string or a list"),
        (b'{"input": ["ok", 3]}', 422, "input[1] must be a string"),
        (b'{"input": [101, 2023]}', 422, "token ids"),
        (b'{"input": "a", "encoding_format": "int8"}', 422, "encoding_format"),
        (b'{"input": "a", "dimensions": 12}', 422, "dimensions"),
        (b'["a", "b"]', 422, "JSON object"),
    ],
)
def test_bad_requests(client, body, status, needle):
    r = _post_raw(client, "/v1/embeddings", body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["code"] == status
    _still_answers(client)


def test_limits_say_which_limit(client):
    cases = [
        ({"input": ["x"] * (LIMITS.max_inputs + 1)}, "max_inputs", LIMITS.max_inputs + 1),
        ({"input": ["ok", "y" * (LIMITS.max_input_chars + 1)]}, "max_input_chars", LIMITS.max_input_chars + 1),
    ]
    for doc, limit, got in cases:
        r = client.post("/v1/embeddings", json=doc)
        assert r.status_code == 413, r.text
        err = r.json()["error"]
        assert err["limit"] == limit and err["got"] == got and limit in err["message"]
    big = json.dumps({"input": ["z " * 1000] * 40}).encode()
    assert len(big) > LIMITS.max_body_bytes
    r = _post_raw(client, "/v1/embeddings", big)
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_body_bytes"
    _still_answers(client)


def test_body_limit_without_content_length(server, client):
    """A chunked body is cut off once it passes max_body_bytes (no Content-Length to trust)."""

    def chunks():
        for _ in range(20):
            yield b" " * 8192

    r = client.post("/embed", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["limit"] == "max_body_bytes"
    _still_answers(client)


def test_unknown_route_and_method(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/embeddings").status_code == 405
    _still_answers(client)


def test_unexpected_error_is_a_json_500_and_the_server_answers_after(monkeypatch):
    """The embedding routes bypass Starlette's routing and error middleware: an exception that is no
    refusal still answers a JSON 500 (counted in the metrics), and the next request works."""
    app = create_app(_served(embedder()), limits=LIMITS, max_wait_ms=5)
    with ThreadServer(app) as s, httpx.Client(base_url=s.url, timeout=60) as c:
        batcher = app.app.app.state.batcher  # MetricsMiddleware -> direct routes -> Starlette

        def broken(*args, **kwargs):
            raise KeyError("not a refusal")

        monkeypatch.setattr(batcher, "submit", broken)
        r = c.post("/v1/embeddings", json={"input": "x", "model": "minilm"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert _metrics(c)['nmengine_requests_total{endpoint="/v1/embeddings",status="500"}'] == 1
        monkeypatch.undo()
        _still_answers(c)


def test_run_on_text_model_checks_inputs(client):
    r = client.post("/v1/run", json={"inputs": {"input_ids": [[101, 102]]}})
    assert r.status_code == 422 and "attention_mask" in r.json()["error"]["message"]
    ids = [[101, 7592, 2088, 102]]
    r = client.post(
        "/v1/run", json={"inputs": {"input_ids": ids, "token_type_ids": [[0] * 4], "attention_mask": [[1] * 4]}}
    )
    assert r.status_code == 200
    out = np.array(r.json()["outputs"]["sentence_embedding"], dtype=np.float32)
    want = embedder().encode("hello world", normalize=False)  # same ids: [CLS] hello world [SEP]
    np.testing.assert_allclose(out[0], want, atol=1e-5, rtol=0)
    _still_answers(client)


# -- metrics -------------------------------------------------------------------------------------
def _metrics(client) -> dict[str, float]:
    text = client.get("/metrics").text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def _metric(client, key) -> float:
    return _metrics(client)[key]


def _histogram_sum(client, name) -> tuple[float, float]:
    m = _metrics(client)
    return m[f"{name}_count"], m[f"{name}_sum"]


def test_metrics_count_requests_errors_and_tokens(client):
    before = _metrics(client)
    texts = ["one two three", "four"]
    _embed(client, texts)
    _post_raw(client, "/v1/embeddings", b"{")
    after = _metrics(client)
    key = 'nmengine_requests_total{endpoint="/v1/embeddings",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    e400 = 'nmengine_errors_total{status="400"}'
    assert after[e400] == before.get(e400, 0) + 1
    assert after["nmengine_tokens_total"] - before["nmengine_tokens_total"] == sum(reference_token_counts(texts))
    assert after["nmengine_sentences_total"] - before["nmengine_sentences_total"] == 2
    assert after["nmengine_queue_depth"] == 0 and after["nmengine_tokens_per_second"] > 0
    h = 'nmengine_request_duration_seconds_count{endpoint="/v1/embeddings"}'
    assert after[h] >= before.get(h, 0) + 2
    buckets = [v for k, v in after.items() if k.startswith("nmengine_batch_size_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == after["nmengine_batch_size_count"]


# -- backpressure and disconnects (a server whose sentences wait 400 ms for batch mates) ----------
@pytest.fixture(scope="module")
def slow_server():
    app = create_app(_served(embedder()), limits=LIMITS, max_wait_ms=400, max_queue=2)
    with ThreadServer(app) as s:
        yield s


def test_full_queue_answers_503_with_retry_after(slow_server):
    async def go():
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=60) as c:
            first = asyncio.ensure_future(c.post("/v1/embeddings", json={"input": ["a", "b"]}))
            await asyncio.sleep(0.15)  # the first request's two sentences now fill the queue
            second = await c.post("/v1/embeddings", json={"input": "c"})
            return await first, second

    first, second = asyncio.run(go())
    assert first.status_code == 200
    assert second.status_code == 503 and second.headers["retry-after"] == "1"
    assert second.json()["error"]["limit"] == "max_queue"
    with httpx.Client(base_url=slow_server.url, timeout=60) as c:
        assert c.post("/v1/embeddings", json={"input": "c"}).status_code == 200


def test_client_disconnect_costs_nothing_further(slow_server):
    with httpx.Client(base_url=slow_server.url, timeout=60) as c:
        before = _metrics(c)
        body = json.dumps({"input": ["never computed"]}).encode()
        s = socket.create_connection(("127.0.0.1", slow_server.port))
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        time.sleep(0.1)
        s.close()  # gone while the sentence waits for batch mates
        time.sleep(0.6)  # past max_wait: the batch would have run by now
        after = _metrics(c)
        assert after["nmengine_client_disconnects_total"] == before["nmengine_client_disconnects_total"] + 1
        assert after["nmengine_sentences_total"] == before["nmengine_sentences_total"]
        assert after["nmengine_batch_size_count"] == before["nmengine_batch_size_count"]
        assert after["nmengine_queue_depth"] == 0
        assert c.post("/v1/embeddings", json={"input": "after"}).status_code == 200


# -- /v1/run on a program without text --------------------------------------------------------------
@pytest.fixture(scope="module")
def program_server():
    import nmengine as nm
    from nmengine.spec import InputSpec, Layer, ModelSpec

    rng = np.random.default_rng(3)
    w = rng.standard_normal((5, 7)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    spec = ModelSpec(
        {"x": InputSpec((None, 7))},
        [Layer("linear", "fc", ["x"], "h", {}, {"weight": w, "bias": b}), Layer("relu", "act", ["h"], "y")],
        ["y"],
        name="tiny",
    )
    prog = nm.compile(spec)
    with ThreadServer(create_app(ServedModel("tiny", prog), limits=LIMITS)) as s:
        yield s, w.astype(np.float64), b.astype(np.float64)


def test_run_json_and_npy(program_server):
    server, w, b = program_server
    x = np.random.default_rng(4).standard_normal((3, 7)).astype(np.float32)
    want = np.maximum(x.astype(np.float64) @ w.T + b, 0)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/run", json={"inputs": {"x": x.tolist()}})
        assert r.status_code == 200
        np.testing.assert_allclose(np.array(r.json()["outputs"]["y"]), want, atol=1e-5)
        buf = io.BytesIO()
        np.save(buf, x)
        r = c.post(
            "/v1/run", json={"inputs": {"x": {"npy": base64.b64encode(buf.getvalue()).decode()}}, "format": "npy"}
        )
        assert r.status_code == 200
        y = r.json()["outputs"]["y"]
        arr = np.load(io.BytesIO(base64.b64decode(y["npy"])), allow_pickle=False)
        assert y["shape"] == [3, 5] and arr.dtype == np.float32
        np.testing.assert_allclose(arr, want, atol=1e-5)
        for doc, needle in [
            ({"inputs": {"x": [[1.0, 2.0]]}}, "shape"),
            ({"inputs": {"x": [[1.0], [1.0, 2.0]]}}, "rectangular"),
            ({"inputs": {"x": {"npy": "!!"}}}, "npy"),
            ({"inputs": {"x": [["a"] * 7]}}, "numbers"),
            ({"inputs": {"z": [[0.0] * 7]}}, "missing ['x']"),
            ({"inputs": {"x": [[0.0] * 7]}, "format": "csv"}, "format"),
        ]:
            r = c.post("/v1/run", json=doc)
            assert r.status_code == 422 and needle in r.json()["error"]["message"], (doc, r.text)
        r = c.post("/v1/embeddings", json={"input": "text"})
        assert r.status_code == 404 and "/v1/run" in r.json()["error"]["message"]
        assert c.get("/health").json()["kind"] == "program"
        assert c.post("/v1/run", json={"inputs": {"x": x.tolist()}}).status_code == 200
