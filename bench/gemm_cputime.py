"""Single-thread sgemm vs numpy by thread CPU time (robust on a shared machine).

    PYTHONPATH=. python bench/gemm_cputime.py [--kernel avx512|avx2|scalar]
    OPENBLAS_CORETYPE=Haswell PYTHONPATH=. python bench/gemm_cputime.py --kernel avx2   # AVX2 vs Haswell

Both libraries run on one thread (nm.set_num_threads(1), threadpoolctl for OpenBLAS); each timing is
``time.thread_time`` around one call, so time spent descheduled by other processes is not counted.
Prints, per #12 shape (M x K x N), the best GFLOP/s of 5 x N runs and numpy time / nmengine time.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import nmengine as nm
from nmengine import kernels

SHAPES = [
    (1024, 1024, 1024),
    (4096, 384, 384),
    (4096, 384, 1536),
    (4096, 1536, 384),
    (12544, 147, 64),
    (3136, 576, 64),
    (784, 1152, 128),
    (196, 2304, 256),
]


def _best(fn, n: int) -> float:
    best = float("inf")
    for _ in range(n):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel", default="auto")
    args = ap.parse_args()
    nm.set_num_threads(1)
    with threadpool_limits(1), kernels.use_kernel(args.kernel):
        print(nm.kernel_info())
        for M, K, N in SHAPES:
            rng = np.random.default_rng(0)
            a = rng.standard_normal((M, K), dtype=np.float32)
            b = rng.standard_normal((K, N), dtype=np.float32)
            out = np.empty((M, N), np.float32)
            reps = max(5, min(20, int(1e9 / (2 * M * N * K))))
            tn = min(_best(lambda: np.matmul(a, b, out=out), reps) for _ in range(5))
            tm = min(_best(lambda: nm.gemm(a, b, out=out), reps) for _ in range(5))
            gf = 2.0 * M * N * K / 1e9
            print(f"{M}x{K}x{N}: numpy {gf / tn:6.1f} GFLOP/s  nmengine {gf / tm:6.1f} GFLOP/s  ratio {tn / tm:.3f}")


if __name__ == "__main__":
    main()
