"""Helpers shared by the kernel tests (the ``kernel`` and ``threads`` fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np

from nmengine import kernels

KERNELS = ["scalar", "avx2"]


def avx2_ok() -> bool:
    return bool(kernels.compiled_core().cpu_has_avx2_fma())


def avail_kernels() -> list[str]:
    return [k for k in KERNELS if k == "scalar" or avx2_ok()]


def rand(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)
