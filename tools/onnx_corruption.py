"""Corruption sweep of the ONNX importer: >= 1000 corrupted .onnx files, 0 crashes or hangs.

    python tools/onnx_corruption.py [--cases 1200] [--seed 0] [--timeout 30]

Bases: the ResNet-style CNN, BERT-like encoder and GPT-style decoder of the tests (built with
onnx.helper).  Corruptions: truncations at random lengths; 1-8 random bit flips; "lying lengths"
(a protobuf length prefix replaced by a larger, smaller or huge varint); structured lies (a tensor's
dims not matching its data, raw_data cut short, a node reading an undefined value, an opset of 999,
a required attribute removed, external data pointing outside the model's directory or past its file).

Every case runs ``nm.onnx.to_spec`` and, when that succeeds (a flip in weight bytes gives a valid,
different model), ``nm.onnx.load(..., exact=True)`` and one exact run on zeros.  Allowed outcomes: a
refusal with :class:`nm.onnx.OnnxImportError` (incl. ``UnsupportedModelError``), a clean import, or a
run that fails with a ``ValueError``/``TypeError`` naming the problem.  Anything else -- another
exception type, a crash of the worker process, a case over the timeout -- is a failure.  Cases run in
worker subprocesses (a batch per process; a dead worker's batch is retried one case per process to
name the culprit).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bases() -> dict[str, bytes]:
    from tests.onnx_models import bert_like, gpt_block
    from tests.test_onnx_cnn import resnet_style

    return {"resnet": resnet_style(), "bert": bert_like(layers=1), "gpt": gpt_block(layers=1)}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_fields(data: bytes, limit: int = 4000) -> list[tuple[int, int, int]]:
    """(offset of the length varint, its byte size, its value) of length-delimited fields, found by
    walking the protobuf wire format recursively from the top level."""
    found: list[tuple[int, int, int]] = []

    def walk(start: int, end: int, depth: int) -> bool:
        i = start
        while i < end and len(found) < limit:
            key, n = 0, 0
            while True:
                if i >= end or n > 9:
                    return False
                b = data[i]
                key |= (b & 0x7F) << (7 * n)
                i += 1
                n += 1
                if not b & 0x80:
                    break
            wt = key & 7
            if wt == 0:
                while i < end and data[i] & 0x80:
                    i += 1
                i += 1
            elif wt == 1:
                i += 8
            elif wt == 5:
                i += 4
            elif wt == 2:
                at, ln, n = i, 0, 0
                while True:
                    if i >= end or n > 9:
                        return False
                    b = data[i]
                    ln |= (b & 0x7F) << (7 * n)
                    i += 1
                    n += 1
                    if not b & 0x80:
                        break
                found.append((at, i - at, ln))
                if depth < 6 and ln > 2:
                    walk(i, min(i + ln, end), depth + 1)
                i += ln
            else:
                return False
        return True

    walk(0, len(data), 0)
    return found


def _structured(data: bytes, rng: np.random.Generator, tmp: Path) -> tuple[str, object]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    g = m.graph
    kind = rng.integers(0, 7)
    if kind == 0 and g.initializer:  # dims that lie about the data
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        if t.dims:
            t.dims[0] += int(rng.choice([1, 7, 1 << 40]))
        return "lying dims", m.SerializeToString()
    if kind == 1 and g.initializer:  # raw data cut short
        t = g.initializer[int(rng.integers(0, len(g.initializer)))]
        arr = numpy_helper.to_array(t)
        t2 = numpy_helper.from_array(arr, t.name)
        t2.raw_data = t2.raw_data[: len(t2.raw_data) // 2]
        t.CopyFrom(t2)
        return "short raw_data", m.SerializeToString()
    if kind == 2:  # a node reads an undefined value
        n = g.node[int(rng.integers(0, len(g.node)))]
        if n.input:
            n.input[0] = "no_such_value"
        return "undefined input", m.SerializeToString()
    if kind == 3:
        m.opset_import[0].version = 999
        return "opset 999", m.SerializeToString()
    if kind == 4:  # a required attribute removed
        cands = [n for n in g.node if n.attribute]
        if cands:
            n = cands[int(rng.integers(0, len(cands)))]
            del n.attribute[0]
        return "attribute removed", m.SerializeToString()
    # external data lies: location outside the directory, or past the file's end
    d = tmp / f"ext{int(rng.integers(0, 1 << 30))}"
    d.mkdir()
    path = d / "m.onnx"
    onnx.save_model(
        m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0
    )
    m2 = onnx.load(str(path), load_external_data=False)
    t = next(t for t in m2.graph.initializer if t.external_data)
    for e in t.external_data:
        if kind == 5 and e.key == "location":
            e.value = "../../etc/passwd"
        if kind == 6 and e.key == "length":
            e.value = str(int(e.value) + 1000000)
    onnx.save_model(m2, str(path))
    return "external data " + ("escapes" if kind == 5 else "past the end"), str(path)


def make_cases(n: int, seed: int, tmp: Path) -> list[tuple[str, str, object]]:
    rng = np.random.default_rng(seed)
    bs = bases()
    names = list(bs)
    fields = {k: _length_fields(v) for k, v in bs.items()}
    cases = []
    for i in range(n):
        base = names[i % len(names)]
        data = bs[base]
        r = i % 4
        if r == 0:
            cut = int(rng.integers(0, len(data)))
            cases.append((base, f"truncated at {cut}/{len(data)}", data[:cut]))
        elif r == 1:
            b = bytearray(data)
            k = int(rng.integers(1, 9))
            for pos in rng.integers(0, len(b), k):
                b[pos] ^= 1 << int(rng.integers(0, 8))
            cases.append((base, f"{k} bit flip(s)", bytes(b)))
        elif r == 2:
            at, size, val = fields[base][int(rng.integers(0, len(fields[base])))]
            new = int(rng.choice([val + 1, max(val - 1, 0), val * 2 + 5, 1 << 31, (1 << 62) - 1]))
            b = data[:at] + _varint(new) + data[at + size :]
            cases.append((base, f"length {val} -> {new} at {at}", b))
        else:
            what, payload = _structured(data, rng, tmp)
            cases.append((base, what, payload))
    return cases


def _one(payload: object, timeout: int) -> tuple[str, str]:
    import nmengine as nm

    def alarm(*_):
        raise TimeoutError("case timed out")

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    try:
        try:
            graph = nm.onnx.to_spec(payload)
        except (nm.onnx.OnnxImportError, FileNotFoundError) as e:
            return "refused", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        try:
            prog = nm.onnx.load(payload, exact=True)
            feeds = {}
            for k, spec in prog.inputs.items():
                shape = [d if d is not None else 2 for d in spec.shape]
                feeds[k] = np.zeros(shape, np.int64 if spec.dtype == "int64" else np.float32)
            prog.run(feeds, mode="exact")
        except (ValueError, TypeError) as e:
            return "imported, run refused", f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return "imported", f"{len(graph.ops)} ops"
    except TimeoutError:
        return "HANG", f"over {timeout} s"
    except BaseException as e:  # noqa: BLE001 - classifying every outcome is the point
        return "UNCLEAN", f"{type(e).__name__}: {e!s:.200} {traceback.format_exc(limit=3)[-400:]}"
    finally:
        signal.alarm(0)


def _worker(batch: list[tuple[int, object]], timeout: int, q: mp.Queue) -> None:
    for i, payload in batch:
        q.put((i,) + _one(payload, timeout))


def run(cases, timeout: int, batch: int = 100) -> list[tuple[int, str, str]]:
    ctx = mp.get_context("fork")
    results: dict[int, tuple[str, str]] = {}
    todo = [list(enumerate(cases))[i : i + batch] for i in range(0, len(cases), batch)]
    todo = [[(i, c[2]) for i, c in b] for b in todo]
    while todo:
        b = todo.pop(0)
        q = ctx.Queue()
        p = ctx.Process(target=_worker, args=(b, timeout, q))
        p.start()
        got = {}
        deadline = time.time() + timeout * (len(b) + 2)
        while len(got) < len(b) and time.time() < deadline:
            try:
                i, status, detail = q.get(timeout=1.0)
                got[i] = (status, detail)
            except Exception:  # noqa: BLE001 - queue.Empty
                if not p.is_alive() and q.empty():
                    break
        p.join(5)
        if p.is_alive():
            p.kill()
        results.update(got)
        missing = [(i, pl) for i, pl in b if i not in got]
        if missing and len(b) > 1:
            todo = [[m] for m in missing] + todo  # retry one per process to name the culprit
        elif missing:
            results[missing[0][0]] = ("CRASH", f"worker exit code {p.exitcode}")
    return [(i,) + results[i] for i in sorted(results)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=30)
    ap.add_argument("--json", default=None, help="write every case's outcome here")
    args = ap.parse_args(argv)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        cases = make_cases(args.cases, args.seed, Path(tmp))
        res = run(cases, args.timeout)
    counts: dict[str, int] = {}
    for _, status, _ in res:
        counts[status] = counts.get(status, 0) + 1
    bad = [(i, s, d) for i, s, d in res if s in ("UNCLEAN", "HANG", "CRASH")]
    print(
        f"{len(res)} corrupted files in {time.time() - t0:.0f} s: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    )
    for i, s, d in bad[:20]:
        print(f"  case {i} ({cases[i][0]}, {cases[i][1]}): {s}: {d}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                [
                    {"case": i, "base": cases[i][0], "corruption": cases[i][1], "outcome": s, "detail": d}
                    for i, s, d in res
                ],
                indent=1,
            )
        )
    return 1 if bad or len(res) < len(cases) else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
