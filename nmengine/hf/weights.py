"""A checkpoint's ``model.safetensors``: float tensors under canonical BERT names."""

from __future__ import annotations

import os

import numpy as np

from .config import PathLike, resolve_model_dir

__all__ = ["load_weights"]


def _canonical(name: str) -> str:
    for prefix in ("bert.", "model."):
        if name.startswith(prefix):
            name = name[len(prefix) :]
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
    d = resolve_model_dir(model_dir)
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
