"""Cost model: what a Program costs on one GEMM accelerator (a systolic array with a PWL epilogue).

One room per job:

* :mod:`nmengine.cost.config`  the accelerator (:class:`AcceleratorConfig`): array, buffers, DRAM, clock, energy;
* :mod:`nmengine.cost.model`   the model and its specification: tiling, per-op work, traffic, cycles, energy,
  :func:`cost_report`;
* :mod:`nmengine.cost.report`  :class:`CostReport`: per-layer and total aggregation, table, CSV, JSON, plot;
* :mod:`nmengine.cost.bundle_report`  :func:`run_report`: the report of a saved bundle, as text (the
  ``nmengine report`` command, :mod:`nmengine.cli.cost`, prints it).

``docs/cost.md`` has the full write-up.  Everything below is importable from ``nmengine.cost``.
"""

from __future__ import annotations

from .bundle_report import run_report
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
    "DATAFLOWS",
]
