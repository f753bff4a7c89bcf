"""The runtime: executes a :class:`~nmengine.program.Program` on the GEMM core.

``mode="matrixized"`` runs every nonlinearity through its PWL table in the GEMM epilogue (what the
accelerator does); ``mode="exact"`` runs the same ops with the true function in float32 in place of
each table, which is the reference for every accuracy figure.

Concurrency: a :class:`Runtime` holds no per-call state.  Each call borrows an :class:`Arena` (the
scratch buffers of one execution, reused across calls when shapes repeat) from a lock-free pool and
returns it afterwards, so any number of threads may call :meth:`Runtime.run` on one Program at once.
Program outputs are always fresh arrays, never arena memory.

Speed: at construction the Runtime builds an execution *plan*, one step per op with its operands,
constants, attributes and PWL table descriptors resolved, so a call does no attribute parsing.
Matrixized calls without a recorder run the plan: ``gemm`` ops whose ``b`` is a Program constant
read it pre-packed in the GEMM kernel's panel layout (:func:`nmengine.kernels.pack_b`; packed once
per kernel, lazily, under a lock, then only read), ``scale`` and ``pairwise_max`` run as one C pass
per row (:func:`nmengine.kernels.scale` / :func:`~nmengine.kernels.pairwise_max`; broadcasts the C
kernel does not cover fall back to the numpy path).  The attention softmax chain and the LayerNorm
chain are recognised and run as one C pass per row each (the Program keeps its ops).  ``pack`` /
``unpack`` of a batch without padding are views; with padding, one C pass of row copies.  Every fast
path gives the same bits as the generic one, which exact mode and recorders use.

Shape rules and arithmetic counts live in :mod:`nmengine.shapes`, the numpy data-movement kernels in
:mod:`nmengine.movement`.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from . import kernels, movement, shapes
from .program import Op, Program, ProgramError, resolve_reshape, apply_view

__all__ = ["Runtime", "Arena", "MODES"]

MODES = ("matrixized", "exact")

Recorder = Callable[[Op, np.ndarray], None]


class Arena:
    """Scratch buffers of one execution, keyed by op index, reused while shapes stay the same."""

    __slots__ = ("buffers", "zero_rows")

    def __init__(self) -> None:
        self.buffers: dict[int, np.ndarray] = {}
        #: op index -> (buffer, bool per row: known to hold zeros), for unpack's padded rows
        self.zero_rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, key: int, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        buf = self.buffers.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype=dtype)
            self.buffers[key] = buf
        return buf


def _exact(fn: str, x: np.ndarray) -> np.ndarray:
    from .approx.catalog import exact_float32

    return exact_float32(fn, x)


class Runtime:
    """Executes one Program; create it once (``program.runtime``) and call it from any thread."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self._pool: queue.SimpleQueue[Arena] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: kernel code -> {op index: PackedMatrix} (built once per kernel, read-only afterwards)
        self._packed: dict[int, dict[int, kernels.PackedMatrix]] = {}
        self._prepared: dict[str, Any] = {}
        self._plan = [self._step(i, op) for i, op in enumerate(program.ops)]
        self._fuse_softmax()
        self._fuse_layernorm()

    # -- inputs -------------------------------------------------------------------------------
    def _bind_inputs(self, inputs: Any) -> dict[str, np.ndarray]:
        prog = self.program
        if isinstance(inputs, np.ndarray) or not isinstance(inputs, Mapping):
            if len(prog.inputs) != 1:
                raise ProgramError(f"program has inputs {list(prog.inputs)}: pass a dict name -> array")
            inputs = {next(iter(prog.inputs)): inputs}
        missing = [k for k in prog.inputs if k not in inputs]
        extra = [k for k in inputs if k not in prog.inputs]
        if missing or extra:
            raise ProgramError(f"program inputs are {list(prog.inputs)}; missing {missing}, unexpected {extra}")
        env: dict[str, np.ndarray] = {}
        for name, spec in prog.inputs.items():
            arr = np.asarray(inputs[name])
            if spec.dtype == "int64":
                if arr.dtype.kind not in "iub":
                    raise TypeError(f"input {name!r} must be integers, got dtype {arr.dtype}")
                arr = arr.astype(np.int64, copy=False)
            else:
                if arr.dtype.kind not in "fiub":
                    raise TypeError(f"input {name!r} must be real numbers, got dtype {arr.dtype}")
                arr = np.ascontiguousarray(arr, dtype=np.float32)
            if arr.ndim != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(spec.shape, arr.shape)
            ):
                want = tuple("?" if d is None else d for d in spec.shape)
                raise ProgramError(f"input {name!r} must have shape {want}, got {arr.shape}")
            env[name] = arr
        env.update(prog.constants)
        return env

    # -- execution ----------------------------------------------------------------------------
    def run(self, inputs: Any, mode: str = "matrixized", *, record: Recorder | None = None) -> Any:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        env = self._bind_inputs(inputs)
        arena = self._take_arena()
        try:
            if mode == "matrixized" and record is None:
                ctx = self._context()
                for out, step in self._plan:
                    env[out] = step(env, arena, ctx)
            else:
                for i, op in enumerate(self.program.ops):
                    env[op.out] = self._exec(i, op, env, arena, mode, record)
            outs = {name: np.array(env[name], dtype=env[name].dtype, copy=True) for name in self.program.outputs}
        finally:
            self._pool.put(arena)
        return outs[self.program.outputs[0]] if len(outs) == 1 else outs

    def profile(self, inputs: Any, mode: str = "matrixized", repeat: int = 1) -> list[dict[str, Any]]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        best = [float("inf")] * len(self.program.ops)
        arena = self._take_arena()
        try:
            for _ in range(repeat):
                env = self._bind_inputs(inputs)
                ctx = self._context() if mode == "matrixized" else None
                for i, op in enumerate(self.program.ops):
                    t0 = time.perf_counter()
                    if ctx is not None:
                        env[op.out] = self._plan[i][1](env, arena, ctx)
                    else:
                        env[op.out] = self._exec(i, op, env, arena, mode, None)
                    best[i] = min(best[i], time.perf_counter() - t0)
        finally:
            self._pool.put(arena)
        return [
            {"index": i, "kind": op.kind, "family": op.family, "layer": op.layer, "what": op.what, "seconds": t}
            for i, (op, t) in enumerate(zip(self.program.ops, best))
        ]

    def _take_arena(self) -> Arena:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return Arena()

    # -- the plan (matrixized, no recorder) -----------------------------------------------------
    def _context(self) -> tuple[int, int, dict[int, kernels.PackedMatrix]]:
        """(kernel code, threads, packed constants for that kernel) of one call."""
        code = kernels.kernel_code()
        packed = self._packed.get(code)
        if packed is None:
            packed = self._pack_constants(code)
        return code, kernels.get_num_threads(), packed

    def _pack_constants(self, code: int) -> dict[int, kernels.PackedMatrix]:
        with self._lock:
            packed = self._packed.get(code)
            if packed is None:
                name = kernels.KERNEL_NAMES[code]
                consts = self.program.constants
                packed = {}
                for i, op in enumerate(self.program.ops):
                    if op.kind == "gemm" and op.args["b"] in consts and not op.attrs.get("trans_b"):
                        b = consts[op.args["b"]]
                        if b.ndim == 2 and b.dtype == np.float32:
                            packed[i] = kernels.pack_b(b, name, copy=False)
                self._packed[code] = packed
            return packed

    def _fuse_softmax(self) -> None:
        """Recognise the attention softmax chain and run it as one C pass per row.

            m = pairwise_max(s);  e = scale(s, res=m, res_beta=-1) + exp table;
            r = gemm(e, ones[n, 1]) + reciprocal table;  p = scale(e, row_scale=r)

        The ops stay in the Program (coverage and cost reports are unchanged); the step of the
        pairwise_max computes all four buffers with each op's own float operations
        (``kernels.compiled_core().softmax_rows``) and the three later steps return them.  ``e`` is not
        stored when nothing else reads it.  Any mismatch at run time falls back to the ops.
        """
        prog = self.program
        ops = prog.ops
        readers: dict[str, list[int]] = {}
        producer: dict[str, int] = {}
        for i, op in enumerate(ops):
            producer[op.out] = i
            for name in op.args.values():
                readers.setdefault(name, []).append(i)
        outputs = set(prog.outputs)
        ones_ok: dict[str, bool] = {}

        def ones_rows(name: str, likes: tuple[str, ...]) -> int:
            """Rows of the constant column of ones that name is (or the first rows of, by slice_rows
            ops without a row count of their own); 0 when it is not one."""
            if name in prog.constants:
                if name not in ones_ok:
                    c = prog.constants[name]
                    ones_ok[name] = bool(c.dtype == np.float32 and c.ndim == 2 and c.shape[1] == 1
                                         and np.all(c == 1.0) and not np.signbit(c).any())
                # negative: used whole, so n must equal its rows (not just fit)
                return -prog.constants[name].shape[0] if ones_ok[name] else 0
            j = producer.get(name)
            sl = ops[j] if j is not None else None
            if (sl is None or sl.kind != "slice_rows" or sl.args.get("like") not in likes
                    or sl.attrs.get("axis") != -1):
                return 0
            return abs(ones_rows(sl.args["x"], likes))

        def only(op, kind, roles, **attrs):
            return (op.kind == kind and set(op.args) == set(roles)
                    and all(op.attrs.get(k, d) == v for k, (d, v) in attrs.items()))

        for i, op in enumerate(ops):
            if op.kind != "pairwise_max" or op.out in outputs:
                continue
            s_name, m_name = op.args["x"], op.out
            rm = readers.get(m_name, [])
            if len(rm) != 1:
                continue
            j = rm[0]
            ej = ops[j]
            if not (only(ej, "scale", ("x", "res"), alpha=(1.0, 1.0), beta=(0.0, 0.0), res_beta=(1.0, -1.0))
                    and ej.args["x"] == s_name and ej.epilogue.get("act") == "pwl"):
                continue
            e_name = ej.out
            re_ = readers.get(e_name, [])
            ks = [k for k in re_ if ops[k].kind == "gemm"]
            ls = [k for k in re_ if ops[k].kind == "scale"]
            if len(ks) != 1 or len(ls) != 1:
                continue
            kg, ks_ = ops[ks[0]], ops[ls[0]]
            n_ones = ones_rows(kg.args["b"], (e_name, s_name))
            if not (set(kg.args) == {"a", "b"} and kg.args["a"] == e_name and n_ones
                    and not kg.attrs.get("trans_a") and not kg.attrs.get("trans_b")
                    and kg.epilogue.get("act") == "pwl" and kg.out not in outputs):
                continue
            r_name = kg.out
            if readers.get(r_name, []) != [ls[0]]:
                continue
            if not (only(ks_, "scale", ("x", "row_scale"), alpha=(1.0, 1.0), beta=(0.0, 0.0))
                    and ks_.args["x"] == e_name and ks_.args["row_scale"] == r_name
                    and ks_.epilogue.get("act", "none") == "none"):
                continue
            if not (i < j < min(ks[0], ls[0]) and ks[0] < ls[0]):
                continue
            store_e = e_name in outputs or len(re_) != 2
            self._install_softmax(i, j, ks[0], ls[0], s_name, store_e, n_ones,
                                  self._table(ej.epilogue["table"]), self._table(kg.epilogue["table"]))

    def _install_softmax(self, i, j, k, l, s_name, store_e, n_ones, exp_t, rec_t) -> None:
        ops = self.program.ops
        m_name, e_name, r_name, p_name = ops[i].out, ops[j].out, ops[k].out, ops[l].out
        steps = {q: self._plan[q][1] for q in (i, j, k, l)}
        core = kernels.compiled_core()
        f32 = np.float32

        def fused(env, arena, ctx):
            x = env[s_name]
            # the ones column: the first n rows of a constant of n_ones ones (slice_rows "like" the
            # scores), or a constant of exactly -n_ones rows
            n = x.shape[-1] if x.ndim else 0
            if (x.dtype != f32 or x.ndim < 2 or not x.flags.c_contiguous or not x.flags.aligned or n < 1
                    or (n > n_ones if n_ones > 0 else n != -n_ones)):
                return steps[i](env, arena, ctx)
            rows = x.size // n
            lead = x.shape[:-1] + (1,)
            m = arena.get(i, lead)
            r = arena.get(k, lead)
            p = arena.get(l, x.shape)
            e = arena.get(j, x.shape) if store_e else None
            if rows:
                core.softmax_rows(x, rows, n, exp_t, rec_t, m, e, r, p, ctx[1], ctx[0])
            if e is not None:
                env[e_name] = e
            env[r_name] = r
            env[p_name] = p
            return m

        def later(q, name):
            def fn(env, arena, ctx):
                if name in env:
                    return env[name]
                if name == e_name and p_name in env:  # fused, e not stored: nobody else reads it
                    return None
                return steps[q](env, arena, ctx)
            return fn

        self._plan[i] = (m_name, fused)
        self._plan[j] = (e_name, later(j, e_name))
        self._plan[k] = (r_name, later(k, r_name))
        self._plan[l] = (p_name, later(l, p_name))

    def _fuse_layernorm(self) -> None:
        """Recognise the LayerNorm chain (``compile/lower.py`` ``_layernorm``) and run it as one C pass.

            mean = gemm(x, w[n, 1]);  c = scale(x, res=mean, res_beta=-1);  sq = scale(c, mul=c);
            r = gemm(sq, w'[n, 1], bias=eps) + rsqrt table;
            y = scale(c, row_scale=r[, col_scale=gamma][, bias=beta])

        ``w``/``w'`` are constant columns (the lowering's ``1/D``), ``eps`` a constant of one value,
        gamma/beta constant rows of n.  The step of the mean GEMM computes every buffer with each op's
        own float operations (``kernels.compiled_core().layernorm_rows``: the N = 1 GEMMs in the GEMM core's
        summation order for the kernel); ``c`` and ``sq`` are stored only when something else reads
        them.  The ops stay in the Program; any mismatch at run time falls back to them.
        """
        prog = self.program
        ops, consts = prog.ops, prog.constants
        readers: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            for name in set(op.args.values()):
                readers.setdefault(name, []).append(i)
        outputs = set(prog.outputs)
        f32 = np.float32

        def column(name: str) -> int:
            c = consts.get(name)
            if c is None or c.dtype != f32 or c.ndim != 2 or c.shape[1] != 1 or not c.flags.c_contiguous:
                return 0
            return c.shape[0]

        def const_vec(name: str, n: int) -> bool:
            c = consts.get(name)
            return c is not None and c.dtype == f32 and c.shape == (n,) and c.flags.c_contiguous

        def plain(op, kind, roles, **attrs) -> bool:
            return (op.kind == kind and set(op.args) == set(roles) and op.epilogue.get("act", "none") == "none"
                    and all(op.attrs.get(k, d) == v for k, (d, v) in attrs.items()))

        no_trans = {"trans_a": (False, False), "trans_b": (False, False)}
        for i, op in enumerate(ops):
            if not plain(op, "gemm", ("a", "b"), **no_trans):
                continue
            n = column(op.args["b"])
            x_name, mean_name = op.args["a"], op.out
            if not n:
                continue
            cs = [j for j in readers.get(mean_name, []) if plain(
                ops[j], "scale", ("x", "res"), alpha=(1.0, 1.0), beta=(0.0, 0.0), res_beta=(1.0, -1.0))
                and ops[j].args["x"] == x_name and ops[j].args["res"] == mean_name]
            if len(cs) != 1:
                continue
            j = cs[0]
            c_name = ops[j].out
            rc = readers.get(c_name, [])
            sqs = [k for k in rc if plain(ops[k], "scale", ("x", "mul"), alpha=(1.0, 1.0), beta=(0.0, 0.0))
                   and ops[k].args["x"] == c_name and ops[k].args["mul"] == c_name]
            if len(sqs) != 1:
                continue
            k = sqs[0]
            sq_name = ops[k].out
            vs = [v for v in readers.get(sq_name, []) if ops[v].kind == "gemm"
                  and set(ops[v].args) == {"a", "b", "bias"} and ops[v].args["a"] == sq_name
                  and column(ops[v].args["b"]) == n and const_vec(ops[v].args["bias"], 1)
                  and not ops[v].attrs.get("trans_a") and not ops[v].attrs.get("trans_b")
                  and ops[v].epilogue.get("act") == "pwl"]
            if len(vs) != 1:
                continue
            v = vs[0]
            r_name = ops[v].out
            ls = [q for q in rc if ops[q].kind == "scale" and ops[q].epilogue.get("act", "none") == "none"
                  and {"x", "row_scale"} <= set(ops[q].args) <= {"x", "row_scale", "col_scale", "bias"}
                  and ops[q].args["x"] == c_name and ops[q].args["row_scale"] == r_name
                  and ops[q].attrs.get("alpha", 1.0) == 1.0 and ops[q].attrs.get("beta", 0.0) == 0.0
                  and all(const_vec(ops[q].args[role], n) for role in ("col_scale", "bias") if role in ops[q].args)]
            if len(ls) != 1:
                continue
            q = ls[0]
            if not i < j < k < v < q:
                continue
            store_c = c_name in outputs or any(t not in (k, q) for t in rc)
            store_sq = sq_name in outputs or readers.get(sq_name, []) != [v]
            self._install_layernorm((i, j, k, v, q), x_name, n, store_c, store_sq)

    def _install_layernorm(self, idx, x_name, n, store_c, store_sq) -> None:
        ops, consts = self.program.ops, self.program.constants
        i, j, k, v, q = idx
        names = [ops[t].out for t in idx]
        steps = {t: self._plan[t][1] for t in idx}
        w_mean = consts[ops[i].args["b"]].reshape(-1)
        w_var = consts[ops[v].args["b"]].reshape(-1)
        eps = float(consts[ops[v].args["bias"]][0])
        table = self._table(ops[v].epilogue["table"])
        gamma = consts[ops[q].args["col_scale"]] if "col_scale" in ops[q].args else None
        beta = consts[ops[q].args["bias"]] if "bias" in ops[q].args else None
        core = kernels.compiled_core()
        f32 = np.float32
        mean_name, c_name, sq_name, r_name, y_name = names

        def fused_layernorm(env, arena, ctx):
            x = env[x_name]
            if (x.dtype != f32 or x.ndim < 2 or x.shape[-1] != n or not x.flags.c_contiguous
                    or not x.flags.aligned):
                return steps[i](env, arena, ctx)
            rows = x.size // n
            lead = x.shape[:-1] + (1,)
            mean = arena.get(i, lead)
            r = arena.get(v, lead)
            y = arena.get(q, x.shape)
            c = arena.get(j, x.shape) if store_c else None
            sq = arena.get(k, x.shape) if store_sq else None
            if rows:
                core.layernorm_rows(x, rows, n, w_mean, w_var, eps, table, gamma, beta, mean, c, sq, r, y,
                                    ctx[1], ctx[0])
            if c is not None:
                env[c_name] = c
            if sq is not None:
                env[sq_name] = sq
            env[r_name] = r
            env[y_name] = y
            return mean

        def later(t, name, stored):
            def fn(env, arena, ctx):
                if name in env:
                    return env[name]
                if not stored and y_name in env:  # fused, not stored: nobody else reads it
                    return None
                return steps[t](env, arena, ctx)
            return fn

        self._plan[i] = (mean_name, fused_layernorm)
        self._plan[j] = (c_name, later(j, c_name, store_c))
        self._plan[k] = (sq_name, later(k, sq_name, store_sq))
        self._plan[v] = (r_name, later(v, r_name, True))
        self._plan[q] = (y_name, later(q, y_name, True))

    def _table(self, key: str) -> Any:
        t = self._prepared.get(key)
        if t is None:
            t = self._prepared[key] = kernels.prepare_table(self.program.tables[key])
        return t

    def _act_code(self, core: Any, op: Op) -> tuple[int, Any]:
        """(core activation code, prepared table or None) of op's fused epilogue."""
        ep = op.epilogue
        act = ep.get("act", "none")
        if act == "none":
            return core.ACT_NONE, None
        if act == "relu":
            return core.ACT_RELU, None
        return core.ACT_PWL, self._table(ep["table"])

    def _pwl_after(self, op: Op, y: np.ndarray, mode: str, record: Recorder | None) -> None:
        """op's PWL epilogue applied to y in place (recorded first when recording)."""
        if record is not None:
            record(op, y)
        if mode == "matrixized":
            kernels.pwl_apply(self.program.tables[op.epilogue["table"]], y, out=y)
        else:
            y[...] = _exact(op.epilogue["fn"], y)

    def _step(self, i: int, op: Op) -> tuple[str, Callable[..., np.ndarray]]:
        """(output name, step(env, arena, ctx) -> array) for op i in matrixized mode."""
        kind = op.kind
        if kind == "gemm":
            fn = self._gemm_step(i, op)
        elif kind == "scale":
            fn = self._scale_step(i, op)
        elif kind == "pairwise_max":
            xn = op.args["x"]

            core = kernels.compiled_core()

            def fn(env, arena, ctx, xn=xn):
                x = env[xn]
                if (x.dtype != np.float32 or x.ndim == 0 or x.shape[-1] == 0 or not x.flags.c_contiguous
                        or not x.flags.aligned):
                    return self._exec(i, op, env, arena, "matrixized", None)
                y = arena.get(i, x.shape[:-1] + (1,))
                if y.size:
                    core.pairwise_max(x, y, y.size, x.shape[-1], ctx[1], ctx[0])
                return y
        else:
            def fn(env, arena, ctx):
                return self._exec(i, op, env, arena, "matrixized", None)
        return op.out, fn

    def _gemm_step(self, i: int, op: Op) -> Callable[..., np.ndarray]:
        args, attrs = op.args, op.attrs
        if attrs.get("trans_a") or attrs.get("trans_b"):
            return lambda env, arena, ctx: self._gemm(i, op, env, arena, "matrixized", None)
        core = kernels.compiled_core()
        an, bn = args["a"], args["b"]
        bias_n, row_n, res_n = args.get("bias"), args.get("bias_row"), args.get("res")
        code, table = self._act_code(core, op)
        f32 = np.float32

        def generic(env, arena, ctx):
            return self._gemm(i, op, env, arena, "matrixized", None)

        def fn(env, arena, ctx):
            a, b = env[an], env[bn]
            if a.dtype != f32 or b.dtype != f32 or b.ndim != 2 or not a.flags.aligned or not b.flags.aligned:
                return generic(env, arena, ctx)
            k, n = b.shape
            a2 = a if a.ndim == 2 else a.reshape(-1, a.shape[-1])
            m = a2.shape[0]
            if a2.shape[1] != k:
                return generic(env, arena, ctx)  # raises the usual error
            bias = bias_row = res = None
            if bias_n is not None:
                bias = env[bias_n]
                if bias.shape != (n,) or bias.dtype != f32 or not bias.flags.c_contiguous:
                    return generic(env, arena, ctx)
            if row_n is not None:
                bias_row = env[row_n].reshape(-1)
                if bias_row.shape != (m,) or bias_row.dtype != f32 or not bias_row.flags.c_contiguous:
                    return generic(env, arena, ctx)
            if res_n is not None:
                res = env[res_n]
                if res.size != m * n or res.dtype != f32 or not res.flags.aligned:
                    return generic(env, arena, ctx)
                res = res.reshape(m, n)
            out = arena.get(i, (m, n))
            if m and n:
                pk = ctx[2].get(i)
                if pk is not None and pk.kernel == ctx[0] and constant_b is b:
                    core.sgemm_packed(a2, pk.data, n, out, bias, bias_row, res, code, table, ctx[1], ctx[0])
                else:
                    core.sgemm(a2, b, out, bias, bias_row, res, code, table, ctx[1], ctx[0])
            return out if a.ndim == 2 else out.reshape(a.shape[:-1] + (n,))

        constant_b = self.program.constants.get(bn)
        return fn

    def _scale_step(self, i: int, op: Op) -> Callable[..., np.ndarray]:
        args, attrs = op.args, op.attrs
        core = kernels.compiled_core()
        xn = args["x"]
        roles = [(r, args.get(r)) for r in kernels.SCALE_ROLES]
        alpha = attrs.get("alpha", 1.0)
        beta = attrs.get("beta", 0.0)
        res_beta = float(np.float32(attrs.get("res_beta", 1.0)))
        alpha_c = None if alpha == 1.0 else float(alpha)
        beta_c = None if beta == 0.0 else float(beta)
        code, table = self._act_code(core, op)
        f32 = np.float32
        NONE, FULL, ROW, COL, SCALAR = core.BC_NONE, core.BC_FULL, core.BC_ROW, core.BC_COL, core.BC_SCALAR

        def fn(env, arena, ctx):
            x = env[xn]
            shape = x.shape
            if x.dtype != f32 or not shape or not x.flags.c_contiguous or not x.flags.aligned:
                return self._scale(i, op, env, arena, "matrixized", None)
            n = shape[-1]
            call = []
            for role, name in roles:
                if name is None:
                    call.append(None)
                    call.append(NONE)
                    continue
                v = env[name]
                s = v.shape
                if v.dtype != f32 or not v.flags.c_contiguous or not v.flags.aligned:
                    return self._scale(i, op, env, arena, "matrixized", None)
                if s == shape:
                    m = FULL
                elif v.size == 1 and len(s) <= len(shape):
                    m = SCALAR
                elif len(s) == len(shape) and s[-1] == 1 and s[:-1] == shape[:-1]:
                    m = ROW
                elif s[-1:] == (n,) and len(s) <= len(shape) and v.size == n:
                    m = COL
                else:
                    return self._scale(i, op, env, arena, "matrixized", None)
                call.append(v)
                call.append(m)
            y = arena.get(i, shape)
            if y.size:
                core.scale(x, y, y.size // n, n, alpha_c, beta_c, res_beta, *call, code, table, ctx[1], ctx[0])
            return y

        return fn

    def _out(self, i: int, op: Op, arena: Arena, shape: tuple[int, ...]) -> np.ndarray:
        # Results live in the arena; run() copies the program outputs out before the arena is reused.
        return arena.get(i, tuple(int(s) for s in shape))

    def _epilogue(self, op: Op, mode: str, record: Recorder | None):
        """(kernel epilogue, post-function) for this op in this mode."""
        ep = op.epilogue
        act = ep.get("act", "none")
        if act == "none":
            return None, None
        if act == "relu":
            return "relu", None
        table = self.program.tables[ep["table"]]
        if mode == "matrixized" and record is None:
            return table, None
        fn = ep["fn"]

        def post(y: np.ndarray) -> None:
            if record is not None:
                record(op, y)
            if mode == "matrixized":
                kernels.pwl_apply(table, y, out=y)
            else:
                y[...] = _exact(fn, y)

        return None, post

    def _exec(self, i: int, op: Op, env: dict[str, np.ndarray], arena: Arena, mode: str,
              record: Recorder | None) -> np.ndarray:
        kind, args, attrs = op.kind, op.args, op.attrs
        if kind == "gemm":
            return self._gemm(i, op, env, arena, mode, record)
        if kind == "gemm_batched":
            return self._gemm_batched(i, op, env, arena, mode, record)
        if kind == "scale":
            return self._scale(i, op, env, arena, mode, record)
        x = env[args["x"]] if "x" in args else None
        if kind == "pairwise_max":
            if mode != "exact" and x.dtype == np.float32 and x.ndim and x.shape[-1]:
                return kernels.pairwise_max(x, out=arena.get(i, x.shape[:-1] + (1,)))
            return movement.pairwise_max(x, exact=(mode == "exact"))
        if kind == "reshape":
            return x.reshape(resolve_reshape(x.shape, attrs["shape"]))
        if kind == "transpose":
            y = x.transpose(attrs["perm"])
            out = self._out(i, op, arena, y.shape)
            np.copyto(out, y)
            return out
        if kind == "im2col":
            return movement.im2col(x, attrs, self._out(i, op, arena, shapes.im2col_shape(x.shape, attrs)))
        if kind == "pool_windows":
            return movement.pool_windows(x, attrs)
        if kind == "patchify":
            return movement.patchify(x, attrs["patch"])
        if kind == "gather":
            table, ids = env[args["table"]], env[args["ids"]]
            if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
                raise ValueError(
                    f"{op.layer}: ids must be in [0, {table.shape[0]}), got range [{ids.min()}, {ids.max()}]")
            return table[ids]
        if kind == "pack":
            m = movement.mask_bool(env[args["mask"]], x.shape)
            if m.all():  # no padding: every row, in order (a view when x is contiguous)
                return x.reshape((m.size,) + x.shape[2:])
            if not x.flags.c_contiguous:
                return x[m]
            flat = np.ascontiguousarray(m).reshape(-1)
            out = arena.get(i, (int(np.count_nonzero(flat)),) + x.shape[2:], x.dtype)
            width = x.itemsize * int(np.prod(x.shape[2:], dtype=np.int64))
            kernels.compiled_core().move_rows(x, out, flat, None, flat.size, width, False, kernels.get_num_threads())
            return out
        if kind == "unpack":
            m = movement.mask_bool(env[args["mask"]], None)
            flat = np.ascontiguousarray(m).reshape(-1)
            count = int(np.count_nonzero(flat))
            if count != x.shape[0]:
                raise ValueError(f"{op.layer}: {x.shape[0]} packed rows for a mask with {count} tokens")
            if count == flat.size:  # no padding: the packed rows are the batch (a view)
                return x.reshape(m.shape + x.shape[1:])
            out = arena.get(i, m.shape + x.shape[1:], x.dtype)
            if x.flags.c_contiguous:
                # one pass: real rows copied, padded rows zeroed unless this buffer's row already holds
                # zeros from an earlier call (only this op writes it)
                known = arena.zero_rows.get(i)
                zero = known[1] if known is not None and known[0] is out else None
                width = x.itemsize * int(np.prod(x.shape[1:], dtype=np.int64))
                kernels.compiled_core().move_rows(x, out, flat, zero, flat.size, width, True, kernels.get_num_threads())
                arena.zero_rows[i] = (out, ~flat)
            else:
                out.fill(0)
                out[m] = x
            return out
        if kind == "concat":
            return np.concatenate([x] + [env[args[f"x{i}"]] for i in range(1, len(args))], axis=attrs["axis"])
        if kind == "slice":
            like = env[args["like"]].shape if "like" in args else None
            return np.ascontiguousarray(x[shapes.slice_bounds(x.shape, attrs, like)])
        if kind == "take":
            return np.take(x, attrs["indices"], axis=attrs["axis"])
        if kind == "pad":
            if attrs.get("mode", "constant") == "edge":
                return np.pad(x, attrs["pads"], mode="edge")
            return np.pad(x, attrs["pads"], mode="constant", constant_values=attrs.get("value", 0.0))
        if kind == "positions":
            return np.nonzero(movement.mask_bool(env[args["mask"]], None))[1].astype(np.int64)
        if kind == "slice_rows":
            n = env[args["like"]].shape[attrs["axis"]] if "like" in args else attrs["rows"]
            if n > x.shape[0]:
                raise ValueError(f"{op.layer}: needs {n} rows of {args['x']!r}, which has only {x.shape[0]}")
            return x[:n]
        raise ProgramError(f"unknown op kind {kind!r}")  # pragma: no cover (validated at construction)

    def _gemm(self, i, op, env, arena, mode, record):
        args, attrs = op.args, op.attrs
        a, b = env[args["a"]], env[args["b"]]
        if attrs.get("trans_a"):
            a = a.T
        if attrs.get("trans_b"):
            b = b.T
        lead = a.shape[:-1]
        a2 = a.reshape(-1, a.shape[-1]) if a.ndim != 2 else a
        m, n = a2.shape[0], b.shape[-1]
        out = self._out(i, op, arena, (m, n))
        bias_role = "bias_exact" if mode == "exact" and "bias_exact" in args else "bias"
        bias = env[args[bias_role]] if bias_role in args else None
        bias_row = env[args["bias_row"]].reshape(-1) if "bias_row" in args else None
        res = env[args["res"]].reshape(m, n) if "res" in args else None
        epi, post = self._epilogue(op, mode, record)
        kernels.gemm(a2, b, bias=bias, bias_row=bias_row, residual=res, epilogue=epi, out=out)
        if post is not None:
            post(out)
        return out.reshape(lead + (n,))

    def _gemm_batched(self, i, op, env, arena, mode, record):
        args, attrs = op.args, op.attrs
        a = apply_view(env[args["a"]], attrs.get("a_view"))
        b = apply_view(env[args["b"]], attrs.get("b_view"))
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        shape = batch + (a.shape[-2], b.shape[-1])
        perm = attrs.get("out_perm")
        if perm is None:
            out = self._out(i, op, arena, shape)
            target = out
        else:
            out = self._out(i, op, arena, tuple(shape[p] for p in perm))
            target = out.transpose(np.argsort(perm))
        res = None
        if "res" in args:
            res = np.broadcast_to(apply_view(env[args["res"]], attrs.get("res_view")), shape)
        bias = env[args["bias"]] if "bias" in args else None
        bias_row = env[args["bias_row"]].reshape(-1) if "bias_row" in args else None
        epi, post = self._epilogue(op, mode, record)
        kernels.gemm_batched(a, b, bias=bias, bias_row=bias_row, residual=res, epilogue=epi, out=target)
        if post is not None:
            post(out)
        return out

    def _scale(self, i, op, env, arena, mode, record):
        args, attrs = op.args, op.attrs
        x = env[args["x"]]
        operands = [env[args[r]] for r in ("mul", "row_scale", "col_scale", "bias", "bias_row", "res") if r in args]
        shape = np.broadcast_shapes(x.shape, *(o.shape for o in operands))
        y = self._out(i, op, arena, shape)
        ops = {r: env[args[r]] for r in kernels.SCALE_ROLES if r in args}
        if x.shape == shape and kernels.scale_supported(x, **ops):
            act = op.epilogue.get("act", "none")
            fused = "relu" if act == "relu" else (
                self._table(op.epilogue["table"]) if act == "pwl" and mode == "matrixized" and record is None
                else None)
            kernels.scale(x, alpha=attrs.get("alpha", 1.0), beta=attrs.get("beta", 0.0),
                          res_beta=attrs.get("res_beta", 1.0), epilogue=fused, out=y, **ops)
            if act == "pwl" and fused is None:
                self._pwl_after(op, y, mode, record)
            return y
        return self._scale_numpy(y, x, shape, op, env, mode, record)

    def _scale_numpy(self, y, x, shape, op, env, mode, record):
        args, attrs = op.args, op.attrs
        alpha = attrs.get("alpha", 1.0)
        if alpha != 1.0:
            np.multiply(x, np.float32(alpha), out=y, casting="unsafe")
        else:
            np.copyto(y, np.broadcast_to(x, shape), casting="unsafe")
        for role in ("mul", "row_scale", "col_scale"):
            if role in args:
                np.multiply(y, env[args[role]], out=y, casting="unsafe")
        beta = attrs.get("beta", 0.0)
        if beta != 0.0:
            np.add(y, np.float32(beta), out=y)
        for role in ("bias", "bias_row"):
            if role in args:
                np.add(y, env[args[role]], out=y, casting="unsafe")
        if "res" in args:
            res_beta = attrs.get("res_beta", 1.0)
            if res_beta == 1.0:
                np.add(y, env[args["res"]], out=y, casting="unsafe")
            elif res_beta == -1.0:
                np.subtract(y, env[args["res"]], out=y, casting="unsafe")
            else:
                np.add(y, np.float32(res_beta) * env[args["res"]], out=y, casting="unsafe")
        act = op.epilogue.get("act", "none")
        if act == "relu":
            np.maximum(y, np.float32(0), out=y)
        elif act == "pwl":
            self._pwl_after(op, y, mode, record)
        return y
