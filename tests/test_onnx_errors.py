"""The ONNX importer refuses bad input with clear errors: corrupt files, unsupported ops, wrong dtypes,
missing external data; external-data models load; the core imports without onnx."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import nmengine as nm
from tests.onnx_graphs import F, helper, init, model, onnx, ort_run, rel_err, vi
from tests.test_onnx_cnn import resnet_style

RNG = np.random.default_rng(3)


def test_unsupported_ops_are_all_listed_with_node_names_and_opset():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Resize", ["a", "", "sc"], ["b"], name="up1"),
        helper.make_node("Resize", ["b", "", "sc"], ["c"], name="up2"),
        helper.make_node("LpNormalization", ["c"], ["d"], name="lp"),
        helper.make_node("Relu", ["d"], ["y"]),
    ]
    d = model(
        nodes,
        [vi("x", F, [1, 2, 4, 4])],
        [vi("y", F, [1, 2, 16, 16])],
        [init("sc", np.array([1, 1, 2, 2], np.float32))],
        opset=17,
    )
    with pytest.raises(nm.onnx.UnsupportedModelError) as ei:
        nm.onnx.to_spec(d)
    msg = str(ei.value)
    assert "opset 17" in msg and "Resize" in msg and "'up1'" in msg and "'up2'" in msg and "LpNormalization" in msg
    assert {u[0] for u in ei.value.unsupported} == {"Resize", "LpNormalization"}
    assert isinstance(ei.value, ValueError)


def test_custom_domain_is_unsupported():
    g = helper.make_graph(
        [helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft", name="fg")],
        "g",
        [vi("x", F, [2, 2])],
        [vi("y", F, [2, 2])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    with pytest.raises(nm.onnx.UnsupportedModelError, match="com.microsoft.FusedGemm"):
        nm.onnx.to_spec(m.SerializeToString())


def test_form_errors_name_the_node():
    d = model(
        [helper.make_node("Pow", ["x", "p"], ["y"], name="weird_pow")],
        [vi("x", F, [2, 3])],
        [vi("y", F, [2, 3])],
        [init("p", np.float32(1.7))],
    )
    with pytest.raises(nm.onnx.UnsupportedModelError, match="weird_pow.*exponent 1.7"):
        nm.onnx.to_spec(d)


@pytest.mark.parametrize("elem", [onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.STRING])
def test_wrong_input_dtype(elem):
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [vi("x", elem, [2])], [vi("y", elem, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(nm.onnx.OnnxImportError, match="input 'x' has dtype .*expected FLOAT"):
        nm.onnx.to_spec(m.SerializeToString())


def test_run_time_dtype_and_shape_errors():
    prog = nm.onnx.load(resnet_style(), exact=True)
    with pytest.raises(Exception, match="shape"):
        prog.run({"x": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(TypeError):
        prog.run({"x": np.zeros((1, 3, 16, 16), dtype="U1")})


@pytest.mark.parametrize("data", [b"", b"\x00", b"not an onnx model at all", bytes(range(256)) * 4])
def test_garbage_bytes(data):
    with pytest.raises(nm.onnx.OnnxImportError):
        nm.onnx.to_spec(data)


def test_missing_file_and_bad_type(tmp_path):
    with pytest.raises(FileNotFoundError):
        nm.onnx.load(tmp_path / "nope.onnx")
    with pytest.raises(TypeError):
        nm.onnx.load(12)


def test_inconsistent_attributes_are_clear_errors():
    """Graphs the checker accepts but that cannot be computed: an OnnxImportError naming the node."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[1, 1], name="bad_pool")]
    d = model(nodes, [vi("x", F, [1, 2, 4, 4])], [vi("y", F, None)])
    with pytest.raises(nm.onnx.OnnxImportError, match="bad_pool"):
        nm.onnx.to_spec(d)
    w = np.zeros((4, 3, 3, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="bad_conv")]
    d = model(nodes, [vi("x", F, [1, 2, 6, 6])], [vi("y", F, None)], [init("W", w)])
    with pytest.raises(nm.onnx.OnnxImportError, match="bad_conv"):
        nm.onnx.to_spec(d)


def test_truncations_and_bit_flips_are_refused_or_valid():
    """A sample of the corruption sweep (tools/onnx_corruption.py runs >= 1000 cases in subprocesses):
    every corrupt file gives an OnnxImportError (or imports as a valid, different model)."""
    data = resnet_style()
    rng = np.random.default_rng(0)
    refused = 0
    cases = [data[:n] for n in rng.integers(1, len(data) - 1, 40)]
    for _ in range(40):
        b = bytearray(data)
        for pos in rng.integers(0, len(b), 3):
            b[pos] ^= 1 << int(rng.integers(0, 8))
        cases.append(bytes(b))
    for c in cases:
        try:
            nm.onnx.to_spec(c)
        except nm.onnx.OnnxImportError:
            refused += 1
    assert refused >= 40  # every truncation at least


def test_external_data_loads_and_missing_data_is_clear(tmp_path):
    data = resnet_style()
    m = onnx.load_from_string(data)
    path = tmp_path / "m.onnx"
    onnx.save_model(
        m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0
    )
    assert (tmp_path / "m.data").stat().st_size > 1000
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    prog = nm.onnx.load(path, exact=True)
    ref = ort_run(data, {"x": x})[0]
    assert rel_err(prog.run({"x": x}, mode="exact"), ref) <= 1e-4
    with pytest.raises(nm.onnx.OnnxImportError, match="external data"):
        nm.onnx.load(path.read_bytes())
    (tmp_path / "m.data").write_bytes(b"\x00" * 10)
    with pytest.raises(nm.onnx.OnnxImportError, match="exceeds"):
        nm.onnx.load(path)
    (tmp_path / "m.data").unlink()
    with pytest.raises(nm.onnx.OnnxImportError, match="missing"):
        nm.onnx.load(path)


def test_core_imports_without_onnx_and_nm_onnx_names_the_extra():
    code = (
        "import sys; sys.modules['onnx'] = None\n"
        "import nmengine as nm\n"
        "assert callable(nm.compile)\n"
        "try:\n    nm.onnx\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "IMPORTERROR" in r.stdout and "nmengine[onnx]" in r.stdout


def test_calibration_forms_and_synthesised_warning():
    d = resnet_style()
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    with pytest.warns(UserWarning, match="no calibration data"):
        nm.onnx.load(_with_sigmoid(d))
    nm.onnx.load(_with_sigmoid(d), calibration=[{"x": x}, {"x": x[:1]}])
    with pytest.raises(TypeError):
        nm.onnx.load(_with_sigmoid(d), calibration=3)


def _with_sigmoid(d: bytes) -> bytes:
    m = onnx.load_from_string(d)
    out = m.graph.output[0].name
    m.graph.node.append(helper.make_node("Sigmoid", [out], ["prob"]))
    m.graph.output[0].name = "prob"
    return m.SerializeToString()


def test_bundle_roundtrip_and_cli(tmp_path):
    from nmengine.cli import main

    src = tmp_path / "m.onnx"
    src.write_bytes(_with_sigmoid(resnet_style()))
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    assert (
        main(
            [
                "import",
                str(src),
                "-o",
                str(tmp_path / "m.nmb"),
                "--calibration",
                str(tmp_path / "x.npz"),
                "--segments",
                "16",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "run",
                str(tmp_path / "m.nmb"),
                "--input",
                str(tmp_path / "x.npz"),
                "--output",
                str(tmp_path / "y.npz"),
                "--exact",
            ]
        )
        == 0
    )
    y = np.load(tmp_path / "y.npz")["prob"]
    ref = ort_run(src.read_bytes(), {"x": x})[0]
    assert rel_err(y, ref) <= 1e-4
    prog = nm.load(tmp_path / "m.nmb")
    assert prog.inputs["x"].shape == (None, 3, 16, 16) and prog.outputs == ["prob"]
    assert main(["import", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "z.nmb")]) == 2


def test_cli_import_budget_and_int8(tmp_path):
    """``nmengine import --segments auto --target ... --precision int8``: the options reach the compiler."""
    from nmengine.cli import main

    src = tmp_path / "m.onnx"
    src.write_bytes(_with_sigmoid(resnet_style()))
    x = RNG.standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    argv = ["import", str(src), "-o", str(tmp_path / "m.nmb"), "--calibration", str(tmp_path / "x.npz")]
    assert main([*argv, "--segments", "auto", "--target", "cosine=0.999", "--precision", "int8"]) == 0
    prog = nm.load(tmp_path / "m.nmb")
    assert prog.meta["budget"]["met"] and prog.meta["budget"]["target"]["cosine"] == 0.999
    assert any(op.attrs.get("precision") == "int8" for op in prog.ops)
    y = nm.Session(prog).run({"x": x})  # the one output
    ref = ort_run(src.read_bytes(), {"x": x})[0]
    cos = np.sum(y * ref, axis=1) / (np.linalg.norm(y, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() >= 0.99
    assert main([*argv, "--target", "cosine=0.999"]) == 2  # --target without --segments auto


def test_docs_op_table_lists_every_rule():
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "onnx.md").read_text()
    missing = [t for t, _, _ in nm.onnx.op_table() if f"| {t} |" not in text]
    assert not missing, f"docs/onnx.md misses {missing}"
