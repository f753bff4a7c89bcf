"""Training loop and evaluation.

:func:`train` runs mini-batch training with cross-entropy, an optimizer from :mod:`.optim`, a
per-step learning-rate schedule, optional shift augmentation and gradient clipping, and shows a tqdm
bar (one tick per epoch) with the loss and train/test accuracy.  Everything random (batch order,
augmentation, dropout masks) is drawn from generators derived from ``seed``, and model initialisation
from the model's own seed, so a run is reproducible bit for bit on the same machine.

:func:`evaluate` computes accuracy in eval mode without building a graph.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from . import functional as F
from .data import Dataset, batches, random_shift
from .nn import Dropout, Module
from .optim import SGD, AdamW, Constant, CosineWarmup, Optimizer, StepDecay, clip_grad_norm, param_groups
from .tensor import Tensor, no_grad

__all__ = ["train", "evaluate", "predict", "History", "blas_threads"]


@dataclass
class History:
    """Per-epoch records of a :func:`train` run."""

    loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def final_test_acc(self) -> float | None:
        return self.test_acc[-1] if self.test_acc else None

    def __repr__(self) -> str:
        t = f", test_acc={self.test_acc[-1]:.4f}" if self.test_acc else ""
        return (
            f"History({len(self.loss)} epochs, loss={self.loss[-1]:.4f}{t}, {self.seconds:.1f} s)"
            if self.loss
            else "History()"
        )


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS threads to ``n`` inside the block (no-op for None or without threadpoolctl).

    The trainer's GEMMs are small; one BLAS thread is as fast as two and does not collapse when another
    process competes for the cores, so :func:`train` uses ``threads=1`` by default.
    """
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        yield
        return
    with threadpool_limits(limits=int(n), user_api="blas"):
        yield


def _model_dtype(model: Module) -> np.dtype:
    ps = model.parameters()
    return ps[0].dtype if ps else np.dtype(np.float32)


def predict(model: Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits for ``x`` in eval mode (the model's previous mode is restored)."""
    was_training = model.training
    model.eval()
    dt = _model_dtype(model)
    outs = []
    try:
        with no_grad():
            for i in range(0, len(x), batch_size):
                outs.append(model(Tensor(np.asarray(x[i : i + batch_size], dtype=dt))).data)
    finally:
        model.train(was_training)
    return np.concatenate(outs, axis=0)


def evaluate(model: Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in eval mode."""
    return float(np.mean(predict(model, x, batch_size).argmax(axis=1) == np.asarray(y)))


def _unpack(data: Any) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """``(x_train, y_train, (x_test, y_test) or None)``: no test pair when there is no ``x_test``."""
    if isinstance(data, Dataset):
        return data.x_train, data.y_train, (data.x_test, data.y_test)
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        test = (data[2], data[3]) if len(data) == 4 and data[2] is not None else None
        return data[0], data[1], test
    raise TypeError("data must be a Dataset, (x_train, y_train) or (x_train, y_train, x_test, y_test)")


def _make_optimizer(model: Module, name: str, lr: float, weight_decay: float, momentum: float) -> Optimizer:
    groups = param_groups(model, weight_decay)
    if name == "adamw":
        return AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def train(
    model: Module,
    data: Any,
    epochs: int = 10,
    lr: float = 1e-3,
    *,
    batch_size: int = 64,
    optimizer: str | Optimizer = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    schedule: str | Callable[[int], float] | None = "cosine",
    warmup_epochs: float = 0.0,
    min_lr_factor: float = 0.0,
    step_epochs: int = 10,
    gamma: float = 0.1,
    label_smoothing: float = 0.0,
    augment_shift: int = 0,
    grad_clip: float | None = None,
    seed: int = 0,
    progress: bool = True,
    eval_every: int = 1,
    desc: str | None = None,
    threads: int | None = 1,
    teacher: np.ndarray | None = None,
    distill_weight: float = 0.5,
    temperature: float = 2.0,
) -> History:
    """Train ``model`` on ``data`` with cross-entropy; return the per-epoch :class:`History`.

    Parameters
    ----------
    data:
        A :class:`~nmengine.train.data.Dataset`, ``(x_train, y_train)`` or ``(x_train, y_train, x_test, y_test)``;
        test accuracy is measured every ``eval_every`` epochs when test data is given.
    optimizer:
        "adamw" (decoupled weight decay), "sgd" (Nesterov momentum) or an :class:`Optimizer`.  Weight decay
        is applied to weight matrices/kernels only (see :func:`~nmengine.train.optim.param_groups`).
    schedule:
        "cosine" (linear warm-up for ``warmup_epochs`` then cosine to ``min_lr_factor``), "step"
        (x ``gamma`` every ``step_epochs``), None/"constant", or a callable ``step -> factor``; applied per step.
    augment_shift:
        Random translation of training images by up to this many pixels (0 = off).
    seed:
        Seeds batch order, augmentation and dropout.
    threads:
        BLAS threads during training (None: leave the BLAS default); see :func:`blas_threads`.
    teacher, distill_weight, temperature:
        Knowledge distillation: ``teacher`` holds a teacher's logits ``(N, C)`` for the ``N`` training
        images (e.g. the exact model's, for approximation-aware fine-tuning); the loss is then
        ``(1 - distill_weight) * cross-entropy + distill_weight * distillation_loss(temperature)``
        (see :func:`~nmengine.train.functional.distillation_loss`).  Not with ``augment_shift``.

    The model is left in eval mode.
    """
    x_tr, y_tr, test = _unpack(data)
    y_tr = np.asarray(y_tr)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if teacher is not None:
        teacher = np.asarray(teacher)
        if teacher.ndim != 2 or teacher.shape[0] != len(x_tr):
            raise ValueError(
                f"teacher must hold (N, C) logits for the {len(x_tr)} training images, got {teacher.shape}"
            )
        if augment_shift:
            raise ValueError("teacher logits are per training image: not with augment_shift")
        if not 0.0 <= distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {distill_weight}")
    dt = _model_dtype(model)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    total = epochs * steps_per_epoch
    warm = int(round(warmup_epochs * steps_per_epoch))
    if callable(schedule):
        sched = schedule
    elif schedule == "cosine":
        sched = CosineWarmup(total, warm, min_lr_factor)
    elif schedule == "step":
        sched = StepDecay(step_epochs * steps_per_epoch, gamma, warm)
    elif schedule in (None, "constant"):
        sched = Constant(warm)
    else:
        raise ValueError(f"schedule must be 'cosine', 'step', 'constant', None or a callable, got {schedule!r}")
    opt = (
        optimizer if isinstance(optimizer, Optimizer) else _make_optimizer(model, optimizer, lr, weight_decay, momentum)
    )

    root = np.random.SeedSequence(seed)
    s_batches, s_aug, s_drop = root.spawn(3)
    rng_batches, rng_aug = np.random.default_rng(s_batches), np.random.default_rng(s_aug)
    drops = [m for m in model.modules() if isinstance(m, Dropout)]
    for m, s in zip(drops, s_drop.spawn(len(drops))):
        m.rng = np.random.default_rng(s)

    hist = History()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=desc or type(model).__name__, unit="epoch", leave=True)
    t0 = time.perf_counter()
    step = 0
    try:
        with blas_threads(threads):
            for epoch in range(epochs):
                model.train()
                loss_sum, correct, seen = 0.0, 0, 0
                for xb, ib in batches(x_tr, np.arange(len(x_tr)), batch_size, rng=rng_batches):
                    yb = y_tr[ib]
                    if augment_shift:
                        xb = random_shift(xb, rng_aug, augment_shift)
                    opt.set_lr_factor(sched(step))
                    logits = model(Tensor(np.asarray(xb, dtype=dt)))
                    loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
                    if teacher is not None and distill_weight > 0:
                        kd = F.distillation_loss(logits, teacher[ib], temperature=temperature)
                        loss = loss * (1.0 - distill_weight) + kd * distill_weight
                    opt.zero_grad()
                    loss.backward()
                    if grad_clip:
                        clip_grad_norm(model.parameters(), grad_clip)
                    opt.step()
                    step += 1
                    loss_sum += loss.item() * len(yb)
                    correct += int((logits.data.argmax(axis=1) == yb).sum())
                    seen += len(yb)
                    if not math.isfinite(loss_sum):
                        raise FloatingPointError(
                            f"training diverged at epoch {epoch + 1}, step {step} (loss is not finite)"
                        )
                hist.loss.append(loss_sum / seen)
                hist.train_acc.append(correct / seen)
                hist.lr.append(opt.lr)
                post = {"loss": f"{hist.loss[-1]:.4f}", "train": f"{hist.train_acc[-1]:.3f}"}
                if test is not None and ((epoch + 1) % eval_every == 0 or epoch == epochs - 1):
                    hist.test_acc.append(evaluate(model, *test))
                    post["test"] = f"{hist.test_acc[-1]:.3f}"
                if bar is not None:
                    bar.set_postfix(post)
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    hist.seconds = time.perf_counter() - t0
    return hist
