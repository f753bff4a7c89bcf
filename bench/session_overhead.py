"""Steady-state Python overhead of one ``nm.Session.run`` on all-MiniLM-L6-v2 (issue #11).

    python -m bench.session_overhead [bundle.nmb]

Overhead = wall time of ``session.run`` minus the time spent inside the plan's C runs (each C run is
timed around its one call), median and minimum over 400 calls, at a tiny shape (1 x 2 tokens) and at
one real sentence; also the number of Python steps per call (every per-layer op runs inside the C
runs, so the count does not grow with the number of layers or ops).  Run on a quiet machine for figures; on a loaded one the median includes
preemption.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import nmengine as nm
from nmengine import corpus, hf


def overhead(sess: nm.Session, inp: dict, calls: int = 400) -> tuple[float, float, float, int, int]:
    plan = sess.plan_for(inp)
    b = plan.take()
    c_time = [0.0]

    def timed(fn):
        def run(*a):
            t0 = time.perf_counter()
            fn(*a)
            c_time[0] += time.perf_counter() - t0

        return run

    steps = [(timed(fn), args) if getattr(fn, "__name__", "") == "run" else (fn, args) for fn, args in b.steps]
    n_c = sum(getattr(fn, "__name__", "") == "run" for fn, _ in b.steps)
    b.steps = steps  # this instance only; returned to the pool, so the session's calls below use it
    plan.give(b)
    over, wall = [], []
    for _ in range(calls):
        c_time[0] = 0.0
        t0 = time.perf_counter()
        sess.run(inp)
        t = time.perf_counter() - t0
        wall.append(t)
        over.append(t - c_time[0])
    return float(np.median(over)), float(min(over)), float(np.median(wall)), len(steps), n_c


def main() -> None:
    model_dir = hf.default_model_dir()
    program = nm.load(sys.argv[1]) if len(sys.argv) > 1 else hf.load_bert(model_dir)
    tok = hf.load_tokenizer(model_dir)
    sess = nm.Session(program, threads=1)
    tiny = {k: v[:, :2] for k, v in hf.tokenize(tok, ["hi"]).items()}
    real = hf.tokenize(tok, corpus.sentences(1))
    for name, inp in (("tiny 1x2", tiny), (f"one sentence 1x{real['input_ids'].shape[1]}", real)):
        med, lo, wall, n, n_c = overhead(sess, inp)
        print(
            f"{name:22s} python overhead median {med * 1e3:.3f} ms, min {lo * 1e3:.3f} ms "
            f"(run {wall * 1e3:.2f} ms; {n} steps per call, {n_c} of them C runs)"
        )


if __name__ == "__main__":
    main()
