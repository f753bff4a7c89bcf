"""The C PWL unit (fused epilogue and standalone pwl_apply) equals PWLTable.__call__ bit for bit.

Covers every lookup path of the vector code (in-register permutes for tiny tables, derived row
tables, gathers when steps > 1, linear and log2 keys) and the scalar code, on inputs at and next to
every breakpoint, outside the range, +-inf, NaN, +-0, subnormals and huge values.
"""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine import kernels
from nmengine.pwl import KEY_LOG2, PWLTable


def _lines(rng, n):
    return rng.standard_normal(n) * 2, rng.standard_normal(n)


def make_tables() -> dict[str, PWLTable]:
    rng = np.random.default_rng(1234)
    t = {}
    t["one_segment"] = PWLTable([-1.0, 2.0], [0.5], [0.25])
    t["one_segment_const"] = PWLTable([-1.0, 2.0], [0.0], [3.0])
    for n in (2, 5, 8):
        t[f"tiny_{n}"] = PWLTable(np.linspace(-3, 3, n + 1), *_lines(rng, n))
    t["uniform_32"] = PWLTable(np.linspace(-8, 8, 33), *_lines(rng, 32))
    bp = np.sort(rng.uniform(-10, 10, 41))
    s, c = _lines(rng, 40)
    s[0] = 0.0
    s[-1] = 0.0  # constant outer segments: xmin/xmax clamps
    t["nonuniform_40_clamped"] = PWLTable(bp, s, c)
    x = np.linspace(-6, 6, 35)
    y = x / (1 + np.exp(-1.702 * x))
    sl = np.diff(y) / np.diff(x)
    t["gelu_like_34"] = PWLTable(x, sl, y[:-1] - sl * x[:-1])
    g = np.geomspace(1e-6, 1e6, 65)
    t["geometric_log2"] = PWLTable(g, -1 / (g[:-1] * g[1:]), 1 / g[:-1] + 1 / g[1:])
    t["segments_2000"] = PWLTable(np.sort(rng.uniform(-100, 100, 2001)), *_lines(rng, 2000))
    # clustered breakpoints: no grid gets steps <= 1, exercising the gather walk
    cl = np.concatenate([np.linspace(0, 1e-3, 40), np.linspace(1, 2, 10), np.linspace(100, 101, 30)])
    t["clustered_steps"] = PWLTable(
        np.unique(cl.astype(np.float32)), *_lines(rng, np.unique(cl.astype(np.float32)).size - 1)
    )
    return t


TABLES = make_tables()


def test_table_zoo_covers_paths():
    assert TABLES["geometric_log2"].key_mode == KEY_LOG2
    assert TABLES["clustered_steps"].steps > 1
    assert TABLES["uniform_32"].steps <= 1
    assert TABLES["segments_2000"].nhint > 256


def probe_inputs(table: PWLTable, rng) -> np.ndarray:
    b = table.breakpoints
    pts = [b, np.nextafter(b, np.float32(np.inf)), np.nextafter(b, np.float32(-np.inf))]
    lo, hi = float(b[0]), float(b[-1])
    w = hi - lo
    pts.append(rng.uniform(lo - 0.2 * w, hi + 0.2 * w, 3000).astype(np.float32))
    pts.append(
        np.array(
            [
                np.inf,
                -np.inf,
                np.nan,
                -np.nan,
                0.0,
                -0.0,
                1e-45,
                -1e-45,
                1e-38,
                3.4e38,
                -3.4e38,
                1e30,
                -1e30,
                lo - 1e6,
                hi + 1e6,
            ],
            np.float32,
        )
    )
    x = np.concatenate([np.asarray(p, np.float32).ravel() for p in pts])
    return rng.permutation(x)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_pwl_apply_bit_exact(kernel, name):
    table = TABLES[name]
    rng = np.random.default_rng(len(name))
    x = probe_inputs(table, rng)
    expect = table(x)
    for n in (x.size, 1, 7, 8, 9, 17, 100):  # big sizes take the derived-row path, small ones not
        got = nm.pwl_apply(table, x[:n]) if hasattr(nm, "pwl_apply") else kernels.pwl_apply(table, x[:n])
        assert np.array_equal(got, expect[:n], equal_nan=True), name
    big = np.tile(x, 30)  # > 65536 elements: threaded
    assert np.array_equal(kernels.pwl_apply(table, big), table(big), equal_nan=True)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_fused_epilogue_bit_exact(kernel, name):
    """K == 0 and K == 1 GEMMs make the epilogue input exactly the probe values (0 + x, x * 1)."""
    table = TABLES[name]
    rng = np.random.default_rng(len(name) + 1)
    x = probe_inputs(table, rng)
    M, N = 37, 70  # full 6x16 tiles (register epilogue) and edge tiles (finisher)
    x = np.resize(x, (M, N)).astype(np.float32)
    c0 = nm.gemm(np.zeros((M, 0), np.float32), np.zeros((0, N), np.float32), residual=x, epilogue=table)
    assert np.array_equal(c0, table(np.float32(0) + x), equal_nan=True)
    # K == 1: column of values times a row of ones; every column j sees x[:, j]
    ones = np.ones((1, 1), np.float32)
    for j in (0, 33, 69):
        col = x[:, j : j + 1]
        c1 = nm.gemm(col, np.ones((1, N), np.float32), epilogue=table)
        expect = table(np.float32(0) + col * ones)  # fma(x, 1, 0) == 0 + x * 1
        assert np.array_equal(c1, np.broadcast_to(expect, (M, N)), equal_nan=True)
    # through the residual with a non-trivial product, against the unfused result
    a, b = rng.standard_normal((M, 9)).astype(np.float32), rng.standard_normal((9, N)).astype(np.float32)
    scale = max(1.0, float(np.abs(table.breakpoints).max()))
    res = (x * np.float32(1)).copy()
    res[~np.isfinite(res)] = 0
    fused = nm.gemm(a * np.float32(scale / 3), b, residual=res, epilogue=table)
    plain = nm.gemm(a * np.float32(scale / 3), b, residual=res)
    assert np.array_equal(fused, table(plain), equal_nan=True)


def test_fused_batched_and_strided_out(kernel):
    table = TABLES["nonuniform_40_clamped"]
    rng = np.random.default_rng(9)
    a = (rng.standard_normal((2, 3, 20, 30)) * 3).astype(np.float32)
    b = rng.standard_normal((30, 45)).astype(np.float32)
    buf = np.empty((2, 45, 3, 20), np.float32)
    out = buf.transpose(0, 2, 3, 1)  # csc != 1: every tile through the finisher
    nm.gemm_batched(a, b, epilogue=table, out=out)
    plain = nm.gemm_batched(a, b)
    assert np.array_equal(out, table(plain), equal_nan=True)


def test_pwl_apply_shapes_and_out(kernel):
    table = TABLES["uniform_32"]
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((4, 5, 6)) * 5).astype(np.float32)
    y = kernels.pwl_apply(table, x)
    assert y.shape == x.shape and np.array_equal(y, table(x))
    z = x.copy()
    assert kernels.pwl_apply(table, z, out=z) is z and np.array_equal(z, table(x))  # in place
    xt = x.transpose(2, 0, 1)  # non-contiguous input and output
    o = np.empty((6, 4, 5), np.float32).transpose(0, 1, 2)[:, :, :]
    o2 = np.empty((4, 5, 6), np.float32).transpose(2, 0, 1)
    kernels.pwl_apply(table, xt, out=o2)
    assert np.array_equal(o2, table(xt))
    assert kernels.pwl_apply(table, x.astype(np.float64)).dtype == np.float32
    assert kernels.pwl_apply(table, np.zeros((0, 3), np.float32)).shape == (0, 3)
    del o
    with pytest.raises(TypeError, match="PWLTable"):
        kernels.pwl_apply("gelu", x)
    with pytest.raises(TypeError, match="complex"):
        kernels.pwl_apply(table, x.astype(np.complex64))
    with pytest.raises(ValueError, match="shape"):
        kernels.pwl_apply(table, x, out=np.empty((3,), np.float32))
