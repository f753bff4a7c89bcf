"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from nmengine import kernels

from .helpers import KERNELS, kernel_ok


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Run the test body under each available kernel (per-context selection, nothing leaks)."""
    if not kernel_ok(request.param):
        what = "AVX2+FMA" if request.param == "avx2" else "AVX-512 F/BW/DQ/VL"
        pytest.skip(f"CPU lacks {what}: the {request.param} path cannot run here")
    with kernels.use_kernel(request.param):
        yield request.param


@pytest.fixture
def threads():
    """Restores the thread count the test body changes."""
    old = kernels.get_num_threads()
    yield
    kernels.set_num_threads(old)


_CACHE_DIR = None


def pytest_configure(config):
    """Compiled programs are cached in a directory of this test run: never the user's cache."""
    global _CACHE_DIR
    _CACHE_DIR = tempfile.mkdtemp(prefix="nmengine-test-cache-")
    os.environ["NMENGINE_CACHE_DIR"] = _CACHE_DIR


def pytest_unconfigure(config):
    if _CACHE_DIR:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)
