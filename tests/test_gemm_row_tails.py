"""GEMM row blocks ending in a single row (M = 25, 499, ... with the 6-row avx2 tile) run that row
through ``nm_ukr_avx2_row1`` (several B panels per pass).  Every element must keep the bits it gets
inside a full tile: a row computed as the tail equals the same row computed inside a larger M."""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine import kernels
from nmengine.pwl import PWLTable


def _table():
    x = np.linspace(-8, 8, 41)
    y = np.tanh(x)
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1])


@pytest.mark.parametrize("m", [1, 7, 13, 25, 145, 289])
@pytest.mark.parametrize("n,k", [(5, 3), (16, 40), (100, 384), (1152, 384), (384, 1000), (70, 800)])
def test_single_row_tail_is_bit_identical(kernel, m, n, k):
    rng = np.random.default_rng(m * 1000 + n + k)
    big = m + 5  # the same rows, none of them a one-row tail
    a = rng.standard_normal((big, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    bias_row = rng.standard_normal(big).astype(np.float32)
    res = rng.standard_normal((big, n)).astype(np.float32)
    old = kernels.get_num_threads()
    try:
        for nt in (1, 2):
            nm.set_num_threads(nt)
            for bb in (b, kernels.pack_b(b)):
                for kw in (
                    {},
                    {"bias": bias, "epilogue": "relu"},
                    {"bias": bias, "bias_row": bias_row, "residual": res, "epilogue": _table()},
                ):
                    tail_kw = {key: (v[:m] if key in ("bias_row", "residual") else v) for key, v in kw.items()}
                    ref = nm.gemm(a, bb, **kw)[:m]
                    got = nm.gemm(np.ascontiguousarray(a[:m]), bb, **tail_kw)
                    assert got.tobytes() == ref.tobytes()
    finally:
        nm.set_num_threads(old)
