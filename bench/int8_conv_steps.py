"""Where an int8 CNN call goes: per convolution shape, CPU time of nmengine float32 vs int8 (issue #13).

The bench's torch ResNet (bench/test_bench_onnx.py's models, exported to ONNX) imported twice in one
process, float32 and ``precision="int8"``; each session plan's steps run one by one on the calling
thread (1 thread, ``time.thread_time``: time spent descheduled on a shared machine does not count),
three calls, summed by convolution shape (kernel, stride, input channels C, output channels N)::

    python -m bench.int8_conv_steps resnet50 8        # model, batch

The .onnx files are cached in $TMPDIR/nm_int8_conv_steps.
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time

import numpy as np

import nmengine as nm


def _label(fn, args) -> str:
    name = getattr(fn, "__name__", str(fn))
    if name == "conv_nhwc":  # (x, cols, kh, kw, sh, sw, ph, pw, packed B, N, ...)
        return f"conv {args[2]}x{args[3]} s{args[4]} C{args[0].shape[3]} N{args[9]}"
    if name == "qconv_nhwc":  # (x, cols, kh, kw, sh, sw, ph, pw, Bq, colsum, w_scale, N, ...)
        return f"conv {args[2]}x{args[3]} s{args[4]} C{args[0].shape[3]} N{args[11]}"
    if name in ("qgemm", "sgemm_packed", "sgemm"):
        return f"gemm K={args[0].shape[-1]}"
    return name


def main(name: str, batch: int, calls: int = 3) -> None:
    import torch

    from bench import test_bench_onnx as tb
    from bench.onnx_torch_models import export

    d = os.path.join(tempfile.gettempdir(), "nm_int8_conv_steps")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{name}.onnx")
    if not os.path.exists(path):
        ex = tb._inputs(name, 2)
        export(tb._torch_model(name), (torch.from_numpy(ex["x"]),), path, ["x"], ["logits"], {"x": {0: "batch"}})
    calib = [tb._inputs(name, 2, seed=1)]
    progs = {
        "float32": nm.onnx.load(path, calibration=calib),
        "int8": nm.onnx.load(path, calibration=calib, precision="int8"),
    }
    feeds = tb._inputs(name, batch)
    tot: dict[str, collections.Counter] = {k: collections.Counter() for k in progs}
    for k, p in progs.items():
        sess = nm.Session(p, threads=1, executor="python")
        b = sess.plan_for(feeds).bind()
        for _ in range(calls):
            for n, slot in b.inputs:
                np.copyto(slot, feeds[n])
            for fn, args in b.steps:
                t = time.thread_time()
                fn(*args)
                tot[k][_label(fn, args)] += (time.thread_time() - t) / calls
    f32, i8 = tot["float32"], tot["int8"]
    print(f"{name}, batch {batch}, 1 thread, CPU ms per call (mean of {calls}):")
    print(f"  {'step':34s} {'float32':>9s} {'int8':>9s} {'float32/int8':>13s}")
    for key in sorted(set(f32) | set(i8), key=lambda s: -f32.get(s, 0.0)):
        a, q = 1e3 * f32.get(key, 0.0), 1e3 * i8.get(key, 0.0)
        print(f"  {key:34s} {a:9.2f} {q:9.2f} {a / q if q else float('nan'):12.2f}x")
    a, q = 1e3 * sum(f32.values()), 1e3 * sum(i8.values())
    print(f"  {'total':34s} {a:9.2f} {q:9.2f} {a / q:12.2f}x")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "resnet50", int(sys.argv[2]) if len(sys.argv) > 2 else 8)
