"""Static vs dynamic activation scales and the other int8 choices on all-MiniLM-L6-v2 (docs/int8.md table).

Run from the repository root: ``python bench/int8_tradeoff.py`` (one JSON line per configuration, a
minute or two each).  Fidelity of the int8 program (matrixized) against the float32 exact model on the
corpus's first 600 evaluation sentences; the calibration sentences are load_bert's default (disjoint).
"""

from __future__ import annotations

import json

from nmengine import corpus, hf
from nmengine.compile.quantize import Candidate, quantize

CONFIGS: dict[str, object] = {
    "static, one scale per GEMM input": [Candidate(None, "static", None)],
    "static, one scale per GEMM input, smoothing": [Candidate(None, "static", 0.5)],
    "static per K group of 32, smoothing": [Candidate(32, "static", 0.5)],
    "dynamic per row": [Candidate(None, "dynamic", None)],
    "dynamic per row, smoothing": [Candidate(None, "dynamic", 0.5)],
    "dynamic per row and K group of 128, smoothing": [Candidate(128, "dynamic", 0.5)],
    "dynamic per row and K group of 64, smoothing": [Candidate(64, "dynamic", 0.5)],
    "dynamic per row and K group of 32": [Candidate(32, "dynamic", None)],
    "dynamic per row and K group of 32, smoothing": [Candidate(32, "dynamic", 0.5)],
    "chosen per GEMM, tolerance 0.01, alpha 0.5": (
        (Candidate(None, "dynamic", None),) + tuple(Candidate(g, "dynamic", 0.5) for g in (None, 128, 64)),
        0.01,
    ),
    "chosen per GEMM, tolerance 0.008, alpha 0.5": (
        (Candidate(None, "dynamic", None),) + tuple(Candidate(g, "dynamic", 0.5) for g in (None, 128, 64)),
        0.008,
    ),
    "chosen per GEMM, tolerance 0.006 (default)": 0.006,
    "chosen per GEMM, tolerance 0.006, alpha 0.5, groups down to 32 (the default before AMX)": (
        (Candidate(None, "dynamic", None),) + tuple(Candidate(g, "dynamic", 0.5) for g in (None, 128, 64, 32)),
        0.006,
    ),
    "chosen per GEMM, tolerance 0.006, alpha 0.5, groups down to 64": (
        (Candidate(None, "dynamic", None),) + tuple(Candidate(g, "dynamic", 0.5) for g in (None, 128, 64)),
        0.006,
    ),
}


def main() -> None:
    emb = hf.SentenceEmbedder()
    calib = hf.calibration_batches(
        emb.tokenizer,
        None,
        max_length=emb.max_length,
        pad_id=emb.config.pad_token_id,
        lowercase=emb.pipeline.do_lower_case,
    )
    sents = corpus.sentences(600)
    exact = emb.with_mode("exact").encode(sents)
    for name, how in CONFIGS.items():
        if isinstance(how, float):
            program = quantize(emb.program, calib, tolerance=how)
        elif isinstance(how, tuple):
            program = quantize(emb.program, calib, candidates=how[0], tolerance=how[1])
        else:
            program = quantize(emb.program, calib, candidates=how, tolerance=1e-9)
        f = hf.fidelity(hf.SentenceEmbedder(program=program).encode(sents), exact)
        mix: dict[str, int] = {}
        for op in program.ops:
            if op.attrs.get("precision") == "int8":
                mix[op.attrs["quant"]["candidate"]] = mix.get(op.attrs["quant"]["candidate"], 0) + 1
        print(json.dumps({"config": name, **{k: round(v, 5) for k, v in f.items()}, "mix": mix}), flush=True)


if __name__ == "__main__":
    main()
