"""Bundle save / load of MiniLM: another nmengine tree (imported as ``nmengine_old``) vs this one, in turn in one process.

    git archive c9299be | tar x -C /tmp/before && (cd /tmp/before && python setup.py build_ext --inplace -q)
    mv /tmp/before/nmengine /tmp/before/nmengine_old     # the old package under another name
    python -m bench.bundle_io /tmp/before [ROUNDS]

The old tree compiles MiniLM once (no calibration: the tables do not matter for file I/O) and writes it;
both trees then save the same Program and load their own files, interleaved, ``ROUNDS`` times (default
7).  Prints median times and new/old ratios for save, load (``mmap=True``) and load with ``mmap=False``.
c9299be is the last tree with the hand-framed writer (#16 moved the framing to the safetensors library).
"""

import os
import sys
import tempfile
import time

sys.path.insert(1, sys.argv[1])

import nmengine_old as old  # noqa: E402
import numpy as np  # noqa: E402

import nmengine as nm  # noqa: E402
from nmengine import hf  # noqa: E402

ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 7


def main() -> None:
    d = tempfile.mkdtemp()
    p_old = old.hf.load_bert(hf.default_model_dir(), calibrate=False)
    p_new = nm.load(old.save(p_old, os.path.join(d, "flat.nmb")))  # the same Program, read by this tree
    o, n = os.path.join(d, "o.nmb"), os.path.join(d, "n.nmb")
    steps = {
        "save": (lambda: old.save(p_old, o), lambda: nm.save(p_new, n)),
        "load": (lambda: old.load(o), lambda: nm.load(n)),
        "load-copy": (lambda: old.load(o, mmap=False), lambda: nm.load(n, mmap=False)),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in steps}
    for _ in range(ROUNDS):
        for k, (fo, fn) in steps.items():
            for f, out in ((fo, times[k][0]), (fn, times[k][1])):
                t0 = time.perf_counter()
                f()
                out.append(time.perf_counter() - t0)
    print(f"MiniLM bundle: {os.path.getsize(n) / 2**20:.1f} MiB (old tree's file {os.path.getsize(o) / 2**20:.1f} MiB)")
    for k, (to, tn) in times.items():
        mo, mn = np.median(to) * 1e3, np.median(tn) * 1e3
        print(f"{k:10s} old {mo:8.1f} ms  this tree {mn:8.1f} ms  this/old {mn / mo:.2f}")


if __name__ == "__main__":
    main()
