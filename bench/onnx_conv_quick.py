"""Quick interleaved ORT vs nmengine run for the conv models of #10 (ResNet-50, MobileNetV2).

The same models, inputs, ORT session options and thread count (2) as ``bench/test_bench_onnx.py``;
nmengine (matrixized) and ORT alternate in one process, best of N (batch 1) / N // 2 (batch 8)::

    python -m bench.onnx_conv_quick mobilenetv2,resnet50 7

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


def main(names: list[str], rounds: int) -> None:
    import torch

    nm.set_num_threads(tb.THREADS)
    d = os.path.join(tempfile.gettempdir(), "nm_onnx_conv_quick")
    os.makedirs(d, exist_ok=True)
    for name in names:
        path = os.path.join(d, f"{name}.onnx")
        if not os.path.exists(path):
            ex = tb._inputs(name, 2)
            tm.export(tb._torch_model(name), (torch.from_numpy(ex["x"]),), path, ["x"], ["logits"], {"x": {0: "batch"}})
        prog = nm.onnx.load(path, calibration=[tb._inputs(name, 2, seed=1)])
        sess = tb._session(path)
        for batch in (1, 8):
            feeds = tb._inputs(name, batch)
            runs = {"nm": lambda p=prog, f=feeds: p.run(f), "ort": lambda s=sess, f=feeds: s.run(None, f)}
            best = {k: float("inf") for k in runs}
            for f in runs.values():
                f()
            for _ in range(rounds if batch == 1 else max(2, rounds // 2)):
                for k, f in runs.items():
                    t = time.perf_counter()
                    f()
                    best[k] = min(best[k], time.perf_counter() - t)
            print(
                f"{name} batch {batch}: nm {best['nm'] * 1e3:.0f} ms  ORT {best['ort'] * 1e3:.0f} ms  "
                f"nm/ORT throughput {best['ort'] / best['nm']:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main(
        sys.argv[1].split(",") if len(sys.argv) > 1 else ["resnet50", "mobilenetv2"],
        int(sys.argv[2]) if len(sys.argv) > 2 else 7,
    )
