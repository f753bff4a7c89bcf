"""Quantization-aware training (QAT): the trainer's linear layers compute what an int8 program computes.

Inside ``with quantization_aware(model, group=32):`` every :class:`~nmengine.train.nn.Linear` of ``model``
runs ``fake_quant(x) @ fake_quant(W).T + b``: activations quantized symmetrically to int8 per row and K
group at run time, weights per output channel and K group (the int8 pass's dynamic per-row/K-group
configuration, docs/int8.md), each value replaced by its dequantized int8 value.  The backward pass is
the straight-through estimator: rounding counts as the identity, so ``dL/dx = g @ Wq`` and
``dL/dW = g.T @ xq``.  It composes with :func:`~nmengine.train.aat.approximate` (PWL tables and bias
shifts), so a fine-tune can see both the tables and the int8 GEMMs the compiled program uses.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .nn import Linear, Module
from .tensor import Tensor, make_result

__all__ = ["fake_quant", "int8_linear", "quantization_aware", "QuantizationAware"]


def fake_quant(a: np.ndarray, group: int | None = None) -> np.ndarray:
    """``a`` with every row (last axis) quantized to symmetric int8 per group of ``group`` values and
    dequantized: ``rne(v * 127 / max|v|) * max|v| / 127`` per (row, group); all-zero groups stay 0."""
    a = np.asarray(a)
    K = a.shape[-1]
    if K == 0:
        return a.copy()
    G = group if group and group < K else K
    ng = -(-K // G)
    pad = ng * G - K
    x = a.reshape(-1, K)
    if pad:
        x = np.concatenate([x, np.zeros((x.shape[0], pad), x.dtype)], axis=1)
    xg = x.reshape(x.shape[0], ng, G)
    amax = np.abs(xg).max(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(amax > 0, 127.0 / amax, 0.0)
    q = np.clip(np.rint(xg * inv), -127, 127)
    y = (q * (amax / 127.0)).reshape(xg.shape[0], ng * G)[:, :K]
    return y.reshape(a.shape).astype(a.dtype, copy=False)


def int8_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, group: int | None = 32) -> Tensor:
    """``fake_quant(x) @ fake_quant(weight).T + bias`` with the straight-through gradient."""
    X, W = x.data, weight.data
    if W.ndim != 2 or X.shape[-1] != W.shape[1]:
        raise ValueError(f"int8_linear: input (..., {X.shape[-1] if X.ndim else '?'}) does not match weight {W.shape}")
    Xq, Wq = fake_quant(X, group), fake_quant(W, group)
    out = Xq @ Wq.T
    parents: tuple[Tensor, ...] = (x, weight)
    if bias is not None:
        out = out + bias.data
        parents = (x, weight, bias)

    def backward(g: np.ndarray) -> tuple[np.ndarray | None, ...]:
        g2 = g.reshape(-1, W.shape[0])
        gx = g @ Wq if x.requires_grad else None
        gw = g2.T @ Xq.reshape(-1, W.shape[1]) if weight.requires_grad else None
        if bias is None:
            return gx, gw
        return gx, gw, g2.sum(axis=0)

    return make_result(out, parents, backward, "int8_linear")


class QuantizationAware:
    """Handle of :func:`quantization_aware`; ``restore()`` (or leaving the ``with``) undoes it."""

    def __init__(self, modules: Iterable[Linear], group: int | None) -> None:
        self._mods = list(modules)
        for m in self._mods:
            m.forward = self._forward(m, group)  # type: ignore[method-assign]

    @staticmethod
    def _forward(m: Linear, group: int | None) -> Any:
        def forward(x: Tensor) -> Tensor:
            y = int8_linear(x, m.weight, m.bias, group)
            shift = getattr(m, "_bias_shift", None)
            return y if shift is None else y + shift.astype(y.dtype)

        return forward

    def restore(self) -> None:
        for m in self._mods:
            m.__dict__.pop("forward", None)
        self._mods = []

    def __enter__(self) -> "QuantizationAware":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


def quantization_aware(model: Module, *, group: int | None = 32) -> QuantizationAware:
    """Make every Linear layer of ``model`` compute int8 fake-quantized products (see the module doc)."""
    if group is not None and (group <= 0 or group % 4):
        raise ValueError(f"group must be a positive multiple of 4 or None, got {group!r}")
    return QuantizationAware((m for _, m in model.named_modules() if isinstance(m, Linear)), group)
