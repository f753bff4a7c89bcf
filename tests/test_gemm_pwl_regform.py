"""The register-form PWL epilogues (8-bin AVX2 tables, 32-bin AVX-512 tables) equal PWLTable.__call__.

Full 6 x 16 / 14 x 32 tiles evaluate tables of up to ~33 breakpoints from registers (an own coarse
grid, per-bin breakpoints compared lane by lane, slopes and intercepts picked by bit selects); this
checks, on every kernel, tables that need 0..8 comparisons per bin (more than 6 exceed the AVX2 form
and take the row path), duplicate and clustered breakpoints, constant end segments (input clamps), and
inputs at, next to and between every breakpoint, outside the range, +-inf, NaN and +-0.  The
reference is numpy's PWLTable evaluation of the unfused product (independent of the C code).
"""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine import kernels
from nmengine.pwl import PWLTable


def _table(bp, rng, clamp=False) -> PWLTable:
    bp = np.asarray(bp, np.float64)
    n = bp.size - 1
    s, c = rng.standard_normal(n) * 2, rng.standard_normal(n)
    if clamp:
        s[0] = 0.0
        s[-1] = 0.0
    return PWLTable(bp, s, c)


def _tables():
    rng = np.random.default_rng(77)
    t = {
        "two": _table([-1.0, 0.5, 2.0], rng),
        "uniform16": _table(np.linspace(-4, 4, 17), rng),
        "uniform32": _table(np.linspace(-4, 4, 33), rng),
        "uniform34_clamped": _table(np.linspace(-6, 6, 35), rng, clamp=True),
        "uniform60": _table(np.linspace(-6, 6, 61), rng),
        "far_ends": _table(np.concatenate([[-8.0], np.linspace(-2, 2, 25), [8.0]]), rng),
        "random20": _table(np.sort(rng.uniform(-3, 3, 21)), rng),
        "dense_cluster": _table(np.concatenate([np.linspace(0, 0.01, 6), np.linspace(1, 5, 9)]), rng),
        "tiny_width": _table(np.linspace(1.0, 1.0 + 1e-5, 12), rng),
        # uniform tables whose breakpoints sit on multiples of a power of two: the AVX2 form takes a
        # floor key on which bins open at breakpoints (no comparison for those), zero one of them
        "uniform32_shifted": _table(np.linspace(0.5, 8.5, 33), rng),
        "uniform16_negative": _table(np.linspace(-20, -4, 17), rng),
        "uniform24_tenths": _table(np.linspace(-1.2, 1.2, 25), rng),  # spacing 0.1: inexact in float32
        "uniform32_clamped": _table(np.linspace(-2, 2, 33), rng, clamp=True),
        "neg_zero": _table([-2.0, -1.0, -0.0, 1.0, 2.0], rng),
    }
    return t


TABLES = _tables()


def _probes(table: PWLTable, rng, n: int) -> np.ndarray:
    b = table.breakpoints.astype(np.float32)
    lo, hi = float(b[0]), float(b[-1])
    w = max(hi - lo, 1e-3)
    mids = (b[:-1] + b[1:]) / 2
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 3e38, -3e38, lo - 1e4, hi + 1e4], np.float32)
    tiny = np.array([1e-45, -1e-45, 1e-39, -1e-39, 1e-30, -1e-30], np.float32)  # denormals and near-zeros
    special = np.concatenate([special, tiny])
    x = np.concatenate(
        [
            b,
            np.nextafter(b, np.float32(np.inf)),
            np.nextafter(b, np.float32(-np.inf)),
            mids.astype(np.float32),
            special,
            rng.uniform(lo - 0.3 * w, hi + 0.3 * w, n).astype(np.float32),
        ]
    )
    return rng.permutation(x)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_full_tiles_bit_exact(kernel, name):
    table = TABLES[name]
    rng = np.random.default_rng(len(name))
    M, N = 84, 96  # multiples of 6 x 16 and 14 x 32: every tile full
    x = np.resize(_probes(table, rng, 4000), (M, N)).astype(np.float32)
    # K == 1: x[:, :1]-style product would repeat columns; instead put x in the residual of an exact
    # product (a @ 0 == 0), so the epilogue input is 0 + x, non-finite values included
    a = rng.standard_normal((M, 5)).astype(np.float32)
    zero = np.zeros((5, N), np.float32)
    fused = nm.gemm(a, zero, residual=x, epilogue=table)
    assert np.array_equal(fused, table(np.float32(0) + x), equal_nan=True), name
    # a prepared table carries register forms built once; they must read the same as per-call ones
    prepared = nm.gemm(a, zero, residual=x, epilogue=kernels.prepare_table(table))
    assert np.array_equal(prepared, table(np.float32(0) + x), equal_nan=True), name
    # a real product: fused == table(plain)
    b = (rng.standard_normal((5, N)) * max(1.0, float(np.abs(table.breakpoints).max()) / 2)).astype(np.float32)
    plain = nm.gemm(a, b)
    assert np.array_equal(nm.gemm(a, b, epilogue=table), table(plain), equal_nan=True), name


@pytest.mark.parametrize("name", ["uniform16", "uniform32", "far_ends", "uniform32_shifted"])
def test_large_product_bit_exact(kernel, name):
    table = TABLES[name]
    rng = np.random.default_rng(5)
    a = rng.standard_normal((203, 384)).astype(np.float32)
    b = (rng.standard_normal((384, 150)) / np.sqrt(384) * 3).astype(np.float32)
    assert np.array_equal(nm.gemm(a, b, epilogue=table), table(nm.gemm(a, b)), equal_nan=True)
