"""``python -m bench [pytest args...]``: run every benchmark suite, then rewrite the generated section
of bench/RESULTS.md (between the ``<!-- generated:begin -->`` / ``<!-- generated:end -->`` markers)
with the machine description and one table per benchmark group.  Hand-written analysis outside the
markers is kept.  Suites whose peers are not installed (the ``bench`` extra) skip themselves.

Each suite runs in its own process, with the OpenMP settings it chooses: several OpenMP runtimes in
one process (OpenBLAS's, nmengine's, PyTorch's) slow each other down through their waiting threads,
so the GEMM suite runs as a plain numpy + nmengine process would, and the BERT suite, which must
host PyTorch and ONNX Runtime beside nmengine, sets ``OMP_WAIT_POLICY=PASSIVE`` for itself.

    python -m bench                        # everything
    python -m bench -k gemm                # a subset (any pytest arguments)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
BEGIN, END = "<!-- generated:begin -->", "<!-- generated:end -->"
SHOWN = ("gflops", "peak_frac", "sentences_per_s", "images_per_s", "macs", "pwl_evals", "dram_bytes_modelled")


def _fmt_time(s: float) -> str:
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)


def render(data: dict[str, Any], machine: str) -> str:
    """Markdown for a pytest-benchmark JSON document."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in data.get("benchmarks", []):
        groups.setdefault(b.get("group") or "(no group)", []).append(b)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [BEGIN, "", f"## Latest full run ({stamp}, `python -m bench`)", "", "```", machine, "```", ""]
    for group in sorted(groups):
        rows = sorted(groups[group], key=lambda b: b["stats"]["min"])
        best = rows[0]["stats"]["min"]
        extras = [k for k in SHOWN if any(k in r.get("extra_info", {}) for r in rows)]
        lines += [
            f"### {group}",
            "",
            "| benchmark | min | median | speed vs fastest | " + " | ".join(extras) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(extras),
        ]
        for r in rows:
            st, ex = r["stats"], r.get("extra_info", {})
            name = r["name"].split("[", 1)[-1].rstrip("]") if "[" in r["name"] else r["name"]
            cells = [_fmt_value(ex.get(k)) for k in extras]
            lines.append(
                f"| {name} | {_fmt_time(st['min'])} | {_fmt_time(st['median'])} | "
                f"{best / st['min']:.2f}x | " + " | ".join(cells) + " |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_results(section: str, path: Path = RESULTS) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:  # first run: right under the title, above the hand-written analysis
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{section}\n{body}"
    path.write_text(text)


def main(argv: list[str]) -> int:
    import subprocess

    sys.path.insert(0, str(HERE.parent))
    from bench.machine import describe, format_machine

    merged: dict[str, Any] = {"benchmarks": []}
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, suite in enumerate(sorted(HERE.glob("test_bench_*.py"))):
            out = os.path.join(tmp, f"{i}.json")
            cmd = [
                sys.executable,
                "-m",
                "pytest",
                str(suite),
                "--benchmark-only",
                f"--benchmark-json={out}",
                "-q",
                "-p",
                "no:cacheprovider",
                *argv,
            ]
            rc = subprocess.call(cmd, cwd=HERE.parent)
            worst = rc if rc not in (0, 5) and worst == 0 else worst  # 5: nothing selected in this suite
            if os.path.exists(out):
                with open(out) as f:
                    merged["benchmarks"] += json.load(f).get("benchmarks", [])
    if not merged["benchmarks"]:
        print("no benchmark results were produced", file=sys.stderr)
        return worst or 1
    write_results(render(merged, format_machine(describe())))
    print(f"wrote {RESULTS}")
    return worst


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
