"""Step builders of a :class:`~nmengine.plan.Plan`: one per op kind, each turning an op and its arena
buffers into one call (a core function and its arguments, already viewed, strided and broadcast, with
PWL tables prepared and constant GEMM operands pre-packed), or None when the op's layout is not covered
(the interpreter then runs it, same bits).

:data:`BUILDERS` maps op kind -> builder: the place to hook a new kernel in.  Fusions that read across
ops are decided here too: a convolution's im2col folded into one channels-last step (float32 or int8), a
depthwise convolution read straight from its windows, a max pool over channels-last windows.

(About 560 lines: one builder per op kind, sharing the step context and the epilogue helpers.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import numpy as np

from . import kernels, movement, runtime_int8
from .program import Op, Program, apply_view, expand
from .runtime import scale_numpy
from .shapes import pair

__all__ = ["Step", "NO_STEP", "StepContext", "BUILDERS", "interpret", "mask_bool"]

Step = tuple[Callable[..., Any], tuple]
#: What a builder returns for an op whose work another op's step does (an im2col read directly by a
#: depthwise conv step).
NO_STEP: Step = (lambda: None, ())


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
# Python steps (ops without a core call, and the interpreter fallback)
# ---------------------------------------------------------------------------------------------
def mask_bool(mask: np.ndarray, out: np.ndarray) -> None:
    np.not_equal(mask, 0, out=out)


def interpret(ctx: StepContext, op: Op, bufs: Mapping[str, np.ndarray]) -> None:
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


def _move_rows(ctx: StepContext, op: Op, bufs, unpack: bool) -> Optional[Step]:
    """pack ([B, T, ...] -> the real tokens' rows) or unpack (back, padding zeroed) in one core call."""
    x, out, mask = bufs[op.args["x"]], bufs[op.out], bufs[ctx.masks[op.args["mask"]]]
    if not x.flags.c_contiguous:
        return None
    flat = mask.reshape(-1)
    width = x.itemsize * int(np.prod(x.shape[1 if unpack else 2 :], dtype=np.int64))
    return ctx.core.move_rows, (x, out, flat, None, flat.size, width, unpack, ctx.threads)


def _pack(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    return _move_rows(ctx, op, bufs, unpack=False)


def _unpack(ctx: StepContext, op: Op, bufs) -> Optional[Step]:
    return _move_rows(ctx, op, bufs, unpack=True)


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
