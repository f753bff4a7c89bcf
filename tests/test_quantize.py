"""The int8 pass (nm.compile(precision="int8")): program structure, accuracy against the float64 forward
of the same spec (tests/reference.py), bundles, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine.compile import compile
from nmengine.compile.quantize import Candidate, QuantizationError, quantize, quantize_weights

from . import reference
from .specs import cnn_spec, transformer_inputs, transformer_spec


def _cos(a, b):
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def encoder():
    spec = transformer_spec(seed=3, d=64, heads=4, ff=128, layers=2)
    calib = [transformer_inputs(seed=s, batch=8, t=12) for s in range(3)]
    return spec, calib


def test_int8_program_structure(encoder):
    spec, calib = encoder
    p = compile(spec, calibration=calib, precision="int8")
    q = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    # QKV, attention output, FFN in, FFN out per layer
    assert len(q) == 8 and p.meta["precision"] == "int8"
    for op in q:
        assert p.constants[op.args["b"]].dtype == np.int8
        w_scale = p.constants[op.args["w_scale"]]
        info = op.attrs["quant"]
        assert w_scale.shape[1] == p.constants[op.args["b"]].shape[1]
        assert info["candidate"] in info["measured"] and info["error"] == info["measured"][info["candidate"]]
        assert 0 <= info["error"] < 0.05
    # the float weights of quantized GEMMs are gone; reductions against ones stay float
    assert not any(c.dtype == np.float32 and c.ndim == 2 and min(c.shape) >= 64 for c in p.constants.values())
    assert any(op.kind == "gemm" and op.attrs.get("precision", "float32") == "float32" for op in p.ops)


def test_int8_matches_float64_reference(encoder):
    spec, calib = encoder
    p = compile(spec, calibration=calib, precision="int8")
    x = transformer_inputs(seed=11, batch=8, t=12)
    ref = reference.forward(spec, x)["embedding"]
    got = p.run(x)
    cos = _cos(got, ref)
    assert cos.min() >= 0.995, cos
    # exact mode: the dequantized weights with exact activations, closer still
    assert _cos(p.run(x, mode="exact"), ref).min() >= cos.min() - 1e-4


def test_cnn_int8(tmp_path):
    spec = cnn_spec(seed=2, c=16, hw=8)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((8, 1, 8, 8)).astype(np.float32) for _ in range(2)]
    p = compile(spec, calibration=calib, precision="int8")
    # the classifier head and the channels-last convolutions with K >= 16 are int8; the first conv
    # (1 input channel x 3 x 3: K = 9) stays float32 and says why
    q = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    assert [op.layer for op in q if not op.attrs.get("conv")] == ["head"] and sum(
        op.attrs.get("conv", False) for op in q
    ) == 2
    (first,) = [op for op in p.ops if op.attrs.get("conv") and op.attrs.get("precision", "float32") == "float32"]
    assert "K = 9" in first.attrs["quant"]["reason"]
    x = rng.standard_normal((16, 1, 8, 8)).astype(np.float32)
    ref = reference.forward(spec, {"x": x})
    ref = ref[spec.outputs[0]]
    assert _cos(p.run(x), ref).min() >= 0.99


def test_bundle_round_trip(encoder, tmp_path):
    spec, calib = encoder
    p = compile(spec, calibration=calib, precision="int8")
    path = nm.save(p, tmp_path / "q.nmb")
    back = nm.load(path)
    x = transformer_inputs(seed=5)
    assert np.array_equal(back.run(x), p.run(x))
    assert back.constants[[op for op in back.ops if op.attrs.get("precision") == "int8"][0].args["b"]].dtype == np.int8


def test_without_calibration_uses_the_most_accurate_candidate(encoder):
    spec, _ = encoder
    p = compile(spec, precision="int8")
    q = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    assert q and all("no calibration" in op.attrs["quant"]["reason"] for op in q)
    x = transformer_inputs(seed=2)
    assert _cos(p.run(x), reference.forward(spec, x)["embedding"]).min() >= 0.99


def test_tolerance_picks_cheaper_or_more_accurate(encoder):
    spec, calib = encoder
    loose = compile(spec, calibration=calib, precision="int8", int8_tolerance=1.0)
    assert all(
        op.attrs["quant"]["candidate"] == "dynamic-row" for op in loose.ops if op.attrs.get("precision") == "int8"
    )
    tight = compile(spec, calibration=calib, precision="int8", int8_tolerance=1e-9)
    for op in tight.ops:
        if op.attrs.get("precision") == "int8":
            info = op.attrs["quant"]
            assert info["error"] == min(info["measured"].values())


def test_static_candidate_and_smoothing_are_recorded(encoder):
    spec, calib = encoder
    base = compile(spec, calibration=calib)
    p = quantize(base, calib, candidates=[Candidate(32, "static", 0.5)])
    ops = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    assert all("a_static" in op.args and "inv_smooth" in op.args for op in ops)
    x = transformer_inputs(seed=4)
    assert _cos(p.run(x), base.run(x, mode="exact")).min() >= 0.98


def test_quantize_weights_properties():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((70, 9)).astype(np.float32)
    w[:, 3] = 0
    q, s = quantize_weights(w, 32)
    assert q.dtype == np.int8 and s.shape == (3, 9) and np.abs(q).max() == 127
    deq = q.astype(np.float64) * np.repeat(s, 32, axis=0)[:70]
    assert np.all(np.abs(deq - w) <= np.repeat(s, 32, axis=0)[:70] / 2 + 1e-7)
    assert np.all(q[:, 3] == 0)


def test_bad_inputs(encoder):
    spec, calib = encoder
    with pytest.raises(ValueError, match="precision"):
        compile(spec, precision="int4")
    base = compile(spec, calibration=calib)
    with pytest.raises(ValueError, match="tolerance"):
        quantize(base, calib, tolerance=0)
    with pytest.raises(ValueError, match="group"):
        quantize(base, calib, candidates=[Candidate(30)])
    with pytest.raises(ValueError, match="NaN"):
        quantize_weights(np.array([[np.nan]], np.float32))


def test_cost_and_coverage_show_int8(encoder):
    spec, calib = encoder
    p = compile(spec, calibration=calib, precision="int8")
    f = compile(spec, calibration=calib)
    shapes = {k: (4, 12) for k in p.inputs}
    cov = p.coverage(shapes)
    q = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    assert cov["gemm_precision"]["int8"] == len(q) and cov["int8_gemms"] == [op.out for op in q]
    rq, rf = p.cost(None, shapes), f.cost(None, shapes)
    by_out = {o["out"]: o for o in rf.ops}
    ops = {op.out: op for op in p.ops}
    w = rq.config.bytes_per_element
    for o in rq.ops:
        if o["precision"] != "int8":
            continue
        K, N = o["K"], o["N"]
        assert o["int8_macs"] == o["macs"] == by_out[o["out"]]["macs"]
        # weights are read as one byte each instead of w: at least K*N*(w-1) bytes less, minus the scales
        scales = sum(
            p.constants[ops[o["out"]].args[r]].size * 4
            for r in ("w_scale", "inv_smooth", "a_static")
            if r in ops[o["out"]].args
        )
        saved = by_out[o["out"]]["dram_read_bytes"] - o["dram_read_bytes"]
        assert saved >= K * N * (w - 1) - scales, (o["what"], saved, scales)
    assert rq.total["int8_macs"] == sum(o["macs"] for o in rq.ops if o["precision"] == "int8") > 0
    assert "int8" in rq.table()


def _mlp():
    from nmengine.spec import InputSpec, Layer, ModelSpec

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    return ModelSpec(
        {"x": InputSpec((None, 32))},
        [
            Layer("linear", "l1", ["x"], "h", {}, {"weight": w, "bias": np.zeros(64, np.float32)}),
            Layer("relu", "r", ["h"], "y"),
        ],
        ["y"],
        name="mlp",
    ), w


def test_calibration_without_rows_and_with_nan():
    spec, w = _mlp()
    # calibration that never reaches the GEMM with a row: the fallback, said so, and still correct
    p = compile(spec, calibration=np.zeros((0, 32), np.float32), precision="int8")
    (op,) = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    assert "no calibration data" in op.attrs["quant"]["reason"]
    x = np.random.default_rng(1).standard_normal((9, 32)).astype(np.float32)
    ref = np.maximum(x.astype(np.float64) @ w.T, 0)
    assert np.abs(p.run(x) - ref).max() <= 0.02 * np.abs(ref).max()
    bad = x.copy()
    bad[2, 5] = np.nan
    with pytest.raises(QuantizationError, match="NaN"):
        compile(spec, calibration=bad, precision="int8")


def test_onnx_load_int8():
    """nm.onnx.load(..., precision="int8"): the imported linear layers run as int8 GEMMs."""
    pytest.importorskip("onnx")
    from tests.onnx_models import bert_like

    data = bert_like(d=64, heads=4, ff=128)
    rng = np.random.default_rng(0)
    calib = [
        {"input_ids": rng.integers(0, 50, (4, 10)).astype(np.int64), "attention_mask": np.ones((4, 10), np.int64)}
        for _ in range(2)
    ]
    p8 = nm.onnx.load(data, calibration=calib, precision="int8")
    p32 = nm.onnx.load(data, calibration=calib)
    assert sum(op.attrs.get("precision") == "int8" for op in p8.ops) >= 8
    x = {"input_ids": rng.integers(0, 50, (3, 9)).astype(np.int64), "attention_mask": np.ones((3, 9), np.int64)}
    got, ref = p8.run(x), p32.run(x, mode="exact")
    assert _cos(got.reshape(-1, 64), ref.reshape(-1, 64)).min() >= 0.99
    with pytest.raises(ValueError, match="precision"):
        nm.onnx.load(data, calibration=calib, precision="fp8")
