"""Learnable PWL tables: gradients against finite differences, continuity and order kept, frozen
tails, the materialised table equal to the trained function, and learning that actually helps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf, expit

import nmengine as nm
from nmengine import train as nt
from nmengine.train.tables import LearnableTable, learnable_tables, learned_pwl


def _silu(x):
    return x * expit(x)


def _perturbed(lt: LearnableTable, seed: int = 0) -> LearnableTable:
    rng = np.random.default_rng(seed)
    lt.edges.data[...] = np.where(lt.moving, 0.2 * rng.standard_normal(lt.edges.shape), 0.0)
    lt.values.data[...] = np.where(lt.free, 0.2 * rng.standard_normal(lt.values.shape), 0.0)
    lt.project()
    return lt


def _loss(lt: LearnableTable, x: np.ndarray, w: np.ndarray) -> float:
    e, s, c = lt.lines()
    seg = np.searchsorted(e, x, side="right")
    return float(np.sum(w * (s[seg] * x + c[seg])))


@pytest.mark.parametrize(
    "fn,kw", [("silu", {"lo": -6.0, "hi": 6.0}), ("exp", {"lo": -10.0, "hi": 0.0}), ("rsqrt", {"lo": 0.05, "hi": 20.0})]
)
def test_gradients_match_finite_differences(fn, kw):
    lt = _perturbed(LearnableTable(nm.approx.fit(fn, segments=5, **kw)))
    rng = np.random.default_rng(1)
    lo, hi = kw["lo"], kw["hi"]
    x = rng.uniform(lo - 0.2 * abs(lo), hi + 0.2 * abs(hi), 400) if fn != "rsqrt" else rng.uniform(0.01, 30.0, 400)
    x = x[np.min(np.abs(x[:, None] - lt.knots()[0][None, :]), axis=1) > 1e-3]  # away from the kinks
    w = rng.standard_normal(x.size)
    X = nt.Tensor(x, requires_grad=True, dtype=np.float64)
    y = learned_pwl(X, lt)
    (y * nt.Tensor(w, dtype=np.float64)).sum().backward()
    h = 1e-6
    for p in (lt.edges, lt.values):
        num = np.zeros(p.shape)
        for i in range(p.size):
            old = p.data[i]
            p.data[i] = old + h
            up = _loss(lt, x, w)
            p.data[i] = old - h
            dn = _loss(lt, x, w)
            p.data[i] = old
            num[i] = (up - dn) / (2 * h)
        np.testing.assert_allclose(p.grad, num, rtol=1e-5, atol=1e-6 * np.max(np.abs(num)) + 1e-9)
    e, s, c = lt.lines()
    np.testing.assert_allclose(X.grad, w * s[np.searchsorted(e, x, side="right")], rtol=1e-12)


def test_continuous_inside_the_range_and_tails_frozen():
    t = nm.approx.fit("gelu", segments=6, lo=-5.0, hi=5.0)
    lt = _perturbed(LearnableTable(t), seed=3)
    e, s, c = lt.lines()
    inner = np.flatnonzero(lt.free)
    for j in inner:  # both segments meeting at a free edge inside the range agree there
        if not lt.tail[j] and not lt.tail[j + 1]:
            assert s[j] * e[j] + c[j] == pytest.approx(s[j + 1] * e[j] + c[j + 1], abs=1e-12)
    # the asymptote segments are exactly the compiled ones: 0 below, x above
    assert (s[0], c[0]) == (0.0, 0.0) and (s[-1], c[-1]) == (1.0, 0.0)
    learned = lt.table()
    x = np.linspace(-30, 30, 2001).astype(np.float32)
    big = x[(x < -6) | (x > 6)]
    np.testing.assert_array_equal(learned(big), t(big))


def test_projection_keeps_edges_sorted_and_apart():
    lt = LearnableTable(nm.approx.fit("tanh", segments=8, lo=-4.0, hi=4.0))
    lt.edges.data[...] = np.where(lt.moving, np.linspace(30, -30, lt.edges.size), 0.0)  # scrambled
    lt.project()
    e, _ = lt.knots()
    assert np.all(np.diff(e) >= lt.min_gap * (1 - 1e-12))
    tab = lt.table()
    assert np.all(np.diff(tab.breakpoints) > 0)


def test_initial_learnable_table_is_close_to_the_compiled_one():
    t = nm.approx.fit("silu", segments=8, lo=-8.0, hi=8.0)
    lt = LearnableTable(t)
    x = np.linspace(-12, 12, 4001).astype(np.float32)
    # continuity costs at most the compiled table's own error (the jumps are below 2x its max error)
    assert np.max(np.abs(lt.table()(x) - t(x))) <= 2 * t.meta["max_abs"] + 1e-6
    y = learned_pwl(nt.Tensor(x), lt).data
    np.testing.assert_allclose(y, lt.table()(x), atol=1e-5)


def test_exact_and_single_segment_tables_are_frozen():
    relu = nm.approx.fit("relu")
    one = nm.approx.fit(np.sin, segments=1, lo=0.0, hi=1.0)
    got = learnable_tables({"a": {"relu": relu}, "b": {"sin": one}, "c": {"gelu": nm.approx.fit("gelu", segments=4)}})
    assert got["a"]["relu"] is relu and got["b"]["sin"] is one
    assert isinstance(got["c"]["gelu"], LearnableTable)


def test_learning_a_table_alone_lowers_its_error():
    """Fit a 4-segment SiLU table to SiLU by gradient descent through learned_pwl: the mean squared
    error on the data (measured with scipy's expit) must fall well below the starting table's."""
    t = nm.approx.fit("silu", segments=4, method="uniform", lo=-6.0, hi=6.0)
    lt = LearnableTable(t)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 2.0, 4000)
    target = _silu(x)
    opt = nt.TableAdamW([{"params": lt.parameters}], [lt], lr=0.02, weight_decay=0.0)
    start = np.mean((lt.table()(x.astype(np.float32)) - target) ** 2)
    for _ in range(300):
        y = learned_pwl(nt.Tensor(x, dtype=np.float64), lt)
        d = y - nt.Tensor(target, dtype=np.float64)
        loss = (d * d).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = np.mean((lt.table()(x.astype(np.float32)) - target) ** 2)
    assert end < 0.2 * start
    assert np.all(np.diff(lt.table().breakpoints) > 0)


def _gelu(x):
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _best_chain_on_grid(x, y, lo, hi, grid):
    """Brute force: the continuous PWL on knots (lo, e1, e2, e3, hi) with least-squares knot values
    (hat basis via np.interp), best over every e1 < e2 < e3 from ``grid``; its RMS error."""
    from itertools import combinations

    best = np.inf
    for es in combinations(grid, 3):
        knots = np.array([lo, *es, hi])
        basis = np.stack([np.interp(x, knots, np.eye(5)[i]) for i in range(5)], axis=1)
        v = np.linalg.lstsq(basis, y, rcond=None)[0]
        best = min(best, float(np.sqrt(np.mean((basis @ v - y) ** 2))))
    return best


def test_fit_to_data_finds_the_least_squares_table():
    """A uniform 4-segment GELU table refitted to N(0, 1) inputs: at least as good as the best
    continuous 4-segment table over a grid of breakpoints (independent hat-basis least squares),
    far better than the uniform start; same range, tails and segment count; continuous."""
    t = nm.approx.fit("gelu", segments=4, lo=-4.0, hi=4.0, method="uniform")
    lt = LearnableTable(t)
    x = np.clip(np.random.default_rng(0).standard_normal(3000), -3.95, 3.95)
    y = _gelu(x)
    start = float(np.sqrt(np.mean((t(x.astype(np.float32)) - y) ** 2)))
    rms = lt.fit_to_data(x)
    got = lt.table()
    fitted = float(np.sqrt(np.mean((got(x.astype(np.float32)) - y) ** 2)))
    reference = _best_chain_on_grid(x, y, -4.0, 4.0, np.arange(-3.75, 3.8, 0.25))
    assert rms == pytest.approx(fitted, rel=1e-3)
    assert fitted <= 1.01 * reference
    assert fitted < 0.3 * start
    assert got.slopes.size == t.slopes.size
    e, s, c = lt.lines()
    for j in range(e.size):
        if not lt.tail[j] and not lt.tail[j + 1]:
            assert s[j] * e[j] + c[j] == pytest.approx(s[j + 1] * e[j] + c[j + 1], abs=1e-9)
    far = np.array([-30.0, -10.0, 10.0, 30.0], np.float32)
    np.testing.assert_array_equal(got(far), t(far))  # the asymptotes stay
    assert np.all(lt.edges.data == 0) and np.all(lt.values.data == 0)  # parameters restart at the fit


def test_fit_to_data_relative_function():
    """rsqrt on inputs spanning a decade, uniform start on a much wider range: the relative error on
    the data drops by an order of magnitude; breakpoints stay positive, sorted, inside the range."""
    t = nm.approx.fit("rsqrt", segments=4, lo=0.01, hi=20.0, method="uniform")
    lt = LearnableTable(t)
    x = np.exp(np.random.default_rng(1).uniform(np.log(0.05), np.log(0.8), 4000))
    y = 1.0 / np.sqrt(x)

    def rel(tab):
        return float(np.sqrt(np.mean(((tab(x.astype(np.float32)) - y) / y) ** 2)))

    start = rel(t)
    lt.fit_to_data(x)
    assert rel(lt.table()) < 0.1 * start
    e = lt.knots()[0]
    assert np.all(e > 0) and np.all(np.diff(e) > 0)
    inner = e[lt.moving]
    assert inner.min() >= 0.01 and inner.max() <= 20.0


def test_fit_to_data_without_data_leaves_the_table():
    t = nm.approx.fit("silu", segments=4, lo=-6.0, hi=6.0)
    lt = LearnableTable(t)
    before = lt.table()
    assert lt.fit_to_data(np.array([np.nan, np.inf])) is None
    after = lt.table()
    np.testing.assert_array_equal(before.breakpoints, after.breakpoints)
    np.testing.assert_array_equal(before.intercepts, after.intercepts)


def test_program_with_learned_tables_computes_what_the_trainer_computed(tmp_path):
    """A few steps of table-aware training on a SiLU CNN, then the learned tables go into a compiled
    program: its logits equal the trainer's (float64 numpy autograd) logits to float32 precision."""
    from nmengine.program import Program

    data = nt.load_digits_split()
    net = nt.small_cnn(channels=4, seed=0, act="silu")
    x = data.x_train[:128]
    p0 = nm.compile(net.to_spec(), calibration=x, segments=4, bias_correction=False)
    learn = learnable_tables(p0.tables_by_layer())
    assert any(isinstance(t, LearnableTable) for roles in learn.values() for t in roles.values())
    opt = nt.table_optimizer(net, learn, lr=1e-3, table_lr=1e-2)
    lts = [t for roles in learn.values() for t in roles.values() if isinstance(t, LearnableTable)]
    before = [t.table() for t in lts]
    with nt.approximate(net, learn):
        nt.train(net, (data.x_train[:256], data.y_train[:256]), epochs=1, batch_size=64, optimizer=opt, progress=False)
    assert any(not np.array_equal(b.intercepts, t.table().intercepts) for b, t in zip(before, lts))  # they learned
    fixed = nt.fixed_tables(learn)
    plain = nm.compile(net.to_spec(), calibration=x, segments=4, bias_correction=False)
    tables = {**plain.tables, **{f"{l}:{r}": t for l, rs in fixed.items() for r, t in rs.items()}}
    prog = Program(plain.inputs, plain.outputs, plain.ops, plain.constants, tables)
    xs = data.x_test[:32]
    with nt.approximate(net, fixed):
        ref = nt.predict(net, xs, 32)
    np.testing.assert_allclose(prog.run(xs), ref, rtol=1e-3, atol=1e-3 * np.max(np.abs(ref)))


def test_cli_train_learn_tables(tmp_path, capsys):
    from nmengine.cli import main

    out = tmp_path / "m.nmb"
    assert (
        main(
            [
                "train",
                "--model",
                "cnn",
                "--epochs",
                "1",
                "--aat-epochs",
                "1",
                "--act",
                "silu",
                "--segments",
                "4",
                "--learn-tables",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "matrixized, after AAT" in capsys.readouterr().out
    prog = nm.load(out)
    assert prog.meta["learned_tables"] and all(prog.tables[k].meta.get("learned") for k in prog.meta["learned_tables"])
    assert main(["train", "--segments", "8", "--target", "cosine=0.9", "--quiet", "--out", str(out)]) == 2
    assert "--segments auto" in capsys.readouterr().err
