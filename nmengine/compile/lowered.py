"""The compiler's input after lowering, and steps 3-5 of :func:`nmengine.compile` for it.

A frontend that lowers by itself (the ONNX importer maps graph nodes straight onto Program ops with the
rules of :mod:`.lower`) hands a :class:`LoweredGraph` to :func:`compile_lowered`, which runs what
``nm.compile`` runs after lowering: epilogue fusion (:func:`.passes.fuse`), PWL tables on default
ranges, calibration on the exact program (:func:`.calibrate.record_activations`), fitting
(:func:`.calibrate.fit_tables`) and vertical bias correction (:func:`.calibrate.correct_biases`); then
convolution networks go channels last (:func:`.channels_last.channels_last`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ..program import Op, Program
from ..spec import InputSpec
from .calibrate import correct_biases, fit_tables, record_activations
from .channels_last import channels_last as to_channels_last
from .lower import TableRequest
from .passes import fuse

__all__ = ["LoweredGraph", "compile_lowered"]


@dataclass
class LoweredGraph:
    """Ops, constants and PWL table requests of a lowered network, with its inputs and outputs."""

    inputs: dict[str, InputSpec]
    outputs: list[str]
    ops: list[Op]
    constants: dict[str, np.ndarray]
    requests: dict[str, TableRequest]
    name: str = "model"
    meta: dict[str, Any] = field(default_factory=dict)


def _post(program: Program) -> Program:
    """The compiler's post-passes on a finished program, where the package has them."""
    from .. import compile as compile_pkg

    post = getattr(compile_pkg, "fuse_program", None)  # row-kernel fusion (#11), when present
    return post(program) if callable(post) else program


def compile_lowered(
    graph: LoweredGraph,
    calibration: Any = None,
    *,
    segments: int | str | None = 32,
    method: str = "optimized",
    max_error: float | None = None,
    functions: Mapping[str, Mapping[str, Any]] | None = None,
    bias_correction: bool = True,
    max_calibration_rows: int = 65536,
    progress: bool = False,
    target: Any = None,
    precision: str = "float32",
    int8_tolerance: float = 0.006,
    channels_last: bool = True,
) -> Program:
    """Matrixize a lowered graph: the options mean what they mean for :func:`nmengine.compile`
    (``segments="auto"`` with ``target``: the budgeted compile, :mod:`.budget`; ``precision="int8"``:
    the int8 pass, :mod:`.quantize`); ``channels_last=False`` keeps convolution networks NCHW (the
    channels-last rewrite, :mod:`.channels_last`, is for speed only: same products and epilogues)."""
    from .budget import check_auto
    from .quantize import PRECISIONS, quantize

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")

    def _finish(p: Program, calib: Any = None) -> Program:
        if precision != "float32":
            # channels last first: its convolutions are plain GEMMs with the activations on the left,
            # which the int8 pass quantizes like any weight GEMM (NCHW ones stay float32)
            p = to_channels_last(p) if channels_last else p
            return _post(quantize(p, calib, tolerance=int8_tolerance))
        p = _post(p)
        return to_channels_last(p) if channels_last else p

    if not isinstance(graph, LoweredGraph):
        raise TypeError(f"compile_lowered expects a LoweredGraph, got {type(graph).__name__}")
    auto = check_auto(segments, calibration, max_error, target)
    ops = fuse(list(graph.ops), list(graph.outputs), set(graph.constants))
    constants = dict(graph.constants)
    options: dict[str, Any] = {"method": method}
    if max_error is not None:
        options["max_error"] = max_error
    else:
        options["segments"] = 32 if auto else segments
    meta = {
        **graph.meta,
        "producer": "nmengine.compile",
        "source": graph.name,
        "pwl_options": {**options, "functions": {k: dict(v) for k, v in (functions or {}).items()}},
    }
    tables = fit_tables(graph.requests, None, options, functions)
    program = Program(graph.inputs, graph.outputs, ops, constants, tables, name=graph.name, meta=meta)
    if calibration is None:
        return _finish(program)
    acts = record_activations(program, calibration, max_rows=max_calibration_rows, progress=progress)
    if not graph.requests:
        return _finish(program, calibration)
    if auto:
        from .budget import compile_budgeted

        return _finish(
            compile_budgeted(
                program,
                graph.requests,
                calibration,
                acts,
                target=target,
                options=options,
                functions=functions,
                bias_correction=bias_correction,
                progress=progress,
            ),
            calibration,
        )
    tables = fit_tables(graph.requests, acts, options, functions, progress=progress)
    constants = dict(program.constants)
    corrections = correct_biases(ops, constants, tables, acts) if bias_correction else []
    meta["calibrated"] = True
    meta["bias_corrections"] = corrections
    return _finish(
        Program(graph.inputs, graph.outputs, ops, constants, tables, name=graph.name, meta=meta), calibration
    )
