"""Tables that learn: PWL breakpoints and values as trainable parameters (table-aware AAT).

A :class:`LearnableTable` starts from a compiled :class:`~nmengine.pwl.PWLTable` and keeps the part
inside the fitted range (``meta["lo"]``..``meta["hi"]``; all of it without those) *continuous*: its
parameters are the breakpoints ``e_k`` between segments and the table's value ``v_k`` at each of
them (the two breakpoints at the ends of the range stay put; their values learn).  An inner segment is the chord from ``(e_{k-1}, v_{k-1})`` to ``(e_k, v_k)``; an outermost
segment inside the range keeps its slope and passes through its knot.  Segments outside the range
(the asymptotes 0 and ``x`` of GELU/SiLU, the clamps of ``rsqrt``...) stay exactly as compiled.
The initial knot values are the mean of the two segments meeting at each edge (the compiler's minimax
fit may be slightly discontinuous there).  After every optimizer step (:class:`TableAdamW`) the
edges are projected back to sorted order with a minimum gap (and into the function's domain), so the
table stays a valid, continuous PWL function; :meth:`LearnableTable.table` rounds it to a float32
:class:`PWLTable` for the compiler.

Parameters are scaled: edge ``k`` moves in units of its smallest neighbouring gap and value ``k`` in
units of its own magnitude (floored), so one learning rate fits tables whose inputs span decades
(``rsqrt`` of LayerNorm variances) and tables on ``[-8, 8]`` alike.  Exact tables (ReLU: the
2-segment ``max(x, 0)``) and single-segment tables are frozen: :func:`learnable_tables` leaves them as
:class:`PWLTable`.

Flex-SFU (Reggiani et al., 2023) and GQA-LUT (2024) train PWL breakpoints this way.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..pwl import PWLTable
from .functional import EXACT_FUNCTIONS
from .optim import AdamW, param_groups
from .tensor import Tensor, make_result

__all__ = [
    "LearnableTable",
    "learnable_tables",
    "learned_pwl",
    "TableAdamW",
    "table_optimizer",
    "fixed_tables",
    "fit_tables_to_data",
    "FROZEN_FUNCTIONS",
]

#: Functions whose tables are exact (nothing to learn).
FROZEN_FUNCTIONS = frozenset({"relu"})
#: Relative functions: positive inputs spanning decades (their edges stay > 0).
RELATIVE = frozenset({"reciprocal", "rsqrt", "sqrt"})


class LearnableTable:
    """A continuous PWL table with trainable interior breakpoints and knot values (see module doc)."""

    def __init__(self, table: PWLTable, *, name: str | None = None, min_gap: float = 0.05) -> None:
        if not isinstance(table, PWLTable):
            raise TypeError(f"LearnableTable needs a PWLTable, got {type(table).__name__}")
        n = table.slopes.size
        if n < 2:
            raise ValueError("a 1-segment table has no breakpoint to learn")
        b = table.breakpoints.astype(np.float64)
        s = table.slopes.astype(np.float64)
        c = table.intercepts.astype(np.float64)
        self.name = name if name is not None else table.name
        self.meta = dict(table.meta)
        self.relative = self.name in RELATIVE
        lo, hi = float(self.meta.get("lo", -np.inf)), float(self.meta.get("hi", np.inf))
        tol = 1e-5 * max(abs(lo) if np.isfinite(lo) else 0.0, abs(hi) if np.isfinite(hi) else 0.0, 1e-30)
        left = np.concatenate([[-np.inf], b[1:-1]])  # segment k spans [left[k], right[k]]
        right = np.concatenate([b[1:-1], [np.inf]])
        #: segments outside the fitted range (asymptotes, clamps): frozen lines, not part of the chain
        self.tail = (right <= lo + tol) | (left >= hi - tol)
        if self.tail.all():
            raise ValueError(f"table {self.name!r} has no segment inside its range [{lo}, {hi}] to learn")
        self.s0, self.c0 = s, c
        e0 = b[1:-1]
        vl, vr = s[:-1] * e0 + c[:-1], s[1:] * e0 + c[1:]  # values of the segments left/right of each edge
        tl, tr = self.tail[:-1], self.tail[1:]
        v0 = np.where(tl & ~tr, vr, np.where(tr & ~tl, vl, 0.5 * (vl + vr)))
        #: knots next to at least one learnable segment (their values learn)
        self.free = ~(tl & tr)
        #: edges between two learnable segments (they move; the range's ends stay where the compiler put them)
        self.moving = ~tl & ~tr
        self.gap_fraction = float(min_gap)
        self.ends = (float(b[0]), float(b[-1]))
        self.edges = Tensor(np.zeros_like(e0), requires_grad=True, dtype=np.float64)
        self.values = Tensor(np.zeros_like(v0), requires_grad=True, dtype=np.float64)
        self._start(e0, v0)

    def _start(self, e0: np.ndarray, v0: np.ndarray) -> None:
        """Make ``(e0, v0)`` the origin of the parameters (zeroed) and derive their scales from it."""
        left = np.concatenate([[-np.inf], e0])  # segment k spans [left[k], right[k]]
        right = np.concatenate([e0, [np.inf]])
        tl, tr = self.tail[:-1], self.tail[1:]
        widths = (right - left)[~self.tail]
        finite = widths[np.isfinite(widths)]
        unit = float(finite.min()) if finite.size else max(float(np.max(np.abs(e0))), 1.0)
        wl, wr = (right - left)[:-1], (right - left)[1:]
        wl = np.where(np.isfinite(wl) & ~tl, wl, np.inf)
        wr = np.where(np.isfinite(wr) & ~tr, wr, np.inf)
        esc = np.minimum(wl, wr)
        self.e0, self.v0 = np.asarray(e0, np.float64), np.asarray(v0, np.float64)
        self.escale = np.where(np.isfinite(esc), esc, unit)
        self.vscale = np.maximum(np.abs(self.v0), 1e-2 * max(float(np.max(np.abs(self.v0))), 1e-12))
        self.min_gap = self.gap_fraction * unit
        self.edges.data[...] = 0.0
        self.values.data[...] = 0.0

    # -- the function ---------------------------------------------------------------------------
    @property
    def parameters(self) -> list[Tensor]:
        return [self.edges, self.values]

    def knots(self) -> tuple[np.ndarray, np.ndarray]:
        """Current breakpoints between segments and the values of the learnable segments there (float64)."""
        return (
            self.e0 + np.where(self.moving, self.edges.data, 0.0) * self.escale,
            self.v0 + np.where(self.free, self.values.data, 0.0) * self.vscale,
        )

    def lines(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(edges, slopes, intercepts) of all ``n`` segments, float64."""
        e, v = self.knots()
        return self._lines_at(e, v, self.s0)

    def _lines_at(self, e: np.ndarray, v: np.ndarray, s0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = e.size + 1
        s, c = s0.copy(), self.c0.copy()
        for k in np.flatnonzero(~self.tail):
            if k == 0:
                c[0] = v[0] - s[0] * e[0]
            elif k == n - 1:
                c[k] = v[k - 1] - s[k] * e[k - 1]
            else:
                s[k] = (v[k] - v[k - 1]) / (e[k] - e[k - 1])
                c[k] = v[k - 1] - s[k] * e[k - 1]
        return e, s, c

    # -- a start fitted to the data ------------------------------------------------------------
    def fit_to_data(
        self,
        x: np.ndarray,
        fn: Callable[[np.ndarray], np.ndarray] | None = None,
        *,
        max_points: int = 4096,
        seed: int = 0,
    ) -> float | None:
        """Re-place the moving breakpoints and refit the knot values to ``fn`` on the inputs ``x``.

        The table keeps its segment count, its range ends and its frozen tails; inside the range it
        becomes the continuous PWL function with the smallest squared error on ``x`` (relative error for
        ``rsqrt``/``reciprocal``/``sqrt``): for given breakpoints the knot values (and the slopes of
        outermost in-range segments) are a linear least-squares fit, and the breakpoints are searched
        (Nelder-Mead from the current ones, the data's quantiles and equal steps between the data's
        ends).  ``fn`` defaults to the exact function of the table's name.  The parameters restart at
        zero around the new knots.  Returns the weighted RMS error on ``x`` after the fit (None when
        ``x`` has no usable value: the table is left as it was).
        """
        from scipy.optimize import minimize

        f = fn if fn is not None else EXACT_FUNCTIONS.get(self.name or "")
        if f is None:
            raise ValueError(f"fit_to_data: no exact function for table {self.name!r}; pass fn=")
        x = np.asarray(x, np.float64).ravel()
        x = x[np.isfinite(x)]
        if self.relative:
            x = x[x > 0]
        if x.size > max_points:
            x = x[np.random.default_rng(seed).choice(x.size, max_points, replace=False)]
        if x.size == 0:
            return None
        x = np.sort(x)
        y = np.asarray(f(x), np.float64)
        ok = np.isfinite(y)
        x, y = x[ok], y[ok]
        if x.size == 0:
            return None
        w = 1.0 / np.maximum(np.abs(y), 1e-30) if self.relative else np.ones_like(y)
        n = self.s0.size
        e_now, v_now = self.knots()
        vi = np.flatnonzero(self.free)
        si = np.array([k for k in (0, n - 1) if not self.tail[k]], dtype=np.int64)
        theta_now = np.concatenate([v_now[vi], self.s0[si]])
        theta_scale = np.concatenate([self.vscale[vi], np.maximum(np.abs(self.s0[si]), 1e-6)])
        ridge = 1e-3 * float(np.sqrt(np.mean((w * y) ** 2))) * np.sqrt(x.size)

        def lines(e: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            v, s0 = v_now.copy(), self.s0.copy()
            v[vi], s0[si] = theta[: vi.size], theta[vi.size :]
            _, sl, c = self._lines_at(e, v, s0)
            return sl, c

        def solve(e: np.ndarray) -> tuple[float, np.ndarray]:
            # the table is affine in theta (knot values, outer slopes): columns by unit steps
            seg = np.searchsorted(e, x, side="right")
            k = theta_now.size
            sl0, c0 = lines(e, np.zeros(k))
            g0 = sl0[seg] * x + c0[seg]
            cols = []
            for i in range(k):
                sl, c = lines(e, np.eye(k)[i])
                cols.append((sl - sl0)[seg] * x + (c - c0)[seg])
            A = np.vstack([np.stack(cols, axis=1) * w[:, None], np.diag(ridge / theta_scale)])
            rhs = np.concatenate([(y - g0) * w, ridge * theta_now / theta_scale])
            theta = np.linalg.lstsq(A, rhs, rcond=None)[0]
            sl, c = lines(e, theta)
            r = (sl[seg] * x + c[seg] - y) * w
            return float(np.mean(r**2)), theta

        mv = np.flatnonzero(self.moving)
        if mv.size:
            fixed = e_now[~self.moving]
            lo_b = max([float(x[0])] + [float(v) for v in fixed if v < e_now[mv[0]]])
            hi_b = min([float(x[-1])] + [float(v) for v in fixed if v > e_now[mv[-1]]])
            to_t = np.log if self.relative else (lambda a: np.asarray(a, np.float64))
            from_t = np.exp if self.relative else (lambda a: np.asarray(a, np.float64))
            if not hi_b > lo_b:
                lo_b, hi_b = float(e_now[mv[0]]), float(e_now[mv[-1]]) + 1e-12
            ta, tb = float(to_t(lo_b)), float(to_t(hi_b))
            gap = 1e-4 * (tb - ta)

            def edges_of(u: np.ndarray) -> np.ndarray:
                t = np.sort(np.clip(u, ta + gap, tb - gap))
                for i in range(1, t.size):
                    t[i] = max(t[i], t[i - 1] + gap)
                for i in range(t.size - 2, -1, -1):
                    t[i] = min(t[i], t[i + 1] - gap)
                e = e_now.copy()
                e[mv] = from_t(t)
                return e

            def cost(u: np.ndarray) -> float:
                return solve(edges_of(u))[0]

            m = mv.size
            starts = [
                to_t(np.clip(e_now[mv], lo_b, hi_b)),
                to_t(np.quantile(x[(x >= lo_b) & (x <= hi_b)], (np.arange(m) + 1) / (m + 1))),
                np.linspace(ta, tb, m + 2)[1:-1],
            ]
            step = max((tb - ta) / (m + 1) / 2, 1e-12)
            best, best_cost = starts[0], cost(starts[0])
            for u0 in starts:  # Nelder-Mead from each start (the error has local minima), keep the best
                u0 = np.sort(np.clip(u0, ta, tb))
                simplex = np.vstack(
                    [u0] + [u0 + step * np.eye(m)[i] * (1 if u0[i] + step <= tb else -1) for i in range(m)]
                )
                res = minimize(
                    cost,
                    u0,
                    method="Nelder-Mead",
                    options={"initial_simplex": simplex, "maxiter": 100 * m, "xatol": 1e-4 * (tb - ta), "fatol": 0.0},
                )
                if res.fun < best_cost:
                    best, best_cost = res.x, float(res.fun)
            e_new = edges_of(best)
        else:
            e_new = e_now
        mse, theta = solve(e_new)
        v_new = v_now.copy()
        v_new[vi] = theta[: vi.size]
        self.s0 = self.s0.copy()
        self.s0[si] = theta[vi.size :]
        self._start(e_new, v_new)
        return float(np.sqrt(mse))

    def project(self) -> None:
        """Learnable edges sorted, at least ``min_gap`` apart and between their frozen neighbours."""
        e, _ = self.knots()
        free = self.moving
        e = e.copy()
        e[free] = np.sort(e[free])
        if self.relative:
            e[free] = np.maximum(e[free], np.finfo(np.float32).tiny * 4)
        g = self.min_gap
        for i in range(1, e.size):
            if free[i] and e[i] < e[i - 1] + g:
                e[i] = e[i - 1] + g
        for i in range(e.size - 2, -1, -1):
            if free[i] and e[i] > e[i + 1] - g:
                e[i] = e[i + 1] - g
        self.edges.data[...] = np.where(free, (e - self.e0) / self.escale, 0.0)
        self.values.data[~self.free] = 0.0

    def table(self) -> PWLTable:
        """The current function as a float32 :class:`PWLTable` (what the compiler stores)."""
        e, s, c = self.lines()
        lo = min(self.ends[0], float(e[0]) - self.min_gap)
        hi = max(self.ends[1], float(e[-1]) + self.min_gap)
        if self.relative and lo <= 0:
            lo = float(e[0]) / 2
        b = np.concatenate([[lo], e, [hi]]).astype(np.float32)
        for i in range(1, b.size):  # float32 rounding may merge edges min_gap apart: keep them distinct
            if b[i] <= b[i - 1]:
                b[i] = np.nextafter(b[i - 1], np.float32(np.inf))
        meta = {**self.meta, "learned": True}
        return PWLTable(b, s, c, name=self.name, meta=meta)

    def __repr__(self) -> str:
        return f"LearnableTable({self.name!r}, {self.e0.size + 1} segments, {int((~self.tail).sum())} learnable)"


def learned_pwl(x: Tensor, lt: LearnableTable) -> Tensor:
    """Evaluate ``lt`` on ``x`` with gradients to ``x``, its breakpoints and its knot values."""
    X = x.data
    e, s, c = lt.lines()
    n = s.size
    seg = np.searchsorted(e, X, side="right")
    y = (s[seg] * X + c[seg]).astype(X.dtype, copy=False)

    def backward(g: np.ndarray) -> tuple[Any, ...]:
        gx = (g * s[seg]).astype(X.dtype, copy=False) if x.requires_grad else None
        G = np.asarray(g, np.float64).ravel()
        xs = np.asarray(X, np.float64).ravel()
        k = seg.ravel()
        live = ~lt.tail[k]
        de = np.zeros(n - 1)
        dv = np.zeros(n - 1)
        left, right = live & (k == 0), live & (k == n - 1)
        if left.any():
            dv[0] += G[left].sum()
            de[0] -= s[0] * G[left].sum()
        if right.any():
            dv[-1] += G[right].sum()
            de[-1] -= s[-1] * G[right].sum()
        mid = live & (k > 0) & (k < n - 1)
        if np.any(mid):
            km, gm, xm = k[mid], G[mid], xs[mid]
            a, bb = km - 1, km  # knot indices at the segment's two ends
            t = (xm - e[a]) / (e[bb] - e[a])
            m = s[km]
            dv += np.bincount(a, gm * (1 - t), n - 1) + np.bincount(bb, gm * t, n - 1)
            de += np.bincount(a, -m * (1 - t) * gm, n - 1) + np.bincount(bb, -m * t * gm, n - 1)
        return gx, np.where(lt.moving, de * lt.escale, 0.0), np.where(lt.free, dv * lt.vscale, 0.0)

    return make_result(y, (x, lt.edges, lt.values), backward, f"learned_pwl:{lt.name}")


def learnable_tables(
    tables: Mapping[str, Mapping[str, PWLTable]], *, min_gap: float = 0.05
) -> dict[str, dict[str, Any]]:
    """``{layer: {role: LearnableTable | PWLTable}}``: every table learnable except exact/1-segment ones."""
    out: dict[str, dict[str, Any]] = {}
    for layer, roles in tables.items():
        out[layer] = {}
        for role, t in roles.items():
            frozen = (
                t.name in FROZEN_FUNCTIONS
                or role in FROZEN_FUNCTIONS
                or t.slopes.size < 2
                or t.meta.get("method") == "exact"
            )
            out[layer][role] = t if frozen else LearnableTable(t, name=t.name or role, min_gap=min_gap)
    return out


def fit_tables_to_data(
    tables: Mapping[str, Mapping[str, Any]], activations: Mapping[str, Mapping[str, np.ndarray]], *, seed: int = 0
) -> dict[str, float]:
    """Refit every :class:`LearnableTable` of ``tables`` to its inputs in ``activations`` (in place).

    ``activations`` is :func:`~nmengine.train.aat.collect_activations`' ``{layer: {role: values}}`` (the
    exact model on training images); see :meth:`LearnableTable.fit_to_data`.  Tables without recorded
    inputs stay as they are.  Returns ``{"layer:role": weighted RMS error after the fit}``.
    """
    out: dict[str, float] = {}
    for layer, roles in tables.items():
        for role, t in roles.items():
            x = activations.get(layer, {}).get(role)
            if isinstance(t, LearnableTable) and x is not None:
                err = t.fit_to_data(x, seed=seed)
                if err is not None:
                    out[f"{layer}:{role}"] = err
    return out


def fixed_tables(tables: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, PWLTable]]:
    """The current tables of :func:`learnable_tables`' result as plain :class:`PWLTable` objects."""
    return {
        layer: {role: (t.table() if isinstance(t, LearnableTable) else t) for role, t in roles.items()}
        for layer, roles in tables.items()
    }


def _learnables(tables: Mapping[str, Mapping[str, Any]]) -> list[LearnableTable]:
    return [t for roles in tables.values() for t in roles.values() if isinstance(t, LearnableTable)]


class TableAdamW(AdamW):
    """AdamW that projects the learnable tables back to valid (sorted) tables after every step."""

    def __init__(self, params: Iterable[Any], tables: Iterable[LearnableTable], **kw: Any) -> None:
        super().__init__(params, **kw)
        self.tables = list(tables)

    def step(self) -> None:
        super().step()
        for t in self.tables:
            t.project()


def table_optimizer(
    model: Any,
    tables: Mapping[str, Mapping[str, Any]],
    *,
    lr: float = 1e-4,
    table_lr: float = 1e-2,
    weight_decay: float = 0.0,
) -> TableAdamW:
    """One optimizer for the model's weights (``lr``) and the tables' parameters (``table_lr``)."""
    lts = _learnables(tables)
    groups = param_groups(model, weight_decay)
    params = [p for t in lts for p in t.parameters]
    if params:
        groups.append({"params": params, "lr": table_lr, "weight_decay": 0.0})
    return TableAdamW(groups, lts, lr=lr, weight_decay=weight_decay)
