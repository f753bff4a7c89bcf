"""Property tests of the GEMM core at scale: random cases against float64 references on every kernel path.

    python tools/gemm_properties.py                  # 10,000 cases, every kernel path the CPU has
    python tools/gemm_properties.py --cases 200000 --seed 7

Each case draws shapes M, N, K in 1..600 (log-uniform, so edge sizes around the register tiles are
common), operand layouts (C order, Fortran order, transposed views, strided slices), an optional column
bias, row bias and residual (full, broadcast row/column, or the output buffer itself: aliasing), an
epilogue (none, relu, a PWL table of 2..64 segments), a thread count in 1..4 and a kernel path; it checks

* the result against numpy float64 within a bound derived from K and the operands' magnitudes
  (float32 accumulation: ``|err| <= 4 K eps32 (|A| |B| + |bias| + |res|)`` before the epilogue, times
  the table's largest slope after it);
* bit-identity of the same case across thread counts (determinism);
* that an aliased residual/output either works or is refused with a ValueError.

Exit status 1 on any failure (the case is printed, reproducible from ``--seed``).  The normal test suite
runs a 1,000-case subset (``tests/test_gemm_properties.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nmengine as nm  # noqa: E402
from nmengine import kernels  # noqa: E402

EPS32 = float(np.finfo(np.float32).eps)
CANDIDATE_KERNELS = ("scalar", "avx2", "avx512")


def available_kernels() -> list[str]:
    """Kernel paths this CPU can run (each forced through ``kernels.use_kernel``)."""
    found = []
    a = np.ones((2, 2), np.float32)
    for name in CANDIDATE_KERNELS:
        try:
            with kernels.use_kernel(name):
                nm.gemm(a, a)
        except Exception:  # noqa: BLE001 - unknown name or missing CPU feature: not available here
            continue
        found.append(name)
    return found


def _dim(rng: np.random.Generator) -> int:
    return int(np.clip(np.rint(np.exp(rng.uniform(0, np.log(600)))), 1, 600))


def _operand(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) float32 array in a random memory layout."""
    layout = rng.integers(4)
    if layout == 0:
        return rng.standard_normal((rows, cols)).astype(np.float32)
    if layout == 1:
        return np.asfortranarray(rng.standard_normal((rows, cols)).astype(np.float32))
    if layout == 2:
        return rng.standard_normal((cols, rows)).astype(np.float32).T
    big = rng.standard_normal((rows * 2, cols * 3)).astype(np.float32)
    return big[::2, ::3]


_TABLES: dict[int, nm.PWLTable] = {}


def _table(segments: int) -> nm.PWLTable:
    if segments not in _TABLES:
        _TABLES[segments] = nm.approx.fit("gelu", segments=segments)
    return _TABLES[segments]


@dataclass
class Case:
    seed: int
    kernel: str
    threads: int
    m: int
    n: int
    k: int
    epilogue: str
    res_mode: str


def run_case(seed: int, kernel: str) -> Case:
    """Draw and check one case; raises AssertionError with the case on failure."""
    rng = np.random.default_rng(seed)
    m, n, k = _dim(rng), _dim(rng), _dim(rng)
    a, b = _operand(rng, m, k), _operand(rng, k, n)
    bias = rng.standard_normal(n).astype(np.float32) if rng.random() < 0.5 else None
    bias_row = rng.standard_normal(m).astype(np.float32) if rng.random() < 0.3 else None
    res_mode = str(rng.choice(["none", "full", "row", "col", "alias"]))
    res = {
        "none": None,
        "full": _operand(rng, m, n) if res_mode == "full" else None,
        "row": rng.standard_normal((1, n)).astype(np.float32),
        "col": rng.standard_normal((m, 1)).astype(np.float32),
        "alias": None,
    }[res_mode]
    ep_kind = str(rng.choice(["none", "relu", "pwl"]))
    segments = int(rng.choice([2, 4, 8, 16, 32, 64]))
    epilogue = _table(segments) if ep_kind == "pwl" else (None if ep_kind == "none" else "relu")
    threads = int(rng.integers(1, 5))
    case = Case(seed, kernel, threads, m, n, k, f"{ep_kind}{segments if ep_kind == 'pwl' else ''}", res_mode)

    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    pre = a64 @ b64
    mag = np.abs(a64) @ np.abs(b64)
    for extra in (bias, None if bias_row is None else bias_row[:, None]):
        if extra is not None:
            pre = pre + extra
            mag = mag + np.abs(extra)
    out = None
    if res_mode == "alias":
        out = rng.standard_normal((m, n)).astype(np.float32)
        res = out
    if res is not None:
        pre = pre + res.astype(np.float64)
        mag = mag + np.abs(res.astype(np.float64))
    bound = 4 * (k + 2) * EPS32 * mag + 1e-30

    def call(nthreads: int) -> np.ndarray:
        kernels.set_num_threads(nthreads)
        with kernels.use_kernel(kernel):
            o = None if out is None else out.copy()
            r = o if res_mode == "alias" else res
            return nm.gemm(a, b, bias=bias, bias_row=bias_row, residual=r, epilogue=epilogue, out=o)

    try:
        got = call(threads)
    except ValueError:
        if res_mode == "alias":
            return case  # refusing an aliased residual with a clear error is allowed
        raise
    if ep_kind == "relu":
        ref, slope = np.maximum(pre, 0), 1.0
    elif ep_kind == "pwl":
        ref = epilogue(pre.astype(np.float32)).astype(np.float64)
        slope = float(np.max(np.abs(epilogue.slopes)))
        # the table is evaluated on float32 inputs; its error budget adds one rounding of the input
        bound = slope * (bound + EPS32 * np.abs(pre)) + 4 * EPS32 * (np.abs(ref) + 1)
    else:
        ref, slope = pre, 1.0
    err = np.abs(got.astype(np.float64) - ref)
    bad = err > bound
    assert got.shape == (m, n) and got.dtype == np.float32, f"{case}: shape/dtype {got.shape} {got.dtype}"
    assert not bad.any(), (
        f"{case}: {int(bad.sum())} elements off, worst {float(err.max()):.3g} "
        f"(bound there {float(bound.flat[int(np.argmax(err - bound))]):.3g})"
    )
    other = 1 + threads % 4
    again = call(other)
    assert np.array_equal(got, again), f"{case}: {threads} vs {other} threads differ (not deterministic)"
    return case


def run(cases: int, seed: int = 0, kernel_paths: list[str] | None = None, progress: bool = False) -> dict[str, int]:
    """Run ``cases`` cases spread over ``kernel_paths``; returns cases per path. Raises on the first failure."""
    paths = kernel_paths or available_kernels()
    old = kernels.get_num_threads()
    counts = dict.fromkeys(paths, 0)
    try:
        it = range(cases)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="gemm cases", unit="case")
        for i in it:
            path = paths[i % len(paths)]
            run_case(seed * 1_000_003 + i, path)
            counts[path] += 1
    finally:
        kernels.set_num_threads(old)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernel", action="append", help="only this kernel path (repeatable)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        counts = run(args.cases, args.seed, args.kernel, progress=sys.stderr.isatty())
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    per = ", ".join(f"{k} {v:,}" for k, v in counts.items())
    print(f"{sum(counts.values()):,} cases passed ({per}) in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
