"""The runtime's C fast paths: fused ``scale``, the ``pairwise_max`` tree, pre-packed constant B,
and the Runtime's execution plan.  Each is checked bit for bit against the numpy / unpacked path it
replaces (same float operations in the same order), against float64 references, on both kernels,
with 1 and 2 threads, with NaN/Inf, and for bad inputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nmengine as nm
from nmengine import kernels, movement
from nmengine.compile import compile, fuse_program
from nmengine.program import Op, Program, expand
from nmengine.pwl import PWLTable
from nmengine.session import Session

from .helpers import avail_kernels, rand
from .specs import cnn_spec, transformer_inputs, transformer_spec


def _table(n=32, lo=-6.0, hi=6.0):
    x = np.linspace(lo, hi, n + 1)
    y = x * 0.5 * (1 + np.tanh(0.8 * x))
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1])


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert (
        a.tobytes() == b.tobytes() or np.array_equal(a, b, equal_nan=True) and np.array_equal(np.isnan(a), np.isnan(b))
    ), np.max(np.abs(a.astype(np.float64) - b))


# ---------------------------------------------------------------------------------------------
# pairwise_max
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape", [(1, 1), (5, 7), (3, 2), (100, 128), (3, 4, 129), (2, 3, 37, 37), (700, 384), (64, 1), (1, 1000), (4, 3)]
)
def test_pairwise_max_equals_numpy_reference(kernel, threads, shape):
    rng = np.random.default_rng(sum(shape))
    x = rand(rng, shape, 3.0)
    ref = movement.pairwise_max(x, exact=False)
    outs = []
    for nt in (1, 2):
        kernels.set_num_threads(nt)
        y = kernels.pairwise_max(x)
        _same(y, ref)
        outs.append(y)
    _same(outs[0], outs[1])
    # steps m + relu(v - m) give the max up to the rounding of (v - m) + m
    np.testing.assert_allclose(ref[..., 0], x.astype(np.float64).max(-1), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 15, 16, 17, 31, 33, 64, 100, 255])
def test_pairwise_max_ignores_trailing_masked_columns(kernel, threads, n):
    """Masked columns (a -1e4 bias, as attention's key mask adds) appended to a row leave its max
    bit-identical: the row max does not depend on how far the row is padded."""
    rng = np.random.default_rng(n)
    x = rand(rng, (9, n), 4.0)
    alone = kernels.pairwise_max(x)
    np.testing.assert_allclose(alone[:, 0], x.astype(np.float64).max(1), rtol=1e-6, atol=1e-6)
    for extra in (1, 3, 15, 16, 17, 40, 200):
        pad = np.float32(-1e4) + rand(rng, (9, extra), 4.0)
        padded = np.concatenate([x, pad], axis=1)
        for nt in (1, 2):
            kernels.set_num_threads(nt)
            _same(kernels.pairwise_max(padded), alone)
        _same(movement.pairwise_max(padded, exact=False), alone)


def test_pairwise_max_exact_on_small_integers(kernel):
    x = np.random.default_rng(0).integers(-1000, 1000, (50, 77)).astype(np.float32)
    np.testing.assert_array_equal(kernels.pairwise_max(x)[:, 0], x.max(1))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_pairwise_max_nan_inf(kernel):
    x = np.random.default_rng(1).standard_normal((6, 9)).astype(np.float32)
    x[0, 3] = np.nan
    x[1, 8] = np.nan  # the odd tail
    x[2, 0] = np.inf
    x[3, 4] = -np.inf
    x[4, :] = -np.inf
    x[5, 2], x[5, 6] = np.inf, -np.inf
    y = kernels.pairwise_max(x)
    _same(y, movement.pairwise_max(x, exact=False))
    assert np.isnan(y[0, 0]) and np.isnan(y[1, 0]) and y[2, 0] == np.inf
    # -inf meets b + relu(a - b) as inf - inf = NaN, in numpy and C alike (the op's documented form)
    assert np.isnan(y[4, 0])


def test_pairwise_max_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        kernels.pairwise_max(np.zeros((3, 0), np.float32))
    with pytest.raises(ValueError, match="empty"):
        kernels.pairwise_max(np.float32(1.0))
    with pytest.raises(ValueError, match="shape"):
        kernels.pairwise_max(np.zeros((3, 4), np.float32), out=np.zeros((3,), np.float32))
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.pairwise_max(x, out=x[:, :1])
    with pytest.raises(ValueError, match="overlaps"):
        kernels.pairwise_max(x, out=x.reshape(-1)[:3].reshape(3, 1))
    # other dtypes are cast, strided views read
    xi = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(kernels.pairwise_max(xi)[:, 0], [3, 7, 11])
    np.testing.assert_array_equal(kernels.pairwise_max(xi.astype(np.float32)[:, ::-1])[:, 0], [3, 7, 11])


# ---------------------------------------------------------------------------------------------
# scale
# ---------------------------------------------------------------------------------------------
def _scale_numpy(
    x,
    alpha=1.0,
    mul=None,
    row_scale=None,
    col_scale=None,
    beta=0.0,
    bias=None,
    bias_row=None,
    res=None,
    res_beta=1.0,
    act=None,
):
    """The runtime's numpy path (one numpy pass per term)."""
    y = np.multiply(x, np.float32(alpha)) if alpha != 1.0 else x.copy()
    for v in (mul, row_scale, col_scale):
        if v is not None:
            y = np.multiply(y, v, out=y)
    if beta != 0.0:
        y = np.add(y, np.float32(beta), out=y)
    for v in (bias, bias_row):
        if v is not None:
            y = np.add(y, v, out=y)
    if res is not None:
        if res_beta == 1.0:
            np.add(y, res, out=y)
        elif res_beta == -1.0:
            np.subtract(y, res, out=y)
        else:
            np.add(y, np.float32(res_beta) * res, out=y)
    if act == "relu":
        np.maximum(y, np.float32(0), out=y)
    elif isinstance(act, PWLTable):
        y = act(y)
    return y


def _operand(rng, kind, shape):
    n = shape[-1]
    return {
        "full": lambda: rand(rng, shape),
        "row": lambda: rand(rng, shape[:-1] + (1,)) + 1.5,
        "col": lambda: rand(rng, (n,)),
        "col1": lambda: rand(rng, (1,) * (len(shape) - 1) + (n,)),
        "scalar": lambda: rand(rng, (1,)),
        "scalar0": lambda: np.array(0.75, np.float32),
    }[kind]()


CASES = [
    # (roles -> operand kind, alpha, beta, res_beta)
    ({"res": "row"}, 1.0, 0.0, -1.0),  # softmax x - max
    ({"row_scale": "row"}, 1.0, 0.0, 1.0),  # normalise rows
    ({"mul": "full"}, 1.0, 0.0, 1.0),  # square
    ({"row_scale": "row", "col_scale": "col", "bias": "col"}, 1.0, 0.0, 1.0),  # LayerNorm affine
    ({"res": "full"}, 1.0, 0.0, 1.0),  # residual add
    ({}, 10000.0, -10000.0, 1.0),  # mask bias
    ({"col_scale": "col"}, 0.5, -0.25, 1.0),
    (
        {"mul": "full", "row_scale": "row", "col_scale": "col1", "bias": "scalar", "bias_row": "row", "res": "full"},
        1.7,
        0.3,
        0.37,
    ),
    ({"mul": "scalar0", "bias_row": "row", "res": "row"}, -2.0, 0.0, 2.5),
    ({"res": "col"}, 1.0, 1.0, -1.0),
    ({"res": "scalar"}, 1.0, 0.0, 3.0),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("act", [None, "relu", "pwl"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (4, 3, 129), (300, 384), (2, 12, 37, 37)])
def test_scale_equals_numpy_path(kernel, threads, case, act, shape):
    roles, alpha, beta, res_beta = CASES[case]
    rng = np.random.default_rng(case * 31 + len(shape))
    x = rand(rng, shape, 2.0)
    ops = {r: _operand(rng, k, shape) for r, k in roles.items()}
    table = _table() if act == "pwl" else None
    ep = table if act == "pwl" else act
    ref = _scale_numpy(x, alpha=alpha, beta=beta, res_beta=res_beta, act=ep, **ops)
    outs = []
    for nt in (1, 2):
        kernels.set_num_threads(nt)
        y = kernels.scale(x, alpha=alpha, beta=beta, res_beta=res_beta, epilogue=ep, **ops)
        _same(y, ref)
        outs.append(y)
    _same(outs[0], outs[1])
    if act is None:  # float64 reference: within a few float32 roundings
        r64 = x.astype(np.float64) * alpha
        for k in ("mul", "row_scale", "col_scale"):
            if k in ops:
                r64 = r64 * ops[k].astype(np.float64)
        r64 = r64 + beta
        for k in ("bias", "bias_row"):
            if k in ops:
                r64 = r64 + ops[k].astype(np.float64)
        if "res" in ops:
            r64 = r64 + res_beta * ops["res"].astype(np.float64)
        np.testing.assert_allclose(y, r64, rtol=1e-5, atol=1e-4 * max(1.0, float(np.abs(r64).max())))


def test_scale_in_place_and_out(kernel):
    rng = np.random.default_rng(3)
    x = rand(rng, (50, 64))
    r = rand(rng, (50, 1))
    ref = _scale_numpy(x, row_scale=r, bias=np.float32([0.5]), act="relu")
    y = x.copy()
    assert kernels.scale(y, row_scale=r, bias=np.float32([0.5]), epilogue="relu", out=y) is y
    _same(y, ref)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_scale_nan_inf(kernel):
    rng = np.random.default_rng(4)
    x = rand(rng, (8, 40))
    x[0, 1], x[1, 2], x[2, 3] = np.nan, np.inf, -np.inf
    m = rand(rng, (8, 1))
    m[3, 0] = np.nan
    m[4, 0] = np.inf
    c = rand(rng, (40,))
    c[5] = 0.0
    for act in (None, "relu", _table()):
        ref = _scale_numpy(x, res=m, res_beta=-1.0, col_scale=c, act=act)
        y = kernels.scale(x, res=m, res_beta=-1.0, col_scale=c, epilogue=act)
        _same(y, ref)
        assert np.isnan(y[0, 1]) and np.all(np.isnan(y[3]))


def test_scale_unsupported_and_bad_inputs():
    x = np.ones((2, 3, 4, 4), np.float32)
    bn = np.ones((3, 1, 1), np.float32)  # batchnorm-style [C, 1, 1]: the numpy path's job
    assert not kernels.scale_supported(x, col_scale=bn)
    with pytest.raises(ValueError, match="scale"):
        kernels.scale(x, col_scale=bn)
    assert not kernels.scale_supported(x.astype(np.float64))
    assert not kernels.scale_supported(x, mul=np.ones((2, 3, 4, 4), np.float64))
    assert not kernels.scale_supported(np.ones((4,), np.float32), mul=np.ones((2, 4), np.float32))  # x broadcast
    assert not kernels.scale_supported(x, res=np.ones((1, 1, 1, 1, 1), np.float32))  # adds a dim
    assert kernels.scale_supported(x, res=np.ones((2, 3, 4, 1), np.float32), bias=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="out"):
        kernels.scale(x, out=np.empty((2, 3, 4), np.float32))
    y = np.empty_like(x)
    with pytest.raises(ValueError, match="overlaps"):
        kernels.scale(x, mul=y, out=y)
    with pytest.raises(TypeError):
        kernels.scale(x, epilogue=3)
    assert kernels.scale(np.ones((0, 5), np.float32), bias=np.ones(5, np.float32)).shape == (0, 5)


# ---------------------------------------------------------------------------------------------
# pre-packed B
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "mnk",
    [
        (1, 1, 1),
        (25, 1536, 384),
        (300, 384, 1536),
        (7, 3, 5),
        (64, 4100, 100),
        (50, 20, 800),
        (13, 1, 384),
        (3, 5, 0),
        (97, 4097, 513),
    ],
)
@pytest.mark.parametrize("ep", [None, "relu", "pwl"])
def test_packed_gemm_bit_identical(kernel, threads, mnk, ep):
    M, N, K = mnk
    rng = np.random.default_rng(M + N + K)
    a, b = rand(rng, (M, K), 0.3), rand(rng, (K, N), 0.3)
    bias, res = rand(rng, (N,)), rand(rng, (M, N))
    epi = _table() if ep == "pwl" else ep
    packed = kernels.pack_b(b)
    assert packed.shape == (K, N) and packed.kernel_name == kernel
    assert packed.data.size == 0 or packed.data.__array_interface__["data"][0] % 64 == 0
    for nt in (1, 2):
        kernels.set_num_threads(nt)
        ref = nm.gemm(a, b, bias=bias, residual=res, epilogue=epi)
        _same(nm.gemm(a, packed, bias=bias, residual=res, epilogue=epi), ref)
        _same(nm.gemm(a[::-1], packed, bias=bias, epilogue=epi), nm.gemm(a[::-1], b, bias=bias, epilogue=epi))


def test_packed_other_kernel_falls_back(threads):
    rng = np.random.default_rng(5)
    a, b = rand(rng, (40, 300)), rand(rng, (300, 70))
    packed = kernels.pack_b(b, "scalar")
    for k in avail_kernels():
        with kernels.use_kernel(k):
            _same(nm.gemm(a, packed), nm.gemm(a, b))


def test_packed_is_a_snapshot_and_read_only():
    rng = np.random.default_rng(6)
    a, b = rand(rng, (9, 8)), rand(rng, (8, 5))
    packed = kernels.pack_b(b)
    ref = nm.gemm(a, b)
    with kernels.use_kernel("scalar"):
        ref_scalar = nm.gemm(a, b)
    b[:] = 0  # the default copy=True keeps a private source
    _same(nm.gemm(a, packed), ref)
    with kernels.use_kernel("scalar"):
        _same(nm.gemm(a, packed), ref_scalar)
    assert not packed.data.flags.writeable and not packed.source.flags.writeable
    assert "PackedMatrix" in repr(packed) and packed.nbytes > 0


def test_packed_bad_inputs():
    b = np.ones((8, 5), np.float32)
    packed = kernels.pack_b(b)
    with pytest.raises(ValueError, match="inner dimensions"):
        nm.gemm(np.ones((3, 7), np.float32), packed)
    with pytest.raises(ValueError, match="2-D"):
        kernels.pack_b(np.ones(8, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        nm.gemm(np.ones((2, 3, 8), np.float32), packed)
    with pytest.raises(ValueError, match="kernel"):
        kernels.pack_b(b, "sse9")
    with pytest.raises(ValueError, match="bias"):
        nm.gemm(np.ones((3, 8), np.float32), packed, bias=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="shape"):
        nm.gemm(np.ones((3, 8), np.float32), packed, out=np.empty((3, 4), np.float32))


# ---------------------------------------------------------------------------------------------
# the Session's plans vs the interpreter's generic path
# ---------------------------------------------------------------------------------------------
def _generic(prog, inputs, mode="matrixized"):
    # the interpreter: one generic call per op of the expanded program
    return prog.runtime.run(inputs, mode, record=lambda op, y: None)


@pytest.fixture(scope="module")
def bert_like():
    spec = transformer_spec(seed=5, d=48, heads=4, ff=96)
    prog = compile(spec, calibration=[transformer_inputs(seed=s) for s in range(10, 13)], segments=32)
    return prog


def test_plan_equals_generic_path(bert_like, kernel, threads):
    inp = transformer_inputs(seed=2, batch=5, t=14)
    for nt in (1, 2):
        kernels.set_num_threads(nt)
        fast = bert_like.run(inp)
        _same(fast, _generic(bert_like, inp))
    kernels.set_num_threads(1)
    _same(bert_like.run(inp), fast)


def test_plan_equals_numpy_reference_path(bert_like, kernel, monkeypatch):
    """The whole program with the numpy scale / max-tree path (what the runtime did before)."""
    inp = transformer_inputs(seed=3, batch=4, t=12)
    fast = bert_like.run(inp)
    monkeypatch.setattr(kernels, "scale_supported", lambda *a, **k: False)
    monkeypatch.setattr(kernels, "pairwise_max", lambda x, out=None: movement.pairwise_max(x, exact=False))
    _same(_generic(bert_like, inp), fast)


def test_plan_cnn_and_profile(kernel):
    spec = cnn_spec(seed=3)
    calib = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((6, 1, 8, 8)).astype(np.float32)
    prog = compile(spec, calibration=calib)
    _same(prog.run(x), _generic(prog, x))
    prof = prog.profile(x)
    assert len(prof) == len(prog.ops) and all(r["seconds"] >= 0 for r in prof)


def test_plan_packs_constants_once_per_kernel(bert_like):
    sess = Session(bert_like)
    inp = transformer_inputs(seed=4)
    sess.run(inp)
    code = kernels.kernel_code()
    packed = sess._packed[code]
    gemm_b = {op.args["b"] for op in bert_like.ops if op.kind == "gemm"}
    assert packed and set(packed) <= gemm_b
    sess.run(inp)
    assert sess._packed[code] is packed
    with kernels.use_kernel("scalar"):
        sess.run(inp)
    assert sess._packed[kernels.compiled_core().KERNEL_SCALAR]


def test_plan_concurrent_calls(bert_like):
    inputs = [transformer_inputs(seed=s, batch=3, t=10) for s in range(4)]
    refs = [_generic(bert_like, i) for i in inputs]
    rt = Session(bert_like)  # fresh: packs and plans lazily while threads race
    errors = []

    def work(k):
        try:
            for _ in range(3):
                _same(rt.run(inputs[k]), refs[k])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors


def test_plan_scale_fallbacks():
    """int64 inputs and [C, 1, 1] factors take the numpy path inside the plan."""
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    g = np.array([1.0, 2.0, 3.0], np.float32).reshape(3, 1, 1)
    from nmengine.spec import InputSpec

    ops = [
        Op("scale", "y", {"x": "x", "col_scale": "g"}, {"beta": 1.0}),
        Op("scale", "m", {"x": "mask"}, {"alpha": 2.0, "beta": -1.0}),
        Op("pairwise_max", "z", {"x": "y"}),
    ]
    prog = Program(
        {"x": InputSpec((None, 3, 2, 2)), "mask": InputSpec((None, 2), "int64")}, ["y", "m", "z"], ops, {"g": g}, {}
    )
    out = prog.run({"x": x, "mask": np.array([[1, 0], [0, 1]])})
    np.testing.assert_array_equal(out["y"], x * g + 1)
    np.testing.assert_array_equal(out["m"], [[1, -1], [-1, 1]])
    _same(out["z"], movement.pairwise_max(x * g + 1, exact=False))


def test_softmax_chain_is_fused_and_bit_identical(bert_like, kernel, threads):
    fused = [op for op in bert_like.ops if op.kind == "softmax_rows"]
    assert fused and all(
        e.kind == k for op in fused for e, k in zip(expand(op), ("pairwise_max", "scale", "gemm", "scale"))
    )
    for t in (14, 2, 3):
        inp = transformer_inputs(seed=t, batch=3, t=t)
        outs = []
        for nt in (1, 2):
            kernels.set_num_threads(nt)
            outs.append(bert_like.run(inp))
            _same(outs[-1], _generic(bert_like, inp))
        _same(outs[0], outs[1])
    # the profile times the expansion op by op
    prof = bert_like.profile(transformer_inputs(seed=9))
    assert len(prof) == len(bert_like.expanded().ops) > len(bert_like.ops)


def test_softmax_chain_not_fused_without_ones():
    """A row-sum GEMM whose B is not a column of ones keeps the separate ops."""
    from nmengine.spec import InputSpec

    tab = _table(8, -20.0, 0.0)
    rec = _table(8, 0.5, 64.0)
    ops = [
        Op("pairwise_max", "m", {"x": "s"}),
        Op(
            "scale",
            "e",
            {"x": "s", "res": "m"},
            {"res_beta": -1.0, "epilogue": {"act": "pwl", "fn": "exp", "table": "exp"}},
        ),
        Op("gemm", "r", {"a": "e", "b": "w"}, {"epilogue": {"act": "pwl", "fn": "reciprocal", "table": "rec"}}),
        Op("scale", "p", {"x": "e", "row_scale": "r"}),
    ]
    for w, want in ((np.full((6, 1), 2.0, np.float32), 0), (np.ones((6, 1), np.float32), 1)):
        prog = fuse_program(Program({"s": InputSpec((None, 6))}, ["p"], ops, {"w": w}, {"exp": tab, "rec": rec}))
        assert sum(op.kind == "softmax_rows" for op in prog.ops) == want
        x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
        _same(prog.run(x), _generic(prog, x))
