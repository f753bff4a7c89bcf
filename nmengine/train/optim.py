"""Optimizers (SGD with momentum, AdamW), gradient clipping and learning-rate schedules.

Optimizers hold *parameter groups* (dicts with ``params`` and per-group hyper-parameters, as in
PyTorch) so that, e.g., biases and normalisation weights can skip weight decay (:func:`param_groups`).
Each group remembers its ``initial_lr``; a schedule is a plain callable ``step -> factor`` and
:meth:`Optimizer.set_lr_factor` sets every group's ``lr = initial_lr * factor`` (the trainer calls it
before each step).  Updates are done in place on ``param.data`` in the parameter's dtype.

* :class:`SGD`: ``v = momentum * v + (g + wd * p)``; ``p -= lr * v`` (or Nesterov).
* :class:`AdamW`: Adam with bias correction and *decoupled* weight decay ``p -= lr * wd * p``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from .tensor import Tensor

__all__ = ["Optimizer", "SGD", "AdamW", "param_groups", "clip_grad_norm", "CosineWarmup", "StepDecay", "Constant"]


class Optimizer:
    """Base class: parameter groups, ``zero_grad``, ``set_lr_factor``; subclasses implement ``step``."""

    def __init__(self, params: Iterable[Tensor] | Iterable[Mapping[str, Any]], defaults: dict[str, Any]) -> None:
        items: list[Any] = list(params)  # Tensors or group mappings: each is checked below
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        groups: list[Mapping[str, Any]] = items if isinstance(items[0], Mapping) else [{"params": items}]
        self.param_groups: list[dict[str, Any]] = []
        seen: set[int] = set()
        for g in groups:
            group = {**defaults, **g, "params": list(g["params"])}
            for p in group["params"]:
                if not isinstance(p, Tensor):
                    raise TypeError(f"optimizer parameters must be Tensors, got {type(p).__name__}")
                if id(p) in seen:
                    raise ValueError("a parameter appears in more than one group")
                seen.add(id(p))
            group["initial_lr"] = group["lr"]
            self.param_groups.append(group)
        self.state: dict[int, dict[str, Any]] = {}

    @property
    def lr(self) -> float:
        """The first group's current learning rate."""
        return float(self.param_groups[0]["lr"])

    def set_lr_factor(self, factor: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["initial_lr"] * float(factor)

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def step(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """SGD with (optionally Nesterov) momentum and L2 weight decay added to the gradient."""

    def __init__(
        self, params: Iterable[Any], lr: float, momentum: float = 0.9, weight_decay: float = 0.0, nesterov: bool = False
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "nesterov": nesterov})

    def step(self) -> None:
        for g in self.param_groups:
            lr, mom, wd = g["lr"], g["momentum"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad + wd * p.data if wd else p.grad
                if mom:
                    st = self.state.setdefault(id(p), {})
                    buf = st.get("momentum")
                    buf = d.copy() if buf is None else buf * mom + d
                    st["momentum"] = buf
                    d = d + mom * buf if g["nesterov"] else buf
                p.data -= (lr * d).astype(p.dtype, copy=False)


class AdamW(Optimizer):
    """Adam with bias correction and decoupled weight decay (Loshchilov & Hutter)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def step(self) -> None:
        for g in self.param_groups:
            lr, (b1, b2), eps, wd = g["lr"], g["betas"], g["eps"], g["weight_decay"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state.setdefault(id(p), {"t": 0, "m": np.zeros_like(p.data), "v": np.zeros_like(p.data)})
                st["t"] += 1
                t = st["t"]
                grad = p.grad
                m, v = st["m"], st["v"]
                m *= b1
                m += (1.0 - b1) * grad
                v *= b2
                v += (1.0 - b2) * grad * grad
                if wd:
                    p.data *= 1.0 - lr * wd
                step = lr / (1.0 - b1**t)
                denom = np.sqrt(v / (1.0 - b2**t)) + eps
                p.data -= (step * m / denom).astype(p.dtype, copy=False)


def param_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weight matrices/kernels with ``weight_decay``; biases, norm weights and embeddings without."""
    from .nn import Embedding, PositionAdd

    decay: list[Tensor] = []
    no_decay: list[Tensor] = []
    for m in model.modules():
        for p in m._parameters.values():
            (decay if p.ndim >= 2 and not isinstance(m, (Embedding, PositionAdd)) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Scale gradients so that their global L2 norm is at most ``max_norm``; return the norm before."""
    grads = [(p, p.grad) for p in params if p.grad is not None]
    total = math.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for _, g in grads))
    if total > max_norm > 0:
        scale = max_norm / (total + 1e-12)
        for p, g in grads:
            p.grad = g * p.dtype.type(scale)
    return total


class CosineWarmup:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``min_factor`` at ``total_steps``."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> None:
        if total_steps < 1 or warmup_steps < 0:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        self.total, self.warmup, self.min_factor = int(total_steps), int(warmup_steps), float(min_factor)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.total - self.warmup, 1)
        t = min(max(step - self.warmup, 0) / span, 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class StepDecay:
    """Multiply by ``gamma`` every ``step_size`` steps (after an optional linear warm-up)."""

    def __init__(self, step_size: int, gamma: float = 0.1, warmup_steps: int = 0) -> None:
        if step_size < 1:
            raise ValueError(f"step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma, self.warmup = int(step_size), float(gamma), int(warmup_steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        return self.gamma ** ((step - self.warmup) // self.step_size)


class Constant:
    """Factor 1 (after an optional linear warm-up)."""

    def __init__(self, warmup_steps: int = 0) -> None:
        self.warmup = int(warmup_steps)

    def __call__(self, step: int) -> float:
        return (step + 1) / self.warmup if step < self.warmup else 1.0
