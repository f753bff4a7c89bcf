"""Whole transformer graphs built with onnx.helper the way exporters write them (random weights).

* :func:`bert_like`: token/position/type embeddings (position ids sliced to the run-time length with a
  Shape-Gather-Unsqueeze chain), an int64 padding mask turned into an additive ``(1 - m) * fill`` bias,
  attention heads split with Reshape targets computed by Shape-Gather-Unsqueeze-Concat chains, erf
  GELU, LayerNormalization (opset 17) in the first layer and the decomposed form in the second.
* :func:`gpt_block`: token + position embeddings (``Range(0, T)``), fused QKV with ``Split``, a causal
  mask sliced from a constant lower triangle (``Where(mask, scores, finfo.min)``), tanh GELU written out
  (Pow 3, Tanh), tied output projection.
"""

from __future__ import annotations

import numpy as np

from tests.onnx_graphs import I64, F, helper, init, model, vi


class _B:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list = []
        self.inits: list = []
        self.k = 0

    def w(self, name: str, *shape: int, scale: float = 0.2) -> str:
        self.inits.append(init(name, (self.rng.standard_normal(shape) * scale).astype(np.float32)))
        return name

    def c(self, value, dtype=np.float32) -> str:
        self.k += 1
        name = f"const{self.k}"
        self.inits.append(init(name, np.asarray(value, dtype)))
        return name

    def n(self, op: str, ins: list, n_out: int = 1, **attrs) -> str | list[str]:
        self.k += 1
        outs = [f"{op.lower()}{self.k}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, ins, outs, name=f"{op}_{self.k}", **attrs))
        return outs[0] if n_out == 1 else outs

    def dim(self, x: str, i: int) -> str:
        """Unsqueezed dim i of x's shape (the exporter's shape chain)."""
        s = self.n("Shape", [x])
        g = self.n("Gather", [s, self.c(i, np.int64)], axis=0)
        return self.n("Unsqueeze", [g, self.c([0], np.int64)])

    def linear(self, x: str, name: str, i: int, o: int) -> str:
        y = self.n("MatMul", [x, self.w(f"{name}.w", i, o)])
        return self.n("Add", [y, self.w(f"{name}.b", o, scale=0.05)])

    def layernorm(self, x: str, name: str, d: int, decomposed: bool) -> str:
        g = self.c(1.0 + 0.1 * self.rng.standard_normal(d))
        b = self.c(0.1 * self.rng.standard_normal(d))
        if not decomposed:
            return self.n("LayerNormalization", [x, g, b], axis=-1, epsilon=1e-5)
        ax = self.c([-1], np.int64)
        m = self.n("ReduceMean", [x, ax], keepdims=1) if self._opset >= 18 else self.n("ReduceMean", [x], axes=[-1])
        c = self.n("Sub", [x, m])
        sq = self.n("Pow", [c, self.c(2.0)])
        v = self.n("ReduceMean", [sq, ax], keepdims=1) if self._opset >= 18 else self.n("ReduceMean", [sq], axes=[-1])
        ve = self.n("Add", [v, self.c(1e-5)])
        s = self.n("Sqrt", [ve])
        y = self.n("Div", [c, s])
        return self.n("Add", [self.n("Mul", [y, g]), b])

    def heads(self, x: str, h: int, hd: int, perm: list[int]) -> str:
        shape = self.n(
            "Concat", [self.dim(x, 0), self.dim(x, 1), self.c([h], np.int64), self.c([hd], np.int64)], axis=0
        )
        r = self.n("Reshape", [x, shape])
        return self.n("Transpose", [r], perm=perm)

    def merge(self, ctx: str, ref: str, d: int) -> str:
        t = self.n("Transpose", [ctx], perm=[0, 2, 1, 3])
        shape = self.n("Concat", [self.dim(ref, 0), self.dim(ref, 1), self.c([d], np.int64)], axis=0)
        return self.n("Reshape", [t, shape])

    _opset = 17


def bert_like(
    *,
    d: int = 32,
    heads: int = 4,
    ff: int = 64,
    layers: int = 2,
    vocab: int = 50,
    max_pos: int = 64,
    fill: float = -10000.0,
    opset: int = 17,
    seed: int = 0,
) -> bytes:
    b = _B(seed)
    b._opset = opset
    hd = d // heads
    word = b.n("Gather", [b.w("word", vocab, d, scale=0.5), "input_ids"], axis=0)
    t = b.dim("input_ids", 1)
    pos_ids = b.n("Slice", [b.c(np.arange(max_pos)[None, :], np.int64), b.c([0], np.int64), t, b.c([1], np.int64)])
    pos = b.n("Gather", [b.w("pos", max_pos, d, scale=0.5), pos_ids], axis=0)
    zeros = b.n("ConstantOfShape", [b.n("Shape", ["input_ids"])], value=helper.make_tensor("v", I64, [1], [0]))
    typ = b.n("Gather", [b.w("type", 2, d, scale=0.5), zeros], axis=0)
    native = opset >= 17
    h = b.layernorm(b.n("Add", [b.n("Add", [word, pos]), typ]), "emb_ln", d, decomposed=not native)
    m = b.n("Cast", [b.n("Unsqueeze", ["attention_mask", b.c([1, 2], np.int64)])], to=1)
    ext = b.n("Mul", [b.n("Sub", [b.c(1.0), m]), b.c(fill)])
    for li in range(layers):
        q = b.heads(b.linear(h, f"l{li}.q", d, d), heads, hd, [0, 2, 1, 3])
        k = b.heads(b.linear(h, f"l{li}.k", d, d), heads, hd, [0, 2, 3, 1])
        v = b.heads(b.linear(h, f"l{li}.v", d, d), heads, hd, [0, 2, 1, 3])
        s = b.n("Div", [b.n("MatMul", [q, k]), b.c(np.sqrt(hd))])
        p = b.n("Softmax", [b.n("Add", [s, ext])], axis=-1)
        ctx = b.merge(b.n("MatMul", [p, v]), h, d)
        a = b.n("Add", [b.linear(ctx, f"l{li}.o", d, d), h])
        h1 = b.layernorm(a, f"l{li}.ln1", d, decomposed=li == 1 or not native)
        f = b.linear(h1, f"l{li}.ff1", d, ff)
        g = b.n(
            "Mul", [b.n("Mul", [f, b.n("Add", [b.n("Erf", [b.n("Div", [f, b.c(1.4142135)])]), b.c(1.0)])]), b.c(0.5)]
        )
        h = b.layernorm(
            b.n("Add", [b.linear(g, f"l{li}.ff2", ff, d), h1]), f"l{li}.ln2", d, decomposed=li == 1 or not native
        )
    b.nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"]))
    return model(
        b.nodes,
        [vi("input_ids", I64, ["batch", "seq"]), vi("attention_mask", I64, ["batch", "seq"])],
        [vi("last_hidden_state", F, ["batch", "seq", d])],
        b.inits,
        opset=opset,
        name="bert_like",
    )


def gpt_block(
    *, d: int = 32, heads: int = 4, layers: int = 2, vocab: int = 40, max_pos: int = 64, opset: int = 17, seed: int = 1
) -> bytes:
    b = _B(seed)
    b._opset = opset
    hd = d // heads
    wte = b.w("wte", vocab, d, scale=0.5)
    tok = b.n("Gather", [wte, "input_ids"], axis=0)
    s = b.n("Shape", ["input_ids"])
    tlen = b.n("Gather", [s, b.c(1, np.int64)], axis=0)
    rng_ = b.n("Range", [b.c(0, np.int64), tlen, b.c(1, np.int64)])
    pos = b.n("Gather", [b.w("wpe", max_pos, d, scale=0.5), b.n("Unsqueeze", [rng_, b.c([0], np.int64)])], axis=0)
    h = b.n("Add", [tok, pos])
    tri = b.c(np.tril(np.ones((max_pos, max_pos), bool))[None, None], bool)
    t1 = b.dim("input_ids", 1)
    mask = b.n("Slice", [tri, b.c([0, 0], np.int64), b.n("Concat", [t1, t1], axis=0), b.c([2, 3], np.int64)])
    for li in range(layers):
        x = b.layernorm(h, f"l{li}.ln1", d, decomposed=li == 0)
        qkv = b.linear(x, f"l{li}.attn", d, 3 * d)
        q, k, v = b.n("Split", [qkv, b.c([d, d, d], np.int64)], n_out=3, axis=-1)
        q = b.heads(q, heads, hd, [0, 2, 1, 3])
        k = b.heads(k, heads, hd, [0, 2, 3, 1])
        v = b.heads(v, heads, hd, [0, 2, 1, 3])
        sc = b.n("Mul", [b.n("MatMul", [q, k]), b.c(1.0 / np.sqrt(hd))])
        sc = b.n("Where", [mask, sc, b.c(np.finfo(np.float32).min)])
        p = b.n("Softmax", [sc], axis=-1)
        ctx = b.merge(b.n("MatMul", [p, v]), x, d)
        h = b.n("Add", [h, b.linear(ctx, f"l{li}.proj", d, d)])
        x = b.layernorm(h, f"l{li}.ln2", d, decomposed=False)
        f = b.linear(x, f"l{li}.fc", d, 4 * d)
        inner = b.n(
            "Mul", [b.c(np.sqrt(2 / np.pi)), b.n("Add", [f, b.n("Mul", [b.c(0.044715), b.n("Pow", [f, b.c(3.0)])])])]
        )
        g = b.n("Mul", [b.n("Mul", [b.c(0.5), f]), b.n("Add", [b.c(1.0), b.n("Tanh", [inner])])])
        h = b.n("Add", [h, b.linear(g, f"l{li}.mlp_proj", 4 * d, d)])
    x = b.layernorm(h, "ln_f", d, decomposed=False)
    b.nodes.append(helper.make_node("MatMul", [x, "wte_T"], ["logits"], name="lm_head"))
    b.inits.append(
        init(
            "wte_T",
            np.ascontiguousarray(
                next(__import__("onnx").numpy_helper.to_array(i) for i in b.inits if i.name == "wte").T
            ),
        )
    )
    return model(
        b.nodes,
        [vi("input_ids", I64, ["batch", "seq"])],
        [vi("logits", F, ["batch", "seq", vocab])],
        b.inits,
        opset=opset,
        name="gpt_block",
    )
