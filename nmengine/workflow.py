"""The user's flow on real data: train exact -> calibrate -> fine-tune with PWL (AAT) -> compile -> export.

:func:`run_flow` is what ``nmengine demo`` and ``nmengine train`` run; accuracy is reported at each stage
(exact model, matrixized before AAT, matrixized after AAT) on the fixed digits test split.  This module
is a frontend: it drives the trainer, the compiler and the bundle writer, and nothing imports it back
but the commands (:mod:`nmengine.cli.train`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .program import Program

__all__ = ["FlowResult", "run_flow", "program_accuracy", "DEMO_SETTINGS"]

#: What ``nmengine demo`` runs: the CNN with SiLU activations (ReLU would be an exact 2-segment table,
#: leaving nothing to approximate) as 8-segment PWL tables; well under 2 minutes on 2 cores.
DEMO_SETTINGS: dict[str, Any] = {"model": "cnn", "epochs": 8, "aat_epochs": 2, "segments": 8, "act": "silu"}


@dataclass
class FlowResult:
    """Accuracies (fractions in [0, 1]) at every stage, the final program and timings in seconds."""

    model: str
    exact_accuracy: float
    matrixized_before_aat: float
    matrixized_after_aat: float
    exact_after_aat: float
    program: Program
    path: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        rows = [
            ("exact model", self.exact_accuracy),
            ("matrixized, before AAT", self.matrixized_before_aat),
            ("matrixized, after AAT", self.matrixized_after_aat),
        ]
        lines = [f"{self.model}: accuracy on the digits test split (360 images)"]
        lines += [f"  {name:<26s} {100 * acc:6.2f}%" for name, acc in rows]
        gap = 100 * (self.exact_accuracy - self.matrixized_after_aat)
        lines.append(f"  {'gap after AAT':<26s} {gap:+6.2f} points")
        if self.path is not None:
            lines.append(f"  bundle: {self.path}")
        lines.append("  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        return "\n".join(lines)


def program_accuracy(
    program: Program, x: np.ndarray, y: np.ndarray, *, mode: str = "matrixized", batch_size: int = 512
) -> float:
    """Top-1 accuracy of a classifier program on ``(x, y)``."""
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = program.run(x[i : i + batch_size], mode=mode)
        correct += int(np.sum(np.argmax(logits, axis=1) == y[i : i + batch_size]))
    return correct / max(len(x), 1)


def run_flow(
    model: str = "cnn",
    *,
    epochs: int | None = None,
    aat_epochs: int = 2,
    segments: int | str = 16,
    method: str = "optimized",
    out: str | Path | None = None,
    seed: int = 0,
    calibration_size: int = 256,
    progress: bool = True,
    model_options: dict[str, Any] | None = None,
    learn_tables: bool = False,
    table_lr: float = 1e-2,
    table_init: str = "data",
    distill: bool = False,
    target: Any = None,
    precision: str = "float32",
    data: Any = None,
) -> FlowResult:
    """Train ``model`` ("cnn" or "vit") on digits, fine-tune it with the engine's PWL tables, compile it.

    ``segments``/``method`` are the PWL options of every table; the same tables drive AAT and the
    exported program.  Returns the accuracies of every stage; writes a bundle when ``out`` is given.

    ``learn_tables``: AAT also trains every table's breakpoints and knot values (continuous tables, see
    :mod:`nmengine.train.tables`, learning rate ``table_lr``); the exported program keeps the learned
    tables (no bias correction: the learned intercepts and the fine-tuned biases absorb the mean error).
    ``table_init``: ``"data"`` (default) refits each learnable table to the exact model's inputs on the
    calibration images before AAT (breakpoints and values, least squares, same segment count and range;
    :func:`nmengine.train.fit_tables_to_data`), ``"compiled"`` starts from the compiler's tables as they are.
    ``distill``: AAT's loss also pulls the matrixized network's outputs towards the exact model's
    (knowledge distillation, :func:`nmengine.train.functional.distillation_loss`).
    ``segments="auto"`` with ``target`` (e.g. ``{"accuracy_drop": 0.005}``; labels are the calibration
    images' own) lets the compiler choose each table's size (:mod:`nmengine.compile.budget`).
    ``precision="int8"`` compiles the linear layers and the convolutions (channels last, K >= 16) to
    int8 GEMMs (the compiler's int8 pass), and AAT then also runs the linear layers fake-quantized
    (quantization-aware training, :mod:`nmengine.train.qat`; convolutions are not fake-quantized).
    ``data``: a :class:`~nmengine.train.data.Dataset` to use instead of the fixed digits split for
    ``seed`` (e.g. a validation split carved from the training images, for choosing settings without
    looking at the test split); accuracies are then on its ``x_test``/``y_test``.
    """
    from . import train as nt
    from .compile import compile
    from .train.qat import quantization_aware

    if table_init not in ("data", "compiled"):
        raise ValueError(f"table_init must be 'data' or 'compiled', got {table_init!r}")
    if aat_epochs < 0:
        raise ValueError(f"aat_epochs must be >= 0, got {aat_epochs}")
    timings: dict[str, float] = {}
    if data is None:
        data = nt.load_digits_split(seed=seed)
    elif not isinstance(data, nt.Dataset):
        raise TypeError(f"data must be a nmengine.train.Dataset, got {type(data).__name__}")
    config: dict[str, Any] = nt.default_config(model)
    if epochs is not None:
        config["epochs"] = epochs
    net = nt.create_model(model, seed=seed, **(model_options or {}))

    t0 = time.perf_counter()
    nt.train(net, data, seed=seed, progress=progress, desc=f"train {model}", **config)
    timings["train"] = time.perf_counter() - t0
    exact_acc = nt.evaluate(net, data.x_test, data.y_test)

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.x_train), min(calibration_size, len(data.x_train)), replace=False)
    calib = data.x_train[pick]
    pwl: dict[str, Any] = {"segments": segments, "method": method, "precision": precision}
    if segments == "auto":
        from .compile.budget import parse_target

        pwl["target"] = parse_target(target, labels=np.asarray(data.y_train[pick]))
    elif target is not None:
        raise ValueError("target= needs segments='auto'")

    t0 = time.perf_counter()
    program = compile(net.to_spec(), calibration=calib, **pwl)
    timings["compile"] = time.perf_counter() - t0
    before = program_accuracy(program, data.x_test, data.y_test)

    if aat_epochs > 0 and (program.tables or precision == "int8"):
        t0 = time.perf_counter()
        aat_config = dict(config, epochs=aat_epochs, lr=config["lr"] * 0.1, warmup_epochs=0.0)
        if distill:  # AAT learns the exact model's outputs as well as the labels
            aat_config["teacher"] = nt.predict(net, data.x_train)
        if learn_tables:
            program = _learn_tables(
                net, data, program, calib, pwl, aat_config, table_lr, seed, progress, model, table_init
            )
        else:
            # The trainer computes exactly what the program computes: its tables and its bias corrections,
            # and with int8 the fake-quantized linear layers (straight-through gradient).
            with contextlib.ExitStack() as stack:
                stack.enter_context(nt.approximate(net, program.tables_by_layer(), bias_shifts=program.bias_shifts()))
                if precision == "int8":
                    stack.enter_context(quantization_aware(net, group=32))
                nt.train(net, data, seed=seed + 1, progress=progress, desc=f"AAT {model}", **aat_config)
            program = compile(net.to_spec(), calibration=calib, **pwl)
        timings["aat"] = time.perf_counter() - t0
    after = program_accuracy(program, data.x_test, data.y_test)
    exact_after = program_accuracy(program, data.x_test, data.y_test, mode="exact")
    program.meta.update(
        {
            "dataset": "sklearn digits (fixed stratified split, 1437/360)",
            "model": model,
            "precision": precision,
            "accuracy": {
                "exact": exact_acc,
                "matrixized_before_aat": before,
                "matrixized_after_aat": after,
                "exact_after_aat": exact_after,
            },
        }
    )
    path = None
    if out is not None:
        from .bundle import save

        path = save(program, out)
    return FlowResult(model, exact_acc, before, after, exact_after, program, path, timings)


def _learn_tables(
    net: Any,
    data: Any,
    program: Program,
    calib: np.ndarray,
    pwl: dict[str, Any],
    aat_config: dict[str, Any],
    table_lr: float,
    seed: int,
    progress: bool,
    model: str,
    table_init: str = "data",
) -> Program:
    """AAT with trainable tables, starting from ``program``'s tables; returns the program to export."""
    from . import train as nt
    from .compile import compile

    # the tables' own sizes and ranges (chosen by the compiler), without bias correction: the learned
    # intercepts and the fine-tuned biases take over the mean error
    fixed = {k: program.tables[k] for k in program.tables}
    start = nt.learnable_tables(program.tables_by_layer())
    if table_init == "data":
        nt.fit_tables_to_data(start, nt.collect_activations(net, calib, max_per_role=65536, seed=seed), seed=seed)
    opt = nt.table_optimizer(
        net, start, lr=aat_config["lr"], table_lr=table_lr, weight_decay=aat_config.get("weight_decay", 0.0)
    )
    cfg = {k: v for k, v in aat_config.items() if k not in ("optimizer", "lr", "weight_decay", "momentum")}
    with nt.approximate(net, start):
        nt.train(net, data, seed=seed + 1, progress=progress, desc=f"AAT+tables {model}", optimizer=opt, **cfg)
    learned = {f"{layer}:{role}": t for layer, roles in nt.fixed_tables(start).items() for role, t in roles.items()}
    opts = {k: v for k, v in pwl.items() if k != "target"}
    if opts.get("segments") == "auto":
        opts["segments"] = 32  # only the program structure is used: the tables are the learned ones
    plain = compile(net.to_spec(), calibration=calib, bias_correction=False, **opts)
    tables = {k: learned.get(k, fixed.get(k, t)) for k, t in plain.tables.items()}
    meta = {**plain.meta, "learned_tables": sorted(learned)}
    if "budget" in program.meta:
        meta["budget"] = program.meta["budget"]
    return Program(plain.inputs, plain.outputs, plain.ops, plain.constants, tables, name=plain.name, meta=meta)
