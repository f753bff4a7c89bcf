"""Helpers shared by the kernel tests (the ``kernel`` and ``threads`` fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np

from nmengine import kernels

KERNELS = ["scalar", "avx2", "avx512"]


def avx2_ok() -> bool:
    return bool(kernels.compiled_core().cpu_has_avx2_fma())


def avx512_ok() -> bool:
    return bool(kernels.compiled_core().cpu_has_avx512())


def kernel_ok(name: str) -> bool:
    """True when this CPU can run kernel ``name``."""
    return name == "scalar" or (name == "avx2" and avx2_ok()) or (name == "avx512" and avx512_ok())


def avail_kernels() -> list[str]:
    return [k for k in KERNELS if kernel_ok(k)]


def rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)
