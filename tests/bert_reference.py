"""An independent float64 numpy forward of a Hugging Face BERT checkpoint (the yardstick for nmengine.hf).

Written from the BERT definition alone (Devlin et al., 2019, and the ``BertModel`` weight naming): it
reads ``config.json`` and ``model.safetensors`` itself, tokenizes with the ``tokenizers`` library and
shares no code with nmengine (neither the importer nor the compiler nor the runtime).

    h0 = LayerNorm(word[ids] + position[0..T-1] + token_type[types])
    per layer (post-LN):
        a  = softmax(Q K^T / sqrt(d) + mask) V, heads concatenated, then the output dense layer
        h' = LayerNorm(h + a)
        h  = LayerNorm(h' + W2 gelu(W1 h' + b1) + b2)
    sentence embedding = L2-normalised masked mean of the last hidden states.
"""

from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np
from safetensors.numpy import load_file
from scipy.special import erf

from .reference import gelu_tanh


class ReferenceBert:
    """A BERT encoder evaluated in float64 with plain numpy."""

    def __init__(self, model_dir: str) -> None:
        with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
            self.config = json.load(f)
        raw = load_file(os.path.join(model_dir, "model.safetensors"))
        self.w = {(k[len("bert.") :] if k.startswith("bert.") else k): v.astype(np.float64) for k, v in raw.items()}
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()

    # -- pieces ------------------------------------------------------------------------------------
    def _ln(self, x: np.ndarray, prefix: str) -> np.ndarray:
        eps = float(self.config.get("layer_norm_eps", 1e-12))
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * self.w[f"{prefix}.weight"] + self.w[f"{prefix}.bias"]

    def _dense(self, x: np.ndarray, prefix: str) -> np.ndarray:
        return x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]

    def _act(self, x: np.ndarray) -> np.ndarray:
        act = self.config.get("hidden_act", "gelu")
        if act == "gelu":
            return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
        if act in ("gelu_new", "gelu_pytorch_tanh"):
            return gelu_tanh(x)
        raise ValueError(f"reference does not implement hidden_act={act!r}")

    # -- forward -------------------------------------------------------------------------------------
    def hidden_states(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states ``[N, T, D]`` (float64) for padded ``ids``/``types``/``mask`` of ``[N, T]``."""
        cfg, w = self.config, self.w
        n, t = ids.shape
        heads = int(cfg["num_attention_heads"])
        d = int(cfg["hidden_size"])
        hd = d // heads
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][np.arange(t)][None]
            + w["embeddings.token_type_embeddings.weight"][types]
        )
        x = self._ln(x, "embeddings.LayerNorm")
        neg = np.where(mask[:, None, None, :] > 0, 0.0, -np.inf)  # padded keys get no weight
        for i in range(int(cfg["num_hidden_layers"])):
            p = f"encoder.layer.{i}"

            def split(y: np.ndarray) -> np.ndarray:
                return y.reshape(n, t, heads, hd).transpose(0, 2, 1, 3)

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + neg
            s = s - s.max(-1, keepdims=True)
            e = np.exp(s)
            pr = e / e.sum(-1, keepdims=True)
            ctx = (pr @ v).transpose(0, 2, 1, 3).reshape(n, t, d)
            x = self._ln(x + self._dense(ctx, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            ff = self._dense(self._act(self._dense(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = self._ln(x + ff, f"{p}.output.LayerNorm")
        return x

    def tokenize(self, sentences: Sequence[str], max_length: int = 128) -> tuple[np.ndarray, ...]:
        """(ids, token types, mask), right-padded with id 0 to the longest sentence (truncated)."""
        encs = [self.tokenizer.encode(s) for s in sentences]
        rows = []
        for e in encs:
            ids, types = list(e.ids), list(e.type_ids)
            if len(ids) > max_length:  # keep [CLS] ... [SEP]
                ids = ids[: max_length - 1] + ids[-1:]
                types = types[: max_length - 1] + types[-1:]
            rows.append((ids, types))
        t = max(len(r[0]) for r in rows)
        ids = np.zeros((len(rows), t), dtype=np.int64)
        types = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for j, (a, b) in enumerate(rows):
            ids[j, : len(a)] = a
            types[j, : len(b)] = b
            mask[j, : len(a)] = 1
        return ids, types, mask

    def encode(self, sentences: Sequence[str], batch_size: int = 32, max_length: int = 128) -> np.ndarray:
        """Sentence embeddings (masked mean pooling + L2 normalisation), float64 ``[n, D]``."""
        out = []
        for i in range(0, len(sentences), batch_size):
            ids, types, mask = self.tokenize(sentences[i : i + batch_size], max_length)
            h = self.hidden_states(ids, types, mask)
            m = mask[..., None].astype(np.float64)
            pooled = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out.append(pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12))
        return np.concatenate(out)
