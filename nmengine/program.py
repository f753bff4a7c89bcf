"""Program: the matrixized IR, a flat list of GEMM-family ops and data movement over named buffers.

Every op of a Program is one of three families (``Op.family``):

``gemm``  (what the GEMM array computes, with its fused epilogue)
    ``gemm``          ``out = ep(A @ B + bias + bias_row + res)``; a buffer operand ``A`` of rank > 2 is
                      viewed as rows ``(-1, K)`` and the output keeps its leading dims; ``B`` may be a
                      constant ``(K, N)``.  Attributes ``trans_a``/``trans_b`` read an operand transposed.
                      With ``attrs["precision"] == "int8"`` (:mod:`nmengine.compile.quantize`) ``B`` is an
                      int8 constant with scales ``w_scale`` (K groups x N) and optional ``inv_smooth`` (K,)
                      / ``a_static`` (K groups,); see :mod:`nmengine.runtime_int8`.
    ``gemm_batched``  ``out[p1, p2] = ep(A[p1, p2] @ B[p1, p2] + bias + bias_row + res)`` with numpy batch
                      broadcasting (a constant operand is shared by every batch); operands are read
                      through zero-copy *views* (``reshape``/``select``/``perm``, see :func:`apply_view`),
                      and ``out_perm`` stores the result permuted (e.g. attention context straight into
                      ``[B, T, H, d]``).
    ``scale``         a diagonal GEMM: ``out = ep(alpha * x * mul * row_scale * col_scale + beta + bias +
                      bias_row + res_beta * res)``, each factor optional; ``row_scale``/``bias_row`` are
                      ``[..., 1]`` columns broadcast along the last axis, ``col_scale``/``bias`` vectors over
                      it.  Elementwise products, row/column scaling, residual adds and standalone PWL
                      lookups are all this one op.
    ``pairwise_max``  max over the last axis as a tree of steps ``b + relu(a - b)``: an exact PWL (relu)
                      plus additions, so max pooling and the softmax row bound stay GEMM + PWL.

``fused`` row kernels (decided by the compiler pass :mod:`nmengine.compile.fuse_rows`; each has one
declared expansion into the ops above, :func:`expand`, which exact mode, recording, the cost model,
coverage and profiles use, while the runtime runs one C pass per row that gives the expansion's bits)
    ``softmax_rows``  ``p = softmax(x)`` over the last axis: ``m = pairwise_max(x)``; ``e = scale(x,
                      res=m, res_beta=-1)`` + exp table; ``r = gemm(e, ones)`` + reciprocal table;
                      ``p = scale(e, row_scale=r)``.  ``ones`` is a column of ones (e.g. a
                      ``slice_rows`` of a longer one); attrs ``exp``/``recip`` are the two epilogues,
                      ``names`` the expansion's intermediate buffers ``[m, e, r]``.
    ``layernorm_rows`` ``y = scale(c, row_scale=r, col_scale=gamma, bias=beta)`` with ``mean = gemm(x,
                      w_mean)``, ``c = scale(x, res=mean, res_beta=-1)``, ``sq = scale(c, mul=c)``,
                      ``r = gemm(sq, w_var, bias=eps)`` + rsqrt table (``gamma``/``beta`` optional);
                      attrs ``rsqrt`` (the epilogue) and ``names`` ``[mean, c, sq, r]``.

``move``  (pure data movement: no arithmetic, counted separately by ``coverage()`` and the cost model)
    ``reshape`` (a view), ``transpose`` (a copy), ``im2col``, ``pool_windows``, ``patchify``, ``gather``
    (embedding rows), ``slice_rows``; ``im2col`` and ``pool_windows`` with attr ``layout="nhwc"`` read
    channels-last images (:func:`nmengine.movement.im2col`; a ``gemm`` with attr ``conv`` is such a
    convolution's product); and token packing: ``pack`` (``x[B, T, ...]`` -> the rows where
    ``mask`` is nonzero, ``[Ntok, ...]``), ``unpack`` (the inverse, zeros at padding) and ``positions``
    (the slot index of every real token).  Shape inference assumes every token is real (``Ntok = B*T``).

The epilogue ``ep`` of a GEMM-family op is ``{"act": "none" | "relu" | "pwl", "fn": name, "table": key}``:
``relu`` is exact; ``pwl`` evaluates ``program.tables[key]`` in matrixized mode and the exact catalog
function ``fn`` (in float32) in exact mode.  The other difference: a ``gemm`` whose bias was
vertically corrected for the PWL error before it keeps its original bias as ``bias_exact``, which exact
mode uses.  So exact mode is the original network, the reference every accuracy figure compares against.

Layering: this module is the IR and imports nothing above it at load time (only :mod:`nmengine.pwl` and
:mod:`nmengine.spec`).  The methods that need a higher layer -- :meth:`Program.infer_shapes` and
:meth:`Program.coverage` (:mod:`nmengine.shapes`, :mod:`nmengine.coverage`), :meth:`Program.run` and
:meth:`Program.profile` (:mod:`nmengine.runtime`), :meth:`Program.cost` (:mod:`nmengine.cost`) -- are
thin conveniences that import it when called (``tests/test_structure.py`` keeps it so).

Each op also carries ``layer`` (the name of the network layer it came from) and ``what`` (a short
description), used by reports, profiles and the cost model.  Shapes follow from the input shapes by
:meth:`Program.infer_shapes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .pwl import PWLTable
from .spec import InputSpec

__all__ = [
    "Op",
    "Program",
    "ProgramError",
    "GEMM_KINDS",
    "MOVE_KINDS",
    "FUSED_KINDS",
    "ROLES",
    "apply_view",
    "view_shape",
    "resolve_reshape",
    "expand",
]

GEMM_KINDS = ("gemm", "gemm_batched", "scale", "pairwise_max")
FUSED_KINDS = ("softmax_rows", "layernorm_rows")
MOVE_KINDS: tuple[str, ...] = (
    "reshape",
    "transpose",
    "im2col",
    "pool_windows",
    "patchify",
    "gather",
    "slice_rows",
    "pack",
    "unpack",
    "positions",
)
ACTS = ("none", "relu", "pwl")

#: Operand roles each op kind accepts: (required, optional).
ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "gemm": (("a", "b"), ("bias", "bias_row", "res", "bias_exact", "w_scale", "inv_smooth", "a_static")),
    "gemm_batched": (("a", "b"), ("bias", "bias_row", "res")),
    "scale": (("x",), ("mul", "row_scale", "col_scale", "bias", "bias_row", "res")),
    "pairwise_max": (("x",), ()),
    "reshape": (("x",), ()),
    "transpose": (("x",), ()),
    "im2col": (("x",), ()),
    "pool_windows": (("x",), ()),
    "patchify": (("x",), ()),
    "gather": (("table", "ids"), ()),
    "slice_rows": (("x",), ("like",)),
    "pack": (("x", "mask"), ()),
    "unpack": (("x", "mask"), ()),
    "positions": (("mask",), ()),
    "softmax_rows": (("x", "ones"), ()),
    "layernorm_rows": (("x", "w_mean", "w_var", "eps"), ("gamma", "beta")),
}

#: Epilogue attributes of each fused kind (each a PWL epilogue of its expansion).
FUSED_EPILOGUES = {"softmax_rows": ("exp", "recip"), "layernorm_rows": ("rsqrt",)}
#: Intermediate buffers of each fused kind's expansion (``attrs["names"]``).
FUSED_NAMES = {"softmax_rows": 3, "layernorm_rows": 4}


class ProgramError(ValueError):
    """A Program that is inconsistent, or inputs that do not fit it."""


# General tensor plumbing (move kinds added for the ONNX importer): ``concat`` (``x, x1, x2, ...`` along
# ``axis``); ``slice`` (numpy ``x[start:end:step]`` per axis; ``like_ends`` ``[[axis, like_axis], ...]``
# takes an end from the ``like`` operand's shape, so dynamic lengths stay dynamic); ``take`` (``np.take``
# of constant ``indices`` along ``axis``; a scalar index drops the axis); ``pad`` (``pads`` as
# ``[[before, after], ...]`` per axis, ``mode`` ``"constant"`` with ``value``, or ``"edge"``).  Their
# outputs keep the dtype of ``x`` (int64 positions and ids stay int64).
#: Extra operand roles of ``concat`` after ``x``: ``x1``, ``x2``, ... (up to 63 more parts).
CONCAT_ROLES = tuple(f"x{i}" for i in range(1, 64))
PLUMBING_KINDS = ("concat", "slice", "take", "pad")
MOVE_KINDS = MOVE_KINDS + PLUMBING_KINDS
ROLES.update(
    {"concat": (("x",), CONCAT_ROLES), "slice": (("x",), ("like",)), "take": (("x",), ()), "pad": (("x",), ())}
)


@dataclass
class Op:
    """One op: ``out = kind(args...; attrs)``, tagged with the network layer it implements."""

    kind: str
    out: str
    args: dict[str, str]
    attrs: dict[str, Any] = field(default_factory=dict)
    layer: str = ""
    what: str = ""

    @property
    def family(self) -> str:
        return "gemm" if self.kind in GEMM_KINDS or self.kind in FUSED_KINDS else "move"

    @property
    def epilogue(self) -> dict[str, Any]:
        return self.attrs.get("epilogue") or {"act": "none"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "out": self.out,
            "args": dict(self.args),
            "attrs": _jsonable(self.attrs),
            "layer": self.layer,
            "what": self.what,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Op":
        return cls(
            kind=d["kind"],
            out=d["out"],
            args=dict(d["args"]),
            attrs=dict(d.get("attrs", {})),
            layer=d.get("layer", ""),
            what=d.get("what", ""),
        )


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


# ---------------------------------------------------------------------------------------------
# Fused ops: their one declared expansion
# ---------------------------------------------------------------------------------------------
_SOFTMAX_WHATS = ("row bound: max as b + relu(a - b) tree", "exp(x - max)", "1 / row sum", "normalise rows")
_LAYERNORM_WHATS = ("mean by GEMM", "centre", "square (elementwise product)", "rsqrt(variance + eps)", "normalise")


def expand(op: Op) -> list[Op]:
    """The GEMM + PWL (+ movement) ops a fused op stands for; ``[op]`` for any other op.

    The expansion is the reference the fused C kernel reproduces bit for bit (matrixized mode), and
    what exact mode, recording, the cost model and coverage see.
    """
    if op.kind not in FUSED_KINDS:
        return [op]
    a, at, lyr = op.args, op.attrs, op.layer
    whats = list(at.get("whats") or ())
    if op.kind == "softmax_rows":
        m, e, r = at["names"]
        w = whats if len(whats) == 4 else list(_SOFTMAX_WHATS)
        return [
            Op("pairwise_max", m, {"x": a["x"]}, {}, lyr, w[0]),
            Op("scale", e, {"x": a["x"], "res": m}, {"res_beta": -1.0, "epilogue": dict(at["exp"])}, lyr, w[1]),
            Op("gemm", r, {"a": e, "b": a["ones"]}, {"epilogue": dict(at["recip"])}, lyr, w[2]),
            Op("scale", op.out, {"x": e, "row_scale": r}, {}, lyr, w[3]),
        ]
    mean, c, sq, r = at["names"]
    w = whats if len(whats) == 5 else list(_LAYERNORM_WHATS)
    last = {"x": c, "row_scale": r}
    if "gamma" in a:
        last["col_scale"] = a["gamma"]
    if "beta" in a:
        last["bias"] = a["beta"]
    return [
        Op("gemm", mean, {"a": a["x"], "b": a["w_mean"]}, {}, lyr, w[0]),
        Op("scale", c, {"x": a["x"], "res": mean}, {"res_beta": -1.0}, lyr, w[1]),
        Op("scale", sq, {"x": c, "mul": c}, {}, lyr, w[2]),
        Op("gemm", r, {"a": sq, "b": a["w_var"], "bias": a["eps"]}, {"epilogue": dict(at["rsqrt"])}, lyr, w[3]),
        Op("scale", op.out, last, {}, lyr, w[4]),
    ]


# ---------------------------------------------------------------------------------------------
# Views: zero-copy reinterpretations of a buffer for gemm_batched operands
# ---------------------------------------------------------------------------------------------
def resolve_reshape(shape: Sequence[int], spec: Sequence[int]) -> tuple[int, ...]:
    """ONNX-style reshape: 0 copies the input dim at that position, -1 is inferred.

    For an empty input whose zero sits in a copied dim (e.g. a batch of 0 reshaped by ``[0, -1]``), -1
    is what the same reshape gives a batch of 1: the product of the input dims that are not copied."""
    dims = [int(shape[i]) if d == 0 else int(d) for i, d in enumerate(spec)]
    if dims.count(-1) > 1:
        raise ProgramError(f"reshape spec {list(spec)} has more than one -1")
    total = int(np.prod(shape, dtype=np.int64))
    if -1 in dims:
        known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
        if known == 0 and total == 0:
            rest = [int(shape[i]) for i in range(len(shape)) if not (i < len(spec) and spec[i] == 0)]
            explicit = [d for d, sp in zip(dims, spec) if sp not in (0, -1)]
            num, den = int(np.prod(rest, dtype=np.int64)), int(np.prod(explicit, dtype=np.int64))
            if den and num % den == 0:
                dims[dims.index(-1)] = num // den
                return tuple(dims)
        if known == 0 or total % known:
            raise ProgramError(f"cannot reshape {tuple(shape)} to {list(spec)}")
        dims[dims.index(-1)] = total // known
    if int(np.prod(dims, dtype=np.int64)) != total:
        raise ProgramError(f"cannot reshape {tuple(shape)} to {list(spec)}")
    return tuple(dims)


def view_shape(shape: Sequence[int], view: Mapping[str, Any] | None) -> tuple[int, ...]:
    """Shape of :func:`apply_view` without touching data."""
    shape = tuple(shape)
    if not view:
        return shape
    if "reshape" in view:
        shape = resolve_reshape(shape, view["reshape"])
    if "select" in view:
        axis, _ = view["select"]
        shape = shape[:axis] + shape[axis + 1 :]
    if "perm" in view:
        shape = tuple(shape[i] for i in view["perm"])
    return shape


def apply_view(x: np.ndarray, view: Mapping[str, Any] | None) -> np.ndarray:
    """Apply ``{"reshape": dims, "select": [axis, index], "perm": axes}`` (each optional, in that order)."""
    if not view:
        return x
    if "reshape" in view:
        x = x.reshape(resolve_reshape(x.shape, view["reshape"]))
    if "select" in view:
        axis, idx = view["select"]
        x = np.take(x, idx, axis=axis) if not x.flags.c_contiguous else x[(slice(None),) * axis + (idx,)]
    if "perm" in view:
        x = x.transpose(view["perm"])
    return x


# ---------------------------------------------------------------------------------------------
# Program
# ---------------------------------------------------------------------------------------------
class Program:
    """A matrixized network: ops over named buffers, constant tensors and PWL tables.

    Build one with :func:`nmengine.compile`; run it with :meth:`run`; save it with :func:`nmengine.save`.
    """

    def __init__(
        self,
        inputs: Mapping[str, InputSpec],
        outputs: Sequence[str],
        ops: Iterable[Op],
        constants: Mapping[str, np.ndarray],
        tables: Mapping[str, PWLTable],
        *,
        name: str = "program",
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.inputs: dict[str, InputSpec] = dict(inputs)
        self.outputs: list[str] = list(outputs)
        self.ops: list[Op] = list(ops)
        self.constants: dict[str, np.ndarray] = {}
        for k, v in constants.items():
            arr = np.require(v, requirements="C")
            if arr.dtype not in (np.float32, np.int64, np.int8):  # int8: quantized weights
                arr = arr.astype(np.float32)
            arr.setflags(write=False)
            self.constants[k] = arr
        self.tables: dict[str, PWLTable] = dict(tables)
        self.name = name
        self.meta: dict[str, Any] = dict(meta or {})
        self.validate()
        self._runtime: Any = None
        self._session: Any = None
        self._expanded: Program | None = None

    # -- structure ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Check that every op is known and reads only inputs, constants or earlier outputs."""
        defined = set(self.inputs) | set(self.constants)
        clash = set(self.inputs) & set(self.constants)
        if clash:
            raise ProgramError(f"names used both as input and constant: {sorted(clash)}")
        for i, op in enumerate(self.ops):
            where = f"op {i} ({op.kind} -> {op.out!r}, layer {op.layer!r})"
            if op.kind not in ROLES:
                raise ProgramError(f"{where}: unknown op kind; expected one of {sorted(ROLES)}")
            req, opt = ROLES[op.kind]
            missing = [r for r in req if r not in op.args]
            extra = [r for r in op.args if r not in req + opt]
            if missing or extra:
                raise ProgramError(f"{where}: operands {sorted(op.args)}; required {list(req)}, optional {list(opt)}")
            for role, name in op.args.items():
                if name not in defined:
                    raise ProgramError(f"{where}: operand {role}={name!r} is not an input, constant or earlier output")
            if op.kind in FUSED_KINDS:
                names = op.attrs.get("names")
                if not isinstance(names, (list, tuple)) or len(names) != FUSED_NAMES[op.kind]:
                    raise ProgramError(
                        f"{where}: attrs['names'] must list the {FUSED_NAMES[op.kind]} "
                        f"intermediate buffers of its expansion"
                    )
                for role in FUSED_EPILOGUES[op.kind]:
                    ep = op.attrs.get(role) or {}
                    if ep.get("act") != "pwl" or ep.get("table") not in self.tables or not ep.get("fn"):
                        raise ProgramError(
                            f"{where}: attrs[{role!r}] must be a PWL epilogue with a table "
                            f"of this program and its exact function 'fn'"
                        )
            ep = op.epilogue
            if ep.get("act", "none") not in ACTS:
                raise ProgramError(f"{where}: epilogue act {ep.get('act')!r} not in {ACTS}")
            if ep.get("act") == "pwl":
                if ep.get("table") not in self.tables:
                    raise ProgramError(f"{where}: PWL table {ep.get('table')!r} is missing")
                if not ep.get("fn"):
                    raise ProgramError(f"{where}: PWL epilogue needs the exact function name 'fn'")
            if op.out in self.inputs or op.out in self.constants:
                raise ProgramError(f"{where}: output overwrites an input or constant")
            defined.add(op.out)
        for out in self.outputs:
            if out not in defined:
                raise ProgramError(f"program output {out!r} is never produced")

    def layers(self) -> list[str]:
        """Names of the original network layers, in program order."""
        seen: dict[str, None] = {}
        for op in self.ops:
            seen.setdefault(op.layer, None)
        return list(seen)

    def tables_by_layer(self) -> dict[str, dict[str, PWLTable]]:
        """``{layer: {role: table}}`` for the approximation-aware trainer (keys are ``"layer:role"``)."""
        out: dict[str, dict[str, PWLTable]] = {}
        for key, table in self.tables.items():
            layer, _, role = key.rpartition(":")
            out.setdefault(layer, {})[role] = table
        return out

    def bias_shifts(self) -> dict[str, np.ndarray]:
        """``{layer: corrected bias - original bias}``: the vertical bias corrections of this program."""
        out: dict[str, np.ndarray] = {}
        for op in self.ops:
            if "bias_exact" in op.args:
                delta = self.constants[op.args["bias"]].astype(np.float64) - self.constants[op.args["bias_exact"]]
                out[op.layer] = delta
        return out

    @property
    def has_fused(self) -> bool:
        """True when some op is a fused row kernel (see :func:`expand`)."""
        return any(op.kind in FUSED_KINDS for op in self.ops)

    def expanded(self) -> "Program":
        """This program with every fused op replaced by its expansion (itself when there is none).

        Shares the constants and tables; cached."""
        if not self.has_fused:
            return self
        if self._expanded is None:
            ops = [e for op in self.ops for e in expand(op)]
            self._expanded = Program(
                self.inputs, self.outputs, ops, self.constants, self.tables, name=self.name, meta=self.meta
            )
        return self._expanded

    def infer_shapes(self, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """Shape of every buffer (inputs, constants and op outputs) for the given input shapes."""
        from .shapes import infer_shapes

        return infer_shapes(self, input_shapes)

    # -- execution ----------------------------------------------------------------------------
    @property
    def runtime(self) -> Any:
        """The op-by-op interpreter (:class:`nmengine.runtime.Runtime`): exact mode, recording, profiles."""
        if self._runtime is None:
            from .runtime import Runtime

            self._runtime = Runtime(self)
        return self._runtime

    @property
    def session(self):
        """The default :class:`nmengine.session.Session` of this program (process thread settings)."""
        if self._session is None:
            from .session import Session

            self._session = Session(self)
        return self._session

    def run(self, inputs: Any, mode: str = "matrixized") -> Any:
        """Run the program; ``mode`` is ``"matrixized"`` (PWL tables) or ``"exact"`` (true functions).

        ``inputs`` is a dict name -> array, or one array when the program has one input.  Returns one
        array when the program has one output, else a dict name -> array.  Safe to call from many
        threads at once.  A convenience over :attr:`session` (matrixized) and :attr:`runtime` (exact).
        """
        if mode == "matrixized":
            return self.session.run(inputs)
        return self.runtime.run(inputs, mode=mode)

    def profile(self, inputs: Any, mode: str = "matrixized", repeat: int = 1) -> list[dict[str, Any]]:
        """Per-op wall time (seconds, best of ``repeat``) of the expanded program (see :meth:`expanded`),
        op by op, with the op's kind, layer and description."""
        return self.runtime.profile(inputs, mode=mode, repeat=repeat)

    def coverage(self, input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
        """Share of ops (and, given input shapes, of FLOPs) that run as GEMM + PWL (see :mod:`nmengine.coverage`)."""
        from .coverage import program_coverage

        return program_coverage(self.expanded(), input_shapes)  # fused ops count as their expansion

    def cost(self, config: Any = None, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Any:
        """Accelerator cost report, a :class:`nmengine.cost.CostReport` (see :mod:`nmengine.cost`), of
        the expanded program."""
        from .cost import cost_report

        return cost_report(self.expanded(), config, input_shapes)

    def summary(self) -> str:
        """A one-line-per-op listing."""
        lines = [
            f"Program {self.name!r}: {len(self.ops)} ops, {len(self.constants)} constants, "
            f"{len(self.tables)} PWL tables; inputs {list(self.inputs)} -> outputs {self.outputs}"
        ]
        for i, op in enumerate(self.ops):
            ep = op.epilogue
            act = (
                "" if ep.get("act", "none") == "none" else f" +{ep['act']}" + (f"({ep['fn']})" if ep.get("fn") else "")
            )
            args = ", ".join(f"{k}={v}" for k, v in op.args.items())
            lines.append(f"{i:4d} {op.kind:<13s} {op.out:<28s} <- {args}{act}   [{op.layer}] {op.what}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        n_move = sum(op.family == "move" for op in self.ops)
        return (
            f"Program({self.name!r}, {len(self.ops)} ops ({len(self.ops) - n_move} GEMM+PWL, {n_move} movement), "
            f"{len(self.tables)} PWL tables, inputs={list(self.inputs)}, outputs={self.outputs})"
        )
