"""GEMM core: nm.gemm / nm.gemm_batched against float64 numpy references, both kernels.

Accuracy bound: |c - ref| <= tol * (|a| @ |b| + |bias| + |bias_row| + |res|) with tol ~ (K + 4) eps32,
the classic bound for a float32 dot product (any summation order).  Bit-level properties
(thread-count independence, batched == per-product, fused epilogue == unfused + act) are checked
with np.array_equal.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nmengine as nm
from nmengine import kernels
from nmengine.pwl import PWLTable

from .helpers import KERNELS, avx2_ok, avx512_ok, kernel_ok, rand

EPS = float(np.finfo(np.float32).eps)


@contextlib.contextmanager
def threads(n: int):
    old = nm.get_num_threads()
    nm.set_num_threads(n)
    try:
        yield
    finally:
        nm.set_num_threads(old)


def reference(a, b, bias=None, bias_row=None, res=None):
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ref = a64 @ b64
    bound = np.abs(a64) @ np.abs(b64)
    for extra, shape in ((bias, None), (bias_row, "row"), (res, None)):
        if extra is None:
            continue
        e = np.asarray(extra, np.float64)
        if shape == "row":
            e = e[..., :, None]
        ref = ref + e
        bound = bound + np.abs(e)
    return ref, bound


def assert_close(c, a, b, bias=None, bias_row=None, res=None, relu=False):
    ref, bound = reference(a, b, bias, bias_row, res)
    K = np.shape(a)[-1]
    tol = 2.0 * (K + 4) * EPS
    if relu:
        ref = np.maximum(ref, 0.0)
    err = np.abs(c.astype(np.float64) - ref)
    assert c.dtype == np.float32 and c.shape == ref.shape
    ok = err <= tol * bound + 1e-30
    if not ok.all():
        i = np.unravel_index(np.argmax(err - tol * bound), err.shape)
        raise AssertionError(f"max excess at {i}: got {c[i]}, ref {ref[i]}, bound {tol * bound[i]}")


DIMS = [0, 1, 2, 3, 5, 6, 7, 13, 16, 17, 31, 37, 64, 97, 145, 150]
KDIMS = [0, 1, 2, 7, 16, 63, 255, 256, 257, 383, 385, 513, 769]


def _layout(rng, shape, how):
    """An array of `shape` with values drawn from rng, laid out as `how`."""
    r, c = shape
    if how == "c":
        return rand(rng, shape)
    if how == "t":  # transposed (column-major)
        return rand(rng, (c, r)).T
    if how == "slice":  # every other row/col of a bigger buffer
        return rand(rng, (2 * r + 1, 2 * c + 1))[1::2, 1::2]
    if how == "neg":  # negative strides
        return rand(rng, shape)[::-1, ::-1]
    raise AssertionError(how)


LAYOUTS = ["c", "t", "slice", "neg"]


@settings(max_examples=220, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    M=st.sampled_from(DIMS),
    N=st.sampled_from(DIMS),
    K=st.sampled_from(KDIMS),
    la=st.sampled_from(LAYOUTS),
    lb=st.sampled_from(LAYOUTS),
    lo=st.sampled_from(["new", "c", "t", "slice"]),
    kern=st.sampled_from(KERNELS),
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_random_shapes_and_layouts(M, N, K, la, lb, lo, kern, seed):
    if not kernel_ok(kern):
        kern = "scalar"
    rng = np.random.default_rng(seed)
    a, b = _layout(rng, (M, K), la), _layout(rng, (K, N), lb)
    out = None
    if lo != "new":
        out = _layout(rng, (M, N), {"c": "c", "t": "t", "slice": "slice"}[lo])
    with kernels.use_kernel(kern):
        c = nm.gemm(a, b, out=out)
    if out is not None:
        assert c is out
    assert_close(c, a, b)


@settings(max_examples=120, deadline=None)
@given(
    M=st.sampled_from(DIMS[1:]),
    N=st.sampled_from(DIMS[1:]),
    K=st.sampled_from(KDIMS),
    use_bias=st.booleans(),
    use_row=st.booleans(),
    res_kind=st.sampled_from([None, "full", "row", "col", "scalar"]),
    act=st.sampled_from([None, "relu"]),
    kern=st.sampled_from(KERNELS),
    seed=st.integers(0, 2**32 - 1),
)
def test_gemm_epilogues(M, N, K, use_bias, use_row, res_kind, act, kern, seed):
    if not kernel_ok(kern):
        kern = "scalar"
    rng = np.random.default_rng(seed)
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    bias = rand(rng, N) if use_bias else None
    bias_row = rand(rng, M) if use_row else None
    res = {
        None: None,
        "full": rand(rng, (M, N)),
        "row": rand(rng, (1, N)),
        "col": rand(rng, (M, 1)),
        "scalar": np.float32(0.5),
    }[res_kind]
    with kernels.use_kernel(kern):
        c = nm.gemm(a, b, bias=bias, bias_row=bias_row, residual=res, epilogue=act)
        plain = nm.gemm(a, b, bias=bias, bias_row=bias_row, residual=res)
    res_full = None if res is None else np.broadcast_to(res, (M, N))
    assert_close(c, a, b, bias, bias_row, res_full, relu=act == "relu")
    if act == "relu":  # the fused relu is exactly relu of the unfused result
        assert np.array_equal(c, np.maximum(plain, np.float32(0)))


def _gelu_like_table(n=32):
    x = np.linspace(-6, 6, n + 1)
    y = x * 0.5 * (1 + np.tanh(0.8 * x))
    s = np.diff(y) / np.diff(x)
    c = y[:-1] - s * x[:-1]
    return PWLTable(x, s, c)


@pytest.mark.parametrize("n_seg", [4, 32, 300])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (48, 64, 70), (150, 97, 257), (64, 300, 513)])
def test_fused_pwl_equals_table_of_plain(kernel, n_seg, shape):
    M, N, K = shape
    rng = np.random.default_rng(M * N + K + n_seg)
    a, b = rand(rng, (M, K), 0.3), rand(rng, (K, N), 0.3)
    bias, res = rand(rng, N), rand(rng, (M, N))
    tab = _gelu_like_table(n_seg)
    fused = nm.gemm(a, b, bias=bias, residual=res, epilogue=tab)
    plain = nm.gemm(a, b, bias=bias, residual=res)
    assert np.array_equal(fused, tab(plain), equal_nan=True)


def test_k_zero_gives_epilogue_of_zero(kernel):
    rng = np.random.default_rng(1)
    a, b = np.zeros((5, 0), np.float32), np.zeros((0, 19), np.float32)
    bias, bias_row, res = rand(rng, 19), rand(rng, 5), rand(rng, (5, 19))
    c = nm.gemm(a, b, bias=bias, bias_row=bias_row, residual=res, epilogue="relu")
    expect = np.maximum((np.float32(0) + bias[None, :] + bias_row[:, None]) + res, np.float32(0))
    assert np.array_equal(c, expect)
    assert np.array_equal(nm.gemm(a, b), np.zeros((5, 19), np.float32))
    tab = _gelu_like_table()
    assert np.array_equal(nm.gemm(a, b, residual=res, epilogue=tab), tab(np.float32(0) + res))


def test_empty_outputs(kernel):
    assert nm.gemm(np.zeros((0, 4), np.float32), np.ones((4, 3), np.float32)).shape == (0, 3)
    assert nm.gemm(np.zeros((3, 4), np.float32), np.ones((4, 0), np.float32)).shape == (3, 0)
    assert nm.gemm_batched(np.zeros((2, 0, 4), np.float32), np.ones((4, 3), np.float32)).shape == (2, 0, 3)
    assert nm.gemm_batched(np.zeros((0, 3, 4), np.float32), np.ones((4, 3), np.float32)).shape == (0, 3, 3)


def test_nan_inf_propagate(kernel):
    rng = np.random.default_rng(2)
    a, b = rand(rng, (40, 300)), rand(rng, (300, 50))
    a[3, 17] = np.nan
    a[10, 5] = np.inf
    b[200, 7] = -np.inf
    b[20, 33] = np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        ref = a.astype(np.float64) @ b.astype(np.float64)
    c = nm.gemm(a, b)
    assert np.array_equal(np.isnan(c), np.isnan(ref))
    assert np.array_equal(np.isposinf(c), np.isposinf(ref))
    assert np.array_equal(np.isneginf(c), np.isneginf(ref))
    # zero rows of real data still carry NaN (0 * NaN): no skipping of zeros
    a2 = np.zeros((6, 16), np.float32)
    b2 = np.zeros((16, 16), np.float32)
    b2[4, 9] = np.nan
    assert np.isnan(nm.gemm(a2, b2)[:, 9]).all()
    # relu keeps NaN (IEEE max semantics like np.maximum)
    assert np.isnan(nm.gemm(a, b, epilogue="relu")[3]).all()


def test_threads_bit_identical(kernel):
    rng = np.random.default_rng(3)
    a, b = rand(rng, (517, 700)), rand(rng, (700, 389))
    bias, res = rand(rng, 389), rand(rng, (517, 389))
    tab = _gelu_like_table()
    out = {}
    for nt in (1, 2, 3):
        with threads(nt):
            out[nt] = (
                nm.gemm(a, b),
                nm.gemm(a, b, bias=bias, residual=res, epilogue=tab),
                nm.gemm(a.T.copy().T, b[::-1][::-1]),
            )
    for nt in (2, 3):
        for x, y in zip(out[1], out[nt]):
            assert np.array_equal(x, y)
    assert np.array_equal(out[1][0], out[1][2])


@pytest.mark.parametrize("shape", [(13, 40, 50), (25, 384, 384), (128, 128, 128), (100, 70, 700), (7, 33, 9)])
def test_small_products_bit_identical_across_threads(kernel, shape):
    """Small products split rows among threads without barriers; every element must not notice."""
    M, N, K = shape
    rng = np.random.default_rng(M + N + K)
    a, b = rand(rng, (M, K)), rand(rng, (K, N))
    bias, brow, res = rand(rng, N), rand(rng, M), rand(rng, (M, N))
    tab = _gelu_like_table()
    out = {}
    for nt in (1, 2, 3):
        with threads(nt):
            out[nt] = (nm.gemm(a, b), nm.gemm(a, b, bias=bias, bias_row=brow, residual=res, epilogue=tab))
    for nt in (2, 3):
        for x, y in zip(out[1], out[nt]):
            assert np.array_equal(x, y)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(out[1][0] - ref).max() <= 1e-5 * K * max(1.0, float(np.abs(ref).max()))


def test_thread_api():
    old = nm.get_num_threads()
    try:
        nm.set_num_threads(3)
        assert nm.get_num_threads() == 3
        assert nm.kernel_info()["num_threads"] == 3
        with pytest.raises(ValueError, match=">= 1"):
            nm.set_num_threads(0)
        with pytest.raises(TypeError):
            nm.set_num_threads(1.5)
    finally:
        nm.set_num_threads(old)


# ---- batched ---------------------------------------------------------------------------------
BATCH_CASES = [
    ((3, 7, 20), (3, 20, 9)),
    ((2, 3, 17, 33), (2, 3, 33, 18)),
    ((2, 3, 17, 33), (33, 18)),  # shared weight
    ((17, 33), (4, 33, 18)),  # shared left operand
    ((2, 1, 8, 16), (1, 5, 16, 8)),  # broadcast both
    ((4, 1, 30, 64), (4, 6, 64, 30)),
    ((5, 6, 40), (5, 40, 300)),
]


@pytest.mark.parametrize("sa,sb", BATCH_CASES)
def test_batched_matches_per_product_gemm(kernel, sa, sb):
    rng = np.random.default_rng(len(sa) * 100 + sa[-1])
    a, b = rand(rng, sa), rand(rng, sb)
    c = nm.gemm_batched(a, b)
    batch = np.broadcast_shapes(sa[:-2], sb[:-2])
    ab, bb = np.broadcast_to(a, batch + sa[-2:]), np.broadcast_to(b, batch + sb[-2:])
    for idx in np.ndindex(*batch):
        assert np.array_equal(c[idx], nm.gemm(ab[idx], bb[idx]))
    assert_close(c, ab, bb)


def test_batched_epilogue_mask_and_threads(kernel):
    rng = np.random.default_rng(5)
    B, H, T, d = 2, 3, 23, 16
    q, k = rand(rng, (B, H, T, d)), rand(rng, (B, H, T, d))
    mask = np.where(rng.random((B, 1, 1, T)) < 0.3, np.float32(-1e4), np.float32(0))
    bias, bias_row = rand(rng, T), rand(rng, T)
    tab = _gelu_like_table()
    kt = k.transpose(0, 1, 3, 2)  # (B, H, d, T) strided view, no copy
    outs = []
    for nt in (1, 2, 5):
        with threads(nt):
            outs.append(nm.gemm_batched(q, kt, bias=bias, bias_row=bias_row, residual=mask, epilogue=tab))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    plain = nm.gemm_batched(q, kt, bias=bias, bias_row=bias_row, residual=mask)
    assert np.array_equal(outs[0], tab(plain))
    assert_close(plain, q, kt, bias, bias_row, np.broadcast_to(mask, plain.shape))


def test_batched_out_transposed_view(kernel):
    """Attention context written straight into a (B, T, H, d) buffer through a transposed view."""
    rng = np.random.default_rng(6)
    B, H, T, d = 2, 4, 19, 8
    p, v = rand(rng, (B, H, T, T)), rand(rng, (B, H, T, d))
    buf = np.full((B, T, H, d), np.nan, np.float32)
    view = buf.transpose(0, 2, 1, 3)
    r = nm.gemm_batched(p, v, out=view)
    assert r is view
    assert np.array_equal(buf.transpose(0, 2, 1, 3), nm.gemm_batched(p, v))


def test_batched_large_threads_identical(kernel):
    rng = np.random.default_rng(7)
    a, b = rand(rng, (3, 200, 300)), rand(rng, (300, 260))
    with threads(1):
        c1 = nm.gemm_batched(a, b, epilogue="relu")
    with threads(2):
        c2 = nm.gemm_batched(a, b, epilogue="relu")
    assert np.array_equal(c1, c2)
    assert np.array_equal(c1[1], nm.gemm(a[1], b, epilogue="relu"))


# ---- dtypes and validation -------------------------------------------------------------------
def test_dtype_casts(kernel):
    rng = np.random.default_rng(8)
    a64 = rng.standard_normal((9, 12))
    bi = rng.integers(-3, 4, size=(12, 5)).astype(np.int16)
    c = nm.gemm(a64, bi)
    assert c.dtype == np.float32
    assert np.array_equal(c, nm.gemm(a64.astype(np.float32), bi.astype(np.float32)))
    big_endian = a64.astype(">f4")
    assert np.array_equal(nm.gemm(big_endian, bi), c)
    assert np.array_equal(nm.gemm(a64.tolist(), bi), c)


def _bad_cases():
    f = np.ones((4, 5), np.float32)
    g = np.ones((5, 3), np.float32)
    return [
        (lambda: nm.gemm(f.astype(np.complex64), g), TypeError, "complex64"),
        (lambda: nm.gemm(f, g.astype(bool)), TypeError, "bool"),
        (lambda: nm.gemm(f, np.array([["a"] * 3] * 5)), TypeError, "dtype"),
        (lambda: nm.gemm(f.astype(object), g), TypeError, "object"),
        (lambda: nm.gemm(np.ones(5, np.float32), g), ValueError, r"2-D"),
        (lambda: nm.gemm(f, np.ones((4, 3), np.float32)), ValueError, r"\(4, 5\).*\(4, 3\)"),
        (lambda: nm.gemm(f, g, bias=np.ones(4, np.float32)), ValueError, r"\(3,\).*\(4,\)"),
        (lambda: nm.gemm(f, g, bias_row=np.ones(3, np.float32)), ValueError, r"\(4,\).*\(3,\)"),
        (lambda: nm.gemm(f, g, residual=np.ones((4, 2), np.float32)), ValueError, r"\(4, 2\).*\(4, 3\)"),
        (lambda: nm.gemm(f, g, epilogue="gelu"), ValueError, "gelu"),
        (lambda: nm.gemm(f, g, epilogue=3), TypeError, "epilogue"),
        (lambda: nm.gemm(f, g, out=np.empty((3, 4), np.float32)), ValueError, r"\(4, 3\).*\(3, 4\)"),
        (lambda: nm.gemm(f, g, out=np.empty((4, 3), np.float64)), ValueError, "float64"),
        (lambda: nm.gemm(f, g, out=np.empty((4, 3), np.float32)[:0]), ValueError, "shape"),
        (lambda: nm.gemm(f, g, out=_readonly((4, 3))), ValueError, "writeable"),
        (lambda: nm.gemm(f, g, out=[[0.0] * 3] * 4), ValueError, "numpy array"),
        (lambda: nm.gemm_batched(f, g), ValueError, "batch"),
        (lambda: nm.gemm_batched(np.ones((2, 3, 4, 5, 6), np.float32), g.reshape(1, 5, 3)), ValueError, "at most 2"),
        (
            lambda: nm.gemm_batched(np.ones((2, 4, 5), np.float32), np.ones((3, 5, 3), np.float32)),
            ValueError,
            "broadcast",
        ),
        (lambda: nm.gemm_batched(np.ones((2, 4, 5), np.float32), np.ones((2, 4, 3), np.float32)), ValueError, "inner"),
        (
            lambda: nm.gemm_batched(np.ones((2, 4, 5), np.float32), g, residual=np.ones((3, 1, 1), np.float32)),
            ValueError,
            "broadcastable",
        ),
        (
            lambda: nm.gemm_batched(np.ones((2, 4, 5), np.float32), g, out=np.empty((2, 3, 4), np.float32)),
            ValueError,
            r"\(2, 4, 3\)",
        ),
    ]


def _readonly(shape):
    x = np.empty(shape, np.float32)
    x.flags.writeable = False
    return x


@pytest.mark.parametrize("case", range(len(_bad_cases())))
def test_bad_inputs(case):
    fn, exc, pattern = _bad_cases()[case]
    with pytest.raises(exc, match=pattern):
        fn()


def test_out_overlapping_input_rejected():
    buf = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match="overlaps input 'a'"):
        nm.gemm(buf[:, :4], np.ones((4, 4), np.float32), out=buf[:, 4:][:, :4] if False else buf[:, :4])
    with pytest.raises(ValueError, match="overlaps input 'residual'"):
        r = np.ones((8, 8), np.float32)
        nm.gemm(np.ones((8, 3), np.float32), np.ones((3, 8), np.float32), residual=r, out=r)
    # disjoint halves of one buffer are fine
    c = nm.gemm(buf[:4, :4], np.eye(4, dtype=np.float32), out=buf[4:, 4:])
    assert np.array_equal(c, np.ones((4, 4), np.float32))


def test_odd_byte_strides_are_copied(kernel):
    raw = np.zeros(4 * 5 * 4 + 2, np.uint8)
    a = np.ndarray((4, 5), dtype=np.float32, buffer=raw, offset=2)  # unaligned
    a[...] = np.arange(20, dtype=np.float32).reshape(4, 5)
    g = np.ones((5, 3), np.float32)
    assert np.array_equal(nm.gemm(a, g), nm.gemm(np.array(a), g))


# ---- kernel selection ------------------------------------------------------------------------
def test_kernel_selection(monkeypatch):
    monkeypatch.setenv("NMENGINE_KERNEL", "scalar")
    assert nm.kernel_info()["kernel"] == "scalar"
    with kernels.use_kernel("auto"):
        assert nm.kernel_info()["kernel"] == ("avx512" if avx512_ok() else "avx2" if avx2_ok() else "scalar")
    monkeypatch.setenv("NMENGINE_KERNEL", "fast")
    with pytest.raises(ValueError, match="NMENGINE_KERNEL"):
        nm.gemm(np.ones((2, 2)), np.ones((2, 2)))
    monkeypatch.delenv("NMENGINE_KERNEL")
    with pytest.raises(ValueError, match="kernel"):
        with kernels.use_kernel("gpu"):
            pass
    info = nm.kernel_info()
    assert set(info) >= {"kernel", "cpu_avx2_fma", "mr", "nr", "mc", "kc", "nc", "num_threads", "openmp"}
    with kernels.use_kernel("scalar"):
        assert nm.kernel_info()["kernel"] == "scalar"


def test_avx2_unavailable_raises(monkeypatch):
    kernels.compiled_core()
    monkeypatch.setattr(kernels, "_cpu_avx2", False)
    monkeypatch.setattr(kernels, "_cpu_avx512", False)
    with kernels.use_kernel("avx2"):
        with pytest.raises(kernels.KernelUnavailableError, match="AVX2"):
            nm.gemm(np.ones((2, 2)), np.ones((2, 2)))
    with kernels.use_kernel("auto"):
        assert nm.kernel_info()["kernel"] == "scalar"


def test_avx512_unavailable_raises(monkeypatch):
    kernels.compiled_core()
    monkeypatch.setattr(kernels, "_cpu_avx512", False)
    monkeypatch.setenv("NMENGINE_KERNEL", "avx512")
    with pytest.raises(kernels.KernelUnavailableError, match="AVX-512"):
        nm.gemm(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(kernels.KernelUnavailableError, match="avx512"):
        nm.kernel_info()
    monkeypatch.delenv("NMENGINE_KERNEL")
    with kernels.use_kernel("auto"):
        assert nm.kernel_info()["kernel"] == ("avx2" if avx2_ok() else "scalar")


@pytest.mark.parametrize("shape", [(300, 1000, 384), (29, 70, 513), (14, 32, 769), (1, 96, 40)])
def test_avx2_and_avx512_give_the_same_bits(shape):
    """Both SIMD paths run one FMA chain per K block with the same K blocks (kernel_info kc)."""
    if not (avx2_ok() and avx512_ok()):
        pytest.skip("needs a CPU with both AVX2+FMA and AVX-512 to compare the paths")
    M, N, K = shape
    rng = np.random.default_rng(7)
    a, b, bias = rand(rng, (M, K)), rand(rng, (K, N)), rand(rng, N)
    out = {}
    for kern in ("avx2", "avx512"):
        with kernels.use_kernel(kern):
            out[kern] = nm.gemm(a, b, bias=bias, epilogue="relu")
    assert np.array_equal(out["avx2"], out["avx512"])


def test_measured_clock_is_a_real_clock():
    """The dependent-add clock estimate (bench/machine.py's peak figures) lands in the range of real
    CPU clocks: cores that fold add-immediate chains at rename once made it read ~18 GHz."""
    from nmengine import _core  # type: ignore[attr-defined]

    ghz = float(_core.measure_ghz())
    if ghz == 0.0:
        pytest.skip("no clock estimate on this compiler/architecture")
    assert 0.2 < ghz < 7.0, f"measured clock {ghz:.2f} GHz is not a CPU clock"
