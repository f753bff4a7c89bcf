"""``nm.Session``: run a Program as compiled plans, in the spirit of ONNX Runtime's InferenceSession.

    sess = nm.Session(program_or_bundle_path, threads=None, kernel=None)
    y = sess.run(inputs)

A session owns the execution settings (thread count, kernel) and a bounded LRU cache of
:class:`~nmengine.plan.Plan` objects, one per input-shape signature (every input's shape and the real
token count of every token mask).  The first call with a new signature builds the plan (shapes,
views, broadcast modes, packed weights and a liveness-based arena layout); later calls run the plan's
steps with no per-op Python resolution.  Results are bit-identical to the interpreter
(:class:`nmengine.runtime.Runtime`) in matrixized mode, for any thread count.

Thread safety and memory: :meth:`Session.run` may be called from many threads at once.  At most
``concurrency`` calls run at a time (others wait for one to finish: a call already uses the core's
thread pool, so more calls in flight than CPUs add memory, not speed).  Each call in flight holds a
*slot*: one working arena shared by every plan (sized for the largest plan it has run, in size classes)
and each plan bound to that arena, built on the slot's first call with that plan.  The session's
working memory is therefore at most ``concurrency`` x the largest plan's arena, however many threads
call it and however many signatures it has seen; a slot forgets the plans the LRU cache dropped.
Plans and packed weights are built under a lock and only read afterwards.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Optional

import numpy as np

from . import kernels
from .plan import Bound, Plan, mask_names, signature_counts
from .plan_steps import StepContext
from .program import Program
from .runtime import bind_inputs
from .threads import usable_cpus

__all__ = ["Session", "MemoryLimitError", "parse_bytes"]

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class MemoryLimitError(MemoryError):
    """Inputs whose plan needs a larger working arena than the session's memory limit allows."""


def parse_bytes(value: Any) -> int:
    """A byte count from an int or a string like ``"512M"``, ``"4G"``, ``"1.5GiB"`` (binary units)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        n = int(value)
    elif isinstance(value, str):
        text = value.strip().upper().removesuffix("IB").removesuffix("B")
        unit = text[-1:] if text[-1:] in _UNITS and text[-1:] else ""
        try:
            n = int(float(text[: len(text) - len(unit)]) * _UNITS[unit])
        except ValueError:
            raise ValueError(f"memory limit {value!r} is not a byte count such as 536870912, '512M' or '4G'") from None
    else:
        raise TypeError(f"memory limit must be an int or a string such as '4G', got {type(value).__name__}")
    if n <= 0:
        raise ValueError(f"memory limit must be positive, got {value!r}")
    return n


def _memory_limit(value: Any) -> Optional[int]:
    if value is None:
        env = os.environ.get("NMENGINE_MEMORY_LIMIT", "").strip()
        return parse_bytes(env) if env else None
    return parse_bytes(value)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _size_class(n: int) -> int:
    """n rounded up to 2**k, 1.25 * 2**k, 1.5 * 2**k or 1.75 * 2**k (at least 4 KiB): a slot's arena
    grows in few steps when larger plans come, wasting at most a quarter (untouched pages cost no RSS)."""
    n = max(int(n), 4096)
    top = 1 << (n - 1).bit_length()  # 2**k >= n
    for q in (5, 6, 7, 8):
        if n <= (top // 2) * q // 4:
            return (top // 2) * q // 4
    return top


class _Slot:
    """The working memory of one call in flight: an arena, and the plans bound to it (key -> Bound)."""

    __slots__ = ("arena", "bound")

    def __init__(self) -> None:
        self.arena = np.empty(0, dtype=np.uint8)
        self.bound: dict[tuple, Bound] = {}

    def bound_for(self, key: tuple, plan: Plan, cached: Any, largest: int) -> Bound:
        """``plan`` bound to this slot's arena (bound now if new).  An arena too small for it is
        replaced by one for the largest cached plan (``largest`` bytes), so that every slot grows once
        per new largest signature, not once per plan.  ``cached`` is the session's plan cache:
        bindings of plans it dropped are forgotten."""
        b = self.bound.get(key)
        if b is not None and b.plan is plan:
            return b
        if plan.arena_bytes > self.arena.nbytes:
            self.bound.clear()  # bound to the old arena: drop them so that it is freed
            self.arena = np.empty(0, dtype=np.uint8)
            self.arena = np.empty(_size_class(max(plan.arena_bytes, largest)), dtype=np.uint8)
        for k in [k for k, v in self.bound.items() if cached.get(k) is not v.plan]:
            del self.bound[k]
        b = self.bound[key] = plan.bind(self.arena)
        return b

    @property
    def nbytes(self) -> int:
        return self.arena.nbytes


class Session:
    """Runs one Program (or a bundle file) as compiled plans.

    Parameters
    ----------
    program_or_path:
        A :class:`~nmengine.program.Program`, or the path of a bundle written by :func:`nmengine.save`.
    threads:
        Threads every call uses (>= 1); None follows :func:`nmengine.set_num_threads` at each call.
    kernel:
        "scalar", "avx2" or "auto"; None follows :func:`nmengine.kernels.use_kernel` /
        ``NMENGINE_KERNEL`` at each call.
    cache_size:
        Most plans kept (least recently used dropped first).
    memory_limit:
        Most bytes one call's working arena may take (an int, or a string such as "512M" or "4G");
        inputs whose plan needs more raise :class:`MemoryLimitError` before anything is allocated.
        None (default) reads ``NMENGINE_MEMORY_LIMIT``; unset means no limit.
    executor:
        "c" (default): runs of core calls execute in one C call each (csrc/nm_plan.c); "python": one
        Python call per op (the same core functions, the same bits; for comparison and debugging).
    concurrency:
        Most calls running at once (further callers wait); each holds one working arena.  None
        (default): the CPUs this process may use, at least 2.
    """

    def __init__(
        self,
        program_or_path: Any,
        *,
        threads: Optional[int] = None,
        kernel: Optional[str] = None,
        cache_size: int = 16,
        executor: str = "c",
        memory_limit: Any = None,
        concurrency: Optional[int] = None,
    ) -> None:
        if isinstance(program_or_path, (str, os.PathLike)):
            from .bundle import load

            program_or_path = load(program_or_path)
        if not isinstance(program_or_path, Program):
            raise TypeError(f"Session expects a Program or a bundle path, got {type(program_or_path).__name__}")
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1
        ):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive integer, got {cache_size!r}")
        if executor not in ("c", "python"):
            raise ValueError(f"executor must be 'c' or 'python', got {executor!r}")
        if concurrency is None:
            concurrency = max(2, usable_cpus())
        if isinstance(concurrency, bool) or not isinstance(concurrency, (int, np.integer)) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer or None, got {concurrency!r}")
        self.concurrency = int(concurrency)
        self.executor = executor
        self.memory_limit = _memory_limit(memory_limit)
        self.program = program_or_path
        self.threads = None if threads is None else int(threads)
        self.kernel = kernel
        self._kernel_code = None
        if kernel is not None:
            with kernels.use_kernel(kernel):  # validates the name and the CPU now
                self._kernel_code = kernels.kernel_code()
        self.cache_size = cache_size
        self._core = kernels.compiled_core()
        self._masks = mask_names(self.program)
        self._planable = all(m in self.program.inputs for m in self._masks)
        self._plans: OrderedDict[tuple, Plan] = OrderedDict()
        self._lock = threading.Lock()
        self._packed: dict[int, dict[str, np.ndarray]] = {}
        self._tables: dict[str, Any] = {}
        self._largest = 0  # arena bytes of the largest cached plan
        self._running = threading.BoundedSemaphore(self.concurrency)
        self._idle: list[_Slot] = []  # last in, first out: the busiest slots have the plans bound
        self._slots: list[_Slot] = []

    # -- running --------------------------------------------------------------------------------
    def run(self, inputs: Any) -> Any:
        """Outputs for ``inputs`` (a dict name -> array, or one array for a one-input program): one
        array when the program has one output, else a dict name -> array (fresh arrays)."""
        prog = self.program
        env = bind_inputs(prog, inputs)
        if not self._planable:  # a token mask computed inside the program: no static plan
            return prog.runtime.run(env)
        key, plan = self._plan(env)
        with self._running:
            with self._lock:
                slot = self._idle.pop() if self._idle else None
                if slot is None:
                    slot = _Slot()
                    self._slots.append(slot)
            try:
                outs = slot.bound_for(key, plan, self._plans, self._largest).run(env)
            finally:
                with self._lock:
                    self._idle.append(slot)
        return outs[prog.outputs[0]] if len(outs) == 1 else outs

    __call__ = run

    def plan_for(self, inputs: Any) -> Plan:
        """The plan (built now or cached) for these inputs' signature."""
        env = (
            inputs
            if isinstance(inputs, dict) and all(isinstance(v, np.ndarray) for v in inputs.values())
            else bind_inputs(self.program, inputs)
        )
        return self._plan(env)[1]

    def _plan(self, env: dict) -> tuple[tuple, Plan]:
        code = self._kernel_code if self._kernel_code is not None else kernels.kernel_code()
        nt = self.threads if self.threads is not None else kernels.get_num_threads()
        shapes = tuple(env[n].shape for n in self.program.inputs)
        key = (code, nt, shapes, signature_counts(self._masks, env))
        plan = self._plans.get(key)
        if plan is not None:
            with self._lock:
                if key in self._plans:
                    self._plans.move_to_end(key)
            return key, plan
        return key, self._build(key, code, nt, env)

    def _build(self, key: tuple, code: int, nt: int, env: dict) -> Plan:
        ctx = StepContext(
            program=self.program,
            kernel=code,
            threads=nt,
            core=self._core,
            packed=self._packed_for(code),
            table=self._table,
            interp=self.program.runtime,
            masks={},
        )
        counts = dict(zip(self._masks, key[3]))
        plan = Plan(ctx, {n: env[n].shape for n in self.program.inputs}, counts, c_executor=self.executor == "c")
        if self.memory_limit is not None and plan.peak_bytes > self.memory_limit:
            shapes = {n: env[n].shape for n in self.program.inputs}
            raise MemoryLimitError(
                f"inputs of shapes {shapes} need a {_mib(plan.peak_bytes)} working arena, over "
                f"this session's memory limit of {_mib(self.memory_limit)} (memory_limit= or "
                f"NMENGINE_MEMORY_LIMIT); run a smaller batch or raise the limit"
            )
        with self._lock:
            plan = self._plans.setdefault(key, plan)
            self._plans.move_to_end(key)
            while len(self._plans) > self.cache_size:
                self._plans.popitem(last=False)
            self._largest = max(p.arena_bytes for p in self._plans.values())
        return plan

    # -- shared read-only state -----------------------------------------------------------------
    def _table(self, key: str) -> Any:
        t = self._tables.get(key)
        if t is None:
            with self._lock:
                t = self._tables.get(key)
                if t is None:
                    t = self._tables[key] = kernels.prepare_table(self.program.tables[key])
        return t

    def _packed_for(self, code: int) -> dict[str, np.ndarray]:
        """Constant B operands of plain GEMMs packed for kernel ``code`` (built once, then only read)."""
        packed = self._packed.get(code)
        if packed is not None:
            return packed
        with self._lock:
            packed = self._packed.get(code)
            if packed is None:
                consts = self.program.constants
                packed = {}
                for op in self.program.ops:
                    b = op.args.get("b")
                    if (
                        op.kind == "gemm"
                        and b in consts
                        and b not in packed
                        and not op.attrs.get("trans_b")
                        and not op.attrs.get("trans_a")
                        and consts[b].ndim == 2
                        and consts[b].dtype == np.float32
                    ):
                        packed[b] = kernels.pack_b(consts[b], kernels.KERNEL_NAMES[code], copy=False).data
                self._packed[code] = packed
        return packed

    # -- introspection --------------------------------------------------------------------------
    def plan_info(self, inputs: Any) -> dict[str, Any]:
        """``{"steps", "peak_bytes", "views", "cached_plans", "arenas", "arena_bytes"}``: the plan for
        these inputs, the number of plans cached, and the working arenas the session holds (one per
        slot: at most ``concurrency``) with their total bytes."""
        plan = self.plan_for(inputs)
        with self._lock:
            slots = list(self._slots)
        return {
            "steps": len(plan.bind().steps),
            "peak_bytes": plan.peak_bytes,
            "views": len(plan.alias),
            "cached_plans": len(self._plans),
            "arenas": len(slots),
            "arena_bytes": sum(s.nbytes for s in slots),
        }

    def __repr__(self) -> str:
        return (
            f"Session({self.program.name!r}, threads={self.threads}, kernel={self.kernel!r}, "
            f"{len(self._plans)} cached plans)"
        )
