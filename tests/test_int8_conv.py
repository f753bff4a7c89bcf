"""int8 convolutions (precision="int8"): channels-last convs run as int8 GEMMs.

References are independent of the code under test: a numpy float64 convolution with the int8
fake-quantization written out here (im2col, per-output-channel weight scales, per-pixel activation
scales, K groups along the (i, j, c) window order), and ONNX Runtime on the same .onnx file.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import nmengine as nm

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.onnx_graphs import ort_run  # noqa: E402
from tests.test_onnx_cnn import resnet_style  # noqa: E402

quantize_mod = importlib.import_module("nmengine.compile.quantize")
RNG = np.random.default_rng(13)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _row_cos(a, b):
    a = np.asarray(a, np.float64).reshape(a.shape[0], -1)
    b = np.asarray(b, np.float64).reshape(b.shape[0], -1)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _conv_program(w, b, k, stride, pad):
    """A channels-last conv as the compiler writes it (compile/channels_last.py): NHWC im2col, then one
    GEMM of the window rows with the (kh*kw*Ci, Co) weights, bias and ReLU in the epilogue."""
    from nmengine.program import Op, Program
    from nmengine.spec import InputSpec

    co, ci = w.shape[:2]
    wt = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k * k * ci, co))
    ops = [
        Op(
            "im2col",
            "cols",
            {"x": "x"},
            {"kernel": [k, k], "stride": [stride] * 2, "padding": [pad] * 2, "layout": "nhwc"},
        ),
        Op("gemm", "y", {"a": "cols", "b": "W", "bias": "B"}, {"epilogue": {"act": "relu"}, "conv": True}),
    ]
    return Program({"x": InputSpec((None, 9, 9, ci))}, ["y"], ops, {"W": wt, "B": b.astype(np.float32)}, {})


def _fake_quant_conv(x, w, b, stride, pad, group, relu, quantized=True):
    """float64 conv with the int8 arithmetic of docs/int8.md: per output pixel (and K group) activation
    scale, per output channel (and K group) weight scale, window order (i, j, c); the quantization steps
    in float32 as the kernel's contract states, the sums exact, the scaling in float64."""
    n, ci, h, wd = x.shape
    co, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = np.empty((n, ho, wo, kh, kw, ci), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = xp[:, :, i : i + stride * ho : stride, j : j + stride * wo : stride].transpose(
                0, 2, 3, 1
            )
    a = cols.reshape(n * ho * wo, kh * kw * ci)
    wm = w.transpose(2, 3, 1, 0).reshape(kh * kw * ci, co)  # (K, Co), rows in (i, j, c) order
    K = wm.shape[0]
    G = group or K
    y = np.zeros((a.shape[0], co)) if quantized else a.astype(np.float64) @ wm.astype(np.float64)
    for g0 in range(0, K if quantized else 0, G):
        ab, wb = a[:, g0 : g0 + G], wm[g0 : g0 + G]
        sw = np.abs(wb).max(0) / np.float32(127)
        sw = np.where(sw > 0, sw, np.float32(1)).astype(np.float32)
        qw = np.clip(np.rint(wb / sw), -127, 127)
        m = np.abs(ab).max(1).astype(np.float32)
        inv = np.where(m > 0, np.float32(127) / np.where(m > 0, m, 1), 0).astype(np.float32)
        qa = np.clip(np.rint((ab * inv[:, None]).astype(np.float32)), -127, 127)
        sa = (m / np.float32(127)).astype(np.float32)
        acc = qa.astype(np.int64) @ qw.astype(np.int64)  # exact
        y += acc.astype(np.float64) * (sa.astype(np.float64)[:, None] * sw.astype(np.float64)[None, :])
    y += b.astype(np.float64)
    if relu:
        y = np.maximum(y, 0)
    return y.reshape(n, ho, wo, co).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("group,stride,k", [(None, 1, 3), (32, 1, 3), (None, 2, 3), (64, 2, 3), (None, 1, 1)])
def test_int8_conv_matches_fake_quant_reference(group, stride, k):
    pad = k // 2
    w, b = _x(12, 16, k, k) * 0.2, _x(12)
    nhwc = (0, 2, 3, 1)
    calib = {"x": _x(2, 16, 9, 9).transpose(nhwc).copy()}
    p32 = _conv_program(w, b, k, stride, pad)
    p8 = quantize_mod.quantize(p32, calib, candidates=[quantize_mod.Candidate(group, "dynamic", None)])
    (conv,) = [op for op in p8.ops if op.attrs.get("conv")]
    assert conv.attrs["precision"] == "int8" and conv.attrs["quant"]["group"] == (group if k > 1 else None)
    x = _x(3, 16, 9, 9)
    x[0] *= 40  # rows of very different ranges: per-pixel scales matter
    x[1, 3, 4, 4] = -128.0
    ref = _fake_quant_conv(x, w, b, stride, pad, group, relu=True).transpose(nhwc)
    feed = {"x": x.transpose(nhwc).copy()}
    outs = [nm.Session(p8, threads=t).run(feed) for t in (1, 2, 3)]
    tol = 2e-6 * np.abs(ref).max()  # int32 sums exact: only float32 rounding of the scaling differs
    assert np.abs(outs[0] - ref).max() <= tol, np.abs(outs[0] - ref).max() / np.abs(ref).max()
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])  # deterministic for any thread count
    # the interpreter (the whole im2col, then one int8 GEMM) gives the same bits as the plan's fused
    # conv step (windows built and quantized block by block)
    interp = p8.runtime.run(feed)
    np.testing.assert_array_equal(interp["y"] if isinstance(interp, dict) else interp, outs[0])
    # exact mode: the float conv with the dequantized weights (the quantized model, exact activations)
    flt = _fake_quant_conv(x, w, b, stride, pad, None, relu=True, quantized=False).transpose(nhwc)
    assert np.abs(p8.run(feed, mode="exact") - flt).max() <= 0.02 * np.abs(flt).max()


@pytest.mark.parametrize("size", [16, 23])
def test_onnx_cnn_int8_vs_onnxruntime(size, tmp_path):
    """A ResNet-style CNN from onnx.helper in int8: every conv with K >= 16 is an int8 GEMM (the 8-channel
    1x1 shortcut stays float32 and says why); per-row cosine >= 0.99 against ONNX Runtime float32."""
    d = resnet_style(17, depthwise=False, size=size)
    calib = [{"x": _x(4, 3, size, size)} for _ in range(2)]
    p8 = nm.onnx.load(d, calibration=calib, precision="int8")
    convs = [op for op in p8.ops if op.attrs.get("conv")]
    assert len(convs) == 8
    int8 = [op for op in convs if op.attrs.get("precision") == "int8"]
    assert len(int8) == 7
    (flt,) = [op for op in convs if op.attrs.get("precision", "float32") == "float32"]
    assert flt.attrs["quant"]["precision"] == "float32" and "K = 8" in flt.attrs["quant"]["reason"]
    for op in int8:
        assert p8.constants[op.args["b"]].dtype == np.int8
        assert p8.constants[op.args["w_scale"]].shape[-1] == p8.constants[op.args["b"]].shape[1]
        assert op.attrs["quant"]["error"] <= 0.05
    for b in (1, 5):
        x = _x(b, 3, size, size)
        ref = ort_run(d, {"x": x})[0]
        outs = [nm.Session(p8, threads=t).run({"x": x}) for t in (1, 2)]
        assert _row_cos(outs[0], ref).min() >= 0.99, _row_cos(outs[0], ref)
        np.testing.assert_array_equal(outs[1], outs[0])
    # bundles store and validate the int8 conv weights
    back = nm.load(nm.save(p8, tmp_path / "cnn8.nmb"))
    x = _x(2, 3, size, size)
    np.testing.assert_array_equal(back.run({"x": x}), p8.run({"x": x}))
    assert all(back.constants[op.args["b"]].dtype == np.int8 for op in back.ops if op.attrs.get("precision") == "int8")


def test_int8_conv_cost_and_coverage():
    """The cost model counts int8 MACs and 1-byte weights for the convs; coverage and the per-layer
    report show each conv's precision."""
    d = resnet_style(17, depthwise=False, size=16)
    calib = {"x": _x(4, 3, 16, 16)}
    p8 = nm.onnx.load(d, calibration=calib, precision="int8")
    p32 = nm.onnx.load(d, calibration=calib)
    shapes = {"x": (2, 3, 16, 16)}
    cov = p8.coverage(shapes)
    int8_convs = [op.out for op in p8.ops if op.attrs.get("conv") and op.attrs.get("precision") == "int8"]
    assert set(int8_convs) <= set(cov["int8_gemms"]) and cov["gemm_precision"]["int8"] >= 7
    r8, r32 = p8.cost(None, shapes), p32.cost(None, shapes)
    f32 = {o["out"]: o for o in r32.ops}
    ops = {op.out: op for op in p8.ops}
    w = r8.config.bytes_per_element
    seen = 0
    for o in r8.ops:
        if o["out"] not in int8_convs:
            continue
        seen += 1
        assert o["precision"] == "int8" and o["int8_macs"] == o["macs"] == f32[o["out"]]["macs"] > 0
        K, N = o["K"], o["N"]
        op = ops[o["out"]]
        scales = sum(p8.constants[op.args[r]].size * 4 for r in ("w_scale", "inv_smooth", "a_static") if r in op.args)
        # weights read as one byte each instead of w, plus their float scales
        assert f32[o["out"]]["dram_read_bytes"] - o["dram_read_bytes"] >= K * N * (w - 1) - scales
    assert seen == len(int8_convs)
    table = r8.table()
    assert "int8" in table


def test_depthwise_program_keeps_convs_float32_and_says_why():
    """A program with a depthwise conv stays NCHW (channels_last leaves it), so its convs stay float32,
    each with the reason; the linear head is int8 and the output still matches ONNX Runtime."""
    d = resnet_style(17, depthwise=True, size=16)
    calib = {"x": _x(4, 3, 16, 16)}
    p8 = nm.onnx.load(d, calibration=calib, precision="int8")
    convs = [op for op in p8.ops if op.kind == "gemm_batched" and "reason" in op.attrs.get("quant", {})]
    assert len(convs) == 9
    assert sum(op.attrs["quant"]["reason"].startswith("grouped or depthwise") for op in convs) == 1
    assert all(op.attrs.get("precision", "float32") == "float32" for op in convs)
    x = _x(3, 3, 16, 16)
    assert _row_cos(p8.run({"x": x}), ort_run(d, {"x": x})[0]).min() >= 0.99


def test_int8_error_above_max_error_keeps_float32():
    w, b = _x(12, 16, 3, 3) * 0.2, _x(12)
    calib = {"x": _x(2, 9, 9, 16)}
    p32 = _conv_program(w, b, 3, 1, 1)
    p = quantize_mod.quantize(p32, calib, max_error=1e-9)
    (conv,) = [op for op in p.ops if op.attrs.get("conv")]
    q = conv.attrs["quant"]
    assert q["precision"] == "float32" and "max_error" in q["reason"] and min(q["measured"].values()) > 1e-9
    assert p.constants[conv.args["b"]].dtype == np.float32 and p.meta["quantized_gemms"] == 0
    x = _x(2, 9, 9, 16)
    np.testing.assert_array_equal(p.run({"x": x}), p32.run({"x": x}))
    with pytest.raises(ValueError, match="max_error"):
        quantize_mod.quantize(p32, calib, max_error=0)


@pytest.mark.parametrize("k,stride", [(3, 1), (3, 2), (1, 1)])
def test_fused_int8_conv_step_on_every_kernel(monkeypatch, k, stride):
    """The session runs an int8 conv as one fused step (windows built and quantized block by block);
    every int8 kernel the CPU has (scalar, AVX2, AVX-VNNI, AVX512-VNNI, AMX) gives the same bits, within
    the int32-exact tolerance of the fake-quant reference."""
    from nmengine.kernels_int8 import qkernel_info

    pad = k // 2
    w, b = _x(40, 24, k, k) * 0.2, _x(40)
    nhwc = (0, 2, 3, 1)
    calib = {"x": _x(2, 24, 9, 9).transpose(nhwc).copy()}
    p8 = quantize_mod.quantize(
        _conv_program(w, b, k, stride, pad), calib, candidates=[quantize_mod.Candidate(32 if k > 1 else None)]
    )
    x = _x(7, 24, 9, 9)  # 7 * 81 = 567 output rows at stride 1: several blocks per thread
    feed = {"x": x.transpose(nhwc).copy()}
    ref = _fake_quant_conv(x, w, b, stride, pad, 32 if k > 1 else None, relu=True).transpose(nhwc)
    outs = {}
    for name in qkernel_info()["available"]:
        monkeypatch.setenv("NMENGINE_QKERNEL", name)
        sess = nm.Session(p8, threads=2)
        steps = [getattr(fn, "__name__", "") for fn, _ in sess.plan_for(feed).bind().steps]
        assert steps == ["qconv_nhwc"], steps  # no separate im2col step
        outs[name] = sess.run(feed)
    first = next(iter(outs.values()))
    assert np.abs(first - ref).max() <= 2e-6 * np.abs(ref).max()
    for name, o in outs.items():
        np.testing.assert_array_equal(o, first, err_msg=name)


def test_cli_import_reports_each_conv_precision(tmp_path, capsys):
    from nmengine.cli import main

    src = tmp_path / "cnn.onnx"
    src.write_bytes(resnet_style(17, depthwise=False, size=16))
    calib = tmp_path / "x.npy"
    np.save(calib, _x(4, 3, 16, 16))
    cal = ["--calibration", str(calib)]
    assert main(["import", str(src), "-o", str(tmp_path / "cnn.nmb"), "--precision", "int8", *cal]) == 0
    out = capsys.readouterr().out
    assert "7 of 8 convolutions" in out and "K = 8 < 16" in out
    src.write_bytes(resnet_style(17, depthwise=True, size=16))
    assert main(["import", str(src), "-o", str(tmp_path / "dw.nmb"), "--precision", "int8", *cal]) == 0
    out = capsys.readouterr().out
    assert "0 of 9 convolutions" in out and "grouped or depthwise" in out and "not channels last" in out
