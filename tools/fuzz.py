"""Coverage-guided fuzzing of nmengine's loaders with atheris (libFuzzer for Python).

    python tools/fuzz.py                         # every target, 10,000 executions each
    python tools/fuzz.py --runs 200000 bundle    # one target, a longer campaign
    python tools/fuzz.py --list

Each target (``tests/fuzz_targets.py``) starts from its valid seeds; an input that raises anything but the
target's documented error types, crashes the interpreter or runs over ``--timeout`` seconds is saved to
``tests/fuzz_corpus/<target>/`` (replayed by ``tests/test_fuzz.py`` on every test run) and counted as a
finding.  Prints one line per target: executions, findings, seconds.  Needs ``pip install atheris``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fuzz_corpus"


def _child(target: str, runs: int, timeout: int, seed_dir: str) -> None:
    """Runs inside the subprocess: instrument nmengine, then hand control to libFuzzer."""
    import atheris

    sys.path.insert(0, str(ROOT))
    with atheris.instrument_imports(include=["nmengine", "tests.fuzz_targets"]):
        from tests import fuzz_targets

    artifacts = CORPUS / target
    artifacts.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(fuzz_targets.seeds(target)):
        (Path(seed_dir) / f"seed{i}").write_bytes(data)

    def one(data: bytes) -> None:
        fuzz_targets.check(target, data)

    argv = [
        sys.argv[0],
        f"-runs={runs}",
        f"-timeout={timeout}",
        f"-artifact_prefix={artifacts}/",
        "-max_len=65536",
        "-print_final_stats=1",
        seed_dir,
    ]
    atheris.Setup(argv, one)
    atheris.Fuzz()


def _run_target(target: str, runs: int, timeout: int) -> tuple[int, int, float]:
    before = set((CORPUS / target).iterdir()) if (CORPUS / target).is_dir() else set()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as seeds:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                target,
                "--runs",
                str(runs),
                "--timeout",
                str(timeout),
                "--seed-dir",
                seeds,
            ],
            capture_output=True,
            text=True,
        )
    seconds = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    m = re.search(r"stat::number_of_executed_units:\s*(\d+)", log) or re.search(r"Done (\d+) runs", log)
    execs = int(m.group(1)) if m else 0
    after = set((CORPUS / target).iterdir()) if (CORPUS / target).is_dir() else set()
    findings = len(after - before)
    if proc.returncode != 0 and findings == 0:
        findings = 1
        print(log[-3000:], file=sys.stderr)
    return execs, findings, seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", help="targets to fuzz (default: all)")
    ap.add_argument("--runs", type=int, default=10_000, help="executions per target (default 10000)")
    ap.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--seed-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.runs, args.timeout, args.seed_dir)
        return 0
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("NMENGINE_CACHE", "0")
    from tests.fuzz_targets import TARGETS

    if args.list:
        print("\n".join(sorted(TARGETS)))
        return 0
    unknown = [t for t in args.targets if t not in TARGETS]
    if unknown:
        ap.error(f"unknown targets {unknown}; choose from {sorted(TARGETS)}")
    total = 0
    for target in args.targets or sorted(TARGETS):
        execs, findings, seconds = _run_target(target, args.runs, args.timeout)
        total += findings
        print(f"{target:15s} {execs:9,d} executions  {findings} findings  {seconds:7.1f} s", flush=True)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
