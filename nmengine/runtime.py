"""The interpreter: runs a :class:`~nmengine.program.Program` op by op on the GEMM core.

This is the reference executor, used for ``mode="exact"`` (every PWL table replaced by the true
function in float32, the reference of every accuracy figure), for recording activations (calibration)
and for per-op profiles.  It runs the *expanded* program (fused row ops replaced by their declared
GEMM + PWL expansion, :meth:`Program.expanded <nmengine.program.Program.expanded>`), one generic call
per op.  Fast matrixized execution is :class:`nmengine.session.Session` (a plan per input-shape
signature), which gives the same bits as matrixized mode here.

Concurrency: a :class:`Runtime` holds no per-call state.  Each call borrows an :class:`Arena` (the
scratch buffers of one execution) from a lock-free pool and returns it afterwards, so any number of
threads may call :meth:`Runtime.run` on one Program at once.  Program outputs are always fresh arrays.

Shape rules and arithmetic counts live in :mod:`nmengine.shapes`, the numpy data-movement kernels in
:mod:`nmengine.movement`.
"""

from __future__ import annotations

import queue
import time
from typing import Any, Callable, Mapping

import numpy as np

from . import kernels, movement, runtime_int8, shapes
from .program import Op, Program, ProgramError, apply_view, resolve_reshape

__all__ = ["Runtime", "Arena", "MODES", "bind_inputs", "scale_numpy"]

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


def bind_inputs(program: Program, inputs: Any) -> dict[str, np.ndarray]:
    """``{input name: array}`` checked against the program's input specs (dtype converted: int64 for
    integer inputs, C-contiguous float32 for the others); one array is accepted for a one-input program."""
    if isinstance(inputs, np.ndarray) or not isinstance(inputs, Mapping):
        if len(program.inputs) != 1:
            raise ProgramError(f"program has inputs {list(program.inputs)}: pass a dict name -> array")
        inputs = {next(iter(program.inputs)): inputs}
    missing = [k for k in program.inputs if k not in inputs]
    extra = [k for k in inputs if k not in program.inputs]
    if missing or extra:
        raise ProgramError(f"program inputs are {list(program.inputs)}; missing {missing}, unexpected {extra}")
    env: dict[str, np.ndarray] = {}
    #: frontends record what a dynamic dimension may reach, e.g. BERT's positions: {name: [[dim, max, what]]}
    limits = program.meta.get("input_limits", {})
    for name, spec in program.inputs.items():
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
        for dim, most, what in limits.get(name, ()):
            if arr.shape[dim] > most:
                raise ProgramError(
                    f"input {name!r} has {arr.shape[dim]} {what} (dimension {dim} of shape "
                    f"{arr.shape}); the model accepts at most {most}"
                )
        env[name] = arr
    return env


def scale_numpy(
    y: np.ndarray, x: np.ndarray, op: Op, env: Mapping[str, np.ndarray], pwl_after: Callable[[np.ndarray], None]
) -> np.ndarray:
    """A ``scale`` op step by step in numpy into ``y`` (the output shape), for the operand layouts and
    dtypes the C kernel does not take (e.g. an int64 mask, or operands larger than x); ``pwl_after(y)``
    applies a PWL epilogue in place."""
    args, attrs = op.args, op.attrs
    alpha = attrs.get("alpha", 1.0)
    if alpha != 1.0:
        np.multiply(x, np.float32(alpha), out=y, casting="unsafe")
    else:
        np.copyto(y, np.broadcast_to(x, y.shape), casting="unsafe")
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
        pwl_after(y)
    return y


class Runtime:
    """Interprets one Program op by op (its expansion); create it once (``program.runtime``) and call
    it from any thread."""

    def __init__(self, program: Program) -> None:
        self.program = program
        #: the ops this interpreter runs: fused row ops replaced by their expansion
        self.ops: list[Op] = program.expanded().ops
        #: op output -> packed operands of the int8 GEMM ops (runtime_int8)
        self.int8 = runtime_int8.prepare(program)
        self._pool: queue.SimpleQueue[Arena] = queue.SimpleQueue()
        self._prepared: dict[str, Any] = {}

    # -- execution ----------------------------------------------------------------------------
    def run(self, inputs: Any, mode: str = "matrixized", *, record: Recorder | None = None) -> Any:
        """Run every op in order; ``record(op, y)`` (optional) sees each PWL input before the table."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        env = bind_inputs(self.program, inputs)
        env.update(self.program.constants)
        arena = self._take_arena()
        try:
            for i, op in enumerate(self.ops):
                env[op.out] = self._exec(i, op, env, arena, mode, record)
            outs = {name: np.array(env[name], dtype=env[name].dtype, copy=True) for name in self.program.outputs}
        finally:
            self._pool.put(arena)
        return outs[self.program.outputs[0]] if len(outs) == 1 else outs

    def profile(self, inputs: Any, mode: str = "matrixized", repeat: int = 1) -> list[dict[str, Any]]:
        """Best-of-``repeat`` wall time of every op of the expanded program."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {repeat}")
        best = [float("inf")] * len(self.ops)
        arena = self._take_arena()
        try:
            for _ in range(repeat):
                env = bind_inputs(self.program, inputs)
                env.update(self.program.constants)
                for i, op in enumerate(self.ops):
                    t0 = time.perf_counter()
                    env[op.out] = self._exec(i, op, env, arena, mode, None)
                    best[i] = min(best[i], time.perf_counter() - t0)
        finally:
            self._pool.put(arena)
        return [
            {"index": i, "kind": op.kind, "family": op.family, "layer": op.layer, "what": op.what, "seconds": t}
            for i, (op, t) in enumerate(zip(self.ops, best))
        ]

    def exec_op(self, op: Op, env: Mapping[str, np.ndarray]) -> np.ndarray:
        """One (non-fused) op in matrixized mode on the buffers of ``env``, into a fresh result."""
        return self._exec(-1, op, env, Arena(), "matrixized", None)

    def _take_arena(self) -> Arena:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return Arena()

    def _table(self, key: str) -> Any:
        t = self._prepared.get(key)
        if t is None:
            t = self._prepared[key] = kernels.prepare_table(self.program.tables[key])
        return t

    def _pwl_after(self, op: Op, y: np.ndarray, mode: str, record: Recorder | None) -> None:
        """op's PWL epilogue applied to y in place (recorded first when recording)."""
        if record is not None:
            record(op, y)
        if mode == "matrixized":
            kernels.pwl_apply(self.program.tables[op.epilogue["table"]], y, out=y)
        else:
            y[...] = _exact(op.epilogue["fn"], y)

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

    def _exec(
        self, i: int, op: Op, env: Mapping[str, np.ndarray], arena: Arena, mode: str, record: Recorder | None
    ) -> np.ndarray:
        kind, args, attrs = op.kind, op.args, op.attrs
        if kind == "gemm":
            return self._gemm(i, op, env, arena, mode, record)
        if kind == "gemm_batched":
            return self._gemm_batched(i, op, env, arena, mode, record)
        if kind == "scale":
            return self._scale(i, op, env, arena, mode, record)
        if kind == "gather":
            table, ids = env[args["table"]], env[args["ids"]]
            if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
                raise ValueError(
                    f"{op.layer}: ids must be in [0, {table.shape[0]}), got range [{ids.min()}, {ids.max()}]"
                )
            return table[ids]
        if kind == "positions":
            return np.nonzero(movement.mask_bool(env[args["mask"]], None))[1].astype(np.int64)
        x = env[args["x"]]  # every other op reads its operand as x
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
        q = self.int8.get(op.out)
        if q is not None:
            q.run(a2, out, bias=bias, bias_row=bias_row, residual=res, epilogue=epi, exact=mode == "exact")
        else:
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
            fused = (
                "relu"
                if act == "relu"
                else (
                    self._table(op.epilogue["table"])
                    if act == "pwl" and mode == "matrixized" and record is None
                    else None
                )
            )
            kernels.scale(
                x,
                alpha=attrs.get("alpha", 1.0),
                beta=attrs.get("beta", 0.0),
                res_beta=attrs.get("res_beta", 1.0),
                epilogue=fused,
                out=y,
                **ops,
            )
            if act == "pwl" and fused is None:
                self._pwl_after(op, y, mode, record)
            return y
        return scale_numpy(y, x, op, env, lambda v: self._pwl_after(op, v, mode, record))
