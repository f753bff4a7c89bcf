"""ONNX graph -> the compiler's input (:class:`~nmengine.compile.lowered.LoweredGraph`) -> Program.

Steps of :func:`to_spec`:

1. read and check the file (:mod:`.loader`);
2. rewrite exporter patterns into single operators (:mod:`.patterns`: BatchNorm into Conv, GELU in
   erf and tanh form, SiLU, decomposed LayerNorm, ``x / sqrt(v)``);
3. list every operator without a rule, with node names and the opset, and raise
   :class:`~.errors.UnsupportedModelError` before any lowering;
4. walk the nodes in order: a node whose inputs are all known constants is folded (evaluated at
   import time by the ONNX reference implementation; shape arithmetic keeps free dims symbolic), every
   other node is lowered by its rule (:mod:`.ops_nn`, :mod:`.ops_math`, :mod:`.ops_shape`) onto the
   Program's GEMM-family and data-movement ops.

:func:`load` hands the result to :func:`nmengine.compile.lowered.compile_lowered` (the compiler's fusion,
calibration and PWL fitting, steps 3-5 of ``nm.compile``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from ..compile.lowered import LoweredGraph, compile_lowered
from ..program import Program
from ..spec import InputSpec, Layer
from . import ops_math, ops_nn, ops_shape  # noqa: F401  (register the rules)
from .context import RULES, Ctx, Unsupported, Val, const, new_sym_for, tensor
from .dims import Sym
from .errors import OnnxImportError, UnsupportedModelError
from .loader import MAX_FOLDED_ELEMENTS, initializer_arrays, read_model
from .patterns import rewrite

__all__ = ["import_summary", "load", "to_spec"]

DEFAULT_DOMAINS = ("", "ai.onnx", "nmengine")

#: Ops never folded even with constant inputs (none today: all supported ops are deterministic).
NO_FOLD: set[str] = set()


def _node_names(nodes: list[onnx.NodeProto]) -> None:
    seen: set[str] = set()
    for i, n in enumerate(nodes):
        name = n.name or f"{n.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        seen.add(name)
        n.name = name


def _scan_unsupported(nodes: list[onnx.NodeProto], opset: int) -> None:
    bad = []
    for n in nodes:
        if n.domain not in DEFAULT_DOMAINS:
            bad.append((f"{n.domain}.{n.op_type}", n.name, "custom domain"))
        elif n.op_type not in RULES:
            bad.append((n.op_type, n.name, ""))
    if bad:
        raise UnsupportedModelError(bad, opset)


def _fold(node: onnx.NodeProto, ins: list[Val | None], opset: int) -> list[Val] | None:
    """Evaluate a node whose inputs are plain constants; None when it cannot be folded here."""
    if node.op_type in NO_FOLD or node.domain == "nmengine":
        return None
    feeds: dict[str, np.ndarray] = {}
    for name, v in zip(node.input, ins):
        if v is None:
            continue
        if not v.is_const or v.array.dtype == object or tuple(v.array.shape) != tuple(v.shape):
            return None
        feeds[name] = v.array
    from onnx.reference import ReferenceEvaluator

    try:
        outs = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - the reference evaluator raises any type on bad input
        raise OnnxImportError(
            f"node {node.name!r} ({node.op_type}): cannot evaluate its constant inputs: {e}"
        ) from None
    res = []
    for o in outs:
        a = np.asarray(o)
        if a.size > MAX_FOLDED_ELEMENTS:
            raise OnnxImportError(f"node {node.name!r} ({node.op_type}) folds to {a.size:,} elements: too large")
        res.append(const(a))
    return res


def _input_val(inp: onnx.ValueInfoProto, syms: dict[str, Sym]) -> tuple[Val, InputSpec]:
    tt = inp.type.tensor_type
    shape: list[Any] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            if d.dim_value < 0:
                raise OnnxImportError(f"input {inp.name!r}: negative dim {d.dim_value}")
            shape.append(int(d.dim_value))
        else:
            shape.append(new_sym_for(d.dim_param, syms))
    if tt.elem_type == TensorProto.FLOAT:
        dtype, kind = "float32", "f"
    else:
        dtype, kind = "int64", ("b" if tt.elem_type == TensorProto.BOOL else "i")
    spec = InputSpec(tuple(None if isinstance(d, Sym) else d for d in shape), dtype)
    return tensor(inp.name, tuple(shape), kind), spec


#: What a rule or rewrite raises on a graph that passed the checker but is inconsistent (attributes of
#: the wrong length, shapes that do not fit, undecodable strings): reported as OnnxImportError.
MALFORMED = (ValueError, IndexError, KeyError, TypeError, ArithmeticError, AttributeError, UnicodeDecodeError)


def to_spec(source: Any, *, max_len: int = 1024) -> LoweredGraph:
    """Import an ONNX model (path, bytes or ``onnx.ModelProto``) as the compiler's input.

    ``max_len`` bounds dynamic sequence lengths where the importer needs a constant of that size
    (position rows, causal masks, ones columns).  Raises :class:`UnsupportedModelError` listing every
    unsupported operator, :class:`OnnxImportError` for malformed models.
    """
    if not isinstance(source, (str, bytes, bytearray, memoryview, os.PathLike, onnx.ModelProto)):
        raise TypeError(f"expected a path, bytes or onnx.ModelProto, got {type(source).__name__}")
    current = [""]  # the node being lowered, for the message
    try:
        return _to_spec(source, max_len, current)
    except (OnnxImportError, FileNotFoundError):
        raise
    except MALFORMED as e:
        where = f" at node {current[0]}" if current[0] else ""
        raise OnnxImportError(f"the model is inconsistent{where}: {type(e).__name__}: {e}") from None


def _to_spec(source: Any, max_len: int, current: list[str]) -> LoweredGraph:
    model, what = read_model(source)
    opset = _opset(model)
    g = model.graph
    consts = initializer_arrays(model, what)
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in g.node]
    _node_names(nodes)
    original: dict[str, int] = {}
    for n in nodes:
        original[n.op_type] = original.get(n.op_type, 0) + 1
    nodes = rewrite(nodes, consts, [o.name for o in g.output])
    _scan_unsupported(nodes, opset)

    cx = Ctx(opset, max_len)
    vals: dict[str, Val] = {k: const(v) for k, v in consts.items()}
    syms: dict[str, Sym] = {}
    inputs: dict[str, InputSpec] = {}
    for inp in g.input:
        if inp.name in consts:
            continue  # an initializer listed as input (old exporters): a constant
        v, spec = _input_val(inp, syms)
        vals[inp.name] = v
        inputs[inp.name] = spec
        cx.record_dims(inp.name, v.shape)
    counts: dict[str, dict[str, Any]] = {}
    problems: list[tuple[str, str, str]] = []
    for node in nodes:
        ins: list[Val | None] = []
        for name in node.input:
            if not name:
                ins.append(None)
            elif name not in vals:
                raise OnnxImportError(
                    f"{what}: node {node.name!r} ({node.op_type}) reads {name!r}, which no earlier node produces"
                )
            else:
                ins.append(vals[name])
        entry = counts.setdefault(
            node.op_type,
            {"count": 0, "folded": 0, "how": RULES[node.op_type].how, "tables": RULES[node.op_type].tables},
        )
        entry["count"] += 1
        cx.node = node
        current[0] = f"{node.name!r} ({node.op_type})"
        cx.layer = Layer(node.op_type, node.name, [], node.output[0] if node.output else "")
        outs = _fold(node, ins, opset)
        if outs is not None:
            entry["folded"] += 1
        else:
            try:
                outs = RULES[node.op_type].fn(cx, node, ins)
            except Unsupported as e:
                problems.append((node.op_type, node.name, str(e)))
                break
            if all(v.is_const for v in outs):
                entry["folded"] += 1
        for name, v in zip(node.output, outs):
            if name:
                vals[name] = v
                if not v.is_const:
                    cx.record_dims(v.name, v.pshape)
    current[0] = ""
    if problems:
        raise UnsupportedModelError(problems, opset)
    for t, n in original.items():  # nodes the pattern rewrites absorbed (BatchNorm, GELU pieces, ...)
        entry = counts.setdefault(
            t, {"count": 0, "folded": 0, "how": RULES[t].how if t in RULES else "", "tables": "-"}
        )
        if n > entry["count"]:
            entry["fused"] = n - entry["count"]
            entry["count"] = n
    outputs = []
    for o in g.output:
        if o.name not in vals:
            raise OnnxImportError(f"{what}: graph output {o.name!r} is never produced")
        cx.node = None
        cx.layer = Layer("output", o.name, [], o.name)
        v = cx.dense(vals[o.name])
        if v.name != o.name or o.name in inputs or o.name in cx.b.constants:
            cx.op("reshape", o.name, {"x": v.name}, "graph output", shape=[0] * len(v.shape))
        outputs.append(o.name)
    meta = {
        "onnx": {
            "source": what,
            "opset": opset,
            "producer": f"{model.producer_name} {model.producer_version}".strip(),
            "ops": counts,
        }
    }
    name = g.name or "onnx_model"
    return LoweredGraph(inputs, outputs, cx.b.ops, cx.b.constants, cx.b.tables, name=name, meta=meta)


def _opset(model: onnx.ModelProto) -> int:
    from .loader import model_opset

    return model_opset(model)


def _synthesise(graph: LoweredGraph, n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, spec in graph.inputs.items():
        shape = [d if d is not None else (2 if i == 0 else 8) for i, d in enumerate(spec.shape)]
        if spec.dtype == "int64":
            out[name] = rng.integers(0, 2, size=shape).astype(np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def load(
    source: Any,
    *,
    calibration: Any = None,
    segments: int | None = 32,
    method: str = "optimized",
    exact: bool = False,
    max_len: int = 1024,
    **compile_opts: Any,
) -> Program:
    """Import an ONNX model and compile it to a :class:`~nmengine.program.Program`.

    ``calibration`` is a dict of named arrays, an iterable of such dicts, or None (then the importer
    synthesises standard-normal inputs from the declared shapes, with a warning).  ``exact=True`` skips
    calibration (the program is meant for ``mode="exact"``; tables stay on default ranges).  Other
    keyword arguments (``max_error``, ``functions``, ``bias_correction``) mean what they mean for
    :func:`nmengine.compile`.  Inputs and outputs keep the ONNX names.
    """
    graph = to_spec(source, max_len=max_len)
    # a graph without PWL tables needs no calibration, unless the int8 pass measures its GEMMs on it
    if exact or (not graph.requests and compile_opts.get("precision", "float32") == "float32"):
        calib = None
    elif calibration is None:
        warnings.warn(
            "nm.onnx.load: no calibration data; PWL ranges come from synthesised standard-normal "
            "inputs (random 0/1 for integer inputs). Pass calibration= with real inputs for accuracy.",
            stacklevel=2,
        )
        calib = [_synthesise(graph)]
    elif isinstance(calibration, Mapping):
        calib = [dict(calibration)]
    elif isinstance(calibration, Iterable):
        calib = [dict(c) for c in calibration]
    else:
        raise TypeError(
            f"calibration must be a dict of arrays, an iterable of dicts, or None; got {type(calibration).__name__}"
        )
    return compile_lowered(graph, calib, segments=segments, method=method, **compile_opts)


def import_summary(program_or_graph: Any) -> str:
    """The op mapping table of an import: ONNX op type -> count -> how it was matrixized."""
    meta = program_or_graph.meta.get("onnx", {})
    ops = meta.get("ops", {})
    lines = [
        f"ONNX import of {meta.get('source', '?')} (opset {meta.get('opset', '?')})",
        f"  {'op type':<22s} {'count':>5s} {'folded':>6s}  how it runs",
    ]
    for t, e in sorted(ops.items(), key=lambda kv: -kv[1]["count"]):
        fused = e.get("fused", 0)
        if e["folded"] == e["count"]:
            how = "folded at import"
        elif fused == e["count"]:
            how = "fused at import into " + (
                "the Conv weights"
                if t == "BatchNormalization"
                else "a pattern op (GELU, SiLU, LayerNorm, rsqrt: see the Nm* rows)"
            )
        else:
            how = e["how"] + (f" ({fused} fused into patterns)" if fused else "")
        lines.append(
            f"  {t:<22s} {e['count']:>5d} {e['folded']:>6d}  {how}"
            + (f"  [PWL: {e['tables']}]" if e.get("tables", "-") != "-" and e["folded"] + fused < e["count"] else "")
        )
    return "\n".join(lines)
