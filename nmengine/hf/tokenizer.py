"""Tokenization: the checkpoint's fast tokenizer, padded and truncated batches, calibration batches."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from .config import BertConfig, PathLike, SentencePipeline, resolve_model_dir

__all__ = [
    "load_tokenizer",
    "tokenizer_from_json",
    "tokenize",
    "calibration_batches",
    "resolve_max_length",
    "encode_ids",
    "pad_batch",
    "DEFAULT_MAX_LENGTH",
    "DEFAULT_CALIBRATION_SENTENCES",
]

#: Truncation length when neither the caller nor sentence_bert_config.json gives one.
DEFAULT_MAX_LENGTH = 128
#: Number of built-in corpus sentences the default calibration uses.
DEFAULT_CALIBRATION_SENTENCES = 48


def load_tokenizer(model_dir: PathLike):
    """The ``tokenizers.Tokenizer`` of ``model_dir/tokenizer.json`` with its padding/truncation turned off."""
    path = os.path.join(resolve_model_dir(model_dir), "tokenizer.json")
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


def resolve_max_length(config: BertConfig, pipeline: Optional[SentencePipeline], max_length: Optional[int]) -> int:
    """The truncation length: ``max_length``, else the pipeline's, else the default; capped by the model."""
    if max_length is None:
        max_length = pipeline.max_seq_length if pipeline and pipeline.max_seq_length else DEFAULT_MAX_LENGTH
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    return min(max_length, config.max_position_embeddings)


def encode_ids(tokenizer, sentences: Sequence[str], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Token ids and types of each sentence, truncated to ``max_length`` keeping the final [SEP]."""
    rows = []
    for e in tokenizer.encode_batch(list(sentences)):
        ids, types = list(e.ids), list(e.type_ids)
        if len(ids) > max_length:
            ids = ids[: max_length - 1] + ids[-1:]
            types = types[: max_length - 1] + types[-1:]
        rows.append((ids, types))
    return rows


def pad_batch(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, length: Optional[int] = None
) -> dict[str, np.ndarray]:
    """Program inputs from :func:`encode_ids` rows, right-padded to the longest row or to ``length``."""
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


def tokenize(
    tokenizer,
    sentences: Sequence[str],
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    pad_id: int = 0,
    pad_to: Optional[int] = None,
) -> dict[str, np.ndarray]:
    """Program inputs for ``sentences``: right-padded to the longest (or to ``pad_to``), truncated."""
    if not sentences:
        raise ValueError("tokenize needs at least one sentence")
    return pad_batch(encode_ids(tokenizer, sentences, max_length), pad_id, pad_to)


def calibration_batches(
    tokenizer,
    sentences: Optional[Sequence[str]] = None,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    pad_id: int = 0,
    long_sequences: int = 2,
    lowercase: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Calibration inputs: batches of real sentences plus ``long_sequences`` full-length sequences.

    The long sequences (calibration sentences joined until ``max_length`` tokens) make the tables
    of the softmax row sums and the pooling token counts cover every length the model accepts.
    """
    if sentences is None:
        from .. import corpus

        sentences = corpus.sentences(DEFAULT_CALIBRATION_SENTENCES, split="calibration")
    sentences = list(sentences)
    if not sentences or not all(isinstance(s, str) for s in sentences):
        raise ValueError("calibration_sentences must be a non-empty list of str")
    if lowercase:  # sentence_bert_config.json do_lower_case
        sentences = [t.lower() for t in sentences]
    batches = [
        tokenize(tokenizer, sentences[i : i + batch_size], max_length=max_length, pad_id=pad_id)
        for i in range(0, len(sentences), batch_size)
    ]
    if long_sequences > 0:
        texts = []
        for k in range(long_sequences):
            rot = sentences[k % len(sentences) :] + sentences[: k % len(sentences)]
            texts.append(" ".join(rot * (1 + (4 * max_length) // max(1, sum(len(s.split()) for s in rot)))))
        batches.append(tokenize(tokenizer, texts, max_length=max_length, pad_id=pad_id))
    return batches
