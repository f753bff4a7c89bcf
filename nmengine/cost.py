"""Cost model: what a Program costs on one GEMM accelerator (a systolic array with a PWL epilogue).

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
*Work.*  ``macs = batch * M * N * K`` (:func:`nmengine.runtime.gemm_dims` gives the dims).

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
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .program import Op, Program, view_shape
from .shapes import gemm_dims, infer_shapes, op_flops

__all__ = [
    "AcceleratorConfig",
    "CostReport",
    "cost_report",
    "default_input_shapes",
    "example_inputs",
    "run_report",
    "add_report_arguments",
    "add_report_parser",
    "report_main",
    "DATAFLOWS",
]

DATAFLOWS = ("output", "weight", "input")
_DATAFLOW_ALIASES = {"os": "output", "ws": "weight", "is": "input", "output_stationary": "output",
                     "weight_stationary": "weight", "input_stationary": "input"}

#: Operand roles of a ``scale`` op that are one MAC-unit operation per output element each.
_SCALE_FACTORS = ("mul", "row_scale", "col_scale", "bias", "bias_row", "res")


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AcceleratorConfig:
    """One GEMM accelerator: systolic array, buffers, DRAM, clock and energy per operation.

    Energy defaults are Horowitz, "Computing's energy problem (and what we can do about it)",
    ISSCC 2014, 45 nm, 0.9 V:

    * ``mac_pj = 4.6``: 32-bit float multiply (3.7 pJ) + 32-bit float add (0.9 pJ).
    * ``cmp_pj = 0.9``: a ReLU / max comparison, priced as a 32-bit float add.
    * ``pwl_pj = 14.6``: one PWL evaluation = a float multiply-add ``s*x + c`` (4.6 pJ) plus reading the
      segment's slope and intercept (64 bits), priced as an 8 KB SRAM 64-bit read (10 pJ) -- an upper
      bound: real tables are a few hundred bytes and sit in registers.
    * ``sram_pj_per_byte = 2.5``: a 64-bit read from a 32 KB SRAM bank is ~20 pJ (8 KB: 10 pJ, 1 MB:
      100 pJ); the buffers are banked.
    * ``dram_pj_per_byte = 250``: a 64-bit DRAM access is 1.3-2.6 nJ; 2.0 nJ / 8 bytes.

    The array, buffers, bandwidth and clock defaults describe a small edge accelerator (32x32 fp32 MACs
    at 1 GHz, 2.05 TOPS peak; 256 KiB A and B, 128 KiB C; 16 B/cycle = 16 GB/s of DRAM, about one
    DDR4-2400 channel); they are assumptions, not a published design.  Static power is not modelled
    unless ``static_power_w`` is set.
    """

    rows: int = 32
    cols: int = 32
    dataflow: str = "output"
    a_buffer_bytes: int = 256 * 1024
    b_buffer_bytes: int = 256 * 1024
    c_buffer_bytes: int = 128 * 1024
    dram_bytes_per_cycle: float = 16.0
    clock_hz: float = 1.0e9
    bytes_per_element: float = 4.0
    mac_pj: float = 4.6
    pwl_pj: float = 14.6
    cmp_pj: float = 0.9
    sram_pj_per_byte: float = 2.5
    dram_pj_per_byte: float = 250.0
    static_power_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive integer (array size), got {v!r}")
            object.__setattr__(self, name, int(v))
        df = str(self.dataflow).lower()
        df = _DATAFLOW_ALIASES.get(df, df)
        if df not in DATAFLOWS:
            raise ValueError(f"dataflow must be one of {DATAFLOWS} (or os/ws/is), got {self.dataflow!r}")
        object.__setattr__(self, "dataflow", df)
        for name in ("dram_bytes_per_cycle", "clock_hz", "bytes_per_element"):
            v = getattr(self, name)
            if not _is_real(v) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("mac_pj", "pwl_pj", "cmp_pj", "sram_pj_per_byte", "dram_pj_per_byte", "static_power_w"):
            v = getattr(self, name)
            if not _is_real(v) or not v >= 0 or not math.isfinite(v):
                raise ValueError(f"{name} must be a non-negative finite number (energy/power), got {v!r}")
            object.__setattr__(self, name, float(v))
        tile = self.rows * self.cols * self.bytes_per_element
        for name in ("a_buffer_bytes", "b_buffer_bytes", "c_buffer_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not _is_real(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive number of bytes, got {v!r}")
            if v < tile:
                raise ValueError(
                    f"{name}={v} is too small to hold one {self.rows}x{self.cols} tile "
                    f"({self.rows}*{self.cols}*{self.bytes_per_element:g} = {tile:g} bytes)")
            object.__setattr__(self, name, int(v))

    # -- derived -------------------------------------------------------------------------------
    @property
    def peak_macs_per_cycle(self) -> int:
        return self.rows * self.cols

    @property
    def peak_gops(self) -> float:
        """Peak throughput in GOPS (a MAC is 2 ops)."""
        return 2.0 * self.rows * self.cols * self.clock_hz / 1e9

    def elements(self, buffer: str) -> int:
        """How many elements buffer ``"a"``, ``"b"`` or ``"c"`` holds."""
        return int(getattr(self, f"{buffer}_buffer_bytes") // self.bytes_per_element)

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The config as JSON text (also written to ``path`` when given)."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AcceleratorConfig":
        """Build from a mapping; keys missing take their defaults, unknown keys raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"accelerator config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown accelerator config field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(d))

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> "AcceleratorConfig":
        """From JSON text (starting with ``{``) or the path of a JSON file."""
        text = os.fspath(source)
        if not text.lstrip().startswith("{"):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"accelerator config is not valid JSON: {e}") from None
        return cls.from_dict(d)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _as_config(config: Any) -> AcceleratorConfig:
    if config is None:
        return AcceleratorConfig()
    if isinstance(config, AcceleratorConfig):
        return config
    if isinstance(config, Mapping):
        return AcceleratorConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return AcceleratorConfig.from_json(config)
    raise TypeError(f"config must be an AcceleratorConfig, a dict or a JSON path, got {type(config).__name__}")


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
class _Gemm:
    """Traffic and time of one GEMM (per batch element unless stated)."""

    tile: dict[str, int]
    a_reads: int
    b_reads: int
    c_reads: int  # partial sums read back from DRAM
    c_writes: int
    sram_elems: int  # array <-> buffer element accesses
    cycles_per_gemm: int
    folds: int


def _gemm_plan(m: int, n: int, k: int, cfg: AcceleratorConfig, a_resident: bool, b_resident: bool,
               c_resident: bool) -> _Gemm:
    """Tile choice, DRAM element traffic, buffer accesses and fold cycles of one ``M x N x K`` GEMM."""
    r, c = cfg.rows, cfg.cols
    if m == 0 or n == 0 or k == 0:  # an empty GEMM (e.g. a zero-size batch) costs nothing
        return _Gemm({}, 0, 0, 0, 0, 0, 0, 0)
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
    return _Gemm(tile, a_rd, b_rd, c_rd, c_wr, sram, folds * per_fold, folds)


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
    if op.kind == "gemm_batched" and b is not None and b.kind == "im2col":
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
    if (op.kind == "scale" and set(op.args) == {"x"} and act == "pwl"
            and op.attrs.get("alpha", 1.0) == 1.0 and op.attrs.get("beta", 0.0) == 0.0):
        return "pwl"
    return "gemm"


def _op_cost(i: int, op: Op, shapes: Mapping[str, tuple[int, ...]], cfg: AcceleratorConfig,
             producers: Mapping[str, Op]) -> dict[str, Any]:
    w = cfg.bytes_per_element
    out_shape = shapes[op.out]
    out_elems = _size(out_shape)
    act = op.epilogue.get("act", "none") if op.family == "gemm" else "none"
    d: dict[str, Any] = {
        "index": i, "kind": op.kind, "family": op.family, "layer": op.layer, "what": op.what,
        "out": op.out, "shape": list(out_shape), "epilogue": act, "category": _category(op),
        "batch": None, "M": None, "N": None, "K": None, "tile": None, "folds": 0,
    }
    macs = pwl = relu = 0
    rd = wr = sram = 0  # elements
    compute = 0
    if op.kind in ("gemm", "gemm_batched"):
        batch, m, n, k = gemm_dims(op, shapes)
        sa, sb = _gemm_operand_shapes(op, shapes)
        a_batched = _size(sa[:-2]) if op.kind == "gemm_batched" else 1
        b_batched = _size(sb[:-2]) if op.kind == "gemm_batched" else 1
        a_res = m * k <= cfg.elements("a")
        b_res = k * n <= cfg.elements("b")
        c_res = m * n <= cfg.elements("c")
        g = _gemm_plan(m, n, k, cfg, a_res, b_res, c_res)
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
        rd = a_rd + b_rd + batch * g.c_reads + extra
        wr = batch * g.c_writes
        sram = batch * g.sram_elems
        compute = batch * g.cycles_per_gemm
        d.update(batch=batch, M=m, N=n, K=k, tile=g.tile, folds=batch * g.folds,
                 resident={"a": a_res, "b": b_res, "c": c_res})
        d["role"] = _role(op, producers, n)
    elif op.kind == "scale":
        factors = sum(r in op.args for r in _SCALE_FACTORS)
        factors += (op.attrs.get("alpha", 1.0) != 1.0) + (op.attrs.get("beta", 0.0) != 0.0)
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
        macs=int(macs), pwl_evals=int(pwl), relu_evals=int(relu),
        dram_read_bytes=float(dram_read), dram_write_bytes=float(dram_write), dram_bytes=float(dram),
        sram_bytes=float(sram_bytes),
        compute_cycles=float(compute), memory_cycles=float(memory), cycles=float(cycles),
        bound="movement" if op.family == "move" else ("compute" if compute >= memory else "memory"),
        seconds=seconds,
        utilisation=(macs / (cycles * cfg.rows * cfg.cols)) if cycles > 0 else 0.0,
        energy_pj=energy, energy_mac_pj=e_mac, energy_pwl_pj=e_pwl, energy_cmp_pj=e_cmp,
        energy_sram_pj=e_sram, energy_dram_pj=e_dram, energy_static_pj=e_static,
        unfused_extra_bytes=float(unfused),
        unfused_extra_cycles=unfused / cfg.dram_bytes_per_cycle,
        unfused_extra_energy_pj=unfused * (cfg.dram_pj_per_byte + cfg.sram_pj_per_byte),
        flops=int(op_flops(op, shapes)),
    )
    return d


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
_SUM_KEYS = ("macs", "pwl_evals", "relu_evals", "dram_read_bytes", "dram_write_bytes", "dram_bytes",
             "sram_bytes", "compute_cycles", "memory_cycles", "cycles", "seconds", "energy_pj",
             "energy_mac_pj", "energy_pwl_pj", "energy_cmp_pj", "energy_sram_pj", "energy_dram_pj",
             "energy_static_pj", "unfused_extra_bytes", "unfused_extra_cycles", "unfused_extra_energy_pj",
             "flops")


def _aggregate(ops: Sequence[Mapping[str, Any]], cfg: AcceleratorConfig) -> dict[str, Any]:
    t: dict[str, Any] = {k: 0 for k in _SUM_KEYS}
    for key in ("stack_cycles_gemm", "stack_cycles_pwl", "stack_cycles_movement",
                "stack_energy_gemm_pj", "stack_energy_pwl_pj", "stack_energy_movement_pj"):
        t[key] = 0.0
    for o in ops:
        for k in _SUM_KEYS:
            t[k] += o[k]
        cat = o["category"]
        t[f"stack_cycles_{cat}"] += o["cycles"]
        if cat == "movement":
            t["stack_energy_movement_pj"] += o["energy_pj"]
        elif cat == "pwl":
            t["stack_energy_pwl_pj"] += o["energy_pj"]
        else:
            t["stack_energy_gemm_pj"] += o["energy_pj"] - o["energy_pwl_pj"]
            t["stack_energy_pwl_pj"] += o["energy_pwl_pj"]
    t["ops"] = len(ops)
    t["movement_ops"] = sum(o["family"] == "move" for o in ops)
    t["utilisation"] = t["macs"] / (t["cycles"] * cfg.rows * cfg.cols) if t["cycles"] else 0.0
    return t


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
class CostReport:
    """Per-op, per-layer and total cost of one Program on one accelerator (see :mod:`nmengine.cost`).

    ``ops`` is a list of per-op dicts, ``layers`` a list of per-layer dicts (ops grouped by ``op.layer``,
    in program order), ``total`` a dict for the whole model.  Counts are plain numbers: MACs, PWL and
    ReLU evaluations, bytes, cycles, seconds, picojoules.
    """

    def __init__(self, program_name: str, config: AcceleratorConfig, input_shapes: Mapping[str, Sequence[int]],
                 batch: int, ops: list[dict[str, Any]]) -> None:
        self.program_name = program_name
        self.config = config
        self.input_shapes = {k: list(v) for k, v in input_shapes.items()}
        self.batch = int(batch)
        self.ops = ops
        self.layers: list[dict[str, Any]] = []
        order: dict[str, list[dict[str, Any]]] = {}
        for o in ops:
            order.setdefault(o["layer"], []).append(o)
        for name, members in order.items():
            lay = _aggregate(members, config)
            lay["layer"] = name
            lay["kinds"] = sorted({o["kind"] for o in members})
            self.layers.append(lay)
        self.total = self._totals()
        self.measured = False

    def _totals(self) -> dict[str, Any]:
        cfg = self.config
        t = _aggregate(self.ops, cfg)
        t["layers"] = len(self.layers)
        t["batch"] = self.batch
        macs_by_kind: dict[str, int] = {}
        macs_by_role: dict[str, int] = {}
        for o in self.ops:
            macs_by_kind[o["kind"]] = macs_by_kind.get(o["kind"], 0) + o["macs"]
            macs_by_role[o["role"]] = macs_by_role.get(o["role"], 0) + o["macs"]
        macs_by_kind = {k: v for k, v in macs_by_kind.items() if v}
        macs_by_role = {k: v for k, v in macs_by_role.items() if v}
        t["macs_by_kind"] = macs_by_kind
        t["mac_share_by_kind"] = {k: v / t["macs"] for k, v in macs_by_kind.items()} if t["macs"] else {}
        t["macs_by_role"] = macs_by_role
        t["mac_share_by_role"] = {k: v / t["macs"] for k, v in macs_by_role.items()} if t["macs"] else {}
        t["ops_count"] = 2 * t["macs"]
        sec = t["seconds"]
        energy_j = t["energy_pj"] * 1e-12
        t["energy_j"] = energy_j
        t["inferences_per_s"] = self.batch / sec if sec else 0.0  # 0 when nothing takes time
        t["latency_s"] = sec
        t["energy_per_inference_j"] = energy_j / self.batch if self.batch else energy_j
        t["gops"] = t["ops_count"] / sec / 1e9 if sec else 0.0
        t["power_w"] = energy_j / sec if sec else 0.0
        t["gops_per_w"] = t["ops_count"] / energy_j / 1e9 if energy_j else 0.0
        t["peak_gops"] = cfg.peak_gops
        t["fusion_saved_dram_bytes"] = t["unfused_extra_bytes"]
        t["fusion_saved_cycles"] = t["unfused_extra_cycles"]
        t["fusion_saved_energy_pj"] = t["unfused_extra_energy_pj"]
        t["sfu_evals_avoided"] = t["pwl_evals"]
        return t

    # -- measurements --------------------------------------------------------------------------
    def attach_measurements(self, profile: Sequence[Mapping[str, Any]],
                            cpu_power_w: float | None = None) -> "CostReport":
        """Put measured wall time (``program.profile(inputs)`` output) next to the estimate.

        Each profile entry needs ``index`` (op index) and ``seconds``.  Adds to every op, layer and the
        total ``measured_s`` and ``measured_gflops`` (the op's arithmetic from
        :func:`nmengine.runtime.op_flops` over the measured time), and to the total
        ``measured_inferences_per_s`` and ``model_speedup`` (measured / modelled time).  With
        ``cpu_power_w`` (the CPU's power draw, e.g. its TDP) also ``measured_energy_per_inference_j`` and
        ``measured_gops_per_w`` (2 * MACs per joule, as for the model).  Returns ``self``.
        """
        by_index = {o["index"]: o for o in self.ops}
        for o in self.ops:
            o["measured_s"] = 0.0
        for p in profile:
            idx = int(p["index"])
            if idx not in by_index:
                raise ValueError(f"profile entry for op {idx}, but the program has {len(self.ops)} ops")
            o = by_index[idx]
            if p.get("layer") is not None and p["layer"] != o["layer"]:
                raise ValueError(f"profile op {idx} is in layer {p['layer']!r}, the report has {o['layer']!r}: "
                                 "was it measured on another program?")
            o["measured_s"] += float(p["seconds"])

        def gflops(flops: float, s: float) -> float:
            return flops / s / 1e9 if s > 0 else 0.0

        for o in self.ops:
            o["measured_gflops"] = gflops(o["flops"], o["measured_s"])
        for lay in self.layers:
            s = sum(o["measured_s"] for o in self.ops if o["layer"] == lay["layer"])
            lay["measured_s"] = s
            lay["measured_gflops"] = gflops(lay["flops"], s)
        t = self.total
        s = sum(o["measured_s"] for o in self.ops)
        t["measured_s"] = s
        t["measured_gflops"] = gflops(t["flops"], s)
        t["measured_inferences_per_s"] = self.batch / s if s > 0 else 0.0
        t["model_speedup"] = s / t["seconds"] if t["seconds"] else 0.0
        if cpu_power_w is not None:
            if not cpu_power_w > 0:
                raise ValueError(f"cpu_power_w must be positive, got {cpu_power_w!r}")
            ej = cpu_power_w * s
            t["cpu_power_w"] = float(cpu_power_w)
            t["measured_energy_per_inference_j"] = ej / self.batch
            t["measured_gops_per_w"] = t["ops_count"] / ej / 1e9 if ej > 0 else 0.0
        self.measured = True
        return self

    # -- output --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"program": self.program_name, "config": self.config.to_dict(), "input_shapes": self.input_shapes,
                "batch": self.batch, "ops": self.ops, "layers": self.layers, "total": self.total}

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text: ``{"program", "config", "input_shapes", "batch", "ops": [...], "layers": [...], "total": {...}}``."""
        return json.dumps(self.to_dict(), indent=indent, default=_json_default, allow_nan=False)

    def to_csv(self, level: str = "ops") -> str:
        """CSV text, one row per op (``level="ops"``) or per layer (``level="layers"``), plus a total row."""
        if level not in ("ops", "layers"):
            raise ValueError(f"level must be 'ops' or 'layers', got {level!r}")
        rows = self.ops if level == "ops" else self.layers
        scalar = lambda r: {k: v for k, v in r.items() if not isinstance(v, (dict, list))}  # noqa: E731
        fields: list[str] = []
        for r in rows:
            for k in scalar(r):
                if k not in fields:
                    fields.append(k)
        total = {k: v for k, v in scalar(self.total).items() if k in fields}
        total["layer"] = "TOTAL"
        buf = io.StringIO()
        wr = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        wr.writeheader()
        for r in rows:
            wr.writerow(scalar(r))
        wr.writerow(total)
        return buf.getvalue()

    def table(self, max_layers: int | None = None) -> str:
        """A terminal table, one line per layer, then the totals and the throughput summary."""
        cfg = self.config
        head = ["layer", "ops", "MACs", "PWL", "DRAM", "cycles", "bound", "util", "energy"]
        if self.measured:
            head += ["measured", "GFLOP/s"]
        right = set(range(1, len(head))) - {6}
        rows: list[list[str]] = []
        layers = self.layers if max_layers is None else self.layers[:max_layers]

        def line(r: Mapping[str, Any], name: str, n_ops: int) -> list[str]:
            bound = "memory" if r["memory_cycles"] > r["compute_cycles"] else "compute"
            if r["macs"] == 0 and r["compute_cycles"] == 0:
                bound = "movement" if r["dram_bytes"] else "-"
            cells = [name, str(n_ops), _si(r["macs"]), _si(r["pwl_evals"]), _bytes(r["dram_bytes"]),
                     _si(r["cycles"]), bound, f"{100 * r['utilisation']:.1f}%", _energy(r["energy_pj"])]
            if self.measured:
                cells += [_time(r.get("measured_s", 0.0)), f"{r.get('measured_gflops', 0.0):.2f}"]
            return cells

        for lay in layers:
            rows.append(line(lay, lay["layer"], lay["ops"]))
        hidden = len(self.layers) - len(layers)
        t = self.total
        total_row = line(t, "TOTAL", t["ops"])
        widths = [max(len(h), *(len(r[j]) for r in rows + [total_row])) for j, h in enumerate(head)]

        def fmt(cells: list[str]) -> str:
            return "  ".join(c.rjust(wd) if j in right else c.ljust(wd) for j, (c, wd) in enumerate(zip(cells, widths)))

        rule = "-" * len(fmt(head))
        out = [f"Cost of {self.program_name!r} on a {cfg.rows}x{cfg.cols} {cfg.dataflow}-stationary array "
               f"@ {cfg.clock_hz / 1e9:g} GHz, {cfg.dram_bytes_per_cycle:g} B/cycle DRAM, "
               f"inputs {self.input_shapes}", fmt(head), rule]
        out += [fmt(r) for r in rows]
        if hidden:
            out.append(f"... {hidden} more layers")
        out += [rule, fmt(total_row), ""]
        share = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(t["mac_share_by_kind"].items(), key=lambda kv: -kv[1]))
        out.append(f"MACs by op kind: {share or '-'}")
        role = ", ".join(f"{k} {100 * v:.1f}%" for k, v in sorted(t["mac_share_by_role"].items(), key=lambda kv: -kv[1]))
        out.append(f"MACs by role:    {role or '-'}")
        out.append(f"latency {_time(t['latency_s'])} for batch {self.batch}: {t['inferences_per_s']:.4g} inferences/s, "
                   f"{_energy(t['energy_per_inference_j'] * 1e12)} per inference, {t['gops']:.1f} GOPS "
                   f"(peak {t['peak_gops']:.0f}), {t['power_w']:.3g} W, {t['gops_per_w']:.1f} GOPS/W")
        out.append(f"energy: MAC {_energy(t['energy_mac_pj'])}, PWL {_energy(t['energy_pwl_pj'])}, "
                   f"ReLU/max {_energy(t['energy_cmp_pj'])}, buffers {_energy(t['energy_sram_pj'])}, "
                   f"DRAM {_energy(t['energy_dram_pj'])}" +
                   (f", static {_energy(t['energy_static_pj'])}" if t["energy_static_pj"] else ""))
        out.append(f"fused epilogues: {_si(t['pwl_evals'])} PWL evaluations need no special function unit; "
                   f"unfused they would add {_bytes(t['fusion_saved_dram_bytes'])} DRAM traffic, "
                   f"{_si(t['fusion_saved_cycles'])} cycles, {_energy(t['fusion_saved_energy_pj'])}")
        if self.measured:
            m = t
            extra = ""
            if "measured_gops_per_w" in m:
                extra = (f", {_energy(m['measured_energy_per_inference_j'] * 1e12)} per inference, "
                         f"{m['measured_gops_per_w']:.2f} GOPS/W at {m['cpu_power_w']:g} W")
            out.append(f"measured (this CPU): {_time(m['measured_s'])}, {m['measured_inferences_per_s']:.4g} inferences/s, "
                       f"{m['measured_gflops']:.2f} GFLOP/s{extra}; the model is {m['model_speedup']:.3g}x faster")
        return "\n".join(out)

    def plot(self, path: str | os.PathLike, metric: str = "cycles") -> str:
        """Bar chart per layer of ``"cycles"`` or ``"energy"``, stacked by GEMM / PWL / movement.

        Cycles: ``gemm`` is the time of GEMM-family ops (their fused PWL epilogues cost no time),
        ``pwl`` of ops that only evaluate a PWL table (unfused activations), ``movement`` of data
        movement.  Energy: ``pwl`` is every PWL lookup's energy (fused or not), ``gemm`` the rest of the
        GEMM-family ops, ``movement`` the data-movement ops.  Needs matplotlib (``pip install
        nmengine[plot]``); returns the path written.
        """
        if metric not in ("cycles", "energy"):
            raise ValueError(f"metric must be 'cycles' or 'energy', got {metric!r}")
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("CostReport.plot needs matplotlib: pip install nmengine[plot]") from None
        names = [lay["layer"] for lay in self.layers]
        if metric == "cycles":
            parts = {"GEMM": [lay["stack_cycles_gemm"] for lay in self.layers],
                     "PWL": [lay["stack_cycles_pwl"] for lay in self.layers],
                     "movement": [lay["stack_cycles_movement"] for lay in self.layers]}
            ylabel = "cycles"
        else:
            parts = {"GEMM": [lay["stack_energy_gemm_pj"] * 1e-6 for lay in self.layers],
                     "PWL": [lay["stack_energy_pwl_pj"] * 1e-6 for lay in self.layers],
                     "movement": [lay["stack_energy_movement_pj"] * 1e-6 for lay in self.layers]}
            ylabel = "energy (uJ)"
        fig = Figure(figsize=(max(6.0, 0.22 * len(names) + 2), 4.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(names))
        bottom = np.zeros(len(names))
        for label, vals in parts.items():
            ax.bar(x, vals, bottom=bottom, label=label)
            bottom += np.asarray(vals, dtype=float)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=90, fontsize=6)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{self.program_name}: {metric} per layer ({self.config.rows}x{self.config.cols} "
                     f"{self.config.dataflow}-stationary)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.fspath(path))
        return os.fspath(path)

    def __repr__(self) -> str:
        t = self.total
        return (f"CostReport({self.program_name!r}, {t['ops']} ops, {len(self.layers)} layers, {_si(t['macs'])} MACs, "
                f"{_si(t['cycles'])} cycles, {_energy(t['energy_pj'])})")


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# -- human units --------------------------------------------------------------------------------
def _scaled(x: float, units: tuple[tuple[float, str], ...], fmt: str, last_fmt: str) -> str:
    """``x`` in the first unit it reaches; the last unit takes whatever is left (in ``last_fmt``)."""
    x = float(x)
    for div, suf in units[:-1]:
        if abs(x) >= div:
            return f"{x / div:{fmt}} {suf}"
    div, suf = units[-1]
    return f"{x / div:{last_fmt}} {suf}".rstrip()


def _si(x: float) -> str:
    return _scaled(x, ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")), ".2f", ".0f")


def _bytes(x: float) -> str:
    return _scaled(x, ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "B")), ".2f", ".0f")


def _time(s: float) -> str:
    return _scaled(s, ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")), ".3g", ".3g")


def _energy(pj: float) -> str:
    return _scaled(pj, ((1e12, "J"), (1e9, "mJ"), (1e6, "uJ"), (1e3, "nJ"), (1.0, "pJ")), ".3g", ".3g")


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def default_input_shapes(program: Program, batch: int = 1, seq: int = 128) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: a free leading dim becomes ``batch``, any other free dim ``seq``."""
    out = {}
    for name, spec in program.inputs.items():
        out[name] = tuple((batch if j == 0 else seq) if d is None else int(d) for j, d in enumerate(spec.shape))
    return out


def cost_report(program: Program, config: Any = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
                *, batch: int | None = None) -> CostReport:
    """Estimate the cost of running ``program`` on the accelerator ``config``.

    ``config`` is an :class:`AcceleratorConfig`, a dict of its fields, a JSON path, or None for the
    defaults.  ``input_shapes`` maps every program input to a concrete shape (default:
    :func:`default_input_shapes` with batch 1 and sequence 128).  ``batch`` is the number of inferences
    one run performs (default: the leading dim of the first input), used for per-inference figures.
    """
    cfg = _as_config(config)
    if input_shapes is None:
        input_shapes = default_input_shapes(program)
    shapes = infer_shapes(program, input_shapes)
    if batch is None:
        first = next(iter(program.inputs), None)
        batch = int(shapes[first][0]) if first is not None and len(shapes[first]) else 1
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    producers = {op.out: op for op in program.ops}
    ops = [_op_cost(i, op, shapes, cfg, producers) for i, op in enumerate(program.ops)]
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
            out[name] = (rng.integers(0, rows[name], size=shape) if name in rows
                         else np.ones(shape, dtype=np.int64)).astype(np.int64)
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


def _load_program(bundle_path: str | os.PathLike) -> Program:
    from . import bundle  # written alongside; imported lazily

    obj = bundle.load(bundle_path)
    if isinstance(obj, Program):
        return obj
    prog = getattr(obj, "program", None)
    if isinstance(prog, Program):
        return prog
    if isinstance(obj, (tuple, list)) and obj and isinstance(obj[0], Program):
        return obj[0]
    raise TypeError(f"{bundle_path}: the bundle does not hold a Program (got {type(obj).__name__})")


def run_report(bundle_path: str | os.PathLike, config_path: str | os.PathLike | None = None, measure: bool = False,
               batch: int = 1, seq: int = 128, plot: str | os.PathLike | None = None, metric: str = "cycles",
               fmt: str = "table", repeat: int = 3, cpu_power_w: float | None = None) -> str:
    """``nmengine report``: the cost report of a saved bundle, as text.

    Loads the Program with :func:`nmengine.bundle.load`, takes the accelerator from ``config_path``
    (JSON; defaults otherwise) and input shapes from ``batch``/``seq``.  With ``measure`` the program
    also runs on random inputs (best of ``repeat``) and measured time per layer goes next to the
    estimate.  ``plot`` writes a bar chart of ``metric``.  ``fmt`` is ``"table"``, ``"json"`` or ``"csv"``.
    """
    if fmt not in ("table", "json", "csv"):
        raise ValueError(f"fmt must be 'table', 'json' or 'csv', got {fmt!r}")
    program = _load_program(bundle_path)
    cfg = AcceleratorConfig.from_json(config_path) if config_path else AcceleratorConfig()
    shapes = default_input_shapes(program, batch=batch, seq=seq)
    report = cost_report(program, cfg, shapes, batch=batch)
    if measure:
        inputs = example_inputs(program, shapes)
        report.attach_measurements(program.profile(inputs, repeat=repeat), cpu_power_w=cpu_power_w)
    text = {"table": report.table, "json": report.to_json, "csv": report.to_csv}[fmt]()
    if plot:
        report.plot(plot, metric=metric)
        if fmt == "table":
            text += f"\nplot written to {os.fspath(plot)}"
    return text


def add_report_arguments(parser: Any) -> Any:
    """Add the ``nmengine report`` arguments to an ``argparse`` (sub)parser."""
    parser.add_argument("bundle", help="a saved program bundle (.nmb)")
    parser.add_argument("--config", default=None, help="accelerator config JSON (see AcceleratorConfig)")
    parser.add_argument("--measure", action="store_true", help="also run on this CPU and show measured time")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--seq", type=int, default=128, help="sequence length for free dims (default 128)")
    parser.add_argument("--plot", default=None, help="write a per-layer bar chart to this file")
    parser.add_argument("--metric", choices=("cycles", "energy"), default="cycles", help="what --plot shows")
    parser.add_argument("--format", dest="fmt", choices=("table", "json", "csv"), default="table")
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats with --measure (best of)")
    parser.add_argument("--cpu-power", dest="cpu_power_w", type=float, default=None,
                        help="CPU power in W, for measured energy and GOPS/W")
    return parser


def report_main(args: Any) -> int:
    """Run ``nmengine report`` from parsed arguments (see :func:`add_report_arguments`); prints, returns 0."""
    print(run_report(args.bundle, config_path=args.config, measure=args.measure, batch=args.batch, seq=args.seq,
                     plot=args.plot, metric=args.metric, fmt=args.fmt, repeat=args.repeat,
                     cpu_power_w=args.cpu_power_w))
    return 0


def add_report_parser(subparsers: Any) -> Any:
    """Register ``nmengine report`` on the CLI's subparsers (called by :mod:`nmengine.cli`)."""
    p = subparsers.add_parser(
        "report", help="accelerator cost report of a bundle (--measure adds CPU wall time)",
        description="Per-layer MACs, PWL evaluations, DRAM traffic, cycles and energy of a saved program on "
                    "a GEMM accelerator (see docs/cost.md); --measure also times it on this CPU.")
    add_report_arguments(p)
    p.set_defaults(func=report_main)
    return p
