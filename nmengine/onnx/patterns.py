"""Graph rewrites on the ONNX nodes before lowering: exporter patterns become single operators.

* ``Conv -> BatchNormalization`` (constant statistics, the conv output used only there): one Conv
  with ``W' = W * g``, ``b' = (b - mean) * g + beta``, ``g = gamma / sqrt(var + eps)`` (float64).
* Erf GELU ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (any operand order) -> ``NmGelu``.
* tanh GELU ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` -> ``NmGeluTanh``.
* SiLU ``x * sigmoid(x)`` -> ``NmSilu``.
* Decomposed LayerNorm ``(x - mean) / sqrt(var + eps) [* gamma] [+ beta]`` over the last axis ->
  ``NmLayerNorm`` (lowered like LayerNormalization: one rsqrt table, the runtime's fused pass).
* L2 normalisation ``x / Expand(Clip(ReduceL2(x, axis), eps))`` (F.normalize) -> ``NmL2Norm`` (``x *
  rsqrt(sum x^2 + eps^2)``: one rsqrt table; differs from ``x / max(|x|, eps)`` only for norms near eps).
* ``a / sqrt(v)`` and ``1 / sqrt(v)`` -> ``a * NmRsqrt(v)``: one rsqrt table instead of sqrt + reciprocal.

Then nodes whose outputs nobody reads are dropped.  Rewritten nodes live in the ``nmengine`` domain.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["rewrite"]


class _Graph:
    def __init__(self, nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray], outputs: list[str]) -> None:
        self.nodes = nodes
        self.consts = consts
        self.outputs = set(outputs)
        self._n = 0
        self.index()

    def index(self) -> None:
        self.producer: dict[str, onnx.NodeProto] = {}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        for n in self.nodes:
            if n.op_type == "Constant" and n.output and n.output[0] not in self.consts and len(n.attribute) == 1:
                a = n.attribute[0]
                try:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_int"):
                        self.consts[n.output[0]] = np.asarray(helper.get_attribute_value(a))
                except Exception:  # noqa: BLE001, S110 - a malformed constant: the importer reports it later
                    pass

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def scalar(self, name: str) -> float | None:
        c = self.consts.get(name)
        if c is None or c.size != 1 or c.dtype.kind not in "fiu":
            return None
        return float(np.asarray(c, np.float64).reshape(()))

    def sole(self, name: str) -> onnx.NodeProto | None:
        """The only consumer of ``name`` (None if several, none, or a graph output)."""
        us = self.users.get(name, [])
        return us[0] if len(us) == 1 and name not in self.outputs else None

    def prod(self, name: str, op_type: str) -> onnx.NodeProto | None:
        n = self.producer.get(name)
        return n if n is not None and n.op_type == op_type else None

    def other(self, node: onnx.NodeProto, name: str) -> str | None:
        """The other input of a binary node, given one of them."""
        if len(node.input) != 2:
            return None
        if node.input[0] == name:
            return node.input[1]
        if node.input[1] == name:
            return node.input[0]
        return None

    def new_const(self, arr: np.ndarray, hint: str) -> str:
        self._n += 1
        name = f"{hint}#nm{self._n}"
        self.consts[name] = arr
        return name

    def replace(self, last: onnx.NodeProto, new: onnx.NodeProto) -> None:
        """Put ``new`` where ``last`` was (the dead intermediates go in the final sweep)."""
        i = self.nodes.index(last)
        self.nodes[i] = new
        self.index()


def _near(v: float | None, target: float, tol: float = 1e-3) -> bool:
    return v is not None and abs(v - target) <= tol * abs(target)


def _mk(op: str, ins: list[str], out: str, name: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, ins, [out], name=name, domain="nmengine", **attrs)


def _fold_bn(g: _Graph) -> bool:
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization" or len([o for o in bn.output if o]) != 1:
            continue
        conv = g.prod(bn.input[0], "Conv")
        if conv is None or g.sole(conv.output[0]) is not bn:
            continue
        w = g.const(conv.input[1])
        b = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        stats = [g.const(n) for n in bn.input[1:5]]
        if w is None or any(s is None for s in stats) or (len(conv.input) > 2 and conv.input[2] and b is None):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (np.asarray(s, np.float64).reshape(-1) for s in stats)
        if gamma.size != w.shape[0]:
            continue
        sc = gamma / np.sqrt(var + eps)
        w2 = (np.asarray(w, np.float64) * sc.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        b0 = np.zeros(w.shape[0]) if b is None else np.asarray(b, np.float64)
        b2 = ((b0 - mean) * sc + beta).astype(np.float32)
        new = onnx.NodeProto()
        new.CopyFrom(conv)
        del new.input[:]
        new.input.extend([conv.input[0], g.new_const(w2, conv.name + ".W"), g.new_const(b2, conv.name + ".B")])
        new.output[0] = bn.output[0]
        g.nodes.remove(conv)
        g.replace(bn, new)
        return True
    return False


def _gelu_tail(g: _Graph, plus1: onnx.NodeProto, x: str) -> onnx.NodeProto | None:
    """From ``1 + f(x)``: the node computing ``0.5 * x * (1 + f)`` in any association; None if absent."""
    m = g.sole(plus1.output[0])
    if m is None or m.op_type != "Mul":
        return None
    o = g.other(m, plus1.output[0])
    if o == x:  # x * (1 + f), then * 0.5
        m2 = g.sole(m.output[0])
        if m2 is not None and m2.op_type == "Mul" and _near(g.scalar(g.other(m2, m.output[0]) or ""), 0.5):
            return m2
        return None
    h = g.prod(o or "", "Mul")  # (0.5 * x) * (1 + f)
    if h is not None and x in h.input and _near(g.scalar(g.other(h, x) or ""), 0.5):
        return m
    c = g.scalar(o or "")  # (1 + f) * 0.5, then * x
    if _near(c, 0.5):
        m2 = g.sole(m.output[0])
        if m2 is not None and m2.op_type == "Mul" and g.other(m2, m.output[0]) == x:
            return m2
    return None


def _plus_one(g: _Graph, name: str) -> onnx.NodeProto | None:
    a = g.sole(name)
    if a is not None and a.op_type == "Add" and _near(g.scalar(g.other(a, name) or ""), 1.0):
        return a
    return None


def _fuse_gelu_erf(g: _Graph) -> bool:
    for e in g.nodes:
        if e.op_type != "Erf":
            continue
        d = g.producer.get(e.input[0])
        if d is None or d.op_type not in ("Div", "Mul") or len(d.input) != 2:
            continue
        want = math.sqrt(2.0) if d.op_type == "Div" else 1.0 / math.sqrt(2.0)
        if _near(g.scalar(d.input[1]), want):
            x = d.input[0]
        elif d.op_type == "Mul" and _near(g.scalar(d.input[0]), want):
            x = d.input[1]
        else:
            continue
        a = _plus_one(g, e.output[0])
        last = _gelu_tail(g, a, x) if a is not None else None
        if last is None:
            continue
        g.replace(last, _mk("NmGelu", [x], last.output[0], last.name + "/gelu"))
        return True
    return False


def _cube_of(g: _Graph, name: str) -> str | None:
    p = g.producer.get(name)
    if p is None:
        return None
    if p.op_type == "Pow" and _near(g.scalar(p.input[1]), 3.0):
        return p.input[0]
    if p.op_type == "Mul":  # x * (x * x) or (x * x) * x
        for a, b in ((p.input[0], p.input[1]), (p.input[1], p.input[0])):
            q = g.prod(b, "Mul")
            if q is not None and q.input[0] == q.input[1] == a:
                return a
    return None


def _fuse_gelu_tanh(g: _Graph) -> bool:
    for t in g.nodes:
        if t.op_type != "Tanh":
            continue
        m = g.prod(t.input[0], "Mul")
        if m is None:
            continue
        inner = next((i for i in m.input if _near(g.scalar(g.other(m, i) or ""), math.sqrt(2 / math.pi))), None)
        add = g.prod(inner or "", "Add")
        if add is None:
            continue
        x = None
        for a, b in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            k = g.prod(b, "Mul")
            if k is None:
                continue
            for c, cube in ((k.input[0], k.input[1]), (k.input[1], k.input[0])):
                if _near(g.scalar(c), 0.044715) and _cube_of(g, cube) == a:
                    x = a
        if x is None:
            continue
        p1 = _plus_one(g, t.output[0])
        last = _gelu_tail(g, p1, x) if p1 is not None else None
        if last is None:
            continue
        g.replace(last, _mk("NmGeluTanh", [x], last.output[0], last.name + "/gelu_tanh"))
        return True
    return False


def _fuse_silu(g: _Graph) -> bool:
    for s in g.nodes:
        if s.op_type != "Sigmoid":
            continue
        m = g.sole(s.output[0])
        if m is None or m.op_type != "Mul" or g.other(m, s.output[0]) != s.input[0]:
            continue
        g.replace(m, _mk("NmSilu", [s.input[0]], m.output[0], m.name + "/silu"))
        return True
    return False


def _last_axis_mean(g: _Graph, n: onnx.NodeProto) -> bool:
    if n.op_type != "ReduceMean":
        return False
    axes = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
    if axes is None and len(n.input) > 1:
        c = g.const(n.input[1])
        axes = None if c is None else [int(v) for v in c.reshape(-1)]
    keep = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
    return axes == [-1] and keep == 1


def _const_operand(g: _Graph, node: onnx.NodeProto | None, op_type: str, name: str) -> str | None:
    """The other input of ``node`` (a binary ``op_type`` reading ``name``) when it is a known constant."""
    if node is None or node.op_type != op_type:
        return None
    other = g.other(node, name)
    return other if other is not None and g.const(other) is not None else None


def _fuse_layernorm(g: _Graph) -> bool:
    for sub in g.nodes:
        if sub.op_type != "Sub":
            continue
        x, mname = sub.input
        mean = g.producer.get(mname)
        if mean is None or not _last_axis_mean(g, mean) or mean.input[0] != x:
            continue
        c = sub.output[0]
        users = g.users.get(c, [])
        if len(users) != 2 or c in g.outputs:
            continue
        sq = next(
            (
                u
                for u in users
                if (u.op_type == "Pow" and u.input[0] == c and _near(g.scalar(u.input[1]), 2.0))
                or (u.op_type == "Mul" and u.input[0] == u.input[1] == c)
            ),
            None,
        )
        div = next((u for u in users if u.op_type == "Div" and u.input[0] == c), None)
        if sq is None or div is None:
            continue
        var = g.sole(sq.output[0])
        if var is None or not _last_axis_mean(g, var):
            continue
        addeps = g.sole(var.output[0])
        if addeps is None or addeps.op_type != "Add":
            continue
        eps = g.scalar(g.other(addeps, var.output[0]) or "")
        sqrt = g.sole(addeps.output[0])
        if eps is None or sqrt is None or sqrt.op_type != "Sqrt" or div.input[1] != sqrt.output[0]:
            continue
        last, gamma, beta = div, "", ""
        mul = g.sole(div.output[0])
        gname = _const_operand(g, mul, "Mul", div.output[0])
        if mul is not None and gname is not None:
            last, gamma = mul, gname
            add = g.sole(mul.output[0])
            bname = _const_operand(g, add, "Add", mul.output[0])
            if add is not None and bname is not None:
                last, beta = add, bname
        g.replace(
            last,
            _mk("NmLayerNorm", [x, gamma, beta], last.output[0], last.name + "/layernorm", epsilon=float(eps), axis=-1),
        )
        return True
    return False


def _fuse_l2norm(g: _Graph) -> bool:
    """``x / [Expand(] Clip(ReduceL2(x, -1, keepdims), eps) [)]`` (torch's F.normalize) -> NmL2Norm."""
    for r in g.nodes:
        if r.op_type != "ReduceL2":
            continue
        axes = next((list(a.ints) for a in r.attribute if a.name == "axes"), None)
        if axes is None and len(r.input) > 1:
            c = g.const(r.input[1])
            axes = None if c is None else [int(v) for v in c.reshape(-1)]
        keep = next((a.i for a in r.attribute if a.name == "keepdims"), 1)
        if axes is None or len(axes) != 1 or keep != 1:
            continue
        clip = g.sole(r.output[0])
        if clip is None or clip.op_type != "Clip":
            continue
        eps = next((a.f for a in clip.attribute if a.name == "min"), None)
        if eps is None and len(clip.input) > 1 and clip.input[1]:
            eps = g.scalar(clip.input[1])
        if eps is None or (len(clip.input) > 2 and clip.input[2]) or any(a.name == "max" for a in clip.attribute):
            continue
        d = g.sole(clip.output[0])
        if d is not None and d.op_type == "Expand":
            d = g.sole(d.output[0])
        if d is None or d.op_type != "Div" or d.input[0] != r.input[0]:
            continue
        g.replace(d, _mk("NmL2Norm", [r.input[0]], d.output[0], d.name + "/l2norm", epsilon=float(eps), axis=axes[0]))
        return True
    return False


def _fuse_rsqrt(g: _Graph) -> bool:
    for s in g.nodes:
        if s.op_type != "Sqrt":
            continue
        u = g.sole(s.output[0])
        if u is None:
            continue
        if u.op_type == "Div" and u.input[1] == s.output[0]:
            r = _mk("NmRsqrt", [s.input[0]], s.output[0] + "#rsqrt", s.name + "/rsqrt")
            m = helper.make_node("Mul", [u.input[0], r.output[0]], [u.output[0]], name=u.name)
            i = g.nodes.index(u)
            g.nodes[i : i + 1] = [r, m]
            g.index()
            return True
        if u.op_type == "Reciprocal":
            g.replace(u, _mk("NmRsqrt", [s.input[0]], u.output[0], u.name + "/rsqrt"))
            return True
    return False


def _sweep(g: _Graph) -> None:
    while True:
        used = {i for n in g.nodes for i in n.input} | g.outputs
        keep = [n for n in g.nodes if any(o in used for o in n.output if o)]
        if len(keep) == len(g.nodes):
            return
        g.nodes = keep


def rewrite(nodes: list[onnx.NodeProto], consts: dict[str, np.ndarray], outputs: list[str]) -> list[onnx.NodeProto]:
    """Apply every rewrite until none matches; ``consts`` gains the folded weights."""
    g = _Graph(nodes, consts, outputs)
    for fn in (_fold_bn, _fuse_gelu_erf, _fuse_gelu_tanh, _fuse_silu, _fuse_layernorm, _fuse_l2norm, _fuse_rsqrt):
        for _ in range(100000):
            _sweep(g)
            g.index()
            if not fn(g):
                break
    _sweep(g)
    return g.nodes
