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

One room per job: :mod:`~nmengine.hf.config` (config.json and the sentence-transformers pipeline),
:mod:`~nmengine.hf.weights` (model.safetensors), :mod:`~nmengine.hf.bert` (BERT -> ModelSpec),
:mod:`~nmengine.hf.tokenizer` (tokenization and calibration batches), :mod:`~nmengine.hf.load`
(:func:`load_bert`, :func:`export`: compile and cache), :mod:`~nmengine.hf.embedder`
(:class:`SentenceEmbedder`) and :mod:`~nmengine.hf.evaluate` (:func:`fidelity`, :func:`tradeoff`).
Everything in ``__all__`` is importable from ``nmengine.hf``.  The commands ``nmengine embed``,
``export-hf`` and ``hf-report`` live with the other commands in :mod:`nmengine.cli.hf`.
"""

from __future__ import annotations

from .bert import INPUT_NAMES, build_spec
from .config import (
    ACTIVATIONS,
    BertConfig,
    SentencePipeline,
    default_model_dir,
    parse_config,
    read_config,
    read_pipeline,
)
from .embedder import SentenceEmbedder
from .evaluate import fidelity, tradeoff
from .load import DEFAULT_FUNCTIONS, DEFAULT_METHOD, DEFAULT_SEGMENTS, export, load_bert
from .tokenizer import (
    DEFAULT_CALIBRATION_SENTENCES,
    DEFAULT_MAX_LENGTH,
    calibration_batches,
    load_tokenizer,
    tokenize,
    tokenizer_from_json,
)
from .weights import load_weights

__all__ = [
    "BertConfig",
    "SentencePipeline",
    "DEFAULT_SEGMENTS",
    "DEFAULT_METHOD",
    "DEFAULT_FUNCTIONS",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_CALIBRATION_SENTENCES",
    "ACTIVATIONS",
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
]
