"""Graph passes before and after lowering.

Before lowering (on a copy of the ModelSpec, all arithmetic in float64):

* **BatchNorm folding**: ``conv2d -> batchnorm2d`` (the conv output used by nothing else) becomes one
  conv with ``W' = W * g`` and ``b' = (b - mean) * g + beta``, ``g = gamma / sqrt(var + eps)``.
* **LayerNorm affine folding**: when every consumer of a LayerNorm is a ``linear`` or ``mhsa`` layer
  (a pre-LN transformer), ``gamma`` scales the consumers' input columns and ``beta`` goes into their
  bias (``W' = W diag(gamma)``, ``b' = b + W beta``); the LayerNorm keeps only its normalisation.

After lowering (on the Program's op list):

* **Residual fusion**: an ``add`` of a GEMM result and another value becomes that GEMM's residual
  epilogue (``C = A @ B + R``), when the GEMM result has no other use and the other value already exists
  when the GEMM runs.
* **Activation fusion**: an activation whose input is a GEMM result used by nothing else becomes that
  GEMM's epilogue (bias -> residual -> PWL, applied while the tile is in registers).

Both fusions look through one ``reshape`` between the GEMM and its consumer.
"""

from __future__ import annotations

import copy
from collections import defaultdict

import numpy as np

from ..program import Op
from ..spec import Layer, ModelSpec

__all__ = ["fold_batchnorm", "fold_layernorm_affine", "fuse"]


def _consumers(spec: ModelSpec) -> dict[str, list[Layer]]:
    uses: dict[str, list[Layer]] = defaultdict(list)
    for lyr in spec.layers:
        for x in lyr.inputs:
            uses[x].append(lyr)
    return uses


def _f64(w: np.ndarray) -> np.ndarray:
    return np.asarray(w, dtype=np.float64)


def fold_batchnorm(spec: ModelSpec) -> ModelSpec:
    """Return a copy of ``spec`` with every foldable BatchNorm merged into the conv before it."""
    uses = _consumers(spec)
    producer = {lyr.output: lyr for lyr in spec.layers}
    drop: set[str] = set()
    new_layers: dict[str, Layer] = {}
    for bn in spec.layers:
        if bn.op != "batchnorm2d":
            continue
        conv = producer.get(bn.inputs[0])
        if conv is None or conv.op != "conv2d" or len(uses[conv.output]) != 1 or conv.output in spec.outputs:
            continue
        eps = float(bn.params.get("eps", 1e-5))
        g = _f64(bn.weights["weight"]) / np.sqrt(_f64(bn.weights["running_var"]) + eps)
        w = _f64(conv.weights["weight"]) * g[:, None, None, None]
        b0 = _f64(conv.weights["bias"]) if "bias" in conv.weights else np.zeros(w.shape[0])
        b = (b0 - _f64(bn.weights["running_mean"])) * g + _f64(bn.weights["bias"])
        folded = Layer(
            "conv2d",
            conv.name,
            list(conv.inputs),
            bn.output,
            dict(conv.params),
            {"weight": w.astype(np.float32), "bias": b.astype(np.float32)},
        )
        folded.params["folded"] = list(conv.params.get("folded", [])) + [bn.name]
        new_layers[conv.name] = folded
        drop.add(bn.name)
    if not drop:
        return spec
    layers = [new_layers.get(lyr.name, lyr) for lyr in spec.layers if lyr.name not in drop]
    return ModelSpec(spec.inputs, layers, spec.outputs, name=spec.name, meta=spec.meta)


def fold_layernorm_affine(spec: ModelSpec) -> ModelSpec:
    """Return a copy of ``spec`` with LayerNorm gamma/beta folded into consuming linear/mhsa layers."""
    uses = _consumers(spec)
    layers = [copy.copy(lyr) for lyr in spec.layers]
    for lyr in layers:
        lyr.weights = dict(lyr.weights)
        lyr.params = dict(lyr.params)
    by_name = {lyr.name: lyr for lyr in layers}
    changed = False
    for ln in layers:
        if ln.op != "layernorm" or ln.output in spec.outputs:
            continue
        consumers = [by_name[c.name] for c in uses[ln.output]]
        if not consumers or any(c.op not in ("linear", "mhsa") or c.inputs[0] != ln.output for c in consumers):
            continue
        gamma, beta = _f64(ln.weights["weight"]), _f64(ln.weights["bias"])
        if np.all(gamma == 1) and np.all(beta == 0):
            continue
        for c in consumers:
            pairs = [("weight", "bias")] if c.op == "linear" else [(f"{p}_weight", f"{p}_bias") for p in "qkv"]
            for wn, bn in pairs:
                w = _f64(c.weights[wn])
                b = _f64(c.weights[bn]) if bn in c.weights else np.zeros(w.shape[0])
                c.weights[wn] = (w * gamma[None, :]).astype(np.float32)
                c.weights[bn] = (b + w @ beta).astype(np.float32)
        ln.weights["weight"] = np.ones_like(ln.weights["weight"], dtype=np.float32)
        ln.weights["bias"] = np.zeros_like(ln.weights["bias"], dtype=np.float32)
        ln.params["affine_folded_into"] = [c.name for c in consumers]
        changed = True
    if not changed:
        return spec
    return ModelSpec(spec.inputs, layers, spec.outputs, name=spec.name, meta=spec.meta)


# ---------------------------------------------------------------------------------------------
# Program-level fusion
# ---------------------------------------------------------------------------------------------
def _uses(ops: list[Op], outputs: list[str]) -> dict[str, int]:
    n: dict[str, int] = defaultdict(int)
    for op in ops:
        for v in op.args.values():
            n[v] += 1
    for o in outputs:
        n[o] += 1
    return n


def _producer_through_reshape(ops: list[Op], idx: dict[str, int], name: str, uses: dict[str, int]):
    """(gemm op, reshape op or None) producing ``name``, where each intermediate has one use."""
    i = idx.get(name)
    if i is None:
        return None, None
    op = ops[i]
    if op.kind == "reshape":
        j = idx.get(op.args["x"])
        if j is None or uses[op.args["x"]] != 1:
            return None, None
        return ops[j], op
    return op, None


def fuse(ops: list[Op], outputs: list[str], constants: set[str]) -> list[Op]:
    """Fuse residual adds and activations into the GEMM epilogues that produce their inputs."""
    ops = [copy.deepcopy(op) for op in ops]
    changed = True
    while changed:
        changed = False
        uses = _uses(ops, outputs)
        idx = {op.out: i for i, op in enumerate(ops)}
        for s_i, s in enumerate(ops):
            if s.kind != "scale":
                continue
            if s.attrs.get("add") and _try_fuse_add(ops, idx, uses, s_i, s, outputs, constants):
                changed = True
                break
            if _is_pure_activation(s) and _try_fuse_act(ops, idx, uses, s, outputs):
                changed = True
                break
    return ops


def _is_pure_activation(s: Op) -> bool:
    return (
        set(s.args) == {"x"}
        and s.epilogue.get("act", "none") != "none"
        and s.attrs.get("alpha", 1.0) == 1.0
        and s.attrs.get("beta", 0.0) == 0.0
    )


def _fusable_producer(p: Op | None, uses: dict[str, int], outputs: list[str]) -> bool:
    return (
        p is not None
        and p.kind in ("gemm", "gemm_batched", "scale")
        and p.epilogue.get("act", "none") == "none"
        and uses[p.out] == 1
        and p.out not in outputs
    )


def _absorb(ops: list[Op], p: Op, r: Op | None, s: Op, what: str) -> None:
    """``s`` now happens inside GEMM ``p``: its result is written where ``s`` wrote (through ``r``)."""
    p.attrs.setdefault("fused_layers", []).append(s.layer)
    p.what = f"{p.what} + {what}"
    if r is None:
        p.out = s.out
    else:
        r.out = s.out
    ops.remove(s)


def _try_fuse_act(ops, idx, uses, s: Op, outputs) -> bool:
    p, r = _producer_through_reshape(ops, idx, s.args["x"], uses)
    if not _fusable_producer(p, uses, outputs) or (r is not None and uses[r.out] != 1):
        return False
    p.attrs["epilogue"] = dict(s.epilogue)
    _absorb(ops, p, r, s, s.epilogue.get("fn") or s.epilogue["act"])
    return True


def _try_fuse_add(ops, idx, uses, s_i: int, s: Op, outputs, constants) -> bool:
    for mine, other in (("x", "res"), ("res", "x")):
        p, r = _producer_through_reshape(ops, idx, s.args[mine], uses)
        if p is None or p.kind not in ("gemm", "gemm_batched") or "res" in p.args:
            continue
        if not _fusable_producer(p, uses, outputs) or (r is not None and uses[r.out] != 1):
            continue
        if p.attrs.get("out_perm"):
            continue
        o = s.args[other]
        if o not in constants and o in idx and idx[o] >= idx[p.out]:
            continue  # the other operand does not exist yet when the GEMM runs
        p.args["res"] = o
        if p.kind == "gemm_batched" and r is not None:
            # the residual has the consumer's (reshaped) shape: view it as the GEMM output
            p.attrs["res_view"] = {"reshape": r.attrs.get("inverse", None) or [0, 0, -1]}
        _absorb(ops, p, r, s, "residual")
        return True
    return False
