"""GEMM core benchmarks: nmengine vs numpy (OpenBLAS), fused PWL epilogue overheads.

    pytest bench/test_bench_gemm.py --benchmark-only --benchmark-columns=min,median,rounds

Groups (peers side by side; the summary at the end prints GFLOP/s, % of peak and ratios):
  gemm-<M>x<N>x<K>   nm.gemm vs numpy `@` (2 threads each)
  pwl-overhead       nm.gemm + fused 32-segment PWL vs plain nm.gemm at 1024^3
  gelu-<shape>       nm.gemm with a fused PWL-GELU table vs numpy a @ b + exact GELU (scipy erf)
"""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine.pwl import PWLTable

SHAPES = [(1024, 1024, 1024), (4096, 384, 384), (4096, 1536, 384), (4096, 384, 1536), (128, 128, 128)]


def _operands(M, N, K, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32) / np.float32(np.sqrt(K))
    return a, b


def _rounds(M, N, K):
    return max(5, min(200, int(4e9 / (2 * M * N * K))))


def _pwl32() -> PWLTable:
    x = np.linspace(-4, 4, 33)
    y = np.tanh(x)
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1], name="tanh32")


def _gelu_table() -> PWLTable:
    try:
        from nmengine.approx.fit import fit

        return fit("gelu", segments=32)
    except Exception:  # pragma: no cover - approx package unavailable
        from scipy.special import erf

        x = np.linspace(-8, 8, 33)
        y = 0.5 * x * (1 + erf(x / np.sqrt(2)))
        s = np.diff(y) / np.diff(x)
        return PWLTable(x, s, y[:-1] - s * x[:-1], name="gelu")


@pytest.mark.parametrize("impl", ["numpy", "nmengine"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm(benchmark, bench_record, shape, impl):
    M, N, K = shape
    a, b = _operands(M, N, K)
    out = np.empty((M, N), np.float32)
    group = f"gemm-{M}x{N}x{K}"
    benchmark.group = group
    if impl == "numpy":
        fn = lambda: np.matmul(a, b, out=out)  # noqa: E731
    else:
        fn = lambda: nm.gemm(a, b, out=out)  # noqa: E731
    benchmark.pedantic(fn, rounds=_rounds(M, N, K), warmup_rounds=2, iterations=1)
    bench_record(benchmark, group, impl, 2.0 * M * N * K)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert np.abs(out - ref).max() <= 1e-4 * np.sqrt(K) * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("impl", ["plain", "fused_pwl32", "fused_relu"])
def test_pwl_overhead(benchmark, bench_record, impl):
    M = N = K = 1024
    a, b = _operands(M, N, K, seed=1)
    out = np.empty((M, N), np.float32)
    table = _pwl32()
    ep = {"plain": None, "fused_pwl32": table, "fused_relu": "relu"}[impl]
    benchmark.group = "pwl-overhead-1024"
    benchmark.pedantic(lambda: nm.gemm(a, b, epilogue=ep, out=out), rounds=40, warmup_rounds=2, iterations=1)
    bench_record(benchmark, "pwl-overhead-1024", impl, 2.0 * M * N * K)
    if impl == "fused_pwl32":
        assert np.array_equal(out, table(nm.gemm(a, b)))


@pytest.mark.parametrize("impl", ["numpy_erf_gelu", "nm_fused_pwl_gelu"])
@pytest.mark.parametrize("shape", [(1024, 1024, 1024), (4096, 1536, 384)], ids=lambda s: "x".join(map(str, s)))
def test_gelu(benchmark, bench_record, shape, impl):
    from scipy.special import erf

    M, N, K = shape
    a, b = _operands(M, N, K, seed=2)
    out = np.empty((M, N), np.float32)
    group = f"gelu-{M}x{N}x{K}"
    benchmark.group = group
    table = _gelu_table()
    half, rsqrt2, one = np.float32(0.5), np.float32(1 / np.sqrt(2)), np.float32(1)

    def numpy_gelu():
        y = np.matmul(a, b, out=out)
        t = erf(y * rsqrt2)
        t += one
        t *= y
        t *= half
        return t

    fn = numpy_gelu if impl == "numpy_erf_gelu" else (lambda: nm.gemm(a, b, epilogue=table, out=out))
    benchmark.pedantic(fn, rounds=max(5, _rounds(M, N, K) // 2), warmup_rounds=1, iterations=1)
    bench_record(benchmark, group, impl, 2.0 * M * N * K)
