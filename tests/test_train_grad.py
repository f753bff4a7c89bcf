"""Gradient checks for nmengine.train: every op's backward vs central finite differences in float64."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pytest

from nmengine.pwl import PWLTable
from nmengine.train import functional as F
from nmengine.train import nn
from nmengine.train.aat import approximate, uniform_table
from nmengine.train.models import small_cnn, small_vit
from nmengine.train.tensor import Parameter, Tensor, no_grad

RTOL = 1e-6


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error with an absolute floor (for gradients that are exactly zero, e.g. attention key bias)."""
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-2))


def gradcheck(
    fn: Callable[..., Tensor], *arrays: np.ndarray, eps: float = 1e-6, seed: int = 0, wrt: Sequence[int] | None = None
) -> None:
    """Compare autograd with central differences of ``sum(fn(*inputs) * R)`` for a fixed random R."""
    arrays = [np.array(a, dtype=np.float64) for a in arrays]
    wrt = range(len(arrays)) if wrt is None else wrt
    ts = [Tensor(a, requires_grad=i in wrt) for i, a in enumerate(arrays)]
    out = fn(*ts)
    assert out.dtype == np.float64, "float64 inputs must give a float64 output"
    R = np.random.default_rng(seed).standard_normal(out.shape)
    (out * R).sum().backward()

    def f(vals: list[np.ndarray]) -> float:
        with no_grad():
            return float((fn(*[Tensor(v) for v in vals]).data * R).sum())

    for i in wrt:
        num = np.zeros_like(arrays[i])
        for idx in np.ndindex(arrays[i].shape):
            vals = [a.copy() for a in arrays]
            vals[i][idx] += eps
            fp = f(vals)
            vals[i][idx] -= 2 * eps
            fm = f(vals)
            num[idx] = (fp - fm) / (2 * eps)
        got = ts[i].grad
        assert got is not None, f"input {i}: no gradient"
        assert got.shape == arrays[i].shape and got.dtype == np.float64
        assert _rel(got, num) < RTOL, f"input {i}: relative error {_rel(got, num):.2e}\nautograd={got}\nnumeric={num}"


def rnd(*shape: int, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed + 97 * len(shape) + sum(shape)).standard_normal(shape) * scale


# -- tensor algebra ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_broadcast_arithmetic(op: str) -> None:
    a, b = rnd(3, 1, 4), rnd(2, 4, seed=2) + (3.0 if op == "div" else 0.0)
    fn = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y, "div": lambda x, y: x / y}[
        op
    ]
    gradcheck(fn, a, b)


def test_scalar_arithmetic_and_pow() -> None:
    gradcheck(lambda x: 2.0 - x * 3.0 + 1.0 / (x * x + 1.0) - (-x), rnd(2, 3))
    gradcheck(lambda x: (x * x + 0.5) ** 1.5, rnd(4))


def test_matmul_batched_broadcast() -> None:
    gradcheck(lambda a, b: a @ b, rnd(2, 1, 4, 5), rnd(3, 5, 6, seed=3))
    gradcheck(lambda a, b: a @ b, rnd(4, 5), rnd(5, 2, seed=3))


@pytest.mark.parametrize("axis,keepdims", [(None, False), (1, False), ((0, 2), True), (-1, True)])
def test_reductions(axis, keepdims) -> None:
    x = rnd(3, 4, 5)
    gradcheck(lambda t: t.sum(axis=axis, keepdims=keepdims), x)
    gradcheck(lambda t: t.mean(axis=axis, keepdims=keepdims), x)
    gradcheck(lambda t: t.max(axis=axis, keepdims=keepdims), x)


def test_reshape_transpose_index() -> None:
    x = rnd(2, 3, 4)
    gradcheck(lambda t: t.reshape(4, 6).transpose(1, 0).swapaxes(0, 1), x)
    gradcheck(lambda t: t[1:, ::2, 1], x)
    gradcheck(lambda t: t[:, [0, 2, 0]], x)  # advanced index with a repeated entry
    gradcheck(lambda t: t[np.array([1, 1, 0])], x)


def test_concat_stack() -> None:
    gradcheck(lambda a, b: F.concat([a, b, a], axis=1), rnd(2, 3), rnd(2, 2, seed=5))
    gradcheck(
        lambda a, b: F.stack([a, b], axis=1) * F.stack([b, a], axis=-1).transpose(0, 2, 1), rnd(2, 3), rnd(2, 3, seed=5)
    )


@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu", "exp"])
def test_activations(name: str) -> None:
    x = rnd(3, 7, scale=2.0)
    x[np.abs(x) < 1e-3] = 0.5  # keep relu away from its kink
    gradcheck(getattr(F, name), x)


@pytest.mark.parametrize("name", ["log", "reciprocal", "rsqrt", "sqrt"])
def test_positive_functions(name: str) -> None:
    gradcheck(getattr(F, name), np.abs(rnd(3, 4)) + 0.3)


# -- layers -----------------------------------------------------------------------------------------


def test_linear() -> None:
    gradcheck(F.linear, rnd(2, 3, 5), rnd(4, 5, seed=2), rnd(4, seed=3))
    gradcheck(lambda x, w: F.linear(x, w), rnd(3, 5), rnd(2, 5, seed=2))


@pytest.mark.parametrize(
    "stride,padding,kernel", [(1, 0, (3, 3)), (2, 1, (3, 3)), ((1, 2), (0, 1), (2, 3)), (1, 2, (3, 1))]
)
def test_conv2d(stride, padding, kernel) -> None:
    x, w, b = rnd(2, 3, 5, 6), rnd(4, 3, *kernel, seed=2), rnd(4, seed=3)
    gradcheck(lambda x, w, b: F.conv2d(x, w, b, stride, padding), x, w, b)


def test_conv2d_matches_direct_loop() -> None:
    x, w = rnd(2, 3, 6, 5), rnd(4, 3, 3, 2, seed=2)
    y = F.conv2d(Tensor(x), Tensor(w), None, (2, 1), (1, 1)).data
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros_like(y)
    for n in range(2):
        for co in range(4):
            for i in range(y.shape[2]):
                for j in range(y.shape[3]):
                    ref[n, co, i, j] = np.sum(xp[n, :, 2 * i : 2 * i + 3, j : j + 2] * w[co])
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 0)])
def test_pooling(kernel, stride, padding) -> None:
    x = rnd(2, 2, 6, 5)
    gradcheck(lambda t: F.max_pool2d(t, kernel, stride, padding), x)
    gradcheck(lambda t: F.avg_pool2d(t, kernel, stride, padding), x)


def test_max_pool_values() -> None:
    x = rnd(1, 1, 4, 4)
    y = F.max_pool2d(Tensor(x), 2).data
    np.testing.assert_array_equal(y, x.reshape(1, 1, 2, 2, 2, 2).max(axis=(3, 5)))


def test_global_pool_flatten() -> None:
    gradcheck(F.global_avg_pool, rnd(2, 3, 4, 5))
    gradcheck(lambda t: F.flatten(t) * 2.0, rnd(2, 3, 2, 2))


def test_batch_norm_train_and_eval() -> None:
    C = 3
    rm, rv = np.zeros(C), np.ones(C)
    gradcheck(
        lambda x, w, b: F.batch_norm2d(x, w, b, rm.copy(), rv.copy(), training=True),
        rnd(4, C, 3, 2),
        rnd(C) + 1.0,
        rnd(C, seed=4),
    )
    gradcheck(
        lambda x, w, b: F.batch_norm2d(x, w, b, rnd(C, seed=7), np.abs(rnd(C, seed=8)) + 0.5, training=False),
        rnd(4, C, 3, 2),
        rnd(C) + 1.0,
        rnd(C, seed=4),
    )
    # running statistics follow PyTorch: biased variance to normalise, unbiased variance in the average
    x = rnd(4, C, 3, 2)
    F.batch_norm2d(Tensor(x), Tensor(np.ones(C)), Tensor(np.zeros(C)), rm, rv, training=True, momentum=0.1)
    np.testing.assert_allclose(rm, 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * x.var(axis=(0, 2, 3), ddof=1), rtol=1e-12)


@pytest.mark.parametrize("decomposed", [False, True])
def test_layer_norm(decomposed: bool) -> None:
    nl = F.exact_nonlinearity if decomposed else None
    gradcheck(lambda x, w, b: F.layer_norm(x, w, b, 1e-5, nl=nl), rnd(2, 3, 6), rnd(6) + 1.0, rnd(6, seed=3))


def test_layer_norm_forms_agree() -> None:
    x, w, b = Tensor(rnd(4, 8)), Tensor(rnd(8)), Tensor(rnd(8, seed=2))
    np.testing.assert_allclose(
        F.layer_norm(x, w, b).data, F.layer_norm(x, w, b, nl=F.exact_nonlinearity).data, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_softmax(decomposed: bool, masked: bool) -> None:
    nl = F.exact_nonlinearity if decomposed else None
    mask = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]]) if masked else None
    gradcheck(lambda x: F.softmax(x, axis=-1, mask=mask, nl=nl), rnd(2, 3, 5))
    p = F.softmax(Tensor(rnd(2, 3, 5)), mask=mask, nl=nl).data
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    if masked:
        assert np.all(p[np.broadcast_to(mask == 0, p.shape)] == 0)


def test_softmax_other_axis_and_log_softmax() -> None:
    gradcheck(lambda x: F.softmax(x, axis=0), rnd(4, 3))
    gradcheck(lambda x: F.log_softmax(x, axis=-1), rnd(3, 5))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy(smoothing: float) -> None:
    y = np.array([0, 3, 1, 3])
    gradcheck(lambda z: F.cross_entropy(z, y, label_smoothing=smoothing), rnd(4, 5, scale=3.0))
    z = rnd(4, 5)
    ref = -np.mean(z[np.arange(4), y] - np.log(np.exp(z).sum(1)))
    assert abs(F.cross_entropy(Tensor(z), y).item() - ref) < 1e-12


def test_mse() -> None:
    gradcheck(F.mse_loss, rnd(3, 4), rnd(3, 4, seed=9))


def test_embedding_and_module() -> None:
    ids = np.array([[1, 3, 1], [0, 3, 3]])
    gradcheck(lambda w: F.embedding(ids, w) * 1.5, rnd(5, 4))
    emb = nn.Embedding(5, 4, max_positions=6, token_types=2, rng=np.random.default_rng(0)).to(np.float64)
    tt = np.array([[0, 1, 1], [1, 0, 0]])
    y = emb(ids, tt)
    (y * rnd(2, 3, 4)).sum().backward()
    assert emb.word.grad.shape == (5, 4) and emb.position.grad[3:].sum() == 0 and emb.token_type.grad.shape == (2, 4)
    ref = emb.word.data[ids] + emb.position.data[:3] + emb.token_type.data[tt]
    np.testing.assert_allclose(y.data, ref)


def test_patchify_position_mean_pool() -> None:
    gradcheck(lambda x: F.patchify(x, 2), rnd(2, 3, 4, 6))
    gradcheck(F.position_add, rnd(2, 3, 4), rnd(5, 4, seed=3))
    mask = np.array([[1, 1, 0], [0, 1, 0]])
    gradcheck(lambda x: F.mean_pool(x, mask), rnd(2, 3, 4))
    gradcheck(F.mean_pool, rnd(2, 3, 4))


@pytest.mark.parametrize("tabulated", [False, True])
def test_l2_normalize_and_masked_mean_pool_roles(tabulated: bool) -> None:
    tabs = {"rsqrt": uniform_table("rsqrt", 0.5, 40.0, 13), "reciprocal": uniform_table("reciprocal", 0.5, 4.5, 4)}
    nl = _pwl_nl(tabs) if tabulated else F.exact_nonlinearity
    gradcheck(lambda x: F.l2_normalize(x, 1e-6, nl=nl), rnd(3, 5) + 0.5)
    gradcheck(lambda x: F.l2_normalize(x, 1e-6), rnd(3, 5) + 0.5)
    mask = np.array([[1, 1, 0], [0, 1, 0]])
    gradcheck(lambda x: F.mean_pool(x, mask, nl=nl), rnd(2, 3, 4))
    x = rnd(2, 3, 4)
    ref = np.stack([x[0, :2].mean(0), x[1, 1]])
    if tabulated:  # the division is the table's reciprocal of the token count
        ref = ref * np.array([[2.0], [1.0]]) * tabs["reciprocal"](np.array([[2.0], [1.0]], np.float32))
    np.testing.assert_allclose(F.mean_pool(Tensor(x), mask, nl=nl).data, ref, rtol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(F.l2_normalize(Tensor(x)).data, axis=-1), 1.0, rtol=1e-12)


def test_patchify_layout() -> None:
    x = np.arange(2 * 4 * 4, dtype=np.float64).reshape(1, 2, 4, 4)
    p = F.patchify(Tensor(x), 2).data
    assert p.shape == (1, 4, 8)
    # token 1 is the top-right patch; features in (C, kh, kw) order
    np.testing.assert_array_equal(p[0, 1], np.concatenate([x[0, 0, :2, 2:].ravel(), x[0, 1, :2, 2:].ravel()]))


def _mhsa_args(D: int = 8) -> list[np.ndarray]:
    args = [rnd(2, 4, D)]
    for i, p in enumerate("qkvo"):
        args += [rnd(D, D, seed=10 + i, scale=0.5), rnd(D, seed=20 + i, scale=0.1)]
    return args


@pytest.mark.parametrize("decomposed", [False, True])
def test_attention_with_mask(decomposed: bool) -> None:
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]])
    nl = F.exact_nonlinearity if decomposed else None
    gradcheck(lambda x, *w: F.multi_head_self_attention(x, *w, heads=2, mask=mask, nl=nl), *_mhsa_args())


def test_attention_reference() -> None:
    args = _mhsa_args()
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    y = F.multi_head_self_attention(*[Tensor(a) for a in args], heads=2, mask=mask).data
    x, qw, qb, kw, kb, vw, vb, ow, ob = args
    q, k, v = x @ qw.T + qb, x @ kw.T + kb, x @ vw.T + vb
    out = np.zeros_like(x)
    for h in range(2):
        s = slice(4 * h, 4 * h + 4)
        sc = q[:, :, s] @ k[:, :, s].transpose(0, 2, 1) / 2.0
        sc = np.where(mask[:, None, :] == 1, sc, -np.inf)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[:, :, s] = p @ v[:, :, s]
    np.testing.assert_allclose(y, out @ ow.T + ob, rtol=1e-12, atol=1e-12)


def test_dropout_gradient_is_mask() -> None:
    x = Tensor(rnd(50, 40), requires_grad=True)
    y = F.dropout(x, 0.25, np.random.default_rng(0))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, (y.data != 0) / 0.75)
    assert 0.2 < np.mean(y.data == 0) < 0.3
    assert F.dropout(x, 0.25, np.random.default_rng(0), training=False) is x


# -- PWL ops ----------------------------------------------------------------------------------------


def _away_from_breakpoints(x: np.ndarray, table: PWLTable, gap: float = 1e-4) -> np.ndarray:
    x = x.copy()
    b = table.breakpoints.astype(np.float64)
    for _ in range(10):
        d = np.min(np.abs(x[..., None] - b), axis=-1)
        x = np.where(d < gap, x + 3 * gap, x)
    return x


def test_pwl_forward_bit_exact_float32() -> None:
    t = uniform_table("gelu", -4.0, 4.0, 13)
    x = np.random.default_rng(0).uniform(-6, 6, 1000).astype(np.float32)
    y = F.pwl(Tensor(x), t, "gelu").data
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, t(x))


@pytest.mark.parametrize("role,lo,hi", [("gelu", -4.0, 4.0), ("exp", -8.0, 0.0), ("tanh", -3.0, 3.0)])
def test_pwl_gradient(role: str, lo: float, hi: float) -> None:
    t = uniform_table(role, lo, hi, 9)
    x = _away_from_breakpoints(np.random.default_rng(1).uniform(lo - 1, hi + 1, (3, 5)), t)
    gradcheck(lambda v: F.pwl(v, t, role), x)


def test_pwl_constant_outer_segment_clamps() -> None:
    t = PWLTable([-1.0, 0.0, 1.0], [0.0, 1.0], [-1.0, 0.0])
    x = Tensor(np.array([-np.inf, -5.0, 0.5, 3.0]), requires_grad=True)
    y = F.pwl(x, t, "tanh")
    np.testing.assert_array_equal(y.data, [-1.0, -1.0, 0.5, 3.0])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0, 1.0])


def test_pwl_straight_through_uses_exact_derivative() -> None:
    t = uniform_table("gelu", -4.0, 4.0, 5)
    x = Tensor(rnd(20), requires_grad=True)
    F.pwl(x, t, "gelu", straight_through=True).sum().backward()
    np.testing.assert_allclose(x.grad, F.EXACT_DERIVATIVES["gelu"](x.data), rtol=1e-12)


def _pwl_nl(tables: dict[str, PWLTable]) -> Callable[..., Tensor]:
    return lambda role, x, valid=None: F.pwl(x, tables[role], role)


def test_layer_norm_with_rsqrt_table() -> None:
    t = uniform_table("rsqrt", 0.05, 5.0, 7)
    x = rnd(3, 6)
    # keep var + eps away from breakpoints so finite differences stay on one segment
    var = x.var(-1, keepdims=True) + 1e-5
    assert np.min(np.abs(var - t.breakpoints.astype(np.float64))) > 1e-3
    gradcheck(lambda x, w, b: F.layer_norm(x, w, b, 1e-5, nl=_pwl_nl({"rsqrt": t})), x, rnd(6) + 1.0, rnd(6, seed=3))


def test_attention_with_tables() -> None:
    tabs = {"exp": uniform_table("exp", -10.0, 0.0, 11), "reciprocal": uniform_table("reciprocal", 0.5, 5.0, 9)}
    mask = np.array([[1, 1, 1, 0], [1, 0, 1, 1]])
    gradcheck(lambda x, *w: F.multi_head_self_attention(x, *w, heads=2, mask=mask, nl=_pwl_nl(tabs)), *_mhsa_args())


# -- whole models -----------------------------------------------------------------------------------


def _model_gradcheck(model: nn.Module, x: np.ndarray, y: np.ndarray, n_entries: int = 4, eps: float = 1e-6) -> None:
    model.to(np.float64)
    model.train()

    def loss() -> Tensor:
        return F.cross_entropy(model(Tensor(x)), y)

    model.zero_grad()
    loss().backward()
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        for _ in range(n_entries):
            idx = tuple(rng.integers(0, s) for s in p.shape)
            old = p.data[idx]
            with no_grad():
                p.data[idx] = old + eps
                fp = loss().item()
                p.data[idx] = old - eps
                fm = loss().item()
            p.data[idx] = old
            num = (fp - fm) / (2 * eps)
            assert abs(num - p.grad[idx]) <= 1e-6 * max(1.0, abs(num)) + 1e-9, f"{name}{idx}: {p.grad[idx]} vs {num}"


def test_small_cnn_gradients() -> None:
    x = np.random.default_rng(0).uniform(0, 1, (6, 1, 8, 8))
    _model_gradcheck(small_cnn(channels=4, seed=1), x, np.arange(6) % 10)


def test_small_vit_gradients() -> None:
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8))
    _model_gradcheck(small_vit(dim=8, heads=2, seed=1), x, np.array([1, 5, 9]))


def test_small_vit_gradients_with_tables() -> None:
    model = small_vit(dim=8, heads=2, seed=1)
    tables = {}
    for path, roles in {p: m.nl_roles for p, m in model.named_modules() if m.nl_roles}.items():
        rng_by_role = {"gelu": (-6, 6, 23), "exp": (-30, 0, 61), "reciprocal": (0.5, 20, 79), "rsqrt": (1e-5, 4.0, 97)}
        tables[path] = {r: uniform_table(r, *rng_by_role[r]) for r in roles}
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8))
    with approximate(model, tables):
        _model_gradcheck(model, x, np.array([1, 5, 9]), n_entries=2, eps=1e-7)


def test_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="do not broadcast"):
        Tensor(np.zeros((2, 3))) + Tensor(np.zeros((4,)))
    with pytest.raises(ValueError, match="inner dims"):
        Tensor(np.zeros((2, 3))) @ Tensor(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="channels"):
        F.conv2d(Tensor(np.zeros((1, 2, 4, 4))), Tensor(np.zeros((3, 1, 3, 3))))
    with pytest.raises(ValueError, match="does not match weight"):
        F.linear(Tensor(np.zeros((2, 3))), Tensor(np.zeros((4, 5))))
    with pytest.raises(RuntimeError, match="non-scalar"):
        Tensor(np.zeros(3), requires_grad=True).__mul__(2.0).backward()


def test_no_grad_and_dtype_follow_inputs() -> None:
    w = Parameter(np.ones((2, 2), np.float32))
    with no_grad():
        y = Tensor(np.ones((1, 2), np.float32)) @ w
    assert not y.requires_grad and y.dtype == np.float32
    z = (Tensor(np.ones((1, 2), np.float32)) @ w) * 2.0 + 1
    assert z.dtype == np.float32 and z.requires_grad
    z.sum().backward()
    assert w.grad.dtype == np.float32
    np.testing.assert_array_equal(w.grad, np.full((2, 2), 2.0, np.float32))
