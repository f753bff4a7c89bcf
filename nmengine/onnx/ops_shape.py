"""Rules for data movement and shape arithmetic.

Shape computations (``Shape``, ``Gather``/``Slice``/``Concat``/``Unsqueeze`` of shape vectors, their
arithmetic) fold at import with free dims kept as symbols (:mod:`.dims`); ``Reshape`` to a computed
shape becomes the Program's ``reshape`` with ``0`` (copy this dim) and ``-1`` (infer) where dims are
free.  ``Range`` up to a dynamic length and ``ConstantOfShape``/``Trilu`` of dynamic shapes (positions,
causal masks) become slices of a constant of ``max_len`` rows whose ends follow a run-time buffer.

(About 500 lines: one rule per ONNX movement op, all sharing the symbolic-dim helpers of :mod:`.dims`.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import numpy_helper

from .context import Ctx, Unsupported, Val, broadcast_dims, const, rule, tensor
from .dims import Dim, Sym, ddiv, dprod, fresh, is_static
from .errors import OnnxImportError
from .ops_math import attrs, relu_of, scale

__all__ = ["reshape_to"]

BIG = 1 << 62


def _ints(v: Val | None, what: str) -> list[Dim]:
    """The entries of a constant integer vector (a required input): ints, and Syms for free dims."""
    if v is None:
        raise OnnxImportError(f"{what}: the required input is missing")
    if not v.is_const:
        raise Unsupported(f"{what} computed at run time from data")
    return [x if isinstance(x, Sym) else int(x) for x in v.array.reshape(-1)]


def _static_ints(v: Val | None, what: str) -> list[int]:
    """:func:`_ints` of a vector that cannot depend on a free dim (axes, steps, offsets)."""
    out = []
    for d in _ints(v, what):
        if isinstance(d, Sym):
            raise Unsupported(f"{what} depends on the dynamic dim {d}")
        out.append(d)
    return out


def _optional(ins: list, i: int) -> Val | None:
    """Input ``i`` of a node; None when it is absent (past the end, or an empty name)."""
    return ins[i] if len(ins) > i else None


def _obj(values: list[Any]) -> Val:
    if any(isinstance(v, Sym) for v in values):
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return const(arr)
    return const(np.asarray(values, dtype=np.int64))


@rule("Shape", how="folded at import (free dims stay symbolic)")
def _shape(cx: Ctx, node: Any, ins: list) -> list[Val]:
    at = attrs(node)
    dims = list(ins[0].shape)
    start, end = int(at.get("start", 0)), at.get("end")
    dims = dims[start:] if end is None else dims[start : int(end)]
    return [_obj(dims)]


@rule("Size", how="folded at import")
def _size(cx: Ctx, node: Any, ins: list) -> list[Val]:
    n = dprod(ins[0].shape)
    if isinstance(n, Sym):
        a = np.empty((), dtype=object)
        a[()] = n
        return [const(a)]
    return [const(np.asarray(n, np.int64))]


def reshape_to(cx: Ctx, x: Val, out_shape: tuple, out: str, what: str = "reshape") -> Val:
    """Reshape buffer x to a (symbolic) shape: 0 where a dim is copied in place, one -1 at most."""
    spec: list[int] = []
    for j, d in enumerate(out_shape):
        if not isinstance(d, Sym):
            spec.append(int(d))
        elif j < x.rank and x.shape[j] == d:
            spec.append(0)
        else:
            spec.append(-1)
    if spec.count(-1) <= 1 and 0 not in [int(d) for d in out_shape if not isinstance(d, Sym)]:
        return tensor(cx.op("reshape", out, {"x": x.name}, what, shape=spec), out_shape, x.dtype)
    # only size-1 axes differ: move them last, reshape, move them where they go
    keep_in = [i for i, d in enumerate(x.shape) if d != 1]
    keep_out = [j for j, d in enumerate(out_shape) if d != 1]
    if [x.shape[i] for i in keep_in] != [out_shape[j] for j in keep_out]:
        raise Unsupported(f"reshape {x.shape} -> {out_shape} with several dynamic dims moving")
    perm = keep_in + [i for i in range(x.rank) if i not in keep_in]
    cur = x.name
    if perm != list(range(x.rank)):
        cur = cx.op("transpose", cx.fresh("T"), {"x": cur}, "move size-1 axes last", perm=perm)
    n1 = len(out_shape) - len(keep_out)
    mid = cx.op("reshape", cx.fresh("r"), {"x": cur}, what, shape=[0] * len(keep_in) + [1] * n1)
    perm2 = [0] * len(out_shape)
    ones = iter(range(len(keep_in), len(out_shape)))
    kept = iter(range(len(keep_in)))
    for j, _d in enumerate(out_shape):
        perm2[j] = next(kept) if j in keep_out else next(ones)
    if perm2 == list(range(len(out_shape))):
        return tensor(cx.op("reshape", out, {"x": mid}, what, shape=[0] * len(out_shape)), out_shape, x.dtype)
    return tensor(cx.op("transpose", out, {"x": mid}, "place size-1 axes", perm=perm2), out_shape, x.dtype)


def _resolve_target(in_shape: tuple, target: list[Any], allowzero: bool) -> tuple:
    dims = [in_shape[i] if (not isinstance(d, Sym) and d == 0 and not allowzero) else d for i, d in enumerate(target)]
    if sum(1 for d in dims if not isinstance(d, Sym) and d == -1) > 1:
        raise Unsupported(f"Reshape target {target} has more than one -1")
    if any(not isinstance(d, Sym) and d == -1 for d in dims):
        known = dprod([d for d in dims if isinstance(d, Sym) or d != -1])
        q = ddiv(dprod(in_shape), known)
        dims = [(q if q is not None else fresh("r")) if (not isinstance(d, Sym) and d == -1) else d for d in dims]
    return tuple(dims)


@rule("Reshape", how="a view (0 / -1 where dims are dynamic)")
def _reshape(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x, t = ins
    target = _ints(t, "Reshape target")
    out_shape = _resolve_target(x.shape, target, bool(attrs(node).get("allowzero", 0)))
    if x.is_const:
        if not is_static(out_shape):
            raise Unsupported("reshaping a constant to a dynamic shape")
        return [const(np.reshape(np.broadcast_to(x.array, x.shape), [int(d) for d in out_shape]))]
    return [reshape_to(cx, cx.dense(x), out_shape, cx.out_name())]


@rule("Transpose", how="data movement (a copy)")
def _transpose(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = ins[0]
    perm = [int(p) for p in attrs(node).get("perm", list(range(x.rank))[::-1])]
    if x.is_const:
        return [const(np.transpose(np.broadcast_to(x.array, x.shape), perm))]
    x = cx.dense(x)
    return [
        tensor(
            cx.op("transpose", cx.out_name(), {"x": x.name}, "transpose", perm=perm),
            tuple(x.shape[p] for p in perm),
            x.dtype,
        )
    ]


@rule("Squeeze", "Unsqueeze", how="a view (reshape)")
def _squeeze(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = ins[0]
    if node.op_type == "Unsqueeze":
        rank = x.rank + len(_axes_raw(cx, node, ins))
        axes = sorted(a % rank for a in _axes_raw(cx, node, ins))
        shape = list(x.shape)
        for a in axes:
            shape.insert(a, 1)
    else:
        raw = _axes_raw(cx, node, ins)
        axes = [a % x.rank for a in raw] if raw else [i for i, d in enumerate(x.shape) if d == 1]
        shape = [d for i, d in enumerate(x.shape) if i not in axes]
    if x.is_const:
        if tuple(x.array.shape) == tuple(x.shape):
            return [const(np.reshape(x.array, [int(d) for d in shape]))]
        if x.array.size == 1:
            return [const(x.array.reshape((1,) * len(shape)), tuple(shape))]
        raise Unsupported("squeezing a broadcast constant")
    return [reshape_to(cx, cx.dense(x), tuple(shape), cx.out_name(), node.op_type.lower())]


def _axes_raw(cx: Ctx, node: Any, ins: list) -> list[int]:
    at = attrs(node)
    if "axes" in at:
        return [int(a) for a in at["axes"]]
    if len(ins) > 1 and ins[1] is not None:
        return _static_ints(ins[1], "axes")
    return []


@rule("Concat", how="data movement (concat)")
def _concat(cx: Ctx, node: Any, ins: list) -> list[Val]:
    parts = [v for v in ins if v is not None]
    axis = int(attrs(node)["axis"]) % parts[0].rank
    if all(v.is_const for v in parts):
        return [
            const(
                np.concatenate(
                    [np.broadcast_to(v.array, v.shape) if is_static(v.shape) else v.array for v in parts], axis=axis
                )
            )
        ]
    dense = [cx.dense(v) for v in parts if v.shape[axis] != 0]
    if len(dense) == 1:
        return [dense[0]]
    args = {"x": dense[0].name, **{f"x{i}": v.name for i, v in enumerate(dense[1:], 1)}}
    total: Dim = 0
    for v in dense:
        d = v.shape[axis]
        total = total + d if isinstance(total, int) and isinstance(d, int) else fresh("cat")
    shape = list(broadcast_dims(*[v.shape[:axis] + (1,) + v.shape[axis + 1 :] for v in dense]))
    shape[axis] = total
    dtype = "i" if all(v.dtype == "i" for v in dense) else ("b" if all(v.dtype == "b" for v in dense) else "f")
    return [tensor(cx.op("concat", cx.out_name(), args, f"concat along axis {axis}", axis=axis), tuple(shape), dtype)]


def _const_rows(cx: Ctx, x: Val, axis: int, end: Sym, out: str) -> Val | None:
    """``x[..., :end, ...]`` of a constant along one axis to a dynamic end, as ``slice_rows`` (whose
    output keeps the dtype, so int64 position ids stay ids): the axis moved first at import."""
    src = cx.sym_source.get(end)
    arr = x.array
    if src is None or arr.dtype == object or tuple(arr.shape) != tuple(x.shape):
        return None
    base = cx.const_name(np.ascontiguousarray(np.moveaxis(arr, axis, 0)), "rows")
    rows = cx.op(
        "slice_rows", cx.fresh("rows"), {"x": base, "like": src[0]}, "rows up to a run-time length", axis=src[1]
    )
    shape = list(x.shape)
    shape[axis] = end
    if arr.ndim == 1:
        return tensor(cx.op("reshape", out, {"x": rows}, "slice", shape=[0]), tuple(shape), x.dtype)
    if all(d == 1 for i, d in enumerate(arr.shape) if i != axis):
        spec = [1 if i != axis else -1 for i in range(arr.ndim)]
        return tensor(cx.op("reshape", out, {"x": rows}, "slice", shape=spec), tuple(shape), x.dtype)
    perm = list(range(1, axis + 1)) + [0] + list(range(axis + 1, arr.ndim))
    return tensor(cx.op("transpose", out, {"x": rows}, "restore axis order", perm=perm), tuple(shape), x.dtype)


def _slice_val(cx: Ctx, x: Val, starts: list, ends: list, axes: list, steps: list, out: str) -> Val:
    dyn = [i for i, e in enumerate(ends) if isinstance(e, Sym)]
    if (
        x.is_const
        and len(dyn) == 1
        and not isinstance(starts[dyn[0]], Sym)
        and int(starts[dyn[0]]) == 0
        and int(steps[dyn[0]]) == 1
        and all(
            (
                int(s) == 0
                and int(st) == 1
                and not isinstance(e, Sym)
                and isinstance(x.shape[a], int)
                and int(e) >= int(x.shape[a])
            )
            for i, (a, s, e, st) in enumerate(zip(axes, starts, ends, steps))
            if i != dyn[0]
        )
    ):
        v = _const_rows(cx, x, int(axes[dyn[0]]), ends[dyn[0]], out)
        if v is not None:
            return v
    if x.is_const and all(not isinstance(e, Sym) for e in starts + ends):
        idx = [slice(None)] * x.rank
        for a, s, e, st in zip(axes, starts, ends, steps):
            idx[a] = slice(int(s), int(e), int(st))
        return const(np.broadcast_to(x.array, x.shape)[tuple(idx)] if is_static(x.shape) else x.array[tuple(idx)])
    x = cx.dense(x)
    like, like_ends, shape = None, [], list(x.shape)
    fixed_ends = []
    for a, s, e, st in zip(axes, starts, ends, steps):
        if isinstance(s, Sym):
            raise Unsupported("Slice with a dynamic start")
        d = x.shape[a]
        if isinstance(e, Sym):
            src = cx.sym_source.get(e)
            if src is None or (like is not None and like != src[0]) or st != 1 or s < 0:
                raise Unsupported(f"Slice to the dynamic end {e}")
            like = src[0]
            like_ends.append([a, src[1]])
            fixed_ends.append(BIG)
            shape[a] = e if s == 0 else fresh("slice")
            continue
        e = max(min(int(e), BIG), -BIG)
        fixed_ends.append(e)
        if isinstance(d, int):
            shape[a] = len(range(*slice(int(s), e, int(st)).indices(d)))
        elif st == 1 and s == 0 and e >= BIG // 2:
            shape[a] = d
        elif st == 1 and s < 0 and e >= BIG // 2:
            shape[a] = -int(s)
        else:
            shape[a] = fresh("slice")
    args = {"x": x.name}
    if like is not None:
        args["like"] = like
    attrs_: dict[str, Any] = {
        "starts": [int(s) for s in starts],
        "ends": fixed_ends,
        "axes": [int(a) for a in axes],
        "steps": [int(s) for s in steps],
    }
    if like_ends:
        attrs_["like_ends"] = like_ends
    return tensor(cx.op("slice", out, args, "slice", **attrs_), tuple(shape), x.dtype)


@rule("Slice", how="data movement (slice; a dynamic end follows a run-time buffer's length)")
def _slice(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = ins[0]
    if cx.opset < 10:
        at = attrs(node)
        starts, ends = list(at["starts"]), list(at["ends"])
        axes = list(at.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts = _ints(ins[1], "Slice starts")
        ends = _ints(ins[2], "Slice ends")
        axes_in, steps_in = _optional(ins, 3), _optional(ins, 4)
        axes = (_static_ints(axes_in, "Slice axes") if axes_in is not None else []) or list(range(len(starts)))
        steps = (_static_ints(steps_in, "Slice steps") if steps_in is not None else []) or [1] * len(starts)
    axes = [int(a) % x.rank for a in axes]
    return [_slice_val(cx, x, starts, ends, axes, steps, cx.out_name())]


@rule("Split", how="data movement (one slice per output)")
def _split(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = ins[0]
    at = attrs(node)
    axis = int(at.get("axis", 0)) % x.rank
    d = x.shape[axis]
    n_out = len(node.output)
    sizes = at.get("split")
    if sizes is None and len(ins) > 1 and ins[1] is not None:
        sizes = _ints(ins[1], "Split sizes")
    if sizes is None:
        if isinstance(d, Sym):
            raise Unsupported("Split of a dynamic axis into equal parts")
        step = -(-int(d) // n_out)
        sizes = [min(step, int(d) - i * step) for i in range(n_out)]
    outs, start = [], 0
    for i, sz in enumerate(sizes):
        outs.append(_slice_val(cx, x, [start], [start + int(sz)], [axis], [1], node.output[i] or cx.fresh("split")))
        start += int(sz)
    return outs


@rule(
    "Gather",
    how="embedding rows (gather) for run-time ids into a constant table; take (data movement) for "
    "constant indices; folded for shape vectors",
)
def _gather(cx: Ctx, node: Any, ins: list) -> list[Val]:
    data, idx = ins
    axis = int(attrs(node).get("axis", 0)) % data.rank
    if data.is_const and idx.is_const:
        a = np.asarray(idx.array)
        if tuple(a.shape) != tuple(idx.shape) and data.array.dtype != object:  # lazily broadcast ids (zeros)
            d = np.broadcast_to(data.array, data.shape) if is_static(data.shape) else data.array
            return [
                const(np.take(d, a.astype(np.int64), axis=axis), data.shape[:axis] + idx.shape + data.shape[axis + 1 :])
            ]
        return [const(np.take(data.array, a.astype(np.int64), axis=axis))]
    if data.is_const:
        if axis != 0 or idx.dtype == "f":
            raise Unsupported("Gather of a constant along a non-leading axis, or with float indices")
        tab = np.broadcast_to(data.array, data.shape) if is_static(data.shape) else data.array
        name = cx.op(
            "gather",
            cx.out_name(),
            {"table": cx.const_name(np.asarray(tab, np.float32), "table"), "ids": cx.dense(idx).name},
            "embedding rows",
        )
        return [tensor(name, idx.shape + data.shape[1:])]
    if not idx.is_const or idx.array.dtype == object:
        raise Unsupported("Gather with dynamic indices")
    ind = np.asarray(idx.array)
    x = cx.dense(data)
    d = x.shape[axis]
    ind = ind.astype(np.int64)
    if isinstance(d, int):
        ind = np.where(ind < 0, ind + d, ind)
    indices: Any = int(ind) if ind.ndim == 0 else ind.tolist()
    name = cx.op("take", cx.out_name(), {"x": x.name}, f"take along axis {axis}", axis=axis, indices=indices)
    return [tensor(name, x.shape[:axis] + tuple(ind.shape) + x.shape[axis + 1 :], x.dtype)]


@rule("Expand", how="broadcast kept lazy (consumers broadcast for free); materialised by a diagonal GEMM")
def _expand(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x, s = ins
    shape = broadcast_dims(x.shape, tuple(_ints(s, "Expand shape")))
    if x.is_const:
        return [const(x.array, shape)]
    return [tensor(x.name, shape, x.dtype, pshape=x.pshape)]


@rule("Identity", "Dropout", how="no-op (an alias)")
def _identity(cx: Ctx, node: Any, ins: list) -> list[Val]:
    outs = [ins[0]]
    if len(node.output) > 1 and node.output[1]:
        outs.append(const(np.ones((1,) * ins[0].rank, bool), ins[0].shape))
    return outs


@rule("Constant", how="folded at import")
def _constant(cx: Ctx, node: Any, ins: list) -> list[Val]:  # pragma: no cover (always folded)
    a = node.attribute[0]
    return [const(numpy_helper.to_array(a.t))]


@rule("ConstantOfShape", how="folded at import (a dynamic shape stays a lazily broadcast constant)")
def _const_of_shape(cx: Ctx, node: Any, ins: list) -> list[Val]:
    shape = tuple(_ints(ins[0], "ConstantOfShape shape"))
    value = np.zeros(1, np.float32)
    for a in node.attribute:
        if a.name == "value":
            value = numpy_helper.to_array(a.t).reshape(-1)[:1]
    return [const(value.reshape((1,) * len(shape)), shape)]


@rule("Range", how="folded at import; up to a dynamic length: a slice of a constant 0..max_len-1")
def _range(cx: Ctx, node: Any, ins: list) -> list[Val]:
    st, lim, de = (_ints(v, "Range bound")[0] for v in ins)
    if isinstance(st, Sym) or isinstance(de, Sym) or not isinstance(lim, Sym) or de != 1 or st != 0:
        raise Unsupported("Range other than 0..n-1 with a dynamic n")
    src = cx.sym_source.get(lim)
    if src is None:
        raise Unsupported(f"cannot tell the dynamic length {lim} at run time")
    base = cx.const_name(np.arange(cx.max_len, dtype=np.int64), "arange")
    name = cx.op("slice_rows", cx.out_name(), {"x": base, "like": src[0]}, "positions 0..n-1", axis=src[1])
    return [tensor(name, (lim,), "i")]


@rule("Trilu", how="folded at import; of a dynamic shape: a slice of a constant max_len x max_len triangle")
def _trilu(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = ins[0]
    k = _static_ints(ins[1], "Trilu k")[0] if _optional(ins, 1) is not None else 0
    upper = bool(attrs(node).get("upper", 1))
    if not (x.is_const and x.array.size == 1 and x.rank >= 2):
        raise Unsupported("Trilu of a run-time tensor")
    lead, (r, c) = x.shape[:-2], x.shape[-2:]
    if not is_static(lead):
        raise Unsupported("Trilu with dynamic batch dims")
    big = cx.max_len
    full = np.full((big, big), x.array.reshape(()), dtype=np.float32)
    tri = np.triu(full, k) if upper else np.tril(full, k)
    tri = tri.reshape((1,) * len(lead) + (big, big))
    base = cx.const_name(tri, "tri")
    rank = x.rank
    ends, like_ends, like = [], [], None
    for ax, d in ((rank - 2, r), (rank - 1, c)):
        if isinstance(d, Sym):
            src = cx.sym_source.get(d)
            if src is None or (like is not None and like != src[0]):
                raise Unsupported(f"cannot tell the dynamic size {d} at run time")
            like = src[0]
            like_ends.append([ax, src[1]])
            ends.append(big)
        else:
            ends.append(int(d))
    args = {"x": base}
    extra: dict[str, Any] = {}
    if like is not None:
        args["like"] = like
        extra["like_ends"] = like_ends
    name = cx.op(
        "slice",
        cx.out_name(),
        args,
        "triangular mask",
        starts=[0, 0],
        ends=ends,
        axes=[rank - 2, rank - 1],
        steps=[1, 1],
        **extra,
    )
    v = float(np.asarray(x.array, np.float64).reshape(()))
    return [tensor(name, (1,) * len(lead) + (r, c), "b" if v in (0.0, 1.0) else "f", pshape=(1,) * len(lead) + (r, c))]


@rule("Pad", how="data movement (constant or edge padding)")
def _pad(cx: Ctx, node: Any, ins: list) -> list[Val]:
    x = cx.dense(ins[0])
    at = attrs(node)
    mode = at.get("mode", b"constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in ("constant", "edge"):
        raise Unsupported(f"Pad mode {mode!r}")
    if cx.opset < 11:
        pads, value = list(at["pads"]), float(at.get("value", 0.0))
    else:
        pads = _ints(ins[1], "Pad pads")
        value = 0.0
        if len(ins) > 2 and ins[2] is not None:
            if not ins[2].is_const:
                raise Unsupported("Pad with a run-time constant_value")
            value = float(ins[2].array.reshape(()))
        if len(ins) > 3 and ins[3] is not None:
            axes = [a % x.rank for a in _static_ints(ins[3], "Pad axes")]
            full: list[Dim] = [0] * (2 * x.rank)
            for i, a in enumerate(axes):
                full[a], full[a + x.rank] = pads[i], pads[i + len(axes)]
            pads = full
    if any(isinstance(p, Sym) or p < 0 for p in pads):
        raise Unsupported("negative or dynamic pads")
    pp = [[int(pads[i]), int(pads[i + x.rank])] for i in range(x.rank)]
    shape = tuple(
        d + b + e if isinstance(d, int) else (d if b + e == 0 else fresh("pad")) for d, (b, e) in zip(x.shape, pp)
    )
    return [
        tensor(
            cx.op("pad", cx.out_name(), {"x": x.name}, f"pad ({mode})", pads=pp, mode=mode, value=value), shape, x.dtype
        )
    ]


@rule("Max", "Min", how="exact PWL: max(a, b) = a + relu(b - a), min(a, b) = a - relu(a - b)")
def _maxmin(cx: Ctx, node: Any, ins: list) -> list[Val]:
    if all(v.is_const for v in ins):
        raise Unsupported(f"{node.op_type} of dynamic shape values")
    if len(ins) != 2:
        raise Unsupported(f"{node.op_type} of {len(ins)} inputs (only 2)")
    a, b = ins
    if a.is_const:
        a, b = b, a
    sign = 1.0 if node.op_type == "Max" else -1.0
    if b.is_const:
        if b.array.size != 1:
            raise Unsupported(f"{node.op_type} with a non-scalar constant")
        c = float(np.asarray(b.array, np.float64).reshape(()))
        # max(a, c) = c + relu(a - c); min(a, c) = c - relu(c - a)
        t = relu_of(cx, a, "relu(+-(a - c))", alpha=sign, beta=-sign * c)
        return [scale(cx, t, node.op_type.lower(), out=cx.out_name(), alpha=sign, beta=c)]
    t = relu_of(cx, b, "relu(+-(b - a))", alpha=sign, res=a, res_beta=-sign)
    return [scale(cx, a, node.op_type.lower(), out=cx.out_name(), res=t, res_beta=sign)]


@rule(
    "Mod",
    "Floor",
    "Ceil",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "And",
    "Or",
    how="shape arithmetic: folded at import (not on run-time tensors)",
)
def _fold_only(cx: Ctx, node: Any, ins: list) -> list[Val]:
    raise Unsupported(f"{node.op_type} on run-time tensors or dynamic shape values")
