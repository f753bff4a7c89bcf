"""Quick interleaved ORT vs nmengine run for the conv models of #10 (ResNet-18/50, MobileNetV2).

The same models, inputs, ORT session options and thread count (2) as ``bench/test_bench_onnx.py``;
nmengine (matrixized) and ORT alternate in one process, best of N (batch 1) / N // 2 (batch 8)::

    python -m bench.onnx_conv_quick mobilenetv2,resnet50 7
    python -m bench.onnx_conv_quick resnet50,resnet18 7 --nchw   # also the NCHW program (before #10's
                                                                  # channels-last rewrite) in the same run
    python -m bench.onnx_conv_quick resnet50,resnet18 3 --cpu    # 1 thread each, thread CPU time

``--cpu`` times nmengine (1 thread, runs on the caller) and ORT (``intra_op_num_threads=1``, runs on
the caller) by ``time.thread_time`` of the calling thread: time spent descheduled does not count, so
the ratio of the kernels holds on a shared machine (it says nothing about 2-thread scaling).

The .onnx files are cached in $TMPDIR/nm_onnx_conv_quick.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import nmengine as nm  # noqa: E402
from bench import onnx_torch_models as tm  # noqa: E402
from bench import test_bench_onnx as tb  # noqa: E402


def main(names: list[str], rounds: int, nchw: bool = False, cpu: bool = False) -> None:
    import onnxruntime as ort
    import torch

    nm.set_num_threads(1 if cpu else tb.THREADS)
    clock = time.thread_time if cpu else time.perf_counter
    d = os.path.join(tempfile.gettempdir(), "nm_onnx_conv_quick")
    os.makedirs(d, exist_ok=True)
    for name in names:
        path = os.path.join(d, f"{name}.onnx")
        if not os.path.exists(path):
            ex = tb._inputs(name, 2)
            tm.export(tb._torch_model(name), (torch.from_numpy(ex["x"]),), path, ["x"], ["logits"], {"x": {0: "batch"}})
        calib = [tb._inputs(name, 2, seed=1)]
        progs = {"nm": nm.onnx.load(path, calibration=calib)}
        if nchw:
            progs["nm NCHW"] = nm.onnx.load(path, calibration=calib, channels_last=False)
        if cpu:
            so = ort.SessionOptions()
            so.intra_op_num_threads = so.inter_op_num_threads = 1
            sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        else:
            sess = tb._session(path)
        for batch in (1, 8):
            feeds = tb._inputs(name, batch)
            runs = {k: (lambda p=p, f=feeds: p.run(f)) for k, p in progs.items()}
            runs["ORT"] = lambda s=sess, f=feeds: s.run(None, f)
            best = {k: float("inf") for k in runs}
            for f in runs.values():
                f()
            for _ in range(rounds if batch == 1 else max(2, rounds // 2)):
                for k, f in runs.items():
                    t = clock()
                    f()
                    best[k] = min(best[k], clock() - t)
            times = "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in best.items())
            ratios = "  ".join(f"{k}/ORT throughput {best['ORT'] / best[k]:.2f}x" for k in progs)
            how = "1 thread, CPU time" if cpu else f"{tb.THREADS} threads, wall"
            print(f"{name} batch {batch} ({how}): {times}  |  {ratios}", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(
        args[0].split(",") if args else ["resnet50", "mobilenetv2"],
        int(args[1]) if len(args) > 1 else 7,
        nchw="--nchw" in sys.argv,
        cpu="--cpu" in sys.argv,
    )
