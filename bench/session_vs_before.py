"""nm.Session vs the runtime before #11, and MiniLM vs ONNX Runtime, timed in turn in one process (#11).

    git archive 2750df0 | tar x -C /tmp/before && (cd /tmp/before && python setup.py build_ext --inplace -q)
    mv /tmp/before/nmengine /tmp/before/nmengine_old      # the old package under another name
    python -m bench.session_vs_before /tmp/before DIR       # DIR: cnn.nmb, vit.nmb, minilm.nmb + inputs.npz

DIR holds bundles of the digits CNN / ViT and MiniLM and ``inputs.npz`` (keys ``cnn/b1|x``,
``vit/b1|x``) written by any nmengine; both engines load the same files.  Prints median times and
ratios: digits batch 1, MiniLM batch 1 / 32 real sentences / fixed 32 x 128 (2 threads), with ORT
(``session.intra_op.allow_spinning=0``) and ``SentenceEmbedder.encode`` (tokenization included).
"""

import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(1, sys.argv[1])

import nmengine_old as old  # noqa: E402
import numpy as np  # noqa: E402

import nmengine as nm  # noqa: E402
from nmengine import corpus, hf  # noqa: E402

from . import peers  # noqa: E402

ref = sys.argv[2]
T = 2


def digits() -> None:
    raw = np.load(f"{ref}/inputs.npz")
    nm.set_num_threads(T)
    old.set_num_threads(T)
    for label, name in (("cnn b1", "cnn"), ("vit b1", "vit")):
        inp = {"x": raw[f"{name}/b1|x"]}
        po, pn = old.load(f"{ref}/{name}.nmb"), nm.load(f"{ref}/{name}.nmb")
        sess = nm.Session(pn)
        fo, fn = (lambda po=po, inp=inp: po.run(inp)), (lambda sess=sess, inp=inp: sess.run(inp))
        assert np.asarray(fo()).tobytes() == np.asarray(fn()).tobytes()
        to, tn = [], []
        for _ in range(200):
            t0 = time.perf_counter()
            fo()
            to.append(time.perf_counter() - t0)  # noqa: E702
            t0 = time.perf_counter()
            fn()
            tn.append(time.perf_counter() - t0)  # noqa: E702
        mo, mn = np.median(to) * 1e3, np.median(tn) * 1e3
        print(f"{label:10s} before {mo:8.3f} ms  session {mn:8.3f} ms  speed-up {mo / mn:5.2f}x")


def minilm() -> None:
    import torch

    nm.set_num_threads(T)
    old.set_num_threads(T)
    torch.set_num_threads(T)
    md = hf.default_model_dir()
    prog = nm.load(f"{ref}/minilm.nmb")
    prog_old = old.load(f"{ref}/minilm.nmb")
    emb = hf.SentenceEmbedder(program=prog)
    sess = nm.Session(prog, threads=T)
    inputs = peers.minilm_inputs(md, ("batch1", "batch32", "fixed32x128"))
    model = peers.pooled_bert(md)
    osess = peers.ort_session(
        peers.export_onnx(model, inputs["batch32"], os.path.join(tempfile.mkdtemp(), "m.onnx")), T
    )
    one = corpus.sentences(64)[40]
    for scen, b in inputs.items():
        eng = {
            "nm-session": lambda b=b: sess.run(b),
            "nm-before": lambda b=b: prog_old.run(b),
            "ort": lambda b=b: osess.run(None, {k: b[k] for k in hf.INPUT_NAMES})[0],
        }
        if scen == "batch1":
            eng["nm-encode"] = lambda: emb.encode(one)
        for f in eng.values():
            f()
        times = {k: [] for k in eng}
        for _ in range(40 if scen == "batch1" else 5):
            for k, f in eng.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(
            scen,
            b["input_ids"].shape,
            "  ".join(f"{k} {v * 1e3:.2f} ms" for k, v in med.items()),
            f"| session/ort time {med['nm-session'] / med['ort']:.2f}x, before/session {med['nm-before'] / med['nm-session']:.2f}x"
            + (f", encode/ort {med['nm-encode'] / med['ort']:.2f}x" if "nm-encode" in med else ""),
            flush=True,
        )


if __name__ == "__main__":
    digits()
    minilm()
