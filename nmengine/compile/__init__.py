"""The NeuralMatrix compiler: ModelSpec -> Program of GEMM + PWL ops.

``nm.compile(spec, calibration=inputs, segments=32)`` runs, in order:

1. graph folding on a copy of the spec (BatchNorm into convs, LayerNorm affine into linears),
   see :mod:`.passes`;
2. lowering of every layer to GEMM-family ops and data movement, see :mod:`.lower` for the rules;
3. epilogue fusion (residual adds and activations into the GEMM that produces their input);
4. calibration: the exact program runs on ``calibration`` and records every PWL input, see
   :mod:`.calibrate`; without calibration data the catalog's default ranges are used;
5. PWL fitting with :func:`nmengine.approx.fit` (horizontal size optimization) and vertical bias
   correction folded into the next linear layer's bias;
6. row-kernel fusion: softmax and LayerNorm chains become ``softmax_rows`` / ``layernorm_rows`` ops
   (each keeps its chain as its declared expansion), see :mod:`.fuse_rows`.

6. with ``precision="int8"``: the int8 pass (:mod:`.quantize`) turns every weight GEMM into an int8
   GEMM, choosing per GEMM (by the error measured on the calibration data) between per-row and per
   K-group scales, SmoothQuant migration, dynamic and static activation scales.

``segments="auto"`` with a ``target`` (output cosine, accuracy drop, table bytes) chooses every
table's segment count and range from measured sensitivities instead, see :mod:`.budget`.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..coverage import source_layers
from ..program import Program
from ..spec import ModelSpec
from .calibrate import correct_biases, fit_tables, record_activations
from .channels_last import channels_last as to_channels_last
from .fuse_rows import fuse_rows
from .lower import MASK_BIAS, lower
from .passes import fold_batchnorm, fold_layernorm_affine, fuse
from .quantize import PRECISIONS, quantize

__all__ = ["compile", "lower", "MASK_BIAS", "fuse_rows", "fuse_program"]


def fuse_program(program: Program) -> Program:
    """``program`` with its softmax / LayerNorm chains fused (itself when nothing changes)."""
    ops = fuse_rows(program.ops, program.outputs, program.constants)
    if len(ops) == len(program.ops):
        return program
    return Program(
        program.inputs, program.outputs, ops, program.constants, program.tables, name=program.name, meta=program.meta
    )


def compile(  # noqa: A001 - the contract name is nm.compile
    spec: ModelSpec,
    calibration: Any = None,
    *,
    segments: int | str | None = 32,
    method: str = "optimized",
    max_error: float | None = None,
    functions: Mapping[str, Mapping[str, Any]] | None = None,
    bias_correction: bool = True,
    max_calibration_rows: int = 65536,
    pack_tokens: bool = True,
    progress: bool = False,
    target: Any = None,
    precision: str = "float32",
    int8_tolerance: float = 0.006,
) -> Program:
    """Matrixize ``spec`` into a :class:`~nmengine.program.Program`.

    Parameters
    ----------
    spec:
        The network (see :mod:`nmengine.spec`).
    calibration:
        Sample inputs (an array, a dict name -> array, or a list of either for several batches).  The
        exact model runs on them to place every PWL table's range where the data is.
    segments, method, max_error:
        Table options passed to :func:`nmengine.approx.fit` for every function.  ``segments="auto"``:
        the budgeted compile (:mod:`.budget`) picks each table's segments and range for ``target``.
    target:
        With ``segments="auto"``: ``{"cosine": 0.9999}`` (min output cosine vs exact over the
        calibration rows; the default), ``{"accuracy_drop": 0.005, "labels": y}``, ``{"bytes": 15000}``
        or several of them, a float (cosine), a string ``"cosine=0.9999,bytes=15k"`` or a
        :class:`.budget.Target`.
    functions:
        Per-function overrides, e.g. ``{"exp": {"segments": 64}, "rsqrt": {"max_error": 1e-3}}``.
    bias_correction:
        Fold each table's mean error on the calibration data into the next linear layer's bias.
    pack_tokens:
        For transformers with a key mask, compute token-wise layers on the real tokens only
        (see :func:`.lower.lower`); padding then costs nothing in the linear layers.
    precision:
        ``"float32"`` (default) or ``"int8"``: weight GEMMs in int8 (see :mod:`.quantize`).
    int8_tolerance:
        With int8, the relative output error on the calibration data a GEMM's cheapest int8
        configuration must stay within (else a more accurate one is chosen).
    """
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"compile expects a ModelSpec, got {type(spec).__name__}")
    spec.validate()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    from .budget import check_auto

    auto = check_auto(segments, calibration, max_error, target)
    folded = fold_layernorm_affine(fold_batchnorm(spec))
    ops, constants, requests = lower(folded, pack_tokens=pack_tokens)
    ops = fuse(ops, list(folded.outputs), set(constants))
    options: dict[str, Any] = {"method": method}
    if max_error is not None:
        options["max_error"] = max_error
    else:
        options["segments"] = 32 if auto else segments
    folded_into = {f: lyr.name for lyr in folded.layers for f in lyr.params.get("folded", [])}
    meta = {
        "producer": "nmengine.compile",
        "source": spec.name,
        "pack_tokens": pack_tokens,
        "pwl_options": {**options, "functions": {k: dict(v) for k, v in (functions or {}).items()}},
        "source_layers": source_layers(spec.layers, folded_into),
    }
    # Tables on default ranges first: the calibration run needs a complete (exact-mode) program.
    tables = fit_tables(requests, None, options, functions)
    program = Program(folded.inputs, folded.outputs, ops, constants, tables, name=spec.name, meta=meta)

    def finish(p: Program, calib: Any) -> Program:
        if precision != "float32":
            # convolutions go channels last (plain GEMMs, activations on the left) so the int8 pass
            # quantizes them like the linear layers; a program the rewrite does not pay for stays NCHW
            p = quantize(to_channels_last(p), calib, tolerance=int8_tolerance)
        return fuse_program(p)

    if calibration is None:
        return finish(program, None)
    # Runs (and so validates) the calibration inputs even when there is no table to fit.
    acts = record_activations(program, calibration, max_rows=max_calibration_rows, progress=progress)
    if not requests:
        return finish(program, calibration)
    if auto:
        from .budget import compile_budgeted

        return finish(
            compile_budgeted(
                program,
                requests,
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
    tables = fit_tables(requests, acts, options, functions, progress=progress)
    constants = dict(program.constants)
    corrections = correct_biases(ops, constants, tables, acts) if bias_correction else []
    meta["calibrated"] = True
    meta["bias_corrections"] = corrections
    return finish(
        Program(folded.inputs, folded.outputs, ops, constants, tables, name=spec.name, meta=meta), calibration
    )
