"""Describe the benchmark machine: CPU model, cores, clock, peak FLOP/s, numpy and its BLAS.

Reusable by every benchmark::

    from bench.machine import describe, peak_gflops
    info = describe()          # dict, JSON-serialisable
    print(format_machine(info))

The clock is the larger of /proc/cpuinfo's "cpu MHz" (often the nominal clock under a hypervisor)
and a measurement by nmengine's core (a chain of dependent integer adds, one per cycle), because
boost clocks are what the FMA units run at.  Peak single-precision FLOP/s of an AVX2/FMA core with
two 256-bit FMA pipes (Zen 2/3/4, Haswell..): 2 pipes x 8 lanes x 2 flops = 32 per cycle (Zen 4
executes AVX-512 as 2 x 256 bits, so its AVX-512 peak is the same); an Intel core with AVX-512 and
two 512-bit pipes: 64 per cycle (see :func:`flops_per_cycle`).
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any, Optional

FLOPS_PER_CYCLE_AVX2 = 2 * 8 * 2  # FMA pipes x fp32 lanes x (mul + add)
FLOPS_PER_CYCLE_AVX512 = 2 * 16 * 2  # Intel server cores with two 512-bit FMA pipes (Skylake-SP .. Sapphire Rapids)


def flops_per_cycle() -> int:
    """fp32 FLOPs per cycle and core: two 512-bit FMA pipes on Intel CPUs with AVX-512 (an assumption:
    a few Xeons have one), else two 256-bit pipes (AVX2 CPUs, and Zen 4, which runs AVX-512 as 2 x 256)."""
    info = _cpuinfo()
    avx512 = "avx512f" in info.get("flags", "").split()
    return FLOPS_PER_CYCLE_AVX512 if avx512 and info.get("vendor_id") == "GenuineIntel" else FLOPS_PER_CYCLE_AVX2


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def cpu_model() -> str:
    """CPU model name (e.g. 'AMD EPYC')."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_mhz_nominal() -> Optional[float]:
    v = _cpuinfo().get("cpu MHz")
    try:
        return float(v) if v else None
    except ValueError:
        return None


def measure_ghz(repeats: int = 3) -> Optional[float]:
    """Measured core clock (GHz) via nmengine's core, best of `repeats`; None when unavailable."""
    try:
        from nmengine import _core  # type: ignore[attr-defined]
    except ImportError:
        return None
    best = max(float(_core.measure_ghz()) for _ in range(repeats))
    return best or None


def cores() -> int:
    """Usable cores (the affinity mask when available)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def peak_gflops(n_cores: int, ghz: float, flops_per_cycle: int = FLOPS_PER_CYCLE_AVX2) -> float:
    """Peak fp32 GFLOP/s = cores * 2 FMA * 8 lanes * 2 * GHz."""
    return n_cores * flops_per_cycle * ghz


def blas_info() -> list[dict[str, Any]]:
    """Loaded BLAS/OpenMP libraries (threadpoolctl), or numpy's build config."""
    try:
        import numpy  # noqa: F401  (loads the BLAS)
        from threadpoolctl import threadpool_info

        return [
            {k: d.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads", "filepath")}
            for d in threadpool_info()
        ]
    except ImportError:
        pass
    try:
        import numpy as np

        cfg = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return [
            {
                "name": blas.get("name"),
                "version": blas.get("version"),
                "openblas configuration": blas.get("openblas configuration"),
            }
        ]
    except Exception:  # pragma: no cover
        return []


def describe(measure: bool = True) -> dict[str, Any]:
    """Everything a benchmark report needs about this machine (JSON-serialisable)."""
    import numpy as np

    nominal = cpu_mhz_nominal()
    measured = measure_ghz() if measure else None
    ghz = max(x for x in (measured, (nominal or 0) / 1000.0, 0.0) if x is not None) or None
    n = cores()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": n,
        "ghz_nominal": None if nominal is None else nominal / 1000.0,
        "ghz_measured": measured,
        "ghz": ghz,
        "peak_gflops": None if ghz is None else peak_gflops(n, ghz, flops_per_cycle()),
        "peak_gflops_per_core": None if ghz is None else peak_gflops(1, ghz, flops_per_cycle()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "flags": sorted(
            set(
                re.findall(
                    r"\b(avx2|fma|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni|amx_int8)\b",
                    _cpuinfo().get("flags", ""),
                )
            )
        ),
    }
    try:
        import nmengine as nm

        info["nmengine_kernel"] = nm.kernel_info()
        info["nmengine_int8_kernel"] = nm.kernels_int8.qkernel_info()
    except Exception:  # pragma: no cover - core not built
        pass
    return info


def _ghz(v: Optional[float]) -> str:
    return "unknown" if v is None else f"{v:.2f} GHz"


def format_machine(info: dict[str, Any]) -> str:
    """A few human-readable lines."""
    lines = [
        f"CPU: {info['cpu']}, {info['cores']} cores, flags {' '.join(info['flags'])}",
        f"clock: nominal {_ghz(info['ghz_nominal'])}, measured {_ghz(info['ghz_measured'])} "
        f"-> peak {info['peak_gflops']:.0f} GFLOP/s fp32 ({info['peak_gflops_per_core']:.0f}/core)"
        if info.get("peak_gflops")
        else "clock: unknown",
        f"numpy {info['numpy']}, python {info['python']}",
    ]
    for b in info.get("blas", []):
        lines.append("BLAS: " + ", ".join(f"{k}={v}" for k, v in b.items() if v is not None and k != "filepath"))
    if info.get("nmengine_kernel"):
        q = info.get("nmengine_int8_kernel") or {}
        lines.append(
            f"nmengine: float kernel {info['nmengine_kernel'].get('kernel')}, int8 kernel {q.get('kernel')} "
            f"(available: {', '.join(q.get('available', []))})"
        )
    if info.get("OPENBLAS_CORETYPE"):
        lines.append(f"OPENBLAS_CORETYPE={info['OPENBLAS_CORETYPE']}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_machine(describe()))
