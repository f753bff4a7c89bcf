"""Channels-last convolutions: a post-pass that runs a CNN's convolutions as plain GEMMs on NHWC data.

Lowering gives every convolution as ``im2col(x) -> gemm_batched(W[Co, Ci*kh*kw], cols[N, K, Ho*Wo])
-> reshape [N, Co, Ho, Wo]`` (NCHW, one product per image with the image's pixels as the GEMM's N).
That product is a poor fit for a CPU GEMM: N = Ho*Wo is small in deep layers (49 at 7x7), the weights
are the streamed operand and the image is packed afresh on every call.  With the activations stored
channels last (NHWC) the same convolution is one ``gemm``::

    out[N*Ho*Wo, Co] = cols[N*Ho*Wo, kh*kw*Ci] @ Wt[kh*kw*Ci, Co]     (Wt: constant, packed once)

with the batch folded into M, the weights the constant (pre-packed) operand, and bias, residual and
activation still in the epilogue (``bias`` per output channel is now a column bias).  A 1x1 stride-1
convolution reads the activation itself (no copy at all); other kernels use the NHWC ``im2col``
(``layout="nhwc"``, columns in (i, j, c) order, one contiguous run of Ci floats per tap).  Max pooling
(``pool_windows`` + ``pairwise_max``) and global average pooling (``reshape`` + ``gemm`` with a mean
column) have channels-last forms too, so a ResNet stays NHWC from its first convolution to its pooled
features; a value needed in NCHW by anything else (or a program output) is transposed back, and a
value entering a converted op from NCHW is transposed once.

Only exact rewrites: the products, sums and epilogues are those of the NCHW program, with each
output's K terms summed in (i, j, c) instead of (c, i, j) order.  Grouped and depthwise convolutions
stay NCHW (their direct kernel reads NCHW planes), and a program that has them is left unchanged, as is
one where the rewrite would need more than :data:`MAX_TRANSPOSES` layout changes, or more layout
changes than convolutions (a ViT's single patch convolution).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..program import Op, Program

__all__ = ["channels_last", "MAX_TRANSPOSES"]

#: Layout changes (transposes) the rewrite may add; more means the network mixes layouts too much.
MAX_TRANSPOSES = 4

_TO_NHWC = [0, 2, 3, 1]
_TO_NCHW = [0, 3, 1, 2]


def _uses(ops: list[Op]) -> dict[str, list[int]]:
    uses: dict[str, list[int]] = {}
    for i, op in enumerate(ops):
        for name in op.args.values():
            uses.setdefault(name, []).append(i)
    return uses


def _explicit(shape: Any, n: int) -> Optional[list[int]]:
    """A reshape target ``[0, d1, ..., d_{n-1}]`` with explicit positive dims, else None."""
    if not isinstance(shape, (list, tuple)) or len(shape) != n or shape[0] != 0:
        return None
    dims = [int(d) for d in shape[1:]]
    return dims if all(d > 0 for d in dims) else None


def _conv_unit(
    i: int, ops: list[Op], prod: dict[str, int], uses: dict[str, list[int]], prog: Program
) -> Optional[dict]:
    """The (im2col | 1x1 view) -> gemm_batched -> reshape unit whose GEMM is ops[i], or None."""
    g = ops[i]
    consts, outs = prog.constants, set(prog.outputs)
    a_, at = g.args, g.attrs
    if (
        g.kind != "gemm_batched"
        or set(a_) - {"a", "b", "bias_row", "res"}
        or set(at) - {"epilogue", "fused_layers", "res_view"}
    ):
        return None
    w = consts.get(a_["a"])
    if w is None or w.ndim != 2 or w.dtype != np.float32:
        return None
    co, kg = w.shape
    if "bias_row" in a_:
        b = consts.get(a_["bias_row"])
        if b is None or b.size != co or b.dtype != np.float32:
            return None
    if "res" in a_ and at.get("res_view") != {"reshape": [0, 0, -1]}:
        return None
    src = prod.get(a_["b"])
    if src is None or uses.get(a_["b"]) != [i] or a_["b"] in outs:
        return None
    s = ops[src]
    if (
        s.kind == "im2col"
        and s.attrs.get("layout", "nchw") == "nchw"
        and not set(s.attrs) - {"kernel", "stride", "padding"}
    ):
        kh, kw = _pair(s.attrs["kernel"])
        geom = {
            "kernel": [kh, kw],
            "stride": list(_pair(s.attrs.get("stride", 1))),
            "padding": list(_pair(s.attrs.get("padding", 0))),
        }
    elif s.kind == "reshape" and s.attrs.get("shape") == [0, 0, -1]:
        kh = kw = 1
        geom = None
    else:
        return None
    if kg % (kh * kw):
        return None
    user = uses.get(g.out, [])
    if len(user) != 1 or g.out in outs or ops[user[0]].kind != "reshape":
        return None
    r = ops[user[0]]
    dims = _explicit(r.attrs.get("shape"), 4)
    if dims is None or dims[0] != co:
        return None
    return {
        "ops": (src, i, user[0]),
        "x": s.args["x"],
        "c": kg // (kh * kw),
        "co": co,
        "kh": kh,
        "kw": kw,
        "geom": geom,
        "out": r.out,
        "ho_wo": dims[1:],
    }


def _pool_unit(i: int, ops: list[Op], uses: dict[str, list[int]], outs: set[str]) -> Optional[dict]:
    """pool_windows -> pairwise_max -> reshape [0, C, Ho, Wo] starting at ops[i], or None."""
    pw = ops[i]
    if pw.kind != "pool_windows" or pw.attrs.get("layout", "nchw") != "nchw":
        return None
    u = uses.get(pw.out, [])
    if len(u) != 1 or pw.out in outs or ops[u[0]].kind != "pairwise_max":
        return None
    pm = ops[u[0]]
    u2 = uses.get(pm.out, [])
    if len(u2) != 1 or pm.out in outs or ops[u2[0]].kind != "reshape":
        return None
    r = ops[u2[0]]
    dims = _explicit(r.attrs.get("shape"), 4)
    if dims is None:
        return None
    return {"ops": (i, u[0], u2[0]), "x": pw.args["x"], "c": dims[0], "out": r.out, "ho_wo": dims[1:]}


def _gap_unit(i: int, ops: list[Op], uses: dict[str, list[int]], prog: Program) -> Optional[dict]:
    """reshape [0, 0, -1] -> gemm with a constant mean column -> reshape [0, 0, 1, 1] at ops[i], or None."""
    fl = ops[i]
    outs = set(prog.outputs)
    if fl.kind != "reshape" or fl.attrs.get("shape") != [0, 0, -1]:
        return None
    u = uses.get(fl.out, [])
    if len(u) != 1 or fl.out in outs:
        return None
    gm = ops[u[0]]
    w = prog.constants.get(gm.args.get("b", ""))
    if (
        gm.kind != "gemm"
        or set(gm.args) != {"a", "b"}
        or gm.args["a"] != fl.out
        or set(gm.attrs) - {"epilogue"}
        or gm.epilogue.get("act", "none") != "none"
        or w is None
        or w.ndim != 2
        or w.shape[1] != 1
        or w.dtype != np.float32
    ):
        return None
    u2 = uses.get(gm.out, [])
    if len(u2) != 1 or gm.out in outs or ops[u2[0]].kind != "reshape" or ops[u2[0]].attrs.get("shape") != [0, 0, 1, 1]:
        return None
    return {"ops": (i, u[0], u2[0]), "x": fl.args["x"], "w": gm.args["b"], "out": ops[u2[0]].out}


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (list, tuple)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def channels_last(prog: Program) -> Program:
    """``prog`` with its convolutions, max pools and global average pools in channels-last form (see
    the module docstring); ``prog`` itself when there is nothing to convert or the rewrite does not pay."""
    ops = prog.ops
    prod = {op.out: i for i, op in enumerate(ops)}
    uses = _uses(ops)
    outs = set(prog.outputs)
    for op in ops:  # grouped / depthwise convolutions: NCHW kernels, leave the program as it is
        src = prod.get(op.args.get("b", ""))
        if op.kind == "gemm_batched" and op.attrs.get("b_view") and src is not None and ops[src].kind == "im2col":
            return prog
    units: dict[int, tuple[str, dict]] = {}  # anchor op index -> unit
    member: set[int] = set()
    for i in range(len(ops)):
        u = _conv_unit(i, ops, prod, uses, prog)
        kind = "conv"
        if u is None:
            u, kind = _pool_unit(i, ops, uses, outs), "pool"
        if u is None:
            u, kind = _gap_unit(i, ops, uses, prog), "gap"
        if u is None or member.intersection(u["ops"]):
            continue
        member.update(u["ops"])
        anchor = u["ops"][1]  # the arithmetic op: every operand exists by then
        units[anchor] = (kind, u)
    if not any(k == "conv" for k, _ in units.values()):
        return prog

    new_ops: list[Op] = []
    constants = dict(prog.constants)
    nhwc: dict[str, str] = {}  # NCHW name -> its NHWC buffer
    channels: dict[str, int] = {}  # NHWC buffer -> channels
    have_nchw = set(prog.inputs) | set(prog.constants)
    transposes = 0
    replaced: set[str] = set()  # constants the rewrite re-laid out

    def to_nhwc(name: str, c: int, layer: str) -> str:
        nonlocal transposes
        if name in nhwc:
            return nhwc[name]
        t = f"{name}#nhwc"
        new_ops.append(Op("transpose", t, {"x": name}, {"perm": _TO_NHWC}, layer, "NCHW -> NHWC"))
        transposes += 1
        nhwc[name], channels[t] = t, c
        return t

    def need_nchw(name: str, layer: str) -> None:
        nonlocal transposes
        if name in have_nchw or name not in nhwc:
            return
        new_ops.append(Op("transpose", name, {"x": nhwc[name]}, {"perm": _TO_NCHW}, layer, "NHWC -> NCHW"))
        transposes += 1
        have_nchw.add(name)

    for i, op in enumerate(ops):
        if i in member and i not in units:
            continue
        if i not in units:
            for name in op.args.values():
                need_nchw(name, op.layer)
            new_ops.append(op)
            have_nchw.add(op.out)
            continue
        kind, u = units[i]
        g = op
        if kind == "conv":
            x = to_nhwc(u["x"], u["c"], g.layer)
            c, co, kh, kw = u["c"], u["co"], u["kh"], u["kw"]
            out = f"{u['out']}#nhwc"
            if u["geom"] is not None:
                cols = f"{g.args['b']}#nhwc"
                new_ops.append(
                    Op(
                        "im2col",
                        cols,
                        {"x": x},
                        {**u["geom"], "layout": "nhwc"},
                        ops[u["ops"][0]].layer,
                        f"im2col {kh}x{kw} (NHWC)",
                    )
                )
            else:
                cols = x
            w = constants[g.args["a"]]
            replaced.update(g.args[r] for r in ("a", "bias_row") if r in g.args)
            wt_name = f"{g.args['a']}#nhwc"
            constants[wt_name] = np.ascontiguousarray(
                w.reshape(co, c, kh, kw).transpose(2, 3, 1, 0).reshape(kh * kw * c, co), dtype=np.float32
            )
            args = {"a": cols, "b": wt_name}
            if "bias_row" in g.args:
                bname = f"{g.args['bias_row']}#col"
                constants[bname] = np.ascontiguousarray(constants[g.args["bias_row"]].reshape(-1), dtype=np.float32)
                args["bias"] = bname
            if "res" in g.args:
                args["res"] = to_nhwc(g.args["res"], co, g.layer)
            attrs = {k: v for k, v in g.attrs.items() if k in ("epilogue", "fused_layers")}
            attrs["conv"] = True
            new_ops.append(Op("gemm", out, args, attrs, g.layer, f"{g.what} (NHWC)".strip()))
            nhwc[u["out"]], channels[out] = out, co
        elif kind == "pool":
            pw = ops[u["ops"][0]]
            x = to_nhwc(u["x"], u["c"], pw.layer)
            win = f"{pw.out}#nhwc"
            new_ops.append(
                Op("pool_windows", win, {"x": x}, {**pw.attrs, "layout": "nhwc"}, pw.layer, f"{pw.what} (NHWC)".strip())
            )
            mx = f"{g.out}#nhwc"
            new_ops.append(Op("pairwise_max", mx, {"x": win}, dict(g.attrs), g.layer, g.what))
            out = f"{u['out']}#nhwc"
            ho, wo = u["ho_wo"]
            r = ops[u["ops"][2]]
            new_ops.append(Op("reshape", out, {"x": mx}, {"shape": [0, ho, wo, u["c"]]}, r.layer, "view as NHWC"))
            nhwc[u["out"]], channels[out] = out, u["c"]
        else:  # global average pool: mean over the pixels = ones/HW [1, HW] @ x[N, HW, C]
            if u["x"] not in nhwc:  # an NCHW input: keep the NCHW form
                for j in u["ops"]:
                    for name in ops[j].args.values():
                        need_nchw(name, ops[j].layer)
                    new_ops.append(ops[j])
                    have_nchw.add(ops[j].out)
                continue
            x = nhwc[u["x"]]
            c = channels[x]
            fl, r = ops[u["ops"][0]], ops[u["ops"][2]]
            flat = f"{fl.out}#nhwc"
            new_ops.append(Op("reshape", flat, {"x": x}, {"shape": [0, -1, c]}, fl.layer, "view as [N, H*W, C]"))
            wname = f"{u['w']}#row"
            replaced.add(u["w"])
            constants[wname] = np.ascontiguousarray(constants[u["w"]].reshape(1, -1), dtype=np.float32)
            mean = f"{g.out}#nhwc"
            new_ops.append(
                Op("gemm_batched", mean, {"a": wname, "b": flat}, dict(g.attrs), g.layer, f"{g.what} (NHWC)".strip())
            )
            new_ops.append(Op("reshape", r.out, {"x": mean}, {"shape": [0, c, 1, 1]}, r.layer, r.what))
            have_nchw.add(r.out)
    for name in prog.outputs:
        need_nchw(name, "output")
    n_conv = sum(k == "conv" for k, _ in units.values())
    if transposes > MAX_TRANSPOSES or transposes > n_conv:  # e.g. a ViT's one patch conv: no gain
        return prog
    used = {n for op in new_ops for n in op.args.values()}
    constants = {k: v for k, v in constants.items() if k in used or k in prog.constants and k not in replaced}
    return Program(
        prog.inputs,
        prog.outputs,
        new_ops,
        constants,
        prog.tables,
        name=prog.name,
        meta={**prog.meta, "layout": "channels_last"},
    )
