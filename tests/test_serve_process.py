"""`nmengine serve` as a real process: starts from a bundle and prints where it listens; SIGTERM with
requests in flight answers every one of them and exits 0."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys

import httpx  # noqa: E402
import numpy as np
import pytest

from tests.serve_helpers import embedder, sentences

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    import nmengine as nm

    path = tmp_path_factory.mktemp("serve") / "minilm.nmb"
    nm.save(embedder().program, str(path))
    return path


def _start(bundle, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nmengine", "serve", str(bundle), "--port", "0", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()  # blocks until the server listens (or the process dies)
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError(f"no listening line: {line!r}; stderr: {proc.stderr.read()}")
    return proc, m.group(1)


def test_sigterm_drains_requests_in_flight_and_exits_0(bundle):
    proc, url = _start(bundle, "--max-wait-ms", "20", "--max-batch-tokens", "64")
    try:
        texts = list(sentences()[:32])
        groups = [texts[i : i + 3] for i in range(0, 30, 2)]

        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=120) as c:
                assert (await c.get("/health")).json()["model"] == "minilm"
                tasks = [asyncio.ensure_future(c.post("/v1/embeddings", json={"input": g})) for g in groups]
                # SIGTERM once every request has reached the server and some are still in flight
                async with httpx.AsyncClient(base_url=url, timeout=120) as probe:
                    while True:
                        m = (await probe.get("/metrics")).text
                        inflight = int(re.search(r"^nmengine_requests_in_flight (\d+)", m, re.M).group(1)) - 1
                        done = re.search(
                            r'^nmengine_requests_total\{endpoint="/v1/embeddings",status="200"\} (\d+)', m, re.M
                        )
                        done = int(done.group(1)) if done else 0
                        if inflight + done >= len(groups):
                            break
                        await asyncio.sleep(0.005)
                proc.send_signal(signal.SIGTERM)
                return inflight, await asyncio.gather(*tasks, return_exceptions=True)

        inflight, rs = asyncio.run(go())
        assert inflight > 0
        code = proc.wait(timeout=120)
        errors = [r for r in rs if isinstance(r, Exception) or r.status_code != 200]
        assert not errors, errors[:3]
        assert code == 0, proc.stderr.read()
        for g, r in zip(groups, rs):
            got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
            np.testing.assert_allclose(got, embedder().encode(g), atol=1e-5, rtol=0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_model_path_is_a_clear_error(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run(
        [sys.executable, "-m", "nmengine", "serve", str(tmp_path / "missing.nmb"), "--port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "not found" in r.stderr
