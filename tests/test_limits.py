"""Resource limits and edge inputs of a Session: a memory limit refused before allocation, empty batches,
and NaN / Inf flowing through GEMMs and tables as IEEE arithmetic says."""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine.session import MemoryLimitError, Session, parse_bytes

from .specs import cnn_spec


@pytest.fixture(scope="module")
def cnn():
    rng = np.random.default_rng(0)
    return nm.compile(cnn_spec(), calibration=rng.standard_normal((16, 1, 8, 8)).astype(np.float32), segments=8)


def test_parse_bytes():
    assert parse_bytes(1024) == 1024
    assert parse_bytes("512M") == 512 * 2**20 and parse_bytes("4G") == 4 * 2**30
    assert parse_bytes("1.5GiB") == int(1.5 * 2**30) and parse_bytes("64kb") == 64 * 2**10
    for bad in ("lots", "-1G", 0, "0"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    with pytest.raises(TypeError):
        parse_bytes(1.5)


def test_memory_limit_refuses_big_inputs_and_names_the_limit(cnn, monkeypatch):
    x = np.zeros((64, 1, 8, 8), np.float32)
    need = Session(cnn).plan_info(x)["peak_bytes"]
    small = Session(cnn, memory_limit=need - 1)
    with pytest.raises(MemoryLimitError, match="memory limit of .* MiB"):
        small.run(x)
    assert small.run(x[:1]).shape == (1, 10)  # a smaller batch fits
    np.testing.assert_array_equal(Session(cnn, memory_limit=need).run(x), cnn.run(x))
    monkeypatch.setenv("NMENGINE_MEMORY_LIMIT", str(need - 1))
    with pytest.raises(MemoryLimitError):
        Session(cnn).run(x)


def test_empty_batch_gives_empty_output(cnn):
    y = Session(cnn).run(np.zeros((0, 1, 8, 8), np.float32))
    assert y.shape == (0, 10) and y.dtype == np.float32


def test_nan_and_inf_propagate_without_crashing(cnn):
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    x[1, 0, 2, 3] = np.nan
    x[2, 0, 4, 4] = np.inf
    y = Session(cnn).run(x)
    ref = Session(cnn).run(x[:1])
    np.testing.assert_array_equal(y[:1], ref)  # the clean image is unaffected by its batch mates
    assert np.isnan(y[1]).any()  # NaN reaches the logits (0 * NaN, NaN + x)
    assert not np.isfinite(y[2]).all()
