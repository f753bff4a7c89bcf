"""Quantization-aware training (nmengine.train.qat): fake quantization and its straight-through gradient,
checked against plain numpy, and the int8 program of a QAT-tuned model."""

from __future__ import annotations

import numpy as np
import pytest

from nmengine import train as nt
from nmengine.train.qat import fake_quant, int8_linear, quantization_aware
from nmengine.train.tensor import Tensor


def test_fake_quant_is_int8_on_a_per_row_group_grid():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 70)) * rng.uniform(0.1, 10, (5, 1))
    a[1, 32:64] = 0.0
    y = fake_quant(a, 32)
    for r in range(5):
        for g0 in range(0, 70, 32):
            blk, out = a[r, g0 : g0 + 32], y[r, g0 : g0 + 32]
            m = np.abs(blk).max()
            if m == 0:
                assert np.all(out == 0)
                continue
            q = out / (m / 127)
            assert np.allclose(q, np.round(q), atol=1e-6) and np.abs(q).max() <= 127 + 1e-9
            assert np.abs(out - blk).max() <= m / 127 / 2 + 1e-12
    assert np.array_equal(fake_quant(a, None), fake_quant(a, 1000))


def test_int8_linear_forward_and_straight_through_gradient():
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((4, 3, 40)), requires_grad=True)
    w = Tensor(rng.standard_normal((6, 40)), requires_grad=True)
    b = Tensor(rng.standard_normal(6), requires_grad=True)
    y = int8_linear(x, w, b, 8)
    xq, wq = fake_quant(x.data, 8), fake_quant(w.data, 8)
    assert np.allclose(y.data, xq @ wq.T + b.data)
    g = rng.standard_normal(y.shape)
    (y * Tensor(g)).sum().backward()
    assert np.allclose(x.grad, g @ wq)
    assert np.allclose(w.grad, g.reshape(-1, 6).T @ xq.reshape(-1, 40))
    assert np.allclose(b.grad, g.reshape(-1, 6).sum(0))


def test_context_installs_and_restores():
    net = nt.create_model("vit", seed=0)
    x = np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32)
    before = net(Tensor(x)).data
    with quantization_aware(net, group=32):
        q = net(Tensor(x)).data
    assert not np.array_equal(q, before) and np.allclose(q, before, atol=0.2 * np.abs(before).max())
    assert np.array_equal(net(Tensor(x)).data, before)
    with pytest.raises(ValueError, match="multiple of 4"):
        quantization_aware(net, group=6)
