"""The cost model: what every op of a Program costs on one GEMM accelerator (a systolic array with a PWL epilogue).

NeuralMatrix runs a whole network as GEMM-family ops whose nonlinearities are piecewise-linear (PWL)
lookups fused into the GEMM epilogue, plus data movement.  This module estimates, for every op of a
:class:`~nmengine.program.Program` and for given input shapes, the work (MACs, PWL evaluations), the
traffic (DRAM and on-chip buffer bytes), the time (compute and memory cycles, roofline) and the energy
on an accelerator described by an :class:`AcceleratorConfig`.  ``docs/cost.md`` has the full write-up.

Machine
-------
A ``rows x cols`` systolic array of MAC units, three on-chip buffers (``A``: the left GEMM operand,
``B``: the right operand, ``C``: outputs / partial sums), a DRAM channel of ``dram_bytes_per_cycle``
and an epilogue datapath of ``cols`` lanes (one per array column, where results leave the array) that
adds bias / residual and evaluates ReLU or a PWL table on each output as it drains.  Every number is
``bytes_per_element`` wide (indices included).  Ops run one after another; each reads its operands
from DRAM and writes its result to DRAM (no on-chip reuse across ops other than the fused epilogue).
Compute and memory overlap within an op (double buffering), so an op takes
``cycles = max(compute_cycles, memory_cycles)`` (a roofline per op), and the program the sum.

GEMMs (``gemm``, ``gemm_batched``): ``out[M, N] = A[M, K] @ B[K, N]`` per batch element
------------------------------------------------------------------------------------------
*Work.*  ``macs = batch * M * N * K`` (:func:`nmengine.shapes.gemm_dims` gives the dims).

*Compute cycles* follow SCALE-Sim's fold model (Samajdar et al., "A Systematic Methodology for
Characterizing Scalability of DNN Accelerators using SCALE-Sim", ISPASS 2020).  The GEMM is mapped to
spatial dims ``Sr`` (array rows), ``Sc`` (array columns) and a temporal dim ``T``:

=========================  ======  ======  =====  ==============================
dataflow                   Sr      Sc      T      cycles per fold
=========================  ======  ======  =====  ==============================
output stationary (OS)     M       N       K      T + rows + cols - 2
weight stationary (WS)     K       N       M      rows + T + rows + cols - 2
input stationary (IS)      K       M       N      rows + T + rows + cols - 2
=========================  ======  ======  =====  ==============================

``folds = ceil(Sr / rows) * ceil(Sc / cols)``, run back to back (outputs drain before the next fold
starts, as in SCALE-Sim), so ``compute_cycles = batch * folds * cycles_per_fold``.  ``T`` cycles stream
the operands, ``rows - 1 + cols - 1`` fill and drain the skewed wavefront; WS/IS first load the
stationary tile (``rows`` cycles), which makes their fold ``2*rows + cols + T - 2``, SCALE-Sim's
analytical runtime.

*DRAM traffic* (``w = bytes_per_element``).  The buffers hold a tile of the *stationary* operand while
the other two stream; tile sizes are multiples of the array dims (or the whole dim), and the model
picks the tile that minimises traffic (ties: larger tile).  An operand that fits in its buffer entirely
is *resident*: read once, whatever the tiling.  Re-read factors, for output stationary with a
``Tm x Tn`` output tile in ``C`` that streams ``K``::

    dram_bytes = w * (M*K * ceil(N/Tn) + K*N * ceil(M/Tm) + M*N)

(``ceil(N/Tn)`` becomes 1 when A is resident, ``ceil(M/Tm)`` when B is), between the floor
``w * (M*K + K*N + M*N)`` and whatever the buffers force.  Constraints: ``Tm*Tn*w <= C_buffer``; a
streamed slab of A (``Tm x min(K, cols)``) fits ``A_buffer`` and of B (``min(K, rows) x Tn``) fits
``B_buffer`` (unless resident).  Weight stationary holds a ``Tk x Tn`` tile of B and streams M; input
stationary holds a ``Tm x Tk`` tile of A and streams N; both split K, so outputs go out and come back
as partial sums ``ceil(K/Tk)`` times unless C is resident::

    WS: w * (M*K * ceil(N/Tn) + K*N + M*N * (2*ceil(K/Tk) - 1))
    IS: w * (M*K + K*N * ceil(M/Tm) + M*N * (2*ceil(K/Tk) - 1))

Bias (``N``), row bias (``M``) and residual (its own size) are read once.  In a batched GEMM every batch
element is tiled alike; an operand shared by the whole batch (a constant kernel, say) that is resident is
read once for the op, otherwise once per batch element.

*On-chip accesses* (buffer <-> array), as SCALE-Sim counts SRAM reads per fold: OS reads
``M*K*ceil(N/cols)`` of A, ``K*N*ceil(M/rows)`` of B and writes ``M*N`` outputs; WS reads B once,
A ``ceil(N/cols)`` times and moves partial sums (``M*N*ceil(K/rows)`` writes, ``M*N*(ceil(K/rows)-1)``
reads); IS is WS with A and B (and M, N) exchanged.  Every DRAM byte is also written into (read) or
read out of (write) a buffer once.

Other GEMM-family ops
---------------------
``scale`` is a diagonal GEMM: ``macs = elements * factors`` where every multiplicative or additive
factor (``alpha``, ``mul``, ``row_scale``, ``col_scale``, ``beta``, ``bias``, ``bias_row``, ``res``) is one
MAC-unit operation per output element (a standalone PWL lookup has 0 MACs).  It runs on the
``cols``-lane epilogue datapath: ``compute_cycles = ceil(elements * max(factors, 1) / cols)``.
``pairwise_max`` over ``n`` items per row is ``rows * (n - 1)`` steps ``b + relu(a - b)``: 2 MACs
(subtract, add) and one ReLU comparison per step, same datapath, intermediate levels kept on chip
(each step reads two values from the buffer and writes one).  Both read each operand from DRAM once and
write the output once; a ``scale`` reads every operand element from its buffer and writes every output.

Nonlinearities
--------------
``pwl_evals`` counts the outputs of ops whose epilogue is ``"pwl"`` (one table lookup plus one
multiply-add each).  ReLU is exact: its outputs (and the pairwise-max steps) are counted as
``relu_evals``, each one comparison (``cmp_pj``), not as PWL lookups.  Fused epilogues take no extra
cycles (pipelined with the drain).  ``unfused_extra_bytes`` is what each fused nonlinearity (PWL or
ReLU) saves: unfused, the output would be written, read back and written again (``2*w*out_elements``
more DRAM bytes), and the PWL ones would need a special function unit.

Data movement
-------------
``reshape`` is a free view.  Every other movement op (``transpose``, ``im2col``, ``pool_windows``,
``patchify``, ``gather``, ``slice_rows``, ``pack``, ``unpack``, ``positions``) reads its source once
and writes its result: ``gather`` reads the rows it gathers plus the indices (not the whole table),
``slice_rows`` the rows it keeps, ``pack``/``unpack``/``positions`` also read the mask, and an ``im2col``
is materialised (``kh*kw`` times the input).  No MACs; ``memory_cycles = dram / bandwidth``.

Energy
------
``energy = macs*mac_pj + pwl_evals*pwl_pj + relu_evals*cmp_pj + sram_bytes*sram_pj_per_byte +
dram_bytes*dram_pj_per_byte + static_power_w * seconds``; defaults from Horowitz, "Computing's energy
problem (and what we can do about it)", ISSCC 2014, 45 nm (see :class:`AcceleratorConfig`).

Throughput: ``ops = 2 * macs``; ``GOPS/W = ops / energy`` (dynamic plus static energy);
``inferences/s = batch / seconds``.

This module holds the model itself (tiling, per-op costs, :func:`cost_report`); the accelerator lives in
:mod:`nmengine.cost.config`, the report (aggregation, tables, CSV/JSON, plots) in
:mod:`nmengine.cost.report` and the ``nmengine report`` command in :mod:`nmengine.cli.cost`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..program import Op, Program, view_shape
from ..shapes import gemm_dims, infer_shapes, op_flops, scale_factors
from .config import AcceleratorConfig, as_config
from .report import CostReport

__all__ = ["cost_report", "default_input_shapes", "example_inputs", "gemm_plan", "op_cost", "GemmPlan"]


# ---------------------------------------------------------------------------------------------
# GEMM tiling and folds
# ---------------------------------------------------------------------------------------------
def _cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


def _tile_sizes(n: int, step: int) -> list[int]:
    """Candidate tile sizes along a dim of size ``n``: multiples of ``step`` below ``n``, and ``n``."""
    return [min(n, j * step) for j in range(1, _cdiv(n, step) + 1)]


def _largest_tile(n: int, step: int, limit: int) -> int:
    """Largest candidate tile (multiple of ``step`` or ``n`` itself) not above ``limit``; 0 if none."""
    if n <= limit:
        return n
    return (limit // step) * step


@dataclass
class GemmPlan:
    """Traffic and time of one GEMM (per batch element unless stated)."""

    tile: dict[str, int]
    a_reads: int
    b_reads: int
    c_reads: int  # partial sums read back from DRAM
    c_writes: int
    sram_elems: int  # array <-> buffer element accesses
    cycles_per_gemm: int
    folds: int


def gemm_plan(
    m: int, n: int, k: int, cfg: AcceleratorConfig, a_resident: bool, b_resident: bool, c_resident: bool
) -> GemmPlan:
    """Tile choice, DRAM element traffic, buffer accesses and fold cycles of one ``M x N x K`` GEMM."""
    r, c = cfg.rows, cfg.cols
    if m == 0 or n == 0 or k == 0:  # an empty GEMM (e.g. a zero-size batch) costs nothing
        return GemmPlan({}, 0, 0, 0, 0, 0, 0, 0)
    ea, eb, ec = cfg.elements("a"), cfg.elements("b"), cfg.elements("c")
    best: tuple | None = None
    if cfg.dataflow == "output":
        # C holds a Tm x Tn output tile; K streams.
        for tm in _tile_sizes(m, r):
            if not a_resident and tm * min(k, c) > ea:
                break
            limit = ec // tm
            if not b_resident:
                limit = min(limit, eb // min(k, r))
            tn = _largest_tile(n, c, limit)
            if tn < 1:
                continue
            a_rd = m * k * (1 if a_resident else _cdiv(n, tn))
            b_rd = k * n * (1 if b_resident else _cdiv(m, tm))
            key = (a_rd + b_rd, -(tm * tn), tm)
            if best is None or key < best[0]:
                best = (key, {"Tm": tm, "Tn": tn}, a_rd, b_rd, 0, m * n)
        sram = m * k * _cdiv(n, c) + k * n * _cdiv(m, r) + m * n
        folds = _cdiv(m, r) * _cdiv(n, c)
        per_fold = k + r + c - 2
    elif cfg.dataflow == "weight":
        # B holds a Tk x Tn weight tile; M streams; K is split into partial sums.
        for tk in _tile_sizes(k, r):
            if not a_resident and min(m, c) * tk > ea:
                break
            limit = eb // tk
            if not c_resident:
                limit = min(limit, ec // min(m, r))
            tn = _largest_tile(n, c, limit)
            if tn < 1:
                continue
            a_rd = m * k * (1 if a_resident else _cdiv(n, tn))
            passes = 1 if c_resident else _cdiv(k, tk)
            key = (a_rd + k * n + m * n * (2 * passes - 1), -(tk * tn), tk)
            if best is None or key < best[0]:
                best = (key, {"Tk": tk, "Tn": tn}, a_rd, k * n, m * n * (passes - 1), m * n * passes)
        kp = _cdiv(k, r)
        sram = k * n + m * k * _cdiv(n, c) + m * n * (2 * kp - 1)
        folds = _cdiv(k, r) * _cdiv(n, c)
        per_fold = r + m + r + c - 2
    else:
        # A holds a Tm x Tk input tile; N streams; K is split into partial sums.
        for tk in _tile_sizes(k, r):
            if not b_resident and tk * min(n, c) > eb:
                break
            limit = ea // tk
            if not c_resident:
                limit = min(limit, ec // min(n, r))
            tm = _largest_tile(m, c, limit)
            if tm < 1:
                continue
            b_rd = k * n * (1 if b_resident else _cdiv(m, tm))
            passes = 1 if c_resident else _cdiv(k, tk)
            key = (m * k + b_rd + m * n * (2 * passes - 1), -(tk * tm), tk)
            if best is None or key < best[0]:
                best = (key, {"Tm": tm, "Tk": tk}, m * k, b_rd, m * n * (passes - 1), m * n * passes)
        kp = _cdiv(k, r)
        sram = m * k + k * n * _cdiv(m, c) + m * n * (2 * kp - 1)
        folds = _cdiv(k, r) * _cdiv(m, c)
        per_fold = r + n + r + c - 2
    if best is None:  # pragma: no cover - the config validation guarantees the one-fold tile fits
        raise ValueError(f"no tile of a {m}x{n}x{k} GEMM fits the buffers of {cfg}")
    _, tile, a_rd, b_rd, c_rd, c_wr = best
    return GemmPlan(tile, a_rd, b_rd, c_rd, c_wr, sram, folds * per_fold, folds)


# ---------------------------------------------------------------------------------------------
# Per-op costs
# ---------------------------------------------------------------------------------------------
def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _gemm_operand_shapes(op: Op, shapes: Mapping[str, tuple[int, ...]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    a, b = shapes[op.args["a"]], shapes[op.args["b"]]
    if op.kind == "gemm_batched":
        return view_shape(a, op.attrs.get("a_view")), view_shape(b, op.attrs.get("b_view"))
    return a, b


def _role(op: Op, producers: Mapping[str, Op], n: int | None = None) -> str:
    """A coarse label of what an op does, for the MAC breakdown."""
    if op.family == "move":
        return "movement"
    if op.kind == "scale":
        return "elementwise"
    if op.kind == "pairwise_max":
        return "max"
    b = producers.get(op.args["b"])
    if (op.kind == "gemm_batched" and b is not None and b.kind == "im2col") or op.attrs.get("conv"):
        return "conv"
    if op.kind == "gemm" and op.attrs.get("linear"):
        return "linear"
    if n == 1:
        return "reduction"
    return "matmul"


def _category(op: Op) -> str:
    """Plot stack: ``movement``, ``pwl`` (an op that only evaluates a PWL table) or ``gemm``."""
    if op.family == "move":
        return "movement"
    act = op.epilogue.get("act", "none")
    if (
        op.kind == "scale"
        and set(op.args) == {"x"}
        and act == "pwl"
        and op.attrs.get("alpha", 1.0) == 1.0
        and op.attrs.get("beta", 0.0) == 0.0
    ):
        return "pwl"
    return "gemm"


def op_cost(
    i: int, op: Op, shapes: Mapping[str, tuple[int, ...]], cfg: AcceleratorConfig, producers: Mapping[str, Op]
) -> dict[str, Any]:
    """The cost of op number ``i`` (a dict of counts, traffic, cycles and energy; see the module docstring)."""
    w = cfg.bytes_per_element
    out_shape = shapes[op.out]
    out_elems = _size(out_shape)
    act = op.epilogue.get("act", "none") if op.family == "gemm" else "none"
    d: dict[str, Any] = {
        "index": i,
        "kind": op.kind,
        "family": op.family,
        "layer": op.layer,
        "what": op.what,
        "out": op.out,
        "shape": list(out_shape),
        "epilogue": act,
        "category": _category(op),
        "batch": None,
        "M": None,
        "N": None,
        "K": None,
        "tile": None,
        "folds": 0,
    }
    macs = pwl = relu = 0
    rd = wr = sram = 0  # elements
    # int8 GEMMs (nmengine.compile.quantize): one byte per weight, plus the float scales
    precision = op.attrs.get("precision", "float32") if op.family == "gemm" else None
    b_rd = 0
    int8_extra = 0.0
    compute = 0
    if op.kind in ("gemm", "gemm_batched"):
        batch, m, n, k = gemm_dims(op, shapes)
        sa, sb = _gemm_operand_shapes(op, shapes)
        a_batched = _size(sa[:-2]) if op.kind == "gemm_batched" else 1
        b_batched = _size(sb[:-2]) if op.kind == "gemm_batched" else 1
        a_res = m * k <= cfg.elements("a")
        b_res = k * n <= cfg.elements("b")
        c_res = m * n <= cfg.elements("c")
        g = gemm_plan(m, n, k, cfg, a_res, b_res, c_res)
        # An operand shared by the whole batch and resident on chip is fetched once for the op.
        a_rd = m * k if (a_batched == 1 and batch > 1 and a_res) else batch * g.a_reads
        b_rd = k * n if (b_batched == 1 and batch > 1 and b_res) else batch * g.b_reads
        extra = 0
        if "bias" in op.args:
            extra += _size(shapes[op.args["bias"]])
        if "bias_row" in op.args:
            extra += _size(shapes[op.args["bias_row"]])
        if "res" in op.args:
            extra += min(_size(shapes[op.args["res"]]), batch * m * n)
        macs = batch * m * n * k
        if precision == "int8":
            int8_extra = sum(
                4.0 * _size(shapes[op.args[r]]) for r in ("w_scale", "inv_smooth", "a_static") if r in op.args
            )
        rd = a_rd + b_rd + batch * g.c_reads + extra
        wr = batch * g.c_writes
        sram = batch * g.sram_elems
        compute = batch * g.cycles_per_gemm
        d.update(
            batch=batch,
            M=m,
            N=n,
            K=k,
            tile=g.tile,
            folds=batch * g.folds,
            resident={"a": a_res, "b": b_res, "c": c_res},
        )
        d["role"] = _role(op, producers, n)
    elif op.kind == "scale":
        factors = scale_factors(op)
        macs = out_elems * factors
        rd = sum(_size(shapes[v]) for v in op.args.values())
        wr = out_elems
        sram = rd + wr
        compute = _cdiv(out_elems * max(factors, 1), cfg.cols)
        d["factors"] = factors
        d["role"] = _role(op, producers)
    elif op.kind == "pairwise_max":
        x = shapes[op.args["x"]]
        steps = _size(x[:-1]) * (x[-1] - 1)
        macs = 2 * steps
        relu = steps
        rd = _size(x)
        wr = out_elems
        sram = 3 * steps  # every step reads two values from the buffer and writes one back
        compute = _cdiv(max(macs, 1), cfg.cols)
        d["role"] = _role(op, producers)
    else:  # data movement
        d["role"] = "movement"
        if op.kind != "reshape":
            if op.kind == "gather":  # the gathered rows and the indices, not the whole table
                rd = out_elems + _size(shapes[op.args["ids"]])
            elif op.kind == "slice_rows":  # the rows kept; "like" only lends its shape
                rd = out_elems
            else:  # the source once (and a pack/unpack/positions mask)
                rd = sum(_size(shapes[v]) for v in op.args.values())
            wr = out_elems
    if act == "pwl":
        pwl = out_elems
    elif act == "relu":
        relu += out_elems
    dram_read = rd * w
    if precision == "int8":
        dram_read += int8_extra - b_rd * (w - 1)
    dram_write = wr * w
    dram = dram_read + dram_write
    # Every DRAM byte also passes through a buffer once (filled on read, drained on write).
    sram_bytes = sram * w + dram
    memory = dram / cfg.dram_bytes_per_cycle
    cycles = max(float(compute), memory)
    seconds = cycles / cfg.clock_hz
    e_mac = macs * cfg.mac_pj
    e_pwl = pwl * cfg.pwl_pj
    e_cmp = relu * cfg.cmp_pj
    e_sram = sram_bytes * cfg.sram_pj_per_byte
    e_dram = dram * cfg.dram_pj_per_byte
    e_static = cfg.static_power_w * seconds * 1e12
    energy = e_mac + e_pwl + e_cmp + e_sram + e_dram + e_static
    unfused = 2 * w * out_elems if act in ("pwl", "relu") else 0.0
    d.update(
        precision=precision,
        int8_macs=int(macs) if precision == "int8" else 0,
        macs=int(macs),
        pwl_evals=int(pwl),
        relu_evals=int(relu),
        dram_read_bytes=float(dram_read),
        dram_write_bytes=float(dram_write),
        dram_bytes=float(dram),
        sram_bytes=float(sram_bytes),
        compute_cycles=float(compute),
        memory_cycles=float(memory),
        cycles=float(cycles),
        bound="movement" if op.family == "move" else ("compute" if compute >= memory else "memory"),
        seconds=seconds,
        utilisation=(macs / (cycles * cfg.rows * cfg.cols)) if cycles > 0 else 0.0,
        energy_pj=energy,
        energy_mac_pj=e_mac,
        energy_pwl_pj=e_pwl,
        energy_cmp_pj=e_cmp,
        energy_sram_pj=e_sram,
        energy_dram_pj=e_dram,
        energy_static_pj=e_static,
        unfused_extra_bytes=float(unfused),
        unfused_extra_cycles=unfused / cfg.dram_bytes_per_cycle,
        unfused_extra_energy_pj=unfused * (cfg.dram_pj_per_byte + cfg.sram_pj_per_byte),
        flops=int(op_flops(op, shapes)),
    )
    return d


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def default_input_shapes(program: Program, batch: int = 1, seq: int = 128) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: a free leading dim becomes ``batch``, any other free dim ``seq``."""
    out = {}
    for name, spec in program.inputs.items():
        out[name] = tuple((batch if j == 0 else seq) if d is None else int(d) for j, d in enumerate(spec.shape))
    return out


def cost_report(
    program: Program,
    config: Any = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    batch: int | None = None,
) -> CostReport:
    """Estimate the cost of running ``program`` on the accelerator ``config``.

    ``config`` is an :class:`AcceleratorConfig`, a dict of its fields, a JSON path, or None for the
    defaults.  ``input_shapes`` maps every program input to a concrete shape (default:
    :func:`default_input_shapes` with batch 1 and sequence 128).  ``batch`` is the number of inferences
    one run performs (default: the leading dim of the first input), used for per-inference figures.
    """
    program = program.expanded()  # fused ops are costed as their GEMM + PWL expansion
    cfg = as_config(config)
    if input_shapes is None:
        input_shapes = default_input_shapes(program)
    shapes = infer_shapes(program, input_shapes)
    if batch is None:
        first = next(iter(program.inputs), None)
        batch = int(shapes[first][0]) if first is not None and len(shapes[first]) else 1
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    producers = {op.out: op for op in program.ops}
    ops = [op_cost(i, op, shapes, cfg, producers) for i, op in enumerate(program.ops)]
    return CostReport(program.name, cfg, {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}, batch, ops)


def example_inputs(program: Program, input_shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the given shapes: floats ~ N(0, 1); integer inputs used as gather indices are
    uniform over the table's rows, other integer inputs (masks) are ones."""
    rng = np.random.default_rng(seed)
    rows: dict[str, int] = {}
    for op in program.ops:
        if op.kind == "gather" and op.args["ids"] in program.inputs:
            n = program.constants[op.args["table"]].shape[0] if op.args["table"] in program.constants else 1
            rows[op.args["ids"]] = min(rows.get(op.args["ids"], n), n)
    out = {}
    for name, spec in program.inputs.items():
        shape = tuple(int(d) for d in input_shapes[name])
        if spec.dtype == "int64":
            out[name] = (
                rng.integers(0, rows[name], size=shape) if name in rows else np.ones(shape, dtype=np.int64)
            ).astype(np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out
