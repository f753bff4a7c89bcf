"""nmengine.train: data, optimizers, schedules, modules, seeded training, accuracy targets and AAT."""

from __future__ import annotations

import time

import numpy as np
import pytest

from nmengine.pwl import PWLTable
from nmengine.train import functional as F
from nmengine.train import nn
from nmengine.train.aat import (
    approximable_layers,
    approximate,
    calibrate_uniform_tables,
    collect_activations,
    exact,
    uniform_table,
)
from nmengine.train.data import batches, load_digits_split, random_shift
from nmengine.train.models import default_config, small_cnn, small_vit
from nmengine.train.optim import SGD, AdamW, CosineWarmup, StepDecay, clip_grad_norm, param_groups
from nmengine.train.tensor import Parameter, Tensor
from nmengine.train.trainer import evaluate, predict, train


@pytest.fixture(scope="module")
def data():
    return load_digits_split()


# -- data ---------------------------------------------------------------------------------------------


def test_digits_split(data) -> None:
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    counts = np.bincount(data.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    again = load_digits_split()
    np.testing.assert_array_equal(again.x_test, data.x_test)
    assert not np.array_equal(load_digits_split(seed=1).y_test, data.y_test)


def test_batches_are_seeded_and_complete() -> None:
    x, y = np.arange(10)[:, None].astype(np.float32), np.arange(10)
    a = [yb for _, yb in batches(x, y, 3, rng=5)]
    b = [yb for _, yb in batches(x, y, 3, rng=5)]
    assert [len(v) for v in a] == [3, 3, 3, 1]
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert sorted(np.concatenate(a).tolist()) == list(range(10))
    assert [len(v) for _, v in batches(x, y, 3, rng=5, drop_last=True)] == [3, 3, 3]
    assert np.array_equal(np.concatenate([v for _, v in batches(x, y, 4, shuffle=False)]), y)


def test_random_shift() -> None:
    x = np.zeros((50, 1, 8, 8), np.float32)
    x[:, :, 3:5, 3:5] = 1.0
    s = random_shift(x, np.random.default_rng(0), 1)
    assert s.shape == x.shape and np.all(s.sum(axis=(1, 2, 3)) == 4.0)  # the blob moves but stays whole
    assert not np.array_equal(s, x)


# -- optimizers and schedules -------------------------------------------------------------------------


def test_sgd_and_adamw_minimise_quadratic() -> None:
    for make in (lambda p: SGD([p], lr=0.1, momentum=0.9), lambda p: AdamW([p], lr=0.1, weight_decay=0.0)):
        p = Parameter(np.array([3.0, -2.0], np.float32))
        opt = make(p)
        for _ in range(200):
            opt.zero_grad()
            ((p - 1.0) * (p - 1.0)).sum().backward()
            opt.step()
        np.testing.assert_allclose(p.data, [1.0, 1.0], atol=1e-2)


def test_adamw_decoupled_weight_decay_and_groups() -> None:
    model = small_vit(dim=8, heads=2, depth=1)
    groups = param_groups(model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decay}
    assert "embed.weight" in names and "blocks.0.attn.q_weight" in names
    assert not any(n.endswith(("bias", "norm.weight", "ln1.weight", "pos.weight")) for n in names)
    p = Parameter(np.ones(3, np.float32))
    opt = AdamW([p], lr=0.5, weight_decay=0.1)
    p.grad = np.zeros(3, np.float32)
    opt.step()
    np.testing.assert_allclose(p.data, 0.95, rtol=1e-6)  # only the decay acts on a zero gradient


def test_schedules_and_clipping() -> None:
    s = CosineWarmup(total_steps=110, warmup_steps=10, min_factor=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0) and s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55) and s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    d = StepDecay(step_size=5, gamma=0.5)
    assert [d(i) for i in (0, 4, 5, 12)] == [1.0, 1.0, 0.5, 0.25]
    p = Parameter(np.zeros(4, np.float32))
    p.grad = np.full(4, 2.0, np.float32)
    assert clip_grad_norm([p], 1.0) == pytest.approx(4.0)
    np.testing.assert_allclose(np.linalg.norm(p.grad), 1.0, rtol=1e-5)


# -- modules ------------------------------------------------------------------------------------------


def test_module_state_and_modes() -> None:
    m = small_cnn(channels=4, seed=0)
    names = [n for n, _ in m.named_parameters()]
    assert names[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"] and "block.conv2.weight" in names
    sd = m.state_dict()
    assert "block.bn1.running_var" in sd and len(sd) == len(names) + 6
    m2 = small_cnn(channels=4, seed=1)
    m2.load_state_dict(sd)
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(predict(m, x), predict(m2, x))
    with pytest.raises(KeyError, match="missing"):
        m2.load_state_dict({k: v for k, v in sd.items() if k != "head.bias"})
    with pytest.raises(ValueError, match="shape"):
        m2.load_state_dict({**sd, "head.bias": np.zeros(3)})
    m.eval()
    assert not any(mod.training for mod in m.modules())
    m.train()
    assert all(mod.training for mod in m.modules())
    m.to(np.float64)
    assert all(p.dtype == np.float64 for p in m.parameters()) and m.block.bn1.running_mean.dtype == np.float64


def test_batchnorm_modes() -> None:
    bn = nn.BatchNorm2d(3)
    x = Tensor(np.random.default_rng(0).normal(2.0, 3.0, (8, 3, 4, 4)).astype(np.float32))
    y = bn(x).data
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    assert np.all(bn.running_mean != 0)
    bn.eval()
    y2 = bn(x).data  # running statistics: not normalised after one step
    assert np.abs(y2.mean(axis=(0, 2, 3))).max() > 0.5


# -- training -----------------------------------------------------------------------------------------


def test_seeded_training_loss_falls_and_is_reproducible(data) -> None:
    sub = (data.x_train[:400], data.y_train[:400], data.x_test, data.y_test)
    runs = []
    for _ in range(2):
        model = small_cnn(channels=16, seed=0)
        hist = train(model, sub, epochs=3, lr=2e-2, batch_size=32, seed=7, progress=False)
        runs.append((model, hist))
    (m1, h1), (m2, h2) = runs
    assert h1.loss[-1] < 0.6 * h1.loss[0]
    assert h1.loss == h2.loss
    for (n, p), (_, q) in zip(m1.named_parameters(), m2.named_parameters()):
        np.testing.assert_array_equal(p.data, q.data, err_msg=n)
    assert 0.0 <= evaluate(m1, data.x_test, data.y_test) <= 1.0
    assert h1.test_acc[-1] == evaluate(m1, data.x_test, data.y_test)
    assert not m1.training  # left in eval mode


def test_training_options(data) -> None:
    sub = (data.x_train[:128], data.y_train[:128])
    model = small_vit(dim=16, heads=2, depth=1, patch=4, dropout=0.1)
    hist = train(
        model,
        sub,
        epochs=2,
        lr=1e-3,
        batch_size=32,
        optimizer="sgd",
        schedule="step",
        step_epochs=1,
        gamma=0.5,
        grad_clip=1.0,
        augment_shift=1,
        label_smoothing=0.1,
        progress=True,
        threads=None,
    )
    assert len(hist.loss) == 2 and hist.test_acc == [] and hist.lr[-1] == pytest.approx(1e-3 * 0.5)
    with pytest.raises(ValueError, match="schedule"):
        train(model, sub, epochs=1, schedule="bogus", progress=False)


# -- approximation-aware training ---------------------------------------------------------------------


def _fine_tables(model, x, segments=512):
    return calibrate_uniform_tables(model, x, segments, margin=0.05)


def test_collect_activations_and_layer_names(data) -> None:
    model = small_vit(dim=16, heads=2, seed=0)
    spec = model.to_spec()
    acts = collect_activations(model, data.x_train[:20])
    assert set(acts) == set(approximable_layers(model)) - {"pool"}  # an unmasked mean pool has no table
    for layer, roles in acts.items():
        op = spec.layer(layer).op
        assert set(roles) == {"mhsa": {"exp", "reciprocal"}, "layernorm": {"rsqrt"}, "gelu": {"gelu"}}[op]
    a = acts["blocks.0.attn"]
    assert a["exp"].max() == 0.0 and a["exp"].size == 20 * 2 * 4 * 4
    assert a["reciprocal"].min() >= 1.0 and a["reciprocal"].size == 20 * 2 * 4
    assert acts["norm"]["rsqrt"].size == 20 * 4 and acts["norm"]["rsqrt"].min() > 0
    assert acts["blocks.1.mlp.act"]["gelu"].size == 20 * 4 * 32
    assert collect_activations(model, data.x_train[:20], max_per_role=10)["blocks.0.attn"]["exp"].size == 10
    assert model._modules["norm"]._nl is None  # hooks removed


def test_collect_activations_skips_masked_keys() -> None:
    attn = nn.MultiHeadSelfAttention(4, 1, rng=np.random.default_rng(0))
    rec = []
    object.__setattr__(
        attn, "_nl", lambda role, x, valid=None: rec.append((role, valid)) or F.exact_nonlinearity(role, x)
    )
    mask = np.array([[1, 1, 0]])
    attn(Tensor(np.ones((1, 3, 4), np.float32)), mask)
    assert rec[0][0] == "exp" and rec[0][1].sum() == 6


def test_approximate_forward(data) -> None:
    model = small_vit(dim=16, heads=2, seed=0)
    x = data.x_test[:40]
    ref = predict(model, x)
    fine = _fine_tables(model, data.x_train[:100])
    with approximate(model, fine):
        y_fine = predict(model, x)
    np.testing.assert_allclose(y_fine, ref, atol=5e-3)
    coarse = calibrate_uniform_tables(model, data.x_train[:100], 3)
    h = approximate(model, coarse)
    y_coarse = predict(model, x)
    assert np.abs(y_coarse - ref).max() > 10 * np.abs(y_fine - ref).max()
    h.restore()
    np.testing.assert_array_equal(predict(model, x), ref)
    # partial mapping: only one layer, one role
    with approximate(model, {"blocks.0.attn": {"exp": coarse["blocks.0.attn"]["exp"]}}):
        y_part = predict(model, x)
    assert not np.array_equal(y_part, ref)
    exact(model)


def test_approximate_activation_is_the_table_bit_for_bit() -> None:
    t = uniform_table("gelu", -3.0, 3.0, 6)
    act = nn.GELU()
    x = np.random.default_rng(0).normal(0, 2, (7, 9)).astype(np.float32)
    with approximate(act, {"": {"gelu": t}}):
        y = act(Tensor(x)).data
    np.testing.assert_array_equal(y, t(x))
    np.testing.assert_array_equal(act(Tensor(x)).data, F.gelu(Tensor(x)).data)


def test_approximate_gradients_use_table_slope_or_exact() -> None:
    t = uniform_table("tanh", -2.0, 2.0, 4)
    act = nn.Tanh()
    x = Tensor(np.array([-3.0, -0.7, 0.2, 1.3], np.float32), requires_grad=True)
    with approximate(act, {"": {"tanh": t}}):
        act(x).sum().backward()
    np.testing.assert_array_equal(x.grad, t.slopes[t.segment_index(x.data)])
    x.grad = None
    with approximate(act, {"": {"tanh": t}}, straight_through=True):
        act(x).sum().backward()
    np.testing.assert_allclose(x.grad, 1 - np.tanh(x.data) ** 2, rtol=1e-6)


def test_approximate_validates_names() -> None:
    model = small_vit(dim=8, heads=2, depth=1)
    t = uniform_table("exp", -5.0, 0.0, 4)
    with pytest.raises(KeyError, match="not an approximable layer"):
        approximate(model, {"blocks.0.atn": {"exp": t}})
    with pytest.raises(KeyError, match="not an approximable layer"):
        approximate(model, {"head": {"exp": t}})
    with pytest.raises(KeyError, match="roles"):
        approximate(model, {"blocks.0.attn": {"rsqrt": t}})
    with pytest.raises(TypeError, match="PWLTable"):
        approximate(model, {"blocks.0.attn": {"exp": "table"}})
    approximate(model, {"nope": {"exp": t}}, strict=False).restore()


def test_approximate_bias_shifts() -> None:
    model = small_cnn(channels=4, act="gelu", seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    ref = predict(model, x)
    delta = np.arange(10) * 0.5
    with approximate(model, {}, bias_shifts={"head": delta}):
        np.testing.assert_allclose(predict(model, x), ref + delta, rtol=1e-6, atol=1e-6)
    with approximate(model, {}, bias_shifts={"conv1": np.ones(4)}):
        assert not np.allclose(predict(model, x), ref)
    np.testing.assert_array_equal(predict(model, x), ref)
    with pytest.raises(KeyError, match="not a Linear/Conv2d"):
        approximate(model, {}, bias_shifts={"bn1": np.ones(4)})
    with pytest.raises(ValueError, match="outputs"):
        approximate(model, {}, bias_shifts={"head": np.ones(3)})


def test_tables_from_nmengine_approx_fit(data) -> None:
    """The real fitter (when present): calibrate from collect_activations, fit, approximate."""
    approx_fit = pytest.importorskip("nmengine.approx.fit")
    model = small_vit(seed=0)
    acts = collect_activations(model, data.x_train[:128], max_per_role=20000)

    def table(role: str, v: np.ndarray) -> PWLTable:
        if role in ("rsqrt", "reciprocal"):  # relative functions: widen the range like the compiler does
            return approx_fit.fit(role, segments=32, calibration=v, lo=float(v.min()) / 8, hi=float(v.max()) * 8)
        return approx_fit.fit(role, segments=32, calibration=v)

    tables = {layer: {r: table(r, v) for r, v in roles.items()} for layer, roles in acts.items()}
    ref = predict(model, data.x_test)
    with approximate(model, tables):
        y = predict(model, data.x_test)
    assert np.abs(y - ref).max() < 0.1
    assert np.mean(y.argmax(1) == ref.argmax(1)) > 0.99


def test_uniform_table() -> None:
    t = uniform_table("exp", -4.0, 0.0, 8)
    assert isinstance(t, PWLTable) and t.n_segments == 8 and t.lo == -4.0 and t.hi == 0.0
    b = t.breakpoints.astype(np.float64)
    np.testing.assert_allclose(t(b.astype(np.float32)), np.exp(b), rtol=1e-5)  # chords interpolate
    g = uniform_table("rsqrt", 1e-3, 10.0, 16, spacing="geometric")
    assert g.error(lambda v: 1 / np.sqrt(v))["max_rel"] < 0.2


# -- accuracy targets (issue #5) ------------------------------------------------------------------------


@pytest.mark.slow
def test_cnn_accuracy_target(data) -> None:
    model = small_cnn(seed=0)
    t0 = time.perf_counter()
    hist = train(model, data, **default_config("cnn"), seed=0, progress=False)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, data.x_test, data.y_test)
    print(f"small_cnn: test accuracy {acc:.4f} after {len(hist.loss)} epochs in {seconds:.1f} s")
    assert acc >= 0.97


@pytest.mark.slow
def test_vit_accuracy_target_and_aat(data) -> None:
    model = small_vit(seed=0)
    t0 = time.perf_counter()
    hist = train(model, data, **default_config("vit"), seed=0, progress=False)
    seconds = time.perf_counter() - t0
    acc = evaluate(model, data.x_test, data.y_test)
    print(f"small_vit: test accuracy {acc:.4f} after {len(hist.loss)} epochs in {seconds:.1f} s")
    assert acc >= 0.95

    # AAT without the compiler: coarse uniform tables over calibrated ranges, then a short fine-tune
    tables = calibrate_uniform_tables(model, data.x_train[:256], 3)
    with approximate(model, tables):
        before = evaluate(model, data.x_test, data.y_test)
        train(
            model, data, epochs=3, lr=5e-4, batch_size=32, weight_decay=0.0, schedule="cosine", seed=1, progress=False
        )
        after = evaluate(model, data.x_test, data.y_test)
    print(f"small_vit with 3-segment tables: {before:.4f} before AAT, {after:.4f} after 3 epochs of AAT")
    assert before < acc and after > before and after >= 0.95
