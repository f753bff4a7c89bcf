"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest

from nmengine import kernels

from .helpers import KERNELS, avx2_ok


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Run the test body under each available kernel (per-context selection, nothing leaks)."""
    if request.param == "avx2" and not avx2_ok():
        pytest.skip("CPU lacks AVX2+FMA")
    with kernels.use_kernel(request.param):
        yield request.param


@pytest.fixture
def threads():
    """Restores the thread count the test body changes."""
    old = kernels.get_num_threads()
    yield
    kernels.set_num_threads(old)
