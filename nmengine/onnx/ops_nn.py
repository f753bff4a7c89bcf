"""Rules for network layers: convolution, pooling, normalisation, softmax, piecewise-linear activations.

Convolutions are ``im2col`` + one batched GEMM (groups, depthwise included, as a batch of per-group
GEMMs read through a zero-copy view; dilation as a zero-inflated kernel; asymmetric padding as an
explicit ``pad``).  Activations that are piecewise linear (Clip/ReLU6, LeakyRelu, PRelu, HardSigmoid,
HardSwish) are exact compositions of the relu epilogue, no table.  Softmax and LayerNormalization reuse
the compiler's own rules (:data:`nmengine.compile.lower.RULES`), so the runtime's fused passes apply.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..compile.lower import RULES as LOWER_RULES
from ..compile.lower import softmax_rows
from ..spec import Layer
from .context import Ctx, Unsupported, Val, const, rule, tensor
from .dims import Sym, dprod, is_static
from .ops_math import attrs, relu_of, scale, unary_pwl

__all__: list[str] = []


def _static_hw(x: Val, what: str) -> tuple[int, int]:
    if x.rank != 4:
        raise Unsupported(f"{what} on a rank-{x.rank} input (only 2-D NCHW)")
    h, w = x.shape[2], x.shape[3]
    if isinstance(h, Sym) or isinstance(w, Sym) or isinstance(x.shape[1], Sym):
        raise Unsupported(f"{what} needs static channels and spatial dims, got {x.shape}")
    return int(h), int(w)


def _pads(at: dict, h: int, w: int, k: tuple[int, int], s: tuple[int, int]) -> list[int]:
    """[top, left, bottom, right] from pads / auto_pad."""
    ap = at.get("auto_pad", b"NOTSET")
    ap = ap.decode() if isinstance(ap, bytes) else ap
    if ap in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for size, kk, ss in ((h, k[0], s[0]), (w, k[1], s[1])):
            total = max((math.ceil(size / ss) - 1) * ss + kk - size, 0)
            small = total // 2
            out.append((small, total - small) if ap == "SAME_UPPER" else (total - small, small))
        return [out[0][0], out[1][0], out[0][1], out[1][1]]
    if ap == "VALID":
        return [0, 0, 0, 0]
    p = [int(v) for v in at.get("pads", [0, 0, 0, 0])]
    if len(p) != 4:
        raise Unsupported(f"pads {p} (only 2-D)")
    return p


def _explicit_pad(cx: Ctx, x: Val, t: int, l: int, b: int, r: int, mode: str) -> Val:
    n, c, h, w = x.shape
    name = cx.op(
        "pad",
        cx.fresh("pad"),
        {"x": x.name},
        f"pad {t},{l},{b},{r} ({mode})",
        pads=[[0, 0], [0, 0], [t, b], [l, r]],
        mode=mode,
        value=0.0,
    )
    return tensor(name, (n, c, h + t + b, w + l + r))


@rule(
    "Conv",
    how="im2col + one GEMM per image (groups/depthwise: a batch of per-group GEMMs through a "
    "zero-copy view); bias, BatchNorm, residual and activation fused into the GEMM; networks without "
    "grouped convs run channels last: one GEMM per conv over all images (NHWC im2col, none for 1x1)",
)
def _conv(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x, wv = cx.dense(ins[0]), ins[1]
    bv = ins[2] if len(ins) > 2 else None
    if not wv.is_const or (bv is not None and not bv.is_const):
        raise Unsupported("Conv with run-time weights")
    h, wd = _static_hw(x, "Conv")
    at = attrs(node)
    w = np.asarray(wv.array, np.float64)
    if w.ndim != 4:
        raise Unsupported(f"Conv with a rank-{w.ndim} kernel (only 2-D)")
    co, cig, kh, kw = w.shape
    g = int(at.get("group", 1))
    c = int(x.shape[1])
    if cig * g != c or co % g:
        raise Unsupported(f"Conv: input has {c} channels, kernel {w.shape} with group={g}")
    d = [int(v) for v in at.get("dilations", [1, 1])]
    if d != [1, 1]:  # dilation as a zero-inflated kernel: exact, costs the zero MACs
        wz = np.zeros((co, cig, d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1))
        wz[:, :, :: d[0], :: d[1]] = w
        w = wz
        kh, kw = w.shape[2:]
    s = [int(v) for v in at.get("strides", [1, 1])]
    t, l, b, r = _pads(at, h, wd, (kh, kw), (s[0], s[1]))
    if t == b and l == r:
        pad = [t, l]
    else:
        x = _explicit_pad(cx, x, t, l, b, r, "constant")
        h, wd = h + t + b, wd + l + r
        pad = [0, 0]
    ho = (h + 2 * pad[0] - kh) // s[0] + 1
    wo = (wd + 2 * pad[1] - kw) // s[1] + 1
    if ho < 1 or wo < 1:
        raise Unsupported(f"Conv window {kh}x{kw} does not fit the {h}x{wd} input")
    if kh == kw == 1 and s == [1, 1] and pad == [0, 0]:  # a 1x1 conv reads the image as it is: a view
        cols = cx.op("reshape", cx.fresh("cols"), {"x": x.name}, "view as [N, C, H*W]", shape=[0, 0, -1])
    else:
        cols = cx.op(
            "im2col", cx.fresh("cols"), {"x": x.name}, f"im2col {kh}x{kw}", kernel=[kh, kw], stride=s, padding=pad
        )
    kg = cig * kh * kw
    out = cx.out_name()
    n = x.shape[0]
    if g == 1:
        args = {"a": cx.const_name(w.reshape(co, kg).astype(np.float32), "w"), "b": cols}
        if bv is not None:
            args["bias_row"] = cx.const_name(np.asarray(bv.array, np.float32).reshape(-1), "b")
        gm = cx.op("gemm_batched", cx.fresh("gemm"), args, f"conv {c}->{co} {kh}x{kw}")
        inverse = [0, 0, -1]
    else:
        args = {"a": cx.const_name(w.reshape(g, co // g, kg).astype(np.float32), "w"), "b": cols}
        if bv is not None:
            args["res"] = cx.const_name(np.asarray(bv.array, np.float32).reshape(g, co // g, 1), "b")
        kind = "depthwise conv" if cig == 1 else f"grouped conv (groups={g})"
        gm = cx.op(
            "gemm_batched", cx.fresh("gemm"), args, f"{kind} {c}->{co} {kh}x{kw}", b_view={"reshape": [0, g, kg, -1]}
        )
        inverse = [0, g, co // g, -1]
    name = cx.op("reshape", out, {"x": gm}, "view as NCHW", shape=[0, co, ho, wo], inverse=inverse)
    return [tensor(name, (n, co, ho, wo))]


@rule("BatchNormalization", how="folded into the preceding Conv/Gemm weights; alone, a per-channel diagonal GEMM")
def _batchnorm(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = ins[0]
    if not all(v is not None and v.is_const for v in ins[1:5]):
        raise Unsupported("BatchNormalization with run-time statistics")
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("BatchNormalization in training mode (extra outputs)")
    gamma, beta, mean, var = (np.asarray(v.array, np.float64) for v in ins[1:5])
    eps = float(attrs(node).get("epsilon", 1e-5))
    gsc = gamma / np.sqrt(var + eps)
    shift = beta - mean * gsc
    tail = (1,) * max(x.rank - 2, 0)
    return [
        scale(
            cx,
            x,
            "batchnorm as a per-channel diagonal GEMM",
            out=cx.out_name(),
            mul=const(gsc.reshape((-1,) + tail).astype(np.float32)),
            res=const(shift.reshape((-1,) + tail).astype(np.float32)),
        )
    ]


def _pool_geometry(at: dict, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], list[int], int, int, int, int]:
    kl = [int(v) for v in at["kernel_shape"]]
    if len(kl) != 2:
        raise Unsupported(f"pooling kernel {tuple(kl)} (only 2-D)")
    if [int(v) for v in at.get("dilations", [1, 1])] != [1, 1]:
        raise Unsupported("dilated pooling")
    k = (kl[0], kl[1])
    sl = [int(v) for v in at.get("strides", [1, 1])]
    s = (sl[0], sl[1])
    t, l, b, r = _pads(at, h, w, k, s)
    ceil = bool(at.get("ceil_mode", 0))
    outs = []
    for size, p0, p1, kk, ss in ((h, t, b, k[0], s[0]), (w, l, r, k[1], s[1])):
        span = size + p0 + p1 - kk
        o = (-(-span // ss) if ceil else span // ss) + 1
        if ceil and (o - 1) * ss >= size + p0:
            o -= 1
        if o < 1:
            raise Unsupported(f"pooling window {k} does not fit a {h}x{w} input")
        outs.append(o)
    ho, wo = outs
    eb = max((ho - 1) * s[0] + k[0] - (h + t + b), 0)
    er = max((wo - 1) * s[1] + k[1] - (w + l + r), 0)
    return k, s, [t, l, b, r], ho, wo, eb, er


@rule(
    "MaxPool",
    "AveragePool",
    how="window extraction (data movement) + pairwise-max tree (b + relu(a - b)) or a GEMM with a 1/count column",
)
def _pool(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("MaxPool with an Indices output")
    h, w = _static_hw(x, node.op_type)
    at = attrs(node)
    k, s, (t, l, b, r), ho, wo, eb, er = _pool_geometry(at, h, w)
    is_max = node.op_type == "MaxPool"
    n, c = x.shape[0], x.shape[1]
    if t == b + eb and l == r + er:
        win = cx.op(
            "pool_windows",
            cx.fresh("win"),
            {"x": x.name},
            f"{k[0]}x{k[1]} windows",
            kernel=list(k),
            stride=list(s),
            padding=[t, l],
            pad="edge" if is_max else "zero",
        )
    else:
        xp = _explicit_pad(cx, x, t, l, b + eb, r + er, "edge" if is_max else "constant")
        win = cx.op(
            "pool_windows",
            cx.fresh("win"),
            {"x": xp.name},
            f"{k[0]}x{k[1]} windows",
            kernel=list(k),
            stride=list(s),
            padding=[0, 0],
        )
    if is_max:
        red = cx.op("pairwise_max", cx.fresh("max"), {"x": win}, "max as b + relu(a - b) tree")
    else:
        include = bool(at.get("count_include_pad", 0))
        lo_h, hi_h = (-t, h + b) if include else (0, h)
        lo_w, hi_w = (-l, w + r) if include else (0, w)
        rows = np.arange(ho) * s[0] - t
        cols = np.arange(wo) * s[1] - l
        ch = np.minimum(rows + k[0], hi_h) - np.maximum(rows, lo_h)
        cw = np.minimum(cols + k[1], hi_w) - np.maximum(cols, lo_w)
        count = np.outer(ch, cw).astype(np.float64)
        kk = k[0] * k[1]
        if np.all(count == kk):
            red = cx.b.row_sum(win, kk, cx.layer, cx.fresh("avg"), "window mean by GEMM", scale=1.0 / kk)
        else:
            sm = cx.b.row_sum(win, kk, cx.layer, cx.fresh("sum"), "window sum by GEMM")
            red = cx.op(
                "scale",
                cx.fresh("avg"),
                {"x": sm, "mul": cx.const_name((1.0 / count)[:, :, None], "count")},
                "divide by the window count",
            )
    name = cx.op("reshape", cx.out_name(), {"x": red}, "view as NCHW", shape=[0, c, ho, wo])
    return [tensor(name, (n, c, ho, wo))]


@rule("GlobalAveragePool", "GlobalMaxPool", how="GEMM with a 1/(H*W) column, or the pairwise-max tree")
def _global_pool(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    h, w = _static_hw(x, node.op_type)
    flat = cx.op("reshape", cx.fresh("flat"), {"x": x.name}, "view as [N, C, H*W]", shape=[0, 0, -1])
    if node.op_type == "GlobalMaxPool":
        red = cx.op("pairwise_max", cx.fresh("max"), {"x": flat}, "max as b + relu(a - b) tree")
    else:
        red = cx.b.row_sum(flat, h * w, cx.layer, cx.fresh("mean"), "spatial mean by GEMM", scale=1.0 / (h * w))
    name = cx.op("reshape", cx.out_name(), {"x": red}, "view as [N, C, 1, 1]", shape=[0, 0, 1, 1])
    return [tensor(name, (x.shape[0], x.shape[1], 1, 1))]


@rule("Flatten", how="reshape (a view)")
def _flatten(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    ax = int(attrs(node).get("axis", 1)) % (x.rank + 1) if x.rank else 0
    lead, rest = dprod(x.shape[:ax]), dprod(x.shape[ax:])
    if ax == 0:
        spec = [1, -1]
    elif ax == 1:
        spec = [0, -1]
    elif isinstance(lead, int):
        spec = [lead, -1]
    elif isinstance(rest, int):
        spec = [-1, rest]
    else:
        raise Unsupported(f"Flatten(axis={ax}) of {x.shape}: both parts dynamic")
    return [tensor(cx.op("reshape", cx.out_name(), {"x": x.name}, "flatten", shape=spec), (lead, rest))]


def _transpose_last(cx: Ctx, x: Val, axis: int) -> tuple[Val, list[int] | None]:
    if axis == x.rank - 1:
        return x, None
    perm = list(range(x.rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    name = cx.op("transpose", cx.fresh("T"), {"x": x.name}, "move the axis last", perm=perm)
    return tensor(name, tuple(x.shape[p] for p in perm)), perm


@rule(
    "Softmax",
    how="row max by the pairwise-max tree, exp(x - max) as a PWL epilogue, 1/row-sum as a GEMM "
    "with a ones column + reciprocal PWL, a row scale",
    tables="exp, reciprocal",
)
def _softmax(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    at = attrs(node)
    axis = int(at.get("axis", -1 if cx.opset >= 13 else 1)) % x.rank
    if cx.opset < 13 and axis != x.rank - 1:  # opset < 13: softmax over all axes from `axis` on
        trailing = x.shape[axis:]
        n = dprod(trailing)
        back = [int(d) if not isinstance(d, Sym) else -1 for d in trailing]
        if back.count(-1) > 1:
            raise Unsupported("Softmax (opset < 13) over several dynamic trailing axes")
        flat = cx.op("reshape", cx.fresh("flat"), {"x": x.name}, "merge the softmax axes", shape=[0] * axis + [-1])
        p = softmax_rows(cx.b, cx.layer, flat, None if isinstance(n, Sym) else int(n), cx.fresh("sm"))
        name = cx.op("reshape", cx.out_name(), {"x": p}, "restore the softmax axes", shape=[0] * axis + back)
        return [tensor(name, x.shape)]
    cur, perm = _transpose_last(cx, x, axis)
    n = cur.shape[-1]
    p = softmax_rows(cx.b, cx.layer, cur.name, None if isinstance(n, Sym) else int(n), cx.fresh("sm"))
    out = cx.out_name()
    if perm is None:
        name = cx.op("reshape", out, {"x": p}, "softmax result", shape=[0] * x.rank)
    else:
        name = cx.op("transpose", out, {"x": p}, "restore axis order", perm=perm)
    return [tensor(name, x.shape)]


@rule(
    "LayerNormalization",
    how="mean and variance as GEMMs with a 1/D column, centring and squares as "
    "diagonal GEMMs, rsqrt PWL on the variance, a row scale (+ gamma/beta)",
    tables="rsqrt",
)
@rule(
    "NmLayerNorm",
    how="decomposed LayerNorm (ReduceMean-Sub-Pow-ReduceMean-Add-Sqrt-Div) fused at import, then as LayerNormalization",
    tables="rsqrt",
)
def _layernorm(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    at = attrs(node)
    if len([o for o in node.output if o]) > 1:
        raise Unsupported("LayerNormalization with Mean / InvStdDev outputs")
    axis = int(at.get("axis", -1)) % x.rank
    eps = float(at.get("epsilon", 1e-5))
    trailing = x.shape[axis:]
    if not is_static(trailing):
        raise Unsupported(f"LayerNormalization over dynamic dims {trailing}")
    d = int(np.prod([int(v) for v in trailing]))
    gamma = ins[1] if len(ins) > 1 and ins[1] is not None else const(np.ones(d, np.float32))
    beta = ins[2] if len(ins) > 2 and ins[2] is not None else const(np.zeros(d, np.float32))
    if not (gamma.is_const and beta.is_const):
        raise Unsupported("LayerNormalization with run-time scale/bias")
    g = np.broadcast_to(np.asarray(gamma.array, np.float32), trailing).reshape(d)
    bb = np.broadcast_to(np.asarray(beta.array, np.float32), trailing).reshape(d)
    cur = x
    if axis != x.rank - 1:
        cur = tensor(
            cx.op("reshape", cx.fresh("flat"), {"x": x.name}, "merge normalised axes", shape=[0] * axis + [-1]),
            x.shape[:axis] + (d,),
        )
    lyr = Layer("layernorm", cx.layer.name, [cur.name], "", {"eps": eps}, {"weight": g.copy(), "bias": bb.copy()})
    out = cx.out_name()
    target = out if axis == x.rank - 1 else cx.fresh("ln")
    LOWER_RULES["layernorm"](cx.b, lyr, [cur.name], target, [cur.shape])
    if axis != x.rank - 1:
        cx.op("reshape", out, {"x": target}, "restore normalised axes", shape=[0] * axis + [int(v) for v in trailing])
    return [tensor(out, x.shape)]


# ---------------------------------------------------------------------------------------------
# Piecewise-linear activations: exact relu compositions
# ---------------------------------------------------------------------------------------------
def clip(cx: Ctx, x: Val, lo: float | None, hi: float | None, out: str) -> Val:
    """clip(x, lo, hi) = lo + relu((x - lo) - relu(x - hi)); one side only: relu / x - relu(x - hi);
    ReLU6 (lo 0, hi 6): the catalog's exact ``relu6`` table, one epilogue instead of two passes."""
    if hi is None:
        if lo is None:
            return scale(cx, x, "clip (no bounds)", out=out)
        if lo == 0.0:
            return relu_of(cx, x, "relu", out=out)
        y = relu_of(cx, x, "relu(x - lo)", beta=-lo)
        return scale(cx, y, "+ lo", out=out, beta=lo)
    if lo == 0.0 and hi == 6.0:  # ReLU6: one exact 3-segment table, which fuses into the producing GEMM
        return unary_pwl(cx, x, "relu6", "relu6 (exact 3-segment table)", out=out)
    t = relu_of(cx, x, "relu(x - hi)", beta=-hi)
    if lo is None:
        return scale(cx, x, "x - relu(x - hi)", out=out, res=t, res_beta=-1.0)
    if lo == 0.0:
        return relu_of(cx, x, "relu(x - relu(x - hi))", out=out, res=t, res_beta=-1.0)
    y = relu_of(cx, x, "relu(x - lo - relu(x - hi))", beta=-lo, res=t, res_beta=-1.0)
    return scale(cx, y, "+ lo", out=out, beta=lo)


def _scalar(v: Val | None, what: str) -> float | None:
    if v is None:
        return None
    if not v.is_const or v.array.size != 1:
        raise Unsupported(f"{what} must be a constant scalar")
    return float(np.asarray(v.array, np.float64).reshape(()))


@rule(
    "Clip",
    how="exact PWL: ReLU6 (0, 6) as the exact 3-segment table relu6 in the producing GEMM's epilogue; "
    "other bounds lo + relu((x - lo) - relu(x - hi))",
    tables="relu6 (exact)",
)
def _clip(cx: Ctx, node: Any, ins: list) -> list[Val]:
    at = attrs(node)
    if cx.opset < 11:
        lo, hi = at.get("min"), at.get("max")
    else:
        lo = _scalar(ins[1] if len(ins) > 1 else None, "Clip min")
        hi = _scalar(ins[2] if len(ins) > 2 else None, "Clip max")
    return [clip(cx, ins[0], lo, hi, cx.out_name())]


@rule("LeakyRelu", how="exact PWL: alpha * x + (1 - alpha) * relu(x)")
def _leaky(cx: Ctx, node: Any, ins: list) -> list[Val]:
    a = float(attrs(node).get("alpha", 0.01))
    t = relu_of(cx, ins[0])
    return [scale(cx, ins[0], "leaky relu", out=cx.out_name(), alpha=a, res=t, res_beta=1.0 - a)]


@rule("PRelu", how="exact PWL: slope * x + (1 - slope) * relu(x) with the slope as a constant operand")
def _prelu(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x, sl = ins
    if not sl.is_const:
        raise Unsupported("PRelu with a run-time slope")
    s = np.asarray(sl.array, np.float64)
    t = relu_of(cx, x)
    if s.size == 1:
        a = float(s.reshape(()))
        return [scale(cx, x, "prelu", out=cx.out_name(), alpha=a, res=t, res_beta=1.0 - a)]
    t2 = scale(cx, t, "(1 - slope) * relu(x)", mul=const((1.0 - s).astype(np.float32)))
    return [scale(cx, x, "prelu", out=cx.out_name(), mul=const(s.astype(np.float32)), res=t2)]


def hard_sigmoid(cx: Ctx, x: Val, a: float, b: float, out: str | None) -> Val:
    """clip(a x + b, 0, 1) = relu(a x + b - relu(a x + b - 1))."""
    t = relu_of(cx, x, "relu(a x + b - 1)", alpha=a, beta=b - 1.0)
    return relu_of(cx, x, "hard sigmoid", out=out, alpha=a, beta=b, res=t, res_beta=-1.0)


@rule("HardSigmoid", how="exact PWL: relu(a x + b - relu(a x + b - 1))")
def _hsig(cx: Ctx, node: Any, ins: list) -> list[Val]:
    at = attrs(node)
    return [hard_sigmoid(cx, ins[0], float(at.get("alpha", 0.2)), float(at.get("beta", 0.5)), cx.out_name())]


@rule("HardSwish", how="x * hard_sigmoid(x): exact PWL composition and an elementwise product")
def _hswish(cx: Ctx, node: Any, ins: list) -> list[Val]:
    hs = hard_sigmoid(cx, ins[0], 1.0 / 6.0, 0.5, None)
    return [scale(cx, ins[0], "hard swish", out=cx.out_name(), mul=hs)]


@rule(
    "NmL2Norm",
    how="L2 normalisation (x / max(|x|, eps) from F.normalize, fused at import): sum of squares "
    "by a GEMM with eps^2 bias, rsqrt PWL, a row scale",
    tables="rsqrt",
)
def _l2norm(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    at = attrs(node)
    eps = float(at.get("epsilon", 1e-12))
    cur, perm = _transpose_last(cx, x, int(at.get("axis", -1)) % x.rank)
    lyr = Layer("l2_normalize", cx.layer.name, [cur.name], "", {"eps": eps}, {})
    d = cur.shape[-1]
    target = cx.out_name() if perm is None else cx.fresh("l2")
    LOWER_RULES["l2_normalize"](cx.b, lyr, [cur.name], target, [cur.shape[:-1] + (None if isinstance(d, Sym) else d,)])
    if perm is not None:
        cx.op("transpose", cx.out_name(), {"x": target}, "restore axis order", perm=perm)
    return [tensor(cx.out_name(), x.shape)]
