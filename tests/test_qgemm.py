"""int8 GEMM core (kernels_int8.qgemm_int32 / kernels_int8.qgemm) against independent numpy references.

* int32 products: bit-identical to numpy's int64 matmul for every int8 kernel the CPU runs (scalar,
  avx2 = vpmaddwd on widened operands, avxvnni / avx512vnni = vpdpbusd with the u8 offset
  correction), random shapes, strided / transposed / negative-stride operands, the edge values
  -128 and 127 (where an int16 saturating path would go wrong).
* float path: bit-identical to a numpy float32 transcription of the documented arithmetic
  (csrc/nm_qgemm.h: per-row/K-group quantization with round-half-even, exact int sums, then
  f = f + acc * (sa * sw) per group), so all kernels agree bit for bit; the fused epilogue equals
  the same operations applied afterwards (PWLTable.__call__ is the table's reference).
"""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine import kernels, kernels_int8
from nmengine.pwl import PWLTable

QKERNELS = ["scalar", "avx2", "avxvnni", "avx512vnni", "amx"]


def _avail() -> list[str]:
    return kernels_int8.qkernel_info()["available"]


@pytest.fixture(params=QKERNELS)
def qkernel(request):
    if request.param not in _avail():
        pytest.skip(f"int8 kernel {request.param} not available on this CPU")
    return request.param


def _layout(arr: np.ndarray, how: str) -> np.ndarray:
    """The same matrix with another memory layout (values unchanged)."""
    if how == "c":
        return arr
    if how == "f":
        return np.asfortranarray(arr)
    if how == "slice":  # every other column of a wider buffer
        big = np.zeros((arr.shape[0], 2 * arr.shape[1] + 1), arr.dtype)
        big[:, 1::2] = arr
        return big[:, 1::2]
    if how == "neg":  # reversed rows, read through a negative stride
        return arr[::-1].copy()[::-1]
    raise AssertionError(how)


@pytest.mark.parametrize(
    "shape", [(1, 1, 1), (1, 5, 3), (7, 13, 33), (6, 64, 32), (50, 130, 70), (13, 3, 97), (64, 384, 100), (3, 1537, 17)]
)
@pytest.mark.parametrize("la", ["c", "f", "slice", "neg"])
@pytest.mark.parametrize("lb", ["c", "f", "neg"])
def test_int32_products_exact(qkernel, shape, la, lb):
    M, K, N = shape
    rng = np.random.default_rng(M * 1000 + K * 7 + N)
    a = rng.integers(-128, 128, (M, K), dtype=np.int8)
    b = rng.integers(-128, 128, (K, N), dtype=np.int8)
    a[0, :] = -128  # edge values: products of 2^14, pair sums beyond int16
    b[:, 0] = -128
    if N > 1:
        b[:, 1] = 127
    got = kernels_int8.qgemm_int32(_layout(a, la), _layout(b, lb), kernel=qkernel)
    assert got.dtype == np.int32
    assert np.array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("va,vb", [(-128, -128), (127, 127), (-128, 127), (127, -128)])
def test_int32_extremes_long_k(qkernel, va, vb):
    M, K, N = 7, 4099, 35
    a = np.full((M, K), va, np.int8)
    b = np.full((K, N), vb, np.int8)
    got = kernels_int8.qgemm_int32(a, b, kernel=qkernel)
    assert np.array_equal(got.astype(np.int64), np.full((M, N), va * vb * K, np.int64))


def test_int32_threads_and_out(qkernel):
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (301, 200), dtype=np.int8)
    b = rng.integers(-128, 128, (200, 257), dtype=np.int8)
    ref = a.astype(np.int64) @ b.astype(np.int64)
    old = nm.get_num_threads()
    try:
        for t in (1, 2, 3):
            nm.set_num_threads(t)
            big = np.zeros((257, 301), np.int32)
            out = kernels_int8.qgemm_int32(a, b, kernel=qkernel, out=big.T)
            assert np.array_equal(out, ref) and np.array_equal(big.T, ref)
    finally:
        nm.set_num_threads(old)


def test_int32_empty(qkernel):
    assert kernels_int8.qgemm_int32(np.zeros((0, 5), np.int8), np.ones((5, 3), np.int8), kernel=qkernel).shape == (0, 3)
    assert kernels_int8.qgemm_int32(np.zeros((4, 5), np.int8), np.ones((5, 0), np.int8), kernel=qkernel).shape == (4, 0)
    z = kernels_int8.qgemm_int32(np.zeros((4, 0), np.int8), np.zeros((0, 3), np.int8), kernel=qkernel)
    assert np.array_equal(z, np.zeros((4, 3), np.int32))


# ---- float path -------------------------------------------------------------------------------


def _quantize_weights(w: np.ndarray, group):
    K = w.shape[0]
    G = group or K
    ng = -(-K // G)
    s = np.stack([np.abs(w[g * G : (g + 1) * G]).max(0) / 127 for g in range(ng)]).astype(np.float32)
    s[s == 0] = 1.0
    rows = np.repeat(s, G, axis=0)[:K]
    q = np.clip(np.rint(w / rows), -127, 127).astype(np.int8)
    return q, s


def reference(a, q, ws, group, inv_smooth=None, static=None):
    """numpy float32 transcription of csrc/nm_qgemm.h's arithmetic (int sums in int64)."""
    M, K = a.shape
    G = group or K
    ng = -(-K // G)
    x_all = a.astype(np.float32)
    if inv_smooth is not None:
        x_all = (x_all * inv_smooth[None, :]).astype(np.float32)
    f = np.zeros((M, q.shape[1]), np.float32)
    for g in range(ng):
        sl = slice(g * G, min(K, (g + 1) * G))
        x = x_all[:, sl]
        amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(M, np.float32)
        if static is None:
            s = (amax / np.float32(127)).astype(np.float32)
            with np.errstate(divide="ignore"):
                inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
        else:
            s = np.full(M, static[g], np.float32)
            inv = np.full(M, np.float32(1) / np.float32(static[g]), np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        s = np.where(bad, np.float32(np.nan), s).astype(np.float32)
        v = np.clip((np.where(bad[:, None], 0, x) * inv[:, None]).astype(np.float32), -127, 127)
        aq = np.rint(v).astype(np.int64)
        acc = (aq @ q[sl].astype(np.int64)).astype(np.float32)
        sc = (s[:, None] * ws[g][None, :]).astype(np.float32)
        f = (f + (acc * sc).astype(np.float32)).astype(np.float32)
    return f


@pytest.mark.parametrize(
    "shape,group",
    [
        ((3, 13, 33), None),
        ((50, 130, 70), 32),
        ((64, 384, 100), 32),
        ((17, 384, 64), None),
        ((9, 100, 40), 8),
        ((1, 1536, 48), 64),
        ((33, 96, 31), 12),
    ],
)
def test_float_path_matches_reference_bits(qkernel, shape, group):
    M, K, N = shape
    rng = np.random.default_rng(M + K + N)
    w = rng.standard_normal((K, N)).astype(np.float32)
    q, s = _quantize_weights(w, group)
    Q = kernels_int8.QuantizedMatrix(q, s, group)
    a = (rng.standard_normal((M, K)) * rng.uniform(0.1, 10, (M, 1))).astype(np.float32)
    a[0, :5] = 0.0
    got = kernels_int8.qgemm(a, Q, kernel=qkernel)
    assert np.array_equal(got, reference(a, q, s, group))
    # and it is a good approximation of the float product
    ref = a.astype(np.float64) @ w
    assert np.abs(got - ref).max() <= 0.03 * np.abs(ref).max() + 1e-6


def test_smoothing_and_static_scales(qkernel):
    rng = np.random.default_rng(3)
    M, K, N, group = 20, 96, 40, 32
    w = rng.standard_normal((K, N)).astype(np.float32)
    q, s = _quantize_weights(w, group)
    Q = kernels_int8.QuantizedMatrix(q, s, group)
    a = rng.standard_normal((M, K)).astype(np.float32)
    sm = rng.uniform(0.5, 2.0, K).astype(np.float32)
    assert np.array_equal(
        kernels_int8.qgemm(a, Q, inv_smooth=sm, kernel=qkernel), reference(a, q, s, group, inv_smooth=sm)
    )
    st = np.array([0.02, 0.03, 0.01], np.float32)  # small: clamps at +-127
    assert np.array_equal(
        kernels_int8.qgemm(a, Q, static_scale=st, kernel=qkernel), reference(a, q, s, group, static=st)
    )


def test_int8_activations_with_scales(qkernel):
    rng = np.random.default_rng(4)
    M, K, N = 11, 64, 20
    aq = rng.integers(-128, 128, (M, K), dtype=np.int8)
    q = rng.integers(-127, 128, (K, N), dtype=np.int8)
    s = rng.uniform(0.01, 0.1, (1, N)).astype(np.float32)
    sa = rng.uniform(0.01, 0.1, (M, 1)).astype(np.float32)
    got = kernels_int8.qgemm(aq, kernels_int8.QuantizedMatrix(q, s), a_scale=sa, kernel=qkernel)
    acc = (aq.astype(np.int64) @ q.astype(np.int64)).astype(np.float32)
    assert np.array_equal(got, (np.float32(0) + acc * (sa * s).astype(np.float32)).astype(np.float32))


def _table(n=32):
    x = np.linspace(-6, 6, n + 1)
    y = x * 0.5 * (1 + np.tanh(0.8 * x))
    sl = np.diff(y) / np.diff(x)
    return PWLTable(x, sl, y[:-1] - sl * x[:-1])


@pytest.mark.parametrize("act", [None, "relu", "pwl"])
def test_fused_epilogue_equals_unfused(qkernel, act):
    rng = np.random.default_rng(6)
    M, K, N, group = 70, 128, 90, 32
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.2
    q, s = _quantize_weights(w, group)
    Q = kernels_int8.QuantizedMatrix(q, s, group)
    a = rng.standard_normal((M, K)).astype(np.float32)
    bias, brow, res = (
        rng.standard_normal(N).astype(np.float32),
        rng.standard_normal(M).astype(np.float32),
        rng.standard_normal((M, N)).astype(np.float32),
    )
    tab = _table()
    ep = tab if act == "pwl" else act
    got = kernels_int8.qgemm(a, Q, bias=bias, bias_row=brow, residual=res, epilogue=ep, kernel=qkernel)
    x = reference(a, q, s, group)
    x = ((x + bias[None, :]).astype(np.float32) + brow[:, None]).astype(np.float32)
    x = (x + res).astype(np.float32)
    if act == "relu":
        x = np.maximum(x, np.float32(0))
    elif act == "pwl":
        x = tab(x)
    assert np.array_equal(got, x)


def test_kernels_and_threads_agree_bitwise():
    rng = np.random.default_rng(7)
    M, K, N, group = 257, 384, 200, 32
    w = rng.standard_normal((K, N)).astype(np.float32)
    q, s = _quantize_weights(w, group)
    Q = kernels_int8.QuantizedMatrix(q, s, group)
    a = rng.standard_normal((M, K)).astype(np.float32)
    outs = []
    old = nm.get_num_threads()
    try:
        for t in (1, 2, 3):
            nm.set_num_threads(t)
            outs += [kernels_int8.qgemm(a, Q, kernel=k) for k in _avail()]
    finally:
        nm.set_num_threads(old)
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_non_finite_rows_give_nan_rows(qkernel):
    rng = np.random.default_rng(8)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    q, s = _quantize_weights(w, 32)
    Q = kernels_int8.QuantizedMatrix(q, s, 32)
    a = rng.standard_normal((5, 64)).astype(np.float32)
    a[1, 3] = np.nan
    a[3, 40] = np.inf
    got = kernels_int8.qgemm(a, Q, kernel=qkernel)
    assert np.isnan(got[1]).all() and np.isnan(got[3]).all()
    ok = [0, 2, 4]
    assert np.isfinite(got[ok]).all()
    assert np.array_equal(got[ok], reference(a[ok], q, s, 32))


def test_bad_inputs():
    q = np.ones((8, 4), np.int8)
    Q = kernels_int8.QuantizedMatrix(q, np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(M, 8\)"):
        kernels_int8.qgemm(np.ones((3, 7), np.float32), Q)
    with pytest.raises(TypeError, match="QuantizedMatrix"):
        kernels_int8.qgemm(np.ones((3, 8), np.float32), q)
    with pytest.raises(ValueError, match="scales"):
        kernels_int8.qgemm(np.ones((3, 8), np.float32), kernels_int8.QuantizedMatrix(q))
    with pytest.raises(ValueError, match="multiple of 4"):
        kernels_int8.QuantizedMatrix(np.ones((16, 4), np.int8), np.ones((3, 4), np.float32), group=6)
    with pytest.raises(ValueError, match="shape"):
        kernels_int8.QuantizedMatrix(np.ones((16, 4), np.int8), np.ones((2, 4), np.float32), group=4)
    with pytest.raises(ValueError, match="int8"):
        kernels_int8.QuantizedMatrix(np.ones((16, 4), np.float32))
    with pytest.raises(TypeError, match="int8"):
        kernels_int8.qgemm_int32(np.ones((2, 8), np.float32), q)
    with pytest.raises(ValueError, match="int8 kernel"):
        kernels_int8.qgemm_int32(np.ones((2, 8), np.int8), q, kernel="sse9")
    with pytest.raises(ValueError, match="a_scale"):
        kernels_int8.qgemm(np.ones((3, 8), np.int8), Q)
    with pytest.raises(ValueError, match="static_scale"):
        kernels_int8.qgemm(np.ones((3, 8), np.float32), Q, static_scale=[0.0])
    with pytest.raises(ValueError, match="shape"):
        kernels_int8.qgemm(np.ones((3, 8), np.float32), Q, out=np.empty((3, 5), np.float32))


def test_scalar_default_under_use_kernel():
    with kernels.use_kernel("scalar"):
        assert kernels_int8.qkernel_info()["kernel"] == "scalar"


def test_env_forces_the_int8_kernel(monkeypatch, qkernel):
    """NMENGINE_QKERNEL picks the kernel of every default int8 call, which still gives numpy's int64 product."""
    monkeypatch.setenv("NMENGINE_QKERNEL", qkernel)
    assert kernels_int8.qkernel_info()["kernel"] == qkernel
    if kernels.kernel_code() != kernels.compiled_core().KERNEL_SCALAR:  # what sessions' int8 steps use
        assert kernels_int8.qkernel_for(kernels.kernel_code()) == kernels_int8.QKERNEL_NAMES.index(qkernel)
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, size=(37, 70), dtype=np.int8)
    b = rng.integers(-128, 128, size=(70, 45), dtype=np.int8)
    got = kernels_int8.qgemm_int32(a, b)
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))


def test_env_names_a_real_int8_kernel(monkeypatch):
    monkeypatch.setenv("NMENGINE_QKERNEL", "sse9")
    with pytest.raises(ValueError, match="NMENGINE_QKERNEL must be one of"):
        kernels_int8.qkernel_info()


@pytest.mark.parametrize("layout", ["c", "strided"])
def test_epilogue_layouts_and_wide_table(qkernel, layout):
    """The vector tile finisher (unit column strides) and the generic one (strided output / residual)
    give the reference bits, with a PWL table of more than 32 segments (two register halves)."""
    rng = np.random.default_rng(9)
    M, K, N, group = 45, 200, 75, 64
    w = rng.standard_normal((K, N)).astype(np.float32) * 0.2
    q, s = _quantize_weights(w, group)
    Q = kernels_int8.QuantizedMatrix(q, s, group)
    a = rng.standard_normal((M, K)).astype(np.float32)
    bias, res = rng.standard_normal(N).astype(np.float32), rng.standard_normal((M, N)).astype(np.float32)
    out = np.full((M, N), np.nan, np.float32)
    if layout == "strided":
        res = np.asfortranarray(res)
        out = np.full((N, M), np.nan, np.float32).T
    tab = _table(48)
    got = kernels_int8.qgemm(a, Q, bias=bias, residual=res, epilogue=tab, kernel=qkernel, out=out)
    x = ((reference(a, q, s, group) + bias[None, :]).astype(np.float32) + res).astype(np.float32)
    assert np.array_equal(got, tab(x))
