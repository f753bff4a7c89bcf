"""Held-out style check of the GEMM core: random shapes, strides, transposes, aliasing and epilogues
against float64 numpy, on every kernel path this CPU has.

Each example draws a product (M, N, K up to a few hundred, including 0 and 1 and the tile edges),
a layout per operand (contiguous, transposed, strided slice, negative strides, a view into a buffer
shared with the other operand), an output (new, or a strided/transposed view disjoint from the
inputs, possibly in the same buffer), a bias / row bias / residual in any broadcast form, an
activation (none, relu, a PWL table of 2..40 segments), a prepacked or plain B and a thread count.
Checks: |c - ref| within the float32 dot-product bound of the float64 reference; the fused PWL result
equals the table applied to the unfused result bit for bit; threads and packing do not change a bit.

The default run is the quick CI subset; NMENGINE_HELDOUT_EXAMPLES=5000 runs thousands.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nmengine as nm
from nmengine import kernels
from nmengine.pwl import PWLTable

from .helpers import avail_kernels

EXAMPLES = int(os.environ.get("NMENGINE_HELDOUT_EXAMPLES", "60"))
EPS = float(np.finfo(np.float32).eps)
DIM = st.one_of(st.sampled_from([0, 1, 2, 5, 13, 14, 15, 16, 17, 31, 32, 33, 64, 97]), st.integers(1, 300))
KDIM = st.one_of(st.sampled_from([0, 1, 7, 383, 384, 385, 769]), st.integers(1, 600))


def _table(rng, n):
    x = np.sort(rng.uniform(-6, 6, n + 1))
    x = np.unique(x.astype(np.float32)).astype(np.float64)
    if x.size < 2:
        x = np.array([-1.0, 1.0])
    y = np.tanh(x) * rng.uniform(0.5, 2)
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1], name="rand")


def _operand(rng, shape, how, shared):
    """An array of `shape` laid out as `how`; 'shared' views come from one buffer (aliasing)."""
    r, c = shape
    if how == "c":
        return rng.standard_normal(shape).astype(np.float32)
    if how == "t":
        return rng.standard_normal((c, r)).astype(np.float32).T
    if how == "slice":
        return rng.standard_normal((2 * r + 1, 3 * c + 2)).astype(np.float32)[1::2, 2::3]
    if how == "neg":
        return rng.standard_normal(shape).astype(np.float32)[::-1, ::-1]
    if how == "shared":  # a window of a buffer other operands also read
        return shared[:r, :c] if shared.shape[0] >= r and shared.shape[1] >= c else shared[:r, :c]
    raise AssertionError(how)


@settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(
    M=DIM,
    N=DIM,
    K=KDIM,
    la=st.sampled_from(["c", "t", "slice", "neg", "shared"]),
    lb=st.sampled_from(["c", "t", "slice", "neg", "shared"]),
    lo=st.sampled_from(["new", "c", "t", "slice", "same_buffer"]),
    bias=st.booleans(),
    bias_row=st.booleans(),
    res=st.sampled_from([None, "full", "row", "col", "t"]),
    act=st.sampled_from([None, "relu", "pwl"]),
    segs=st.integers(1, 40),
    packed=st.booleans(),
    nt=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_heldout_random_products(M, N, K, la, lb, lo, bias, bias_row, res, act, segs, packed, nt, seed):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((max(M, K, 1) + 3, max(K, N, 1) + 3)).astype(np.float32)
    a = _operand(rng, (M, K), la, shared)
    b = _operand(rng, (K, N), lb, shared)
    bc = rng.standard_normal(N).astype(np.float32) if bias else None
    br = rng.standard_normal(M).astype(np.float32) if bias_row else None
    r = None
    if res is not None:
        r = {
            "full": lambda: rng.standard_normal((M, N)),
            "row": lambda: rng.standard_normal((1, N)),
            "col": lambda: rng.standard_normal((M, 1)),
            "t": lambda: rng.standard_normal((N, M)).T,
        }[res]()
        r = np.asarray(r, np.float32)
    table = _table(rng, segs) if act == "pwl" else None
    ep = table if act == "pwl" else act

    big = None
    if lo == "same_buffer":  # out and a: disjoint row ranges of one buffer
        big = np.zeros((2 * M + 1, max(N, K, 1)), np.float32)
        big[M + 1 :, :K] = rng.standard_normal((M, K)).astype(np.float32)
        a = big[M + 1 :, :K]

    # float64 reference and the float32 dot-product bound
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref, bound = a64 @ b64, np.abs(a64) @ np.abs(b64)
    for extra in (bc, None if br is None else br[:, None], r):
        if extra is not None:
            ref, bound = ref + extra, bound + np.abs(extra.astype(np.float64))
    tol = 2.0 * (K + 4) * EPS * bound + 1e-30

    old = nm.get_num_threads()
    try:
        results = {}
        for kern in avail_kernels():
            with kernels.use_kernel(kern):
                nm.set_num_threads(nt)
                if lo == "new":
                    out = None
                elif lo == "same_buffer":
                    out = big[:M, :N]
                else:
                    out = _operand(rng, (M, N), lo, shared)
                    out = np.array(out) if lo == "c" else out
                    if lo != "c":  # strided or transposed views of a fresh buffer
                        base = np.empty((2 * N + 1, 2 * M + 1) if lo == "t" else (2 * M + 1, 2 * N + 1), np.float32)
                        out = base[1::2, 1::2].T if lo == "t" else base[1::2, 1::2]
                bb = kernels.pack_b(b) if packed else b
                plain = nm.gemm(a, bb, bias=bc, bias_row=br, residual=r)
                c = nm.gemm(a, bb, bias=bc, bias_row=br, residual=r, epilogue=ep, out=out)
                if out is not None:
                    assert c is out
                nm.set_num_threads(1)
                single = nm.gemm(a, b, bias=bc, bias_row=br, residual=r)
            assert plain.shape == (M, N) and c.dtype == np.float32
            err = np.abs(plain.astype(np.float64) - ref)
            assert (err <= tol).all(), f"{kern}: max excess {np.max(err - tol)}"
            assert np.array_equal(plain, single), f"{kern}: threads/packing changed bits"
            if act == "relu":
                assert np.array_equal(c, np.maximum(plain, np.float32(0)))
            elif act == "pwl":
                assert np.array_equal(c, table(plain), equal_nan=True), f"{kern}: fused PWL != PWLTable"
            else:
                assert np.array_equal(c, plain)
            results[kern] = plain
        if "avx2" in results and "avx512" in results:
            assert np.array_equal(results["avx2"], results["avx512"])
    finally:
        nm.set_num_threads(old)


def test_overlapping_out_is_refused():
    buf = np.ones((10, 10), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        nm.gemm(buf[:4, :4], buf[4:8, :4], out=buf[2:6, 2:6])
