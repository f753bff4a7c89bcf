"""Reading and validating an ONNX file before any import work.

:func:`read_model` accepts a path, bytes or a ``ModelProto``; it parses the protobuf, loads external
data (tensors stored beside the ``.onnx`` file), runs the official checker and checks what the importer
relies on (an opset of the default domain, float32/int64/bool graph inputs, initializers whose data
matches their shape).  Everything wrong becomes an :class:`~.errors.OnnxImportError` saying what was
expected and what came; nothing crashes on corrupt input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import OnnxImportError

__all__ = ["MAX_FOLDED_ELEMENTS", "initializer_arrays", "model_opset", "read_model"]

#: Largest tensor (elements) the importer materialises from a constant (guards corrupt shapes).
MAX_FOLDED_ELEMENTS = 1 << 28

FLOAT_TYPES = {TensorProto.FLOAT: "float32"}
INT_TYPES = {TensorProto.INT64: "int64", TensorProto.INT32: "int32", TensorProto.BOOL: "bool"}


def _type_name(t: int) -> str:
    try:
        return TensorProto.DataType.Name(t)
    except ValueError:
        return f"type {t}"


def read_model(source: Any) -> tuple[onnx.ModelProto, str]:
    """Parse and check ``source`` (path, bytes or ModelProto); returns (model, description)."""
    if isinstance(source, onnx.ModelProto):
        model, what = source, "ModelProto"
        base_dir = None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        model, what, base_dir = _parse(bytes(source), "bytes"), f"{len(source)} bytes", None
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file {str(path)!r} does not exist")
        model = _parse(path.read_bytes(), str(path))
        what, base_dir = str(path), path.parent
    else:
        raise TypeError(f"expected a path, bytes or onnx.ModelProto, got {type(source).__name__}")
    _load_external(model, base_dir, what)
    _check(model, what)
    return model, what


def _parse(data: bytes, what: str) -> onnx.ModelProto:
    if not data:
        raise OnnxImportError(f"{what}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as e:  # noqa: BLE001 - protobuf/onnx raise many types on corrupt input
        raise OnnxImportError(f"{what}: not a valid ONNX protobuf (malformed or truncated): {e}") from None
    if not model.HasField("graph"):
        raise OnnxImportError(f"{what}: the protobuf has no graph: not an ONNX model, or truncated")
    return model


def _uses_external(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in _all_tensors(model))


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for a in node.attribute:
            if a.type == onnx.AttributeProto.TENSOR:
                yield a.t


def _load_external(model: onnx.ModelProto, base_dir: Path | None, what: str) -> None:
    if not _uses_external(model):
        return
    if base_dir is None:
        raise OnnxImportError(
            f"{what}: the model keeps tensors in external data files; load it from its path "
            f"so the files beside it can be found"
        )
    for t in _all_tensors(model):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (base_dir / loc).resolve()
        if not loc or Path(loc).is_absolute() or base_dir.resolve() not in target.parents:
            raise OnnxImportError(
                f"{what}: tensor {t.name!r}: external data location {loc!r} must be a relative "
                f"path inside the model's directory"
            )
        if not target.is_file():
            raise OnnxImportError(
                f"{what}: tensor {t.name!r}: external data file {loc!r} is missing "
                f"(expected beside the model, at {target})"
            )
        try:
            offset = int(info.get("offset", 0))
            length = int(info["length"]) if "length" in info else None
        except ValueError:
            raise OnnxImportError(f"{what}: tensor {t.name!r}: bad external data offset/length {info}") from None
        size = target.stat().st_size
        if offset < 0 or offset > size or (length is not None and (length < 0 or offset + length > size)):
            raise OnnxImportError(
                f"{what}: tensor {t.name!r}: external data range offset={offset} length={length} "
                f"exceeds the {size}-byte file {loc!r}"
            )
    try:
        onnx.external_data_helper.load_external_data_for_model(model, str(base_dir))
    except Exception as e:  # noqa: BLE001 - protobuf/onnx raise many types on corrupt input
        raise OnnxImportError(f"{what}: cannot load external data: {e}") from None


def _check(model: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # noqa: BLE001 - protobuf/onnx raise many types on corrupt input
        msg = str(e).strip().splitlines()
        raise OnnxImportError(f"{what}: the ONNX checker rejects the model: {' '.join(msg[:3])[:500]}") from None
    g = model.graph
    model_opset(model, what)
    if not g.output:
        raise OnnxImportError(f"{what}: the graph declares no outputs")
    inits = {t.name for t in g.initializer}
    real_inputs = [i for i in g.input if i.name not in inits]
    if not real_inputs:
        raise OnnxImportError(f"{what}: the graph has no (non-initializer) inputs")
    for inp in real_inputs:
        tt = inp.type.tensor_type
        if not inp.type.HasField("tensor_type"):
            raise OnnxImportError(f"{what}: input {inp.name!r} is not a tensor")
        if tt.elem_type not in FLOAT_TYPES and tt.elem_type not in INT_TYPES:
            raise OnnxImportError(
                f"{what}: input {inp.name!r} has dtype {_type_name(tt.elem_type)}; expected "
                f"FLOAT (float32) for data, or INT64/INT32/BOOL for ids and masks"
            )
        if not tt.HasField("shape"):
            raise OnnxImportError(f"{what}: input {inp.name!r} has no declared rank")


def model_opset(model: onnx.ModelProto, what: str = "model") -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            if not 7 <= o.version <= 23:
                raise OnnxImportError(f"{what}: default-domain opset {o.version} is outside the supported 7..23")
            return int(o.version)
    raise OnnxImportError(f"{what}: no opset of the default ONNX domain is imported")


def tensor_array(t: TensorProto, what: str) -> np.ndarray:
    """A TensorProto as numpy, with a clear error when its data does not match its shape."""
    n = 1
    for d in t.dims:
        if d < 0:
            raise OnnxImportError(f"{what}: tensor {t.name!r} has a negative dim {list(t.dims)}")
        n *= int(d)
    if n > MAX_FOLDED_ELEMENTS:
        raise OnnxImportError(
            f"{what}: tensor {t.name!r} claims {n:,} elements (shape {list(t.dims)}); "
            f"more than the importer accepts ({MAX_FOLDED_ELEMENTS:,})"
        )
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:  # noqa: BLE001 - protobuf/onnx raise many types on corrupt input
        raise OnnxImportError(
            f"{what}: tensor {t.name!r} ({_type_name(t.data_type)}, shape {list(t.dims)}) cannot be decoded: {e}"
        ) from None
    if arr.size != n:
        raise OnnxImportError(f"{what}: tensor {t.name!r} holds {arr.size} values for shape {list(t.dims)}")
    if arr.dtype.kind == "f" and arr.dtype != np.float32 and arr.dtype != np.float64:
        arr = arr.astype(np.float32)
    return arr


def initializer_arrays(model: onnx.ModelProto, what: str) -> dict[str, np.ndarray]:
    return {t.name: tensor_array(t, what) for t in model.graph.initializer}
