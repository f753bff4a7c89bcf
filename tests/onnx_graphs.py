"""Shared helpers of the ONNX importer tests: build graphs with onnx.helper, run ONNX Runtime on them.

ONNX Runtime on the same serialized file is the independent reference for every comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402  (after the importorskip guards)

F = TensorProto.FLOAT
I64 = TensorProto.INT64
OPSET = 17


def init(name: str, arr: Any) -> onnx.TensorProto:
    a = np.asarray(arr)
    return numpy_helper.from_array(a.astype(np.float32) if a.dtype == np.float64 else a, name)


def model(
    nodes: list, inputs: Sequence, outputs: Sequence, inits: Sequence = (), opset: int = OPSET, name: str = "g"
) -> bytes:
    g = helper.make_graph(nodes, name, list(inputs), list(outputs), initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    m.ir_version = 8 if opset < 21 else 10
    if any(not o.type.tensor_type.HasField("shape") for o in m.graph.output):
        inferred = onnx.shape_inference.infer_shapes(m)
        for o, io in zip(m.graph.output, inferred.graph.output):
            o.CopyFrom(io)
            if not o.type.tensor_type.HasField("shape"):
                o.type.tensor_type.shape.SetInParent()
    onnx.checker.check_model(m)
    return m.SerializeToString()


def vi(name: str, elem: int, shape: Sequence) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, None if shape is None else list(shape))


def ort_run(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    return float(np.max(np.abs(got - ref))) / scale


def cosine(got: np.ndarray, ref: np.ndarray) -> float:
    a = np.asarray(got, np.float64).reshape(-1)
    b = np.asarray(ref, np.float64).reshape(-1)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-300))


def check(
    data: bytes,
    feeds: dict[str, np.ndarray],
    *,
    calib: Any = None,
    exact_tol: float = 1e-4,
    cos_min: float = 0.999,
    matrixized: bool = True,
    **opts: Any,
):
    """Import ``data``, compare exact and matrixized outputs with ONNX Runtime; return the program."""
    import nmengine as nm

    refs = ort_run(data, feeds)
    prog = nm.onnx.load(data, calibration=calib if calib is not None else feeds, **opts)
    got = prog.run(feeds, mode="exact")
    got = got if isinstance(got, dict) else {prog.outputs[0]: got}
    for name, ref in zip(prog.outputs, refs):
        assert got[name].shape == ref.shape, (name, got[name].shape, ref.shape)
        e = rel_err(got[name], ref)
        assert e <= exact_tol, f"exact {name}: max rel err {e:.3g}"
    if matrixized:
        got = prog.run(feeds)
        got = got if isinstance(got, dict) else {prog.outputs[0]: got}
        for name, ref in zip(prog.outputs, refs):
            c = cosine(got[name], ref)
            assert c >= cos_min, f"matrixized {name}: cosine {c:.6f}"
    return prog
