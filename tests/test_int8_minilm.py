"""all-MiniLM-L6-v2 in int8 (issue #13), no fine-tuning, against the float32 exact model on real sentences.

Floors: cosine mean >= 0.995, min >= 0.98, nearest-neighbour agreement >= 97% over the corpus's
evaluation sentences (N_EVAL of them; the calibration split is disjoint).  The float32 exact model is
itself checked against the independent float64 reference in tests/test_hf.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from nmengine import corpus, hf, kernels

from .test_hf import MODEL_DIR, N_EVAL, requires_model


@pytest.fixture(scope="module")
def int8_embedder():
    return hf.SentenceEmbedder(MODEL_DIR, precision="int8")


@pytest.fixture(scope="module")
def embeddings(int8_embedder):
    sents = corpus.sentences(N_EVAL)
    exact = hf.SentenceEmbedder(MODEL_DIR, calibrate=False).with_mode("exact").encode(sents)
    return sents, exact, int8_embedder.encode(sents)


@requires_model
def test_every_linear_layer_is_int8(int8_embedder):
    p = int8_embedder.program
    q = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    assert len(q) == 6 * 4 and p.meta["precision"] == "int8"
    w8 = sum(p.constants[op.args["b"]].nbytes for op in q)
    assert w8 == 6 * (384 * 1152 + 384 * 384 + 2 * 384 * 1536)  # one byte per weight
    for op in q:
        info = op.attrs["quant"]
        assert info["error"] is not None and info["error"] <= max(info["measured"].values())


@requires_model
def test_int8_fidelity_floors(embeddings):
    sents, exact, approx = embeddings
    assert len(sents) >= 500
    f = hf.fidelity(approx, exact)
    assert f["mean_cosine"] >= 0.995, f
    assert f["min_cosine"] >= 0.98, f
    assert f["nn_agreement"] >= 0.97, f


@requires_model
def test_int8_semantics(int8_embedder):
    a, b, c = int8_embedder.encode(["Return the number of items in the list.",
                                    "Count how many elements a list holds.",
                                    "Open a network connection to the mail server."])
    assert a @ b > a @ c + 0.1


@requires_model
def test_int8_scalar_kernel_path(int8_embedder, embeddings):
    """The portable int8 kernel (what a CPU without AVX2/VNNI runs) gives the same int8 GEMM bits; the
    float parts differ only by the float GEMM kernel's summation (FMA vs multiply-add)."""
    sents, _, approx = embeddings
    with kernels.use_kernel("scalar"):
        assert kernels.qkernel_info()["kernel"] == "scalar"
        got = int8_embedder.encode(sents[:16])
    cos = np.sum(got * approx[:16], 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(approx[:16], axis=1)
    assert cos.min() >= 0.9999
