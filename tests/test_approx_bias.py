"""Tests for nmengine.approx.bias: minimax lines (per-segment vertical correction) and the
data-driven bias correction of the next layer (checked against float64 computations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from nmengine.approx import bias_correction, centered_chord, fit, mean_error, minimax_line, minimax_lines


def _gelu64(x):
    return x * special.ndtr(x)


def _lp_minimax(f, a, b, n=4001):
    """Independent discrete minimax line: the LP  min t  s.t.  |f(x) - s x - c| <= t  on n points."""
    from scipy.optimize import linprog

    x = np.linspace(a, b, n)
    y = f(x)
    one = np.ones_like(x)
    A = np.concatenate([np.stack([-x, -one, -one], axis=1), np.stack([x, one, -one], axis=1)])
    rhs = np.concatenate([-y, y])
    lp = linprog([0, 0, 1], A_ub=A, b_ub=rhs, bounds=[(None, None)] * 3, method="highs")
    assert lp.success
    return lp.x  # slope, intercept, error


def test_minimax_line_convex_is_analytic():
    # exp on [a, b]: slope = chord slope, touching point xi = ln(slope); E = half the chord gap there
    a, b = -1.0, 0.0
    s = (math.exp(b) - math.exp(a)) / (b - a)
    xi = math.log(s)
    gap = (math.exp(a) + s * (xi - a)) - math.exp(xi)
    slope, intercept, err = minimax_line("exp", a, b)
    assert slope == pytest.approx(s, rel=1e-12)
    assert err == pytest.approx(gap / 2, rel=1e-6)
    # equal ripple: the chord moved down by E, so -E at both ends and +E at xi
    line = lambda x: slope * x + intercept  # noqa: E731
    assert line(a) - math.exp(a) == pytest.approx(-gap / 2, rel=1e-6)
    assert line(b) - math.exp(b) == pytest.approx(-gap / 2, rel=1e-6)
    assert line(xi) - math.exp(xi) == pytest.approx(gap / 2, rel=1e-6)
    # the centred chord is the same line for a convex piece
    cs, cc, ce = centered_chord("exp", a, b)
    assert (cs, ce) == (pytest.approx(slope), pytest.approx(err, rel=1e-6))


def test_minimax_line_across_inflection_beats_chord():
    slope, intercept, err = minimax_line("tanh", -2.0, 2.0)
    lp_s, lp_c, best = _lp_minimax(np.tanh, -2.0, 2.0)
    assert err == pytest.approx(best, rel=1e-4) and slope == pytest.approx(lp_s, rel=1e-3)
    x = np.linspace(-2, 2, 100_001)
    assert np.abs(slope * x + intercept - np.tanh(x)).max() == pytest.approx(best, rel=1e-4)
    assert centered_chord("tanh", -2.0, 2.0)[2] > 1.3 * err
    g = minimax_line(_gelu64, -3.0, 2.0)
    assert g[2] == pytest.approx(_lp_minimax(_gelu64, -3.0, 2.0)[2], rel=1e-4)


def test_minimax_line_relative():
    slope, intercept, err = minimax_line("reciprocal", 1.0, 1.25, relative=True)
    x = np.linspace(1.0, 1.25, 100_001)
    rel = np.abs((slope * x + intercept) * x - 1.0)
    assert rel.max() == pytest.approx(err, rel=1e-4)
    # independent optimum: the linear programme  min t  s.t.  |(s x + c) x - 1| <= t  on the grid
    from scipy.optimize import linprog

    xs = np.linspace(1.0, 1.25, 4001)
    A = np.concatenate(
        [
            np.stack([xs * xs, xs, -np.ones_like(xs)], axis=1),
            np.stack([-xs * xs, -xs, -np.ones_like(xs)], axis=1),
        ]
    )
    rhs = np.concatenate([np.ones_like(xs), -np.ones_like(xs)])
    lp = linprog([0, 0, 1], A_ub=A, b_ub=rhs, bounds=[(None, None)] * 3, method="highs")
    assert lp.success
    assert err == pytest.approx(lp.x[2], rel=1e-4)
    assert slope == pytest.approx(lp.x[0], rel=1e-3)


def test_minimax_lines_vectorised_and_validation():
    a = np.array([-4.0, -1.0, 0.0, 2.0])
    b = np.array([-1.0, 0.0, 2.0, 5.0])
    s, c, e = minimax_lines("gelu", a, b)
    for i in range(4):
        si, ci, ei = minimax_line("gelu", a[i], b[i])
        assert (s[i], c[i], e[i]) == (pytest.approx(si), pytest.approx(ci), pytest.approx(ei))
    with pytest.raises(ValueError):
        minimax_lines("gelu", [1.0], [0.0])
    with pytest.raises(ValueError):
        minimax_lines("gelu", [0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="positive"):
        minimax_lines("reciprocal", [-1.0], [1.0], relative=True)
    with pytest.raises(TypeError):
        minimax_lines(3, [0.0], [1.0])  # type: ignore[arg-type]


def test_mean_error_matches_manual():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 1.2, size=(40, 7, 12))
    table = fit("gelu", segments=8)
    m = mean_error(table, "gelu", x)
    manual = (table(x.astype(np.float32)).astype(np.float64) - _gelu64(x)).reshape(-1, 12).mean(axis=0)
    assert m.shape == (12,) and m.dtype == np.float64
    np.testing.assert_allclose(m, manual, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(mean_error(table, _gelu64, x), manual, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name, ref", [("gelu", _gelu64), ("silu", lambda v: v * special.expit(v))])
def test_bias_correction_restores_mean_output(name, ref):
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 1.5, size=(64, 32, 24))  # (batch, tokens, features)
    w = rng.normal(size=(24, 10))  # GEMM layout (K, N)
    b = rng.normal(size=10)
    table = fit(name, segments=12)
    corr = bias_correction(table, name, x, w)
    assert corr.shape == (10,) and corr.dtype == np.float64
    exact = (ref(x) @ w + b).reshape(-1, 10).mean(axis=0)
    approx_y = table(x.astype(np.float32)).astype(np.float64) @ w
    before = (approx_y + b).reshape(-1, 10).mean(axis=0)
    after = (approx_y + b + corr).reshape(-1, 10).mean(axis=0)
    assert np.abs(before - exact).max() > 1e-4  # there was something to correct
    np.testing.assert_allclose(after, exact, rtol=0, atol=1e-10)


def test_bias_correction_validation():
    table = fit("tanh", segments=8)
    x = np.zeros((5, 4))
    with pytest.raises(ValueError, match=r"\(K, N\) = \(4, N\)"):
        bias_correction(table, "tanh", x, np.ones((3, 2)))
    with pytest.raises(ValueError, match="2-D"):
        bias_correction(table, "tanh", x, np.ones(4))
    with pytest.raises(ValueError, match="empty"):
        bias_correction(table, "tanh", np.zeros((0, 4)), np.ones((4, 2)))
    with pytest.raises(TypeError):
        bias_correction(table, "tanh", np.array([["a"]]), np.ones((1, 2)))
    with pytest.raises(TypeError):
        bias_correction(table, "tanh", x, np.array([["a"] * 2] * 4))
    with pytest.raises(TypeError):
        mean_error("not a table", "tanh", x)
    with pytest.raises(ValueError, match="unknown function"):
        mean_error(table, "tnah", x)
