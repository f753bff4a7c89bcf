"""Fuzz targets: every loader that reads bytes a user hands to nmengine.

Each target takes one ``bytes`` input and either returns or raises one of its *documented* error types
(listed in :data:`TARGETS`); anything else (another exception, a crash, a hang) is a bug.  The same
functions serve three runners:

* ``tools/fuzz.py`` runs them under atheris (coverage-guided, the long campaign) and saves every
  failing input to ``tests/fuzz_corpus/<target>/``;
* ``tests/test_fuzz.py`` replays that corpus and the seeds on every test run, and runs a short
  hypothesis campaign per target;
* :func:`seeds` gives each target valid inputs to start from (mutations of valid files reach far deeper
  than random bytes).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Callable

import numpy as np

import nmengine as nm
from nmengine import hf
from nmengine.bundle import BundleError
from nmengine.pwl import PWLTable

_TMP = tempfile.mkdtemp(prefix="nmengine-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


def _scratch(name: str, data: bytes) -> str:
    path = os.path.join(_TMP, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _json(data: bytes):
    """The JSON document in ``data``, or None when it is not JSON (that is the JSON parser's job)."""
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def fuzz_bundle(data: bytes) -> None:
    """``nm.load`` of arbitrary bytes; a bundle that loads must also run."""
    program = nm.load(_scratch("f.nmb", data), mmap=False)
    shapes = {}
    for name, spec in program.inputs.items():
        shapes[name] = tuple(1 if d is None or isinstance(d, str) else int(d) for d in spec.shape)
    if any(int(np.prod(s)) > 4096 for s in shapes.values()):
        return
    inputs = {}
    for name, spec in program.inputs.items():
        dtype = np.int64 if str(spec.dtype).startswith("int") else np.float32
        inputs[name] = np.zeros(shapes[name], dtype=dtype)
    try:
        program.run(inputs)
    except nm.program.ProgramError:
        pass  # a structurally valid bundle may still not accept these inputs; that must be said clearly


def fuzz_pwl_from_dict(data: bytes) -> None:
    """``PWLTable.from_dict`` of any JSON; a table that builds must evaluate NaN/inf like IEEE says."""
    doc = _json(data)
    if doc is None:
        return
    table = PWLTable.from_dict(doc)
    x = np.array([-np.inf, -1e30, -1.0, 0.0, 1.0, 1e30, np.inf, np.nan], dtype=np.float32)
    y = table(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.isnan(y[-1]), "NaN input must give NaN"
    # the C epilogue is the same table: bit-identical to the numpy evaluation
    c = nm.pwl_apply(table, x.reshape(2, 4)).ravel()
    assert np.array_equal(c, y, equal_nan=True), (c, y)


def fuzz_hf_config(data: bytes) -> None:
    """``nm.hf.parse_config`` of any JSON document."""
    doc = _json(data)
    if doc is None:
        return
    hf.parse_config(doc)


def fuzz_hf_tokenizer(data: bytes) -> None:
    """``nm.hf.tokenizer_from_json`` of any text; a tokenizer that loads must encode."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    tok = hf.tokenizer_from_json(text)
    tok.encode("A GEMM accelerator.")


def fuzz_hf_pipeline(data: bytes) -> None:
    """``nm.hf.read_pipeline`` of a directory whose modules.json is the input."""
    d = os.path.join(_TMP, "pipe")
    os.makedirs(d, exist_ok=True)
    _scratch(os.path.join("pipe", "modules.json"), data)
    hf.read_pipeline(d)


def fuzz_npz_inputs(data: bytes) -> None:
    """Named input arrays from an ``.npz`` as the CLI reads them (``nmengine run --input``)."""
    from nmengine.io import read_arrays

    read_arrays(io.BytesIO(data))


def fuzz_onnx(data: bytes) -> None:
    """``nm.onnx.to_spec`` of arbitrary bytes (the ONNX importer: protobuf, checker, graph rules)."""
    nm.onnx.to_spec(data)


#: target name -> (function, the exception types it documents)
TARGETS: dict[str, tuple[Callable[[bytes], None], tuple[type[BaseException], ...]]] = {
    "bundle": (fuzz_bundle, (BundleError,)),
    "pwl_from_dict": (fuzz_pwl_from_dict, (ValueError, TypeError)),
    "hf_config": (fuzz_hf_config, (ValueError, TypeError)),
    "hf_tokenizer": (fuzz_hf_tokenizer, (ValueError,)),
    "hf_pipeline": (fuzz_hf_pipeline, (ValueError,)),
    "npz_inputs": (fuzz_npz_inputs, (ValueError,)),
    "onnx": (fuzz_onnx, (ValueError,)),  # nm.onnx.OnnxImportError (UnsupportedModelError) are ValueErrors
}


def check(target: str, data: bytes) -> None:
    """Run one input; raise AssertionError describing it when the target fails in an undocumented way."""
    fn, allowed = TARGETS[target]
    try:
        fn(data)
    except allowed:
        pass
    except Exception as exc:  # noqa: BLE001 - anything else is the finding
        raise AssertionError(f"{target}: undocumented {type(exc).__name__}: {exc}") from exc


def seeds(target: str) -> list[bytes]:
    """Valid inputs of a target to mutate from."""
    if target == "bundle":
        from .specs import cnn_spec

        program = nm.compile(cnn_spec(c=4), segments=4)
        path = os.path.join(_TMP, "seed.nmb")
        nm.save(program, path)
        with open(path, "rb") as f:
            return [f.read()]
    if target == "pwl_from_dict":
        t = nm.approx.fit("gelu", segments=4)
        d = {
            "breakpoints": t.breakpoints.tolist(),
            "slopes": t.slopes.tolist(),
            "intercepts": t.intercepts.tolist(),
            "name": "gelu",
        }
        return [json.dumps(d).encode(), b'{"breakpoints": [0, 1], "slopes": [1], "intercepts": [0]}']
    if target == "hf_config":
        return [
            json.dumps(
                {
                    "model_type": "bert",
                    "vocab_size": 30,
                    "hidden_size": 8,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "intermediate_size": 16,
                    "max_position_embeddings": 16,
                    "type_vocab_size": 2,
                    "hidden_act": "gelu",
                    "layer_norm_eps": 1e-12,
                }
            ).encode()
        ]
    if target == "hf_tokenizer":
        vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "gemm": 5}
        doc = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [],
            "normalizer": {
                "type": "BertNormalizer",
                "clean_text": True,
                "handle_chinese_chars": True,
                "strip_accents": None,
                "lowercase": True,
            },
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": None,
            "decoder": None,
            "model": {
                "type": "WordPiece",
                "unk_token": "[UNK]",
                "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100,
                "vocab": vocab,
            },
        }
        return [json.dumps(doc).encode()]
    if target == "hf_pipeline":
        return [
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
                ]
            ).encode()
        ]
    if target == "onnx":
        from .test_onnx_cnn import resnet_style

        return [resnet_style()]
    if target == "npz_inputs":
        buf = io.BytesIO()
        np.savez(buf, x=np.ones((2, 3), np.float32), ids=np.arange(4, dtype=np.int64))
        return [buf.getvalue()]
    raise KeyError(target)
