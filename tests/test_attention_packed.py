"""Attention at each sequence's own length (csrc/nm_attention.c, nmengine/attention_plan.py).

The core call is checked against a float64 numpy attention (true exp and division; the PWL tables
are accurate to a few 1e-3), bit for bit against the padded chain it replaces (unpack, the scores
GEMM with the mask bias, the fused softmax rows, the context GEMM, pack: the core functions the plan
ran before) for right-padded masks, for 1-3 threads and every kernel, and for bad inputs.  At the
plan level: a session's outputs equal the interpreter's op-by-op padded path bit for bit, with the
chains fused, with a left-padded mask (the fallback) and with fusion turned off.
"""

from __future__ import annotations

import numpy as np
import pytest

from nmengine import kernels
from nmengine.compile import compile
from nmengine.pwl import PWLTable
from nmengine.session import Session

from .specs import transformer_inputs, transformer_spec

H, D = 3, 8


def _pwl(f, lo, hi, n):
    x = np.geomspace(lo, hi, n + 1) if lo > 0 else np.linspace(lo, hi, n + 1)
    y = f(x)
    s = np.diff(y) / np.diff(x)
    return PWLTable(x, s, y[:-1] - s * x[:-1])


def _tables():
    """exp on [-16, 0] with an exact 0 below (a flat first segment, as the compiled tables have: a
    masked column's exp is then exactly 0), and the reciprocal on [1, 64]."""
    x = np.concatenate([[-40.0], np.linspace(-16.0, 0.0, 257)])
    y = np.exp(x)
    s = np.diff(y) / np.diff(x)
    s[0] = 0.0
    icpt = y[:-1] - s * x[:-1]
    icpt[0] = 0.0
    return PWLTable(x, s, icpt), _pwl(lambda v: 1.0 / v, 1.0, 64.0, 256)


def _same(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes(), np.max(np.abs(a.astype(np.float64) - b))


def _case(seed, lengths, cols=None, scale=0.5):
    rng = np.random.default_rng(seed)
    cols = max(lengths) if cols is None else cols
    mask = np.arange(cols)[None, :] < np.asarray(lengths)[:, None]
    ntok = int(mask.sum())
    qkv = (rng.standard_normal((ntok, 3 * H * D)) * scale).astype(np.float32)
    bias = np.where(mask, 0.0, -1e4).astype(np.float32)  # what a mask bias op computes
    return mask, qkv, bias


def _padded_chain(core, qkv, mask, bias, exp, recip, nt):
    """The plan's padded chain: unpack, scores GEMM (+ bias row), softmax rows, context GEMM, pack."""
    B, L = mask.shape
    flat = np.ascontiguousarray(mask.reshape(-1))
    seq = np.empty((B, L, 3 * H * D), np.float32)
    core.move_rows(qkv, seq, flat, None, flat.size, qkv.shape[1] * 4, True, nt)
    v5 = seq.reshape(B, L, 3, H, D)
    q = v5[:, :, 0].transpose(0, 2, 1, 3)
    kt = v5[:, :, 1].transpose(0, 2, 3, 1)
    v = v5[:, :, 2].transpose(0, 2, 1, 3)
    scores = np.empty((B, H, L, L), np.float32)
    res = np.broadcast_to(bias.reshape(B, 1, 1, L), scores.shape)
    code = kernels.kernel_code()
    core.sgemm_batched(q, kt, scores, None, None, res, core.ACT_NONE, None, nt, code)
    prob = np.empty_like(scores)
    core.softmax_rows(scores, B * H * L, L, exp, recip, None, None, None, prob, nt, code)
    ctx = np.empty((B, L, H, D), np.float32)
    core.sgemm_batched(prob, v, ctx.transpose(0, 2, 1, 3), None, None, None, core.ACT_NONE, None, nt, code)
    out = np.empty((qkv.shape[0], H * D), np.float32)
    core.move_rows(ctx.reshape(B, L, H * D), out, flat, None, flat.size, H * D * 4, False, nt)
    return out


def _fused(core, qkv, mask, bias, exp, recip, nt, out=None):
    out = np.full((qkv.shape[0], H * D), np.nan, np.float32) if out is None else out
    done = core.attention_packed(
        qkv, 0, H * D, 2 * H * D, H, D, np.ascontiguousarray(mask), bias, exp, recip, out, nt, kernels.kernel_code()
    )
    return done, out


def _reference(qkv, mask):
    """float64 attention of each sequence alone (true exp, true division)."""
    out = np.zeros((qkv.shape[0], H * D))
    r = 0
    for n in mask.sum(1):
        if n == 0:
            continue
        x = qkv[r : r + n].astype(np.float64).reshape(n, 3, H, D)
        for h in range(H):
            s = x[:, 0, h] @ x[:, 1, h].T
            p = np.exp(s - s.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            out[r : r + n, h * D : (h + 1) * D] = p @ x[:, 2, h]
        r += n
    return out


# few sequences (split by (sequence, head) across threads) and many (split by sequence)
LENGTHS = [[5], [1], [7, 3, 1, 6], [16, 2, 9, 9, 1, 13], [3, 0, 4], [33, 17, 40, 1], [9, 1, 4, 12, 7, 7, 0, 15, 2, 11]]


@pytest.mark.parametrize("lengths", LENGTHS)
def test_matches_float64_reference(kernel, lengths):
    core = kernels.compiled_core()
    exp, recip = _tables()
    mask, qkv, bias = _case(1, lengths)
    done, out = _fused(core, qkv, mask, bias, exp, recip, 2)
    assert done
    np.testing.assert_allclose(out, _reference(qkv, mask), rtol=0, atol=2e-2)


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("extra", [0, 1, 5])
def test_bit_identical_to_padded_chain_any_threads(kernel, threads, lengths, extra):
    core = kernels.compiled_core()
    exp, recip = _tables()
    mask, qkv, bias = _case(2, lengths, max(lengths) + extra)
    outs = []
    for nt in (1, 2, 3):
        done, out = _fused(core, qkv, mask, bias, exp, recip, nt)
        assert done
        if mask.any(1).all():  # every padded row of the chain is a real row of some sequence
            _same(out, _padded_chain(core, qkv, mask, bias, exp, recip, nt))
        outs.append(out)
    _same(outs[0], outs[1])
    _same(outs[0], outs[2])
    # and each sequence alone (its own rows, no padding) gives the same rows
    r = 0
    for n in mask.sum(1):
        if n:
            m1 = np.ones((1, n), bool)
            _, alone = _fused(
                core, np.ascontiguousarray(qkv[r : r + n]), m1, np.zeros((1, n), np.float32), exp, recip, 1
            )
            _same(alone, outs[0][r : r + n])
        r += n


def test_not_right_padded_is_refused_untouched():
    core = kernels.compiled_core()
    exp, recip = _tables()
    mask, qkv, bias = _case(3, [4, 4])
    mask[1] = [True, False, True, True]  # a hole: real tokens after a padded one
    qkv = qkv[: int(mask.sum())].copy()
    out = np.full((qkv.shape[0], H * D), 7.0, np.float32)
    done, out = _fused(core, qkv, mask, bias, exp, recip, 2, out)
    assert done is False and (out == 7.0).all()


def test_empty_and_bad_inputs():
    core = kernels.compiled_core()
    exp, recip = _tables()
    mask = np.zeros((3, 5), bool)
    empty = np.zeros((0, 3 * H * D), np.float32)
    assert _fused(core, empty, mask, None, exp, recip, 2)[0]
    assert _fused(core, empty, np.zeros((0, 0), bool), None, exp, recip, 2)[0]
    m, qkv, bias = _case(4, [3, 2])
    code = kernels.kernel_code()

    def call(q=qkv, off=(0, H * D, 2 * H * D), d=D, b=bias, out_rows=5, out_cols=H * D):
        out = np.zeros((out_rows, out_cols), np.float32)
        return core.attention_packed(q, *off, H, d, m, b, exp, recip, out, 1, code)

    assert call()
    with pytest.raises(ValueError):  # the mask holds 5 tokens, qkv 4 rows
        call(q=qkv[:4].copy(), out_rows=4)
    with pytest.raises(ValueError):  # Q columns beyond the row
        call(off=(0, 1, 2 * H * D), d=D + 1, out_cols=H * D + H)
    with pytest.raises(ValueError):
        call(q=qkv.astype(np.float64))
    with pytest.raises(ValueError):  # bias narrower than the mask
        call(b=bias[:, :2].copy())
    with pytest.raises(ValueError):  # out rows != qkv rows
        call(out_rows=4)
    with pytest.raises(ValueError):  # out narrower than heads x d
        call(out_cols=H * D - 1)


# ---------------------------------------------------------------------------------------------
# in a plan
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bert_like():
    spec = transformer_spec(seed=7, d=48, heads=4, ff=96, max_len=24)
    return compile(spec, calibration=[transformer_inputs(seed=s, t=20) for s in range(10, 13)], segments=32)


def _generic(prog, inputs):
    return prog.runtime.run(inputs, "matrixized", record=lambda op, y: None)  # op by op, padded


def test_session_fuses_chains_and_equals_interpreter(bert_like, kernel, threads):
    inp = transformer_inputs(seed=21, batch=6, t=20)
    sess = Session(bert_like)
    plan = sess.plan_for(inp)
    layers = sum(op.kind == "softmax_rows" for op in bert_like.ops)
    assert layers == 2 and len(plan.chains) == layers
    ref = _generic(bert_like, inp)
    for nt in (1, 2):
        kernels.set_num_threads(nt)
        _same(sess.run(inp), ref)
    _same(Session(bert_like, executor="python").run(inp), ref)
    # every sequence alone gives its batched row
    for i in range(6):
        n = int(inp["mask"][i].sum())
        one = {k: v[i : i + 1, :n] for k, v in inp.items()}
        _same(sess.run(one)[0], ref[i])


def test_left_padded_mask_runs_the_padded_chain(bert_like):
    inp = transformer_inputs(seed=22, batch=4, t=12)
    left = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in inp.items()}
    sess = Session(bert_like)
    assert sess.plan_for(left).chains
    _same(sess.run(left), _generic(bert_like, left))


def test_fusion_can_be_turned_off(bert_like, monkeypatch):
    inp = transformer_inputs(seed=23, batch=5, t=16)
    fused = Session(bert_like).run(inp)
    monkeypatch.setenv("NMENGINE_RAGGED_ATTENTION", "0")
    sess = Session(bert_like)
    assert sess.plan_for(inp).chains == []
    _same(sess.run(inp), fused)
