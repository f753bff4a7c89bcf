"""BERT as a :class:`~nmengine.spec.ModelSpec`: embeddings, post-LN encoder layers, optional pooling::

embedding (word + position + token type) -> LayerNorm
N x post-LN encoder layer:
    mhsa(x, attention_mask) -> add(x) -> LayerNorm -> linear -> gelu -> linear -> add -> LayerNorm
[mean_pool(x, attention_mask) -> l2_normalize]        (sentence embedders)
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Mapping

import numpy as np

from ..spec import InputSpec, Layer, ModelSpec
from .config import BertConfig

__all__ = ["build_spec", "INPUT_NAMES"]

#: Program inputs (int64, ``[batch, tokens]``, right-padded).
INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")


def _tensor(weights: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in weights:
        raise ValueError(f"model.safetensors: tensor {name!r} is missing")
    w = weights[name]
    if tuple(w.shape) != shape:
        raise ValueError(f"model.safetensors: tensor {name!r} has shape {tuple(w.shape)}, config implies {shape}")
    return w


def build_spec(
    config: BertConfig,
    weights: Mapping[str, np.ndarray],
    *,
    pooling: str = "mean",
    normalize: bool = True,
    name: str = "bert",
) -> ModelSpec:
    """The BERT encoder as a ModelSpec.

    ``pooling="mean"`` ends with masked mean pooling (and ``l2_normalize`` when ``normalize``) and the
    output ``sentence_embedding``; ``pooling="none"`` outputs ``last_hidden_state``.
    """
    if pooling not in ("mean", "none"):
        raise ValueError(f"pooling must be 'mean' or 'none' in the program, got {pooling!r}")
    c = config
    d, ff = c.hidden_size, c.intermediate_size

    def ln(prefix: str) -> dict[str, np.ndarray]:
        return {"weight": _tensor(weights, f"{prefix}.weight", (d,)), "bias": _tensor(weights, f"{prefix}.bias", (d,))}

    def dense(prefix: str, out: int, inp: int) -> dict[str, np.ndarray]:
        return {
            "weight": _tensor(weights, f"{prefix}.weight", (out, inp)),
            "bias": _tensor(weights, f"{prefix}.bias", (out,)),
        }

    eps = {"eps": c.layer_norm_eps}
    layers = [
        Layer(
            "embedding",
            "embeddings",
            ["input_ids", "token_type_ids"],
            "emb",
            {},
            {
                "word": _tensor(weights, "embeddings.word_embeddings.weight", (c.vocab_size, d)),
                "position": _tensor(weights, "embeddings.position_embeddings.weight", (c.max_position_embeddings, d)),
                "token_type": _tensor(weights, "embeddings.token_type_embeddings.weight", (c.type_vocab_size, d)),
            },
        ),
        Layer("layernorm", "embeddings.LayerNorm", ["emb"], "h0", dict(eps), ln("embeddings.LayerNorm")),
    ]
    x = "h0"
    for i in range(c.num_hidden_layers):
        p = f"encoder.layer.{i}"
        attn: dict[str, np.ndarray] = {}
        for short, hf in (("q", "query"), ("k", "key"), ("v", "value")):
            w = dense(f"{p}.attention.self.{hf}", d, d)
            attn[f"{short}_weight"], attn[f"{short}_bias"] = w["weight"], w["bias"]
        o = dense(f"{p}.attention.output.dense", d, d)
        attn["o_weight"], attn["o_bias"] = o["weight"], o["bias"]
        layers += [
            Layer("mhsa", f"{p}.attention", [x, "attention_mask"], f"{p}.attn", {"heads": c.num_attention_heads}, attn),
            Layer("add", f"{p}.attention.residual", [f"{p}.attn", x], f"{p}.attn_res"),
            Layer(
                "layernorm",
                f"{p}.attention.output.LayerNorm",
                [f"{p}.attn_res"],
                f"{p}.h1",
                dict(eps),
                ln(f"{p}.attention.output.LayerNorm"),
            ),
            Layer(
                "linear",
                f"{p}.intermediate.dense",
                [f"{p}.h1"],
                f"{p}.ff1",
                {},
                dense(f"{p}.intermediate.dense", ff, d),
            ),
            Layer(c.activation, f"{p}.intermediate.act", [f"{p}.ff1"], f"{p}.act"),
            Layer("linear", f"{p}.output.dense", [f"{p}.act"], f"{p}.ff2", {}, dense(f"{p}.output.dense", d, ff)),
            Layer("add", f"{p}.output.residual", [f"{p}.ff2", f"{p}.h1"], f"{p}.ff_res"),
            Layer(
                "layernorm",
                f"{p}.output.LayerNorm",
                [f"{p}.ff_res"],
                f"{p}.out",
                dict(eps),
                ln(f"{p}.output.LayerNorm"),
            ),
        ]
        x = f"{p}.out"
    if pooling == "mean":
        pooled = "pooled" if normalize else "sentence_embedding"
        layers.append(Layer("mean_pool", "pooling", [x, "attention_mask"], pooled))
        if normalize:
            layers.append(Layer("l2_normalize", "normalize", [pooled], "sentence_embedding"))
        outputs = ["sentence_embedding"]
    else:
        layers[-1].output = "last_hidden_state"  # name the output like Hugging Face does
        outputs = ["last_hidden_state"]
    inputs = {k: InputSpec((None, None), "int64") for k in INPUT_NAMES}
    meta = {
        "max_len": c.max_position_embeddings,
        "hf_config": asdict(c),
        "pooling": pooling,
        "normalize": bool(normalize and pooling == "mean"),
    }
    return ModelSpec(inputs, layers, outputs, name=name, meta=meta)
