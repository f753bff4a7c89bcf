"""``nmengine demo``, ``nmengine train`` and ``nmengine eval``: the digits workflow of :mod:`nmengine.workflow`."""

from __future__ import annotations

import argparse

from ..program import Program
from ..workflow import DEMO_SETTINGS, program_accuracy, run_flow

__all__ = ["add_parsers"]


def _cost_table(program: Program) -> str:
    return program.cost(
        None, {name: tuple(1 if d is None else d for d in spec.shape) for name, spec in program.inputs.items()}
    ).table()


def _demo(args: argparse.Namespace) -> int:
    s = DEMO_SETTINGS
    result = run_flow(
        s["model"],
        epochs=s["epochs"],
        aat_epochs=s["aat_epochs"],
        segments=s["segments"],
        out=args.out,
        seed=args.seed,
        progress=not args.quiet,
        model_options={"act": s["act"]},
    )
    print(result.summary())
    print()
    print(result.program)
    cov = result.program.coverage({"x": (1, 1, 8, 8)})
    print(
        f"GEMM+PWL share of arithmetic: {100 * cov['gemm_pwl_flop_share']:.0f}% "
        f"({cov['gemm_pwl_ops']} GEMM-family ops, {cov['movement_ops']} data-movement ops)"
    )
    print()
    print("Per-layer accelerator report (batch 1):")
    print(_cost_table(result.program))
    return 0


def _train(args: argparse.Namespace) -> int:
    options = {"act": args.act} if args.act else None
    from .compile_options import segments_options

    sizes = segments_options(args)
    result = run_flow(
        args.model,
        epochs=args.epochs,
        aat_epochs=args.aat_epochs,
        segments=sizes.get("segments", 16),
        target=sizes.get("target"),
        method=args.method,
        out=args.out,
        seed=args.seed,
        progress=not args.quiet,
        model_options=options,
        learn_tables=args.learn_tables,
        table_lr=args.table_lr,
        table_init=args.table_init,
        precision=args.precision,
    )
    print(result.summary())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .. import train as nt
    from ..bundle import load

    program = load(args.bundle)
    data = nt.load_digits_split(seed=args.seed)
    exact = program_accuracy(program, data.x_test, data.y_test, mode="exact")
    mat = program_accuracy(program, data.x_test, data.y_test)
    print(f"{args.bundle}: digits test split ({len(data.y_test)} images)")
    print(f"  exact       {100 * exact:6.2f}%")
    print(f"  matrixized  {100 * mat:6.2f}%")
    print(f"  gap         {100 * (exact - mat):+6.2f} points")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train a CNN on digits, fine-tune with PWL tables, compile, report")
    p.add_argument("--out", default=None, help="also write the bundle here (.nmb)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_demo)

    p = sub.add_parser("train", help="train exact -> AAT -> compile -> export a bundle")
    p.add_argument("--model", choices=("cnn", "vit"), default="cnn")
    p.add_argument("--epochs", type=int, default=None, help="exact training epochs (default: the model's config)")
    p.add_argument("--aat-epochs", type=int, default=2, help="approximation-aware fine-tuning epochs")
    p.add_argument(
        "--act",
        choices=("relu", "gelu", "silu", "tanh", "sigmoid"),
        default=None,
        help="activation (default: relu for the CNN, gelu for the ViT)",
    )
    from .compile_options import add_precision_arg, add_segments_args

    add_segments_args(p, 16)
    p.add_argument(
        "--learn-tables",
        action="store_true",
        help="AAT also trains the tables' breakpoints and values (kept sorted and continuous)",
    )
    p.add_argument("--table-lr", type=float, default=1e-2, help="learning rate of the tables' parameters")
    p.add_argument(
        "--table-init",
        choices=("data", "compiled"),
        default="data",
        help="with --learn-tables: start from tables refitted to the calibration inputs (default) or the compiled ones",
    )
    p.add_argument("--method", choices=("optimized", "uniform"), default="optimized")
    add_precision_arg(p)
    p.add_argument("--out", default="model.nmb", help="bundle to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="exact vs matrixized accuracy of a bundle on the digits test split")
    p.add_argument("bundle")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split")
    p.set_defaults(func=_eval)
