"""Execution plans: a Program resolved once for one input-shape signature.

A :class:`Plan` is built by :class:`nmengine.session.Session` for one *signature* (the kernel, the
thread count, every input's shape and the number of real tokens of every token mask, which fixes the
packed row counts).  Building it resolves, once:

* the shape of every buffer, and which buffers are *views* of others (``reshape``, ``slice_rows``,
  ``pack``/``unpack`` of a batch without padding, and any op identical to an earlier one -- same kind,
  operands and attributes -- cost nothing at run time);
* a buffer plan: every other buffer gets an offset in one arena, reusing memory by liveness (a buffer
  is free after the last op that reads it, directly or through a view); :attr:`Plan.peak_bytes` is
  the arena size;
* one *step* per op: a core function and its arguments (arrays already viewed, strided and
  broadcast, broadcast modes chosen, PWL tables prepared, constant GEMM operands pre-packed).

:meth:`Plan.bind` makes a :class:`Bound` plan: an arena (given, or allocated) and the steps with their
arrays in it.  A Bound plan runs one call at a time; running it copies the inputs into the arena, calls
each step with no other Python work, and copies the outputs out.  Nothing in the arena outlives a
call, so one arena can carry the Bound plans of many signatures as long as only one of them runs at a
time: the session keeps one arena per call in flight (its *slots*), not one per plan and caller.

Steps that are core calls are then recorded, run by run, into a ``CPlan`` of the compiled core
(csrc/nm_plan.c): each run of consecutive core calls becomes one call into C that makes them all with
the GIL released.  Steps with no core function (``gather``, ``positions``, im2col and the other numpy
movement, the interpreter fallback) stay Python calls between the runs.

Each op kind has one step builder in :data:`BUILDERS` (``builder(ctx, op, bufs) -> (fn, args) | None``,
in :mod:`nmengine.plan_steps`):
the place to hook a new kernel in (e.g. an int8 GEMM).  An op kind without a builder, or an operand
layout a builder does not cover, runs through the interpreter (:meth:`nmengine.runtime.Runtime.exec_op`,
then copied into the arena), which gives the same bits, only slower.
"""

from __future__ import annotations

import json
import math
import weakref
from collections import ChainMap
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from . import attention_plan, runtime_int8
from .plan_steps import BUILDERS, NO_STEP, Step, StepContext, interpret, mask_bool
from .program import PLUMBING_KINDS, Op, Program, ProgramError
from .shapes import op_shape

__all__ = ["Plan", "Bound", "mask_names", "signature_counts"]

ALIGN = 64


def _same_view(v: np.ndarray) -> np.ndarray:
    return v


def _reshaped(shape: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
    """The alias view of a reshape: the source viewed with ``shape``."""
    return lambda v: v.reshape(shape)


def _first_rows(n: int) -> Callable[[np.ndarray], np.ndarray]:
    """The alias view of a slice_rows: the source's first ``n`` rows."""
    return lambda v: v[:n]


_REPEATS: "weakref.WeakKeyDictionary[Program, list[Optional[str]]]" = weakref.WeakKeyDictionary()


def _repeats(program: Program) -> list[Optional[str]]:
    """Per op, the output of an earlier identical op (same kind, operands and attributes: e.g. the
    attention mask bias every layer recomputes), whose result it can view, else None.  Depends on
    the program alone: computed once per program."""
    found = _REPEATS.get(program)
    if found is None:
        seen: dict[str, str] = {}
        found = []
        for op in program.ops:
            key = json.dumps([op.kind, sorted(op.args.items()), op.attrs], sort_keys=True, default=str)
            found.append(seen.get(key))
            seen.setdefault(key, op.out)
        _REPEATS[program] = found
    return found


def mask_names(program: Program) -> list[str]:
    """Buffers used as token masks (``pack``/``unpack``/``positions``), in first-use order."""
    out: dict[str, None] = {}
    for op in program.ops:
        if op.kind in ("pack", "unpack", "positions"):
            out.setdefault(op.args["mask"], None)
    return list(out)


# ---------------------------------------------------------------------------------------------
# The buffer plan
# ---------------------------------------------------------------------------------------------
class _Allocator:
    """First-fit allocation of aligned blocks in one arena, with coalescing frees."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []  # (offset, size), sorted, coalesced
        self.top = 0

    def alloc(self, size: int) -> int:
        size = max(ALIGN, -(-size // ALIGN) * ALIGN)
        for k, (off, sz) in enumerate(self.free):
            if sz >= size:
                if sz == size:
                    del self.free[k]
                else:
                    self.free[k] = (off + size, sz - size)
                return off
        if self.free and self.free[-1][0] + self.free[-1][1] == self.top:  # grow the last free block
            off, _ = self.free.pop()
            self.top = off + size
            return off
        off = self.top
        self.top += size
        return off

    def release(self, off: int, size: int) -> None:
        size = max(ALIGN, -(-size // ALIGN) * ALIGN)
        self.free.append((off, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


class Plan:
    """A Program resolved for one signature; see the module docstring."""

    def __init__(
        self,
        ctx: StepContext,
        input_shapes: Mapping[str, tuple[int, ...]],
        counts: Mapping[str, int],
        *,
        c_executor: bool = True,
    ) -> None:
        prog = ctx.program
        self.ctx = ctx
        self.c_executor = c_executor
        self.input_shapes = dict(input_shapes)
        shapes: dict[str, tuple[int, ...]] = dict(input_shapes)
        dtypes: dict[str, Any] = {n: (np.int64 if s.dtype == "int64" else np.float32) for n, s in prog.inputs.items()}
        for name, arr in prog.constants.items():
            shapes[name] = arr.shape
            dtypes[name] = arr.dtype
        #: name -> (root, view function) for views; roots map to themselves
        self.alias: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {}
        for op, first in zip(prog.ops, _repeats(prog)):
            if first is not None:  # the same op as an earlier one: a view of its result
                self.alias[op.out] = (first, _same_view)
                shapes[op.out], dtypes[op.out] = shapes[first], dtypes[first]
                continue
            shapes[op.out], dtypes[op.out] = self._shape(op, shapes, dtypes, counts)
        self.shapes, self.dtypes = shapes, dtypes
        #: attention chains run at each sequence's own length (nmengine.attention_plan)
        self.chains = (
            attention_plan.find_chains(prog, shapes, int(ctx.core.get_blocking(ctx.kernel)["kc"]))
            if attention_plan.enabled()
            else []
        )
        self._plan_buffers(prog, counts)

    # -- shapes and views -----------------------------------------------------------------------
    def _shape(self, op: Op, shapes, dtypes, counts) -> tuple[tuple[int, ...], Any]:
        k, a, at = op.kind, op.args, op.attrs
        where = f"op {op.out!r} ({op.kind}, layer {op.layer!r})"
        if k in ("pack", "unpack", "positions"):
            m = shapes[a["mask"]]
            if len(m) != 2:
                raise ValueError(f"{op.layer}: token mask of shape {m} must be [batch, tokens]")
            ntok = counts[a["mask"]]
            full = ntok == m[0] * m[1]
            if k == "positions":
                return (ntok,), np.int64
            x = shapes[a["x"]]
            if k == "pack":
                if tuple(x[:2]) != tuple(m):
                    raise ValueError(f"token mask of shape {m} does not fit values of shape {x}")
                shape = (ntok,) + tuple(x[2:])
            else:
                if x[0] != ntok:
                    raise ValueError(f"{op.layer}: {x[0]} packed rows for a mask with {ntok} tokens")
                shape = tuple(m) + tuple(x[1:])
            if full:
                self.alias[op.out] = (a["x"], _reshaped(shape))
            return shape, dtypes[a["x"]]
        if k == "gather":
            return tuple(shapes[a["ids"]]) + tuple(shapes[a["table"]][1:]), dtypes[a["table"]]
        if k == "slice_rows":
            x = shapes[a["x"]]
            n = shapes[a["like"]][at["axis"]] if "like" in a else at["rows"]
            if n > x[0]:
                raise ValueError(f"{op.layer}: needs {n} rows of {a['x']!r}, which has only {x[0]}")
            self.alias[op.out] = (a["x"], _first_rows(n))
            return (n,) + tuple(x[1:]), dtypes[a["x"]]
        try:
            shape = op_shape(op, shapes)
        except ValueError as e:
            raise ProgramError(f"{where}: {e}") from None
        if k == "reshape":
            self.alias[op.out] = (a["x"], _reshaped(shape))
        keeps = k in ("reshape", "transpose") or k in PLUMBING_KINDS  # int64 ids stay ids through movement
        return tuple(int(d) for d in shape), (dtypes[a["x"]] if keeps else np.float32)

    def root(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name][0]
        return name

    def _plan_buffers(self, prog: Program, counts: Mapping[str, int]) -> None:
        """Arena offsets by liveness: a root buffer is free after the last op reading it or a view of it."""
        n_ops = len(prog.ops)
        last: dict[str, int] = {}
        # an op reading an im2col's windows may read its image instead (the depthwise step): the image
        # stays live until the windows' readers are done
        image_of = {op.out: op.args["x"] for op in prog.ops if op.kind in ("im2col", "pool_windows")}
        for i, op in enumerate(prog.ops):
            for name in op.args.values():
                last[self.root(name)] = i
                if name in image_of:
                    last[self.root(image_of[name])] = i
        for name in prog.outputs:
            last[self.root(name)] = n_ops
        for ch in self.chains:  # the fused step reads the packed rows and the bias at the chain's end
            for read in [ch.qkv] + ([ch.bias] if ch.bias is not None else []):
                last[self.root(read)] = max(last.get(self.root(read), -1), ch.pack)
        # bool copies of the token masks: computed first, read by the packing ops
        self.mask_bufs = {m: f"{m}#bool" for m in counts}
        for m, b in self.mask_bufs.items():
            self.shapes[b], self.dtypes[b] = self.shapes[m], np.bool_
            last[b] = n_ops
        consts = prog.constants
        alloc = _Allocator()
        self.offsets: dict[str, int] = {}
        nbytes = {}

        # buffers by the op index after which they are free (a buffer owned at op i and read no later
        # than i is free after op i), in the order they were owned
        dies: dict[int, list[str]] = {}
        now = -1

        def own(name: str) -> None:
            nb = math.prod(self.shapes[name]) * np.dtype(self.dtypes[name]).itemsize
            nbytes[name] = nb
            self.offsets[name] = alloc.alloc(nb)
            dies.setdefault(max(last.get(name, -1), now), []).append(name)

        def release(upto: int) -> None:
            for name in dies.pop(upto, ()):
                alloc.release(self.offsets[name], nbytes.pop(name))

        for name in list(prog.inputs) + list(self.mask_bufs.values()):
            own(name)
        release(-1)
        #: op index -> [(operand, float32 copy)]: GEMM operands of another dtype (e.g. an int64 mask),
        #: cast in the arena right before the op (what the GEMM API's cast does)
        self.casts: dict[int, list[tuple[str, str]]] = {}
        for i, op in enumerate(prog.ops):
            now = i
            if op.kind in ("gemm", "gemm_batched"):
                for role in ("a",) if runtime_int8.is_int8(op) else ("a", "b"):
                    name = op.args[role]
                    if self.dtypes[name] != np.float32:
                        cast = f"{name}#f32@{i}"
                        self.shapes[cast], self.dtypes[cast] = self.shapes[name], np.float32
                        last[cast] = i
                        own(cast)
                        self.casts.setdefault(i, []).append((name, cast))
            if op.out not in self.alias and op.out not in consts:
                own(op.out)
            release(i)
        self.peak_bytes = alloc.top

    # -- binding --------------------------------------------------------------------------------
    @property
    def arena_bytes(self) -> int:
        """Bytes an arena given to :meth:`bind` must have (the peak plus room to align it)."""
        return self.peak_bytes + ALIGN

    def bind(self, arena: Optional[np.ndarray] = None) -> "Bound":
        """A runnable instance of this plan in ``arena`` (a C-contiguous uint8 array of at least
        :attr:`arena_bytes` bytes, which the Bound plan then uses as scratch at every run), or in an
        arena of its own when None."""
        prog, ctx = self.ctx.program, self.ctx
        if arena is None:
            raw = np.empty(self.arena_bytes, dtype=np.uint8)
        else:
            if arena.dtype != np.uint8 or arena.ndim != 1 or not arena.flags.c_contiguous:
                raise ValueError("arena must be a 1-D C-contiguous uint8 array")
            if arena.nbytes < self.arena_bytes:
                raise ValueError(f"arena of {arena.nbytes} bytes is smaller than this plan's {self.arena_bytes}")
            raw = arena
        base = (-raw.ctypes.data) % ALIGN
        bufs: dict[str, np.ndarray] = dict(prog.constants)

        def view(name: str) -> np.ndarray:
            off = base + self.offsets[name]
            dt = np.dtype(self.dtypes[name])
            n = math.prod(self.shapes[name])
            return raw[off : off + n * dt.itemsize].view(dt).reshape(self.shapes[name])

        for name in list(prog.inputs) + list(self.mask_bufs.values()):
            bufs[name] = view(name)
        core = ctx.core
        steps: list[Step] = [
            (mask_bool, (bufs[m], bufs[b]))
            if bufs[m].dtype != np.int64
            else (core.tokens, (core.TOKENS_MASK, bufs[m], None, bufs[b], bufs[m].size, 0, 0, 0))
            for m, b in self.mask_bufs.items()
        ]
        c = StepContext(**{**ctx.__dict__, "masks": self.mask_bufs})
        # attention chains run as one step at their pack; their ops' own steps are its fallback
        chain_of = {i: ch for ch in self.chains for i in ch.covered}
        fallback: dict[int, list[Step]] = {ch.pack: [] for ch in self.chains}
        for i, op in enumerate(prog.ops):
            chain = chain_of.get(i)
            sink = steps if chain is None else fallback[chain.pack]
            if op.out in self.alias:
                src, fn = self.alias[op.out]
                bufs[op.out] = fn(bufs[src])
            else:
                bufs[op.out] = view(op.out)
                if bufs[op.out].size == 0:
                    continue
                operands: Mapping[str, np.ndarray] = bufs
                if i in self.casts:
                    cast = {name: view(c_name) for name, c_name in self.casts[i]}
                    sink += [(np.copyto, (cast[name], bufs[name], "unsafe")) for name in cast]
                    operands = ChainMap(cast, bufs)
                builder = BUILDERS.get(op.kind)
                step = builder(c, op, operands) if builder is not None else None
                if step is None:
                    step = (interpret, (c, op, operands))
                if step is not NO_STEP:
                    sink.append(step)
            if chain is not None and i == chain.pack and bufs[op.out].size:
                fused = attention_plan.chain_step(
                    chain, core, bufs, bufs[self.mask_bufs[chain.mask]], ctx.table, sink, ctx.threads, ctx.kernel
                )
                steps += sink if fused is None else [fused]
        inputs = [(name, bufs[name]) for name in prog.inputs]
        outputs = [(name, bufs[name]) for name in prog.outputs]
        if self.c_executor:
            steps = _to_c(ctx.core, steps)
        return Bound(self, raw, inputs, steps, outputs)


class Bound:
    """A plan bound to one arena: runs one call at a time."""

    __slots__ = ("plan", "arena", "inputs", "steps", "outputs")

    def __init__(self, plan: Plan, arena: np.ndarray, inputs: list, steps: list[Step], outputs: list) -> None:
        self.plan, self.arena, self.inputs, self.steps, self.outputs = plan, arena, inputs, steps, outputs

    def run(self, env: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, slot in self.inputs:
            np.copyto(slot, env[name])
        for fn, args in self.steps:
            fn(*args)
        return {name: arr.copy() for name, arr in self.outputs}


def _to_c(core: Any, steps: list[Step]) -> list[Step]:
    """Runs of consecutive core calls recorded into one ``core.CPlan``: each run becomes one step
    that makes all its calls in C with the GIL released; other steps stay as they are."""
    cplan = core.CPlan()
    out: list[Step] = []
    lo = None
    for fn, args in steps:
        if fn is attention_plan.run_chain and _recordable(core, args[2]):
            fused, fargs, fallback = args
            cplan.add_attention_packed(*fargs, skip=len(fallback))
            if lo is None:
                lo = len(cplan) - 1
            for ffn, ffargs in fallback:
                getattr(cplan, "add_" + ffn.__name__)(*ffargs)
            continue
        name = getattr(fn, "__name__", "")
        if name in C_CALLS and fn is getattr(core, name, None):
            getattr(cplan, "add_" + name)(*args)
            if lo is None:
                lo = len(cplan) - 1
            continue
        if lo is not None:
            out.append((cplan.run, (lo, len(cplan))))
            lo = None
        out.append((fn, args))
    if lo is not None:
        out.append((cplan.run, (lo, len(cplan))))
    return out


def _recordable(core: Any, steps: Sequence[Step]) -> bool:
    return all(getattr(fn, "__name__", "") in C_CALLS and fn is getattr(core, fn.__name__, None) for fn, _ in steps)


#: Core functions a CPlan can record (``CPlan.add_<name>`` takes the function's arguments).
C_CALLS = frozenset(
    {
        "sgemm",
        "sgemm_packed",
        "sgemm_batched",
        "scale",
        "pairwise_max",
        "softmax_rows",
        "layernorm_rows",
        "move_rows",
        "windows",
        "tokens",
        "depthwise",
        "conv_nhwc",
        "maxpool_nhwc",
    }
)


def signature_counts(program_masks: Sequence[str], env: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    """Real-token count of every mask (part of the plan signature)."""
    return tuple(int(np.count_nonzero(env[m])) for m in program_masks)
