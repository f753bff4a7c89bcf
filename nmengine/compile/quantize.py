"""The int8 pass: every weight GEMM of a Program becomes an int8 x int8 -> int32 GEMM, chosen by measured error.

``quantize(program, calibration)`` rewrites each ``gemm`` op whose ``b`` is a constant ``(K, N)`` weight
matrix (``K >= MIN_K``, ``N >= 2``: the LayerNorm / softmax reductions against a column of ones stay float)
into an int8 op.  That includes convolutions in channels-last form (:mod:`.channels_last`: ``gemm`` ops
with ``attrs["conv"]``, the im2col rows times the ``(kh*kw*Ci, Co)`` weights, so activation scales are
per output pixel and weight scales per output channel); the compiler runs that rewrite before this pass
under ``precision="int8"``.  Convolutions still in NCHW form (``gemm_batched`` with the weights on the
left: grouped / depthwise ones, and every conv of a program the rewrite leaves NCHW) stay float32, as do
GEMMs with ``K < MIN_K``; a conv that stays float32 says why in ``attrs["quant"]``.

* weights: symmetric int8 per output channel (one scale per column), or per (K group, column);
* activations: int8 per row (and K group) with the scale computed at run time ("dynamic"), or one
  scale per K group fixed from calibration ("static");
* optionally SmoothQuant-style migration: activation column k is divided by
  ``s_k = max|A_k|^alpha / max|W_k|^(1 - alpha)`` (from calibration) and weight row k multiplied by it.

Candidates are tried from the cheapest (one group, no smoothing) to the most accurate (K groups of 64);
for each GEMM the first whose relative error on the calibration rows is at most ``tolerance`` wins
(else the most accurate one); a GEMM whose most accurate candidate still has an error above
``max_error`` stays float32 (``attrs["quant"]["precision"] == "float32"`` with the measured errors).
The error is measured by running the real int8 kernel on the recorded activations against the float64
product: ``||Y_q - Y|| / ||Y||`` over the whole output.

The op keeps kind ``gemm`` (coverage, shapes, cost and reports see a GEMM) with
``attrs["precision"] = "int8"`` and ``attrs["quant"]`` (group, activations, smoothing alpha, the measured
error of every candidate); its ``b`` becomes the int8 constant and new operands carry ``w_scale``
(ngroups, N) float32, optionally ``inv_smooth`` (K,) and ``a_static`` (ngroups,).  Exact mode runs such
an op in float with the dequantized weights (the quantized weights are the model's weights now).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from ..program import Op, Program

__all__ = [
    "quantize",
    "Candidate",
    "DEFAULT_CANDIDATES",
    "DEFAULT_ALPHA",
    "quantize_weights",
    "smoothing_factors",
    "eligible",
    "PRECISIONS",
    "QuantizationError",
]

PRECISIONS = ("float32", "int8")

#: Smallest K of a GEMM worth quantizing (N must be >= 2: reductions against a ones column have N = 1).
MIN_K = 16

#: Rows of recorded activations kept per GEMM (a seeded random subset beyond this).
MAX_ROWS = 2048

#: A GEMM whose best int8 candidate has a larger relative output error on the calibration rows stays
#: float32 (the ladder's last candidate is at ~0.006 on MiniLM's GEMMs and ResNet's convolutions).
MAX_ERROR = 0.05


class QuantizationError(ValueError):
    """The int8 pass cannot quantize this program with these inputs (what was expected, what came)."""


@dataclass(frozen=True)
class Candidate:
    """One int8 configuration of a GEMM: K group (None: one scale per row / column), activation
    scales ("dynamic" per row at run time, or "static" from calibration), SmoothQuant alpha or None."""

    group: int | None = None
    activations: str = "dynamic"
    smooth: float | None = None

    @property
    def name(self) -> str:
        g = f"g{self.group}" if self.group else "row"
        s = f"+smooth{self.smooth:g}" if self.smooth is not None else ""
        return f"{self.activations}-{g}{s}"


#: Cheapest first: one group (no per-group float work in the kernel), then smoothing, then K groups.
#: Groups of 32 are not in the default ladder: they cost about twice the GEMM time of groups of 64
#: (half-depth AMX tile products and twice the per-group conversions) for a small fidelity gain on
#: MiniLM (docs/int8.md); pass ``candidates=`` with ``Candidate(32, "dynamic", DEFAULT_ALPHA)`` to allow them.
#: Smoothing alpha 0.6: on MiniLM's calibration rows it gives the lowest mean relative output error at
#: every group size (row / 128 / 64: 0.0106 / 0.0078 / 0.0067 against 0.0120 / 0.0082 / 0.0070 for
#: 0.5 and 0.0108 / 0.0079 / 0.0068 for 0.7), and the lowest error on 14 of its 24 GEMMs.
DEFAULT_ALPHA = 0.6
DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate(None, "dynamic", None),
    Candidate(None, "dynamic", DEFAULT_ALPHA),
    Candidate(128, "dynamic", DEFAULT_ALPHA),
    Candidate(64, "dynamic", DEFAULT_ALPHA),
)


def quantize_weights(w: np.ndarray, group: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights: ``(q (K, N) int8, scale (ngroups, N) float32)`` with
    ``scale = max |w| / 127`` over each (K group, column) (1 where the group is all zeros) and
    ``q = round_half_even(w / scale)`` clamped to [-127, 127]."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"quantize_weights expects a 2-D (K, N) matrix, got shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise QuantizationError("weights contain NaN or Inf")
    K = w.shape[0]
    G = group if group and group < K else max(K, 1)
    ng = max(1, -(-K // G))
    scale = np.ones((ng, w.shape[1]), np.float32)
    for g in range(ng):
        blk = w[g * G : (g + 1) * G]
        if blk.size:
            m = np.abs(blk).max(axis=0) / np.float32(127)
            scale[g] = np.where(m > 0, m, np.float32(1))
    rows = np.repeat(scale, G, axis=0)[:K]
    q = np.clip(np.rint(w / rows), -127, 127).astype(np.int8)
    return q, scale


def smoothing_factors(act_absmax: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    """SmoothQuant factors ``s_k = max|A_k|^alpha / max|W_k,:|^(1-alpha)`` (float32, (K,)); rows or
    columns that are all zero get 1."""
    wmax = np.abs(np.asarray(w, np.float64)).max(axis=1)
    amax = np.asarray(act_absmax, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = amax**alpha / wmax ** (1.0 - alpha)
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    return s.astype(np.float32)


def eligible(program: Program, op: Op) -> bool:
    """Whether ``op`` is a weight GEMM the pass quantizes."""
    if op.kind != "gemm" or op.attrs.get("precision", "float32") != "float32":
        return False
    if op.attrs.get("trans_a") or op.attrs.get("trans_b"):
        return False
    b = program.constants.get(op.args["b"])
    return b is not None and b.ndim == 2 and b.dtype == np.float32 and b.shape[0] >= MIN_K and b.shape[1] >= 2


def _float_conv(program: Program, op: Op) -> str | None:
    """Why convolution ``op`` stays float32 (None when ``op`` is no convolution the pass skips)."""
    if op.kind == "gemm" and op.attrs.get("conv"):
        b = program.constants.get(op.args["b"])
        if b is not None and b.ndim == 2 and b.shape[0] < MIN_K:
            return f"K = {b.shape[0]} < {MIN_K} (kh * kw * input channels): too small to pay"
        return None
    if op.kind == "gemm_batched" and op.args.get("a") in program.constants:
        src = next((o for o in program.ops if o.out == op.args.get("b")), None)
        one_by_one = src is not None and src.kind == "reshape" and src.attrs.get("shape") == [0, 0, -1]
        if src is not None and (src.kind == "im2col" or one_by_one):
            if op.attrs.get("b_view"):
                return "grouped or depthwise convolution (NCHW planes)"
            return (
                "NCHW convolution: the program is not channels last (it has grouped / depthwise convolutions, "
                "or would need too many layout changes), and int8 needs the activations on the left"
            )
    return None


def _record_inputs(program: Program, targets: Sequence[int], calibration: Any, seed: int) -> dict[int, np.ndarray]:
    """Rows of the A operand of every target op, from the exact program on the calibration data."""
    from .calibrate import iter_batches

    names = sorted({program.ops[i].args["a"] for i in targets})
    probe = Program(program.inputs, names, program.ops, program.constants, program.tables, name=program.name, meta={})
    rng = np.random.default_rng(seed)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for batch in iter_batches(calibration):
        outs = probe.run(batch, mode="exact")
        if len(names) == 1:
            outs = {names[0]: outs}
        for n in names:
            x = np.asarray(outs[n], np.float32)
            x = x.reshape(-1, x.shape[-1])
            if x.shape[0] > MAX_ROWS:  # bounds the memory (a conv's im2col rows): a seeded subset
                x = x[np.sort(rng.choice(x.shape[0], MAX_ROWS, replace=False))]
            rows[n].append(x)
    got: dict[int, np.ndarray] = {}
    for i in targets:
        n = program.ops[i].args["a"]
        x = (
            np.concatenate(rows[n])
            if rows[n]
            else np.zeros((0, program.constants[program.ops[i].args["b"]].shape[0]), np.float32)
        )
        if x.shape[0] > MAX_ROWS:
            x = x[np.sort(rng.choice(x.shape[0], MAX_ROWS, replace=False))]
        got[i] = x
    return got


def _build(w: np.ndarray, cand: Candidate, x: np.ndarray | None) -> dict[str, Any]:
    """Constants of one candidate: q, w_scale, inv_smooth, a_static (None when unused)."""
    inv_smooth = None
    weff = w
    if cand.smooth is not None and x is not None and x.shape[0]:
        s = smoothing_factors(np.abs(x).max(axis=0), w, cand.smooth)
        inv_smooth = (np.float32(1) / s).astype(np.float32)
        weff = (w * s[:, None]).astype(np.float32)
    q, scale = quantize_weights(weff, cand.group)
    a_static = None
    if cand.activations == "static":
        if x is None or not x.shape[0]:
            raise QuantizationError("static activation scales need calibration rows")
        xs = x * inv_smooth[None, :] if inv_smooth is not None else x
        K = w.shape[0]
        G = cand.group if cand.group and cand.group < K else K
        ng = max(1, -(-K // G))
        a_static = np.array(
            [max(float(np.abs(xs[:, g * G : (g + 1) * G]).max(initial=0.0)) / 127.0, 1e-12) for g in range(ng)],
            np.float32,
        )
    return {
        "q": q,
        "w_scale": scale,
        "inv_smooth": inv_smooth,
        "a_static": a_static,
        "group": cand.group if cand.group and cand.group < w.shape[0] else None,
    }


def _error(consts: dict[str, Any], x: np.ndarray, ref: np.ndarray, ref_norm: float) -> float:
    from .. import kernels_int8

    Q = kernels_int8.QuantizedMatrix(consts["q"], consts["w_scale"], consts["group"])
    y = kernels_int8.qgemm(x, Q, inv_smooth=consts["inv_smooth"], static_scale=consts["a_static"])
    return float(np.linalg.norm(y.astype(np.float64) - ref) / ref_norm) if ref_norm > 0 else 0.0


def quantize(
    program: Program,
    calibration: Any = None,
    *,
    tolerance: float = 0.006,
    candidates: Iterable[Candidate] | None = None,
    seed: int = 0,
    max_error: float = MAX_ERROR,
) -> Program:
    """A copy of ``program`` with its weight GEMMs in int8 (see the module docstring).

    ``calibration``: program inputs (as for :func:`nmengine.compile`) the exact program runs on to record
    every GEMM's activations.  Without it, every GEMM gets the most accurate candidate (the last),
    without smoothing or static scales, since nothing can be measured.  ``max_error``: a GEMM whose
    best measured error is above it stays float32 (recorded in its ``attrs["quant"]``).
    """
    cands = tuple(DEFAULT_CANDIDATES if candidates is None else candidates)
    if not cands:
        raise ValueError("candidates must not be empty")
    for c in cands:
        if c.activations not in ("dynamic", "static"):
            raise ValueError(f"candidate activations must be 'dynamic' or 'static', got {c.activations!r}")
        if c.group is not None and (c.group <= 0 or c.group % 4):
            raise ValueError(f"candidate group must be a positive multiple of 4 or None, got {c.group!r}")
        if c.smooth is not None and not 0.0 <= c.smooth <= 1.0:
            raise ValueError(f"candidate smooth alpha must be in [0, 1], got {c.smooth!r}")
    if not 0.0 < tolerance:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    if not 0.0 < max_error:
        raise ValueError(f"max_error must be > 0, got {max_error!r}")
    targets = [i for i, op in enumerate(program.ops) if eligible(program, op)]
    acts = _record_inputs(program, targets, calibration, seed) if calibration is not None and targets else {}
    consts = dict(program.constants)
    ops = [copy.deepcopy(op) for op in program.ops]
    users: dict[str, int] = {}
    for op in program.ops:
        for name in op.args.values():
            users[name] = users.get(name, 0) + 1
    kept = 0
    chosen_ops = set(targets)
    for i, op in enumerate(ops):
        if i not in chosen_ops:
            why = _float_conv(program, op)
            if why:
                op.attrs["quant"] = {"precision": "float32", "reason": why}
    for i in targets:
        op = ops[i]
        w = program.constants[op.args["b"]]
        x = acts.get(i)
        if x is not None and not np.all(np.isfinite(x)):
            raise QuantizationError(f"op {i} ({op.layer}: {op.what}): calibration activations contain NaN or Inf")
        measured: dict[str, float] = {}
        if x is None or not x.shape[0]:
            fallback = Candidate(cands[-1].group, "dynamic", None)
            chosen, best = fallback, _build(w, fallback, None)
            reason = "no calibration data for this GEMM: most accurate candidate without smoothing"
        else:
            ref = x.astype(np.float64) @ w.astype(np.float64)
            ref_norm = float(np.linalg.norm(ref))
            chosen, best, best_err = None, None, np.inf
            reason = f"first candidate with error <= {tolerance:g}"
            for cand in cands:
                built = _build(w, cand, x)
                err = _error(built, x, ref, ref_norm)
                measured[cand.name] = err
                if err < best_err:
                    chosen, best, best_err = cand, built, err
                if err <= tolerance:
                    chosen, best = cand, built
                    break
            else:
                reason = f"no candidate within {tolerance:g}: the most accurate"
        if chosen is None or best is None:  # every candidate's error was NaN or inf
            raise QuantizationError(
                f"op {i} ({op.layer}: {op.what}): no int8 candidate has a finite error ({measured})"
            )
        if measured and min(measured.values()) > max_error:  # int8 costs too much accuracy here
            op.attrs["quant"] = {
                "precision": "float32",
                "measured": measured,
                "reason": f"every int8 candidate's error is above max_error {max_error:g}",
            }
            kept += 1
            continue
        base = op.args["b"]
        qname = f"{base}:int8"
        consts[qname] = best["q"]
        consts[f"{qname}:w_scale"] = best["w_scale"]
        op.args["b"] = qname
        op.args["w_scale"] = f"{qname}:w_scale"
        if best["inv_smooth"] is not None:
            consts[f"{qname}:inv_smooth"] = best["inv_smooth"]
            op.args["inv_smooth"] = f"{qname}:inv_smooth"
        if best["a_static"] is not None:
            consts[f"{qname}:a_static"] = best["a_static"]
            op.args["a_static"] = f"{qname}:a_static"
        op.attrs["precision"] = "int8"
        op.attrs["quant"] = {
            "group": best["group"],
            "activations": chosen.activations,
            "smooth": chosen.smooth,
            "candidate": chosen.name,
            "error": measured.get(chosen.name),
            "measured": measured,
            "reason": reason,
        }
        users[base] -= 1
        if users[base] == 0 and base not in program.outputs:
            consts.pop(base, None)
    meta = dict(program.meta)
    meta["precision"] = "int8"
    meta["quantized_gemms"] = len(targets) - kept
    return Program(program.inputs, program.outputs, ops, consts, program.tables, name=program.name, meta=meta)
