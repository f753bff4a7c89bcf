"""The cost report: per-op costs aggregated by layer and in total, as a table, CSV, JSON or a plot."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from .config import AcceleratorConfig

__all__ = ["CostReport"]


# ---------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------
_SUM_KEYS = (
    "macs",
    "pwl_evals",
    "relu_evals",
    "dram_read_bytes",
    "dram_write_bytes",
    "dram_bytes",
    "sram_bytes",
    "compute_cycles",
    "memory_cycles",
    "cycles",
    "seconds",
    "energy_pj",
    "energy_mac_pj",
    "energy_pwl_pj",
    "energy_cmp_pj",
    "energy_sram_pj",
    "energy_dram_pj",
    "energy_static_pj",
    "unfused_extra_bytes",
    "unfused_extra_cycles",
    "unfused_extra_energy_pj",
    "flops",
    "int8_macs",
)


def _aggregate(ops: Sequence[Mapping[str, Any]], cfg: AcceleratorConfig) -> dict[str, Any]:
    t: dict[str, Any] = {k: 0 for k in _SUM_KEYS}
    for key in (
        "stack_cycles_gemm",
        "stack_cycles_pwl",
        "stack_cycles_movement",
        "stack_energy_gemm_pj",
        "stack_energy_pwl_pj",
        "stack_energy_movement_pj",
    ):
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

    def __init__(
        self,
        program_name: str,
        config: AcceleratorConfig,
        input_shapes: Mapping[str, Sequence[int]],
        batch: int,
        ops: list[dict[str, Any]],
    ) -> None:
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
    def attach_measurements(
        self, profile: Sequence[Mapping[str, Any]], cpu_power_w: float | None = None
    ) -> "CostReport":
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
                raise ValueError(
                    f"profile op {idx} is in layer {p['layer']!r}, the report has {o['layer']!r}: "
                    "was it measured on another program?"
                )
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
        return {
            "program": self.program_name,
            "config": self.config.to_dict(),
            "input_shapes": self.input_shapes,
            "batch": self.batch,
            "ops": self.ops,
            "layers": self.layers,
            "total": self.total,
        }

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
        int8 = bool(self.total.get("int8_macs"))
        if int8:  # the GEMM precision of each layer: the share of its MACs that run in int8
            head.insert(3, "int8")
        if self.measured:
            head += ["measured", "GFLOP/s"]
        right = set(range(1, len(head))) - {head.index("bound")}
        rows: list[list[str]] = []
        layers = self.layers if max_layers is None else self.layers[:max_layers]

        def line(r: Mapping[str, Any], name: str, n_ops: int) -> list[str]:
            bound = "memory" if r["memory_cycles"] > r["compute_cycles"] else "compute"
            if r["macs"] == 0 and r["compute_cycles"] == 0:
                bound = "movement" if r["dram_bytes"] else "-"
            cells = [
                name,
                str(n_ops),
                _si(r["macs"]),
                _si(r["pwl_evals"]),
                _bytes(r["dram_bytes"]),
                _si(r["cycles"]),
                bound,
                f"{100 * r['utilisation']:.1f}%",
                _energy(r["energy_pj"]),
            ]
            if int8:
                cells.insert(3, f"{100 * r['int8_macs'] / r['macs']:.0f}%" if r["macs"] else "-")
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
        out = [
            f"Cost of {self.program_name!r} on a {cfg.rows}x{cfg.cols} {cfg.dataflow}-stationary array "
            f"@ {cfg.clock_hz / 1e9:g} GHz, {cfg.dram_bytes_per_cycle:g} B/cycle DRAM, "
            f"inputs {self.input_shapes}",
            fmt(head),
            rule,
        ]
        out += [fmt(r) for r in rows]
        if hidden:
            out.append(f"... {hidden} more layers")
        out += [rule, fmt(total_row), ""]
        share = ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in sorted(t["mac_share_by_kind"].items(), key=lambda kv: -kv[1])
        )
        out.append(f"MACs by op kind: {share or '-'}")
        role = ", ".join(
            f"{k} {100 * v:.1f}%" for k, v in sorted(t["mac_share_by_role"].items(), key=lambda kv: -kv[1])
        )
        out.append(f"MACs by role:    {role or '-'}")
        out.append(
            f"latency {_time(t['latency_s'])} for batch {self.batch}: {t['inferences_per_s']:.4g} inferences/s, "
            f"{_energy(t['energy_per_inference_j'] * 1e12)} per inference, {t['gops']:.1f} GOPS "
            f"(peak {t['peak_gops']:.0f}), {t['power_w']:.3g} W, {t['gops_per_w']:.1f} GOPS/W"
        )
        out.append(
            f"energy: MAC {_energy(t['energy_mac_pj'])}, PWL {_energy(t['energy_pwl_pj'])}, "
            f"ReLU/max {_energy(t['energy_cmp_pj'])}, buffers {_energy(t['energy_sram_pj'])}, "
            f"DRAM {_energy(t['energy_dram_pj'])}"
            + (f", static {_energy(t['energy_static_pj'])}" if t["energy_static_pj"] else "")
        )
        out.append(
            f"fused epilogues: {_si(t['pwl_evals'])} PWL evaluations need no special function unit; "
            f"unfused they would add {_bytes(t['fusion_saved_dram_bytes'])} DRAM traffic, "
            f"{_si(t['fusion_saved_cycles'])} cycles, {_energy(t['fusion_saved_energy_pj'])}"
        )
        if self.measured:
            m = t
            extra = ""
            if "measured_gops_per_w" in m:
                extra = (
                    f", {_energy(m['measured_energy_per_inference_j'] * 1e12)} per inference, "
                    f"{m['measured_gops_per_w']:.2f} GOPS/W at {m['cpu_power_w']:g} W"
                )
            out.append(
                f"measured (this CPU): {_time(m['measured_s'])}, {m['measured_inferences_per_s']:.4g} inferences/s, "
                f"{m['measured_gflops']:.2f} GFLOP/s{extra}; the model is {m['model_speedup']:.3g}x faster"
            )
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
            parts = {
                "GEMM": [lay["stack_cycles_gemm"] for lay in self.layers],
                "PWL": [lay["stack_cycles_pwl"] for lay in self.layers],
                "movement": [lay["stack_cycles_movement"] for lay in self.layers],
            }
            ylabel = "cycles"
        else:
            parts = {
                "GEMM": [lay["stack_energy_gemm_pj"] * 1e-6 for lay in self.layers],
                "PWL": [lay["stack_energy_pwl_pj"] * 1e-6 for lay in self.layers],
                "movement": [lay["stack_energy_movement_pj"] * 1e-6 for lay in self.layers],
            }
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
        ax.set_title(
            f"{self.program_name}: {metric} per layer ({self.config.rows}x{self.config.cols} "
            f"{self.config.dataflow}-stationary)"
        )
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.fspath(path))
        return os.fspath(path)

    def __repr__(self) -> str:
        t = self.total
        return (
            f"CostReport({self.program_name!r}, {t['ops']} ops, {len(self.layers)} layers, {_si(t['macs'])} MACs, "
            f"{_si(t['cycles'])} cycles, {_energy(t['energy_pj'])})"
        )


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
