"""Full-size reference networks as ModelSpecs, for counting work (the cost model's published-figure checks).

* :func:`resnet18_spec`: ResNet-18 (He et al., 2016) for 224x224 ImageNet images: conv 7x7/2 + BN + ReLU,
  max pool 3x3/2 (padding 1), four stages of two BasicBlocks (64, 128, 256, 512 channels; the first block
  of stages 2-4 has stride 2 and a 1x1/2 conv + BN on its skip path), global average pool, fc 512->1000.
  About 1.81 G MACs (1.8 GFLOPs in the paper's count, which is MACs).
* :func:`bert_base_spec`: BERT-base (Devlin et al., 2019): embeddings (vocab 30522, 512 positions, 2 token
  types) + LayerNorm, 12 post-LN encoder layers (hidden 768, 12 heads, FFN 3072, GELU), no pooler.
  About 11.2 G MACs per sequence of 128 tokens in its linear layers and attention matmuls.

Weights are zeros (``init="zeros"``, the default: cheap, and counting does not look at values) or seeded
Gaussians (``init="random"``).  Normalisation layers get unit scale, zero shift and unit variance so the
networks stay well defined either way.
"""

from __future__ import annotations

import numpy as np

from nmengine.spec import InputSpec, Layer, ModelSpec

__all__ = ["resnet18_spec", "bert_base_spec", "RESNET18_CONV_FC_MACS", "bert_base_linear_attention_macs"]


class _Init:
    def __init__(self, init: str, seed: int) -> None:
        if init not in ("zeros", "random"):
            raise ValueError(f"init must be 'zeros' or 'random', got {init!r}")
        self.random = init == "random"
        self.rng = np.random.default_rng(seed)

    def w(self, *shape: int) -> np.ndarray:
        if not self.random:
            return np.zeros(shape, dtype=np.float32)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def b(self, n: int) -> np.ndarray:
        if not self.random:
            return np.zeros(n, dtype=np.float32)
        return (0.02 * self.rng.standard_normal(n)).astype(np.float32)


def _bn(name: str, x: str, out: str, c: int) -> Layer:
    return Layer(
        "batchnorm2d",
        name,
        [x],
        out,
        {"eps": 1e-5},
        {
            "weight": np.ones(c, np.float32),
            "bias": np.zeros(c, np.float32),
            "running_mean": np.zeros(c, np.float32),
            "running_var": np.ones(c, np.float32),
        },
    )


def _conv(ini: _Init, name: str, x: str, out: str, cin: int, cout: int, k: int, stride: int, pad: int) -> Layer:
    return Layer("conv2d", name, [x], out, {"stride": stride, "padding": pad}, {"weight": ini.w(cout, cin, k, k)})


#: Closed form of ResNet-18's conv + fc MACs at 224x224, batch 1 (output size x Cin*kh*kw per layer).
RESNET18_CONV_FC_MACS = (
    112 * 112 * 64 * 3 * 7 * 7  # conv1
    + 4 * 56 * 56 * 64 * 64 * 9  # stage 1: four 3x3 convs
    + 28 * 28 * 128 * 64 * 9
    + 3 * 28 * 28 * 128 * 128 * 9
    + 28 * 28 * 128 * 64  # stage 2 (+ 1x1 down)
    + 14 * 14 * 256 * 128 * 9
    + 3 * 14 * 14 * 256 * 256 * 9
    + 14 * 14 * 256 * 128  # stage 3
    + 7 * 7 * 512 * 256 * 9
    + 3 * 7 * 7 * 512 * 512 * 9
    + 7 * 7 * 512 * 256  # stage 4
    + 512 * 1000  # fc
)


def resnet18_spec(init: str = "zeros", seed: int = 0, classes: int = 1000, hw: int = 224) -> ModelSpec:
    """ResNet-18 (torchvision layout: conv bias-free, BN after every conv, BasicBlocks)."""
    ini = _Init(init, seed)
    L: list[Layer] = [
        _conv(ini, "conv1", "x", "c1", 3, 64, 7, 2, 3),
        _bn("bn1", "c1", "b1", 64),
        Layer("relu", "relu", ["b1"], "r1"),
        Layer("maxpool2d", "maxpool", ["r1"], "p1", {"kernel": 3, "stride": 2, "padding": 1}),
    ]
    x, cin = "p1", 64
    for s, cout in enumerate((64, 128, 256, 512), start=1):
        for blk in range(2):
            stride = 2 if (s > 1 and blk == 0) else 1
            p = f"layer{s}.{blk}"
            L += [
                _conv(ini, f"{p}.conv1", x, f"{p}.c1", cin, cout, 3, stride, 1),
                _bn(f"{p}.bn1", f"{p}.c1", f"{p}.b1", cout),
                Layer("relu", f"{p}.relu1", [f"{p}.b1"], f"{p}.r1"),
                _conv(ini, f"{p}.conv2", f"{p}.r1", f"{p}.c2", cout, cout, 3, 1, 1),
                _bn(f"{p}.bn2", f"{p}.c2", f"{p}.b2", cout),
            ]
            skip = x
            if stride != 1 or cin != cout:
                L += [
                    _conv(ini, f"{p}.downsample.0", x, f"{p}.d0", cin, cout, 1, stride, 0),
                    _bn(f"{p}.downsample.1", f"{p}.d0", f"{p}.d1", cout),
                ]
                skip = f"{p}.d1"
            L += [
                Layer("add", f"{p}.add", [f"{p}.b2", skip], f"{p}.sum"),
                Layer("relu", f"{p}.relu2", [f"{p}.sum"], f"{p}.out"),
            ]
            x, cin = f"{p}.out", cout
    L += [
        Layer("global_avgpool", "avgpool", [x], "pooled"),
        Layer("linear", "fc", ["pooled"], "logits", {}, {"weight": ini.w(classes, 512), "bias": ini.b(classes)}),
    ]
    return ModelSpec({"x": InputSpec((None, 3, hw, hw))}, L, ["logits"], name="resnet18")


def bert_base_linear_attention_macs(
    batch: int = 1, seq: int = 128, layers: int = 12, d: int = 768, heads: int = 12, ff: int = 3072
) -> int:
    """Closed form: per layer Q, K, V, O projections (4*T*d*d), FFN (2*T*d*ff), QK^T and PV (2*h*T*T*d/h)."""
    t = batch * seq
    per_layer = 4 * t * d * d + 2 * t * d * ff + 2 * batch * heads * seq * seq * (d // heads)
    return layers * per_layer


def bert_base_spec(
    init: str = "zeros",
    seed: int = 0,
    layers: int = 12,
    d: int = 768,
    heads: int = 12,
    ff: int = 3072,
    vocab: int = 30522,
    max_len: int = 512,
) -> ModelSpec:
    """BERT-base encoder (post-LN, GELU), inputs ``ids``, ``types`` and ``mask`` ``[B, T]``; output the
    last hidden states ``[B, T, 768]`` (no pooler)."""
    ini = _Init(init, seed)

    def ln(name: str, x: str, out: str) -> Layer:
        return Layer(
            "layernorm",
            name,
            [x],
            out,
            {"eps": 1e-12},
            {"weight": np.ones(d, np.float32), "bias": np.zeros(d, np.float32)},
        )

    def linear(name: str, x: str, out: str, fin: int, fout: int) -> Layer:
        return Layer("linear", name, [x], out, {}, {"weight": ini.w(fout, fin), "bias": ini.b(fout)})

    L: list[Layer] = [
        Layer(
            "embedding",
            "embeddings",
            ["ids", "types"],
            "e",
            {},
            {"word": ini.w(vocab, d), "position": ini.w(max_len, d), "token_type": ini.w(2, d)},
        ),
        ln("embeddings.LayerNorm", "e", "h0"),
    ]
    x = "h0"
    for i in range(layers):
        p = f"encoder.layer.{i}"
        attn = {f"{k}_{s}": (ini.w(d, d) if s == "weight" else ini.b(d)) for k in "qkvo" for s in ("weight", "bias")}
        L += [
            Layer("mhsa", f"{p}.attention", [x, "mask"], f"{p}.a", {"heads": heads}, attn),
            Layer("add", f"{p}.attention.residual", [f"{p}.a", x], f"{p}.r1"),
            ln(f"{p}.attention.LayerNorm", f"{p}.r1", f"{p}.h1"),
            linear(f"{p}.intermediate", f"{p}.h1", f"{p}.f1", d, ff),
            Layer("gelu", f"{p}.intermediate.gelu", [f"{p}.f1"], f"{p}.g"),
            linear(f"{p}.output", f"{p}.g", f"{p}.f2", ff, d),
            Layer("add", f"{p}.output.residual", [f"{p}.f2", f"{p}.h1"], f"{p}.r2"),
            ln(f"{p}.output.LayerNorm", f"{p}.r2", f"{p}.out"),
        ]
        x = f"{p}.out"
    return ModelSpec(
        {
            "ids": InputSpec((None, None), "int64"),
            "types": InputSpec((None, None), "int64"),
            "mask": InputSpec((None, None), "int64"),
        },
        L,
        [x],
        name="bert-base",
        meta={"max_len": max_len},
    )
