"""Budgeted compile: a fidelity target in, the smallest PWL tables out (``segments="auto"``).

``nm.compile(spec, calibration, segments="auto", target={"cosine": 0.9999})`` chooses, per table
(every function in every layer separately), the segment count and the range that meet the target
on the calibration data with the fewest total table bytes.  How:

1. **Candidates.**  For each table the compiler can fit it at every count of :data:`LADDER`, on its
   calibrated range (data min/max, see :func:`.calibrate.calibrated_options`) and, when the caller
   fixed one in ``functions=``, on that range; at each count the range with the smaller RMS error
   on the table's own calibration inputs is the candidate.  Candidates are fitted when first needed.
2. **Sensitivity (error injection).**  Every table at the finest count gives the reference program
   (its output deviation from exact, per calibration row, is the floor ``d0``).  Then one table at a
   time is coarsened to :data:`PROBE_SEGMENTS`; the growth of each output row's ``1 - cos`` over
   ``d0``, divided by the table's squared RMS error at that count, is its sensitivity ``s_t`` (per row).
3. **Allocation (greedy).**  The deviation of a row is modelled as ``d0 + sum_t s_t e_t(n_t)^2``.
   Starting with every table at the fewest segments, the step (one table, one of its next counts)
   that lowers ``max + mean`` of the modelled row deviations most per added byte is taken, until
   no step helps: a path of allocations from small/coarse to large/fine.
4. **Selection (measured).**  A bisection over that path runs the real program (with vertical bias
   correction, as compiled) on the calibration inputs and keeps the first allocation whose *measured*
   fidelity meets the target: output cosine min >= ``1 - margin * (1 - cosine)`` (a ``margin`` < 1
   leaves room for inputs that were not calibrated on), accuracy drop on labelled calibration
   data <= ``accuracy_drop``; with only ``bytes``, the last allocation within the byte budget.

Everything is deterministic for the same spec, calibration data and options (seeded subsampling,
no timing).  The program records the choice in ``program.meta["budget"]`` (target, measured
fidelity, per-table segments, range, bytes and sensitivity, the measured points of the search:
bytes vs fidelity) and in each table's ``meta["budget"]``; :mod:`.budget_report` prints it
(``nmengine inspect``) and draws the bytes-vs-fidelity points.

Why one module of this length (~670 lines): the target, the evaluator, the candidate tables and the
greedy/bisection plan are the four parts of one algorithm and share its state; the report and the
command-line options live apart (:mod:`.budget_report`, :mod:`nmengine.cli.compile_options`).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..program import Program
from ..pwl import PWLTable
from .calibrate import calibrated_options, correct_biases, informative, iter_batches

__all__ = [
    "Target",
    "parse_target",
    "compile_budgeted",
    "BudgetPlan",
    "check_auto",
    "table_bytes",
    "LADDER",
    "PROBE_SEGMENTS",
]

#: Segment counts the budget chooses from (inside the table's range; outer asymptote segments extra).
LADDER: tuple[int, ...] = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
#: Segment count a table is coarsened to when its sensitivity is measured.
PROBE_SEGMENTS = 8
#: Values of a table's calibration input used to measure its RMS error (seeded subsample).
ERROR_SAMPLE = 20000
#: Rows above which the nearest-neighbour agreement of the calibration outputs is not computed.
NN_MAX_ROWS = 4096


def table_bytes(table: PWLTable) -> int:
    """Bytes a table occupies: float32 breakpoints, slopes and intercepts (``12 n + 4``)."""
    return int(table.breakpoints.nbytes + table.slopes.nbytes + table.intercepts.nbytes)


# ---------------------------------------------------------------------------------------------
# Target
# ---------------------------------------------------------------------------------------------
@dataclass
class Target:
    """What the budget must meet on the calibration data.

    cosine:
        Minimum, over the rows of every program output (last axis = features), of the cosine between
        matrixized and exact outputs.
    accuracy_drop:
        Largest allowed drop (a fraction, 0.005 = half a point) of the top-1 accuracy of the first
        output on ``labels`` (one label per calibration row).
    bytes:
        Total table bytes allowed.  Alone: the most faithful allocation within it.
    margin:
        The measured ``1 - cosine min`` on the calibration rows must be at most ``margin`` times the
        allowed ``1 - cosine``, leaving room for unseen inputs.
    """

    cosine: float | None = None
    accuracy_drop: float | None = None
    bytes: int | None = None
    labels: np.ndarray | None = field(default=None, repr=False)
    margin: float = 0.5

    def __post_init__(self) -> None:
        if self.cosine is not None:
            c = float(self.cosine)
            if not (math.isfinite(c) and -1.0 < c < 1.0):
                raise ValueError(f"target cosine must be in (-1, 1), got {self.cosine!r}")
            self.cosine = c
        if self.accuracy_drop is not None:
            a = float(self.accuracy_drop)
            if not (math.isfinite(a) and 0.0 <= a < 1.0):
                raise ValueError(f"target accuracy_drop must be a fraction in [0, 1), got {self.accuracy_drop!r}")
            if self.labels is None:
                raise ValueError("target accuracy_drop needs labels (one per calibration row)")
            self.accuracy_drop = a
        if self.labels is not None:
            self.labels = np.asarray(self.labels).reshape(-1)
            if self.labels.dtype.kind not in "iu":
                raise ValueError(f"target labels must be integers, got dtype {self.labels.dtype}")
        if self.bytes is not None:
            if isinstance(self.bytes, bool) or int(self.bytes) != self.bytes or int(self.bytes) <= 0:
                raise ValueError(f"target bytes must be a positive integer, got {self.bytes!r}")
            self.bytes = int(self.bytes)
        m = float(self.margin)
        if not (math.isfinite(m) and 0.0 < m <= 1.0):
            raise ValueError(f"target margin must be in (0, 1], got {self.margin!r}")
        self.margin = m
        if self.cosine is None and self.accuracy_drop is None and self.bytes is None:
            raise ValueError("a target needs at least one of cosine, accuracy_drop, bytes")

    @property
    def fidelity(self) -> bool:
        return self.cosine is not None or self.accuracy_drop is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cosine": self.cosine,
            "accuracy_drop": self.accuracy_drop,
            "bytes": self.bytes,
            "margin": self.margin,
            "labelled_rows": None if self.labels is None else int(self.labels.size),
        }


_KEYS = {
    "cosine": "cosine",
    "cos": "cosine",
    "accuracy_drop": "accuracy_drop",
    "acc_drop": "accuracy_drop",
    "bytes": "bytes",
    "labels": "labels",
    "margin": "margin",
}


def parse_target(target: Any, labels: Any = None) -> Target:
    """A :class:`Target` from a Target, a float (cosine), a mapping or a string ``"cosine=0.9999,bytes=15000"``.

    Sizes in the string form accept ``k``/``K`` (x1000) and ``KiB`` (x1024) suffixes.
    """
    if isinstance(target, Target):
        if labels is not None and target.labels is None:
            return Target(target.cosine, target.accuracy_drop, target.bytes, labels, target.margin)
        return target
    if target is None:
        target = {"cosine": 0.9999}
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        target = {"cosine": float(target)}
    if isinstance(target, str):
        parsed: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in target.split(","))):
            k, eq, v = part.partition("=")
            if not eq:
                raise ValueError(f"target {target!r}: expected key=value items, e.g. 'cosine=0.9999,bytes=15000'")
            k = k.strip().lower()
            if k not in _KEYS or k == "labels":
                raise ValueError(f"target {target!r}: unknown key {k!r}; expected cosine, accuracy_drop, bytes, margin")
            v = v.strip()
            if _KEYS[k] == "bytes":
                scale = 1
                for suf, mul in (("kib", 1024), ("kb", 1000), ("k", 1000)):
                    if v.lower().endswith(suf):
                        v, scale = v[: -len(suf)], mul
                        break
                parsed["bytes"] = int(round(float(v) * scale))
            else:
                parsed[_KEYS[k]] = float(v)
        target = parsed
    if not isinstance(target, Mapping):
        raise TypeError(f"target must be a Target, a float, a mapping or a string, got {type(target).__name__}")
    bad = [k for k in target if k not in _KEYS]
    if bad:
        raise ValueError(f"target: unknown keys {bad}; expected {sorted(set(_KEYS.values()))}")
    kw = {_KEYS[k]: v for k, v in target.items()}
    if labels is not None:
        kw.setdefault("labels", labels)
    return Target(**kw)


# ---------------------------------------------------------------------------------------------
# Measuring a candidate program
# ---------------------------------------------------------------------------------------------
def _output_rows(result: Any, outputs: Sequence[str]) -> list[np.ndarray]:
    vals = result if isinstance(result, dict) else {outputs[0]: result}
    rows = []
    for name in outputs:
        v = np.asarray(vals[name], dtype=np.float64)
        rows.append(v.reshape(-1, v.shape[-1] if v.ndim else 1))
    return rows


def _cosines(a: np.ndarray, e: np.ndarray) -> np.ndarray:
    na, ne = np.linalg.norm(a, axis=1), np.linalg.norm(e, axis=1)
    dot = np.sum(a * e, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * ne)
    both_zero = (na == 0) & (ne == 0)
    cos = np.where(both_zero, 1.0, np.where(np.isfinite(cos), cos, -1.0))
    return np.clip(cos, -1.0, 1.0)


def _nn(a: np.ndarray) -> np.ndarray:
    u = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return s.argmax(1)


class _Evaluator:
    """Runs candidate table sets on the calibration inputs; compares with the exact outputs."""

    def __init__(
        self,
        base: Program,
        batches: list[Any],
        activations: Mapping[str, np.ndarray],
        bias_correction: bool,
        labels: np.ndarray | None,
    ) -> None:
        self.base, self.batches, self.acts = base, batches, activations
        self.bias_correction = bias_correction
        exact = [_output_rows(base.run(b, mode="exact"), base.outputs) for b in batches]
        self.exact = [np.concatenate([r[i] for r in exact]) for i in range(len(base.outputs))]
        self.exact_nn = [_nn(e) if 3 <= e.shape[0] <= NN_MAX_ROWS else None for e in self.exact]
        self.labels = labels
        if labels is not None and labels.size != self.exact[0].shape[0]:
            raise ValueError(
                f"target labels: {labels.size} labels for {self.exact[0].shape[0]} rows of output "
                f"{base.outputs[0]!r} on the calibration data"
            )
        self.exact_acc = None if labels is None else float(np.mean(self.exact[0].argmax(1) == labels))
        self.runs = 0

    def program(self, tables: Mapping[str, PWLTable]) -> Program:
        ops = [copy.deepcopy(op) for op in self.base.ops]
        constants = dict(self.base.constants)
        corrections = correct_biases(ops, constants, tables, self.acts) if self.bias_correction else []
        meta = dict(self.base.meta)
        if self.bias_correction:
            meta["calibrated"] = True
            meta["bias_corrections"] = corrections
        return Program(self.base.inputs, self.base.outputs, ops, constants, tables, name=self.base.name, meta=meta)

    def measure(self, tables: Mapping[str, PWLTable]) -> dict[str, Any]:
        prog = self.program(tables)
        self.runs += 1
        got = [_output_rows(prog.run(b), prog.outputs) for b in self.batches]
        rows = [np.concatenate([r[i] for r in got]) for i in range(len(prog.outputs))]
        cos = np.concatenate([_cosines(a, e) for a, e in zip(rows, self.exact)])
        out: dict[str, Any] = {
            "deviation": 1.0 - cos,
            "cosine_min": float(cos.min()) if cos.size else 1.0,
            "cosine_mean": float(cos.mean()) if cos.size else 1.0,
        }
        nn = [float(np.mean(_nn(a) == ref)) for a, ref in zip(rows, self.exact_nn) if ref is not None]
        if nn:
            out["nn_agreement"] = nn[0]
        if self.labels is not None and self.exact_acc is not None:
            acc = float(np.mean(rows[0].argmax(1) == self.labels))
            out["accuracy"], out["accuracy_drop"] = acc, self.exact_acc - acc
        out["program"] = prog
        return out


# ---------------------------------------------------------------------------------------------
# Candidates per table
# ---------------------------------------------------------------------------------------------
class _Candidates:
    """Lazily fitted tables of one table key at each ladder count, with their RMS data error."""

    def __init__(
        self,
        key: str,
        fn: str,
        data: np.ndarray,
        options: Mapping[str, Any],
        given: Mapping[str, Any] | None,
        ladder: Sequence[int],
        seed: int,
    ) -> None:
        from .. import approx

        self.key, self.fn, self.ladder = key, fn, list(ladder)
        self.func = approx.get_function(fn)
        sources = {
            "calibrated": calibrated_options(
                fn, data, {k: v for k, v in options.items() if k not in ("lo", "hi", "segments", "max_error")}
            )
        }
        if given and ("lo" in given or "hi" in given):
            sources["given"] = calibrated_options(
                fn, data, {**sources["calibrated"], **{k: given[k] for k in ("lo", "hi") if k in given}}
            )
        self.sources = sources
        v = informative(fn, data.ravel()).astype(np.float32)
        if v.size > ERROR_SAMPLE:
            v = v[np.sort(np.random.default_rng(seed).choice(v.size, ERROR_SAMPLE, replace=False))]
        self.x = v
        self.fx = np.asarray(self.func.f(v.astype(np.float64)), dtype=np.float64)
        self._cache: dict[int, tuple[PWLTable, float, str]] = {}

    def _error(self, table: PWLTable) -> float:
        if not self.x.size:
            return 0.0
        err = table(self.x).astype(np.float64) - self.fx
        if self.func.relative:
            err = err / np.maximum(np.abs(self.fx), 1e-300)
        return float(np.sqrt(np.mean(err * err)))

    def at(self, i: int) -> tuple[PWLTable, float, str]:
        """(table, RMS error on the data, range source) at ladder index ``i``."""
        if i not in self._cache:
            from .. import approx

            best: tuple[PWLTable, float, str] | None = None
            for src, opts in self.sources.items():
                t = approx.fit(self.fn, segments=self.ladder[i], **opts)
                e = self._error(t)
                if best is None or e < best[1]:
                    best = (t, e, src)
            assert best is not None  # there is always the calibrated source
            self._cache[i] = best
        return self._cache[i]

    def bytes(self, i: int) -> int:
        return table_bytes(self.at(i)[0])


def _label(table: PWLTable, key: str, fn: str) -> PWLTable:
    layer, _, role = key.rpartition(":")
    t = PWLTable(table.breakpoints, table.slopes, table.intercepts, name=fn, meta=dict(table.meta))
    t.meta.update({"layer": layer, "role": role})
    return t


# ---------------------------------------------------------------------------------------------
# The budgeted compile
# ---------------------------------------------------------------------------------------------
def check_auto(segments: Any, calibration: Any, max_error: Any, target: Any) -> bool:
    """Validate the ``segments``/``target`` pair of a compile; True for ``segments="auto"``."""
    auto = isinstance(segments, str)
    if auto and segments != "auto":
        raise ValueError(f"segments must be an int or 'auto', got {segments!r}")
    if auto and (calibration is None or max_error is not None):
        raise ValueError(
            "segments='auto' measures the tables on calibration data: give calibration= (and no max_error)"
        )
    if target is not None and not auto:
        raise ValueError("target= needs segments='auto'")
    return auto


def compile_budgeted(
    base: Program,
    requests: Mapping[str, Any],
    calibration: Any,
    activations: Mapping[str, np.ndarray],
    *,
    target: Any,
    options: Mapping[str, Any],
    functions: Mapping[str, Mapping[str, Any]] | None,
    bias_correction: bool = True,
    ladder: Sequence[int] = LADDER,
    fallback_segments: int = 32,
    progress: bool = False,
) -> Program:
    """Choose every table's segments/range for ``target``; see the module docstring.

    ``base`` is the lowered program with tables on default ranges (it runs the exact reference),
    ``requests`` the compiler's table requests, ``activations`` the recorded calibration inputs of
    every table, ``options``/``functions`` the fit options (``method``, per-function ranges).
    Tables that no calibration input reaches get ``fallback_segments`` on their default range.
    """
    tgt = parse_target(target)
    plan = BudgetPlan(
        base,
        requests,
        calibration,
        activations,
        options=options,
        functions=functions,
        bias_correction=bias_correction,
        ladder=ladder,
        fallback_segments=fallback_segments,
        labels=tgt.labels,
        progress=progress,
    )
    return plan.select(tgt)


class BudgetPlan:
    """Sensitivities and the greedy allocation path of one network on one calibration set.

    :meth:`select` picks the allocation for a target (several targets can share one plan: the
    measurements of the sensitivity phase are done once).  Arguments as :func:`compile_budgeted`.
    """

    def __init__(
        self,
        base: Program,
        requests: Mapping[str, Any],
        calibration: Any,
        activations: Mapping[str, np.ndarray],
        *,
        options: Mapping[str, Any],
        functions: Mapping[str, Mapping[str, Any]] | None,
        bias_correction: bool = True,
        ladder: Sequence[int] = LADDER,
        fallback_segments: int = 32,
        labels: Any = None,
        progress: bool = False,
    ) -> None:
        from .. import approx

        ladder = sorted({int(n) for n in ladder})
        if not ladder or ladder[0] < 1:
            raise ValueError(f"ladder must hold positive segment counts, got {ladder}")
        self.ladder, self.requests, self.fallback_segments = ladder, requests, fallback_segments
        lab = None if labels is None else np.asarray(labels).reshape(-1)
        self.ev = ev = _Evaluator(base, list(iter_batches(calibration)), activations, bias_correction, lab)
        fit_opts = {k: v for k, v in options.items() if k == "method"}
        cands: dict[str, _Candidates] = {}
        fixed: dict[str, PWLTable] = {}
        for i, (key, req) in enumerate(requests.items()):
            data = activations.get(key)
            per_fn = dict((functions or {}).get(req.fn, {}))
            if data is None or not informative(req.fn, np.asarray(data).ravel()).size:
                opts = {**fit_opts, **{k: v for k, v in per_fn.items() if k in ("lo", "hi", "method")}}
                t = _label(approx.fit(req.fn, segments=fallback_segments, **opts), key, req.fn)
                t.meta["budget"] = {"segments": fallback_segments, "note": "no calibration data reached this table"}
                fixed[key] = t
                continue
            cands[key] = _Candidates(key, req.fn, np.asarray(data), {**fit_opts, **per_fn}, per_fn, ladder, seed=i)
        self.cands, self.fixed = cands, fixed
        keys = self.keys = list(cands)
        top = len(ladder) - 1
        self.probe = probe = min(range(len(ladder)), key=lambda j: (abs(ladder[j] - PROBE_SEGMENTS), j))

        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(keys) + 1, desc="table sensitivity", unit="run")
        # -- sensitivity by error injection -----------------------------------------------------
        self.finest = finest = {k: top for k in keys}
        self.ref = ref = ev.measure(self.tables_at(finest))
        d0 = ref["deviation"]
        if bar:
            bar.update()
        sens: dict[str, np.ndarray] = {}
        impact: dict[str, float] = {}
        for k in keys:
            m = ev.measure(self.tables_at({**finest, k: probe}))
            grow = np.maximum(m["deviation"] - d0, 0.0)
            e = cands[k].at(probe)[1]
            e_top = cands[k].at(top)[1]
            sens[k] = grow / max(e * e - e_top * e_top, 1e-300)
            impact[k] = float(grow.max()) if grow.size else 0.0
            if bar:
                bar.update()
        if bar:
            bar.close()
        self.sens, self.impact, self.d0 = sens, impact, d0

        # -- greedy allocation path -------------------------------------------------------------
        def contrib(k: str, i: int) -> np.ndarray:
            e = cands[k].at(i)[1]
            return sens[k] * (e * e)

        def objective(p: np.ndarray) -> float:
            return float(p.max() + p.mean()) if p.size else 0.0

        alloc = {k: 0 for k in keys}
        parts = {k: contrib(k, 0) for k in keys}
        pred = d0 + sum(parts.values()) if keys else d0.copy()
        self.path = [dict(alloc)]
        self.path_pred = [float(pred.max()) if pred.size else 0.0]
        self.path_bytes = [self.total_bytes(alloc)]
        while True:
            j0 = objective(pred)
            best = None
            for k in keys:
                i = alloc[k]
                b0 = cands[k].bytes(i)
                for j in range(i + 1, min(i + 4, top + 1)):
                    new = pred - parts[k] + contrib(k, j)
                    gain = j0 - objective(new)
                    cost = max(cands[k].bytes(j) - b0, 1)
                    if gain > 0 and (best is None or gain / cost > best[0]):
                        best = (gain / cost, k, j, new)
            if best is None:
                break
            _, k, j, pred = best
            alloc[k] = j
            parts[k] = contrib(k, j)
            self.path.append(dict(alloc))
            self.path_pred.append(float(pred.max()))
            self.path_bytes.append(self.total_bytes(alloc))
        self.measured: dict[int, dict[str, Any]] = {}

    def tables_at(self, alloc: Mapping[str, int]) -> dict[str, PWLTable]:
        """The tables of an allocation ``{key: ladder index}`` (plus the fixed ones)."""
        out = dict(self.fixed)
        for k in self.keys:
            out[k] = self.cands[k].at(alloc[k])[0]
        return out

    def total_bytes(self, alloc: Mapping[str, int]) -> int:
        return sum(self.cands[k].bytes(alloc[k]) for k in self.keys) + sum(table_bytes(t) for t in self.fixed.values())

    def measure(self, i: int) -> dict[str, Any]:
        """Measured fidelity of path point ``i`` on the calibration data (cached)."""
        if i not in self.measured:
            self.measured[i] = self.ev.measure(self.tables_at(self.path[i]))
        return self.measured[i]

    def program_at(self, i: int, *, target: Target | None = None, met: bool = True) -> Program:
        """The compiled program of path point ``i``, with the budget record in its meta."""
        ladder, requests, path = self.ladder, self.requests, self.path
        final = self.measure(i)
        per_table: dict[str, dict[str, Any]] = {}
        final_tables = {}
        for key in list(requests):
            if key in self.fixed:
                t = self.fixed[key]
                final_tables[key] = t
                per_table[key] = {
                    "fn": t.name,
                    "segments": self.fallback_segments,
                    "bytes": table_bytes(t),
                    "range": [t.meta.get("lo"), t.meta.get("hi")],
                    "range_source": "default",
                    "sensitivity": None,
                    "impact": None,
                }
                continue
            j = path[i][key]
            t, err, src = self.cands[key].at(j)
            t = _label(t, key, requests[key].fn)
            s = self.sens[key]
            rec = {
                "fn": requests[key].fn,
                "segments": ladder[j],
                "bytes": table_bytes(t),
                "range": [t.meta.get("lo"), t.meta.get("hi")],
                "range_source": src,
                "rms_error": err,
                "sensitivity": float(s.max()) if s.size else 0.0,
                "impact": self.impact[key],
                "predicted_deviation": float((s * err * err).max()) if s.size else 0.0,
            }
            t.meta["budget"] = dict(rec)
            final_tables[key] = t
            per_table[key] = rec
        program = self.ev.program(final_tables)  # the chosen tables, relabelled (same values as measured)
        curve = sorted(
            ({"bytes": self.path_bytes[j], "path_index": j, **_brief(m)} for j, m in self.measured.items()),
            key=lambda r: r["bytes"],
        )
        program.meta["pwl_options"] = {**program.meta.get("pwl_options", {}), "segments": "auto"}
        program.meta["budget"] = {
            "target": None if target is None else target.to_dict(),
            "met": bool(met),
            "measured": {"bytes": self.path_bytes[i], **_brief(final)},
            "reference": {"finest_bytes": self.total_bytes(self.finest), **_brief(self.ref)},
            "exact_accuracy": self.ev.exact_acc,
            "calibration_rows": int(self.d0.size),
            "ladder": list(ladder),
            "probe_segments": ladder[self.probe],
            "runs": self.ev.runs,
            "tables": per_table,
            "curve": curve,
        }
        return program

    def select(self, target: Any) -> Program:
        """The program of the first path point that meets ``target`` on the calibration data."""
        tgt = parse_target(target)
        if tgt.accuracy_drop is not None and self.ev.labels is None:
            raise ValueError("target accuracy_drop: the plan was made without labels")
        path, path_bytes, measure = self.path, self.path_bytes, self.measure

        def meets(m: Mapping[str, Any]) -> bool:
            ok = True
            if tgt.cosine is not None:
                ok &= (1.0 - m["cosine_min"]) <= tgt.margin * (1.0 - tgt.cosine)
            if tgt.accuracy_drop is not None:
                ok &= m["accuracy_drop"] <= tgt.accuracy_drop + 1e-12
            return bool(ok)

        last = len(path) - 1
        within = [i for i in range(len(path)) if tgt.bytes is None or path_bytes[i] <= tgt.bytes]
        cap = within[-1] if within else 0
        if not tgt.fidelity:
            return self.program_at(cap, target=tgt, met=path_bytes[cap] <= (tgt.bytes or 0))
        # the first path point whose modelled deviation meets the cosine target: the search starts there
        if tgt.cosine is not None:
            eps = tgt.margin * (1.0 - tgt.cosine)
            guess = next((i for i in range(len(path)) if self.path_pred[i] <= eps), last)
        else:
            guess = len(path) // 2
        lo_i, hi_i = -1, None  # lo_i fails (or is before the path), hi_i meets
        if meets(measure(guess)):
            hi_i, step = guess, 1
            while True:  # walk back with doubling steps to bracket the first failure
                cand = hi_i - step
                if cand < 0:
                    break
                if meets(measure(cand)):
                    hi_i, step = cand, step * 2
                else:
                    lo_i = cand
                    break
        else:
            lo_i, step = guess, 1
            while hi_i is None:
                cand = min(lo_i + step, last)
                if meets(measure(cand)):
                    hi_i = cand
                elif cand == last:
                    break
                else:
                    lo_i, step = cand, step * 2
        if hi_i is not None:
            while hi_i - lo_i > 1:
                mid = (lo_i + hi_i) // 2
                if meets(measure(mid)):
                    hi_i = mid
                else:
                    lo_i = mid
        chosen = hi_i if hi_i is not None else last
        met = hi_i is not None
        if chosen > cap:
            met, chosen = False, cap
        if not met:
            warnings.warn(
                f"segments='auto': the target {tgt.to_dict()} is not met on the calibration data "
                f"(best: {_brief(measure(chosen))} at {path_bytes[chosen]} table bytes)",
                stacklevel=4,
            )
        return self.program_at(chosen, target=tgt, met=met)


def _brief(m: Mapping[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("cosine_min", "cosine_mean", "nn_agreement", "accuracy", "accuracy_drop") if k in m}
