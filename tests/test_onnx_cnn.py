"""ONNX import of convolution-network operators, each compared with ONNX Runtime on the same file."""

from __future__ import annotations

import numpy as np
import pytest

from tests.onnx_graphs import F, check, helper, init, model, vi

RNG = np.random.default_rng(7)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _conv_model(attrs, w_shape, x_shape, bias=True, out_dims=None):
    w = _x(*w_shape) * 0.3
    inits = [init("W", w)]
    ins = ["x", "W"]
    if bias:
        inits.append(init("B", _x(w_shape[0])))
        ins.append("B")
    node = helper.make_node("Conv", ins, ["y"], name="conv", **attrs)
    return model([node], [vi("x", F, ["N"] + list(x_shape[1:]))], [vi("y", F, None)], inits)


@pytest.mark.parametrize(
    "attrs,w_shape",
    [
        ({"pads": [1, 1, 1, 1]}, (6, 4, 3, 3)),
        ({"strides": [2, 2]}, (6, 4, 3, 3)),
        ({"pads": [0, 1, 2, 1], "strides": [2, 1]}, (6, 4, 3, 3)),  # asymmetric pads
        ({"dilations": [2, 2], "pads": [2, 2, 2, 2]}, (6, 4, 3, 3)),  # dilation
        ({"group": 2, "pads": [1, 1, 1, 1]}, (6, 2, 3, 3)),  # grouped
        ({"group": 4, "pads": [1, 1, 1, 1], "strides": [2, 2]}, (4, 1, 3, 3)),  # depthwise
        ({"group": 4}, (8, 1, 3, 3)),  # depthwise, multiplier 2
        ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (6, 4, 4, 4)),
        ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (6, 4, 4, 4)),
        ({"auto_pad": "VALID"}, (6, 4, 1, 1)),
        ({"kernel_shape": [1, 3], "pads": [0, 1, 0, 1]}, (5, 4, 1, 3)),
    ],
)
def test_conv_variants(attrs, w_shape):
    x = _x(2, 4, 9, 9)
    check(_conv_model(attrs, w_shape, x.shape), {"x": x})


def test_conv_without_bias_and_batch_one():
    x = _x(1, 4, 7, 7)
    check(_conv_model({"pads": [1, 1, 1, 1]}, (3, 4, 3, 3), x.shape, bias=False), {"x": x})


def _bn_inits(c, prefix="bn"):
    return [
        init(f"{prefix}_s", RNG.uniform(0.5, 1.5, c).astype(np.float32)),
        init(f"{prefix}_b", _x(c)),
        init(f"{prefix}_m", _x(c) * 0.1),
        init(f"{prefix}_v", RNG.uniform(0.5, 2, c).astype(np.float32)),
    ]


def test_batchnorm_folded_into_conv_and_standalone():
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_s", "bn_b", "bn_m", "bn_v"], ["b"], epsilon=1e-3),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("BatchNormalization", ["r", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["y"]),
    ]
    d = model(
        nodes,
        [vi("x", F, ["N", 3, 6, 6])],
        [vi("y", F, None)],
        [init("W", _x(5, 3, 3, 3))] + _bn_inits(5) + _bn_inits(5, "bn2"),
    )
    prog = check(d, {"x": _x(2, 3, 6, 6)})
    assert sum(op.kind == "gemm_batched" or op.attrs.get("conv", False) for op in prog.ops) == 1
    assert "bn_s" not in str(prog.summary())  # the first BatchNorm went into the conv weights


def _act_model(nodes, inits=(), shape=("N", 4, 5, 5)):
    return model(nodes, [vi("x", F, list(shape))], [vi("y", F, None)], list(inits))


@pytest.mark.parametrize(
    "nodes,inits",
    [
        ([helper.make_node("Relu", ["x"], ["y"])], []),
        ([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], [init("lo", np.float32(0)), init("hi", np.float32(6))]),
        (
            [helper.make_node("Clip", ["x", "lo", "hi"], ["y"])],
            [init("lo", np.float32(-0.5)), init("hi", np.float32(0.7))],
        ),
        ([helper.make_node("Clip", ["x", "lo"], ["y"])], [init("lo", np.float32(0.25))]),
        ([helper.make_node("Clip", ["x", "", "hi"], ["y"])], [init("hi", np.float32(0.25))]),
        ([helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.1)], []),
        (
            [helper.make_node("PRelu", ["x", "s"], ["y"])],
            [init("s", RNG.uniform(0, 0.5, (4, 1, 1)).astype(np.float32))],
        ),
        ([helper.make_node("PRelu", ["x", "s"], ["y"])], [init("s", np.array([0.2], np.float32))]),
        ([helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)], []),
        ([helper.make_node("HardSwish", ["x"], ["y"])], []),
        ([helper.make_node("Sigmoid", ["x"], ["y"])], []),
        ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], []),  # SiLU
        ([helper.make_node("Tanh", ["x"], ["y"])], []),
    ],
    ids=[
        "relu",
        "relu6",
        "clip",
        "clip-min",
        "clip-max",
        "leaky",
        "prelu-ch",
        "prelu-1",
        "hardsigmoid",
        "hardswish",
        "sigmoid",
        "silu",
        "tanh",
    ],
)
def test_activations(nodes, inits):
    x = _x(2, 4, 5, 5) * 3
    check(_act_model(nodes, inits), {"x": x})


def test_relu6_fuses_into_the_conv_epilogue():
    """Conv -> Clip(0, 6): one GEMM whose epilogue is the exact 3-segment relu6 table, no extra passes;
    against ONNX Runtime within float rounding, and matrixized == exact bit for bit after the conv."""
    import nmengine as nm
    from tests.onnx_graphs import ort_run

    w = RNG.standard_normal((8, 4, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
    ]
    d = _act_model(nodes, [init("w", w), init("lo", np.float32(0)), init("hi", np.float32(6))])
    x = _x(2, 4, 5, 5) * 3
    prog = nm.onnx.load(d, calibration={"x": x})
    assert [op.kind for op in prog.ops if op.kind not in ("reshape", "im2col")] == ["gemm_batched"]
    (table,) = prog.tables.values()
    assert table.name == "relu6" and table.n_segments == 3
    y = prog.run({"x": x})
    ref = ort_run(d, {"x": x})[0]
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    assert y.min() == 0.0 and y.max() == 6.0  # the data reaches both bounds
    np.testing.assert_array_equal(y, prog.run({"x": x}, mode="exact"))


def test_exact_pwl_activations_are_exact_in_matrixized_mode():
    """Clip, LeakyRelu, HardSwish are relu compositions: matrixized == exact up to float rounding."""
    nodes = [
        helper.make_node("Clip", ["x", "lo", "hi"], ["a"]),
        helper.make_node("LeakyRelu", ["a"], ["b"]),
        helper.make_node("HardSwish", ["b"], ["y"]),
    ]
    d = _act_model(nodes, [init("lo", np.float32(-1)), init("hi", np.float32(6))])
    import nmengine as nm

    prog = nm.onnx.load(d, exact=True)
    x = _x(2, 4, 5, 5) * 4
    assert not prog.tables
    np.testing.assert_allclose(prog.run({"x": x}), prog.run({"x": x}, mode="exact"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        ("MaxPool", {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [0, 1, 2, 1]}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ("AveragePool", {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
        ("AveragePool", {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        (
            "AveragePool",
            {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1, "count_include_pad": 1},
        ),
        ("GlobalAveragePool", {}),
        ("GlobalMaxPool", {}),
    ],
)
def test_pooling(op, attrs):
    x = _x(2, 3, 7, 7)
    d = model([helper.make_node(op, ["x"], ["y"], **attrs)], [vi("x", F, ["N", 3, 7, 7])], [vi("y", F, None)])
    check(d, {"x": x})


@pytest.mark.parametrize(
    "attrs,a_shape,b_shape,c_shape",
    [
        ({}, (3, 6), (6, 4), (4,)),
        ({"transB": 1, "alpha": 0.5, "beta": 2.0}, (3, 6), (4, 6), (1, 4)),
        ({"transA": 1}, (6, 3), (6, 4), None),
        ({"beta": 0.5}, (3, 6), (6, 4), (3, 4)),
    ],
)
def test_gemm(attrs, a_shape, b_shape, c_shape):
    inits = [init("B", _x(*b_shape))]
    ins = ["a", "B"]
    if c_shape is not None:
        inits.append(init("C", _x(*c_shape)))
        ins.append("C")
    d = model([helper.make_node("Gemm", ins, ["y"], **attrs)], [vi("a", F, list(a_shape))], [vi("y", F, None)], inits)
    check(d, {"a": _x(*a_shape)})


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flatten(axis):
    d = model([helper.make_node("Flatten", ["x"], ["y"], axis=axis)], [vi("x", F, [2, 3, 4, 5])], [vi("y", F, None)])
    check(d, {"x": _x(2, 3, 4, 5)})


def resnet_style(opset: int = 17, depthwise: bool = True, size: int = 16) -> bytes:
    """A small ResNet: stem conv+BN+ReLU+maxpool, two basic blocks (one with a strided 1x1 shortcut),
    a bottleneck-style depthwise block with ReLU6 (unless ``depthwise`` is False), global pooling,
    flatten, fully connected."""
    n, inits = [], []

    def conv(x, y, ci, co, k, s=1, p=None, g=1, bn=True, act="Relu"):
        p = k // 2 if p is None else p
        w = f"{y}_w"
        inits.append(init(w, _x(co, ci // g, k, k) * np.sqrt(2.0 / (ci // g * k * k))))
        n.append(helper.make_node("Conv", [x, w], [y + "_c"], strides=[s, s], pads=[p] * 4, group=g))
        out = y + "_c"
        if bn:
            inits.extend(_bn_inits(co, y))
            n.append(helper.make_node("BatchNormalization", [out] + [f"{y}_{t}" for t in "sbmv"], [y + "_bn"]))
            out = y + "_bn"
        if act == "Relu":
            n.append(helper.make_node("Relu", [out], [y]))
        elif act == "Relu6":
            inits.extend([init(y + "_lo", np.float32(0)), init(y + "_hi", np.float32(6))])
            n.append(helper.make_node("Clip", [out, y + "_lo", y + "_hi"], [y]))
        else:
            n.append(helper.make_node("Identity", [out], [y]))
        return y

    s = conv("x", "stem", 3, 8, 3)
    n.append(helper.make_node("MaxPool", [s], ["pool"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]))
    a = conv("pool", "b1a", 8, 8, 3)
    b = conv(a, "b1b", 8, 8, 3, act=None)
    n.append(helper.make_node("Add", [b, "pool"], ["b1s"]))
    n.append(helper.make_node("Relu", ["b1s"], ["b1"]))
    a = conv("b1", "b2a", 8, 16, 3, s=2)
    b = conv(a, "b2b", 16, 16, 3, act=None)
    sc = conv("b1", "b2sc", 8, 16, 1, s=2, act=None)
    n.append(helper.make_node("Add", [b, sc], ["b2s"]))
    n.append(helper.make_node("Relu", ["b2s"], ["b2"]))
    if depthwise:
        e = conv("b2", "b3e", 16, 32, 1, act="Relu6")
        dw = conv(e, "b3d", 32, 32, 3, g=32, act="Relu6")
        pr = conv(dw, "b3p", 32, 16, 1, act=None)
    else:  # a 1x1 bottleneck (stride 1: the GEMM reads the activation itself)
        e = conv("b2", "b3e", 16, 32, 1)
        pr = conv(e, "b3p", 32, 16, 1, act=None)
    n.append(helper.make_node("Add", [pr, "b2"], ["b3"]))
    n.append(helper.make_node("GlobalAveragePool", ["b3"], ["gap"]))
    n.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits.extend([init("fc_w", _x(10, 16) * 0.3), init("fc_b", _x(10))])
    n.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], transB=1))
    return model(n, [vi("x", F, ["batch", 3, size, size])], [vi("logits", F, ["batch", 10])], inits, opset=opset)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_resnet_style_cnn(opset):
    import nmengine as nm

    d = resnet_style(opset)
    calib = {"x": _x(4, 3, 16, 16)}
    prog = check(d, {"x": _x(3, 3, 16, 16)}, calib=calib)
    assert prog.inputs["x"].shape == (None, 3, 16, 16)  # dynamic batch stays dynamic
    assert prog.outputs == ["logits"]
    cov = prog.coverage({"x": (1, 3, 16, 16)})
    assert cov["gemm_pwl_flop_share"] == 1.0
    # batch 1 runs on the same program
    from tests.onnx_graphs import ort_run, rel_err

    x1 = _x(1, 3, 16, 16)
    assert rel_err(prog.run({"x": x1}, mode="exact"), ort_run(d, {"x": x1})[0]) <= 1e-4
    # fused: every conv's BatchNorm, bias and most activations live in the GEMMs
    assert sum(op.kind == "gemm_batched" for op in prog.ops) == 9
    assert nm.onnx.import_summary(prog).count("\n") >= 8


@pytest.mark.parametrize("size", [16, 23, 40])
def test_resnet_runs_channels_last(size):
    """Without grouped convolutions the program goes channels last (compile/channels_last.py): every
    conv one plain GEMM on NHWC data, one layout change (the input), pools in NHWC form; the outputs
    match ONNX Runtime at several batch sizes and are the same bits for any thread count and as the
    interpreter's (the plan's fused conv / max pool steps change no arithmetic)."""
    import nmengine as nm
    from tests.onnx_graphs import ort_run, rel_err

    d = resnet_style(17, depthwise=False, size=size)
    prog = check(d, {"x": _x(3, 3, size, size)}, calib={"x": _x(4, 3, size, size)})
    kinds = [op.kind for op in prog.ops]
    assert kinds.count("transpose") == 1 and "gemm_batched" in kinds  # the input; the global pool
    assert sum(op.attrs.get("conv", False) for op in prog.ops) == 8
    assert all(op.attrs.get("layout") == "nhwc" for op in prog.ops if op.kind in ("im2col", "pool_windows"))
    assert prog.coverage({"x": (1, 3, size, size)})["gemm_pwl_flop_share"] == 1.0
    for b in (1, 2, 5):
        x = _x(b, 3, size, size)
        ref = ort_run(d, {"x": x})[0]
        assert rel_err(prog.run({"x": x}, mode="exact"), ref) <= 1e-4
        outs = [nm.Session(prog, threads=t).run({"x": x}) for t in (1, 2, 3)]
        assert rel_err(outs[0], ref) <= 1e-4
        interp = prog.runtime.run({"x": x})
        outs.append(interp[prog.outputs[0]] if isinstance(interp, dict) else interp)
        for o in outs[1:]:
            np.testing.assert_array_equal(o, outs[0])
