"""Two builds of the C core side by side in one process, call by call, with numpy alongside.

    python -m bench.ab_core OLD.so NEW.so [--threads 1] [--kernel avx2|avx512] [--rounds 30] [MxKxN ...]
    OPENBLAS_CORETYPE=Haswell python -m bench.ab_core /tmp/core_main.so nmengine/_core*.so --kernel avx2

On a shared or virtualised machine the speed of the same call drifts by several percent between
processes (and minutes), more than most kernel changes move it.  Here both builds of
``nmengine/_core*.so`` (copy the old one aside before rebuilding) are loaded with ctypes into one
process and called in turn, round after round, on the same operands, with numpy's matmul between
them, so drift hits the three peers alike and the ratio of medians is what changed.  Each call is
timed by the thread's CPU time with one thread (time descheduled is not counted) and by the wall
clock with more.  Only ``nm_sgemm_batched`` (the plain product, no epilogue) is called; it is part of
the core's C interface (csrc/nm_gemm.h).

With more than one thread the two builds' thread pools and OpenBLAS's threads share the cores call by
call, so multi-threaded A/B figures are a rough guide only; compare whole processes for those.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

from bench.test_bench_gemm import SGEMM_SHAPES

KERNELS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}


def _load(path: str, tag: str):
    """nm_sgemm_batched of a private copy of the library at `path` (two copies never share state)."""
    dst = os.path.join(tempfile.mkdtemp(prefix="nm-ab-"), f"core_{tag}.so")
    shutil.copy(path, dst)
    fn = ctypes.CDLL(dst, mode=ctypes.RTLD_LOCAL).nm_sgemm_batched
    i64, pd, vp = ctypes.c_int64, ctypes.c_ssize_t, ctypes.c_void_p
    fn.restype = ctypes.c_int
    fn.argtypes = [i64] * 5 + [vp, pd, pd, pd, pd] * 3 + [vp, ctypes.c_int, ctypes.c_int]
    return fn


def _call(fn, a: np.ndarray, b: np.ndarray, c: np.ndarray, threads: int, kernel: int) -> None:
    """c = a @ b by one build (fn) or by numpy (fn None); row-major operands."""
    if fn is None:
        np.matmul(a, b, out=c)
        return
    (M, K), N = a.shape, b.shape[1]
    rc = fn(1, 1, M, N, K, a.ctypes.data, 0, 0, K, 1, b.ctypes.data, 0, 0, N, 1, c.ctypes.data, 0, 0, N, 1,
            None, threads, kernel)  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"nm_sgemm_batched returned {rc}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="the reference build of nmengine/_core*.so")
    ap.add_argument("new", help="the build under test")
    ap.add_argument("shapes", nargs="*", help="MxKxN (default: the #12 shapes)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kernel", choices=sorted(KERNELS), default="auto")
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_intermixed_args(argv)
    if args.threads < 1 or args.rounds < 1:
        ap.error("--threads and --rounds must be >= 1")
    libs = {"old": _load(args.old, "old"), "new": _load(args.new, "new")}
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes] or list(SGEMM_SHAPES)
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    for shape in shapes:
        if len(shape) != 3 or min(shape) < 1:
            ap.error(f"shape {'x'.join(map(str, shape))}: expected MxKxN with positive sizes")
        M, K, N = shape
        a = rng.standard_normal((M, K), dtype=np.float32)
        b = rng.standard_normal((K, N), dtype=np.float32)
        outs = {k: np.empty((M, N), np.float32) for k in ("old", "new", "numpy")}

        times: dict[str, list[float]] = {k: [] for k in outs}
        with threadpool_limits(args.threads):
            for tag in outs:
                _call(libs.get(tag), a, b, outs[tag], args.threads, KERNELS[args.kernel])
            if not np.array_equal(outs["old"], outs["new"]):
                print(f"{M}x{K}x{N}: note: the two builds give different bits")
            for _ in range(args.rounds):
                for tag in outs:
                    t = clock()
                    _call(libs.get(tag), a, b, outs[tag], args.threads, KERNELS[args.kernel])
                    times[tag].append(clock() - t)
        med = {k: float(np.median(v)) for k, v in times.items()}
        gf = 2.0 * M * N * K / 1e9
        print(
            f"{M}x{K}x{N} ({args.threads} thread(s)): GFLOP/s old {gf / med['old']:.1f} new {gf / med['new']:.1f} "
            f"numpy {gf / med['numpy']:.1f} | vs numpy old {med['numpy'] / med['old']:.3f}x "
            f"new {med['numpy'] / med['new']:.3f}x | new / old speed {med['old'] / med['new']:.3f}x"
        )


if __name__ == "__main__":
    main()
