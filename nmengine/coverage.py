"""Coverage: how much of a Program runs as GEMM + PWL, and what is data movement."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .program import MOVE_KINDS, Program
from .shapes import infer_shapes, op_flops

__all__ = ["program_coverage"]


def program_coverage(program: Program, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Share of ops (and, given input shapes, of FLOPs) that run as GEMM + PWL.

    Every arithmetic op of a Program is a GEMM-family op by construction, so the GEMM+PWL share of
    arithmetic is 100%; data-movement ops are listed separately (they do no arithmetic).
    """
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
    }
    if input_shapes is not None:
        shapes = infer_shapes(program, input_shapes)
        flops = [op_flops(op, shapes) for op in program.ops]
        total = sum(flops)
        gemm_flops = sum(f for f, op in zip(flops, program.ops) if op.family == "gemm")
        out["flops"] = total
        out["gemm_pwl_flop_share"] = 1.0 if total == 0 else gemm_flops / total
    return out
