"""The accelerator core from Python: GEMM with a fused epilogue, batched GEMM, the PWL table unit.

Everything here validates and normalises its arguments, then calls the compiled core
(``nmengine._core``, C in ``csrc/``) with the GIL released::

    gemm(a, b, *, bias=None, bias_row=None, residual=None, epilogue=None, out=None)
        out[i, j] = act(a @ b [+ bias[j]] [+ bias_row[i]] [+ residual[i, j]])
    gemm_batched(a, b, *, bias=None, bias_row=None, residual=None, epilogue=None, out=None)
        the same for every batch of ``a (..., M, K)`` and ``b (..., K, N)`` (1 or 2 batch dims,
        numpy-broadcast, so a shared operand is read with stride 0 and never copied)
    pwl_apply(table, x, *, out=None)          the standalone table unit, any shape
    pack_b(b) -> PackedMatrix                 a constant B operand packed once for the current
                                              kernel; gemm(a, packed, ...) skips re-packing it
    scale(x, *, alpha, mul, row_scale, col_scale, beta, bias, bias_row, res, res_beta, epilogue, out)
                                              the diagonal GEMM (Program op "scale") in one pass
    pairwise_max(x, *, out=None)              row max by m + relu(v - m) steps in 16 fixed lanes
    set_num_threads(n) / get_num_threads()    threads of the core (default NMENGINE_NUM_THREADS or the
                                              CPUs the affinity mask and cgroup quota allow)
    kernel_info()                             which microkernel runs, its blocking, threads
    use_kernel("scalar" | "avx2" | "avx512" | "auto")
                                              context manager choosing the kernel for this thread /
                                              task (overrides the NMENGINE_KERNEL environment variable)

The int8 GEMM (``qgemm``, ``QuantizedMatrix``, ``qkernel_info``) is in :mod:`nmengine.kernels_int8`.

``epilogue`` is ``None`` (or ``"none"``), ``"relu"`` or a :class:`~nmengine.pwl.PWLTable`; it is
applied in the GEMM's registers after the last K block, bit for bit like ``PWLTable.__call__``.

Numerics: float32 in and out; other real dtypes are cast.  Each output element is one chain of
float32 FMAs (avx2 and avx512 kernels: the same bits) or multiply-adds (scalar kernel) over k within
blocks of at most ``kc``
(kernel_info), the blocks added in order; the thread count never changes a result.  NaN and Inf
propagate as in IEEE arithmetic.

Operands are passed with their numpy strides (in elements): transposed, sliced and negative-stride
views are read in place, and ``out`` may be any writeable float32 view (e.g. a transposed view
into a larger buffer).  A copy is made only for dtype casts or strides that are not a multiple of
4 bytes / unaligned data.

(About 780 lines: the Python face of the float core, kernel and thread selection included; every
wrapper shares one set of operand checks, which the int8 wrappers of :mod:`.kernels_int8` reuse.)
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import weakref
from typing import Any, Iterator, Optional, Union

import numpy as np

from .pwl import PWLTable
from .threads import usable_cpus

__all__ = [
    "gemm",
    "gemm_batched",
    "pwl_apply",
    "pack_b",
    "PackedMatrix",
    "scale",
    "scale_supported",
    "pairwise_max",
    "prepare_table",
    "set_num_threads",
    "get_num_threads",
    "kernel_info",
    "use_kernel",
    "KernelUnavailableError",
]

Epilogue = Union[None, str, PWLTable]

_KERNEL_CODES = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}
#: Name of each kernel code :func:`kernel_code` returns.
KERNEL_NAMES = {1: "scalar", 2: "avx2", 3: "avx512"}


class KernelUnavailableError(RuntimeError):
    """The requested microkernel cannot run on this CPU (e.g. ``avx2`` without AVX2/FMA)."""


# ---------------------------------------------------------------------------------------------
# The compiled core (imported on first use so that `import nmengine.kernels` never fails early)
# ---------------------------------------------------------------------------------------------
_core_mod: Any = None
_cpu_avx2: Optional[bool] = None
_cpu_avx512: Optional[bool] = None


def compiled_core() -> Any:
    """The compiled extension module ``nmengine._core`` (imported on first call).

    The runtime calls its fused row kernels (softmax, LayerNorm, row moves) directly; everything else
    goes through the checked wrappers of this module.
    """
    global _core_mod, _cpu_avx2, _cpu_avx512
    if _core_mod is None:
        try:
            from . import _core  # type: ignore[attr-defined]

            mod: Any = _core
        except ImportError as exc:  # pragma: no cover - only without a build
            raise ImportError(
                "nmengine's compiled core (nmengine._core) is not built; run "
                "`pip install -e . --no-build-isolation` or `python setup.py build_ext --inplace`"
            ) from exc
        _cpu_avx2 = bool(mod.cpu_has_avx2_fma())  # cpuid once per process (a VM exit under KVM)
        _cpu_avx512 = bool(mod.cpu_has_avx512())
        _core_mod = mod
    return _core_mod


# ---------------------------------------------------------------------------------------------
# Kernel selection: use_kernel() context > NMENGINE_KERNEL > auto
# ---------------------------------------------------------------------------------------------
_kernel_override: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("nmengine_kernel", default=None)


def _check_kernel_name(name: Any, source: str) -> str:
    key = str(name).strip().lower() if isinstance(name, str) else None
    if key not in _KERNEL_CODES:
        raise ValueError(f"{source} must be one of {sorted(_KERNEL_CODES)}, got {name!r}")
    return key


@contextlib.contextmanager
def use_kernel(name: str) -> Iterator[None]:
    """Run the core with kernel ``name`` ("scalar", "avx2", "avx512" or "auto") inside the ``with`` block.

    The choice is a context variable: it applies to the current thread / asyncio task only and is
    restored on exit.  Requesting "avx2" on a CPU without AVX2+FMA (or "avx512" without AVX-512) raises
    :class:`KernelUnavailableError` at the first GEMM call.
    """
    token = _kernel_override.set(_check_kernel_name(name, "kernel"))
    try:
        yield
    finally:
        _kernel_override.reset(token)


def kernel_code() -> int:
    """Kernel code to pass to C (never 'auto': resolved here with the cached cpuid answer)."""
    core = compiled_core()
    name = _kernel_override.get()
    if name is None:
        env = os.environ.get("NMENGINE_KERNEL", "").strip()
        name = _check_kernel_name(env, "NMENGINE_KERNEL") if env else "auto"
    if name == "auto":
        if _cpu_avx512:
            return core.KERNEL_AVX512
        return core.KERNEL_AVX2 if _cpu_avx2 else core.KERNEL_SCALAR
    if name == "avx512":
        if not _cpu_avx512:
            raise KernelUnavailableError(
                "the avx512 kernel was requested (NMENGINE_KERNEL or use_kernel) but this CPU/OS does "
                "not support AVX-512 F/BW/DQ/VL; use 'avx2', 'scalar' or 'auto'"
            )
        return core.KERNEL_AVX512
    if name == "avx2":
        if not _cpu_avx2:
            raise KernelUnavailableError(
                "the avx2 kernel was requested (NMENGINE_KERNEL or use_kernel) but this CPU/OS does "
                "not support AVX2 + FMA; use 'scalar' or 'auto'"
            )
        return core.KERNEL_AVX2
    return core.KERNEL_SCALAR


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------
_threads_lock = threading.Lock()
_num_threads: Optional[int] = None


def _default_threads() -> int:
    env = os.environ.get("NMENGINE_NUM_THREADS", "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"NMENGINE_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"NMENGINE_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    return usable_cpus()


def set_num_threads(n: int) -> None:
    """Set the number of threads every core call uses (>= 1).  Results do not depend on it."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads expects an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"set_num_threads expects n >= 1, got {n}")
    global _num_threads
    with _threads_lock:
        _num_threads = int(n)


def get_num_threads() -> int:
    """Threads the core uses: set_num_threads(), else NMENGINE_NUM_THREADS, else the CPUs this process
    may use (affinity mask and cgroup CPU quota, :func:`nmengine.threads.usable_cpus`)."""
    global _num_threads
    with _threads_lock:
        if _num_threads is None:
            _num_threads = _default_threads()
        return _num_threads


def kernel_info() -> dict[str, Any]:
    """The kernel the next call would use and its parameters.

    Returns ``{"kernel": "avx512" | "avx2" | "scalar", "cpu_avx2_fma": bool, "cpu_avx512": bool,
    "mr", "nr", "mc", "kc", "nc", "num_threads", "usable_cpus", "threads": str, "spin_us": int,
    "openmp": bool, "pool_backoffs": int}``: register tile ``mr x nr``, cache blocks ``mc/kc/nc``; ``num_threads`` the
    threads a call uses, ``usable_cpus`` what the affinity mask and the cgroup CPU quota allow;
    ``threads`` the threading backend ("pool": the core's own pthread pool, "serial" without one);
    ``spin_us`` how long an idle pool thread spins before it sleeps (``NMENGINE_SPIN_US``, default
    50 us); ``openmp`` whether the GEMM uses OpenMP (no longer: the pool replaced it);
    ``pool_backoffs`` how many times so far calls ran single-threaded for a few milliseconds because
    2-thread calls in a row waited on a worker whose core another thread held (README, "Threads").

    The pool's idle threads sleep after ``spin_us``, so nmengine does not slow numpy/OpenBLAS, ONNX
    Runtime or PyTorch calls made between its own (no ``OMP_WAIT_POLICY`` needed; README, "Threads").
    """
    core = compiled_core()
    code = kernel_code()
    info: dict[str, Any] = {
        "kernel": KERNEL_NAMES[code],
        "cpu_avx2_fma": bool(_cpu_avx2),
        "cpu_avx512": bool(_cpu_avx512),
    }
    info.update(core.get_blocking(code))
    info["num_threads"] = get_num_threads()
    info["usable_cpus"] = usable_cpus()
    info["threads"] = "pool" if core.has_threads() else "serial"
    info["spin_us"] = int(core.spin_us())
    info["openmp"] = bool(core.has_openmp())
    info["pool_backoffs"] = int(core.pool_backoffs())
    return info


# ---------------------------------------------------------------------------------------------
# Argument normalisation (shape_str, as_f32, as_vector, gemm_operands are shared with
# kernels_int8; they are not part of the user API)
# ---------------------------------------------------------------------------------------------
def shape_str(s: tuple[int, ...]) -> str:
    """A shape as numpy prints it, for error messages: ``(3,)``, ``(2, 4)``."""
    return "(" + ", ".join(str(int(d)) for d in s) + ("," if len(s) == 1 else "") + ")"


def as_f32(name: str, x: Any) -> np.ndarray:
    """x as a float32 array the core can read in place (cast/copy only when needed)."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers (float or int), got dtype {arr.dtype}")
    if arr.dtype != np.float32:  # other dtype or non-native byte order
        arr = arr.astype(np.float32)
    if not arr.flags.aligned or any(s % 4 for s in arr.strides):
        arr = np.array(arr, dtype=np.float32, order="C", copy=True)
    return arr


def as_vector(name: str, x: Any, n: int, what: str) -> np.ndarray:
    """x as a contiguous float32 ``(n,)`` vector, or a ValueError naming ``name`` and ``what``."""
    arr = as_f32(name, x)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) ({what}), got {shape_str(arr.shape)}")
    return np.ascontiguousarray(arr)


# PWLTable -> its C descriptor (PreparedTable: the arrays in C form and the kernels' register forms,
# ~30 us to build), kept while the table lives and reused while every field the descriptor is built
# from is still the same object (the arrays are read-only, so a changed table has new objects).
# id(table) -> (weak reference, the fields, prepared).
_PREPARED: dict[int, tuple[Any, tuple[Any, ...], Any]] = {}
_PREPARED_LOCK = threading.RLock()
_TABLE_FIELDS = ("hint", "edges", "slopes", "intercepts", "key_mode", "nhint", "steps", "shift", "base",
                 "origin", "scale", "xmin", "xmax")  # fmt: skip


def _prepared_table(table: PWLTable) -> Any:
    """The cached C descriptor of ``table`` (built on first use, rebuilt if the table was changed)."""
    key = id(table)
    hit = _PREPARED.get(key)  # one dict read: atomic under the GIL
    if hit is not None and hit[0]() is table:
        for f, v in zip(_TABLE_FIELDS, hit[1]):
            if getattr(table, f) is not v:
                break
        else:
            return hit[2]
    prepared = compiled_core().PreparedTable(table, keep_table=False)  # the entry must not keep it alive
    cache, lock = _PREPARED, _PREPARED_LOCK  # the callback may run while the module is torn down

    def _forget(ref: Any, key: int = key) -> None:
        with lock:
            entry = cache.get(key)
            if entry is not None and entry[0] is ref:
                del cache[key]

    with _PREPARED_LOCK:
        _PREPARED[key] = (weakref.ref(table, _forget), tuple(getattr(table, f) for f in _TABLE_FIELDS), prepared)
    return prepared


def _act(epilogue: Epilogue) -> tuple[int, Any]:
    core = compiled_core()
    if epilogue is None:
        return core.ACT_NONE, None
    if isinstance(epilogue, PWLTable):
        return core.ACT_PWL, _prepared_table(epilogue)
    if isinstance(epilogue, core.PreparedTable):
        return core.ACT_PWL, epilogue
    if isinstance(epilogue, str):
        key = epilogue.strip().lower()
        if key == "relu":
            return core.ACT_RELU, None
        if key == "none":
            return core.ACT_NONE, None
        raise ValueError(f"unknown epilogue {epilogue!r}: expected None, 'relu' or a PWLTable")
    raise TypeError(f"epilogue must be None, 'relu' or a PWLTable, got {type(epilogue).__name__}")


def _check_out(fn: str, out: Any, shape: tuple[int, ...], inputs: dict[str, Any]) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{fn}: out must be a numpy array of shape {shape_str(shape)}, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"{fn}: out must have shape {shape_str(shape)}, got {shape_str(out.shape)}")
    if out.dtype != np.float32:
        raise ValueError(f"{fn}: out must be native float32, got dtype {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{fn}: out is not writeable")
    if not out.flags.aligned or any(s % 4 for s in out.strides):
        raise ValueError(f"{fn}: out must be aligned with strides that are multiples of 4 bytes, got {out.strides}")
    if out.size:
        for name, arr in inputs.items():
            if arr is not None and isinstance(arr, np.ndarray) and np.may_share_memory(out, arr):
                raise ValueError(f"{fn}: out overlaps input {name!r}; pass a separate output buffer")
    return out


def _residual(fn: str, residual: Any, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    if residual is None:
        return None
    r = as_f32("residual", residual)
    try:
        return np.broadcast_to(r, shape)  # stride-0 view, no copy
    except ValueError:
        raise ValueError(
            f"{fn}: residual of shape {shape_str(r.shape)} is not broadcastable to the output shape {shape_str(shape)}"
        ) from None


def gemm_operands(
    fn: str,
    M: int,
    N: int,
    shape: tuple[int, ...],
    a: Any,
    b: Any,
    bias: Any,
    bias_row: Any,
    residual: Any,
    epilogue: Epilogue,
    out: Any,
):
    """The checked epilogue operands and output of a GEMM call with output ``shape`` (``(M, N)``
    last): ``(act, table, bias, bias_row, residual, out, kernel code)``."""
    act, table = _act(epilogue)
    bc = None if bias is None else as_vector("bias", bias, N, "one value per output column N")
    br = None if bias_row is None else as_vector("bias_row", bias_row, M, "one value per output row M")
    res = _residual(fn, residual, shape)
    if out is None:
        C = np.empty(shape, dtype=np.float32)
    else:
        C = _check_out(fn, out, shape, {"a": a, "b": b, "bias": bias, "bias_row": bias_row, "residual": residual})
    return act, table, bc, br, res, C, kernel_code()


def _check_rows_out(fn: str, out: Any, shape: tuple[int, ...]) -> None:
    """out of a row op: a writeable, aligned, C-contiguous float32 array of ``shape``."""
    if not isinstance(out, np.ndarray) or out.shape != shape or out.dtype != np.float32:
        raise ValueError(f"{fn}: out must be a float32 array of shape {shape_str(shape)}")
    if not out.flags.writeable or not out.flags.c_contiguous or not out.flags.aligned:
        raise ValueError(f"{fn}: out must be writeable, aligned and C-contiguous")


def _sgemm_2d(
    core: Any, A: np.ndarray, B: np.ndarray, C: np.ndarray, bc, br, res, act: int, table: Any, kernel: int
) -> None:
    """One (M, K) @ (K, N) product through the batched core entry (a 1 x 1 batch)."""
    core.sgemm_batched(
        A[None, None],
        B[None, None],
        C[None, None],
        bc,
        br,
        None if res is None else res[None, None],
        act,
        table,
        get_num_threads(),
        kernel,
    )


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------
def gemm(
    a: Any,
    b: Any,
    *,
    bias: Any = None,
    bias_row: Any = None,
    residual: Any = None,
    epilogue: Epilogue = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """``act(a @ b + bias + bias_row[:, None] + residual)`` in float32 with the epilogue fused.

    Parameters
    ----------
    a, b:
        ``(M, K)`` and ``(K, N)`` real arrays (any strides; other dtypes are cast to float32);
        ``b`` may also be a :class:`PackedMatrix` (:func:`pack_b`): same result, no re-packing.
    bias:
        ``(N,)`` column bias (added to every row), or None.
    bias_row:
        ``(M,)`` row bias (added to every column), or None.
    residual:
        An array broadcastable to ``(M, N)`` (read through stride-0 views, not copied), or None.
    epilogue:
        None / ``"none"``, ``"relu"`` or a :class:`~nmengine.pwl.PWLTable`.
    out:
        Optional writeable float32 array (any strides) of shape ``(M, N)`` not overlapping the inputs.

    Returns
    -------
    The ``(M, N)`` float32 result (``out`` when given).
    """
    core = compiled_core()
    A = as_f32("a", a)
    if isinstance(b, PackedMatrix):
        return _gemm_packed(A, b, bias, bias_row, residual, epilogue, out)
    B = as_f32("b", b)
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError(
            f"gemm expects 2-D a (M, K) and b (K, N), got a {shape_str(A.shape)} and b {shape_str(B.shape)}"
        )
    M, K = A.shape
    K2, N = B.shape
    if K != K2:
        raise ValueError(
            f"gemm: inner dimensions differ: a is {shape_str(A.shape)} (K={K}) but b is {shape_str(B.shape)} (K={K2})"
        )
    act, table, bc, br, res, C, kernel = gemm_operands(
        "gemm", M, N, (M, N), a, b, bias, bias_row, residual, epilogue, out
    )
    if M == 0 or N == 0:
        return C
    _sgemm_2d(core, A, B, C, bc, br, res, act, table, kernel)
    return C


def gemm_batched(
    a: Any,
    b: Any,
    *,
    bias: Any = None,
    bias_row: Any = None,
    residual: Any = None,
    epilogue: Epilogue = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Batched :func:`gemm`: ``out[..., :, :] = act(a[...] @ b[...] + bias + bias_row[:, None] + residual)``.

    ``a`` is ``(..., M, K)`` and ``b`` ``(..., K, N)``; their leading (batch) dimensions broadcast
    like numpy's ``matmul`` to 1 or 2 batch dimensions (an operand of rank 2 is shared by every
    batch).  Broadcast operands are read with stride 0, never copied.  ``bias`` is ``(N,)``,
    ``bias_row`` ``(M,)``, ``residual`` anything broadcastable to the output shape ``batch + (M, N)``
    (e.g. an attention mask ``(B, 1, 1, T)`` against scores ``(B, H, T, T)``).  ``out`` may be any
    writeable float32 view of the output shape (e.g. a transposed view into a ``(B, T, H, d)``
    buffer).  Products are distributed over threads; results do not depend on the thread count.
    """
    core = compiled_core()
    A = as_f32("a", a)
    B = as_f32("b", b)
    if not (2 <= A.ndim <= 4 and 2 <= B.ndim <= 4):
        raise ValueError(
            f"gemm_batched expects a (..., M, K) and b (..., K, N) with at most 2 batch dims, "
            f"got a {shape_str(A.shape)} and b {shape_str(B.shape)}"
        )
    M, K = A.shape[-2:]
    K2, N = B.shape[-2:]
    if K != K2:
        raise ValueError(
            f"gemm_batched: inner dimensions differ: a is {shape_str(A.shape)} (K={K}) but b is {shape_str(B.shape)} (K={K2})"
        )
    try:
        batch = tuple(np.broadcast_shapes(A.shape[:-2], B.shape[:-2]))
    except ValueError:
        raise ValueError(
            f"gemm_batched: batch dimensions of a {shape_str(A.shape[:-2])} and b {shape_str(B.shape[:-2])} do not broadcast"
        ) from None
    if not 1 <= len(batch) <= 2:
        raise ValueError(
            f"gemm_batched needs 1 or 2 batch dimensions, got a {shape_str(A.shape)} and b {shape_str(B.shape)} "
            f"(batch shape {shape_str(batch)}); use gemm for a single product"
        )
    shape = batch + (M, N)
    act, table, bc, br, res, C, kernel = gemm_operands(
        "gemm_batched", M, N, shape, a, b, bias, bias_row, residual, epilogue, out
    )
    if C.size == 0:
        return C
    A4 = np.broadcast_to(A, batch + (M, K))
    B4 = np.broadcast_to(B, batch + (K, N))
    C4 = C
    R4 = res
    if len(batch) == 1:
        A4, B4, C4 = A4[None], B4[None], C4[None]
        R4 = None if res is None else res[None]
    core.sgemm_batched(A4, B4, C4, bc, br, R4, act, table, get_num_threads(), kernel)
    return C


def pwl_apply(table: PWLTable, x: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """The standalone table unit: ``table(x)`` elementwise for any shape, in float32.

    Bit-identical to ``table(x)`` (PWLTable.__call__) and to the fused GEMM epilogue.  ``out`` may
    be ``x`` itself (in place) or a separate writeable float32 array of ``x``'s shape.
    """
    core = compiled_core()
    if not isinstance(table, (PWLTable, core.PreparedTable)):
        raise TypeError(f"pwl_apply expects a PWLTable, got {type(table).__name__}")
    X = as_f32("x", x)
    if out is None:
        Y = np.empty(X.shape, dtype=np.float32)
    else:
        if not isinstance(out, np.ndarray):
            raise ValueError(f"pwl_apply: out must be a numpy array, got {type(out).__name__}")
        if out.shape != X.shape:
            raise ValueError(f"pwl_apply: out must have shape {shape_str(X.shape)}, got {shape_str(out.shape)}")
        if out.dtype != np.float32:
            raise ValueError(f"pwl_apply: out must be native float32, got dtype {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("pwl_apply: out is not writeable")
        Y = out
    kernel = kernel_code()
    if X.size == 0:
        return Y
    if isinstance(table, PWLTable):
        table = _prepared_table(table)
    same = Y is X or (Y.__array_interface__["data"][0] == X.__array_interface__["data"][0] and Y.strides == X.strides)
    if not same and np.may_share_memory(X, Y):
        # partial overlap: evaluate from a private copy
        X = X.copy()
    xc = X if X.flags.c_contiguous else np.ascontiguousarray(X)
    if Y.flags.c_contiguous and Y.flags.aligned:
        core.pwl_apply(table, xc.reshape(-1), Y.reshape(-1), get_num_threads(), kernel)
    else:
        tmp = np.empty(X.shape, dtype=np.float32)
        core.pwl_apply(table, xc.reshape(-1), tmp.reshape(-1), get_num_threads(), kernel)
        Y[...] = tmp
    return Y


# ---------------------------------------------------------------------------------------------
# Pre-packed constant B operands
# ---------------------------------------------------------------------------------------------
class PackedMatrix:
    """A ``(K, N)`` B operand packed once into the GEMM kernel's micro-panel layout.

    Made by :func:`pack_b` for the kernel that is current then (``kernel``).  ``gemm(a, packed)``
    reads the panels directly instead of packing ``b`` on every call; the arithmetic is unchanged,
    so results are bit-identical to ``gemm(a, b)``.  When the current kernel differs from the one
    it was packed for (``use_kernel``), ``gemm`` uses ``source`` (the original matrix) instead.
    Read-only after construction, so one instance may be shared by any number of threads.
    """

    __slots__ = ("shape", "kernel", "data", "source")

    def __init__(self, b: Any, kernel: Optional[str] = None, *, copy: bool = True) -> None:
        core = compiled_core()
        B = as_f32("b", b)
        if B.ndim != 2:
            raise ValueError(f"pack_b expects a 2-D b (K, N), got {shape_str(B.shape)}")
        code = kernel_code() if kernel is None else _code_for(kernel)
        self.shape = (int(B.shape[0]), int(B.shape[1]))
        self.kernel = code
        if copy and B is b:
            B = B.copy()  # private: later writes to b cannot make source and data disagree
        if B is not b:
            B.flags.writeable = False
        self.source = B
        self.data = core.pack_b(self.source, code)
        self.data.flags.writeable = False

    @property
    def kernel_name(self) -> str:
        return KERNEL_NAMES[self.kernel]

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def __repr__(self) -> str:
        return f"PackedMatrix(shape={self.shape}, kernel={self.kernel_name!r}, {self.nbytes} bytes)"


def _code_for(name: str) -> int:
    token = _kernel_override.set(_check_kernel_name(name, "kernel"))
    try:
        return kernel_code()
    finally:
        _kernel_override.reset(token)


def pack_b(b: Any, kernel: Optional[str] = None, *, copy: bool = True) -> PackedMatrix:
    """Pack ``b (K, N)`` once for ``kernel`` (default: the kernel current now); see PackedMatrix.

    ``copy=False`` keeps a reference to ``b`` (when it is float32 already) as the fallback operand
    instead of a private copy: the caller promises never to modify ``b`` afterwards."""
    return PackedMatrix(b, kernel, copy=copy)


def prepare_table(table: PWLTable) -> Any:
    """The C descriptor of a PWLTable (its arrays in C form and the kernels' register forms), built
    once; accepted wherever the core takes a table.  The functions of this module already keep one
    per live table (rebuilt if the table's fields are replaced), so this is for holding it explicitly."""
    if not isinstance(table, PWLTable):
        raise TypeError(f"prepare_table expects a PWLTable, got {type(table).__name__}")
    return compiled_core().PreparedTable(table)


def _gemm_packed(A: np.ndarray, P: PackedMatrix, bias, bias_row, residual, epilogue, out) -> np.ndarray:
    core = compiled_core()
    if A.ndim != 2:
        raise ValueError(f"gemm expects 2-D a (M, K), got a {shape_str(A.shape)}")
    M, K = A.shape
    K2, N = P.shape
    if K != K2:
        raise ValueError(
            f"gemm: inner dimensions differ: a is {shape_str(A.shape)} (K={K}) but b is packed {shape_str(P.shape)} (K={K2})"
        )
    act, table, bc, br, res, C, kernel = gemm_operands(
        "gemm", M, N, (M, N), A, P.source, bias, bias_row, residual, epilogue, out
    )
    if M == 0 or N == 0:
        return C
    if kernel != P.kernel:
        _sgemm_2d(core, A, P.source, C, bc, br, res, act, table, kernel)
    else:
        core.sgemm_packed(A, P.data, N, C, bc, br, res, act, table, get_num_threads(), kernel)
    return C


# ---------------------------------------------------------------------------------------------
# Row-wise GEMM-family ops: scale (diagonal GEMM) and the pairwise-max tree
# ---------------------------------------------------------------------------------------------
#: Operand roles of :func:`scale` in the order the C core takes them.
SCALE_ROLES = ("mul", "row_scale", "col_scale", "bias", "bias_row", "res")


def _bc_mode(core: Any, arr: np.ndarray, shape: tuple[int, ...]) -> Optional[int]:
    """How arr broadcasts against the output shape (..., n), or None when the C kernel cannot."""
    s = arr.shape
    if s == shape:
        return core.BC_FULL
    if arr.size == 1 and len(s) <= len(shape):
        return core.BC_SCALAR
    if len(s) == len(shape) and s[-1] == 1 and s[:-1] == shape[:-1]:
        return core.BC_ROW
    if s[-1:] == shape[-1:] and all(d == 1 for d in s[:-1]) and len(s) <= len(shape):
        return core.BC_COL
    return None


def scale_supported(x: Any, **operands: Any) -> bool:
    """True when :func:`scale` covers these operands (all float32; x of the output's shape; every
    operand full, a ``[..., 1]`` row vector, a vector over the last axis, or a single value)."""
    return _scale_modes(x, operands) is not None


def _scale_modes(x: Any, operands: dict[str, Any]) -> Optional[tuple[tuple[int, ...], dict[str, int]]]:
    core = compiled_core()
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim == 0:
        return None
    shape = x.shape
    modes = {}
    for role, v in operands.items():
        if v is None:
            continue
        if not isinstance(v, np.ndarray) or v.dtype != np.float32 or v.ndim == 0 and v.size != 1:
            return None
        m = _bc_mode(core, v, shape) if v.ndim else core.BC_SCALAR
        if m is None:
            return None
        modes[role] = m
    return shape, modes


def _c32(v: np.ndarray) -> np.ndarray:
    return v if v.flags.c_contiguous and v.flags.aligned else np.ascontiguousarray(v)


def scale(
    x: Any,
    *,
    alpha: float = 1.0,
    mul: Any = None,
    row_scale: Any = None,
    col_scale: Any = None,
    beta: float = 0.0,
    bias: Any = None,
    bias_row: Any = None,
    res: Any = None,
    res_beta: float = 1.0,
    epilogue: Epilogue = None,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """The Program's ``scale`` op (a diagonal GEMM) in one pass over the rows:

    ``act(alpha * x * mul * row_scale * col_scale + beta + bias + bias_row + res_beta * res)``,
    evaluated left to right with one float32 rounding per operation (``res_beta`` of +-1 is an
    add/subtract, other values ``y + (res_beta * res)``), so it gives the bits of the same numpy
    expression evaluated step by step.  ``x`` is float32 and fixes the output shape ``(..., n)``;
    each operand is float32 and either of that shape, a ``(..., 1)`` column broadcast along the last
    axis (``row_scale``/``bias_row`` in the Program), a vector ``(n,)`` over it, or a single value.
    Other broadcasts or dtypes raise ValueError (see :func:`scale_supported`).  ``epilogue`` as in
    :func:`gemm`; ``out`` a C-contiguous float32 array of x's shape (may be ``x``).
    """
    core = compiled_core()
    ops = {"mul": mul, "row_scale": row_scale, "col_scale": col_scale, "bias": bias, "bias_row": bias_row, "res": res}
    got = _scale_modes(x, ops)
    if got is None:
        raise ValueError(
            "scale: operands must be float32, x of the output shape and every other operand of "
            "x's shape, (..., 1), (n,) or a single value"
        )
    shape, modes = got
    act, table = _act(epilogue)
    if out is None:
        Y = np.empty(shape, dtype=np.float32)
    else:
        _check_rows_out("scale", out, shape)
        if out.size:
            for name, arr in ops.items():
                if arr is not None and np.may_share_memory(out, arr):
                    raise ValueError(f"scale: out overlaps {name!r}; pass a separate output buffer")
            if (
                out is not x
                and np.may_share_memory(out, x)
                and not (
                    out.__array_interface__["data"][0] == x.__array_interface__["data"][0] and x.flags.c_contiguous
                )
            ):
                raise ValueError("scale: out partially overlaps x")
        Y = out
    kernel = kernel_code()
    if Y.size == 0:
        return Y
    n = shape[-1]
    rows = Y.size // n
    X = _c32(x)
    args = [None if ops[r] is None else _c32(ops[r]) for r in SCALE_ROLES]
    md = [modes.get(r, core.BC_NONE) for r in SCALE_ROLES]
    core.scale(
        X,
        Y,
        rows,
        n,
        None if alpha == 1.0 else float(alpha),
        None if beta == 0.0 else float(beta),
        float(np.float32(res_beta)),
        args[0],
        md[0],
        args[1],
        md[1],
        args[2],
        md[2],
        args[3],
        md[3],
        args[4],
        md[4],
        args[5],
        md[5],
        act,
        table,
        get_num_threads(),
        kernel,
    )
    return Y


def pairwise_max(x: Any, *, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Max over the last axis (keepdims) as the Program's ``pairwise_max``: steps ``m + relu(v - m)``,
    column ``j`` folded into lane ``j % 16`` left to right, then the lanes halving (see
    :func:`nmengine.movement.pairwise_max`), in C per row.  Bit-identical to that numpy reference for
    every kernel and thread count; trailing columns at or below the running max change nothing
    (padding-independent attention); NaN propagates."""
    core = compiled_core()
    X = as_f32("x", x)
    if X.ndim == 0 or X.shape[-1] == 0:
        raise ValueError(f"pairwise_max over an empty axis (x of shape {shape_str(X.shape)})")
    shape = X.shape[:-1] + (1,)
    if out is None:
        Y = np.empty(shape, dtype=np.float32)
    else:
        _check_rows_out("pairwise_max", out, shape)
        if np.may_share_memory(out, X):
            raise ValueError("pairwise_max: out overlaps x")
        Y = out
    kernel = kernel_code()
    if Y.size == 0:
        return Y
    X = _c32(X)
    n = X.shape[-1]
    core.pairwise_max(X, Y, Y.size, n, get_num_threads(), kernel)
    return Y
