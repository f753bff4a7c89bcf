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

from typing import Any, Iterable, Mapping

import numpy as np

from ..pwl import PWLTable
from .optim import AdamW, param_groups
from .tensor import Tensor, make_result

__all__ = [
    "LearnableTable",
    "learnable_tables",
    "learned_pwl",
    "TableAdamW",
    "table_optimizer",
    "fixed_tables",
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
        widths = (right - left)[~self.tail]
        finite = widths[np.isfinite(widths)]
        unit = float(finite.min()) if finite.size else max(float(np.max(np.abs(e0))), 1.0)
        wl, wr = (right - left)[:-1], (right - left)[1:]
        wl = np.where(np.isfinite(wl) & ~tl, wl, np.inf)
        wr = np.where(np.isfinite(wr) & ~tr, wr, np.inf)
        esc = np.minimum(wl, wr)
        self.e0, self.v0 = e0, v0
        self.escale = np.where(np.isfinite(esc), esc, unit)
        self.vscale = np.maximum(np.abs(v0), 1e-2 * max(float(np.max(np.abs(v0))), 1e-12))
        self.min_gap = float(min_gap) * unit
        self.ends = (float(b[0]), float(b[-1]))
        self.edges = Tensor(np.zeros_like(e0), requires_grad=True, dtype=np.float64)
        self.values = Tensor(np.zeros_like(v0), requires_grad=True, dtype=np.float64)

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
        n = e.size + 1
        s, c = self.s0.copy(), self.c0.copy()
        for k in np.flatnonzero(~self.tail):
            if k == 0:
                c[0] = v[0] - s[0] * e[0]
            elif k == n - 1:
                c[k] = v[k - 1] - s[k] * e[k - 1]
            else:
                s[k] = (v[k] - v[k - 1]) / (e[k] - e[k - 1])
                c[k] = v[k - 1] - s[k] * e[k - 1]
        return e, s, c

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
