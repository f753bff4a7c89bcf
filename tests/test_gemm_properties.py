"""1,000 random GEMM cases against float64 on every kernel path (the subset of tools/gemm_properties.py,
whose default run is 10,000 cases): shapes 1..600, layouts, biases, residuals incl. the output buffer
itself, relu/PWL epilogues, thread counts 1..4, and bit-identity across thread counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
import gemm_properties  # noqa: E402

PATHS = gemm_properties.available_kernels()


@pytest.mark.parametrize("chunk", range(4))
def test_random_cases_match_float64(chunk):
    counts = gemm_properties.run(250, seed=1000 + chunk, kernel_paths=PATHS)
    assert sum(counts.values()) == 250 and all(v > 0 for v in counts.values())


def test_every_kernel_path_the_cpu_has_is_exercised():
    from nmengine import kernels

    info = kernels.kernel_info()
    assert "scalar" in PATHS
    if info.get("cpu_avx2_fma"):
        assert "avx2" in PATHS
