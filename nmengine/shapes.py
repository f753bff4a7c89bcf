"""Shapes and arithmetic counts of every Program op, without touching data.

Used by :meth:`Program.infer_shapes <nmengine.program.Program.infer_shapes>`, the cost model and the
compiler (convolution and pooling output sizes); the executors in :mod:`nmengine.runtime` and
:mod:`nmengine.movement` follow the same rules.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .program import ROLES, Op, Program, ProgramError, resolve_reshape, view_shape

__all__ = ["infer_shapes", "op_shape", "gemm_dims", "op_flops", "scale_factors", "conv_out_hw", "pair"]


def pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def conv_out_hw(h: int, w: int, kernel: Any, stride: Any, padding: Any) -> tuple[int, int]:
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = pair(padding)
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ProgramError(f"window {kh}x{kw} (stride {sh}x{sw}, padding {ph}x{pw}) does not fit a {h}x{w} input")
    return ho, wo


def im2col_shape(shape: Sequence[int], attrs: Mapping[str, Any]) -> tuple[int, ...]:
    nhwc = attrs.get("layout", "nchw") == "nhwc"
    n, c, h, w = (shape[0], shape[3], shape[1], shape[2]) if nhwc else shape
    kh, kw = pair(attrs["kernel"])
    ho, wo = conv_out_hw(h, w, attrs["kernel"], attrs.get("stride", 1), attrs.get("padding", 0))
    return (n, ho, wo, kh * kw * c) if nhwc else (n, c * kh * kw, ho * wo)


def pool_windows_shape(shape: Sequence[int], attrs: Mapping[str, Any]) -> tuple[int, ...]:
    nhwc = attrs.get("layout", "nchw") == "nhwc"
    n, c, h, w = (shape[0], shape[3], shape[1], shape[2]) if nhwc else shape
    kh, kw = pair(attrs["kernel"])
    ho, wo = conv_out_hw(h, w, (kh, kw), attrs.get("stride", attrs["kernel"]), attrs.get("padding", 0))
    return (n, ho, wo, c, kh * kw) if nhwc else (n, c, ho, wo, kh * kw)


# ---------------------------------------------------------------------------------------------
def infer_shapes(program: Program, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
    """Shape of every buffer for the given input shapes (no data touched)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, spec in program.inputs.items():
        if name not in input_shapes:
            raise ProgramError(f"input_shapes is missing {name!r}; program inputs are {list(program.inputs)}")
        shp = tuple(int(d) for d in input_shapes[name])
        if len(shp) != len(spec.shape) or any(w is not None and w != g for w, g in zip(spec.shape, shp)):
            raise ProgramError(f"input {name!r} must have shape {spec.shape} (None = any), got {shp}")
        shapes[name] = shp
    for name, arr in program.constants.items():
        shapes[name] = tuple(arr.shape)
    for op in program.ops:
        shapes[op.out] = op_shape(op, shapes)
    return shapes


def op_shape(op: Op, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    a = op.args
    k, at = op.kind, op.attrs
    if k == "gemm":
        sa, sb = shapes[a["a"]], shapes[a["b"]]
        if at.get("trans_a"):
            sa = sa[::-1]
        if at.get("trans_b"):
            sb = sb[::-1]
        if sa[-1] != sb[0]:
            raise ProgramError(f"op {op.out!r}: inner dims {sa} @ {sb} do not match")
        return tuple(sa[:-1]) + (sb[-1],)
    if k == "gemm_batched":
        sa = view_shape(shapes[a["a"]], at.get("a_view"))
        sb = view_shape(shapes[a["b"]], at.get("b_view"))
        shape = tuple(np.broadcast_shapes(sa[:-2], sb[:-2])) + (sa[-2], sb[-1])
        perm = at.get("out_perm")
        return tuple(shape[p] for p in perm) if perm else shape
    if k == "scale":
        return tuple(np.broadcast_shapes(*(shapes[v] for v in a.values())))
    if k == "pairwise_max":
        return shapes[a["x"]][:-1] + (1,)
    if k in ("softmax_rows", "layernorm_rows"):
        return shapes[a["x"]]
    if k == "reshape":
        return resolve_reshape(shapes[a["x"]], at["shape"])
    if k == "transpose":
        return tuple(shapes[a["x"]][p] for p in at["perm"])
    if k == "im2col":
        return im2col_shape(shapes[a["x"]], at)
    if k == "pool_windows":
        return pool_windows_shape(shapes[a["x"]], at)
    if k == "patchify":
        n, c, h, w = shapes[a["x"]]
        p = at["patch"]
        return (n, (h // p) * (w // p), c * p * p)
    if k == "gather":
        return shapes[a["ids"]] + shapes[a["table"]][1:]
    if k == "slice_rows":
        n = shapes[a["like"]][at["axis"]] if "like" in a else at["rows"]
        return (n,) + shapes[a["x"]][1:]
    if k == "pack":
        x = shapes[a["x"]]
        return (x[0] * x[1],) + x[2:]
    if k == "unpack":
        return shapes[a["mask"]] + shapes[a["x"]][1:]
    if k == "positions":
        m = shapes[a["mask"]]
        return (m[0] * m[1],)
    if k == "concat":
        parts = [shapes[a["x"]]] + [shapes[a[f"x{i}"]] for i in range(1, len(a))]
        ax = at["axis"] % len(parts[0])
        out = list(parts[0])
        out[ax] = sum(p[ax] for p in parts)
        return tuple(out)
    if k == "slice":
        return tuple(slice_shape(shapes[a["x"]], at, shapes.get(a.get("like", ""))))
    if k == "take":
        x = shapes[a["x"]]
        ax = at["axis"] % len(x)
        return x[:ax] + tuple(np.shape(at["indices"])) + x[ax + 1 :]
    if k == "pad":
        return tuple(d + int(b) + int(e) for d, (b, e) in zip(shapes[a["x"]], at["pads"]))
    raise ProgramError(f"unknown op kind {k!r}")


def slice_bounds(
    shape: Sequence[int], attrs: Mapping[str, Any], like: Sequence[int] | None = None
) -> tuple[slice, ...]:
    """The numpy index of a ``slice`` op (ends from ``like`` where ``like_ends`` says so)."""
    idx = [slice(None)] * len(shape)
    ends = {int(ax): int(e) for ax, e in zip(attrs["axes"], attrs["ends"])}
    for ax, lax in attrs.get("like_ends", []):
        if like is None:
            raise ProgramError("slice: like_ends needs a 'like' operand")
        ends[int(ax)] = int(like[int(lax)])
    steps = attrs.get("steps") or [1] * len(attrs["axes"])
    for ax, st, sp in zip(attrs["axes"], attrs["starts"], steps):
        idx[int(ax)] = slice(int(st), ends[int(ax)], int(sp))
    return tuple(idx)


def slice_shape(shape: Sequence[int], attrs: Mapping[str, Any], like: Sequence[int] | None = None) -> list[int]:
    """Output shape of a ``slice`` op."""
    idx = slice_bounds(shape, attrs, like)
    return [len(range(*s.indices(int(d)))) for s, d in zip(idx, shape)]


def gemm_dims(op: Op, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int, int, int]:
    """(batch, M, N, K) of a gemm / gemm_batched op."""
    a = op.args
    if op.kind == "gemm":
        sa, sb = shapes[a["a"]], shapes[a["b"]]
        if op.attrs.get("trans_a"):
            sa = sa[::-1]
        if op.attrs.get("trans_b"):
            sb = sb[::-1]
        return 1, int(np.prod(sa[:-1], dtype=np.int64)), int(sb[-1]), int(sa[-1])
    if op.kind == "gemm_batched":
        sa = view_shape(shapes[a["a"]], op.attrs.get("a_view"))
        sb = view_shape(shapes[a["b"]], op.attrs.get("b_view"))
        batch = int(np.prod(np.broadcast_shapes(sa[:-2], sb[:-2]), dtype=np.int64))
        return batch, int(sa[-2]), int(sb[-1]), int(sa[-1])
    raise ValueError(f"{op.kind} is not a GEMM")


def scale_factors(op: Op) -> int:
    """Multiplicative or additive factors of a ``scale`` op: one operation per output element each.

    Every optional operand (``mul``, ``row_scale``, ``col_scale``, ``bias``, ``bias_row``, ``res``) and a
    non-trivial ``alpha`` (!= 1) or ``beta`` (!= 0) counts once; a bare PWL lookup has none.
    """
    factors = sum(r in op.args for r in ROLES["scale"][1])
    return int(factors + (op.attrs.get("alpha", 1.0) != 1.0) + (op.attrs.get("beta", 0.0) != 0.0))


def op_flops(op: Op, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Arithmetic operations of an op (a MAC counts 2); data movement does none."""
    if op.kind in ("gemm", "gemm_batched"):
        p, m, n, k = gemm_dims(op, shapes)
        return 2 * p * m * n * k
    if op.kind == "scale":
        size = int(np.prod(shapes[op.out], dtype=np.int64))
        return size * max(scale_factors(op), 1)
    if op.kind == "pairwise_max":
        x = shapes[op.args["x"]]
        return 3 * int(np.prod(x[:-1], dtype=np.int64)) * (x[-1] - 1)
    if op.kind in ("softmax_rows", "layernorm_rows"):
        from .program import expand

        sub = dict(shapes)
        total = 0
        for e in expand(op):
            sub[e.out] = op_shape(e, sub)
            total += op_flops(e, sub)
        return total
    return 0
