"""nm.Session: plans per input-shape signature, checked bit for bit against the interpreter (the
expanded program run op by op), across thread counts, concurrent callers and mixed shapes; plus the
plan cache, the buffer plan, bundles of both schema versions, and bad arguments."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import nmengine as nm
from nmengine import kernels
from nmengine.compile import compile, fuse_program
from nmengine.plan import Plan

from .specs import cnn_spec, transformer_inputs, transformer_spec


def _same(a, b):
    if isinstance(b, dict):
        assert set(a) == set(b)
        for k in b:
            _same(a[k], b[k])
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    assert a.tobytes() == b.tobytes()


def _interp(prog, inputs):
    return prog.runtime.run(inputs, record=lambda op, y: None)


@pytest.fixture(scope="module")
def bert():
    spec = transformer_spec(seed=7, d=48, heads=4, ff=96)
    return compile(spec, calibration=[transformer_inputs(seed=s) for s in range(3)], segments=16)


@pytest.fixture(scope="module")
def cnn():
    calib = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    return compile(cnn_spec(seed=3), calibration=calib)


def _padded(seed, batch, t):
    """Inputs with padded tails (transformer_inputs pads every row but the first)."""
    return transformer_inputs(seed=seed, batch=batch, t=t)


def _full(seed, batch, t):
    """Inputs without padding (every token real: pack/unpack are views)."""
    inp = transformer_inputs(seed=seed, batch=batch, t=t)
    inp["mask"] = np.ones_like(inp["mask"])
    return inp


def test_fused_ops_in_compiled_transformer(bert):
    kinds = [op.kind for op in bert.ops]
    assert kinds.count("softmax_rows") == 2 and kinds.count("layernorm_rows") >= 2
    assert not bert.expanded().has_fused and len(bert.expanded().ops) > len(bert.ops)


@pytest.mark.parametrize("threads_", [1, 2, 3])
def test_session_bit_identical_to_interpreter(bert, cnn, kernel, threads_):
    sess_b = nm.Session(bert, threads=threads_)
    sess_c = nm.Session(cnn, threads=threads_)
    for seed, (b, t) in enumerate([(1, 5), (3, 12), (2, 2), (4, 9)]):
        for inp in (_full(seed, b, t), _padded(seed, b, t)):
            _same(sess_b.run(inp), _interp(bert, inp))
    for n in (1, 5):
        x = np.random.default_rng(n).standard_normal((n, 1, 8, 8)).astype(np.float32)
        _same(sess_c.run(x), _interp(cnn, x))


def test_session_concurrent_threads_mixed_shapes(bert):
    """8 threads, each running a different mix of shapes and padding, on one fresh session."""
    cases = [_full(s, 1 + s % 3, 4 + 3 * (s % 4)) for s in range(6)]
    cases += [_padded(s, 2 + s % 2, 6 + s) for s in range(6)]
    refs = [_interp(bert, c) for c in cases]
    sess = nm.Session(bert, threads=2, cache_size=4)  # smaller than the signature count: evictions race too
    errors: list[BaseException] = []

    def work(k):
        try:
            order = np.random.default_rng(k).permutation(len(cases))
            for i in list(order) * 2:
                _same(sess.run(cases[i]), refs[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]
    # working memory: one arena per call in flight (at most `concurrency`), not one per plan and caller
    info = sess.plan_info(cases[0])
    largest = max(sess.plan_for(c).arena_bytes for c in cases)
    assert 1 <= info["arenas"] <= sess.concurrency
    assert info["arena_bytes"] <= info["arenas"] * 1.25 * largest + 4096


def test_concurrency_bounds_calls_in_flight(bert, monkeypatch):
    """concurrency=1: 6 threads share one arena and the plans bound to it, with the same bits."""
    cases = [_padded(s, 1 + s % 3, 5 + s) for s in range(3)]
    refs = [_interp(bert, c) for c in cases]
    sess = nm.Session(bert, threads=1, concurrency=1)
    for i in sorted(range(3), key=lambda i: -sess.plan_for(cases[i]).arena_bytes):
        _same(sess.run(cases[i]), refs[i])  # largest first: the arena never grows after, each plan bound once
    errors: list[BaseException] = []
    binds = []
    orig = Plan.bind

    def counting_bind(self, arena=None):
        binds.append(self)
        return orig(self, arena)

    def work(k):
        try:
            for i in np.random.default_rng(k).permutation(len(cases) * 3) % len(cases):
                _same(sess.run(cases[i]), refs[i])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    monkeypatch.setattr(Plan, "bind", counting_bind)
    ts = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    monkeypatch.undo()
    assert not errors, errors[0]
    assert binds == []  # no call bound a plan again or took another arena
    info = sess.plan_info(cases[0])
    assert info["arenas"] == 1
    assert info["arena_bytes"] >= max(sess.plan_for(c).arena_bytes for c in cases)


def test_bind_checks_the_arena(bert):
    plan = nm.Session(bert).plan_for(_padded(1, 2, 8))
    with pytest.raises(ValueError, match="smaller"):
        plan.bind(np.empty(plan.arena_bytes - 1, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        plan.bind(np.empty(plan.arena_bytes, np.float32))


def test_plan_cache_is_bounded_lru(bert):
    sess = nm.Session(bert, cache_size=2)
    a, b, c = (transformer_inputs(seed=1, batch=2, t=t) for t in (4, 5, 6))
    pa = sess.plan_for(a)
    assert sess.plan_for(a) is pa
    sess.plan_for(b)
    sess.plan_for(a)  # a becomes the most recent
    sess.plan_for(c)  # evicts b
    assert sess.plan_for(a) is pa
    assert sess.plan_info(a)["cached_plans"] == 2


def test_buffer_plan_reuses_memory(bert):
    sess = nm.Session(bert)
    inp = transformer_inputs(seed=2, batch=4, t=16)
    plan = sess.plan_for(inp)
    own = [n for n in plan.offsets]
    total = sum(int(np.prod(plan.shapes[n])) * np.dtype(plan.dtypes[n]).itemsize for n in own)
    assert 0 < plan.peak_bytes < total
    # buffers alive at the same time never overlap: check every op's output against its operands
    ends = {n: plan.offsets[n] + int(np.prod(plan.shapes[n])) * np.dtype(plan.dtypes[n]).itemsize for n in own}
    for op in bert.ops:
        if op.out not in plan.offsets:
            continue
        for name in op.args.values():
            r = plan.root(name)
            if r in plan.offsets and r != op.out:
                assert ends[r] <= plan.offsets[op.out] or ends[op.out] <= plan.offsets[r], (op.out, r)


def test_session_from_bundle_paths_and_schema_versions(bert, tmp_path):
    inp = _padded(3, 3, 10)
    ref = _interp(bert, inp)
    path = tmp_path / "fused.nmb"
    nm.save(bert, path)
    assert nm.bundle.inspect(path)["schema_version"] == 2
    _same(nm.Session(str(path)).run(inp), ref)
    # a program without fused ops is written as schema 1 and fused when loaded
    raw = bert.expanded()
    old = tmp_path / "old.nmb"
    nm.save(raw, old)
    assert nm.bundle.inspect(old)["schema_version"] == 1
    loaded = nm.load(old)
    assert [op.kind for op in loaded.ops] == [op.kind for op in bert.ops]
    _same(nm.Session(old).run(inp), ref)


def test_fuse_program_is_idempotent(bert):
    again = fuse_program(bert)
    assert again is bert
    assert [op.to_dict() for op in fuse_program(bert.expanded()).ops] == [op.to_dict() for op in bert.ops]


def test_program_run_uses_default_session(bert):
    inp = transformer_inputs(seed=5)
    _same(bert.run(inp), nm.Session(bert).run(inp))
    assert isinstance(bert.session, nm.Session)


def test_empty_batch(bert):
    inp = {k: np.zeros((0, 7), np.int64) for k in ("ids", "types", "mask")}
    y = nm.Session(bert).run(inp)
    assert y.shape == (0, 48)
    _same(y, _interp(bert, inp))


def test_bad_arguments(bert, tmp_path):
    with pytest.raises(TypeError, match="Program or a bundle path"):
        nm.Session(42)
    with pytest.raises(ValueError, match="threads"):
        nm.Session(bert, threads=0)
    with pytest.raises(ValueError, match="kernel"):
        nm.Session(bert, kernel="sse9")
    with pytest.raises(ValueError, match="cache_size"):
        nm.Session(bert, cache_size=0)
    with pytest.raises(ValueError, match="concurrency"):
        nm.Session(bert, concurrency=0)
    with pytest.raises(FileNotFoundError):
        nm.Session(tmp_path / "missing.nmb")
    sess = nm.Session(bert)
    with pytest.raises(nm.program.ProgramError, match="missing"):
        sess.run({"ids": np.zeros((1, 3), np.int64)})
    inp = transformer_inputs(seed=1)
    inp["ids"] = inp["ids"] + 1000
    with pytest.raises(ValueError, match="ids must be in"):
        sess.run(inp)


def test_thread_count_does_not_change_bits(bert):
    inp = _padded(11, 4, 13)
    outs = [nm.Session(bert, threads=n).run(inp) for n in (1, 2, 4)]
    _same(outs[0], outs[1])
    _same(outs[0], outs[2])


def test_c_executor_matches_python_steps(bert, cnn):
    """executor="c" runs runs of core calls in one C call each: same bits, far fewer Python steps."""
    for prog, inputs in (
        (bert, [_padded(4, 3, 11), _full(5, 2, 6)]),
        (cnn, [np.random.default_rng(2).standard_normal((3, 1, 8, 8)).astype(np.float32)]),
    ):
        fast, slow = nm.Session(prog, threads=2), nm.Session(prog, threads=2, executor="python")
        for inp in inputs:
            _same(fast.run(inp), slow.run(inp))
            assert fast.plan_info(inp)["steps"] < slow.plan_info(inp)["steps"]
    with pytest.raises(ValueError, match="executor"):
        nm.Session(bert, executor="gpu")


def test_cplan_records_and_checks():
    core = kernels.compiled_core()
    a = np.ones((3, 4), np.float32)
    b = np.full((4, 2), 2.0, np.float32)
    c = np.zeros((3, 2), np.float32)
    plan = core.CPlan()
    plan.add_sgemm(a, b, c, None, None, None, core.ACT_NONE, None, 1, kernels.kernel_code())
    assert len(plan) == 1 and not c.any()  # recorded, not run
    plan.run(0, 1)
    np.testing.assert_array_equal(c, np.full((3, 2), 8.0))
    with pytest.raises(ValueError, match="same thread count"):
        plan.add_pairwise_max(a, c[:, :1].copy(), 3, 4, 2, kernels.kernel_code())
    with pytest.raises(IndexError):
        plan.run(0, 5)


def test_identical_ops_computed_once(bert):
    """Every layer's attention-mask bias is the same op: the plan computes it once (a view after)."""
    inp = _padded(6, 3, 9)
    plan = nm.Session(bert).plan_for(inp)
    bias_ops = [op.out for op in bert.ops if op.kind == "scale" and op.args == {"x": "mask"}]
    assert len(bias_ops) >= 2
    assert bias_ops[0] in plan.offsets and all(plan.root(o) == bias_ops[0] for o in bias_ops[1:])
    _same(nm.Session(bert).run(inp), _interp(bert, inp))


def test_token_steps_in_c_match_numpy():
    """The C token steps (mask, positions, gather) against numpy, and their range check."""
    core = kernels.compiled_core()
    rng = np.random.default_rng(0)
    mask = (rng.random((3, 7)) < 0.6).astype(np.int64)
    mask[0, 0] = 2  # any nonzero is a real token
    b = np.empty(mask.shape, np.bool_)
    core.tokens(core.TOKENS_MASK, mask, None, b, mask.size, 0, 0, 0)
    np.testing.assert_array_equal(b, mask != 0)
    pos = np.empty(int(b.sum()), np.int64)
    core.tokens(core.TOKENS_POSITIONS, b, None, pos, b.size, 0, 7, 0)
    np.testing.assert_array_equal(pos, np.nonzero(b)[1])
    table = rng.standard_normal((11, 5)).astype(np.float32)
    ids = rng.integers(0, 11, 9)
    out = np.empty((9, 5), np.float32)
    core.tokens(core.TOKENS_GATHER, table, ids, out, 9, 11, 0, 20)
    assert out.tobytes() == table[ids].tobytes()
    ids[4] = 11
    with pytest.raises(ValueError, match=r"ids must be in \[0, 11\)"):
        core.tokens(core.TOKENS_GATHER, table, ids, out, 9, 11, 0, 20)
    with pytest.raises(ValueError):
        core.tokens(7, table, ids, out, 9, 11, 0, 20)


def test_minilm_like_plan_is_a_few_steps(bert):
    """Token bookkeeping, embeddings, every layer: the per-call Python steps do not grow with layers."""
    plan = nm.Session(bert).plan_for(_padded(1, 2, 8))
    b = plan.bind()
    names = [getattr(fn, "__name__", "") for fn, _ in b.steps]
    assert len(names) <= 8, names
