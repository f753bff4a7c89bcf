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

Each op kind has one step builder in :data:`BUILDERS` (``builder(ctx, op, bufs) -> (fn, args) | None``):
the place to hook a new kernel in (e.g. an int8 GEMM).  An op kind without a builder, or an operand
layout a builder does not cover, runs through the interpreter (:meth:`nmengine.runtime.Runtime.exec_op`,
then copied into the arena), which gives the same bits, only slower.
"""

from __future__ import annotations

import json
import math
import weakref
from collections import ChainMap
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from . import attention_plan, kernels, movement, runtime_int8
from .program import PLUMBING_KINDS, Op, Program, ProgramError, apply_view, expand
from .runtime import scale_numpy
from .shapes import op_shape, pair

__all__ = ["Plan", "Bound", "BUILDERS", "StepContext", "mask_names", "signature_counts"]

ALIGN = 64
Step = tuple[Callable[..., Any], tuple]
#: What a builder returns for an op whose work another op's step does (an im2col read directly by a
#: depthwise conv step).
NO_STEP: Step = (lambda: None, ())


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


@dataclass
class StepContext:
    """What step builders need besides the op and its buffers."""

    program: Program
    kernel: int
    threads: int
    core: Any
    packed: Mapping[str, np.ndarray]  # constant name -> B packed for this kernel
    table: Callable[[str], Any]  # table key -> prepared table
    interp: Any  # nmengine.runtime.Runtime
    masks: Mapping[str, str]  # mask buffer -> its bool buffer


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
            (_mask_bool, (bufs[m], bufs[b]))
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
                    step = (_interpret, (c, op, operands))
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


# ---------------------------------------------------------------------------------------------
# Python steps (ops without a core call, and the interpreter fallback)
# ---------------------------------------------------------------------------------------------
def _mask_bool(mask: np.ndarray, out: np.ndarray) -> None:
    np.not_equal(mask, 0, out=out)


def _interpret(ctx: StepContext, op: Op, bufs: Mapping[str, np.ndarray]) -> None:
    """op through the interpreter (its expansion for a fused op), copied into its arena buffer."""
    env = {name: bufs[name] for name in op.args.values()}
    with kernels.use_kernel(kernels.KERNEL_NAMES[ctx.kernel]):
        for e in expand(op):
            env[e.out] = ctx.interp.exec_op(e, env)
    np.copyto(bufs[op.out], env[op.out])


def _c_contig_f32(*arrs: Optional[np.ndarray]) -> bool:
    return all(a is None or (a.dtype == np.float32 and a.flags.c_contiguous and a.flags.aligned) for a in arrs)


def _act(ctx: StepContext, ep: Mapping[str, Any]) -> tuple[int, Any]:
    act = ep.get("act", "none")
    if act == "none":
        return ctx.core.ACT_NONE, None
    if act == "relu":
        return ctx.core.ACT_RELU, None
    return ctx.core.ACT_PWL, ctx.table(ep["table"])


# ---------------------------------------------------------------------------------------------
# Step builders: (ctx, op, bufs) -> (core function, args) or None (interpreter)
# ---------------------------------------------------------------------------------------------
def _gemm(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    a_, at = op.args, op.attrs
    if at.get("trans_a") or at.get("trans_b"):
        return None
    a, b, out = bufs[a_["a"]], bufs[a_["b"]], bufs[op.out]
    int8 = runtime_int8.is_int8(op)
    if b.ndim != 2 or not _c_contig_f32(a, None if int8 else b):
        return None
    k, n = b.shape
    a2 = a.reshape(-1, a.shape[-1])
    m = a2.shape[0]
    if a2.shape[1] != k:
        return None
    bias = bufs[a_["bias"]] if "bias" in a_ else None
    bias_row = bufs[a_["bias_row"]].reshape(-1) if "bias_row" in a_ else None
    res = bufs[a_["res"]] if "res" in a_ else None
    if bias is not None and (bias.shape != (n,) or not _c_contig_f32(bias)):
        return None
    if bias_row is not None and (bias_row.shape != (m,) or not _c_contig_f32(bias_row)):
        return None
    if res is not None:
        if res.size != m * n or not _c_contig_f32(res):
            return None
        res = res.reshape(m, n)
    out2 = out.reshape(m, n)
    code, table = _act(ctx, op.epilogue)
    if int8:  # int8 x int8 -> int32 GEMM (runtime_int8), a Python step between the C runs
        g = ctx.interp.int8.get(op.out)
        if g is None:
            return None
        src = _conv_source(ctx, op, bufs)
        if src is not None and _fused_conv(ctx, op, bufs):  # channels-last int8 conv: windows by blocks
            x, cols, geom = _conv_geometry(op, src, bufs)
            step = runtime_int8.conv_step(
                g, ctx.core, x, cols, geom, out2, bias, bias_row, res, code, table, ctx.threads, ctx.kernel
            )
            assert step is not None  # _fused_conv said the im2col has no step: this one must run
            return step
        return runtime_int8.plan_step(g, ctx.core, a2, out2, bias, bias_row, res, code, table, ctx.threads, ctx.kernel)
    pk = ctx.packed.get(a_["b"])
    src = _conv_source(ctx, op, bufs)
    if pk is not None and src is not None:  # a channels-last conv: windows built block by block
        return _conv_nhwc(ctx, op, src, bufs, pk, out2, bias, bias_row, res, code, table)
    if pk is not None:
        return ctx.core.sgemm_packed, (a2, pk, n, out2, bias, bias_row, res, code, table, ctx.threads, ctx.kernel)
    return ctx.core.sgemm, (a2, b, out2, bias, bias_row, res, code, table, ctx.threads, ctx.kernel)


def _producer(ctx: StepContext, name: str) -> Optional[Op]:
    return next((o for o in ctx.program.ops if o.out == name), None)


def _sole_user(ctx: StepContext, name: str, op: Op) -> bool:
    """op is the only reader of buffer ``name`` (and it is no program output)."""
    return name not in ctx.program.outputs and not any(o is not op and name in o.args.values() for o in ctx.program.ops)


def _conv_source(ctx: StepContext, op: Op, bufs) -> Optional[Op]:
    """For a channels-last conv gemm ``op``: the NHWC im2col feeding it when only that GEMM reads it
    (the pair runs as one core step, nm_conv_nhwc, the windows built by blocks of pixels right before
    the GEMM reads them), or ``op`` itself for a 1x1 stride-1 conv reading a 4-D NHWC activation (the
    same step, reading the image in place); else None."""
    if op.kind != "gemm" or not op.attrs.get("conv") or op.attrs.get("trans_a") or op.attrs.get("trans_b"):
        return None
    src = _producer(ctx, op.args["a"])
    if src is not None and src.kind == "im2col" and src.attrs.get("layout") == "nhwc":
        if not _sole_user(ctx, src.out, op):
            return None
        x = bufs[src.args["x"]]
    else:
        src, x = op, bufs[op.args["a"]]
    if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous:
        return None
    return src


def _fused_conv(ctx: StepContext, op: Op, bufs) -> bool:
    """Whether the step of channels-last conv GEMM ``op`` builds its windows itself (its im2col then
    has no step): float32 with pre-packed weights, or int8 with buffers runtime_int8.conv_step takes."""
    if not runtime_int8.is_int8(op):
        return op.args["b"] in ctx.packed
    g = ctx.interp.int8.get(op.out)
    src = _conv_source(ctx, op, bufs)
    if g is None or src is None:
        return False
    x, cols, geom = _conv_geometry(op, src, bufs)
    return runtime_int8.conv_fits(g, x, cols, geom)


def _conv_geometry(op: Op, src: Op, bufs) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int, int, int]]:
    """(image, im2col buffer, (kh, kw, sh, sw, ph, pw)) of a channels-last conv whose source is ``src``
    (:func:`_conv_source`)."""
    if src is op:  # 1x1 stride 1: the activation is the im2col
        x = bufs[op.args["a"]]
        return x, x, (1, 1, 1, 1, 0, 0)
    at = src.attrs
    kh, kw = pair(at["kernel"])
    sh, sw = pair(at.get("stride", 1))
    ph, pw = pair(at.get("padding", 0))
    return bufs[src.args["x"]], bufs[src.out], (kh, kw, sh, sw, ph, pw)


def _conv_nhwc(ctx: StepContext, op: Op, src: Op, bufs, pk, out2, bias, bias_row, res, code, table) -> Step:
    x, cols, (kh, kw, sh, sw, ph, pw) = _conv_geometry(op, src, bufs)
    return ctx.core.conv_nhwc, (
        x,
        cols,
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        pk,
        out2.shape[1],
        out2,
        bias,
        bias_row,
        res,
        code,
        table,
        ctx.threads,
        ctx.kernel,
    )


def _maxpool_source(ctx: StepContext, op: Op, bufs) -> Optional[Op]:
    """The channels-last pool windows feeding pairwise_max ``op`` alone: the pair runs as one core step
    (nm_maxpool_nhwc, the same max tree without the windows copy)."""
    if op.kind != "pairwise_max":
        return None
    src = _producer(ctx, op.args["x"])
    if (
        src is None
        or src.kind != "pool_windows"
        or src.attrs.get("layout") != "nhwc"
        or not _sole_user(ctx, src.out, op)
    ):
        return None
    x = bufs[src.args["x"]]
    if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous:
        return None
    return src


def _depthwise_source(ctx: StepContext, op: Op, bufs) -> Optional[Op]:
    """The im2col op feeding gemm_batched ``op`` when the pair is a depthwise conv the core computes
    straight from the image (nm_depthwise: same sums and epilogue, without the 9x copy), else None.
    The im2col output must be read by ``op`` alone."""
    a_, at = op.args, op.attrs
    if (
        op.kind != "gemm_batched"
        or at.get("out_perm") is not None
        or at.get("a_view")
        or "bias" in a_
        or "bias_row" in a_
        or set(a_) - {"a", "b", "res"}
    ):
        return None
    src = next((o for o in ctx.program.ops if o.out == a_["b"]), None)
    if src is None or src.kind != "im2col":
        return None
    if any(o is not op and a_["b"] in o.args.values() for o in ctx.program.ops) or a_["b"] in ctx.program.outputs:
        return None
    x, w = bufs[src.args["x"]], bufs[a_["a"]]
    kh, kw = pair(src.attrs["kernel"])
    if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous or w.dtype != np.float32:
        return None
    g = x.shape[1]
    if at.get("b_view") != {"reshape": [0, g, kh * kw, -1]} or w.shape != (g, 1, kh * kw):
        return None
    if "res" in a_:
        r = apply_view(bufs[a_["res"]], at.get("res_view"))
        if r.dtype != np.float32 or r.ndim > 4 or not r.flags.aligned or any(s % 4 for s in r.strides):
            return None
    return src


def _depthwise(ctx: StepContext, op: Op, src: Op, bufs) -> Optional[Step]:
    x, out = bufs[src.args["x"]], bufs[op.out]
    g = x.shape[1]
    w = np.ascontiguousarray(bufs[op.args["a"]].reshape(g, -1))
    kh, kw = pair(src.attrs["kernel"])
    sh, sw = pair(src.attrs.get("stride", 1))
    ph, pw = pair(src.attrs.get("padding", 0))
    shape = (x.shape[0], g, 1, out.size // max(1, x.shape[0] * g))
    res = None
    if "res" in op.args:
        res = np.broadcast_to(apply_view(bufs[op.args["res"]], op.attrs.get("res_view")), shape)
    code, table = _act(ctx, op.epilogue)
    return ctx.core.depthwise, (
        x,
        w,
        out.reshape(shape),
        kh,
        kw,
        sh,
        sw,
        ph,
        pw,
        None,
        None,
        res,
        code,
        table,
        ctx.threads,
        ctx.kernel,
    )


def _gemm_batched(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    a_, at = op.args, op.attrs
    src = _depthwise_source(ctx, op, bufs)
    if src is not None:
        return _depthwise(ctx, op, src, bufs)
    a = apply_view(bufs[a_["a"]], at.get("a_view"))
    b = apply_view(bufs[a_["b"]], at.get("b_view"))
    if a.dtype != np.float32 or b.dtype != np.float32 or a.ndim < 2 or b.ndim < 2:
        return None
    batch = tuple(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]))
    if not 1 <= len(batch) <= 2:
        return None
    (m, k), n = a.shape[-2:], b.shape[-1]
    shape = batch + (m, n)
    out = bufs[op.out]
    perm = at.get("out_perm")
    target = out if perm is None else out.transpose(np.argsort(perm))
    res = None
    if "res" in a_:
        res = np.broadcast_to(apply_view(bufs[a_["res"]], at.get("res_view")), shape)
    bias = bufs[a_["bias"]] if "bias" in a_ else None
    bias_row = bufs[a_["bias_row"]].reshape(-1) if "bias_row" in a_ else None
    if bias is not None and (bias.shape != (n,) or not _c_contig_f32(bias)):
        return None
    if bias_row is not None and (bias_row.shape != (m,) or not _c_contig_f32(bias_row)):
        return None
    arrs = [np.broadcast_to(a, batch + (m, k)), np.broadcast_to(b, batch + (k, n)), target, res]
    if any(
        x is not None and (x.dtype != np.float32 or not x.flags.aligned or any(s % 4 for s in x.strides)) for x in arrs
    ):
        return None
    if len(batch) == 1:
        arrs = [None if x is None else x[None] for x in arrs]
    A4, B4, C4, R4 = arrs
    code, table = _act(ctx, op.epilogue)
    return ctx.core.sgemm_batched, (A4, B4, C4, bias, bias_row, R4, code, table, ctx.threads, ctx.kernel)


def _scale_numpy_step(ctx: StepContext, op: Op, bufs) -> Step:
    """The numpy path of a scale op (layouts and dtypes the C kernel does not take)."""
    env = {name: bufs[name] for name in op.args.values()}
    y = bufs[op.out]
    pwl = None
    if op.epilogue.get("act") == "pwl":
        flat = y.reshape(-1)
        table = ctx.table(op.epilogue["table"])
        core, nt, kc = ctx.core, ctx.threads, ctx.kernel

        def pwl(_y: np.ndarray) -> None:
            core.pwl_apply(table, flat, flat, nt, kc)

    return scale_numpy, (y, env[op.args["x"]], op, env, pwl)


def _scale(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    core, a_, at = ctx.core, op.args, op.attrs
    x, y = bufs[a_["x"]], bufs[op.out]
    shape = x.shape
    if not shape or x.shape != y.shape or not _c_contig_f32(x):
        return _scale_numpy_step(ctx, op, bufs)
    n = shape[-1]
    call: list[Any] = []
    for role in kernels.SCALE_ROLES:
        if role not in a_:
            call += [None, core.BC_NONE]
            continue
        v = bufs[a_[role]]
        s = v.shape
        if not _c_contig_f32(v):
            return _scale_numpy_step(ctx, op, bufs)
        if s == shape:
            mode = core.BC_FULL
        elif v.size == 1 and len(s) <= len(shape):
            mode = core.BC_SCALAR
        elif len(s) == len(shape) and s[-1] == 1 and s[:-1] == shape[:-1]:
            mode = core.BC_ROW
        elif s[-1:] == (n,) and len(s) <= len(shape) and v.size == n:
            mode = core.BC_COL
        else:
            return _scale_numpy_step(ctx, op, bufs)
        call += [v, mode]
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 0.0)
    code, table = _act(ctx, op.epilogue)
    return core.scale, (
        x,
        y,
        y.size // n,
        n,
        None if alpha == 1.0 else float(alpha),
        None if beta == 0.0 else float(beta),
        float(np.float32(at.get("res_beta", 1.0))),
        *call,
        code,
        table,
        ctx.threads,
        ctx.kernel,
    )


def _pairwise_max(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    src = _maxpool_source(ctx, op, bufs)
    if src is not None:
        at = src.attrs
        kh, kw = pair(at["kernel"])
        sh, sw = pair(at.get("stride", at["kernel"]))
        ph, pw = pair(at.get("padding", 0))
        edge = at.get("pad", "zero") == "edge"
        y = bufs[op.out]
        return ctx.core.maxpool_nhwc, (bufs[src.args["x"]], y, kh, kw, sh, sw, ph, pw, edge, ctx.threads)
    x, y = bufs[op.args["x"]], bufs[op.out]
    if x.ndim == 0 or x.shape[-1] == 0 or not _c_contig_f32(x):
        return None
    return ctx.core.pairwise_max, (x, y, y.size, x.shape[-1], ctx.threads, ctx.kernel)


def _softmax_rows(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    x, ones, p = bufs[op.args["x"]], bufs[op.args["ones"]], bufs[op.out]
    if x.ndim < 2 or not _c_contig_f32(x):
        return None
    n = x.shape[-1]
    if n < 1 or ones.shape != (n, 1):
        return None
    at = op.attrs
    return ctx.core.softmax_rows, (
        x,
        x.size // n,
        n,
        ctx.table(at["exp"]["table"]),
        ctx.table(at["recip"]["table"]),
        None,
        None,
        None,
        p,
        ctx.threads,
        ctx.kernel,
    )


def _layernorm_rows(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    a_ = op.args
    x, y = bufs[a_["x"]], bufs[op.out]
    w_mean, w_var = bufs[a_["w_mean"]], bufs[a_["w_var"]]
    n = w_mean.shape[0]
    if x.ndim < 2 or x.shape[-1] != n or not _c_contig_f32(x, w_mean, w_var):
        return None
    gamma = bufs[a_["gamma"]] if "gamma" in a_ else None
    beta = bufs[a_["beta"]] if "beta" in a_ else None
    eps = float(bufs[a_["eps"]].reshape(-1)[0])
    return ctx.core.layernorm_rows, (
        x,
        x.size // n,
        n,
        w_mean.reshape(-1),
        w_var.reshape(-1),
        eps,
        ctx.table(op.attrs["rsqrt"]["table"]),
        gamma,
        beta,
        None,
        None,
        None,
        None,
        y,
        ctx.threads,
        ctx.kernel,
    )


def _pack(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    x, out, mask = bufs[op.args["x"]], bufs[op.out], bufs[ctx.masks[op.args["mask"]]]
    if not x.flags.c_contiguous:
        return None
    flat = mask.reshape(-1)
    width = x.itemsize * int(np.prod(x.shape[2:], dtype=np.int64))
    return ctx.core.move_rows, (x, out, flat, None, flat.size, width, False, ctx.threads)


def _unpack(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    x, out, mask = bufs[op.args["x"]], bufs[op.out], bufs[ctx.masks[op.args["mask"]]]
    if not x.flags.c_contiguous:
        return None
    flat = mask.reshape(-1)
    width = x.itemsize * int(np.prod(x.shape[1:], dtype=np.int64))
    return ctx.core.move_rows, (x, out, flat, None, flat.size, width, True, ctx.threads)


def _positions(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    mask = bufs[ctx.masks[op.args["mask"]]]
    return ctx.core.tokens, (ctx.core.TOKENS_POSITIONS, mask, None, bufs[op.out], mask.size, 0, mask.shape[-1], 0)


def _gather_fn(table: np.ndarray, ids: np.ndarray, out: np.ndarray, layer: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"{layer}: ids must be in [0, {table.shape[0]}), got range [{ids.min()}, {ids.max()}]")
    np.take(table, ids, axis=0, out=out, mode="clip")


def _gather(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    table, ids, out = bufs[op.args["table"]], bufs[op.args["ids"]], bufs[op.out]
    if (
        ids.dtype != np.int64
        or not ids.flags.c_contiguous
        or not table.flags.c_contiguous
        or table.ndim < 1
        or table.dtype != out.dtype
    ):
        return _gather_fn, (table, ids, out, op.layer)
    rowbytes = table.itemsize * int(np.prod(table.shape[1:], dtype=np.int64))
    return ctx.core.tokens, (ctx.core.TOKENS_GATHER, table, ids, out, ids.size, table.shape[0], 0, rowbytes)


def _transpose(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    return np.copyto, (bufs[op.out], bufs[op.args["x"]].transpose(op.attrs["perm"]))


def _windows(ctx: StepContext, op: Op, bufs, layout: int) -> Optional[Step]:
    x, out, at = bufs[op.args["x"]], bufs[op.out], op.attrs
    if x.ndim != 4 or x.dtype != np.float32 or not x.flags.c_contiguous:
        return None
    kh, kw = pair(at["kernel"])
    sh, sw = pair(at.get("stride", 1 if layout == 0 else at["kernel"]))
    ph, pw = pair(at.get("padding", 0))
    edge = layout == 1 and at.get("pad", "zero") == "edge"
    if at.get("layout", "nchw") == "nhwc":  # channels last: core layouts 2 (im2col) and 3 (pool windows)
        layout += 2
    return ctx.core.windows, (x, out, kh, kw, sh, sw, ph, pw, edge, layout, ctx.threads)


def _im2col(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    users = [o for o in ctx.program.ops if op.out in o.args.values()]
    if len(users) == 1 and _depthwise_source(ctx, users[0], bufs) is op:
        return NO_STEP  # the depthwise step reads the image itself
    if len(users) == 1 and _conv_source(ctx, users[0], bufs) is op and _fused_conv(ctx, users[0], bufs):
        return NO_STEP  # the conv step builds the windows itself
    return _windows(ctx, op, bufs, 0) or (movement.im2col, (bufs[op.args["x"]], op.attrs, bufs[op.out]))


def _copy_of(fn: Callable[..., np.ndarray]) -> Callable[..., None]:
    def step(out: np.ndarray, *args: Any) -> None:
        np.copyto(out, fn(*args))

    return step


_pool_step = _copy_of(movement.pool_windows)
_patch_step = _copy_of(movement.patchify)


def _pool_windows(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    users = [o for o in ctx.program.ops if op.out in o.args.values()]
    if len(users) == 1 and _maxpool_source(ctx, users[0], bufs) is op:
        return NO_STEP  # the max pool step reads the image itself
    return _windows(ctx, op, bufs, 1) or (_pool_step, (bufs[op.out], bufs[op.args["x"]], op.attrs))


def _patchify(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    return _patch_step, (bufs[op.out], bufs[op.args["x"]], op.attrs["patch"])


#: op kind -> step builder.  Builders return None for layouts they do not cover (the interpreter runs
#: those); views (reshape, slice_rows, unpadded pack/unpack) need no step.
BUILDERS: dict[str, Callable[[StepContext, Op, Mapping[str, np.ndarray]], Optional[Step]]] = {
    "gemm": _gemm,
    "gemm_batched": _gemm_batched,
    "scale": _scale,
    "pairwise_max": _pairwise_max,
    "softmax_rows": _softmax_rows,
    "layernorm_rows": _layernorm_rows,
    "pack": _pack,
    "unpack": _unpack,
    "positions": _positions,
    "gather": _gather,
    "transpose": _transpose,
    "im2col": _im2col,
    "pool_windows": _pool_windows,
    "patchify": _patchify,
}


def signature_counts(program_masks: Sequence[str], env: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    """Real-token count of every mask (part of the plan signature)."""
    return tuple(int(np.count_nonzero(env[m])) for m in program_masks)
