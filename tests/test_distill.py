"""Knowledge distillation for AAT: the loss against scipy's softmax KL and finite differences, and the
trainer's teacher option (argument errors, and that it pulls the student towards the teacher)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from nmengine import train as nt
from nmengine.train import functional as F


def _kl(student, teacher, T):
    lq, lp = log_softmax(teacher / T, axis=1), log_softmax(student / T, axis=1)
    return T * T * float(np.mean(np.sum(np.exp(lq) * (lq - lp), axis=1)))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_distillation_loss_value_and_gradient(T):
    rng = np.random.default_rng(0)
    s, t = 3 * rng.standard_normal((7, 5)), 3 * rng.standard_normal((7, 5))
    x = nt.Tensor(s, requires_grad=True, dtype=np.float64)
    loss = F.distillation_loss(x, t, temperature=T)
    assert loss.item() == pytest.approx(_kl(s, t, T), rel=1e-10)
    loss.backward()
    h, num = 1e-6, np.zeros_like(s)
    for i in np.ndindex(s.shape):
        up, dn = s.copy(), s.copy()
        up[i] += h
        dn[i] -= h
        num[i] = (_kl(up, t, T) - _kl(dn, t, T)) / (2 * h)
    np.testing.assert_allclose(x.grad, num, rtol=1e-5, atol=1e-9)
    assert F.distillation_loss(nt.Tensor(t, dtype=np.float64), t, temperature=T).item() == pytest.approx(0.0, abs=1e-12)


def test_distillation_loss_errors():
    x = nt.Tensor(np.zeros((2, 3)), dtype=np.float64)
    with pytest.raises(ValueError, match="shape"):
        F.distillation_loss(x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="temperature"):
        F.distillation_loss(x, np.zeros((2, 3)), temperature=0.0)


def test_train_with_a_teacher():
    """Distilling with weight 1 from a teacher that always says class 0 makes the student say 0,
    whatever the labels; bad teacher shapes and augmentation are refused."""
    data = nt.load_digits_split()
    x, y = data.x_train[:128], data.y_train[:128]
    teacher = np.zeros((128, 10))
    teacher[:, 0] = 8.0
    net = nt.small_cnn(channels=4, seed=0)
    nt.train(net, (x, y), epochs=10, lr=2e-2, batch_size=32, teacher=teacher, distill_weight=1.0, progress=False)
    assert np.mean(nt.predict(net, x).argmax(axis=1) == 0) > 0.9
    with pytest.raises(ValueError, match="teacher"):
        nt.train(net, (x, y), epochs=1, teacher=teacher[:10], progress=False)
    with pytest.raises(ValueError, match="augment_shift"):
        nt.train(net, (x, y), epochs=1, teacher=teacher, augment_shift=1, progress=False)
    with pytest.raises(ValueError, match="distill_weight"):
        nt.train(net, (x, y), epochs=1, teacher=teacher, distill_weight=1.5, progress=False)
