"""Cost model: what a Program costs on one GEMM accelerator (a systolic array with a PWL epilogue).

One room per job:

* :mod:`nmengine.cost.config`  the accelerator (:class:`AcceleratorConfig`): array, buffers, DRAM, clock, energy;
* :mod:`nmengine.cost.model`   the model and its specification: tiling, per-op work, traffic, cycles, energy,
  :func:`cost_report`;
* :mod:`nmengine.cost.report`  :class:`CostReport`: per-layer and total aggregation, table, CSV, JSON, plot;
* :mod:`nmengine.cost.cli`     ``nmengine report`` (:func:`run_report` and its argument parser).

``docs/cost.md`` has the full write-up.  Everything below is importable from ``nmengine.cost``.
"""

from __future__ import annotations

from .cli import add_report_arguments, add_report_parser, report_main, run_report
from .config import DATAFLOWS, AcceleratorConfig
from .model import cost_report, default_input_shapes, example_inputs
from .report import CostReport

__all__ = [
    "AcceleratorConfig",
    "CostReport",
    "cost_report",
    "default_input_shapes",
    "example_inputs",
    "run_report",
    "add_report_arguments",
    "add_report_parser",
    "report_main",
    "DATAFLOWS",
]
