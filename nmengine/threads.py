"""How many CPUs this process may really use: the default thread count of the compiled core.

``os.cpu_count()`` is the host's core count.  A process pinned to fewer CPUs (``taskset``, a batch
scheduler's affinity mask) or running in a container with a CPU quota (cgroup ``cpu.max`` /
``cpu.cfs_quota_us``, e.g. ``docker run --cpus=2``) that starts that many threads oversubscribes its
share, and every barrier of a parallel GEMM then waits for a descheduled thread.

``usable_cpus()`` is the smallest of: the CPUs of the process's affinity mask
(``os.sched_getaffinity``, where the platform has it, else ``os.cpu_count()``) and the cgroup CPU quota
rounded up (cgroup v2 ``cpu.max`` of the process's own cgroup and its ancestors, or cgroup v1
``cpu.cfs_quota_us / cpu.cfs_period_us``), at least 1.  ``NMENGINE_NUM_THREADS`` overrides it
(``nmengine.kernels.get_num_threads``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

__all__ = ["usable_cpus", "affinity_cpus", "cgroup_cpu_quota"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (``os.cpu_count()`` where there is no mask API)."""
    getaff = getattr(os, "sched_getaffinity", None)
    if getaff is not None:
        try:
            return max(1, len(getaff(0)))
        except OSError:  # pragma: no cover - exotic kernels
            pass
    return max(1, os.cpu_count() or 1)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(text: Optional[str]) -> Optional[float]:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line ("max 100000" or "200000 100000")."""
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_quota(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> Optional[float]:
    """The CPU quota of this process's cgroup in CPUs (e.g. 1.5), or None when there is none.

    cgroup v2: the smallest ``cpu.max`` quota along the process's cgroup path up to the root; cgroup v1:
    ``cpu.cfs_quota_us / cpu.cfs_period_us`` of its cpu controller.  ``root`` and ``proc_cgroup`` are
    parameters for testing.
    """
    lines = (_read(proc_cgroup) or "").splitlines()
    best: Optional[float] = None
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        rel = rel.lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            d = root / rel if rel else root
            while True:
                q = _v2_quota(_read(d / "cpu.max"))
                if q is not None:
                    best = q if best is None else min(best, q)
                if d == root or root not in d.parents:
                    break
                d = d.parent
        elif "cpu" in controllers.split(","):  # cgroup v1
            for base in (root / "cpu,cpuacct", root / "cpu"):
                d = base / rel if rel else base
                for cand in (d, base):
                    quota, period = _read(cand / "cpu.cfs_quota_us"), _read(cand / "cpu.cfs_period_us")
                    try:
                        q_i, p_i = int(quota or ""), int(period or "")
                    except ValueError:
                        continue
                    if q_i > 0 and p_i > 0:
                        q = q_i / p_i
                        best = q if best is None else min(best, q)
                        break
    if best is None:  # a container whose own cgroup is mounted at the root
        best = _v2_quota(_read(root / "cpu.max"))
    return best


def usable_cpus() -> int:
    """min(affinity mask, ceil(cgroup quota)), at least 1."""
    n = affinity_cpus()
    q = cgroup_cpu_quota()
    if q is not None:
        n = min(n, max(1, math.ceil(q - 1e-9)))
    return max(1, n)
