"""Single-thread sgemm vs numpy by thread CPU time (robust on a shared machine).

    PYTHONPATH=. python bench/gemm_cputime.py [--kernel avx512|avx2|scalar]
    OPENBLAS_CORETYPE=Haswell PYTHONPATH=. python bench/gemm_cputime.py --kernel avx2   # AVX2 vs Haswell

    PYTHONPATH=. python bench/gemm_cputime.py --pwl [--kernel avx2]      # PWL epilogue overhead
    PYTHONPATH=. python bench/gemm_cputime.py --smallm [--kernel avx2]   # M 1..64, pre-packed B
    PYTHONPATH=. python bench/gemm_cputime.py --smallm-threads            # the same, 1 vs 2 threads, wall
    PYTHONPATH=. python bench/gemm_cputime.py --pwl-calls [--kernel avx2] # per-call cost of a PWL epilogue

Both libraries run on one thread (nm.set_num_threads(1), threadpoolctl for OpenBLAS); each timing is
``time.thread_time`` around one call, so time spent descheduled by other processes is not counted.
Prints, per #12 shape (M x K x N), the best GFLOP/s of 5 x N runs and numpy time / nmengine time;
with --pwl, the fused 16- and 32-segment tables (tanh, uniform breakpoints on [-4, 4], as in
bench/test_bench_gemm.py), the 34-segment GELU fit and relu against the plain product: the best of
--rounds rounds of 3 calls each, peers alternating, and in brackets the median over the rounds of
each round's ratio (the steadier figure on a shared machine); with --smallm, M in {1, 8, 25, 64, 4096} x K 384 -> N 1536 with
B pre-packed (kernels.pack_b) against numpy at the same shapes; with --pwl-calls, what a fused PWL
epilogue adds to one call where the product is small (1 x 384 -> 1536, pre-packed B): the table
passed as a PWLTable and as a prepared table (kernels.prepare_table), best of 9 x 200 calls each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import nmengine as nm
from bench.test_bench_gemm import SGEMM_SHAPES
from nmengine import kernels

SHAPES = SGEMM_SHAPES  # the #12 shapes: one list for this script and the pytest-benchmark suite


def _best(fn, n: int) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def _tanh_table(segments: int):
    from nmengine.pwl import PWLTable

    x = np.linspace(-4, 4, segments + 1)
    y = np.tanh(x)
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1])


def pwl_overhead(rounds: int = 15) -> None:
    from nmengine.approx.fit import fit

    eps = {"plain": None, "pwl16": _tanh_table(16), "pwl32": _tanh_table(32), "gelu34": fit("gelu", segments=32)}
    eps["relu"] = "relu"
    for M, K, N in [(4096, 384, 1536), (1024, 1024, 1024)]:
        rng = np.random.default_rng(1)
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32) / np.float32(np.sqrt(K))
        out = np.empty((M, N), np.float32)
        best = {k: float("inf") for k in eps}
        ratios: dict[str, list[float]] = {k: [] for k in eps}
        for _ in range(rounds):
            r = {k: _best(lambda e=e, a=a, b=b, out=out: nm.gemm(a, b, epilogue=e, out=out), 3) for k, e in eps.items()}
            for k in eps:
                best[k] = min(best[k], r[k])
                ratios[k].append(r[k] / r["plain"])
        plain = nm.gemm(a, b)
        for k in ("pwl16", "pwl32", "gelu34"):
            assert np.array_equal(nm.gemm(a, b, epilogue=eps[k]), eps[k](plain)), k
        p = best["plain"]
        parts = " ".join(
            f"{k} {100 * (v / p - 1):+.1f}% ({100 * (float(np.median(ratios[k])) - 1):+.1f}%)"
            for k, v in best.items()
            if k != "plain"
        )
        print(f"{M}x{K}x{N}: plain {p * 1e3:.2f} ms  {parts}")


def pwl_calls() -> None:
    from nmengine.approx.fit import fit

    rng = np.random.default_rng(5)
    a = rng.standard_normal((1, 384), dtype=np.float32)
    b = kernels.pack_b(rng.standard_normal((384, 1536), dtype=np.float32) / np.float32(20))
    out = np.empty((1, 1536), np.float32)
    t32, gelu = _tanh_table(32), fit("gelu", segments=32)
    variants = {
        "plain": None,
        "tanh32": t32,
        "tanh32 prepared": kernels.prepare_table(t32),
        "gelu34": gelu,
        "gelu34 prepared": kernels.prepare_table(gelu),
    }
    best = {k: float("inf") for k in variants}
    for _ in range(9):
        for k, e in variants.items():
            t = time.thread_time()
            for _ in range(200):
                nm.gemm(a, b, epilogue=e, out=out)
            best[k] = min(best[k], (time.thread_time() - t) / 200)
    p = best["plain"]
    print("1 x 384 -> 1536, pre-packed B: plain %.1f us; " % (p * 1e6) + "; ".join(
        f"{k} +{(v - p) * 1e6:.1f} us" for k, v in best.items() if k != "plain"))  # fmt: skip


def small_m() -> None:
    K, N = 384, 1536
    rng = np.random.default_rng(3)
    b = rng.standard_normal((K, N), dtype=np.float32) / np.float32(np.sqrt(K))
    packed = kernels.pack_b(b)
    for M in (1, 8, 25, 64, 4096):
        a = rng.standard_normal((M, K), dtype=np.float32)
        o1, o2 = np.empty((M, N), np.float32), np.empty((M, N), np.float32)
        reps = 100 if M <= 64 else 5
        tn = min(_best(lambda a=a, o1=o1: np.matmul(a, b, out=o1), reps) for _ in range(5))
        tm = min(_best(lambda a=a, o2=o2: nm.gemm(a, packed, out=o2), reps) for _ in range(5))
        assert np.array_equal(o2, nm.gemm(a, b))
        gf = 2.0 * M * N * K / 1e9
        print(f"M={M}: numpy {gf / tn:6.1f} GFLOP/s  nmengine packed {gf / tm:6.1f} GFLOP/s  ratio {tn / tm:.3f}")


def small_m_threads() -> None:
    """nmengine alone, wall time: 1 thread vs 2 threads at small M with pre-packed B (min / median)."""
    K, N = 384, 1536
    rng = np.random.default_rng(3)
    b = rng.standard_normal((K, N), dtype=np.float32) / np.float32(np.sqrt(K))
    packed = kernels.pack_b(b)
    for M in (1, 8, 25, 64):
        a = rng.standard_normal((M, K), dtype=np.float32)
        o = np.empty((M, N), np.float32)
        gf = 2.0 * M * N * K / 1e9
        parts = []
        for nt in (1, 2):
            nm.set_num_threads(nt)
            ts = []
            for _ in range(500):
                t0 = time.perf_counter()
                nm.gemm(a, packed, out=o)
                ts.append(time.perf_counter() - t0)
            parts.append(f"{nt} thread(s) {gf / min(ts):6.1f} / {gf / float(np.median(ts)):6.1f}")
        print(f"M={M}: GFLOP/s min / median: " + " | ".join(parts))
    nm.set_num_threads(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="auto")
    ap.add_argument("--pwl", action="store_true", help="PWL epilogue overhead instead of sgemm vs numpy")
    ap.add_argument("--rounds", type=int, default=15, help="--pwl: rounds of 3 calls per variant (default 15)")
    ap.add_argument("--smallm", action="store_true", help="small M with pre-packed B instead")
    ap.add_argument("--pwl-calls", action="store_true", help="per-call cost of a PWL epilogue on a small product")
    ap.add_argument("--smallm-threads", action="store_true", help="small M, nmengine alone, 1 vs 2 threads, wall time")
    args = ap.parse_args()
    nm.set_num_threads(1)
    with threadpool_limits(1), kernels.use_kernel(args.kernel):
        print(nm.kernel_info())
        if args.pwl:
            pwl_overhead(args.rounds)
            return
        if args.smallm:
            small_m()
            return
        if args.pwl_calls:
            pwl_calls()
            return
        if args.smallm_threads:
            small_m_threads()
            return
        for M, K, N in SHAPES:
            rng = np.random.default_rng(0)
            a = rng.standard_normal((M, K), dtype=np.float32)
            b = rng.standard_normal((K, N), dtype=np.float32)
            out = np.empty((M, N), np.float32)
            reps = max(5, min(20, int(1e9 / (2 * M * N * K))))
            tn = min(_best(lambda a=a, b=b, out=out: np.matmul(a, b, out=out), reps) for _ in range(5))
            tm = min(_best(lambda a=a, b=b, out=out: nm.gemm(a, b, out=out), reps) for _ in range(5))
            gf = 2.0 * M * N * K / 1e9
            print(f"{M}x{K}x{N}: numpy {gf / tn:6.1f} GFLOP/s  nmengine {gf / tm:6.1f} GFLOP/s  ratio {tn / tm:.3f}")


if __name__ == "__main__":
    main()
