"""The int8 GEMM of the accelerator core from Python (csrc/nm_qgemm.h): exact int8 x int8 -> int32
products with the float32 epilogue of :mod:`nmengine.kernels`.

    QuantizedMatrix(q, scale, group)      an int8 (K, N) B operand with per-(K group, column) scales,
                                          packed once for every int8 kernel
    qgemm(a, b, *, a_scale, static_scale, inv_smooth, bias, bias_row, residual, epilogue, out, kernel)
                                          epilogue(dequant(quant(a) @ b.q) + ...) in float32
    qgemm_int32(a, b, *, out, kernel)     the exact int32 product of int8 matrices
    qkernel_info() / qkernel_for(code)    which int8 kernel runs (scalar, avx2, avxvnni, avx512vnni, amx)

``NMENGINE_QKERNEL`` names the int8 kernel (default: the fastest this CPU and OS run); the scalar float
kernel (``use_kernel("scalar")``) selects the scalar int8 kernel.  docs/int8.md has the numerics.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from .kernels import (
    Epilogue,
    KernelUnavailableError,
    as_f32,
    as_vector,
    compiled_core,
    gemm_operands,
    get_num_threads,
    kernel_code,
    shape_str,
)

__all__ = ["QuantizedMatrix", "qgemm", "qgemm_int32", "qkernel_info", "qkernel_for", "QKERNEL_NAMES"]


_QKERNEL_CODES = {"auto": 0, "scalar": 1, "avx2": 2, "avxvnni": 3, "avx512vnni": 4, "amx": 5}
_QKERNEL_NAMES = {v: k for k, v in _QKERNEL_CODES.items() if v}
#: The int8 kernel names ``NMENGINE_QKERNEL`` and ``kernel=`` accept.
QKERNEL_NAMES = tuple(_QKERNEL_CODES)
_qkernel_cache: dict[int, int] = {}


def _env_qkernel() -> str:
    """The int8 kernel ``NMENGINE_QKERNEL`` names, else "auto"."""
    env = os.environ.get("NMENGINE_QKERNEL", "").strip().lower()
    if env and env not in _QKERNEL_CODES:
        raise ValueError(f"NMENGINE_QKERNEL must be one of {sorted(_QKERNEL_CODES)}, got {env!r}")
    return env or "auto"


def _qkernel_code(kernel: Optional[str]) -> int:
    """int8 kernel code (never auto).  Default: scalar inside ``use_kernel("scalar")`` /
    ``NMENGINE_KERNEL=scalar`` (the portable path everywhere), else the kernel the
    ``NMENGINE_QKERNEL`` environment variable names (one of :data:`QKERNEL_NAMES`; e.g.
    ``avx512vnni`` to measure a CPU without AMX), else the fastest the CPU and OS offer."""
    core = compiled_core()
    if kernel is None:
        key = "scalar" if kernel_code() == core.KERNEL_SCALAR else _env_qkernel()
    else:
        key = str(kernel).strip().lower() if isinstance(kernel, str) else None
        if key not in _QKERNEL_CODES:
            raise ValueError(f"int8 kernel must be one of {sorted(_QKERNEL_CODES)}, got {kernel!r}")
    code = _QKERNEL_CODES[key]
    got = _qkernel_cache.get(code)
    if got is None:
        got = _qkernel_cache[code] = int(core.qkernel_resolve(code))
    if got < 0:
        raise KernelUnavailableError(
            f"the int8 kernel {key!r} cannot run on this CPU/OS; available: {qkernel_info()['available']}"
        )
    return got


def qkernel_for(float_kernel: int) -> int:
    """The int8 kernel code that goes with a float kernel code: scalar with the scalar kernel, else the
    int8 kernel ``NMENGINE_QKERNEL`` names, else the fastest int8 kernel this CPU runs."""
    return _qkernel_code("scalar" if float_kernel == compiled_core().KERNEL_SCALAR else _env_qkernel())


def qkernel_info() -> dict[str, Any]:
    """``{"kernel": the int8 kernel the next call uses, "available": [names this CPU can run]}``."""
    core = compiled_core()
    return {
        "kernel": _QKERNEL_NAMES[_qkernel_code(None)],
        "available": [n for c, n in sorted(_QKERNEL_NAMES.items()) if core.qkernel_available(c)],
    }


def _groups(K: int, group: Optional[int]) -> tuple[int, int]:
    """(G passed to C, number of K groups) for group size ``group`` (None/0: one group)."""
    if group is None or group == 0 or group >= K:
        return 0, 1
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 0 or group % 4:
        raise ValueError(f"group must be a positive multiple of 4 (or None for one group), got {group!r}")
    return int(group), -(-K // int(group))


class QuantizedMatrix:
    """An int8 ``(K, N)`` B operand with float32 scales, packed once for the int8 kernels.

    ``q`` holds the int8 values, ``scale`` one float32 scale per (K group, column): ``(ngroups, N)``
    (``group`` None: one group, the per-output-channel case), so ``B ~= q * scale[k // group]``.
    The packed layout is the same for every int8 kernel.  Read-only; shareable between threads.
    """

    __slots__ = ("shape", "group", "ngroups", "q", "scale", "data", "colsum", "w_scale")

    def __init__(self, q: Any, scale: Any = None, group: Optional[int] = None) -> None:
        core = compiled_core()
        Q = np.asarray(q)
        if Q.dtype != np.int8 or Q.ndim != 2:
            raise ValueError(f"QuantizedMatrix expects a 2-D int8 q (K, N), got {Q.dtype} {shape_str(Q.shape)}")
        K, N = (int(d) for d in Q.shape)
        G, ng = _groups(K, group)
        self.shape = (K, N)
        self.group = G or None
        self.ngroups = ng
        self.q = np.array(Q, copy=True)
        self.q.flags.writeable = False
        self.data, self.colsum = core.qpack_b(self.q, G, ng)
        self.data.flags.writeable = False
        np_ = self.colsum.shape[1]
        self.scale = None
        self.w_scale = None
        if scale is not None:
            S = np.asarray(scale, dtype=np.float32)
            if S.ndim == 1 and ng == 1:
                S = S[None, :]
            if S.shape != (ng, N):
                raise ValueError(f"scale must have shape ({ng}, {N}) (K groups x columns), got {shape_str(S.shape)}")
            if not np.all(np.isfinite(S)):
                raise ValueError("scale must be finite")
            self.scale = np.array(S, copy=True)
            self.scale.flags.writeable = False
            self.w_scale = np.zeros((ng, np_), dtype=np.float32)
            self.w_scale[:, :N] = S
            self.w_scale.flags.writeable = False

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes + self.colsum.nbytes + (0 if self.w_scale is None else self.w_scale.nbytes))

    def dequantize(self) -> np.ndarray:
        """``q * scale`` as float32 (K, N) (raises without scales)."""
        if self.scale is None:
            raise ValueError("this QuantizedMatrix has no scales")
        rows = np.repeat(self.scale, self.group or self.shape[0], axis=0)[: self.shape[0]]
        return (self.q.astype(np.float32) * rows).astype(np.float32)

    def __repr__(self) -> str:
        return f"QuantizedMatrix(shape={self.shape}, group={self.group}, {self.nbytes} bytes)"


def _as_int8_2d(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != np.int8:
        raise TypeError(f"{name} must be an int8 array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {shape_str(arr.shape)}")
    return arr


def qgemm_int32(a: Any, b: Any, *, out: Optional[np.ndarray] = None, kernel: Optional[str] = None) -> np.ndarray:
    """Exact ``a @ b`` of int8 matrices as int32 (every kernel, bit for bit numpy's int64 product
    while it fits int32, i.e. for K < 2**17).  ``b`` is an int8 ``(K, N)`` array or a one-group
    :class:`QuantizedMatrix`; any element strides; ``out`` an optional int32 (M, N) array."""
    core = compiled_core()
    A = _as_int8_2d("a", a)
    P = b if isinstance(b, QuantizedMatrix) else QuantizedMatrix(_as_int8_2d("b", b))
    K, N = P.shape
    if P.ngroups != 1:
        raise ValueError("qgemm_int32 needs a QuantizedMatrix with one K group")
    if A.shape[1] != K:
        raise ValueError(f"qgemm_int32: a is {shape_str(A.shape)} but b is {shape_str(P.shape)}")
    if K >= 1 << 17:
        raise ValueError(f"qgemm_int32: K = {K} could overflow int32; K must be < 131072")
    M = A.shape[0]
    if out is None:
        out = np.empty((M, N), dtype=np.int32)
    elif (
        not isinstance(out, np.ndarray)
        or out.shape != (M, N)
        or out.dtype != np.int32
        or not out.flags.writeable
        or not out.flags.aligned
        or any(s % 4 for s in out.strides)
    ):
        raise ValueError(f"qgemm_int32: out must be a writeable aligned int32 array of shape ({M}, {N})")
    core.qgemm(
        A,
        P.data,
        P.colsum,
        None,
        K,
        N,
        0,
        None,
        out,
        None,
        None,
        None,
        None,
        None,
        None,
        core.ACT_NONE,
        None,
        get_num_threads(),
        _qkernel_code(kernel),
    )
    return out


def qgemm(
    a: Any,
    b: QuantizedMatrix,
    *,
    a_scale: Any = None,
    static_scale: Any = None,
    inv_smooth: Any = None,
    bias: Any = None,
    bias_row: Any = None,
    residual: Any = None,
    epilogue: Epilogue = None,
    out: Optional[np.ndarray] = None,
    kernel: Optional[str] = None,
) -> np.ndarray:
    """``out = epilogue(dequant(quant(a) @ b.q) [+ bias] [+ bias_row] [+ residual])`` in float32.

    ``a`` (M, K): float activations, quantized to int8 per row and K group of ``b`` at run time
    (``static_scale``: one scale per K group from calibration instead; ``inv_smooth`` (K,): factors
    applied to a's columns first, the SmoothQuant migration whose inverse ``b`` carries), or int8
    activations with their ``a_scale`` (M, ngroups).  ``b`` a :class:`QuantizedMatrix` with scales.
    The int32 sums are exact; see csrc/nm_qgemm.h for the float steps (identical in every kernel).
    """
    core = compiled_core()
    if not isinstance(b, QuantizedMatrix):
        raise TypeError(f"qgemm expects b as a QuantizedMatrix, got {type(b).__name__}")
    if b.w_scale is None:
        raise ValueError("qgemm needs a QuantizedMatrix with scales (use qgemm_int32 for raw int8)")
    K, N = b.shape
    ng = b.ngroups
    arr = a if isinstance(a, np.ndarray) else np.asarray(a)
    if arr.dtype == np.int8:
        A = arr
        if a_scale is None:
            raise ValueError("qgemm: int8 a needs a_scale (M, ngroups)")
    else:
        A = as_f32("a", arr)
        if a_scale is not None:
            raise ValueError("qgemm: a_scale is for int8 a only")
    if A.ndim != 2 or A.shape[1] != K:
        raise ValueError(f"qgemm: a must be (M, {K}), got {shape_str(A.shape)}")
    M = int(A.shape[0])
    sa = None
    if a_scale is not None:
        sa = np.ascontiguousarray(as_f32("a_scale", a_scale)).reshape(-1)
        if sa.size != M * ng:
            raise ValueError(f"qgemm: a_scale must have {M} x {ng} values, got {sa.size}")
    st = None
    if static_scale is not None:
        st = np.ascontiguousarray(as_f32("static_scale", static_scale)).reshape(-1)
        if st.size != ng or not np.all(np.isfinite(st)) or not np.all(st > 0):
            raise ValueError(f"qgemm: static_scale must hold {ng} positive finite values, got {st}")
    sm = None if inv_smooth is None else as_vector("inv_smooth", inv_smooth, K, "one factor per K")
    act, table, bc, br, res, C, _ = gemm_operands(
        "qgemm", M, N, (M, N), A, b.q, bias, bias_row, residual, epilogue, out
    )
    if M and N:
        core.qgemm(
            A,
            b.data,
            b.colsum,
            b.w_scale,
            K,
            N,
            b.group or 0,
            C,
            None,
            sm,
            st,
            sa,
            bc,
            br,
            res,
            act,
            table,
            get_num_threads(),
            _qkernel_code(kernel),
        )
    return C
