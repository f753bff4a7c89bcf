"""Rules for arithmetic: elementwise ops with broadcasting, MatMul/Gemm, reductions, masks.

Constant operands fold into the op: a scalar into ``alpha``/``beta``, a vector over the last axis into
``col_scale``/``bias``, anything else is a broadcast constant operand.  Tensor x tensor products are
diagonal GEMMs (``scale`` with ``mul``); division is a product with the reciprocal PWL; masks (bool as
0/1 floats) select with ``x * c + y * (1 - c)``; integer comparisons are exact relu compositions.
(About 500 lines: the arithmetic rules share the constant-folding helpers at the top.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import helper

from ..compile.lower import MASK_BIAS
from .context import Ctx, Unsupported, Val, broadcast_dims, const, rule, tensor

__all__ = ["attrs", "axes_of", "emit_gemm_const", "relu_of", "scale", "unary_pwl"]


def attrs(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _phys(v: Val) -> tuple:
    return tuple(v.pshape)


def scale(
    cx: Ctx, x: Val, what: str, *, out: str | None = None, dtype: str = "f", epilogue: dict | None = None, **kw: Any
) -> Val:
    """Emit ``scale`` on x with operand Vals (roles mul/row_scale/col_scale/bias/bias_row/res) and
    float attrs (alpha/beta/res_beta/add); the result keeps lazy broadcasting."""
    args = {"x": cx.buf(x)}
    attrs_: dict[str, Any] = {}
    logical = [x.shape]
    physical = [_phys(x)]
    for k, v in kw.items():
        if isinstance(v, Val):
            args[k] = cx.buf(v)
            logical.append(v.shape)
            physical.append(_phys(v) if k not in ("col_scale", "bias") else (v.pshape[-1],))
        elif v is not None:
            attrs_[k] = float(v) if not isinstance(v, bool) else v
    if epilogue:
        attrs_["epilogue"] = epilogue
    name = cx.op("scale", out or cx.fresh("s"), args, what, **attrs_)
    return tensor(name, broadcast_dims(*logical), dtype, pshape=broadcast_dims(*physical))


def relu_of(cx: Ctx, x: Val, what: str = "relu", **kw: Any) -> Val:
    return scale(cx, x, what, epilogue={"act": "relu"}, **kw)


def unary_pwl(cx: Ctx, x: Val, fn: str, what: str, out: str | None = None) -> Val:
    return scale(cx, x, what, out=out, epilogue=cx.pwl(fn))


def _is_scalar(v: Val) -> bool:
    return v.is_const and v.array.size == 1 and v.array.dtype != object


def _last_vector(v: Val, x: Val) -> bool:
    """A constant that varies only along the last axis, with x's last dim."""
    if not v.is_const:
        return False
    a = v.array
    return (
        a.ndim >= 1
        and a.dtype != object
        and a.ndim <= x.rank
        and a.shape[-1] == x.pshape[-1]
        and a.size == a.shape[-1]
        and isinstance(x.pshape[-1], int)
    )


def _fval(v: Val) -> float:
    """A scalar constant; mask sentinels (|c| >= 1e30: -inf, finfo.min) saturate at +-MASK_BIAS, where exp
    underflows to 0 all the same and sums and max trees stay finite and exact."""
    c = float(np.asarray(v.array, dtype=np.float64).reshape(()))
    return float(np.sign(c) * MASK_BIAS) if abs(c) >= 1e30 else c


def _is01(v: Val) -> bool:
    """Values known to be 0 or 1 (boolean masks and their products)."""
    if v.dtype == "b":
        return True
    return v.is_const and v.array.dtype != object and bool(np.all((v.array == 0) | (v.array == 1)))


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _add_const(cx: Ctx, x: Val, c: Val, sign: float, what: str, out: str | None, alpha: float = 1.0) -> Val:
    kw: dict[str, Any] = {}
    if alpha != 1.0:
        kw["alpha"] = alpha
    if _is_scalar(c):
        kw["beta"] = sign * _fval(c)
    elif _last_vector(c, x):
        kw["bias"] = const((sign * _f32(c.array)).reshape(-1).astype(np.float32))
    else:
        kw["res"] = const((sign * _f32(c.array)).astype(np.float32), c.shape)
    return scale(cx, x, what, out=out, **kw)


def _mul_const(cx: Ctx, x: Val, c: np.ndarray, cshape: tuple, what: str, out: str | None) -> Val:
    cv = const(np.asarray(c, dtype=np.float32), cshape)
    if cv.array.size == 1:
        return scale(cx, x, what, out=out, alpha=_fval(cv), dtype="b" if _is01(x) and _is01(cv) else "f")
    if _last_vector(cv, x):
        return scale(cx, x, what, out=out, col_scale=const(cv.array.reshape(-1)))
    return scale(cx, x, what, out=out, mul=cv)


def reciprocal(cx: Ctx, x: Val, what: str = "reciprocal (PWL)") -> Val:
    return unary_pwl(cx, x, "reciprocal", what)


def _float(v: Val, node: Any) -> None:
    if v.dtype == "i" and not v.is_const:
        raise Unsupported("integer tensor arithmetic at run time")


@rule(
    "Add",
    "Sub",
    "Mul",
    "Div",
    how="diagonal GEMM (scale): constants fold into alpha/beta/bias/column scale; "
    "tensor products as elementwise GEMM; x / y = x * reciprocal(y)",
    tables="reciprocal (Div by a tensor)",
)
def _binary(cx: Ctx, node: Any, ins: list) -> list[Val]:
    a, b = ins
    t = node.op_type
    out = cx.out_name()
    if a.is_const and b.is_const:  # symbolic shape arithmetic (object arrays) or lazily broadcast consts
        return [_fold_sym(t, a, b)]
    for v in (a, b):
        _float(v, node)
    if t == "Add":
        if a.is_const:
            a, b = b, a
        if b.is_const:
            return [_add_const(cx, a, b, 1.0, "add constant", out)]
        same = _phys(a) == _phys(b)
        if not same and broadcast_dims(_phys(a), _phys(b)) != _phys(a):
            a, b = b, a
        return [scale(cx, a, "add", out=out, res=b, add=(_phys(a) == _phys(b)) or None)]
    if t == "Sub":
        if b.is_const:
            return [_add_const(cx, a, b, -1.0, "subtract constant", out)]
        if a.is_const:
            return [_add_const(cx, b, a, 1.0, "constant minus x", out, alpha=-1.0)]
        return [scale(cx, a, "subtract", out=out, res=b, res_beta=-1.0)]
    if t == "Mul":
        if a.is_const:
            a, b = b, a
        if b.is_const:
            return [_mul_const(cx, a, b.array, b.shape, "multiply by constant", out)]
        if broadcast_dims(_phys(a), _phys(b)) != _phys(a):
            a, b = b, a
        return [
            scale(
                cx,
                a,
                "elementwise product (diagonal GEMM)",
                out=out,
                mul=b,
                dtype="b" if _is01(a) and _is01(b) else "f",
            )
        ]
    # Div
    if b.is_const:
        with np.errstate(divide="ignore"):
            inv = 1.0 / _f32(b.array)
        if not np.all(np.isfinite(inv)):
            raise Unsupported("division by a constant zero")
        return [_mul_const(cx, a, inv, b.shape, "divide by constant", out)]
    r = reciprocal(cx, b)
    if a.is_const:
        return [_mul_const(cx, r, a.array, a.shape, "constant / x", out)]
    return [scale(cx, a, "x * reciprocal(y)", out=out, mul=r)]


def _fold_sym(t: str, a: Val, b: Val) -> Val:
    """Arithmetic on constants that are symbolic or lazily broadcast (shape math, fills)."""
    from .dims import Sym, ddiv, dmul, fresh

    x, y = a.array, b.array
    if x.dtype != object and y.dtype != object:
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[t]
        r = fn(x, y)
        if t == "Div" and x.dtype.kind in "iu" and y.dtype.kind in "iu":
            r = np.floor_divide(x, y)
        return const(r.astype(np.result_type(x, y)), broadcast_dims(a.shape, b.shape))

    def f(p: Any, q: Any) -> Any:
        if not isinstance(p, Sym) and not isinstance(q, Sym):
            p, q = int(p), int(q)
            return {"Add": p + q, "Sub": p - q, "Mul": p * q, "Div": p // q if q else 0}[t]
        if t == "Mul":
            return dmul(p, q)
        if t == "Div":
            r = ddiv(p, q)
            return r if r is not None else fresh("div")
        if q == 0 or (t == "Add" and p == 0):
            return q if p == 0 and t == "Add" else p
        return fresh("sum")

    r = np.frompyfunc(f, 2, 1)(x, y)
    return const(np.asarray(r, dtype=object))


@rule(
    "Pow",
    how="constant exponent: 2 and 3 as elementwise products, 0.5 / -0.5 / -1 as sqrt / rsqrt / reciprocal PWL",
    tables="sqrt, rsqrt, reciprocal",
)
def _pow(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x, e = ins
    if not (e.is_const and e.array.size == 1):
        raise Unsupported("Pow needs a constant scalar exponent")
    p = float(np.asarray(e.array, dtype=np.float64).reshape(()))
    out = cx.out_name()
    if p == 1.0:
        return [scale(cx, x, "x^1", out=out)]
    if p == 2.0:
        return [scale(cx, x, "square (elementwise product)", out=out, mul=x)]
    if p == 3.0:
        sq = scale(cx, x, "square", mul=x)
        return [scale(cx, sq, "cube (elementwise product)", out=out, mul=x)]
    fn = {0.5: "sqrt", -0.5: "rsqrt", -1.0: "reciprocal"}.get(p)
    if fn is None:
        raise Unsupported(f"Pow with exponent {p} (supported: 1, 2, 3, 0.5, -0.5, -1)")
    return [unary_pwl(cx, x, fn, f"x^{p} ({fn} PWL)", out=out)]


_UNARY = {
    "Exp": "exp",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Erf": "erf",
    "Sqrt": "sqrt",
    "Reciprocal": "reciprocal",
    "Softplus": "softplus",
    "NmRsqrt": "rsqrt",
    "NmGelu": "gelu",
    "NmGeluTanh": "gelu_tanh",
    "NmSilu": "silu",
}


@rule(
    "Exp",
    "Tanh",
    "Sigmoid",
    "Erf",
    "Sqrt",
    "Reciprocal",
    "Softplus",
    how="PWL table (GEMM epilogue)",
    tables="the function's own table",
)
@rule("NmRsqrt", how="rsqrt PWL (x / sqrt(v) rewritten to x * rsqrt(v))", tables="rsqrt")
@rule("NmGelu", how="GELU PWL (erf pattern Div-Erf-Add-Mul-Mul fused at import)", tables="gelu")
@rule("NmGeluTanh", how="tanh-GELU PWL (Pow-Mul-Add-Mul-Tanh-Add-Mul-Mul fused at import)", tables="gelu_tanh")
@rule("NmSilu", how="SiLU PWL (x * Sigmoid(x) fused at import)", tables="silu")
def _unary(cx: Ctx, node: Any, ins: list) -> list[Val]:
    fn = _UNARY[node.op_type]
    _float(ins[0], node)
    return [unary_pwl(cx, ins[0], fn, f"{fn} (PWL)", out=cx.out_name())]


@rule("Gelu", how="GELU PWL (approximate='none' -> gelu, 'tanh' -> gelu_tanh)", tables="gelu or gelu_tanh")
def _gelu(cx: Ctx, node: Any, ins: list) -> list[Val]:
    appr = attrs(node).get("approximate", b"none")
    appr = appr.decode() if isinstance(appr, bytes) else appr
    fn = "gelu_tanh" if appr == "tanh" else "gelu"
    return [unary_pwl(cx, ins[0], fn, f"{fn} (PWL)", out=cx.out_name())]


@rule("Relu", how="exact 2-segment PWL (relu epilogue)")
def _relu(cx: Ctx, node: Any, ins: list) -> list[Val]:
    return [relu_of(cx, ins[0], out=cx.out_name())]


@rule("Neg", how="diagonal GEMM with alpha = -1")
def _neg(cx: Ctx, node: Any, ins: list) -> list[Val]:
    return [scale(cx, ins[0], "negate", out=cx.out_name(), alpha=-1.0)]


@rule("Abs", how="relu(x) + relu(-x): exact PWL")
def _abs(cx: Ctx, node: Any, ins: list) -> list[Val]:
    p = relu_of(cx, ins[0])
    n = relu_of(cx, ins[0], alpha=-1.0)
    return [scale(cx, p, "abs", out=cx.out_name(), res=n)]


# ---------------------------------------------------------------------------------------------
# MatMul / Gemm
# ---------------------------------------------------------------------------------------------
def emit_gemm_const(cx: Ctx, x: Val, w: np.ndarray, bias: np.ndarray | None, what: str, out: str) -> Val:
    """``x @ w + bias`` with a constant ``w (K, N)``: one ``gemm`` (a linear layer)."""
    x = cx.dense(x)
    args = {"a": x.name, "b": cx.const_name(np.asarray(w, np.float32), "w")}
    if bias is not None:
        args["bias"] = cx.const_name(np.asarray(bias, np.float32).reshape(-1), "b")
    name = cx.op("gemm", out, args, what, linear=True)
    return tensor(name, x.shape[:-1] + (int(w.shape[1]),))


@rule(
    "MatMul",
    how="GEMM: constant right operand -> gemm (a linear layer); tensor x tensor -> gemm_batched "
    "with numpy batch broadcasting",
)
def _matmul(cx: Ctx, node: Any, ins: list) -> list[Val]:
    a, b = ins
    out = cx.out_name()
    if a.rank < 2 or b.rank < 2:
        raise Unsupported("MatMul with a 1-D operand")
    if b.is_const and b.array.ndim == 2 and not a.is_const:
        return [emit_gemm_const(cx, a, b.array, None, f"linear {b.array.shape[0]}->{b.array.shape[1]}", out)]
    a, b = cx.dense(a), cx.dense(b)
    batch = broadcast_dims(a.shape[:-2], b.shape[:-2])
    shape = batch + (a.shape[-2], b.shape[-1])
    if len(batch) == 0:
        name = cx.op("gemm", out, {"a": a.name, "b": b.name}, "matmul")
    elif len(batch) <= 2:
        name = cx.op("gemm_batched", out, {"a": a.name, "b": b.name}, "batched matmul")
    else:
        raise Unsupported("MatMul with more than 2 batch dims")
    return [tensor(name, shape)]


@rule("Gemm", how="GEMM with alpha/transB folded into the constant weight and beta*C into the bias")
def _gemm(cx: Ctx, node: Any, ins: list) -> list[Val]:
    at = attrs(node)
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    out = cx.out_name()
    if at.get("transA", 0):
        a = cx.dense(a)
        name = cx.op("transpose", cx.fresh("aT"), {"x": a.name}, "transpose A", perm=[1, 0])
        a = tensor(name, a.shape[::-1])
    if not b.is_const:
        raise Unsupported("Gemm with a run-time B")
    w = _f32(b.array)
    w = (w.T if at.get("transB", 0) else w) * alpha
    bias = None
    res = None
    if c is not None:
        if (
            c.is_const
            and (c.array.size == 1 or c.array.size == w.shape[1])
            and c.array.ndim <= 2
            and c.array.shape[-1:] in ((1,), (w.shape[1],), ())
        ):
            bias = np.broadcast_to(_f32(c.array).reshape(-1), (w.shape[1],)) * beta
        else:
            res = c
    y = emit_gemm_const(cx, a, w, bias, f"gemm {w.shape[0]}->{w.shape[1]}", out if res is None else cx.fresh("g"))
    if res is not None:
        if beta != 1.0:
            res = scale(cx, res, "beta * C", alpha=beta) if not res.is_const else const(_f32(res.array) * beta)
        y = scale(cx, y, "add C", out=out, res=res)
    return [y]


# ---------------------------------------------------------------------------------------------
# Reductions
# ---------------------------------------------------------------------------------------------
def axes_of(cx: Ctx, node: Any, ins: list, rank: int, attr_until: int) -> list[int] | None:
    """Axes from the attribute (opsets before ``attr_until``) or the second input; None = all."""
    at = attrs(node)
    if cx.opset < attr_until or "axes" in at:
        axes = at.get("axes")
    else:
        axes = None
        if len(ins) > 1 and ins[1] is not None:
            if not ins[1].is_const:
                raise Unsupported("run-time reduction axes")
            axes = [int(v) for v in np.asarray(ins[1].array).reshape(-1)]
    if axes is None or len(axes) == 0:
        return None
    return sorted({int(a) % rank for a in axes})


@rule(
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceSumSquare",
    "ReduceL2",
    how="GEMM with a ones (1/n) column over the reduced axes (squares as an elementwise product first, "
    "sqrt PWL after for ReduceL2); ReduceMax as the pairwise-max tree b + relu(a - b)",
    tables="sqrt (ReduceL2)",
)
def _reduce(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    t = node.op_type
    at = attrs(node)
    if t in ("ReduceSumSquare", "ReduceL2"):
        x = scale(cx, x, "squares (elementwise product)", mul=x)
    until = 13 if t == "ReduceSum" else 18
    axes = axes_of(cx, node, ins, x.rank, until)
    if axes is None:
        if at.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.rank))
    keep = bool(at.get("keepdims", 1))
    kept = [i for i in range(x.rank) if i not in axes]
    perm = kept + axes
    cur = x
    if perm != list(range(x.rank)):
        name = cx.op("transpose", cx.fresh("perm"), {"x": x.name}, "move reduced axes last", perm=perm)
        cur = tensor(name, tuple(x.shape[p] for p in perm))
    red = [x.shape[a] for a in axes]
    from .dims import dprod

    n = dprod(red)
    if len(axes) > 1:
        name = cx.op("reshape", cx.fresh("merge"), {"x": cur.name}, "merge reduced axes", shape=[0] * len(kept) + [-1])
        cur = tensor(name, tuple(x.shape[i] for i in kept) + (n,))
    if t == "ReduceMax":
        r = cx.op("pairwise_max", cx.fresh("max"), {"x": cur.name}, "max as b + relu(a - b) tree")
    else:
        static_n = n if isinstance(n, int) else None
        mean_scale = 1.0
        if t == "ReduceMean":
            if static_n is None:
                raise Unsupported("ReduceMean over a dynamic axis")
            mean_scale = 1.0 / static_n
        r = cx.b.row_sum(
            cur.name,
            static_n,
            cx.layer,
            cx.fresh("sum"),
            "mean by GEMM with a 1/n column" if t == "ReduceMean" else "sum by GEMM with a ones column",
            scale=mean_scale,
            epilogue=cx.pwl("sqrt") if t == "ReduceL2" else None,
        )
    kshape = tuple(x.shape[i] for i in kept)
    out = cx.out_name()
    if not keep:
        return [tensor(cx.op("reshape", out, {"x": r}, "drop reduced axes", shape=[0] * len(kept)), kshape)]
    full = tuple(1 if i in axes else x.shape[i] for i in range(x.rank))
    if perm == list(range(x.rank)):
        return [
            tensor(cx.op("reshape", out, {"x": r}, "keep reduced axes", shape=[0] * len(kept) + [1] * len(axes)), full)
        ]
    tmp = cx.op("reshape", cx.fresh("k"), {"x": r}, "keep reduced axes", shape=[0] * len(kept) + [1] * len(axes))
    inv = list(np.argsort(perm))
    return [tensor(cx.op("transpose", out, {"x": tmp}, "restore axis order", perm=[int(i) for i in inv]), full)]


# ---------------------------------------------------------------------------------------------
# Masks: Where, Equal, Not, Cast
# ---------------------------------------------------------------------------------------------
def _clamp_fill(v: Val) -> Val:
    """Large negative fills (-inf, finfo.min) become -MASK_BIAS: exp underflows to 0 all the same, and
    the products of the select stay finite."""
    if v.is_const and v.array.dtype.kind == "f":
        a = np.where(v.array <= -MASK_BIAS, -MASK_BIAS, v.array)
        a = np.where(a >= MASK_BIAS * 1e30, MASK_BIAS * 1e30, a)
        return const(a.astype(np.float32), v.shape)
    return v


def _not(cx: Ctx, c: Val, what: str = "1 - mask") -> Val:
    if c.is_const:
        return const((1.0 - np.asarray(c.array, np.float64)).astype(np.float32), c.shape)
    return scale(cx, c, what, alpha=-1.0, beta=1.0, dtype="b")


def _times(cx: Ctx, x: Val, c: Val, what: str) -> Val:
    """x * c for a value and a 0/1 mask (either may be constant, not both)."""
    if x.is_const:
        if x.array.size == 1:
            return scale(cx, c, what, alpha=_fval(x))
        return scale(cx, c, what, mul=const(np.asarray(x.array, np.float32), x.shape))
    if c.is_const:
        return scale(cx, x, what, mul=const(np.asarray(c.array, np.float32), c.shape))
    return scale(cx, x, what, mul=c)


@rule(
    "Where",
    how="select as x * c + y * (1 - c) with the condition as a 0/1 mask (diagonal GEMMs); "
    "-inf / finfo.min fills become -1e4",
)
def _where(cx: Ctx, node: Any, ins: list) -> list[Val]:
    c, x, y = ins
    if c.is_const and x.is_const and y.is_const:
        return [const(np.where(np.asarray(c.array, bool), x.array, y.array), broadcast_dims(c.shape, x.shape, y.shape))]
    x, y = _clamp_fill(x), _clamp_fill(y)
    out = cx.out_name()
    nc = _not(cx, c)
    if c.is_const:
        # both masks constant: x * c + (y * (1 - c)) with one of x, y a tensor
        if x.is_const:
            y_part = _times(cx, y, nc, "y where not c")
            x_part = const(np.asarray(x.array, np.float64) * np.asarray(c.array, np.float64))
            return [_add_const(cx, y_part, x_part, 1.0, "select", out)]
        if y.is_const:
            return [
                scale(
                    cx,
                    x,
                    "select",
                    out=out,
                    mul=const(np.asarray(c.array, np.float32), c.shape),
                    res=const((np.asarray(y.array, np.float64) * np.asarray(nc.array, np.float64)).astype(np.float32)),
                )
            ]
    ty = _times(cx, y, nc, "y * (1 - c)") if not (y.is_const and y.array.size == 1 and _fval(y) == 0.0) else None
    if x.is_const:
        tx = _times(cx, x, c, "x * c")
        if ty is None:
            return [scale(cx, tx, "select", out=out)]
        return [scale(cx, tx, "select", out=out, res=ty)]
    return [scale(cx, x, "select x * c + y * (1 - c)", out=out, mul=c, res=ty)]


def _nonzero_int(cx: Ctx, d: Val, *, negate: bool) -> Val:
    """For integer-valued d: (d != 0) or, with negate, (d == 0), as exact relu compositions."""
    p = relu_of(cx, d, "relu(d)")
    n = relu_of(cx, d, "relu(-d)", alpha=-1.0)
    a = scale(cx, p, "|d|", res=n)
    t = relu_of(cx, a, "relu(|d| - 1)", beta=-1.0)
    if negate:  # 1 - min(|d|, 1) = 1 - |d| + relu(|d| - 1)
        return scale(cx, a, "d == 0", out=cx.out_name(), alpha=-1.0, beta=1.0, res=t, dtype="b")
    return scale(cx, a, "d != 0", out=cx.out_name(), res=t, res_beta=-1.0, dtype="b")


@rule("Equal", how="integer equality as 1 - min(|a - b|, 1): exact relu PWL compositions")
def _equal(cx: Ctx, node: Any, ins: list) -> list[Val]:
    a, b = ins
    if a.is_const and b.is_const:
        return [const(np.equal(a.array, b.array), broadcast_dims(a.shape, b.shape))]
    if a.is_const:
        a, b = b, a
    if a.dtype == "f" or b.dtype == "f":
        raise Unsupported("Equal on float tensors (only integer / boolean masks)")
    if b.is_const:
        d = _add_const(cx, a, b, -1.0, "a - b", None) if np.any(b.array != 0) else a
    else:
        d = scale(cx, a, "a - b", res=b, res_beta=-1.0)
    return [_nonzero_int(cx, d, negate=True)]


@rule("Not", how="1 - x (diagonal GEMM)")
def _not_rule(cx: Ctx, node: Any, ins: list) -> list[Val]:
    c = ins[0]
    if c.is_const:
        return [const(np.logical_not(c.array), c.shape)]
    return [scale(cx, c, "not", out=cx.out_name(), alpha=-1.0, beta=1.0, dtype="b")]


@rule(
    "Cast",
    how="no-op for float/bool masks; integer -> float as a diagonal GEMM copy; integer -> bool as "
    "min(|x|, 1) (exact relu PWL)",
)
def _cast(cx: Ctx, node: Any, ins: list) -> list[Val]:
    from onnx import TensorProto
    from onnx import helper as h

    x = ins[0]
    to = int(attrs(node)["to"])
    np_t = h.tensor_dtype_to_np_dtype(to)
    if x.is_const:
        if x.array.dtype == object:
            if np.dtype(np_t).kind in "iu":
                return [x]
            raise Unsupported("casting a dynamic shape to a non-integer type")
        return [const(x.array.astype(np_t), x.shape)]
    kind = "b" if to == TensorProto.BOOL else ("f" if np.dtype(np_t).kind == "f" else "i")
    if kind == "f":
        if x.dtype in ("f", "b"):
            return [x]
        return [scale(cx, x, "integer -> float", out=cx.out_name())]
    if kind == "b":
        if x.dtype == "b":
            return [x]
        if x.dtype == "i":
            return [_nonzero_int(cx, x, negate=False)]
        raise Unsupported("Cast of a float tensor (not known to be a 0/1 mask) to bool")
    if x.dtype == "i":
        return [x]
    raise Unsupported("Cast of a float tensor to an integer type")
