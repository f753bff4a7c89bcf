"""Budgeted compile of all-MiniLM-L6-v2: the curve of table bytes vs fidelity on held-apart sentences.

    python -m bench.elastic_minilm [--sentences 600] [--targets 0.999,0.9999,0.99999] [--json out.json]

One :class:`nmengine.compile.budget.BudgetPlan` (sensitivities by error injection on the default
calibration batches of ``nm.hf.load_bert``: 48 calibration-split sentences + 2 full-length
sequences) serves every target; each selected program is then measured on ``--sentences`` sentences
of the corpus's evaluation split (never calibrated on) against exact mode: cosine min/mean and
nearest-neighbour agreement (``nm.hf.fidelity``).  The default compile (33 tables, 29.9 KB) is the
first row.  Not a pytest benchmark: it measures fidelity and bytes, not time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _plan(progress: bool):
    from nmengine import hf
    from nmengine.compile.budget import BudgetPlan
    from nmengine.compile.calibrate import fit_tables, record_activations
    from nmengine.compile.lower import lower
    from nmengine.compile.passes import fold_batchnorm, fold_layernorm_affine, fuse
    from nmengine.program import Program

    d = hf.default_model_dir()
    cfg, pipe = hf.read_config(d), hf.read_pipeline(d)
    spec = hf.build_spec(cfg, hf.load_weights(d), pooling="mean", normalize=pipe.normalize, name="all-MiniLM-L6-v2")
    max_len = pipe.max_seq_length or 128
    calib = hf.calibration_batches(
        hf.load_tokenizer(d), max_length=max_len, pad_id=cfg.pad_token_id, lowercase=pipe.do_lower_case
    )
    functions = {k: dict(v) for k, v in hf.DEFAULT_FUNCTIONS.items()}
    folded = fold_layernorm_affine(fold_batchnorm(spec))
    ops, constants, requests = lower(folded)
    ops = fuse(ops, list(folded.outputs), set(constants))
    options = {"method": hf.DEFAULT_METHOD, "segments": hf.DEFAULT_SEGMENTS}
    tables = fit_tables(requests, None, options, functions)
    base = Program(
        folded.inputs,
        folded.outputs,
        ops,
        constants,
        tables,
        name=spec.name,
        meta={"producer": "nmengine.compile", "pack_tokens": True},
    )
    acts = record_activations(base, calib)
    return BudgetPlan(base, requests, calib, acts, options=options, functions=functions, progress=progress), d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=600)
    ap.add_argument("--targets", default="0.999,0.9999,0.99999,0.999999")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import nmengine as nm
    from nmengine import corpus, hf
    from nmengine.compile.budget import format_report, table_bytes

    t0 = time.time()
    plan, d = _plan(progress=True)
    print(f"plan: {plan.ev.runs} runs, {len(plan.path)} path points, {time.time() - t0:.0f} s", file=sys.stderr)
    sents = corpus.sentences(args.sentences)
    default = nm.hf.load_bert(d)
    emb = hf.SentenceEmbedder(d, program=default)
    exact = emb.with_mode("exact").encode(sents)
    rows = []

    def row(name, program, calib=None):
        program.meta.setdefault("hf", default.meta["hf"])  # tokenizer and pipeline of the same checkpoint
        vec = hf.SentenceEmbedder(d, program=program).encode(sents)
        r = {
            "program": name,
            "bytes": sum(table_bytes(t) for t in program.tables.values()),
            **{k: v for k, v in hf.fidelity(vec, exact).items() if k != "n"},
        }
        if calib is not None:
            r["calibration_cosine_min"] = calib
        rows.append(r)
        print(json.dumps(r), file=sys.stderr)

    row("default (32 segments, rsqrt 128)", default)
    for c in (float(x) for x in args.targets.split(",")):
        p = plan.select({"cosine": c})
        row(f"auto cosine >= {c}", p, p.meta["budget"]["measured"]["cosine_min"])
        if c == 0.9999:
            print(format_report(p.meta["budget"]), file=sys.stderr)
    print("| program | table bytes | cosine min | cosine mean | NN agreement | calibration cosine min |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cal = f"{r['calibration_cosine_min']:.7f}" if "calibration_cosine_min" in r else "-"
        print(
            f"| {r['program']} | {r['bytes']} | {r['min_cosine']:.7f} | {r['mean_cosine']:.8f} | "
            f"{100 * r['nn_agreement']:.2f}% | {cal} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
