"""Compiler pass: replace the lowered softmax and LayerNorm op chains by fused row ops.

The lowering (:mod:`.lower`) writes a softmax over the last axis and a LayerNorm as chains of GEMM,
scale and pairwise-max ops.  This pass finds those chains and replaces each by one ``softmax_rows`` /
``layernorm_rows`` op (see :mod:`nmengine.program`) whose declared expansion (:func:`nmengine.program.
expand`) is exactly the chain it replaced, so exact mode, recording, the cost model and coverage see the
same ops as before, while the runtime runs one C pass per row with each op's own float operations.

A chain is fused only when its intermediate buffers are read by nothing else (a ``slice_rows`` that
takes only its *shape* from the exp buffer is repointed to the scores, which have the same shape) and
are not program outputs, and when its constants are what the C pass reproduces (a column of ones for
the softmax row sum; float32 columns, one ``eps`` value and optional gamma/beta rows for LayerNorm).
Running the pass twice changes nothing; programs without these chains are returned unchanged.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..program import Op

__all__ = ["fuse_rows"]


def fuse_rows(ops: Sequence[Op], outputs: Sequence[str], constants: Mapping[str, np.ndarray]) -> list[Op]:
    """``ops`` with every fusable softmax and LayerNorm chain replaced by one fused op."""
    ops = list(ops)
    for finder in (_find_softmax, _find_layernorm):
        while True:
            found = finder(ops, set(outputs), constants)
            if found is None:
                break
            chain, fused, repoint = found
            for idx, op in repoint.items():
                ops[idx] = op
            last = max(chain)
            ops[last] = fused
            ops = [op for i, op in enumerate(ops) if i not in chain or i == last]
    return ops


def _readers(ops: Sequence[Op]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        for name in dict.fromkeys(op.args.values()):
            out.setdefault(name, []).append(i)
    return out


def _only(op: Op, kind: str, roles: Sequence[str], **attrs: tuple) -> bool:
    """op is ``kind`` with exactly these operand roles and attrs (name: (default, required value))."""
    return (
        op.kind == kind and set(op.args) == set(roles) and all(op.attrs.get(k, d) == v for k, (d, v) in attrs.items())
    )


_NO_TRANS = {"trans_a": (False, False), "trans_b": (False, False)}


def _ones_column(name: str, ops: Sequence[Op], producer: Mapping[str, int], constants, likes) -> bool:
    """name is a float32 column of ones: a constant, or a ``slice_rows`` of one along ``likes``' last axis."""
    if name in constants:
        c = constants[name]
        return bool(
            c.dtype == np.float32 and c.ndim == 2 and c.shape[1] == 1 and np.all(c == 1.0) and not np.signbit(c).any()
        )
    j = producer.get(name)
    if j is None:
        return False
    sl = ops[j]
    return (
        sl.kind == "slice_rows"
        and sl.args.get("like") in likes
        and sl.attrs.get("axis") == -1
        and _ones_column(sl.args["x"], ops, producer, constants, likes)
    )


def _find_softmax(ops, outputs, constants):
    """m = pairwise_max(s); e = scale(s, res=m, res_beta=-1) + table; r = gemm(e, ones) + table;
    p = scale(e, row_scale=r)."""
    readers = _readers(ops)
    producer = {op.out: i for i, op in enumerate(ops)}
    for i, op in enumerate(ops):
        if op.kind != "pairwise_max" or op.out in outputs:
            continue
        s, m = op.args["x"], op.out
        if readers.get(m, []) == [] or len(readers[m]) != 1:
            continue
        j = readers[m][0]
        ej = ops[j]
        if not (
            _only(ej, "scale", ("x", "res"), alpha=(1.0, 1.0), beta=(0.0, 0.0), res_beta=(1.0, -1.0))
            and ej.args["x"] == s
            and ej.epilogue.get("act") == "pwl"
            and ej.out not in outputs
        ):
            continue
        e = ej.out
        re_ = readers.get(e, [])
        gk = [k for k in re_ if ops[k].kind == "gemm"]
        sk = [k for k in re_ if ops[k].kind == "scale"]
        likes = [
            k for k in re_ if ops[k].kind == "slice_rows" and ops[k].args.get("like") == e and ops[k].args.get("x") != e
        ]
        if len(gk) != 1 or len(sk) != 1 or len(re_) != 2 + len(likes):
            continue
        k, q = gk[0], sk[0]
        g, ps = ops[k], ops[q]
        if not (
            _only(g, "gemm", ("a", "b"), **_NO_TRANS)
            and g.args["a"] == e
            and g.epilogue.get("act") == "pwl"
            and g.out not in outputs
            and _ones_column(g.args["b"], ops, producer, constants, (e, s))
        ):
            continue
        r = g.out
        if readers.get(r, []) != [q]:
            continue
        if not (
            _only(ps, "scale", ("x", "row_scale"), alpha=(1.0, 1.0), beta=(0.0, 0.0))
            and ps.args["x"] == e
            and ps.args["row_scale"] == r
            and ps.epilogue.get("act", "none") == "none"
        ):
            continue
        if not i < j < k < q:
            continue
        repoint = {}
        for t in likes:
            sl = ops[t]
            repoint[t] = Op(sl.kind, sl.out, {**sl.args, "like": s}, dict(sl.attrs), sl.layer, sl.what)
        fused = Op(
            "softmax_rows",
            ps.out,
            {"x": s, "ones": g.args["b"]},
            {
                "exp": dict(ej.epilogue),
                "recip": dict(g.epilogue),
                "names": [m, e, r],
                "whats": [op.what, ej.what, g.what, ps.what],
            },
            ps.layer,
            ps.what,
        )
        return {i, j, k, q}, fused, repoint
    return None


def _column(name: str, constants) -> int:
    c = constants.get(name)
    if c is None or c.dtype != np.float32 or c.ndim != 2 or c.shape[1] != 1:
        return 0
    return int(c.shape[0])


def _vector(name: str, n: int, constants) -> bool:
    c = constants.get(name)
    return c is not None and c.dtype == np.float32 and c.shape == (n,)


def _find_layernorm(ops, outputs, constants):
    """mean = gemm(x, w[n, 1]); c = scale(x, res=mean, res_beta=-1); sq = scale(c, mul=c);
    r = gemm(sq, w'[n, 1], bias=eps) + rsqrt table; y = scale(c, row_scale=r[, col_scale=g][, bias=b])."""
    readers = _readers(ops)
    plain = {"alpha": (1.0, 1.0), "beta": (0.0, 0.0)}
    for i, op in enumerate(ops):
        if not (_only(op, "gemm", ("a", "b"), **_NO_TRANS) and op.epilogue.get("act", "none") == "none"):
            continue
        n = _column(op.args["b"], constants)
        x, mean = op.args["a"], op.out
        if not n or mean in outputs or len(readers.get(mean, [])) != 1:
            continue
        j = readers[mean][0]
        cj = ops[j]
        if not (
            _only(cj, "scale", ("x", "res"), res_beta=(1.0, -1.0), **plain)
            and cj.epilogue.get("act", "none") == "none"
            and cj.args["x"] == x
            and cj.args["res"] == mean
            and cj.out not in outputs
        ):
            continue
        c = cj.out
        rc = readers.get(c, [])
        if len(rc) != 2:
            continue
        k, q = rc
        sqo, yo = ops[k], ops[q]
        if not (
            _only(sqo, "scale", ("x", "mul"), **plain)
            and sqo.epilogue.get("act", "none") == "none"
            and sqo.args["x"] == c
            and sqo.args["mul"] == c
            and sqo.out not in outputs
        ):
            continue
        sq = sqo.out
        if len(readers.get(sq, [])) != 1:
            continue
        v = readers[sq][0]
        vo = ops[v]
        if not (
            _only(vo, "gemm", ("a", "b", "bias"), **_NO_TRANS)
            and vo.args["a"] == sq
            and _column(vo.args["b"], constants) == n
            and _vector(vo.args["bias"], 1, constants)
            and vo.epilogue.get("act") == "pwl"
            and vo.out not in outputs
        ):
            continue
        r = vo.out
        if readers.get(r, []) != [q]:
            continue
        if not (
            yo.kind == "scale"
            and yo.epilogue.get("act", "none") == "none"
            and {"x", "row_scale"} <= set(yo.args) <= {"x", "row_scale", "col_scale", "bias"}
            and yo.args["x"] == c
            and yo.args["row_scale"] == r
            and all(yo.attrs.get(a, d) == want for a, (d, want) in plain.items())
            and all(_vector(yo.args[role], n, constants) for role in ("col_scale", "bias") if role in yo.args)
        ):
            continue
        if not i < j < k < v < q:
            continue
        args = {"x": x, "w_mean": op.args["b"], "w_var": vo.args["b"], "eps": vo.args["bias"]}
        if "col_scale" in yo.args:
            args["gamma"] = yo.args["col_scale"]
        if "bias" in yo.args:
            args["beta"] = yo.args["bias"]
        fused = Op(
            "layernorm_rows",
            yo.out,
            args,
            {
                "rsqrt": dict(vo.epilogue),
                "names": [mean, c, sq, r],
                "whats": [op.what, cj.what, sqo.what, vo.what, yo.what],
            },
            yo.layer,
            yo.what,
        )
        return {i, j, k, v, q}, fused, {}
    return None
