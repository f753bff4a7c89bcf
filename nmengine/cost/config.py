"""The accelerator a cost report describes: systolic array, buffers, DRAM, clock and energy per operation.

See :mod:`nmengine.cost.model` (and ``docs/cost.md``) for how each field enters the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["AcceleratorConfig", "DATAFLOWS", "as_config"]

DATAFLOWS = ("output", "weight", "input")
_DATAFLOW_ALIASES = {
    "os": "output",
    "ws": "weight",
    "is": "input",
    "output_stationary": "output",
    "weight_stationary": "weight",
    "input_stationary": "input",
}


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
                    f"({self.rows}*{self.cols}*{self.bytes_per_element:g} = {tile:g} bytes)"
                )
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


def as_config(config: Any) -> AcceleratorConfig:
    """An :class:`AcceleratorConfig` from a config, a dict of its fields, a JSON text or path, or None (defaults)."""
    if config is None:
        return AcceleratorConfig()
    if isinstance(config, AcceleratorConfig):
        return config
    if isinstance(config, Mapping):
        return AcceleratorConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        return AcceleratorConfig.from_json(config)
    raise TypeError(f"config must be an AcceleratorConfig, a dict or a JSON path, got {type(config).__name__}")
