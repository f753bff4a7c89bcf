"""How long table fitting takes (the compiler fits one table per nonlinearity of a network).

pytest bench/test_bench_approx.py --benchmark-only
"""

from __future__ import annotations

import pytest

from nmengine.approx import fit


@pytest.mark.parametrize("fn,segments", [("gelu", 32), ("exp", 32), ("gelu", 64), ("reciprocal", 512)])
def test_fit_time(benchmark, fn, segments):
    benchmark.group = "approx-fit"
    table = benchmark(fit, fn, segments=segments)
    benchmark.extra_info.update({"fn": fn, "segments": segments, "max_abs": table.meta["max_abs"]})
