"""Benchmark session setup: 2 threads for nmengine and numpy's BLAS, machine info, ratio summary.

Benchmarks are not part of the default `pytest` run (pyproject testpaths = ["tests"]); run them with
    pytest bench/test_bench_gemm.py --benchmark-only
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

try:  # as a package (bench/__init__.py present) or as a rootdir-relative module
    from bench.machine import describe, format_machine  # noqa: E402
except ImportError:  # pragma: no cover
    from machine import describe, format_machine  # type: ignore  # noqa: E402

BENCH_THREADS = int(os.environ.get("NMENGINE_BENCH_THREADS", "2"))

# results[group][name] = {"min": s, "median": s, "gflops": ..., "flops": ...}
RESULTS: dict[str, dict[str, dict[str, Any]]] = {}
MACHINE: dict[str, Any] = {}


@pytest.fixture(scope="session", autouse=True)
def _bench_threads():
    import nmengine as nm

    old = nm.get_num_threads()
    nm.set_num_threads(BENCH_THREADS)
    try:
        from threadpoolctl import threadpool_limits

        ctx = threadpool_limits(BENCH_THREADS)
    except ImportError:  # pragma: no cover
        ctx = None
    MACHINE.update(describe())
    yield
    if ctx is not None:
        ctx.restore_original_limits()
    nm.set_num_threads(old)


@pytest.fixture(scope="session")
def machine() -> dict[str, Any]:
    return MACHINE


@pytest.fixture
def bench_record():
    """`bench_record(benchmark, group, name, flops)` after a benchmark run (see record())."""
    return record


def record(benchmark, group: str, name: str, flops: float | None) -> None:
    """Put GFLOP/s and % of peak in extra_info and remember the result for the ratio summary."""
    st = benchmark.stats.stats
    row: dict[str, Any] = {"min": st.min, "median": st.median}
    if flops:
        row["gflops"] = flops / st.min / 1e9
        row["gflops_median"] = flops / st.median / 1e9
        benchmark.extra_info["gflops"] = round(row["gflops"], 1)
        benchmark.extra_info["gflops_median"] = round(row["gflops_median"], 1)
        peak = MACHINE.get("peak_gflops")
        if peak:
            row["peak_frac"] = row["gflops"] / peak
            benchmark.extra_info["peak_frac"] = round(row["peak_frac"], 3)
    RESULTS.setdefault(group, {})[name] = row


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("nmengine GEMM benchmark summary (ratios of best times, same group)")
    tr.write_line(format_machine(MACHINE))
    tr.write_line(f"threads: {BENCH_THREADS}")
    for group, rows in RESULTS.items():
        names = list(rows)
        base = rows[names[0]]
        tr.write_line(f"[{group}]")
        for n in names:
            r = rows[n]
            g = f"{r['gflops']:7.1f} GFLOP/s ({100 * r.get('peak_frac', 0):4.1f}% peak)" if "gflops" in r else " " * 30
            ratio = base["min"] / r["min"]
            tr.write_line(
                f"  {n:34s} min {r['min'] * 1e3:8.3f} ms  median {r['median'] * 1e3:8.3f} ms  {g}"
                f"  speed vs {names[0]}: {ratio:5.3f}x"
            )
