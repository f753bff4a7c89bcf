"""Demo: ``python -m nmengine.train [cnn|vit|both] [--epochs N] [--seed S] [--aat SEGMENTS]``.

Trains the reference model(s) on the digits split with :func:`~nmengine.train.models.default_config`,
prints test accuracy and time, and with ``--aat`` runs the compiler-free approximation-aware check:
uniform chord tables with SEGMENTS segments per role over ranges calibrated on 256 training images,
accuracy with the tables before and after a short AAT fine-tune.
"""

from __future__ import annotations

import argparse
import time

from .aat import approximate, calibrate_uniform_tables
from .data import load_digits_split
from .models import create_model, default_config
from .trainer import evaluate, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nmengine.train", description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default="both", choices=["cnn", "vit", "both"])
    ap.add_argument("--epochs", type=int, default=None, help="override the default number of epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aat", type=int, default=0, metavar="SEGMENTS", help="run the AAT check with this many segments per table")
    ap.add_argument("--aat-epochs", type=int, default=3)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    data = load_digits_split()
    for name in (["cnn", "vit"] if args.model == "both" else [args.model]):
        cfg = default_config(name)
        if args.epochs:
            cfg["epochs"] = args.epochs
        model = create_model(name, seed=args.seed)
        t0, c0 = time.perf_counter(), time.process_time()
        train(model, data, **cfg, seed=args.seed, progress=not args.no_progress, desc=name)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        acc = evaluate(model, data.x_test, data.y_test)
        print(f"{name}: {model.n_parameters():,} parameters, test accuracy {acc:.4f} "
              f"({cfg['epochs']} epochs, {wall:.1f} s wall, {cpu:.1f} s CPU)")
        if args.aat:
            tables = calibrate_uniform_tables(model, data.x_train[:256], args.aat)
            if not tables:
                print(f"{name}: no approximable nonlinearities (relu stays exact)")
                continue
            with approximate(model, tables):
                before = evaluate(model, data.x_test, data.y_test)
                train(model, data, epochs=args.aat_epochs, lr=cfg["lr"] / 4, batch_size=cfg["batch_size"],
                      weight_decay=0.0, seed=args.seed + 1, progress=not args.no_progress, desc=f"{name} AAT")
                after = evaluate(model, data.x_test, data.y_test)
            print(f"{name}: {args.aat}-segment uniform tables: accuracy {before:.4f} before AAT, {after:.4f} after "
                  f"{args.aat_epochs} epochs (exact model: {acc:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
