"""Calibration: record what every PWL epilogue sees on real inputs, fit the tables, correct biases.

The exact program (same ops, true functions) runs on the calibration inputs while a recorder keeps,
for every PWL epilogue, the rows of its pre-activation input (a seeded random subset when there are
many).  Each table is then fitted on its own data with :func:`nmengine.approx.fit`, and -- vertical
bias correction -- the mean error a table makes on each feature is pushed through the next linear
layer's weights into that layer's bias (:func:`nmengine.approx.bias_correction`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from ..program import Op, Program
from ..pwl import PWLTable

__all__ = ["record_activations", "fit_tables", "calibrated_options", "informative", "correct_biases", "iter_batches"]

#: Relative (wide dynamic range) functions get their calibrated range widened by this factor on
#: each side: geometric segments make the extra octaves cheap, and unseen inputs (a shorter sequence's
#: softmax sum, a flatter token's variance) then stay on the table instead of an extrapolated end.
RELATIVE_RANGE_FACTOR = 8.0

#: Inputs below this are dropped from exp calibration: float32 exp underflows there, so they carry
#: no information about the useful range (masked attention scores sit near -1e4).
EXP_UNDERFLOW = -87.0


def iter_batches(calibration: Any) -> Iterable[Any]:
    """Calibration data as a sequence of program inputs (an array, a dict, or a list of either)."""
    if isinstance(calibration, (list, tuple)):
        return list(calibration)
    return [calibration]


def record_activations(
    program: Program, calibration: Any, *, max_rows: int = 65536, seed: int = 0, progress: bool = False
) -> dict[str, np.ndarray]:
    """Run ``program`` exactly on the calibration data; return ``{table key: rows of PWL inputs}``."""
    rng = np.random.default_rng(seed)
    seen: dict[str, list[np.ndarray]] = {}

    def record(op: Op, y: np.ndarray) -> None:
        rows = np.array(y, dtype=np.float32).reshape(-1, y.shape[-1] if y.ndim else 1)
        if rows.shape[0] > max_rows:
            rows = rows[rng.choice(rows.shape[0], max_rows, replace=False)]
        seen.setdefault(op.epilogue["table"], []).append(rows)

    batches = iter_batches(calibration)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="calibrating", unit="batch")
    for batch in batches:
        program.runtime.run(batch, mode="exact", record=record)
    out = {}
    for key, parts in seen.items():
        widths = {p.shape[1] for p in parts}
        rows = np.concatenate(parts) if len(widths) == 1 else np.concatenate([p.reshape(-1, 1) for p in parts])
        if rows.shape[0] > max_rows:
            rows = rows[rng.choice(rows.shape[0], max_rows, replace=False)]
        out[key] = rows
    return out


def informative(fn: str, values: np.ndarray) -> np.ndarray:
    """The finite values of a table's input that tell where its range should be."""
    v = values[np.isfinite(values)]
    if fn == "exp":
        v = v[v > EXP_UNDERFLOW]
    return v


def calibrated_options(fn: str, activations: np.ndarray, opts: Mapping[str, Any]) -> dict[str, Any]:
    """``opts`` for :func:`nmengine.approx.fit` completed with a table's calibration data.

    The informative values become ``calibration`` (unless given); a relative function without an
    explicit range gets the data's [min, max] widened by :data:`RELATIVE_RANGE_FACTOR` on each side.
    """
    from .. import approx

    out = dict(opts)
    data = informative(fn, np.asarray(activations).ravel())
    if not data.size:
        return out
    out.setdefault("calibration", data)
    func = approx.get_function(fn)
    if func.relative and "lo" not in out and "hi" not in out:
        lo, hi = float(data.min()), float(data.max())
        lo = max(lo, float(func.domain[0]), float(np.finfo(np.float32).tiny)) / RELATIVE_RANGE_FACTOR
        hi = max(hi, lo * RELATIVE_RANGE_FACTOR) * RELATIVE_RANGE_FACTOR
        out["lo"], out["hi"] = lo, hi
    return out


def fit_tables(
    requests: Mapping[str, Any],
    activations: Mapping[str, np.ndarray] | None,
    options: Mapping[str, Any],
    per_function: Mapping[str, Mapping[str, Any]] | None,
    *,
    progress: bool = False,
) -> dict[str, PWLTable]:
    """Fit one table per request, on its calibration data when there is some."""
    from .. import approx

    tables: dict[str, PWLTable] = {}
    uncalibrated: dict[tuple, PWLTable] = {}  # one fit per function when no data tells them apart
    items = list(requests.items())
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc="fitting PWL tables", unit="table")
    for key, req in items:
        opts = {**options, **dict((per_function or {}).get(req.fn, {}))}
        if activations is not None and key in activations:
            opts = calibrated_options(req.fn, activations[key], opts)
        if "calibration" in opts:
            table = approx.fit(req.fn, **opts)
        else:
            memo = (req.fn, repr(sorted(opts.items())))
            if memo not in uncalibrated:
                uncalibrated[memo] = approx.fit(req.fn, **opts)
            base = uncalibrated[memo]
            table = PWLTable(base.breakpoints, base.slopes, base.intercepts, meta=dict(base.meta))
        table.name = req.fn
        table.meta.update({"layer": req.layer, "role": req.role})
        tables[key] = table
    return tables


def correct_biases(
    ops: list[Op],
    constants: dict[str, np.ndarray],
    tables: Mapping[str, PWLTable],
    activations: Mapping[str, np.ndarray],
) -> list[dict[str, Any]]:
    """Fold each table's mean error on its calibration data into the bias of the linear GEMM after it.

    Applies where a PWL epilogue's output feeds only linear GEMMs (``A`` operand, constant ``B``).
    Mutates ``ops``/``constants``; returns one record per correction (layer, table, size of shift).
    """
    from ..approx import bias_correction

    consumers: dict[str, list[Op]] = {}
    for op in ops:
        for v in op.args.values():
            consumers.setdefault(v, []).append(op)
    done = []
    for op in ops:
        ep = op.epilogue
        if ep.get("act") != "pwl" or ep["table"] not in activations:
            continue
        users = consumers.get(op.out, [])
        if not users or not all(
            u.kind == "gemm" and u.attrs.get("linear") and u.args.get("a") == op.out and u.args["b"] in constants
            for u in users
        ):
            continue
        acts = activations[ep["table"]]
        for u in users:
            w = constants[u.args["b"]]
            if acts.shape[1] != w.shape[0]:
                continue
            delta = bias_correction(tables[ep["table"]], ep["fn"], acts, w)
            name = f"{u.out}#bias_corrected"
            if "bias" in u.args:
                u.args.setdefault("bias_exact", u.args["bias"])
                old: Any = constants[u.args["bias_exact"]].astype(np.float64)
            else:
                u.args["bias_exact"] = f"{u.out}#bias_zero"
                constants[u.args["bias_exact"]] = np.zeros(w.shape[1], dtype=np.float32)
                old = 0.0
            constants[name] = (old + delta).astype(np.float32)
            u.args["bias"] = name
            u.attrs["bias_correction"] = ep["table"]
            done.append({"layer": u.layer, "table": ep["table"], "max_shift": float(np.max(np.abs(delta)))})
    return done
