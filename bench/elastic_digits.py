"""Digits at 4 segments per table: weight-only AAT vs table-aware AAT, over several seeds (#18).

Every figure is the accuracy of the *compiled program* the flow exports (``nmengine train``'s
``run_flow``), written to a bundle, loaded back and run through the engine (``Program.run``,
matrixized) -- what a user gets, not the trainer's forward.

Two protocols:

* ``--split val`` (for choosing settings): 20 % of the training images (stratified, seeded) are held
  out as a validation split; the flow trains, calibrates and fine-tunes on the other 80 % and reports
  accuracy on the validation images.  The test split is not touched.
* ``--split test`` (the reported figures): the fixed digits split (1437 train / 360 test), as
  ``nmengine train`` runs it.

Usage::

    python -m bench.elastic_digits --model vit --split test --seeds 0 1 2
    python -m bench.elastic_digits --model cnn --act silu --split test --seeds 0 1 2
    python -m bench.elastic_digits --model vit --split val --variants uniform:learn:init=compiled

A variant is ``method:aat[:key=value...]`` with ``method`` uniform|optimized, ``aat`` none|weights|learn
and keys ``table_lr``, ``aat_epochs``, ``init`` (learned tables' start: ``data`` or ``compiled``).
The default variants are the four of the RESULTS table.  Each seed trains its own exact model.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_VARIANTS = ("uniform:weights", "uniform:learn", "optimized:weights", "optimized:learn")


def validation_split(seed: int, fraction: float = 0.2) -> Any:
    """The digits training images split into train / validation (stratified); the test split unused."""
    from sklearn.model_selection import train_test_split

    import nmengine.train as nt

    d = nt.load_digits_split(seed=seed)
    x_tr, x_va, y_tr, y_va = train_test_split(
        d.x_train, d.y_train, test_size=fraction, stratify=d.y_train, random_state=1000 + seed
    )
    return nt.Dataset(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_va), y_va, 10, "digits-val")


def parse_variant(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) < 2 or parts[0] not in ("uniform", "optimized") or parts[1] not in ("none", "weights", "learn"):
        raise ValueError(f"variant must be 'uniform|optimized:none|weights|learn[:key=value...]', got {text!r}")
    v: dict[str, Any] = {"method": parts[0], "aat": parts[1]}
    for kv in parts[2:]:
        k, _, val = kv.partition("=")
        if k in ("table_lr",):
            v[k] = float(val)
        elif k in ("aat_epochs",):
            v[k] = int(val)
        elif k == "init":
            v[k] = val
        elif k == "distill":
            v[k] = val in ("1", "true", "yes")
        else:
            raise ValueError(f"unknown variant key {k!r} in {text!r}")
    return v


def run_variant(model: str, act: str | None, variant: dict[str, Any], seed: int, split: str, segments: int) -> dict:
    from nmengine.bundle import load
    from nmengine.workflow import program_accuracy, run_flow

    data = validation_split(seed) if split == "val" else None
    kw: dict[str, Any] = {}
    if variant["aat"] == "learn":
        kw["learn_tables"] = True
        kw["table_lr"] = variant.get("table_lr", 1e-2)
        if "init" in variant:
            kw["table_init"] = variant["init"]
    if variant.get("distill"):
        kw["distill"] = True
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        r = run_flow(
            model,
            aat_epochs=0 if variant["aat"] == "none" else variant.get("aat_epochs", 2),
            segments=segments,
            method=variant["method"],
            seed=seed,
            progress=False,
            model_options={"act": act} if act else None,
            out=Path(tmp) / "m.nmb",
            data=data,
            **kw,
        )
        program = load(Path(tmp) / "m.nmb")
    d = data if data is not None else __import__("nmengine.train", fromlist=["x"]).load_digits_split(seed=seed)
    after = program_accuracy(program, d.x_test, d.y_test)
    logits = np.asarray(program.run(d.x_test), np.float64)
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    nll = float(-np.mean(logp[np.arange(len(d.y_test)), d.y_test]))
    return {
        "exact": r.exact_accuracy,
        "before": r.matrixized_before_aat,
        "after": after,
        "nll": nll,
        "n": len(d.y_test),
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("vit", "cnn"), default="vit")
    ap.add_argument("--act", default=None, help="activation (the CNN: silu)")
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    args = ap.parse_args(argv)
    variants = [(t, parse_variant(t)) for t in args.variants]
    rows = []
    for text, v in variants:
        res = []
        for seed in args.seeds:
            r = run_variant(args.model, args.act, v, seed, args.split, args.segments)
            res.append(r)
            print(
                f"{text:<40s} seed {seed}: exact {100 * r['exact']:6.2f}  before {100 * r['before']:6.2f}  "
                f"after {100 * r['after']:6.2f}  gap {100 * (r['exact'] - r['after']):+5.2f}  nll {r['nll']:.4f}  "
                f"({r['seconds']:.0f} s)",
                flush=True,
            )
        rows.append((text, res))
    n = rows[0][1][0]["n"] if rows else 0
    print(
        f"\n{args.model}{' ' + args.act if args.act else ''}, {args.segments} segments, {args.split} split ({n} images), "
        f"seeds {args.seeds}; gap = exact - compiled program after AAT, points"
    )
    print("| variant | exact (mean) | before AAT (mean) | after AAT (mean) | gap per seed | mean gap | NLL (mean) |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    for text, res in rows:
        gaps = [100 * (r["exact"] - r["after"]) for r in res]
        print(
            f"| {text} | {100 * np.mean([r['exact'] for r in res]):.2f}% | {100 * np.mean([r['before'] for r in res]):.2f}% "
            f"| {100 * np.mean([r['after'] for r in res]):.2f}% | {', '.join(f'{g:+.2f}' for g in gaps)} | {np.mean(gaps):+.2f} | {np.mean([r['nll'] for r in res]):.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
