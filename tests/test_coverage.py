"""Coverage (nmengine.coverage): work by kind and the share of the source model's layers that became GEMM / PWL.

Expected work figures are counted by hand from the layer definitions (a linear layer of ``K -> N`` on ``M``
rows is ``M*N*K`` MACs; an im2col of a ``C x H x W`` image reads it once and writes ``C*kh*kw x Ho*Wo``),
and the source classification is checked against the spec's own layer list and against a Program whose
lowering is deliberately incomplete.
"""

from __future__ import annotations

import numpy as np
import pytest

import nmengine as nm
from nmengine.program import Op, Program
from nmengine.spec import InputSpec, Layer, ModelSpec

from .specs import cnn_spec, transformer_inputs, transformer_spec


def _linear_gelu(k: int = 8, n: int = 5) -> ModelSpec:
    rng = np.random.default_rng(0)
    layers = [
        Layer(
            "linear",
            "fc",
            ["x"],
            "h",
            {},
            {
                "weight": rng.standard_normal((n, k)).astype(np.float32),
                "bias": rng.standard_normal(n).astype(np.float32),
            },
        ),
        Layer("gelu", "act", ["h"], "y"),
    ]
    return ModelSpec({"x": InputSpec((None, k))}, layers, ["y"], name="fc_gelu")


def test_linear_gelu_work_and_source():
    m, k, n = 3, 8, 5
    cov = nm.compile(_linear_gelu(k, n)).coverage({"x": (m, k)})
    assert cov["work"]["gemm_macs"] == m * n * k
    assert cov["work"]["pwl_evals"] == m * n  # one gelu lookup per output (fused into the GEMM)
    assert cov["work"]["relu_evals"] == 0 and cov["work"]["movement_bytes"] == 0
    src = cov["source"]
    assert src["layers"] == 2
    assert src["linear"] == {"total": 1, "as_gemm": 1} and src["nonlinear"] == {"total": 1, "as_pwl": 1}
    assert src["linear_share"] == src["nonlinear_share"] == 1.0 and src["not_covered"] == []


def test_conv_work_counts_the_im2col_traffic():
    rng = np.random.default_rng(1)
    co, ci, kh, h = 2, 1, 3, 8
    spec = ModelSpec(
        {"x": InputSpec((None, ci, h, h))},
        [Layer("conv2d", "conv", ["x"], "y", {}, {"weight": rng.standard_normal((co, ci, kh, kh)).astype(np.float32)})],
        ["y"],
    )
    n, ho = 2, h - kh + 1
    cov = nm.compile(spec).coverage({"x": (n, ci, h, h)})
    assert cov["work"]["gemm_macs"] == n * co * ho * ho * ci * kh * kh
    im2col_bytes = 4 * (n * ci * h * h + n * ci * kh * kh * ho * ho)  # read the image, write the patch matrix
    assert cov["work"]["movement_bytes"] == im2col_bytes  # the final reshape to NCHW is a free view
    assert cov["source"]["linear"] == {"total": 1, "as_gemm": 1} and cov["source"]["nonlinear"]["total"] == 0


def test_cnn_source_layers_are_counted_from_the_spec():
    spec = cnn_spec()
    cov = nm.compile(spec).coverage({"x": (2, 1, 8, 8)})
    ops = [lyr.op for lyr in spec.layers]
    # Independent classification of this spec: convs, BatchNorms (folded into the convs), the residual
    # add, the average pool and the head are linear; ReLUs and the max pool are nonlinear; flatten is neither.
    linear = sum(op in ("conv2d", "batchnorm2d", "add", "avgpool2d", "linear") for op in ops)
    nonlinear = sum(op in ("relu", "maxpool2d") for op in ops)
    assert cov["source"]["layers"] == len(spec.layers)
    assert cov["source"]["linear"] == {"total": linear, "as_gemm": linear}
    assert cov["source"]["nonlinear"] == {"total": nonlinear, "as_pwl": nonlinear}
    assert cov["work"]["relu_evals"] > 0 and cov["work"]["pwl_evals"] == 0  # ReLU and max are exact


def test_transformer_nonlinearities_are_pwl_lookups():
    spec = transformer_spec()
    inp = transformer_inputs()
    cov = nm.compile(spec).coverage({k: v.shape for k, v in inp.items()})
    src = cov["source"]
    assert src["nonlinear_share"] == 1.0 and src["linear_share"] == 1.0
    # softmax, LayerNorm, GELU, masked pooling, L2 normalisation: every one is a table lookup
    assert cov["work"]["pwl_evals"] > 0 and cov["pwl_epilogues"] > 0
    assert src["nonlinear"]["total"] >= sum(
        lyr.op in ("mhsa", "layernorm", "gelu", "l2_normalize") for lyr in spec.layers
    )


def test_a_layer_lowered_without_a_table_is_reported():
    """A Program whose source lists a gelu layer that no op evaluates: the measurement says so."""
    rng = np.random.default_rng(2)
    ops = [Op("gemm", "h", {"a": "x", "b": "w"}, layer="fc")]
    meta = {
        "source_layers": [
            {"name": "fc", "op": "linear", "linear": True, "nonlinear": False, "implemented_by": "fc"},
            {"name": "act", "op": "gelu", "linear": False, "nonlinear": True, "implemented_by": "act"},
        ]
    }
    prog = Program({"x": InputSpec((None, 4))}, ["h"], ops, {"w": rng.standard_normal((4, 3))}, {}, meta=meta)
    src = prog.coverage()["source"]
    assert src["linear_share"] == 1.0 and src["nonlinear_share"] == 0.0 and src["not_covered"] == ["act"]
    # the Program-level shares are 1.0 regardless: they restate the IR, they do not measure the lowering
    assert prog.coverage()["arithmetic_ops_as_gemm_pwl"] == 1.0


def test_programs_without_a_source_record_have_no_source_entry():
    prog = Program({"x": InputSpec((None, 4))}, ["y"], [Op("reshape", "y", {"x": "x"}, {"shape": [0, -1]})], {}, {})
    cov = prog.coverage({"x": (2, 4)})
    assert "source" not in cov
    assert cov["work"] == {"gemm_macs": 0, "pwl_evals": 0, "relu_evals": 0, "movement_bytes": 0, "flops": 0}


def test_unknown_spec_op_is_an_error():
    from nmengine.coverage import layer_parts

    with pytest.raises(ValueError, match="does not know the ModelSpec op 'warp'"):
        layer_parts(Layer("warp", "w", ["x"], "y"))
