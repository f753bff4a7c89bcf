"""nm.gemm / pwl_apply with a PWLTable reuse the table's C descriptor (built once per table, ~30 us)
while the table lives: results must follow the table when it is changed, and the cache must not keep
tables alive.  The reference is numpy's PWLTable evaluation (independent of the C code)."""

from __future__ import annotations

import gc
import threading
import weakref

import numpy as np

import nmengine as nm
from nmengine import kernels
from nmengine.pwl import PWLTable


def _tanh(segments: int, lo: float = -4.0, hi: float = 4.0) -> PWLTable:
    x = np.linspace(lo, hi, segments + 1)
    y = np.tanh(x)
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1])


def _operands(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((37, 64)).astype(np.float32)
    b = (rng.standard_normal((64, 50)) / 4).astype(np.float32)
    return a, b


def test_repeated_calls_match_numpy_and_prepared():
    a, b = _operands()
    t = _tanh(32)
    plain = nm.gemm(a, b)
    for _ in range(3):
        assert np.array_equal(nm.gemm(a, b, epilogue=t), t(plain))
    assert np.array_equal(nm.gemm(a, b, epilogue=kernels.prepare_table(t)), t(plain))
    x = plain.ravel()
    assert np.array_equal(kernels.pwl_apply(t, x), t(x))


def test_changed_table_is_not_served_stale():
    """Reassigning a table's arrays (as a user might) must change what the kernels evaluate."""
    a, b = _operands(1)
    t = _tanh(16)
    plain = nm.gemm(a, b)
    before = nm.gemm(a, b, epilogue=t)
    assert np.array_equal(before, t(plain))
    doubled = (t.slopes * np.float32(2)).astype(np.float32)
    doubled.setflags(write=False)
    t.slopes = doubled
    after = nm.gemm(a, b, epilogue=t)
    assert np.array_equal(after, t(plain))
    assert not np.array_equal(after, before)
    assert np.array_equal(kernels.pwl_apply(t, plain), t(plain))


def test_cache_does_not_keep_tables_alive():
    a, b = _operands(2)
    t = _tanh(8)
    nm.gemm(a, b, epilogue=t)
    kernels.pwl_apply(t, a)
    ref = weakref.ref(t)
    del t
    gc.collect()
    assert ref() is None


def test_new_tables_at_a_reused_address_are_not_confused():
    """Short-lived tables (ids get reused) must each give their own results."""
    a, b = _operands(3)
    plain = nm.gemm(a, b)
    for segments in (4, 8, 16, 32, 4, 8):
        t = _tanh(segments, -3.0 + segments / 100, 3.0)
        assert np.array_equal(nm.gemm(a, b, epilogue=t), t(plain)), segments
        del t


def test_threads_share_one_table():
    a, b = _operands(4)
    t = _tanh(32)
    want = t(nm.gemm(a, b))
    errors: list[str] = []

    def work() -> None:
        for _ in range(50):
            if not np.array_equal(nm.gemm(a, b, epilogue=t), want):
                errors.append("mismatch")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
