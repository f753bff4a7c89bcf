"""Approximation-aware training (AAT): run the model with the PWL tables the compiler will emit.

Contract with the compiler
--------------------------
``tables`` maps a *spec layer name* (the name :meth:`Module.to_spec` gives the layer, which is the
module path, e.g. ``"blocks.0.attn"``) to ``{role: PWLTable}``:

==========================================  ==========================================================
layer (module)                              roles
==========================================  ==========================================================
gelu / gelu_tanh / tanh / sigmoid / silu    the op name, e.g. ``{"blocks.0.mlp.act": {"gelu": t}}``
mhsa, softmax                               ``exp`` on ``scores - rowmax(scores)``; ``reciprocal`` on
                                            the row sum of the exp values; probabilities = e * r
layernorm                                   ``rsqrt`` on ``var + eps`` (var = mean of squared centred x)
l2_normalize                                ``rsqrt`` on ``sum(x^2) + eps^2``
mean_pool with a mask                       ``reciprocal`` on the token count (unmasked: exact 1/T)
relu                                        none (stays exact)
==========================================  ==========================================================

:func:`approximate` installs a nonlinearity hook (``module._nl``) on each listed module: the module
switches to the decomposed form of its op (see :mod:`.functional`) and evaluates each role with
:func:`~nmengine.train.functional.pwl` -- ``y = table(x)`` in float32 semantics -- while roles and layers
without a table stay exact.  A :class:`~.tables.LearnableTable` in place of a PWLTable makes the table
itself trainable (its breakpoints and knot values get gradients, see :mod:`.tables`).  The backward pass uses the table's slope on the segment (the true derivative
of the function the engine computes) or, with ``straight_through=True``, the exact derivative of the
approximated function.  Masked attention keys get probability exactly 0 (their exp values are zeroed
after the table).

:func:`collect_activations` records the inputs of every role (for calibration), and
:func:`uniform_table` / :func:`calibrate_uniform_tables` build simple chord-fitted tables over the
recorded ranges, for testing the whole loop without the compiler.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from ..pwl import PWLTable
from . import functional as F
from .nn import Module
from .tables import LearnableTable, learned_pwl
from .tensor import Tensor
from .trainer import predict

__all__ = [
    "approximate",
    "exact",
    "Approximation",
    "collect_activations",
    "approximable_layers",
    "uniform_table",
    "calibrate_uniform_tables",
]

Tables = Mapping[str, Mapping[str, PWLTable]]


def approximable_layers(model: Module) -> dict[str, tuple[str, ...]]:
    """``{layer_name: roles}`` for every module whose nonlinearities can be tabulated."""
    return {path: m.nl_roles for path, m in model.named_modules() if m.nl_roles}


def _make_hook(tables: Mapping[str, PWLTable | LearnableTable], straight_through: bool) -> F.Nonlinearity:
    def hook(role: str, x: Tensor, valid: np.ndarray | None = None) -> Tensor:
        t = tables.get(role)
        if t is None:
            return F.exact_nonlinearity(role, x)
        if isinstance(t, LearnableTable):
            return learned_pwl(x, t)
        return F.pwl(x, t, role, straight_through=straight_through)

    return hook


class Approximation:
    """Handle returned by :func:`approximate`: active until :meth:`restore` (or the end of a ``with`` block)."""

    def __init__(self, model: Module, previous: dict[Module, Any], shifted: dict[Module, Any] | None = None) -> None:
        self.model = model
        self._previous = previous
        self._shifted = shifted or {}
        self.active = True

    def restore(self) -> None:
        """Put back the hooks (and bias shifts) that were installed before (normally: exact evaluation)."""
        if self.active:
            for m, prev in self._previous.items():
                object.__setattr__(m, "_nl", prev)
            for m, prev in self._shifted.items():
                object.__setattr__(m, "_bias_shift", prev)
            self.active = False

    def __enter__(self) -> "Approximation":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def approximate(
    model: Module,
    tables: Tables,
    *,
    straight_through: bool = False,
    strict: bool = True,
    bias_shifts: Mapping[str, np.ndarray] | None = None,
) -> Approximation:
    """Make ``model``'s forward (and backward) use the PWL ``tables`` (``{layer: {role: PWLTable}}``).

    Use as a context manager (``with approximate(model, tables): ...``) or keep the returned handle and
    call ``.restore()``.  With ``strict`` (default), a layer name that is not an approximable module of
    ``model`` or a role that the layer does not have raises ``KeyError``; otherwise they are ignored.

    ``bias_shifts`` (``{linear_or_conv_layer: delta (out,)}``) adds constant per-output offsets while
    approximated -- the compiler's vertical bias correction (program bias minus the layer's own bias),
    so that the trainer computes exactly what the compiled program computes.
    """
    mods = {path: m for path, m in model.named_modules() if m.nl_roles}
    previous: dict[Module, Any] = {}
    shifted: dict[Module, Any] = {}
    if bias_shifts:
        from .nn import Conv2d, Linear

        all_mods = dict(model.named_modules())
        for name, delta in bias_shifts.items():
            m = all_mods.get(name)
            if not isinstance(m, (Linear, Conv2d)):
                raise KeyError(
                    f"approximate: bias shift for {name!r}, which is not a Linear/Conv2d layer of {type(model).__name__}"
                )
            d = np.asarray(delta, dtype=np.float64).reshape(-1)
            if d.shape[0] != m.weight.shape[0]:
                raise ValueError(
                    f"approximate: bias shift for {name!r} has {d.shape[0]} values, layer has {m.weight.shape[0]} outputs"
                )
            shifted[m] = m._bias_shift
            object.__setattr__(m, "_bias_shift", d)
    for name, roles in tables.items():
        m = mods.get(name)
        if m is None:
            if strict:
                raise KeyError(
                    f"approximate: {name!r} is not an approximable layer of {type(model).__name__}; "
                    f"expected one of {sorted(mods)}"
                )
            continue
        bad = [r for r in roles if r not in m.nl_roles]
        if bad and strict:
            raise KeyError(f"approximate: layer {name!r} ({type(m).__name__}) has roles {list(m.nl_roles)}, got {bad}")
        for r, t in roles.items():
            if not isinstance(t, (PWLTable, LearnableTable)):
                raise TypeError(
                    f"approximate: tables[{name!r}][{r!r}] must be a PWLTable or LearnableTable, got {type(t).__name__}"
                )
        usable = {r: t for r, t in roles.items() if r in m.nl_roles}
        previous[m] = m._nl
        object.__setattr__(m, "_nl", _make_hook(usable, straight_through))
    return Approximation(model, previous, shifted)


def exact(model: Module) -> None:
    """Remove every approximation hook and bias shift: all nonlinearities exact again."""
    for m in model.modules():
        object.__setattr__(m, "_nl", None)
        if "_bias_shift" in m.__dict__:
            object.__setattr__(m, "_bias_shift", None)


def collect_activations(
    model: Module, x: np.ndarray, *, batch_size: int = 256, max_per_role: int | None = None, seed: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of every nonlinearity role, ``{layer_name: {role: 1-D float array}}``, over the samples ``x``.

    Layers that evaluated no role (an unmasked mean pool) are left out.

    The model runs in eval mode under its current hooks (exact, or approximated: then the recorded values
    are those the approximate pipeline produces).  Masked attention keys are not recorded.  With
    ``max_per_role`` each array is subsampled (seeded) to at most that many values.
    """
    mods = {path: m for path, m in model.named_modules() if m.nl_roles}
    rec: dict[str, dict[str, list[np.ndarray]]] = {p: {} for p in mods}
    saved = {m: m._nl for m in mods.values()}

    def recorder(path: str, inner: Callable | None) -> F.Nonlinearity:
        def hook(role: str, t: Tensor, valid: np.ndarray | None = None) -> Tensor:
            v = t.data if valid is None else t.data[np.broadcast_to(valid, t.shape)]
            rec[path].setdefault(role, []).append(np.array(v, copy=True).ravel())
            if inner is not None:
                return inner(role, t, valid)
            return F.exact_nonlinearity(role, t)

        return hook

    try:
        for path, m in mods.items():
            object.__setattr__(m, "_nl", recorder(path, saved[m]))
        predict(model, x, batch_size)
    finally:
        for m, prev in saved.items():
            object.__setattr__(m, "_nl", prev)
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {}
    for path, roles in rec.items():
        if not roles:  # e.g. an unmasked mean_pool: nothing tabulated
            continue
        out[path] = {}
        for role, parts in roles.items():
            a = np.concatenate(parts)
            if max_per_role is not None and a.size > max_per_role:
                a = a[np.sort(rng.choice(a.size, max_per_role, replace=False))]
            out[path][role] = a
    return out


def uniform_table(
    fn: str | Callable[[np.ndarray], np.ndarray], lo: float, hi: float, segments: int, *, spacing: str = "linear"
) -> PWLTable:
    """A chord-fitted PWL table: breakpoints evenly spaced on [lo, hi] (``"linear"`` or ``"geometric"``).

    Segment ``i`` is the straight line through ``(b[i], f(b[i]))`` and ``(b[i+1], f(b[i+1]))``; outside
    [lo, hi] the outer segments extend.  ``fn`` is a role name (see ``functional.EXACT_FUNCTIONS``) or a
    float64 callable.  A simple reference fit -- the compiler's tables come from ``nmengine.approx``.
    """
    name = fn if isinstance(fn, str) else getattr(fn, "__name__", None)
    f = F.EXACT_FUNCTIONS[fn] if isinstance(fn, str) else fn
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo >= hi or segments < 1:
        raise ValueError(f"uniform_table needs finite lo < hi and segments >= 1, got {lo}, {hi}, {segments}")
    if spacing == "linear":
        b = np.linspace(lo, hi, segments + 1)
    elif spacing == "geometric":
        if lo <= 0:
            raise ValueError(f"geometric spacing needs lo > 0, got {lo}")
        b = np.geomspace(lo, hi, segments + 1)
    else:
        raise ValueError(f"spacing must be 'linear' or 'geometric', got {spacing!r}")
    b = np.unique(b.astype(np.float32)).astype(np.float64)  # exact float32 breakpoints
    if b.size < 2:
        raise ValueError(f"range [{lo}, {hi}] collapses in float32")
    y = np.asarray(f(b), dtype=np.float64)
    slopes = np.diff(y) / np.diff(b)
    intercepts = y[:-1] - slopes * b[:-1]
    return PWLTable(b, slopes, intercepts, name=name, meta={"fit": "uniform-chord", "spacing": spacing})


def calibrate_uniform_tables(
    model: Module,
    x: np.ndarray,
    segments: int | Mapping[str, int] = 16,
    *,
    spacing: str | Mapping[str, str] = "auto",
    margin: float = 0.0,
) -> dict[str, dict[str, PWLTable]]:
    """Uniform chord tables for every role of every approximable layer, over the ranges seen on ``x``.

    ``segments`` / ``spacing`` may be per role (e.g. ``{"exp": 16, "rsqrt": 32, ...}``).  ``spacing="auto"``
    is geometric for ``reciprocal`` and ``rsqrt`` (whose inputs span decades, e.g. LayerNorm variances of
    nearly blank patches) and linear otherwise.  The range is the recorded [min, max] widened by ``margin``
    times its width (``exp`` tables end at 0, the row maximum).
    """
    acts = collect_activations(model, x)
    tables: dict[str, dict[str, PWLTable]] = {}
    for layer, roles in acts.items():
        tables[layer] = {}
        for role, v in roles.items():
            lo, hi = float(v.min()), float(v.max())
            w = max(hi - lo, 1e-3 * max(abs(lo), abs(hi), 1.0))
            lo, hi = lo - margin * w, hi + margin * w
            if role == "exp":
                hi = 0.0
                lo = min(lo, -1e-3)
            if role in ("reciprocal", "rsqrt"):
                lo = max(lo, float(v.min()) * 0.5, 1e-12)
            if hi <= lo:
                hi = lo + w
            n = segments[role] if isinstance(segments, Mapping) else segments
            sp = spacing.get(role, "auto") if isinstance(spacing, Mapping) else spacing
            if sp == "auto":
                sp = "geometric" if role in ("reciprocal", "rsqrt") else "linear"
            tables[layer][role] = uniform_table(role, lo, hi, int(n), spacing=sp)
    return tables
