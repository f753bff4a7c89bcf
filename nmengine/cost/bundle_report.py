"""The cost report of a saved bundle (:func:`run_report`): what ``nmengine report`` prints, from Python."""

from __future__ import annotations

import os

from ..program import Program
from .config import AcceleratorConfig
from .model import cost_report, default_input_shapes, example_inputs

__all__ = ["run_report"]


def _load_program(bundle_path: str | os.PathLike) -> Program:
    from .. import bundle  # imported when a report is asked for

    obj = bundle.load(bundle_path)
    if isinstance(obj, Program):
        return obj
    prog = getattr(obj, "program", None)
    if isinstance(prog, Program):
        return prog
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], Program):
        return obj[0]
    raise TypeError(f"{bundle_path}: the bundle does not hold a Program (got {type(obj).__name__})")


def run_report(
    bundle_path: str | os.PathLike,
    config_path: str | os.PathLike | None = None,
    measure: bool = False,
    batch: int = 1,
    seq: int = 128,
    plot: str | os.PathLike | None = None,
    metric: str = "cycles",
    fmt: str = "table",
    repeat: int = 3,
    cpu_power_w: float | None = None,
) -> str:
    """``nmengine report``: the cost report of a saved bundle, as text.

    Loads the Program with :func:`nmengine.bundle.load`, takes the accelerator from ``config_path``
    (JSON; defaults otherwise) and input shapes from ``batch``/``seq``.  With ``measure`` the program
    also runs on random inputs (best of ``repeat``) and measured time per layer goes next to the
    estimate.  ``plot`` writes a bar chart of ``metric``.  ``fmt`` is ``"table"``, ``"json"`` or ``"csv"``.
    """
    if fmt not in ("table", "json", "csv"):
        raise ValueError(f"fmt must be 'table', 'json' or 'csv', got {fmt!r}")
    program = _load_program(bundle_path)
    cfg = AcceleratorConfig.from_json(config_path) if config_path else AcceleratorConfig()
    shapes = default_input_shapes(program, batch=batch, seq=seq)
    report = cost_report(program, cfg, shapes, batch=batch)
    if measure:
        inputs = example_inputs(program, shapes)
        report.attach_measurements(program.profile(inputs, repeat=repeat), cpu_power_w=cpu_power_w)
    text = report.table() if fmt == "table" else report.to_json() if fmt == "json" else report.to_csv()
    if plot:
        report.plot(plot, metric=metric)
        if fmt == "table":
            text += f"\nplot written to {os.fspath(plot)}"
    return text
