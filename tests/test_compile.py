"""The compiler and runtime (issue #4): every lowering rule against an independent float64 forward."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from nmengine.compile import compile
from nmengine.program import Op, Program, ProgramError
from nmengine.spec import InputSpec, Layer, ModelSpec, SpecError

from . import reference
from .specs import cnn_spec, transformer_inputs, transformer_spec

RNG = np.random.default_rng(1234)


def _w(*shape, scale=0.5):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _single(op, x_shape, weights=None, params=None, extra_inputs=None, in_dtype="float32"):
    inputs = {"x": InputSpec(tuple(x_shape), in_dtype)}
    names = ["x"]
    for name, spec in (extra_inputs or {}).items():
        inputs[name] = spec
        names.append(name)
    return ModelSpec(inputs, [Layer(op, "L", names, "y", params or {}, weights or {})], ["y"], name=op)


def _rel(y, ref):
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


# Each case: (spec, inputs). Exact mode must match the float64 reference to 1e-5 (relative to the
# largest output); matrixized mode within the PWL tables' error (checked separately below).
def _cases():
    x4 = RNG.standard_normal((2, 3, 7, 6)).astype(np.float32)
    x3 = RNG.standard_normal((3, 5, 8)).astype(np.float32)
    yield "linear", _single("linear", (None, 5, 8), {"weight": _w(6, 8), "bias": _w(6)}), {"x": x3}
    yield "linear-nobias", _single("linear", (None, 8), {"weight": _w(4, 8)}), {"x": x3[0]}
    yield (
        "conv2d",
        _single("conv2d", (None, 3, 7, 6), {"weight": _w(4, 3, 3, 2), "bias": _w(4)}, {"stride": (2, 1), "padding": 1}),
        {"x": x4},
    )
    yield "conv2d-1x1", _single("conv2d", (None, 3, 7, 6), {"weight": _w(5, 3, 1, 1)}), {"x": x4}
    bn = {"weight": _w(3) + 1, "bias": _w(3), "running_mean": _w(3), "running_var": np.abs(_w(3)) + 0.5}
    yield "batchnorm2d", _single("batchnorm2d", (None, 3, 7, 6), bn), {"x": x4}
    for act in ("relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu"):
        yield act, _single(act, (None, 5, 8)), {"x": 3 * x3}
    yield "maxpool2d", _single("maxpool2d", (None, 3, 7, 6), params={"kernel": 3, "stride": 2, "padding": 1}), {"x": x4}
    yield "avgpool2d", _single("avgpool2d", (None, 3, 7, 6), params={"kernel": 2}), {"x": x4}
    yield "global_avgpool", _single("global_avgpool", (None, 3, 7, 6)), {"x": x4}
    yield "flatten", _single("flatten", (None, 3, 7, 6)), {"x": x4}
    yield "patchify", _single("patchify", (None, 3, 6, 6), params={"patch": 3}), {"x": x4[:, :, :6, :6]}
    yield "add", _single("add", (None, 5, 8), extra_inputs={"z": InputSpec((None, 5, 8))}), {"x": x3, "z": x3 * 2}
    yield "position_add", _single("position_add", (None, 5, 8), {"weight": _w(9, 8)}), {"x": x3}
    yield (
        "layernorm",
        _single("layernorm", (None, 5, 8), {"weight": _w(8) + 1, "bias": _w(8)}, {"eps": 1e-5}),
        {"x": 4 * x3 + 1},
    )
    yield "softmax", _single("softmax", (None, 5, 8)), {"x": 3 * x3}
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    yield (
        "mean_pool-mask",
        _single("mean_pool", (None, None, 8), extra_inputs={"m": InputSpec((None, None), "int64")}),
        {"x": x3, "m": mask},
    )
    yield "mean_pool", _single("mean_pool", (None, 5, 8)), {"x": x3}
    yield "l2_normalize", _single("l2_normalize", (None, 8)), {"x": x3[:, 0]}
    attn = {f"{p}_{k}": (_w(8, 8) if k == "weight" else _w(8)) for p in "qkvo" for k in ("weight", "bias")}
    yield "mhsa", _single("mhsa", (None, None, 8), attn, {"heads": 2}), {"x": x3}
    yield (
        "mhsa-mask",
        _single("mhsa", (None, None, 8), attn, {"heads": 4}, {"m": InputSpec((None, None), "int64")}),
        {"x": x3, "m": mask},
    )
    emb = {"word": _w(20, 8), "position": _w(10, 8), "token_type": _w(2, 8)}
    ids = RNG.integers(0, 20, (3, 5))
    yield (
        "embedding",
        _single("embedding", (None, None), emb, in_dtype="int64", extra_inputs={"t": InputSpec((None, None), "int64")}),
        {"x": ids, "t": ids % 2},
    )
    yield "embedding-notype", _single("embedding", (None, None), emb, in_dtype="int64"), {"x": ids}


CASES = list(_cases())


@pytest.mark.parametrize("name,spec,inputs", CASES, ids=[c[0] for c in CASES])
def test_lowering_rule_exact(name, spec, inputs):
    prog = compile(spec, calibration=inputs)
    ref = reference.forward(spec, inputs)["y"]
    y = prog.run(inputs, mode="exact")
    assert y.shape == ref.shape
    assert _rel(y, ref) <= 1e-5, name


@pytest.mark.parametrize("name,spec,inputs", CASES, ids=[c[0] for c in CASES])
def test_lowering_rule_matrixized(name, spec, inputs):
    """Within the PWL bound: 64 optimized segments keep every single layer within 1% of the exact one."""
    prog = compile(spec, calibration=inputs, segments=64)
    ref = reference.forward(spec, inputs)["y"]
    y = prog.run(inputs, mode="matrixized")
    assert np.all(np.isfinite(y))
    bound = 1e-5 if not prog.tables else 1e-2
    assert _rel(y, ref) <= bound, name


def test_single_activation_error_is_the_table_error():
    x = np.linspace(-6, 6, 4001, dtype=np.float32).reshape(1, -1)
    spec = _single("gelu", (None, 4001))
    prog = compile(spec, segments=32)
    (table,) = prog.tables.values()
    y = prog.run({"x": x})
    ref = reference.forward(spec, {"x": x})["y"]
    assert np.max(np.abs(y - ref)) <= table.error("gelu", -6, 6)["max_abs"] + 1e-6
    np.testing.assert_array_equal(y, table(x))


def test_cnn_exact_and_matrixized_agree():
    spec = cnn_spec(seed=3)
    calib = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((6, 1, 8, 8)).astype(np.float32)
    prog = compile(spec, calibration=calib)
    ref = reference.forward(spec, {"x": x})["logits"]
    assert _rel(prog.run(x, mode="exact"), ref) <= 1e-5
    # ReLU and max pooling are exact PWL: the CNN's matrixized result is the exact one up to rounding.
    assert _rel(prog.run(x), ref) <= 1e-5
    assert prog.coverage({"x": x.shape})["gemm_pwl_flop_share"] == 1.0


@pytest.mark.parametrize("pre_ln", [False, True])
def test_transformer_exact_and_matrixized_agree(pre_ln):
    spec = transformer_spec(seed=5, pre_ln=pre_ln)
    calib = [transformer_inputs(seed=s) for s in range(10, 14)]
    inp = transformer_inputs(seed=2)
    prog = compile(spec, calibration=calib, segments=64)
    ref = reference.forward(spec, inp)["embedding"]
    exact = prog.run(inp, mode="exact")
    assert _rel(exact, ref) <= 1e-5
    mat = prog.run(inp)
    cos = np.sum(mat * ref, axis=1) / np.linalg.norm(mat, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() >= 0.999
    cov = prog.coverage({k: v.shape for k, v in inp.items()})
    assert cov["arithmetic_ops_as_gemm_pwl"] == 1.0 and cov["gemm_pwl_flop_share"] == 1.0
    assert cov["pwl_epilogues"] > 0


def test_token_packing_changes_nothing_but_the_work():
    spec = transformer_spec(seed=6)
    inp = transformer_inputs(seed=3, batch=5, t=10)
    packed = compile(spec, segments=32)
    padded = compile(spec, segments=32, pack_tokens=False)
    assert any(op.kind == "pack" for op in packed.ops) and not any(op.kind == "pack" for op in padded.ops)
    for mode in ("exact", "matrixized"):
        np.testing.assert_allclose(packed.run(inp, mode=mode), padded.run(inp, mode=mode), atol=2e-6)


def test_bias_correction_reduces_mean_error_and_keeps_exact_mode():
    spec = transformer_spec(seed=7)
    calib = [transformer_inputs(seed=s, batch=8) for s in range(20, 24)]
    test = transformer_inputs(seed=30, batch=8)
    ref = reference.forward(spec, test)["embedding"]
    on = compile(spec, calibration=calib, segments=8)
    off = compile(spec, calibration=calib, segments=8, bias_correction=False)
    assert on.meta["bias_corrections"]
    np.testing.assert_array_equal(on.run(test, mode="exact"), off.run(test, mode="exact"))
    err_on = np.abs(on.run(test) - ref).mean()
    err_off = np.abs(off.run(test) - ref).mean()
    assert err_on < err_off


def test_concurrent_runs_match_serial():
    spec = transformer_spec(seed=8)
    prog = compile(spec, segments=32)
    inputs = [transformer_inputs(seed=s, batch=3 + s % 3, t=6 + s) for s in range(8)]
    serial = [prog.run(i) for i in inputs]
    results: list = [None] * 8
    errors: list = []

    def work(k):
        try:
            for _ in range(5):
                results[k] = prog.run(inputs[k])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for a, b in zip(results, serial):
        np.testing.assert_array_equal(a, b)


def test_profile_lists_every_op():
    spec = cnn_spec()
    prog = compile(spec)
    x = np.zeros((2, 1, 8, 8), np.float32)
    prof = prog.profile(x, repeat=2)
    assert [p["index"] for p in prof] == list(range(len(prog.ops)))
    assert all(p["seconds"] >= 0 for p in prof)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_inputs_at_run_time():
    prog = compile(cnn_spec())
    with pytest.raises(ProgramError, match=r"shape"):
        prog.run(np.zeros((2, 1, 9, 8), np.float32))
    with pytest.raises(TypeError, match="real numbers"):
        prog.run(np.array([["a"]]))
    with pytest.raises(ProgramError, match="missing"):
        prog.run({"y": np.zeros((1, 1, 8, 8))})
    with pytest.raises(ValueError, match="mode"):
        prog.run(np.zeros((1, 1, 8, 8)), mode="fast")
    tprog = compile(transformer_spec())
    bad = transformer_inputs()
    bad["ids"] = bad["ids"] + 1000
    with pytest.raises(ValueError, match="ids must be in"):
        tprog.run(bad)
    with pytest.raises(TypeError, match="integers"):
        tprog.run({**transformer_inputs(), "ids": np.zeros((4, 12), np.float32)})


def test_bad_specs_at_compile_time():
    with pytest.raises(SpecError, match="unknown op"):
        ModelSpec({"x": InputSpec((None, 4))}, [Layer("frobnicate", "L", ["x"], "y")], ["y"])
    with pytest.raises(SpecError, match="missing weight"):
        ModelSpec({"x": InputSpec((None, 4))}, [Layer("linear", "L", ["x"], "y")], ["y"])
    with pytest.raises(SpecError, match="not defined"):
        ModelSpec({"x": InputSpec((None, 4))}, [Layer("relu", "L", ["z"], "y")], ["y"])
    spec = ModelSpec(
        {"x": InputSpec((None, 3, 8, 8))}, [Layer("conv2d", "c", ["x"], "y", {}, {"weight": _w(4, 2, 3, 3)})], ["y"]
    )
    with pytest.raises(SpecError, match="channels"):
        compile(spec)
    spec = ModelSpec(
        {"x": InputSpec((None, 5))}, [Layer("layernorm", "n", ["x"], "y", {}, {"weight": _w(4), "bias": _w(4)})], ["y"]
    )
    with pytest.raises(SpecError, match="normalises 4"):
        compile(spec)
    with pytest.raises(TypeError, match="ModelSpec"):
        compile("not a spec")
    with pytest.raises(ProgramError, match="shape"):  # checked even though a ReLU CNN has no table to fit
        compile(cnn_spec(), calibration=np.ones((2, 1, 9, 9), np.float32))


def test_program_validation():
    with pytest.raises(ProgramError, match="not an input"):
        Program({"x": InputSpec((None, 2))}, ["y"], [Op("gemm", "y", {"a": "x", "b": "w"})], {}, {})
    with pytest.raises(ProgramError, match="unknown op kind"):
        Program({"x": InputSpec((None, 2))}, ["y"], [Op("conv", "y", {"x": "x"})], {}, {})
    with pytest.raises(ProgramError, match="table"):
        Program(
            {"x": InputSpec((None, 2))},
            ["y"],
            [Op("scale", "y", {"x": "x"}, {"epilogue": {"act": "pwl", "fn": "exp", "table": "t"}})],
            {},
            {},
        )
