"""Lowering: every ModelSpec layer becomes GEMM-family ops (with PWL epilogues) and data movement.

The rules, one per layer op (``W`` is a weight in the GEMM layout ``(K, N)``; ``ep`` an epilogue):

* ``linear``: ``gemm(x, W^T, bias)``.
* ``conv2d``: ``im2col(x) -> [N, Ci*kh*kw, Ho*Wo]``, then one batched GEMM per image with the kernel
  ``(Co, Ci*kh*kw)`` as the shared left operand and the conv bias as a per-row bias, giving NCHW directly.
  BatchNorm after a conv is folded into it first (:mod:`.passes`); a lone BatchNorm is a diagonal GEMM.
* ``relu``: the exact 2-segment PWL; ``gelu``/``gelu_tanh``/``tanh``/``sigmoid``/``silu``: a PWL table;
  both become the epilogue of the GEMM producing their input (fusion pass), or a diagonal GEMM.
* ``maxpool2d``: window extraction (padding replicates edges, which never changes a max), then a
  pairwise-max tree whose steps are ``b + relu(a - b)``.  ``avgpool2d``: windows (zero padding) then a
  GEMM with a constant ``1/(kh*kw)`` column.  ``global_avgpool``: a GEMM with a ``1/(H*W)`` column.
* ``add``: a diagonal GEMM with a residual, fused into the producing GEMM's residual epilogue.
* ``softmax`` (and attention's): the row bound ``m`` is the pairwise-max tree above (GEMM + exact relu
  PWL, no special max unit); ``e = exp(x - m)`` is a PWL epilogue of the diagonal GEMM that subtracts
  ``m``; the row sum is a GEMM with a ones column whose epilogue is the reciprocal PWL; ``p = e * r`` is
  a row scale (diagonal GEMM).
* ``layernorm``: mean by a GEMM with a ``1/D`` column; centring by a diagonal GEMM with the mean as a
  (negated) residual; squares as an elementwise product; the variance GEMM has ``eps`` as its bias and
  ``rsqrt`` as its PWL epilogue; the result is a row scale.  Gamma/beta are folded into the consumers
  when they are all linear layers (a pre-LN transformer), else applied as a column scale + bias.
* ``mhsa``: one QKV GEMM (the ``1/sqrt(d)`` scale folded into the Q weights and bias); ``Q K^T`` as a
  batched GEMM over (sequence, head) reading Q and K straight out of the QKV buffer through strided
  views; the key mask enters as the residual of that GEMM (``0`` or ``-1e4``); masked softmax as above;
  ``P V`` as a batched GEMM writing the context in ``[B, T, H, d]`` order; the output projection GEMM.
* ``embedding``: row gathers (data movement) summed by a diagonal GEMM; ``position_add`` likewise.
* ``mean_pool``: a batched GEMM of the mask row with the tokens, scaled by the reciprocal PWL of the
  token count (a GEMM of the mask with a ones column); ``l2_normalize``: sum of squares by GEMM with
  ``eps^2`` bias and an ``rsqrt`` PWL epilogue, then a row scale.
* ``flatten``/``patchify``: data movement.

PWL epilogues are named ``"<layer>:<role>"`` where role is the activation name for activation layers,
``exp``/``reciprocal`` for softmax and attention, ``rsqrt`` for LayerNorm and L2 normalisation and
``reciprocal`` for masked mean pooling.  The approximation-aware trainer uses the same names.

(About 630 lines: one rule per layer op, the list above, all writing through the one op builder.)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..program import Op
from ..shapes import conv_out_hw
from ..spec import ELEMENTWISE_OPS, Layer, ModelSpec, SpecError

__all__ = ["lower", "TableRequest", "MASK_BIAS", "Builder", "RULES", "softmax_rows"]

#: Added to the attention scores of padded keys (exp of it underflows to exactly 0).
MASK_BIAS = 1.0e4

Shape = tuple  # tuple[int | None, ...]


class TableRequest:
    """A PWL table the program needs: which function, for which layer and role."""

    __slots__ = ("key", "fn", "layer", "role")

    def __init__(self, key: str, fn: str, layer: str, role: str) -> None:
        self.key, self.fn, self.layer, self.role = key, fn, layer, role

    def __repr__(self) -> str:
        return f"TableRequest({self.key!r}, fn={self.fn!r})"


class _Builder:
    def __init__(self, max_len: int) -> None:
        self.max_len = max_len  # longest dynamic row a ones column must cover
        self.ops: list[Op] = []
        self.constants: dict[str, np.ndarray] = {}
        self.tables: dict[str, TableRequest] = {}
        self.shapes: dict[str, Shape] = {}

    def const(self, name: str, arr: np.ndarray) -> str:
        if name in self.constants:
            raise SpecError(f"duplicate constant {name!r}")
        self.constants[name] = np.ascontiguousarray(arr, dtype=np.float32)
        return name

    def op(self, kind: str, out: str, args: dict[str, str], layer: Layer, what: str, **attrs: Any) -> str:
        self.ops.append(Op(kind, out, args, attrs, layer.name, what))
        return out

    def pwl(self, layer: Layer, role: str, fn: str) -> dict[str, str]:
        key = f"{layer.name}:{role}"
        self.tables[key] = TableRequest(key, fn, layer.name, role)
        return {"act": "pwl", "fn": fn, "table": key}

    def ones(self, n: int) -> str:
        name = f"@ones{n}"
        if name not in self.constants:
            self.constants[name] = np.ones((n, 1), dtype=np.float32)
        return name

    def row_sum(
        self,
        x: str,
        n: int | None,
        layer: Layer,
        out: str,
        what: str,
        *,
        scale: float = 1.0,
        bias: float | None = None,
        epilogue: dict | None = None,
    ) -> str:
        """``x @ (scale * ones[n, 1])`` over the last axis (a sliced ones column when n is dynamic)."""
        if n is not None and scale != 1.0:
            b = self.const(f"{out}#w", np.full((n, 1), scale, dtype=np.float32))
        elif n is not None:
            b = self.ones(n)
        else:
            if scale != 1.0:
                raise SpecError(f"layer {layer.name!r}: a scaled row sum needs a static length")
            b = self.op(
                "slice_rows",
                f"{out}#ones",
                {"x": self.ones(self.max_len), "like": x},
                layer,
                "ones column for a row sum",
                axis=-1,
            )
        args = {"a": x, "b": b}
        if bias is not None:
            args["bias"] = self.const(f"{out}#bias", np.array([bias], dtype=np.float32))
        attrs: dict[str, Any] = {}
        if epilogue:
            attrs["epilogue"] = epilogue
        return self.op("gemm", out, args, layer, what, **attrs)


# ---------------------------------------------------------------------------------------------
# Static shapes of the spec's values (None where a dimension is free)
# ---------------------------------------------------------------------------------------------
def _spec_shape(lyr: Layer, ins: list[Shape]) -> Shape:
    x = ins[0]
    op, p = lyr.op, lyr.params
    if op == "linear":
        return x[:-1] + (lyr.weights["weight"].shape[0],)
    if op == "conv2d":
        n, c, h, w = _need_rank(lyr, x, 4)
        co, ci, kh, kw = lyr.weights["weight"].shape
        if c is not None and c != ci:
            raise SpecError(f"layer {lyr.name!r}: input has {c} channels, weight expects {ci}")
        if h is None or w is None:
            raise SpecError(f"layer {lyr.name!r}: conv2d needs static spatial dims, got {x}")
        return (n, co) + conv_out_hw(h, w, (kh, kw), p.get("stride", 1), p.get("padding", 0))
    if op in ("maxpool2d", "avgpool2d"):
        n, c, h, w = _need_rank(lyr, x, 4)
        if h is None or w is None:
            raise SpecError(f"layer {lyr.name!r}: pooling needs static spatial dims, got {x}")
        return (n, c) + conv_out_hw(h, w, p["kernel"], p.get("stride", p["kernel"]), p.get("padding", 0))
    if op == "global_avgpool":
        n, c, _, _ = _need_rank(lyr, x, 4)
        return (n, c)
    if op == "flatten":
        rest = x[1:]
        return (x[0], None if any(d is None for d in rest) else int(np.prod(rest, dtype=np.int64)))
    if op == "patchify":
        n, c, h, w = _need_rank(lyr, x, 4)
        q = p["patch"]
        if h is None or w is None or c is None or h % q or w % q:
            raise SpecError(f"layer {lyr.name!r}: patchify needs static C, H, W divisible by {q}, got {x}")
        return (n, (h // q) * (w // q), c * q * q)
    if op == "embedding":
        return x + (lyr.weights["word"].shape[1],)
    if op == "mean_pool":
        return (x[0], x[2])
    if op == "add":
        if len(x) != len(ins[1]) or any(a is not None and b is not None and a != b for a, b in zip(x, ins[1])):
            raise SpecError(f"layer {lyr.name!r}: cannot add shapes {x} and {ins[1]}")
        return tuple(a if a is not None else b for a, b in zip(x, ins[1]))
    if op == "layernorm":
        d = lyr.weights["weight"].shape[0]
        if x[-1] is not None and x[-1] != d:
            raise SpecError(f"layer {lyr.name!r}: normalises {d} features, input has {x[-1]}")
        return x
    if op == "mhsa":
        d = lyr.weights["q_weight"].shape[0]
        _need_rank(lyr, x, 3)
        if x[-1] is not None and x[-1] != d:
            raise SpecError(f"layer {lyr.name!r}: model dim {d}, input has {x[-1]}")
        return x
    return x  # elementwise, softmax, position_add, batchnorm2d, l2_normalize


def _need_rank(lyr: Layer, x: Shape, r: int) -> Shape:
    if len(x) != r:
        raise SpecError(f"layer {lyr.name!r} ({lyr.op}) needs a rank-{r} input, got shape {x}")
    return x


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------
def _linear(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    w = lyr.weights["weight"]
    args = {"a": ins[0], "b": b.const(f"{lyr.name}.weight", w.T)}
    if "bias" in lyr.weights:
        args["bias"] = b.const(f"{lyr.name}.bias", lyr.weights["bias"])
    b.op("gemm", out, args, lyr, f"linear {w.shape[1]}->{w.shape[0]}", linear=True)


def _conv2d(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    w = lyr.weights["weight"]
    co, ci, kh, kw = w.shape
    p = lyr.params
    n, c, h, wd = shp[0]
    ho, wo = conv_out_hw(h, wd, (kh, kw), p.get("stride", 1), p.get("padding", 0))
    cols = b.op(
        "im2col",
        f"{out}#cols",
        {"x": ins[0]},
        lyr,
        f"im2col {kh}x{kw}",
        kernel=[kh, kw],
        stride=p.get("stride", 1),
        padding=p.get("padding", 0),
    )
    args = {"a": b.const(f"{lyr.name}.weight", w.reshape(co, ci * kh * kw)), "b": cols}
    if "bias" in lyr.weights:
        args["bias_row"] = b.const(f"{lyr.name}.bias", lyr.weights["bias"])
    folded = p.get("folded", [])
    what = f"conv {ci}->{co} {kh}x{kw}" + (f" (+ folded {', '.join(folded)})" if folded else "")
    g = b.op("gemm_batched", f"{out}#gemm", args, lyr, what)
    b.op("reshape", out, {"x": g}, lyr, "view as NCHW", shape=[0, co, ho, wo], inverse=[0, 0, -1])


def _batchnorm2d(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    wt = {k: v.astype(np.float64) for k, v in lyr.weights.items()}
    g = wt["weight"] / np.sqrt(wt["running_var"] + float(lyr.params.get("eps", 1e-5)))
    shift = wt["bias"] - wt["running_mean"] * g
    b.op(
        "scale",
        out,
        {
            "x": ins[0],
            "row_scale": b.const(f"{lyr.name}.scale", g[:, None, None]),
            "bias_row": b.const(f"{lyr.name}.shift", shift[:, None, None]),
        },
        lyr,
        "batchnorm as a per-channel diagonal GEMM",
    )


def _activation(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    ep = {"act": "relu"} if lyr.op == "relu" else b.pwl(lyr, lyr.op, lyr.op)
    b.op("scale", out, {"x": ins[0]}, lyr, lyr.op, epilogue=ep)


def _pool(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    p = lyr.params
    n, c, ho, wo = _spec_shape(lyr, shp)
    k = p["kernel"]
    kh, kw = (k, k) if isinstance(k, int) else k
    is_max = lyr.op == "maxpool2d"
    win = b.op(
        "pool_windows",
        f"{out}#win",
        {"x": ins[0]},
        lyr,
        f"{kh}x{kw} windows",
        kernel=[kh, kw],
        stride=p.get("stride", k),
        padding=p.get("padding", 0),
        pad="edge" if is_max else "zero",
    )
    if is_max:
        red = b.op("pairwise_max", f"{out}#max", {"x": win}, lyr, "max as b + relu(a - b) tree")
    else:
        red = b.row_sum(win, kh * kw, lyr, f"{out}#avg", "window mean by GEMM", scale=1.0 / (kh * kw))
    b.op("reshape", out, {"x": red}, lyr, "view as NCHW", shape=[0, c, ho, wo])


def _global_avgpool(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    n, c, h, w = shp[0]
    flat = b.op("reshape", f"{out}#flat", {"x": ins[0]}, lyr, "view as [N, C, H*W]", shape=[0, 0, -1])
    s = b.row_sum(flat, h * w, lyr, f"{out}#mean", "spatial mean by GEMM", scale=1.0 / (h * w))
    b.op("reshape", out, {"x": s}, lyr, "view as [N, C]", shape=[0, -1])


def _flatten(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    b.op("reshape", out, {"x": ins[0]}, lyr, "flatten", shape=[0, -1])


def _patchify(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    b.op(
        "patchify",
        out,
        {"x": ins[0]},
        lyr,
        f"{lyr.params['patch']}x{lyr.params['patch']} patches",
        patch=int(lyr.params["patch"]),
    )


def _add(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    b.op("scale", out, {"x": ins[0], "res": ins[1]}, lyr, "residual add", add=True)


def _position_add(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    rows = b.op(
        "slice_rows",
        f"{out}#pos",
        {"x": b.const(f"{lyr.name}.weight", lyr.weights["weight"]), "like": ins[0]},
        lyr,
        "position rows",
        axis=1,
    )
    b.op("scale", out, {"x": ins[0], "res": rows}, lyr, "add position embeddings")


def _softmax_rows(b: _Builder, lyr: Layer, x: str, n: int | None, prefix: str) -> str:
    """Masked-free softmax over the last axis of ``x``; returns the probabilities' buffer name."""
    m = b.op("pairwise_max", f"{prefix}#max", {"x": x}, lyr, "row bound: max as b + relu(a - b) tree")
    e = b.op(
        "scale",
        f"{prefix}#exp",
        {"x": x, "res": m},
        lyr,
        "exp(x - max)",
        res_beta=-1.0,
        epilogue=b.pwl(lyr, "exp", "exp"),
    )
    r = b.row_sum(e, n, lyr, f"{prefix}#recip", "1 / row sum", epilogue=b.pwl(lyr, "reciprocal", "reciprocal"))
    return b.op("scale", f"{prefix}#prob", {"x": e, "row_scale": r}, lyr, "normalise rows")


def _softmax(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    p = _softmax_rows(b, lyr, ins[0], shp[0][-1], out)
    b.op("reshape", out, {"x": p}, lyr, "softmax result", shape=[0] * len(shp[0]))


def _layernorm(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    d = lyr.weights["weight"].shape[0]
    eps = float(lyr.params.get("eps", 1e-5))
    x = ins[0]
    mean = b.row_sum(x, d, lyr, f"{out}#mean", "mean by GEMM", scale=1.0 / d)
    c = b.op("scale", f"{out}#centred", {"x": x, "res": mean}, lyr, "centre", res_beta=-1.0)
    sq = b.op("scale", f"{out}#sq", {"x": c, "mul": c}, lyr, "square (elementwise product)")
    r = b.row_sum(
        sq,
        d,
        lyr,
        f"{out}#rstd",
        "rsqrt(variance + eps)",
        scale=1.0 / d,
        bias=eps,
        epilogue=b.pwl(lyr, "rsqrt", "rsqrt"),
    )
    gamma, beta = lyr.weights["weight"], lyr.weights["bias"]
    args = {"x": c, "row_scale": r}
    what = "normalise"
    if not np.all(gamma == 1):
        args["col_scale"] = b.const(f"{lyr.name}.weight", gamma)
        what += " * gamma"
    if not np.all(beta == 0):
        args["bias"] = b.const(f"{lyr.name}.bias", beta)
        what += " + beta"
    if lyr.params.get("affine_folded_into"):
        what += f" (gamma/beta folded into {', '.join(lyr.params['affine_folded_into'])})"
    b.op("scale", out, args, lyr, what)


def _embedding(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    w = lyr.weights
    e = b.op(
        "gather",
        f"{out}#word",
        {"table": b.const(f"{lyr.name}.word", w["word"]), "ids": ins[0]},
        lyr,
        "word embedding rows",
    )
    args: dict[str, str] = {"x": e}
    if "position" in w:
        args["res"] = b.op(
            "slice_rows",
            f"{out}#pos",
            {"x": b.const(f"{lyr.name}.position", w["position"]), "like": ins[0]},
            lyr,
            "position rows",
            axis=1,
        )
    types = ins[1] if len(ins) > 1 else None
    _sum_embeddings(b, lyr, out, args, types)


def _sum_embeddings(b: _Builder, lyr: Layer, out: str, args: dict[str, str], type_ids: str | None) -> None:
    """Word (+ position) rows in ``args``, plus token-type rows (type 0 as a bias without ids)."""
    w = lyr.weights
    if "token_type" in w and type_ids is not None:
        tt = b.op(
            "gather",
            f"{out}#type",
            {"table": b.const(f"{lyr.name}.token_type", w["token_type"]), "ids": type_ids},
            lyr,
            "token-type rows",
        )
        if "res" in args:
            args["x"] = b.op("scale", f"{out}#sum", dict(args), lyr, "word + position")
        args["res"] = tt
    elif "token_type" in w:
        args["bias"] = b.const(f"{lyr.name}.token_type0", w["token_type"][0])
    b.op("scale", out, args, lyr, "sum of embeddings")


def _mhsa(
    b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape], *, packed_mask: str | None = None
) -> None:
    w = {k: v.astype(np.float64) for k, v in lyr.weights.items()}
    d = w["q_weight"].shape[0]
    h = int(lyr.params["heads"])
    hd = d // h
    s = 1.0 / np.sqrt(hd)
    wqkv = np.concatenate([w["q_weight"] * s, w["k_weight"], w["v_weight"]], axis=0)  # (3D, D)
    bqkv = np.concatenate([w["q_bias"] * s, w["k_bias"], w["v_bias"]])
    qkv = b.op(
        "gemm",
        f"{out}#qkv",
        {"a": ins[0], "b": b.const(f"{lyr.name}.qkv_weight", wqkv.T), "bias": b.const(f"{lyr.name}.qkv_bias", bqkv)},
        lyr,
        f"QKV projection {d}->{3 * d} (1/sqrt({hd}) folded into Q)",
        linear=True,
    )
    if packed_mask is not None:
        qkv = b.op(
            "unpack", f"{out}#qkv_seq", {"x": qkv, "mask": packed_mask}, lyr, "scatter packed Q/K/V to [B, T, 3D]"
        )
    heads = [0, 0, 3, h, hd]
    qv = {"reshape": heads, "select": [2, 0], "perm": [0, 2, 1, 3]}
    kv = {"reshape": heads, "select": [2, 1], "perm": [0, 2, 3, 1]}
    vv = {"reshape": heads, "select": [2, 2], "perm": [0, 2, 1, 3]}
    args = {"a": qkv, "b": qkv}
    attrs: dict[str, Any] = {"a_view": qv, "b_view": kv}
    if len(ins) > 1:
        mb = b.op(
            "scale",
            f"{out}#maskbias",
            {"x": ins[1]},
            lyr,
            "key mask -> 0 / -1e4 bias",
            alpha=MASK_BIAS,
            beta=-MASK_BIAS,
        )
        args["res"] = mb
        attrs["res_view"] = {"reshape": [0, 1, 1, -1]}
    scores = b.op("gemm_batched", f"{out}#scores", args, lyr, "Q K^T per (sequence, head)", **attrs)
    p = _softmax_rows(b, lyr, scores, shp[0][1], f"{out}#attn")
    ctx = b.op(
        "gemm_batched",
        f"{out}#ctx",
        {"a": p, "b": qkv},
        lyr,
        "P V per (sequence, head)",
        b_view=vv,
        out_perm=[0, 2, 1, 3],
    )
    ctx2 = b.op("reshape", f"{out}#merged", {"x": ctx}, lyr, "merge heads", shape=[0, 0, -1])
    if packed_mask is not None:
        ctx2 = b.op("pack", f"{out}#ctx_tokens", {"x": ctx2, "mask": packed_mask}, lyr, "gather real tokens")
    b.op(
        "gemm",
        out,
        {
            "a": ctx2,
            "b": b.const(f"{lyr.name}.o_weight", w["o_weight"].T),
            "bias": b.const(f"{lyr.name}.o_bias", w["o_bias"]),
        },
        lyr,
        f"output projection {d}->{d}",
        linear=True,
    )


def _mean_pool(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    x = ins[0]
    t = shp[0][1]
    if len(ins) > 1:
        mask = ins[1]
        rc = b.row_sum(mask, t, lyr, f"{out}#count", "1 / token count", epilogue=b.pwl(lyr, "reciprocal", "reciprocal"))
        s = b.op(
            "gemm_batched",
            f"{out}#sum",
            {"a": mask, "b": x},
            lyr,
            "masked token sum by GEMM",
            a_view={"reshape": [0, 1, -1]},
        )
        flat = b.op("reshape", f"{out}#flat", {"x": s}, lyr, "view as [N, D]", shape=[0, -1])
        b.op("scale", out, {"x": flat, "row_scale": rc}, lyr, "divide by token count")
    else:
        if t is None:
            raise SpecError(f"layer {lyr.name!r}: mean_pool without a mask needs a static sequence length")
        wts = b.const(f"{lyr.name}.weights", np.full((1, t), 1.0 / t, dtype=np.float32))
        s = b.op("gemm_batched", f"{out}#sum", {"a": wts, "b": x}, lyr, "token mean by GEMM")
        b.op("reshape", out, {"x": s}, lyr, "view as [N, D]", shape=[0, -1])


def _l2_normalize(b: _Builder, lyr: Layer, ins: list[str], out: str, shp: list[Shape]) -> None:
    x = ins[0]
    eps = float(lyr.params.get("eps", 1e-12))
    d = shp[0][-1]
    sq = b.op("scale", f"{out}#sq", {"x": x, "mul": x}, lyr, "squares")
    r = b.row_sum(
        sq,
        d,
        lyr,
        f"{out}#rnorm",
        "rsqrt(sum of squares + eps^2)",
        bias=eps * eps,
        epilogue=b.pwl(lyr, "rsqrt", "rsqrt"),
    )
    b.op("scale", out, {"x": x, "row_scale": r}, lyr, "divide by the norm")


RULES: dict[str, Callable[..., None]] = {
    "linear": _linear,
    "conv2d": _conv2d,
    "batchnorm2d": _batchnorm2d,
    **{op: _activation for op in ELEMENTWISE_OPS},
    "maxpool2d": _pool,
    "avgpool2d": _pool,
    "global_avgpool": _global_avgpool,
    "flatten": _flatten,
    "patchify": _patchify,
    "add": _add,
    "position_add": _position_add,
    "layernorm": _layernorm,
    "embedding": _embedding,
    "mhsa": _mhsa,
    "softmax": _softmax,
    "mean_pool": _mean_pool,
    "l2_normalize": _l2_normalize,
}


#: Layers that act on each token (row) independently: they run unchanged on packed tokens.
ROWWISE = {"linear", "layernorm", "add", "softmax", "l2_normalize", *ELEMENTWISE_OPS}


def _pack_mask(spec: ModelSpec) -> str | None:
    """The key-mask input shared by every attention layer, when token packing applies."""
    masks = {lyr.inputs[1] for lyr in spec.layers if lyr.op == "mhsa" and len(lyr.inputs) > 1}
    unmasked = any(lyr.op == "mhsa" and len(lyr.inputs) == 1 for lyr in spec.layers)
    has_embedding = any(lyr.op == "embedding" for lyr in spec.layers)
    if len(masks) != 1 or unmasked or not has_embedding:
        return None
    mask = masks.pop()
    return mask if mask in spec.inputs and len(spec.inputs[mask].shape) == 2 else None


def _embedding_packed(b: _Builder, lyr: Layer, ins: list[str], out: str, mask: str) -> None:
    """Embeddings of the real tokens only: ``[Ntok, D]`` rows, ordered sequence by sequence."""
    w = lyr.weights
    ids = b.op("pack", f"{out}#ids", {"x": ins[0], "mask": mask}, lyr, "real tokens' ids")
    e = b.op(
        "gather",
        f"{out}#word",
        {"table": b.const(f"{lyr.name}.word", w["word"]), "ids": ids},
        lyr,
        "word embedding rows",
    )
    args: dict[str, str] = {"x": e}
    if "position" in w:
        pos = b.op("positions", f"{out}#posids", {"mask": mask}, lyr, "real tokens' positions")
        args["res"] = b.op(
            "gather",
            f"{out}#pos",
            {"table": b.const(f"{lyr.name}.position", w["position"]), "ids": pos},
            lyr,
            "position rows",
        )
    types = None
    if "token_type" in w and len(ins) > 1:
        types = b.op("pack", f"{out}#typeids", {"x": ins[1], "mask": mask}, lyr, "real tokens' types")
    _sum_embeddings(b, lyr, out, args, types)


def lower(
    spec: ModelSpec, *, pack_tokens: bool = True
) -> tuple[list[Op], dict[str, np.ndarray], dict[str, TableRequest]]:
    """Lower a (folded) ModelSpec to ops, constants and the PWL tables they need.

    With ``pack_tokens`` (and a transformer whose attention layers share one key mask), the real tokens
    of a padded batch are packed into the rows of every token-wise GEMM: embeddings, projections,
    LayerNorms and feed-forward layers compute ``Ntok`` rows instead of ``B * T``.  Attention unpacks
    Q/K/V to ``[B, T, ...]`` per sequence and packs its context back; other layers see unpacked values.
    """
    max_len = int(spec.meta.get("max_len", 512))
    for lyr in spec.layers:
        if lyr.op == "embedding" and "position" in lyr.weights:
            max_len = max(max_len, lyr.weights["position"].shape[0])
    b = _Builder(max_len)
    shapes: dict[str, Shape] = {k: tuple(v.shape) for k, v in spec.inputs.items()}
    mask = _pack_mask(spec) if pack_tokens else None
    packed: set[str] = set()
    unpacked: dict[str, str] = {}

    def unpack(name: str, lyr: Layer) -> str:
        assert mask is not None  # only packed programs unpack
        if name not in unpacked:
            unpacked[name] = b.op(
                "unpack", f"{name}#unpacked", {"x": name, "mask": mask}, lyr, "scatter real tokens back to [B, T, ...]"
            )
        return unpacked[name]

    for lyr in spec.layers:
        in_shapes = [shapes[x] for x in lyr.inputs]
        out_shape = _spec_shape(lyr, in_shapes)
        shapes[lyr.output] = out_shape
        ins = list(lyr.inputs)
        keep_packed = lyr.output not in spec.outputs
        if mask and keep_packed and lyr.op == "embedding" and len(in_shapes[0]) == 2:
            _embedding_packed(b, lyr, ins, lyr.output, mask)
            packed.add(lyr.output)
            continue
        if mask and keep_packed and lyr.op in ROWWISE and all(x in packed for x in ins):
            RULES[lyr.op](b, lyr, ins, lyr.output, in_shapes)
            packed.add(lyr.output)
            continue
        if mask and keep_packed and lyr.op == "mhsa" and ins[0] in packed:
            _mhsa(b, lyr, ins, lyr.output, in_shapes, packed_mask=mask)
            packed.add(lyr.output)
            continue
        ins = [unpack(x, lyr) if x in packed else x for x in ins]
        RULES[lyr.op](b, lyr, ins, lyr.output, in_shapes)
    return b.ops, b.constants, b.tables


#: Public names for frontends that lower by themselves (the ONNX importer): the op/constant/table
#: collector and the softmax row rule, so their programs get the same ops (and the same fused passes).
Builder = _Builder
softmax_rows = _softmax_rows
