"""Randomly initialised ModelSpecs used across the tests."""

from __future__ import annotations

import numpy as np

from nmengine.spec import InputSpec, Layer, ModelSpec


def _w(rng, *shape, scale=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) * (scale or 1.0 / np.sqrt(fan_in))).astype(np.float32)


def bn(rng, name, x, out, c):
    return Layer(
        "batchnorm2d",
        name,
        [x],
        out,
        {"eps": 1e-5},
        {
            "weight": (1 + 0.2 * rng.standard_normal(c)).astype(np.float32),
            "bias": (0.1 * rng.standard_normal(c)).astype(np.float32),
            "running_mean": (0.1 * rng.standard_normal(c)).astype(np.float32),
            "running_var": (0.5 + rng.random(c)).astype(np.float32),
        },
    )


def cnn_spec(seed: int = 0, c: int = 8, hw: int = 8, classes: int = 10) -> ModelSpec:
    """conv-bn-relu, maxpool, residual block (conv-bn-relu-conv-bn + skip, relu), avgpool, head."""
    rng = np.random.default_rng(seed)
    L = [
        Layer(
            "conv2d",
            "stem",
            ["x"],
            "s1",
            {"stride": 1, "padding": 1},
            {"weight": _w(rng, c, 1, 3, 3), "bias": _w(rng, c)},
        ),
        bn(rng, "stem_bn", "s1", "s2", c),
        Layer("relu", "stem_relu", ["s2"], "s3"),
        Layer("maxpool2d", "pool", ["s3"], "p", {"kernel": 2, "stride": 2}),
        Layer("conv2d", "b1", ["p"], "r1", {"padding": 1}, {"weight": _w(rng, c, c, 3, 3)}),
        bn(rng, "b1_bn", "r1", "r2", c),
        Layer("relu", "b1_relu", ["r2"], "r3"),
        Layer("conv2d", "b2", ["r3"], "r4", {"padding": 1}, {"weight": _w(rng, c, c, 3, 3)}),
        bn(rng, "b2_bn", "r4", "r5", c),
        Layer("add", "skip", ["r5", "p"], "r6"),
        Layer("relu", "block_relu", ["r6"], "r7"),
        Layer("avgpool2d", "avg", ["r7"], "a", {"kernel": 2}),
        Layer("flatten", "flat", ["a"], "f"),
        Layer(
            "linear",
            "head",
            ["f"],
            "logits",
            {},
            {"weight": _w(rng, classes, c * (hw // 4) ** 2), "bias": _w(rng, classes)},
        ),
    ]
    return ModelSpec({"x": InputSpec((None, 1, hw, hw))}, L, ["logits"], name="test-cnn")


def encoder_layers(rng, i: int, x: str, d: int, heads: int, ff: int, mask: str | None, pre_ln: bool):
    p = f"enc{i}"
    attn_w = {
        f"{k}_{s}": (_w(rng, d, d) if s == "weight" else _w(rng, d, scale=0.1))
        for k in "qkvo"
        for s in ("weight", "bias")
    }
    ln = lambda n: {"weight": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32), "bias": _w(rng, d, scale=0.1)}
    ins = [x] + ([mask] if mask else [])
    if pre_ln:
        return [
            Layer("layernorm", f"{p}.ln1", [x], f"{p}.h1", {"eps": 1e-5}, ln(1)),
            Layer("mhsa", f"{p}.attn", [f"{p}.h1"] + ([mask] if mask else []), f"{p}.a", {"heads": heads}, attn_w),
            Layer("add", f"{p}.res1", [x, f"{p}.a"], f"{p}.r1"),
            Layer("layernorm", f"{p}.ln2", [f"{p}.r1"], f"{p}.h2", {"eps": 1e-5}, ln(2)),
            Layer("linear", f"{p}.ff1", [f"{p}.h2"], f"{p}.f1", {}, {"weight": _w(rng, ff, d), "bias": _w(rng, ff)}),
            Layer("gelu", f"{p}.act", [f"{p}.f1"], f"{p}.g"),
            Layer("linear", f"{p}.ff2", [f"{p}.g"], f"{p}.f2", {}, {"weight": _w(rng, d, ff), "bias": _w(rng, d)}),
            Layer("add", f"{p}.res2", [f"{p}.r1", f"{p}.f2"], f"{p}.out"),
        ], f"{p}.out"
    return [
        Layer("mhsa", f"{p}.attn", ins, f"{p}.a", {"heads": heads}, attn_w),
        Layer("add", f"{p}.res1", [f"{p}.a", x], f"{p}.r1"),
        Layer("layernorm", f"{p}.ln1", [f"{p}.r1"], f"{p}.h1", {"eps": 1e-12}, ln(1)),
        Layer("linear", f"{p}.ff1", [f"{p}.h1"], f"{p}.f1", {}, {"weight": _w(rng, ff, d), "bias": _w(rng, ff)}),
        Layer("gelu", f"{p}.act", [f"{p}.f1"], f"{p}.g"),
        Layer("linear", f"{p}.ff2", [f"{p}.g"], f"{p}.f2", {}, {"weight": _w(rng, d, ff), "bias": _w(rng, d)}),
        Layer("add", f"{p}.res2", [f"{p}.f2", f"{p}.h1"], f"{p}.r2"),
        Layer("layernorm", f"{p}.ln2", [f"{p}.r2"], f"{p}.out", {"eps": 1e-12}, ln(2)),
    ], f"{p}.out"


def transformer_spec(
    seed: int = 0,
    vocab: int = 50,
    d: int = 32,
    heads: int = 4,
    ff: int = 64,
    layers: int = 2,
    max_len: int = 16,
    pre_ln: bool = False,
) -> ModelSpec:
    """BERT-like: embeddings (+position, token type) -> LN -> encoder layers -> masked mean pool -> L2."""
    rng = np.random.default_rng(seed)
    L = [
        Layer(
            "embedding",
            "emb",
            ["ids", "types"],
            "e",
            {},
            {
                "word": _w(rng, vocab, d, scale=0.5),
                "position": _w(rng, max_len, d, scale=0.5),
                "token_type": _w(rng, 2, d, scale=0.5),
            },
        ),
        Layer(
            "layernorm",
            "emb_ln",
            ["e"],
            "h0",
            {"eps": 1e-12},
            {"weight": (1 + 0.1 * rng.standard_normal(d)).astype(np.float32), "bias": _w(rng, d, scale=0.1)},
        ),
    ]
    x = "h0"
    for i in range(layers):
        more, x = encoder_layers(rng, i, x, d, heads, ff, "mask", pre_ln)
        L += more
    L += [
        Layer("mean_pool", "pool", [x, "mask"], "pooled"),
        Layer("l2_normalize", "norm", ["pooled"], "embedding"),
    ]
    return ModelSpec(
        {
            "ids": InputSpec((None, None), "int64"),
            "types": InputSpec((None, None), "int64"),
            "mask": InputSpec((None, None), "int64"),
        },
        L,
        ["embedding"],
        name="test-encoder",
        meta={"max_len": max_len},
    )


def transformer_inputs(seed: int = 0, batch: int = 4, t: int = 12, vocab: int = 50):
    """Token ids with padded tails (every sequence keeps at least 2 real tokens)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, size=(batch, t))
    lengths = rng.integers(2, t + 1, size=batch)
    lengths[0] = t
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    types = (np.arange(t)[None, :] >= (lengths[:, None] // 2)).astype(np.int64) * mask
    return {"ids": ids.astype(np.int64), "types": types, "mask": mask}
