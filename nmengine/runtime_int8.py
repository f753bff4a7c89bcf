"""int8 GEMM ops at run time: what the runtime calls for a ``gemm`` op with ``attrs["precision"] == "int8"``.

Such an op (made by :mod:`nmengine.compile.quantize`) reads ``b`` as an int8 constant ``(K, N)`` with
``w_scale`` (ngroups, N), optionally ``inv_smooth`` (K,) and ``a_static`` (ngroups,).  Matrixized mode
runs :func:`nmengine.kernels_int8.qgemm` (activations quantized per row / K group in the core, exact int32
sums, the float epilogue with the op's PWL table); exact mode runs the float GEMM on the dequantized
weights (smoothing folded back), i.e. the quantized model with exact activations and functions.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np

from . import kernels, kernels_int8
from .program import Op, Program

__all__ = ["Int8Gemm", "prepare", "is_int8", "plan_step", "conv_step", "conv_fits"]


def is_int8(op: Op) -> bool:
    return op.kind == "gemm" and op.attrs.get("precision", "float32") == "int8"


class Int8Gemm:
    """The packed operands of one int8 GEMM op, built once; read-only afterwards (thread-safe)."""

    def __init__(self, program: Program, op: Op) -> None:
        c, args = program.constants, op.args
        where = f"int8 gemm {op.out!r} (layer {op.layer!r})"
        q = c.get(args["b"])
        if q is None or q.dtype != np.int8 or q.ndim != 2:
            raise ValueError(f"{where}: b must be a 2-D int8 constant")
        if "w_scale" not in args or args["w_scale"] not in c:
            raise ValueError(f"{where}: needs a constant w_scale operand")
        group = (op.attrs.get("quant") or {}).get("group")
        self.where = where
        self.shape = q.shape
        self.matrix = kernels_int8.QuantizedMatrix(q, c[args["w_scale"]], group)
        self.inv_smooth = c[args["inv_smooth"]] if "inv_smooth" in args else None
        self.a_static = c[args["a_static"]] if "a_static" in args else None
        if self.inv_smooth is not None and self.inv_smooth.shape != (q.shape[0],):
            raise ValueError(f"{where}: inv_smooth must have shape ({q.shape[0]},), got {self.inv_smooth.shape}")
        if self.a_static is not None and self.a_static.shape != (self.matrix.ngroups,):
            raise ValueError(f"{where}: a_static must have shape ({self.matrix.ngroups},), got {self.a_static.shape}")
        self._dequantized: Optional[np.ndarray] = None
        self._lock = threading.Lock()

    def dequantized(self) -> np.ndarray:
        """The float32 (K, N) weights this op stands for (exact mode)."""
        if self._dequantized is None:
            with self._lock:
                if self._dequantized is None:
                    w = self.matrix.dequantize()
                    if self.inv_smooth is not None:
                        w = (w * self.inv_smooth[:, None]).astype(np.float32)
                    w.flags.writeable = False
                    self._dequantized = w
        return self._dequantized

    def run(
        self, a: np.ndarray, out: np.ndarray, *, bias: Any, bias_row: Any, residual: Any, epilogue: Any, exact: bool
    ) -> np.ndarray:
        if a.ndim != 2 or a.shape[1] != self.shape[0]:
            raise ValueError(f"{self.where}: activations must be (rows, {self.shape[0]}), got {a.shape}")
        if exact:
            return kernels.gemm(
                a, self.dequantized(), bias=bias, bias_row=bias_row, residual=residual, epilogue=epilogue, out=out
            )
        return kernels_int8.qgemm(
            a,
            self.matrix,
            inv_smooth=self.inv_smooth,
            static_scale=self.a_static,
            bias=bias,
            bias_row=bias_row,
            residual=residual,
            epilogue=epilogue,
            out=out,
        )


def plan_step(
    g: Int8Gemm,
    core: Any,
    a: np.ndarray,
    out: np.ndarray,
    bias: Any,
    bias_row: Any,
    res: Any,
    act: int,
    table: Any,
    threads: int,
    float_kernel: int,
) -> Optional[tuple[Any, tuple]]:
    """A session plan step ``(core.qgemm, args)`` for this op on resolved buffers (a (M, K), out (M, N)
    C-contiguous float32; vectors contiguous float32 or None), or None when they do not fit (the plan
    then runs the interpreter, which gives the same bits)."""
    m = g.matrix
    f32 = np.float32
    if (
        a.dtype != f32
        or out.dtype != f32
        or a.ndim != 2
        or a.shape[1] != m.shape[0]
        or out.shape != (a.shape[0], m.shape[1])
    ):
        return None
    if not (a.flags.aligned and out.flags.aligned and all(s % 4 == 0 for s in a.strides + out.strides)):
        return None
    return core.qgemm, (
        a,
        m.data,
        m.colsum,
        m.w_scale,
        m.shape[0],
        m.shape[1],
        m.group or 0,
        out,
        None,
        g.inv_smooth,
        g.a_static,
        None,
        bias,
        bias_row,
        res,
        act,
        table,
        threads,
        kernels_int8.qkernel_for(float_kernel),
    )


def conv_fits(g: Int8Gemm, x: np.ndarray, cols: np.ndarray, geom: tuple[int, ...]) -> bool:
    """Whether :func:`conv_step` takes these buffers (dynamic activation scales, C-contiguous float32
    NHWC image and im2col buffer, the op's K)."""
    m = g.matrix
    f32 = np.float32
    return bool(
        g.a_static is None
        and x.dtype == f32
        and x.ndim == 4
        and x.flags.c_contiguous
        and cols.dtype == f32
        and cols.flags.c_contiguous
        and geom[0] * geom[1] * x.shape[3] == m.shape[0]
    )


def conv_step(
    g: Int8Gemm,
    core: Any,
    x: np.ndarray,
    cols: np.ndarray,
    geom: tuple[int, int, int, int, int, int],
    out: np.ndarray,
    bias: Any,
    bias_row: Any,
    res: Any,
    act: int,
    table: Any,
    threads: int,
    float_kernel: int,
) -> Optional[tuple[Any, tuple]]:
    """A session plan step ``(core.qconv_nhwc, args)`` for a channels-last int8 conv: x the NHWC image
    (C-contiguous float32), cols its im2col buffer (scratch), geom (kh, kw, sh, sw, ph, pw), out
    (rows, N); the windows are built block by block right before the int8 GEMM reads them.  None when
    the buffers do not fit (:func:`conv_fits`: the plan then runs the im2col and :func:`plan_step`)."""
    m = g.matrix
    if not conv_fits(g, x, cols, geom):
        return None
    if out.dtype != np.float32 or not out.flags.c_contiguous or out.ndim != 2 or out.shape[1] != m.shape[1]:
        raise ValueError(f"{g.where}: the conv output buffer must be C-contiguous float32 (rows, {m.shape[1]})")
    kh, kw, sh, sw, ph, pw = geom
    return core.qconv_nhwc, (
        x,
        cols,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        m.data,
        m.colsum,
        m.w_scale,
        m.shape[1],
        m.group or 0,
        out,
        g.inv_smooth,
        None,
        bias,
        bias_row,
        res,
        act,
        table,
        threads,
        kernels_int8.qkernel_for(float_kernel),
    )


def prepare(program: Program) -> dict[str, Int8Gemm]:
    """``{op output name: Int8Gemm}`` for every int8 GEMM op of ``program``."""
    return {op.out: Int8Gemm(program, op) for op in program.ops if is_int8(op)}
