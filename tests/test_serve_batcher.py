"""The Batcher without HTTP: results in input order, bit-for-bit independence from batch mates,
cancellation, backpressure, draining on close and argument checks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nmengine.serve import Batcher, QueueFullError  # noqa: E402
from tests.serve_helpers import embedder, reference_token_counts, sentences


def test_rows_are_bit_identical_to_encode_of_each_sentence_alone():
    """Sentences batched with longer ones (so padded further) give exactly the bits of
    ``SentenceEmbedder.encode([text])`` of the sentence alone (no padding at all)."""
    emb = embedder()
    texts = list(sentences()[:20]) + ["A much longer sentence, " * 12 + "padding every short one in its batch."]
    seen = []

    async def go():
        async with Batcher(emb, max_wait_ms=50, max_batch_tokens=100_000, on_batch=seen.append) as b:
            parts = await asyncio.gather(*(b.encode(texts[i : i + 3]) for i in range(0, len(texts), 3)))
        return np.concatenate(parts)

    got = asyncio.run(go())
    assert len(seen) < len(texts) and max(s.padded_length for s in seen) > 60  # shared, padded batches
    for t, row in zip(texts, got):
        assert np.array_equal(row, emb.encode([t])[0]), t


def test_encode_of_a_list_is_bit_identical_to_each_sentence_alone():
    """``SentenceEmbedder.encode`` pads every batch of 32 to its longest sentence: rows still equal
    the sentence encoded alone, bit for bit (the engine's attention ignores trailing padding)."""
    emb = embedder()
    texts = list(sentences()[:12]) + ["A much longer sentence, " * 12 + "so every other one is padded."]
    batched = emb.encode(texts, batch_size=32)
    one_batch = emb.encode(texts[::-1], batch_size=len(texts))[::-1]
    for t, a, b in zip(texts, batched, one_batch):
        alone = emb.encode([t])[0]
        assert np.array_equal(a, alone) and np.array_equal(b, alone), t


def test_rows_come_back_in_input_order_and_batches_are_shared():
    emb = embedder()
    texts = list(sentences()[:24])
    seen = []

    async def go():
        async with Batcher(emb, max_wait_ms=50, on_batch=seen.append) as b:
            single = await b.encode(texts[0])
            many = await asyncio.gather(*(b.encode([t]) for t in texts))
            return single, many

    single, many = asyncio.run(go())
    assert single.shape == (384,)
    got = np.concatenate(many)
    np.testing.assert_array_equal(got, emb.encode(texts))
    assert np.array_equal(got[0], single)
    assert sum(s.sentences for s in seen) == 25 and len(seen) < 25  # concurrent sentences shared calls


def test_batches_respect_the_token_budget_and_group_similar_lengths():
    """With more queued than one batch holds, each batch stays within max_batch_tokens (sentences x
    longest) and takes the oldest sentence with its nearest lengths."""
    emb = embedder()
    texts = list(sentences(200))[:120]
    lengths = {t: n for t, n in zip(texts, reference_token_counts(texts))}
    seen = []

    async def go():
        async with Batcher(emb, max_wait_ms=100, max_batch_tokens=256, on_batch=seen.append) as b:
            return await asyncio.gather(*(b.encode([t]) for t in texts))

    out = asyncio.run(go())
    assert len(out) == len(texts) and sum(s.sentences for s in seen) == len(texts)
    assert all(s.sentences * s.padded_length <= 256 or s.sentences == 1 for s in seen)
    # similar lengths: padding wastes less than in arrival-order batches of the same sizes
    real = sum(s.real_tokens for s in seen)
    padded = sum(s.sentences * s.padded_length for s in seen)
    arrival, i = 0, 0
    for s in seen:
        chunk = texts[i : i + s.sentences]
        arrival += len(chunk) * max(lengths[t] for t in chunk)
        i += s.sentences
    assert real == sum(lengths.values()) and padded < arrival


def test_cancelled_requests_never_reach_the_engine():
    emb = embedder()
    seen = []

    async def go():
        async with Batcher(emb, max_wait_ms=200, on_batch=seen.append) as b:
            task = asyncio.ensure_future(b.encode(["dropped one", "dropped two"]))
            await asyncio.sleep(0.02)
            task.cancel()
            kept = await b.encode(["kept"])
            return kept, b.queue_depth

    kept, depth = asyncio.run(go())
    assert kept.shape == (1, 384) and depth == 0
    assert sum(s.sentences for s in seen) == 1


def test_full_queue_raises_and_close_drains():
    emb = embedder()

    async def go():
        b = Batcher(emb, max_wait_ms=10_000, max_queue=3)
        await b.start()
        first = asyncio.ensure_future(b.encode(["a", "b", "c"]))
        await asyncio.sleep(0)
        with pytest.raises(QueueFullError):
            await b.encode(["d"])
        await b.close()  # runs the queued sentences at once instead of waiting 10 s
        with pytest.raises(RuntimeError, match="not running"):
            await b.encode(["e"])
        return await first

    out = asyncio.run(asyncio.wait_for(go(), timeout=60))
    np.testing.assert_allclose(out, embedder().encode(["a", "b", "c"]), atol=1e-5, rtol=0)


def test_empty_input_and_argument_checks():
    emb = embedder()

    async def go():
        async with Batcher(emb) as b:
            assert (await b.encode([])).shape == (0, 384)
            with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
                await b.encode(["ok", 3])
            with pytest.raises(TypeError):
                await b.encode(b"bytes")

    asyncio.run(go())
    for bad in ({"max_batch_tokens": 0}, {"max_queue": -1}, {"max_batch_size": 1.5}, {"max_wait_ms": -1}):
        with pytest.raises(ValueError):
            Batcher(emb, **bad)
    with pytest.raises(TypeError, match="SentenceEmbedder"):
        Batcher(object())


# -- what the server loads ----------------------------------------------------------------------
def test_load_model_kinds(tmp_path):
    import nmengine as nm
    from nmengine.serve import load_model
    from nmengine.spec import InputSpec, Layer, ModelSpec

    bundle = tmp_path / "minilm.nmb"
    nm.save(embedder().program, str(bundle))
    text = load_model(str(bundle))
    assert text.is_text and text.dim == 384 and text.name == "minilm"
    np.testing.assert_array_equal(text.embedder.encode(["same program"]), embedder().encode(["same program"]))
    assert load_model(str(bundle), mode="exact").embedder.mode == "exact"

    w = np.eye(3, dtype=np.float32)
    spec = ModelSpec({"x": InputSpec((None, 3))}, [Layer("linear", "fc", ["x"], "y", {}, {"weight": w})], ["y"])
    nm.save(nm.compile(spec), str(tmp_path / "tiny.nmb"))
    tiny = load_model(str(tmp_path / "tiny.nmb"))
    assert not tiny.is_text and tiny.describe()["inputs"] == {"x": {"shape": ["?", 3], "dtype": "float32"}}

    with pytest.raises(FileNotFoundError, match="not found"):
        load_model(str(tmp_path / "missing.nmb"))
    with pytest.raises(ValueError, match="precision"):
        load_model(str(bundle), mode="fast")


def test_onnx_model_serves_v1_run(tmp_path):
    import warnings

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("nmengine.onnx")
    from onnx import TensorProto, helper, numpy_helper

    from nmengine.serve import load_model

    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(str(path))
    assert not model.is_text and model.name == "tiny"
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(model.program.run({"x": x}), np.maximum(x.astype(np.float64) @ w, 0), atol=1e-5)


def test_onnx_model_without_the_frontend_is_a_clear_error(tmp_path):
    import importlib.util

    from nmengine.serve import load_model

    if importlib.util.find_spec("nmengine.onnx") is not None:
        pytest.skip("the ONNX frontend is installed: .onnx files load through it")
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not read")
    with pytest.raises(ValueError, match="ONNX frontend"):
        load_model(str(path))


def test_call_runs_on_the_engine_thread_and_passes_errors_back():
    import threading

    emb = embedder()

    async def go():
        async with Batcher(emb, max_wait_ms=20) as b:
            names = await asyncio.gather(
                b.call(lambda: threading.current_thread().name), b.encode(["a sentence"]), b.call(lambda: 6 * 7)
            )
            with pytest.raises(ZeroDivisionError):
                await b.call(lambda: 1 / 0)
            after = await b.encode("still serving")
        return names, after

    (thread, vec, answer), after = asyncio.run(go())
    assert thread == "nmengine-engine" and thread != threading.current_thread().name
    assert answer == 42 and vec.shape == (1, 384) and after.shape == (384,)
    np.testing.assert_array_equal(after, emb.encode(["still serving"])[0])
