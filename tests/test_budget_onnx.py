"""nm.onnx.load passes segments="auto"/target through to the budgeted compile; ONNX Runtime on the
same file is the reference."""

from __future__ import annotations

import numpy as np

from tests.onnx_graphs import F, helper, init, model, ort_run, vi


def test_onnx_load_auto_meets_cosine_target_against_onnxruntime():
    import nmengine as nm

    rng = np.random.default_rng(3)
    w1 = (rng.standard_normal((12, 24)) * 0.5).astype(np.float32)
    w2 = (rng.standard_normal((24, 6)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "W2"], ["y"]),
    ]
    d = model(nodes, [vi("x", F, ["N", 12])], [vi("y", F, None)], [init("W1", w1), init("W2", w2)])
    x = rng.standard_normal((200, 12)).astype(np.float32)
    prog = nm.onnx.load(d, calibration={"x": x}, segments="auto", target={"cosine": 0.99999})
    budget = prog.meta["budget"]
    assert budget["met"] and len(budget["tables"]) == 1
    x2 = rng.standard_normal((200, 12)).astype(np.float32)
    ref = ort_run(d, {"x": x2})[0].astype(np.float64)
    got = prog.run({"x": x2}).astype(np.float64)
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99999
