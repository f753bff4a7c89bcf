"""Coverage: what of a Program runs as GEMM + PWL, and what of the *source model* became GEMM or PWL.

Three measurements, each named for what it counts:

``ops`` / ``gemm_pwl_ops`` / ``movement_ops`` / ``arithmetic_ops_as_gemm_pwl`` / ``gemm_pwl_flop_share``
    The Program's own ops.  Every arithmetic op a Program can hold is a GEMM-family op (``gemm``,
    ``gemm_batched``, ``scale``, ``pairwise_max``: :data:`nmengine.program.GEMM_KINDS`), so these two shares
    are 1.0 *by construction* for any valid Program: they restate the IR's definition, they measure nothing.
    Data movement is listed by kind.

``work`` (given input shapes)
    The work of the Program by kind, from the cost model's per-op counts (:func:`nmengine.cost.model.op_cost`,
    one source of truth): ``gemm_macs`` (multiply-accumulates of the GEMM-family ops), ``pwl_evals``
    (PWL table lookups, fused or standalone), ``relu_evals`` (exact ReLU / max comparisons),
    ``movement_bytes`` (DRAM bytes read and written by data-movement ops at 4 bytes per element) and ``flops``
    (:func:`nmengine.shapes.op_flops`, a MAC counted as 2).

``source`` (programs compiled by :func:`nmengine.compile`, which records the source layers)
    The frontend's ModelSpec layers, each classified by what it computes (:func:`layer_parts`): a *linear*
    part (matrix products, sums, scalings, means) and/or a *nonlinear* part (activations, exp / reciprocal /
    rsqrt inside softmax, LayerNorm, L2 normalisation and masked mean pooling, max pooling).  A linear part
    counts as GEMM when the Program has a GEMM-family op for that layer (its own ops, a GEMM it was fused
    into, or the layer it was folded into); a nonlinear part counts as PWL when one of those ops evaluates a
    PWL table or an exact ReLU / max tree.  ``linear_share`` and ``nonlinear_share`` are the covered fractions
    and ``not_covered`` names the layers that fell short, so a lowering that computed a nonlinearity any
    other way would show here.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .cost.config import AcceleratorConfig
from .cost.model import op_cost
from .program import GEMM_KINDS, MOVE_KINDS, Program
from .shapes import infer_shapes, op_flops
from .spec import ELEMENTWISE_OPS, Layer

__all__ = ["program_coverage", "layer_parts", "source_layers"]

#: ModelSpec ops that are pure data movement (neither part).
_MOVEMENT_LAYERS = ("flatten", "patchify")


def layer_parts(layer: Layer) -> tuple[bool, bool]:
    """``(linear, nonlinear)``: whether ModelSpec ``layer`` has a linear and a nonlinear part.

    Linear: ``linear``, ``conv2d``, ``batchnorm2d``, ``add``, ``position_add``, ``avgpool2d``,
    ``global_avgpool``, an ``embedding`` that sums more than one table, and the sums / projections inside
    ``layernorm``, ``mhsa``, ``mean_pool``, ``l2_normalize`` and ``softmax``.  Nonlinear: the elementwise
    activations, ``maxpool2d``, ``softmax`` (exp, reciprocal), ``layernorm`` and ``l2_normalize`` (rsqrt),
    ``mhsa`` (its softmax) and a masked ``mean_pool`` (the reciprocal of the token count).
    """
    op = layer.op
    if op in ELEMENTWISE_OPS or op == "maxpool2d":
        return False, True
    if op in ("linear", "conv2d", "batchnorm2d", "add", "position_add", "avgpool2d", "global_avgpool"):
        return True, False
    if op == "embedding":
        return len(layer.weights) > 1 or len(layer.inputs) > 1, False
    if op in ("layernorm", "mhsa", "l2_normalize", "softmax"):
        return True, True
    if op == "mean_pool":
        return True, len(layer.inputs) > 1
    if op in _MOVEMENT_LAYERS:
        return False, False
    raise ValueError(f"coverage does not know the ModelSpec op {op!r} of layer {layer.name!r}")


def source_layers(layers: Sequence[Layer], folded_into: Mapping[str, str]) -> list[dict[str, Any]]:
    """The record :func:`nmengine.compile` keeps in ``program.meta["source_layers"]``: every source layer's
    name, op, parts (:func:`layer_parts`) and the layer whose ops implement it (itself unless folded)."""
    out = []
    for lyr in layers:
        linear, nonlinear = layer_parts(lyr)
        out.append(
            {
                "name": lyr.name,
                "op": lyr.op,
                "linear": linear,
                "nonlinear": nonlinear,
                "implemented_by": folded_into.get(lyr.name, lyr.name),
            }
        )
    return out


def _source(program: Program, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    by_layer: dict[str, list] = {}
    for op in program.ops:
        for name in [op.layer, *op.attrs.get("fused_layers", [])]:
            by_layer.setdefault(name, []).append(op)
    lin_total = lin_ok = nl_total = nl_ok = 0
    missing: list[str] = []
    for rec in records:
        ops = by_layer.get(rec["implemented_by"], [])
        if rec["implemented_by"] != rec["name"]:
            ops = ops + by_layer.get(rec["name"], [])
        gemm = any(op.kind in GEMM_KINDS for op in ops)
        pwl = any(op.kind == "pairwise_max" or op.epilogue.get("act") in ("pwl", "relu") for op in ops)
        ok = True
        if rec["linear"]:
            lin_total += 1
            lin_ok += gemm
            ok = ok and gemm
        if rec["nonlinear"]:
            nl_total += 1
            nl_ok += pwl
            ok = ok and pwl
        if not ok:
            missing.append(rec["name"])
    return {
        "layers": len(records),
        "linear": {"total": lin_total, "as_gemm": lin_ok},
        "nonlinear": {"total": nl_total, "as_pwl": nl_ok},
        "linear_share": 1.0 if lin_total == 0 else lin_ok / lin_total,
        "nonlinear_share": 1.0 if nl_total == 0 else nl_ok / nl_total,
        "not_covered": missing,
    }


def program_coverage(program: Program, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Coverage of ``program`` (see the module docstring for exactly what each entry counts)."""
    n_gemm = sum(op.family == "gemm" for op in program.ops)
    n_arith = sum(op.kind not in MOVE_KINDS for op in program.ops)  # every op that does arithmetic
    moves: dict[str, int] = {}
    for op in program.ops:
        if op.family == "move":
            moves[op.kind] = moves.get(op.kind, 0) + 1
    out: dict[str, Any] = {
        "ops": len(program.ops),
        "gemm_pwl_ops": n_gemm,
        "movement_ops": sum(moves.values()),
        "movement_by_kind": moves,
        "arithmetic_ops_as_gemm_pwl": 1.0 if n_arith == 0 else n_gemm / n_arith,
        "pwl_epilogues": sum(op.epilogue.get("act") == "pwl" for op in program.ops),
        # precision of every GEMM-family op ("float32", or "int8" after the int8 pass)
        "gemm_precision": {
            p: sum(op.family == "gemm" and op.attrs.get("precision", "float32") == p for op in program.ops)
            for p in ("float32", "int8")
        },
        "int8_gemms": [op.out for op in program.ops if op.attrs.get("precision") == "int8"],
    }
    if input_shapes is not None:
        shapes = infer_shapes(program, input_shapes)
        flops = [op_flops(op, shapes) for op in program.ops]
        total = sum(flops)
        gemm_flops = sum(f for f, op in zip(flops, program.ops) if op.family == "gemm")
        out["flops"] = total
        out["gemm_pwl_flop_share"] = 1.0 if total == 0 else gemm_flops / total
        cfg = AcceleratorConfig()
        producers = {op.out: op for op in program.ops}
        costs = [op_cost(i, op, shapes, cfg, producers) for i, op in enumerate(program.ops)]
        out["work"] = {
            "gemm_macs": sum(c["macs"] for c in costs),
            "pwl_evals": sum(c["pwl_evals"] for c in costs),
            "relu_evals": sum(c["relu_evals"] for c in costs),
            "movement_bytes": int(sum(c["dram_bytes"] for c in costs if c["family"] == "move")),
            "flops": total,
        }
    records = program.meta.get("source_layers")
    if isinstance(records, list):
        out["source"] = _source(program, records)
    return out
