"""The MiniLM peers every sentence-embedding benchmark runs side by side, set up once.

* :func:`minilm_inputs` -- the tokenized corpus batches (``batch1``, ``batch32``, ``fixed32x128``);
* :func:`pooled_bert` -- ``transformers.BertModel`` + masked mean pooling + L2 normalisation (the
  sentence-transformers pipeline of all-MiniLM-L6-v2) as one torch module;
* :func:`export_onnx` -- that module exported with ``torch.onnx.export`` (opset 17, dynamic batch and
  tokens), the file ONNX Runtime runs;
* :func:`ort_session` -- an ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads and
  ``session.intra_op.allow_spinning=0`` (ORT's pool otherwise spins after each run and steals the cores
  of whatever runs next).

torch, transformers and onnxruntime are imported when a function needs them, so a benchmark that
skips without the bench extra never imports them here.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from nmengine import corpus, hf


def minilm_inputs(model_dir: str, scenarios: tuple[str, ...] = ("batch32", "fixed32x128", "batch1")) -> dict[str, Any]:
    """Tokenized batches by scenario: ``batch32`` (32 corpus sentences padded to the longest),
    ``fixed32x128`` (32 sequences of exactly 128 tokens) and ``batch1`` (one sentence)."""
    tok = hf.load_tokenizer(model_dir)
    sents = corpus.sentences(64)
    make = {
        "batch32": lambda: hf.tokenize(tok, sents[:32]),
        "fixed32x128": lambda: hf.tokenize(tok, [" ".join(sents[i:] + sents[:i]) for i in range(32)], max_length=128),
        "batch1": lambda: hf.tokenize(tok, sents[40:41]),
    }
    return {s: make[s]() for s in scenarios}


def pooled_bert(model_dir: str) -> Any:
    """The sentence-transformers pipeline of a BERT checkpoint as one torch module, in eval mode."""
    import torch
    import transformers

    class Pooled(torch.nn.Module):
        """BertModel + masked mean pooling + L2 normalisation."""

        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, token_type_ids, attention_mask):
            h = self.bert(
                input_ids=input_ids,
                token_type_ids=token_type_ids,
                attention_mask=attention_mask,
            ).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(e, dim=1)

    return Pooled(transformers.BertModel.from_pretrained(model_dir)).eval()


def export_onnx(
    model: Any,
    example: dict[str, np.ndarray],
    path: str,
    output: str = "sentence_embedding",
) -> str:
    """Export :func:`pooled_bert`'s module to ``path`` (opset 17, batch and tokens dynamic); returns ``path``."""
    import torch

    axes: dict[str, dict[int, str]] = {k: {0: "batch", 1: "tokens"} for k in hf.INPUT_NAMES}
    axes[output] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            tuple(torch.from_numpy(example[k]) for k in hf.INPUT_NAMES),
            path,
            input_names=list(hf.INPUT_NAMES),
            output_names=[output],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    return path


def ort_session(path: str, threads: int) -> Any:
    """ONNX Runtime on the CPU with ``threads`` intra-op threads, all graph optimisations, no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def run_torch(model: Any) -> Any:
    """``batch dict -> embeddings`` of :func:`pooled_bert`'s module under ``torch.inference_mode``."""
    import torch

    def run(b: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(*(torch.from_numpy(b[k]) for k in hf.INPUT_NAMES)).numpy()

    return run
