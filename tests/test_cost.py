"""The accelerator cost model (issue #6).

Every expected number here is a closed form written out by hand (MACs of a layer, bytes of a tiling,
cycles of a fold schedule), never a value the cost model produced; see docs/cost.md for the formulas.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys

import numpy as np
import pytest

from nmengine.compile import compile as nm_compile
from nmengine.cost import AcceleratorConfig, CostReport, cost_report, run_report
from nmengine.program import Op, Program
from nmengine.pwl import PWLTable
from nmengine.spec import InputSpec

from .big_specs import RESNET18_CONV_FC_MACS, bert_base_linear_attention_macs, bert_base_spec, resnet18_spec
from .specs import cnn_spec, transformer_spec

W = 4  # bytes per element of the default config
DEFAULT = AcceleratorConfig()
#: A tiny machine whose tilings are easy to enumerate by hand: a 4x4 array, 1024-element buffers.
SMALL = AcceleratorConfig(rows=4, cols=4, a_buffer_bytes=4096, b_buffer_bytes=4096, c_buffer_bytes=4096)
TABLE = PWLTable([-1.0, 0.0, 1.0], [0.0, 1.0], [0.0, 0.0])


def _gemm_program(m: int, k: int, n: int, epilogue: dict | None = None, bias: bool = False) -> Program:
    """``y = ep(x[M, K] @ W[K, N] (+ b))`` as a one-op program."""
    consts = {"w": np.zeros((k, n), np.float32)}
    args = {"a": "x", "b": "w"}
    if bias:
        consts["b"] = np.zeros(n, np.float32)
        args["bias"] = "b"
    attrs = {"epilogue": epilogue} if epilogue else {}
    ops = [Op("gemm", "y", args, attrs, layer="fc", what="linear")]
    tables = {"t": TABLE} if epilogue and epilogue.get("act") == "pwl" else {}
    return Program({"x": InputSpec((m, k))}, ["y"], ops, consts, tables, name="gemm")


def _one(program: Program, shapes: dict, config: AcceleratorConfig = DEFAULT) -> dict:
    r = cost_report(program, config, shapes)
    assert len(r.ops) == 1
    return r.ops[0]


# ---------------------------------------------------------------------------------------------
# MAC counts: hand-built programs
# ---------------------------------------------------------------------------------------------
def test_linear_macs_pwl_and_fusion_saving():
    b, t, fin, fout = 3, 5, 16, 24
    ops = [
        Op(
            "gemm",
            "y",
            {"a": "x", "b": "w"},
            {"epilogue": {"act": "pwl", "fn": "gelu", "table": "t"}},
            layer="ff1",
            what="linear + gelu",
        )
    ]
    p = Program({"x": InputSpec((None, t, fin))}, ["y"], ops, {"w": np.zeros((fin, fout), np.float32)}, {"t": TABLE})
    o = _one(p, {"x": (b, t, fin)})
    assert o["macs"] == b * t * fin * fout
    assert o["pwl_evals"] == b * t * fout
    assert o["relu_evals"] == 0
    # Unfused, the activation would re-read and re-write the whole output.
    assert o["unfused_extra_bytes"] == 2 * W * b * t * fout


def test_relu_epilogue_is_a_comparison_not_a_pwl_lookup():
    o = _one(_gemm_program(64, 32, 48, {"act": "relu"}), {"x": (64, 32)})
    assert o["pwl_evals"] == 0
    assert o["relu_evals"] == 64 * 48
    assert o["unfused_extra_bytes"] == 2 * W * 64 * 48
    assert o["energy_cmp_pj"] == pytest.approx(64 * 48 * DEFAULT.cmp_pj)


def test_conv_macs_hand_built():
    n, cin, h, cout, k, stride, pad = 2, 3, 10, 8, 3, 2, 1
    ho = (h + 2 * pad - k) // stride + 1
    ops = [
        Op("im2col", "cols", {"x": "x"}, {"kernel": [k, k], "stride": stride, "padding": pad}, layer="conv"),
        Op("gemm_batched", "g", {"a": "kern", "b": "cols"}, {}, layer="conv"),
        Op("reshape", "y", {"x": "g"}, {"shape": [0, cout, ho, ho]}, layer="conv"),
    ]
    p = Program(
        {"x": InputSpec((None, cin, h, h))}, ["y"], ops, {"kern": np.zeros((cout, cin * k * k), np.float32)}, {}
    )
    r = cost_report(p, DEFAULT, {"x": (n, cin, h, h)})
    assert r.total["macs"] == n * ho * ho * cout * cin * k * k
    im2col, gemm, reshape = r.ops
    assert im2col["macs"] == 0 and reshape["macs"] == 0
    # im2col reads the image once and writes the patch matrix; a reshape is a free view.
    assert im2col["dram_bytes"] == W * (n * cin * h * h + n * cin * k * k * ho * ho)
    assert reshape["dram_bytes"] == 0 and reshape["cycles"] == 0
    # All operands fit on chip: the shared kernel is read once for the whole batch, each image's
    # patches once, each output written once.
    assert gemm["dram_bytes"] == W * (cout * cin * k * k + n * cin * k * k * ho * ho + n * cout * ho * ho)


def test_elementwise_and_movement_ops():
    rows, n = 6, 10
    ops = [
        Op("scale", "s", {"x": "x", "mul": "x", "bias": "b"}, {}, layer="sq"),
        Op("pairwise_max", "m", {"x": "s"}, {}, layer="max"),
        Op("transpose", "t", {"x": "x"}, {"perm": [1, 0]}, layer="tr"),
    ]
    p = Program({"x": InputSpec((rows, n))}, ["m", "t"], ops, {"b": np.zeros(n, np.float32)}, {})
    r = cost_report(p, DEFAULT, {"x": (rows, n)})
    s, m, t = r.ops
    assert s["macs"] == 2 * rows * n  # one multiply and one add per element
    assert s["dram_bytes"] == W * (rows * n * 2 + n + rows * n)  # x twice (x, mul), bias, output
    assert m["macs"] == 2 * rows * (n - 1) and m["relu_evals"] == rows * (n - 1)
    assert m["dram_bytes"] == W * (rows * n + rows)
    assert t["macs"] == 0 and t["dram_bytes"] == 2 * W * rows * n
    assert t["cycles"] == pytest.approx(2 * W * rows * n / DEFAULT.dram_bytes_per_cycle)
    assert r.total["macs_by_kind"] == {"scale": 2 * rows * n, "pairwise_max": 2 * rows * (n - 1)}


# ---------------------------------------------------------------------------------------------
# MAC counts: compiled programs
# ---------------------------------------------------------------------------------------------
def test_compiled_cnn_macs():
    c, hw, classes, n = 8, 8, 10, 3
    r = nm_compile(cnn_spec(c=c, hw=hw, classes=classes)).cost(None, {"x": (n, 1, hw, hw)})
    by_layer = {lay["layer"]: lay for lay in r.layers}
    assert by_layer["stem"]["macs"] == n * hw * hw * c * 1 * 9  # N*Ho*Wo*Cout*Cin*kh*kw (+ folded BN)
    half = hw // 2
    assert by_layer["b1"]["macs"] == n * half * half * c * c * 9
    assert by_layer["b2"]["macs"] == n * half * half * c * c * 9
    assert by_layer["head"]["macs"] == n * c * (hw // 4) ** 2 * classes
    # 2x2 max pool: per output, 3 steps of b + relu(a - b) = 2 MACs + 1 comparison each.
    assert by_layer["pool"]["macs"] == 2 * n * c * half * half * 3


def test_compiled_transformer_attention_and_linear_macs():
    b, t, d, heads, ff, layers = 2, 12, 32, 4, 64, 2
    spec = transformer_spec(d=d, heads=heads, ff=ff, layers=layers)
    shapes = {"ids": (b, t), "types": (b, t), "mask": (b, t)}
    r = nm_compile(spec).cost(None, shapes)
    for i in range(layers):
        attn = [o for o in r.ops if o["layer"] == f"enc{i}.attn" and o["kind"] == "gemm_batched"]
        assert sum(o["macs"] for o in attn) == 2 * b * heads * t * t * (d // heads)  # QK^T and PV
    linear = sum(o["macs"] for o in r.ops if o["role"] == "linear")
    assert linear == layers * b * t * (4 * d * d + 2 * d * ff)  # QKV + O projections, FFN


# ---------------------------------------------------------------------------------------------
# Published totals: ResNet-18 and BERT-base
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18_report() -> CostReport:
    return nm_compile(resnet18_spec()).cost(None, {"x": (1, 3, 224, 224)})


@pytest.fixture(scope="module")
def bert_base_report() -> CostReport:
    return nm_compile(bert_base_spec()).cost(None, {k: (1, 128) for k in ("ids", "types", "mask")})


def test_resnet18_macs(resnet18_report):
    r = resnet18_report
    conv_fc = sum(o["macs"] for o in r.ops if o["role"] in ("conv", "linear"))
    assert conv_fc == RESNET18_CONV_FC_MACS
    assert conv_fc == pytest.approx(1.814e9, rel=0.01)  # "1.8 GFLOPs" (multiply-adds), He et al. 2016
    # The rest: the 3x3 max pool as a tree of 8 steps (2 MACs each) per output, and the global
    # average pool as a GEMM with a 1/49 column.
    maxpool_steps = 64 * 56 * 56 * 8
    assert r.total["macs"] == conv_fc + 2 * maxpool_steps + 512 * 7 * 7
    relu_outputs = 64 * 112 * 112 + 4 * (64 * 56 * 56 + 128 * 28 * 28 + 256 * 14 * 14 + 512 * 7 * 7)
    assert r.total["relu_evals"] == relu_outputs + maxpool_steps
    assert r.total["pwl_evals"] == 0


def test_bert_base_macs(bert_base_report):
    r = bert_base_report
    t, heads, ff, layers = 128, 12, 3072, 12
    lin_attn = sum(
        o["macs"] for o in r.ops if o["role"] in ("linear", "matmul") and not o["layer"].startswith("embeddings")
    )
    assert lin_attn == bert_base_linear_attention_macs()
    assert lin_attn == pytest.approx(11.2e9, rel=0.01)
    # LayerNorm / softmax / embedding-sum / max-tree MACs of the matrixized program add well under 1%.
    extra = r.total["macs"] - lin_attn
    assert 0 < extra < 0.005 * lin_attn
    # PWL lookups: per layer GELU on T*ff, exp on heads*T*T scores, 1/rowsum on heads*T rows and two
    # LayerNorm rsqrt on T rows; plus the embedding LayerNorm.
    assert r.total["pwl_evals"] == layers * (t * ff + heads * t * t + heads * t + 2 * t) + t


# ---------------------------------------------------------------------------------------------
# DRAM traffic of one GEMM under the default tiling
# ---------------------------------------------------------------------------------------------
# (config, M, K, N, expected bytes), each derived by hand:
GEMM_TRAFFIC = [
    # Everything fits (A 8192, B 12288, C 6144 elements <= 65536/65536/32768): each operand once.
    (DEFAULT, 64, 128, 96, W * (64 * 128 + 128 * 96 + 64 * 96)),
    # BERT FFN1 (M=128, K=768, N=3072): nothing resident.  The largest output tile with Tm = M = 128 is
    # Tn = 32768 / 128 = 256, so A is read ceil(3072/256) = 12 times and B once; any smaller Tm re-reads
    # B (2.36 M elements) at least twice, costing more than it saves on A.
    (DEFAULT, 128, 768, 3072, W * (128 * 768 * 12 + 768 * 3072 + 128 * 3072)),
    # A resident (32*256 = 8192 elements), C not: Tm = 32, Tn = 1024, B read ceil(32/32) = 1 time.
    (DEFAULT, 32, 256, 4096, W * (32 * 256 + 256 * 4096 + 32 * 4096)),
    # 4x4 array, 1024-element buffers, M = N = 64, K = 256: A and B (16384 elements each) re-read
    # a = ceil(N/Tn) and b = ceil(M/Tm) times; Tm*Tn <= 1024 forces a*b >= 4, so a + b >= 4 with
    # equality at Tm = Tn = 32 (64x16 gives 1 + 4).
    (SMALL, 64, 256, 64, W * (64 * 256 * 2 + 256 * 64 * 2 + 64 * 64)),
    # M = N = 128, K = 64 on SMALL: traffic M*K*a + K*N*b with a = ceil(N/Tn), b = ceil(M/Tm) and
    # Tm*Tn <= 1024, so a*b >= 128*128/1024 = 16 and a + b >= 8, reached only at Tm = Tn = 32.
    (SMALL, 128, 64, 128, W * (128 * 64 * 4 + 64 * 128 * 4 + 128 * 128)),
]


@pytest.mark.parametrize("config,m,k,n,expected", GEMM_TRAFFIC)
def test_gemm_dram_traffic(config, m, k, n, expected):
    o = _one(_gemm_program(m, k, n), {"x": (m, k)}, config)
    assert o["dram_bytes"] == expected
    assert o["dram_write_bytes"] == W * m * n


def test_gemm_traffic_floor_and_bias():
    m, k, n = 128, 768, 3072
    o = _one(_gemm_program(m, k, n, bias=True), {"x": (m, k)})
    assert o["dram_bytes"] >= W * (m * k + k * n + m * n)  # never below the floor
    assert o["dram_bytes"] == W * (m * k * 12 + k * n + m * n + n)  # + the bias vector, read once


def test_weight_and_input_stationary_traffic():
    # Weight stationary, SMALL, M=32, K=64, N=64 (A 2048, B 4096, C 2048 elements: none resident):
    # w*(M*K*ceil(N/Tn) + K*N + M*N*(2*ceil(K/Tk) - 1)) with Tk*Tn <= 1024.  Tk=64, Tn=16 gives
    # 2048*4 + 4096 + 2048*1 = 14336 elements and Tk=Tn=32 gives 2048*2 + 4096 + 2048*3 = 14336; smaller
    # Tk cost more partial sums.
    ws = AcceleratorConfig(**{**SMALL.to_dict(), "dataflow": "weight"})
    assert _one(_gemm_program(32, 64, 64), {"x": (32, 64)}, ws)["dram_bytes"] == W * 14336
    # Input stationary is the mirror image: M=64, K=64, N=32.
    is_ = AcceleratorConfig(**{**SMALL.to_dict(), "dataflow": "is"})
    assert is_.dataflow == "input"
    assert _one(_gemm_program(64, 64, 32), {"x": (64, 64)}, is_)["dram_bytes"] == W * 14336


# ---------------------------------------------------------------------------------------------
# Cycles, utilisation, energy
# ---------------------------------------------------------------------------------------------
def test_fold_cycles_roofline_and_utilisation():
    m, k, n = 128, 768, 3072
    r, c = DEFAULT.rows, DEFAULT.cols
    o = _one(_gemm_program(m, k, n), {"x": (m, k)})
    # Output stationary: ceil(M/rows)*ceil(N/cols) folds of K + rows + cols - 2 cycles (SCALE-Sim).
    assert o["compute_cycles"] == math.ceil(m / r) * math.ceil(n / c) * (k + r + c - 2)
    dram = W * (m * k * 12 + k * n + m * n)
    assert o["memory_cycles"] == pytest.approx(dram / DEFAULT.dram_bytes_per_cycle)
    assert o["cycles"] == pytest.approx(max(o["compute_cycles"], dram / DEFAULT.dram_bytes_per_cycle))
    assert o["utilisation"] == pytest.approx(m * n * k / (o["cycles"] * r * c))
    # Weight / input stationary add a `rows`-cycle load of the stationary tile per fold.
    ws = _one(_gemm_program(m, k, n), {"x": (m, k)}, AcceleratorConfig(dataflow="weight"))
    assert ws["compute_cycles"] == math.ceil(k / r) * math.ceil(n / c) * (2 * r + c + m - 2)
    is_ = _one(_gemm_program(m, k, n), {"x": (m, k)}, AcceleratorConfig(dataflow="input"))
    assert is_["compute_cycles"] == math.ceil(k / r) * math.ceil(m / c) * (2 * r + c + n - 2)


def test_energy_closed_form():
    m, k, n = 64, 128, 96  # all operands resident
    cfg = AcceleratorConfig(static_power_w=0.5)
    o = _one(_gemm_program(m, k, n, {"act": "pwl", "fn": "gelu", "table": "t"}), {"x": (m, k)}, cfg)
    dram = W * (m * k + k * n + m * n)
    # Buffer traffic: the array reads A once per column fold and B once per row fold, writes C; plus
    # every DRAM byte staged through a buffer.
    sram = W * (m * k * math.ceil(n / 32) + k * n * math.ceil(m / 32) + m * n) + dram
    cycles = max(math.ceil(m / 32) * math.ceil(n / 32) * (k + 62), dram / 16)
    expected = m * n * k * 4.6 + m * n * 14.6 + sram * 2.5 + dram * 250.0 + 0.5 * cycles / 1e9 * 1e12
    assert o["energy_pj"] == pytest.approx(expected)
    r = cost_report(_gemm_program(m, k, n), cfg, {"x": (m, k)}, batch=4)
    t = r.total
    assert t["inferences_per_s"] == pytest.approx(4 / t["seconds"])
    assert t["energy_per_inference_j"] == pytest.approx(t["energy_pj"] * 1e-12 / 4)
    assert t["gops_per_w"] == pytest.approx(2 * m * n * k / (t["energy_pj"] * 1e-12) / 1e9)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field,value",
    [
        ("rows", 0),
        ("cols", -4),
        ("rows", 2.5),
        ("dataflow", "diagonal"),
        ("a_buffer_bytes", 32 * 32 * 4 - 1),
        ("b_buffer_bytes", 0),
        ("c_buffer_bytes", 100),
        ("dram_bytes_per_cycle", -1.0),
        ("dram_bytes_per_cycle", 0),
        ("clock_hz", 0),
        ("clock_hz", -1e9),
        ("bytes_per_element", 0),
        ("mac_pj", -1.0),
        ("pwl_pj", -0.1),
        ("sram_pj_per_byte", float("nan")),
        ("dram_pj_per_byte", -250.0),
        ("static_power_w", -1.0),
    ],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AcceleratorConfig(**{field: value})


def test_config_json_round_trip(tmp_path):
    cfg = AcceleratorConfig(rows=16, cols=8, dataflow="ws", dram_bytes_per_cycle=32, mac_pj=1.0)
    assert AcceleratorConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "acc.json"
    cfg.to_json(path)
    assert AcceleratorConfig.from_json(path) == cfg
    assert cost_report(_gemm_program(8, 8, 8), str(path), {"x": (8, 8)}).config == cfg
    with pytest.raises(ValueError, match="unknown accelerator config field"):
        AcceleratorConfig.from_json('{"rows": 8, "colums": 8}')
    with pytest.raises(ValueError, match="rows"):
        AcceleratorConfig.from_json('{"rows": -8}')


# ---------------------------------------------------------------------------------------------
# Report formats, measurements, CLI
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cnn_program() -> Program:
    return nm_compile(cnn_spec())


def test_report_formats(cnn_program):
    r = cnn_program.cost(None, {"x": (2, 1, 8, 8)})
    doc = json.loads(r.to_json())
    assert isinstance(doc["ops"], list) and isinstance(doc["layers"], list)
    for key in ("macs", "pwl_evals", "dram_bytes", "cycles", "energy_pj"):
        assert key in doc["total"]
    assert len(doc["ops"]) == len(cnn_program.ops)
    assert [lay["layer"] for lay in doc["layers"]] == cnn_program.layers()
    assert doc["total"]["macs"] == sum(o["macs"] for o in doc["ops"])
    rows = list(csv.DictReader(io.StringIO(r.to_csv())))
    assert len(rows) == len(cnn_program.ops) + 1 and rows[-1]["layer"] == "TOTAL"
    assert len(list(csv.DictReader(io.StringIO(r.to_csv("layers"))))) == len(r.layers) + 1
    table = r.table()
    lines = table.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("layer"))
    body = lines[head : head + len(r.layers) + 4]
    assert len({len(ln) for ln in body}) == 1  # aligned columns
    assert "TOTAL" in table and "GOPS/W" in table and "stem" in table


def test_plot(cnn_program, tmp_path, monkeypatch):
    r = cnn_program.cost(None, {"x": (1, 1, 8, 8)})
    pytest.importorskip("matplotlib")
    for metric in ("cycles", "energy"):
        out = r.plot(tmp_path / f"{metric}.png", metric=metric)
        assert (tmp_path / f"{metric}.png").stat().st_size > 0 and out.endswith(".png")
    with pytest.raises(ValueError, match="metric"):
        r.plot(tmp_path / "x.png", metric="watts")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install nmengine\[plot\]"):
        r.plot(tmp_path / "y.png")


def test_attach_measurements(cnn_program):
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    r = cnn_program.cost(None, {"x": x.shape})
    prof = cnn_program.profile(x)
    r.attach_measurements(prof, cpu_power_w=15.0)
    for lay in r.layers:
        assert lay["measured_s"] == pytest.approx(sum(p["seconds"] for p in prof if p["layer"] == lay["layer"]))
    total_s = sum(p["seconds"] for p in prof)
    assert r.total["measured_s"] == pytest.approx(total_s)
    assert r.total["measured_inferences_per_s"] == pytest.approx(2 / total_s)
    assert r.total["measured_energy_per_inference_j"] == pytest.approx(15.0 * total_s / 2)
    assert "measured" in r.table() and "GFLOP/s" in r.table()
    with pytest.raises(ValueError, match="op"):
        r.attach_measurements([{"index": 999, "layer": "stem", "seconds": 1.0}])


def test_run_report_and_cli(cnn_program, tmp_path, capsys):
    from nmengine import bundle, cli

    path = tmp_path / "cnn.nmb"
    bundle.save(cnn_program, path)
    cfg = tmp_path / "acc.json"
    AcceleratorConfig(rows=8, cols=8).to_json(cfg)
    text = run_report(path, config_path=cfg, measure=True, batch=2, plot=tmp_path / "p.png" if _has_mpl() else None)
    assert "8x8 output-stationary" in text and "TOTAL" in text and "measured" in text
    doc = json.loads(run_report(path, batch=3, fmt="json"))
    assert doc["batch"] == 3 and doc["input_shapes"]["x"] == [3, 1, 8, 8]
    assert cli.main(["report", str(path), "--batch", "2"]) == 0
    assert "TOTAL" in capsys.readouterr().out


def _has_mpl() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_program_cost_defaults(cnn_program):
    # Program.cost with no shapes: free leading dims become batch 1.
    r = cnn_program.cost()
    assert r.input_shapes == {"x": [1, 1, 8, 8]} and r.batch == 1
    assert r.config == AcceleratorConfig()
