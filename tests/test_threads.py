"""The core's thread pool and the default thread count.

Results must not depend on how work lands on threads: concurrent calls from many Python threads
(only one of them gets the pool, the others run alone), a forked child, and every thread count give
the same bits as a single-threaded call.  The default thread count follows the affinity mask and the
cgroup CPU quota (read from fake cgroup trees here).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import nmengine as nm
from nmengine import kernels, threads

from .helpers import rand


def _products(seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(300, 200, 384), (64, 1536, 384), (7, 33, 9), (1000, 64, 576), (25, 1000, 129)]
    return [(rand(rng, (m, k)), rand(rng, (k, n)), rand(rng, n)) for m, n, k in shapes]


def _run_all(ops):
    return [nm.gemm(a, b, bias=c, epilogue="relu") for a, b, c in ops]


def test_concurrent_callers_get_the_same_bits(kernel, threads):
    ops = _products()
    kernels.set_num_threads(1)
    ref = _run_all(ops)
    kernels.set_num_threads(2)
    results: list = [None] * 8
    errors: list = []

    def worker(i):
        try:
            with kernels.use_kernel(kernel):
                for _ in range(3):
                    got = _run_all(ops)
                    assert all(np.array_equal(g, r) for g, r in zip(got, ref))
                results[i] = got
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    assert all(r is not None for r in results)


@pytest.mark.parametrize("nt", [1, 2, 3, 5])
def test_any_thread_count_same_bits(kernel, threads, nt):
    ops = _products(1)
    kernels.set_num_threads(1)
    ref = _run_all(ops)
    kernels.set_num_threads(nt)
    assert all(np.array_equal(g, r) for g, r in zip(_run_all(ops), ref))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_forked_child_runs_gemm(threads):
    kernels.set_num_threads(2)
    a, b, _ = _products()[0]
    ref = nm.gemm(a, b)  # the parent's pool exists now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the pool's workers were not inherited; it must start over, not hang
        ok = 0
        try:
            ok = int(np.array_equal(nm.gemm(a, b), ref))
        finally:
            os.write(w, bytes([ok]))
            os._exit(0)
    os.close(w)
    got = os.read(r, 1)
    os.waitpid(pid, 0)
    assert got == b"\x01"


def test_spin_setting_and_info():
    core = kernels.compiled_core()
    old = core.spin_us()
    a, b, _ = _products()[1]
    ref = nm.gemm(a, b)
    try:
        core.set_spin_us(0)  # sleep at once: same bits
        assert np.array_equal(nm.gemm(a, b), ref)
        assert core.spin_us() == 0
    finally:
        core.set_spin_us(old)
    info = nm.kernel_info()
    assert info["threads"] in ("pool", "serial") and info["spin_us"] == old
    assert 1 <= info["usable_cpus"] <= (os.cpu_count() or 1)


def _fake_cgroup(tmp_path, proc_lines, files):
    root = tmp_path / "cg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    proc = tmp_path / "proc_cgroup"
    proc.write_text("\n".join(proc_lines) + "\n")
    return root, proc


def test_cgroup_v2_quota_along_the_path(tmp_path):
    root, proc = _fake_cgroup(
        tmp_path,
        ["0::/a/b"],
        {"cpu.max": "max 100000\n", "a/cpu.max": "150000 100000\n", "a/b/cpu.max": "max 100000\n"},
    )
    assert threads.cgroup_cpu_quota(root, proc) == pytest.approx(1.5)


def test_cgroup_v2_no_limit(tmp_path):
    root, proc = _fake_cgroup(tmp_path, ["0::/"], {"cpu.max": "max 100000\n"})
    assert threads.cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_quota(tmp_path):
    root, proc = _fake_cgroup(
        tmp_path,
        ["3:cpu,cpuacct:/docker/x", "1:memory:/docker/x"],
        {"cpu,cpuacct/docker/x/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"},
    )
    assert threads.cgroup_cpu_quota(root, proc) == pytest.approx(0.5)
    root2, proc2 = _fake_cgroup(
        tmp_path / "u",
        ["3:cpu,cpuacct:/"],
        {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
    )
    assert threads.cgroup_cpu_quota(root2, proc2) is None


def test_usable_cpus_takes_the_smaller_limit(monkeypatch):
    monkeypatch.setattr(threads, "affinity_cpus", lambda: 8)
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 2.5)
    assert threads.usable_cpus() == 3
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: 0.2)
    assert threads.usable_cpus() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_quota", lambda: None)
    assert threads.usable_cpus() == 8


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity API")
def test_affinity_is_respected():
    assert threads.affinity_cpus() == len(os.sched_getaffinity(0))


def test_default_threads_follow_usable_cpus(monkeypatch):
    monkeypatch.delenv("NMENGINE_NUM_THREADS", raising=False)
    monkeypatch.setattr(kernels, "usable_cpus", lambda: 3)
    monkeypatch.setattr(kernels, "_num_threads", None)
    assert kernels.get_num_threads() == 3
    monkeypatch.setenv("NMENGINE_NUM_THREADS", "5")
    monkeypatch.setattr(kernels, "_num_threads", None)
    assert kernels.get_num_threads() == 5


def _cpu_list(text: str) -> set:
    """'0-2,5' -> {0, 1, 2, 5} (the kernel's Cpus_allowed_list format)."""
    cpus: set = set()
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return cpus


def _pool_worker_cpus() -> list:
    """The allowed CPU sets of this process's pool workers (threads named nm-pool)."""
    masks = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() != "nm-pool":
                    continue
            with open(f"/proc/self/task/{tid}/status") as f:
                line = next(x for x in f if x.startswith("Cpus_allowed_list:"))
        except OSError:  # the thread ended meanwhile
            continue
        masks.append(_cpu_list(line.split(":", 1)[1]))
    return masks


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pool_workers_keep_off_the_callers_cpu(threads):
    """A call's workers may run anywhere the process may, except on the CPU the caller runs on."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs 2 CPUs in the affinity mask")
    rng = np.random.default_rng(3)
    a, b = rand(rng, (512, 512)), rand(rng, (512, 512))
    kernels.set_num_threads(2)
    for cpu in sorted(allowed)[:2]:

        def pinned_call(cpu=cpu):
            os.sched_setaffinity(0, {cpu})  # this thread only
            time.sleep(0.1)  # past any single-threaded period an earlier test's busy CPUs started
            nm.gemm(a, b)

        t = threading.Thread(target=pinned_call)
        t.start()
        t.join()
        masks = _pool_worker_cpus()
        assert masks, "the 2-thread call started no pool worker"
        assert all(m == allowed - {cpu} for m in masks), (cpu, masks)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux only")
def test_pool_steering_can_be_turned_off():
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs 2 CPUs in the affinity mask")
    code = (
        "import numpy as np, nmengine as nm\n"
        "from nmengine import kernels\n"
        "from tests.test_threads import _pool_worker_cpus\n"
        "kernels.set_num_threads(2)\n"
        "a = np.ones((512, 512), np.float32)\n"
        "nm.gemm(a, a)\n"
        "print(sorted(sorted(m) for m in _pool_worker_cpus()))\n"
    )
    env = dict(os.environ, NMENGINE_POOL_STEER="0")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True)
    masks = ast.literal_eval(out.stdout.strip())
    assert masks and all(set(m) == allowed for m in masks), masks


_STARVED_WORKER = """
import os, subprocess, sys, threading, time
import numpy as np
import nmengine as nm
from nmengine import kernels

cpus = sorted(os.sched_getaffinity(0))
a_cpu, b_cpu = cpus[0], cpus[1]
rng = np.random.default_rng(5)
A = rng.standard_normal((784, 1152), dtype=np.float32)
B = rng.standard_normal((1152, 128), dtype=np.float32)
kernels.set_num_threads(1)
ref = nm.gemm(A, B)
kernels.set_num_threads(2)
out = {}


def caller():
    os.sched_setaffinity(0, {a_cpu})  # this thread only: the workers are steered to the other CPUs
    nm.gemm(A, B)  # starts the worker
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().strip() == "nm-pool":
                os.setpriority(os.PRIO_PROCESS, int(tid), 19)  # it loses its core to the hog below
    hog = subprocess.Popen([sys.executable, "-c", (
        f"import os, time; os.sched_setaffinity(0, {{{b_cpu}}}); t = time.time()\\n"
        "while time.time() - t < 20: pass")])
    try:
        time.sleep(0.3)
        before = kernels.kernel_info()["pool_backoffs"]
        t0 = time.perf_counter()
        outs = [nm.gemm(A, B) for _ in range(30)]
        out["seconds"] = time.perf_counter() - t0
        out["backoffs"] = kernels.kernel_info()["pool_backoffs"] - before
        out["same"] = all(np.array_equal(o, ref) for o in outs)
    finally:
        hog.kill()


t = threading.Thread(target=caller)
t.start()
t.join()
print(out["backoffs"], out["same"], round(out["seconds"], 3))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task") or not hasattr(os, "setpriority"), reason="Linux only")
def test_a_starved_worker_makes_calls_run_alone():
    """A worker whose only CPU another process holds is detected (the caller waited most of the call)
    and the following calls run on the caller alone for a while, with the same bits."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs in the affinity mask")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run([sys.executable, "-c", _STARVED_WORKER], cwd=root, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    backoffs, same, _seconds = run.stdout.split()
    assert same == "True"
    assert int(backoffs) >= 1
