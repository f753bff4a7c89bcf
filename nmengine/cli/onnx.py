"""``nmengine import`` (ONNX -> bundle) and ``nmengine run`` (any bundle on named arrays).

    nmengine import model.onnx -o model.nmb [--calibration inputs.npz] [--segments N|auto [--target T]]
        [--method M] [--precision float32|int8]
    nmengine run model.nmb --input x.npz [--output y.npz] [--exact]

``import`` prints the op mapping summary (ONNX op type -> count -> how it was matrixized) and the
coverage; ``run`` reads the arrays of an ``.npz`` by the program's input names (a single-input program
also takes an ``.npy`` or an ``.npz`` with one array) and writes the outputs by name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..onnx import import_summary, load  # ImportError without the onnx extra: nmengine.cli reports it
from .compile_options import add_precision_arg, add_segments_args, segments_options

__all__ = ["add_parser"]


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    from ..io import read_arrays

    return read_arrays(path)


def _fit_inputs(program: Any, arrays: dict[str, np.ndarray], what: str) -> Any:
    names = list(program.inputs)
    if len(names) == 1 and len(arrays) == 1 and names[0] not in arrays:
        return next(iter(arrays.values()))
    missing = [n for n in names if n not in arrays]
    if missing:
        raise ValueError(f"{what}: the program's inputs are {names}; the file has {sorted(arrays)} (missing {missing})")
    return {n: arrays[n] for n in names}


def _import(args: argparse.Namespace) -> int:
    import nmengine as nm

    calib = _read_arrays(args.calibration) if args.calibration else None
    opts: dict[str, Any] = {"method": args.method, "precision": args.precision, **segments_options(args)}
    if calib is not None and len(calib) == 1:  # one array (e.g. an .npy) for a one-input model
        graph = nm.onnx.to_spec(args.model)
        names = list(graph.inputs)
        if len(names) == 1 and names[0] not in calib:
            calib = {names[0]: next(iter(calib.values()))}
    program = load(args.model, calibration=calib, exact=args.exact, **opts)
    out = Path(args.output)
    nm.save(program, out)
    print(import_summary(program))
    cov = program.coverage()
    print(
        f"coverage: {cov['ops']} ops: {cov['gemm_pwl_ops']} GEMM+PWL, {cov['movement_ops']} data movement "
        f"({', '.join(f'{k} {v}' for k, v in sorted(cov['movement_by_kind'].items()))}); "
        f"arithmetic as GEMM+PWL: {cov['arithmetic_ops_as_gemm_pwl']:.0%}; {len(program.tables)} PWL tables"
    )
    if args.precision == "int8":  # each convolution's precision, and why the float32 ones stay float32
        convs = [
            op
            for op in program.ops
            if op.attrs.get("conv") or (op.kind == "gemm_batched" and "reason" in op.attrs.get("quant", {}))
        ]
        why: dict[str, list[str]] = {}
        for op in convs:
            if op.attrs.get("precision") != "int8":
                why.setdefault(op.attrs.get("quant", {}).get("reason", "float32"), []).append(op.layer)
        n8 = sum(op.attrs.get("precision") == "int8" for op in convs)
        print(
            f"int8: {cov['gemm_precision']['int8']} GEMMs, {n8} of {len(convs)} convolutions"
            + "".join(f"; float32 ({r}): {', '.join(layers)}" for r, layers in why.items())
        )
    print(f"inputs: {json.dumps({k: list(v.shape) for k, v in program.inputs.items()})}  outputs: {program.outputs}")
    print(f"wrote {out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    import nmengine as nm

    program = nm.load(args.bundle)
    inputs = _fit_inputs(program, _read_arrays(args.input), args.input)
    result = program.run(inputs, mode="exact" if args.exact else "matrixized")
    outs = result if isinstance(result, dict) else {program.outputs[0]: result}
    if args.output:
        from ..io import write_arrays

        write_arrays(args.output, outs)
        print(f"wrote {args.output}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in outs.items()))
    else:
        np.set_printoptions(threshold=50, edgeitems=3, linewidth=120)
        for k, v in outs.items():
            print(f"{k} {tuple(v.shape)} {v.dtype}:\n{v}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``import`` and ``run``."""
    p = sub.add_parser("import", help="import an ONNX model into a bundle (prints the op mapping and coverage)")
    p.add_argument("model", help="the .onnx file (external-data files beside it are read)")
    p.add_argument("-o", "--output", required=True, help="the bundle to write (.nmb)")
    p.add_argument(
        "--calibration",
        default=None,
        help=".npz of named input arrays for the PWL ranges (default: synthesised inputs, with a warning)",
    )
    add_segments_args(p, 32)
    p.add_argument("--method", default="optimized", help="PWL fitting method (see nmengine approx)")
    add_precision_arg(p)
    p.add_argument("--exact", action="store_true", help="skip calibration (for exact-mode use)")
    p.set_defaults(func=_import)
    p = sub.add_parser("run", help="run a bundle on named arrays from an .npz")
    p.add_argument("bundle")
    p.add_argument("--input", required=True, help=".npz with the program's inputs by name (or one .npy)")
    p.add_argument("--output", default=None, help=".npz to write the outputs to (default: print them)")
    p.add_argument("--exact", action="store_true", help="exact mode (true functions instead of PWL tables)")
    p.set_defaults(func=_run)
