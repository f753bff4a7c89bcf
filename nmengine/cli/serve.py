"""``nmengine serve MODEL``: run the embedding / inference server on uvicorn.

    nmengine serve model.nmb --host 127.0.0.1 --port 8080 [--max-batch-tokens N] [--max-wait-ms W]
                   [--max-queue Q] [--precision matrixized|exact] [--threads T]

``--port 0`` picks a free port.  Once it accepts connections the server prints one line,
``nmengine serve: listening on http://HOST:PORT (...)``, to stdout.  SIGTERM (or Ctrl-C) stops accepting
connections, finishes every request in flight and exits with status 0.
"""

from __future__ import annotations

import argparse
import gc
import signal
import socket
import time
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve embeddings (OpenAI-compatible) and program runs over HTTP",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="Hugging Face BERT directory, bundle (.nmb) or .onnx file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0: any free port)")
    p.add_argument(
        "--max-batch-tokens", type=int, default=1024, help="most sentences x padded tokens in one engine call"
    )
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="longest wait for batch mates")
    p.add_argument("--max-queue", type=int, default=4096, help="most queued sentences before 503")
    p.add_argument(
        "--precision",
        choices=("matrixized", "exact"),
        default="matrixized",
        help="PWL tables (matrixized, default) or the true functions (exact)",
    )
    p.add_argument("--threads", type=int, default=None, help="engine threads (default: the engine's)")
    p.add_argument("--max-inputs", type=int, default=None, help="most texts per request")
    p.add_argument("--max-input-chars", type=int, default=None, help="most characters per text")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body")
    p.add_argument("--name", default=None, help="model name in responses (default: from MODEL)")
    p.add_argument(
        "--keep-alive",
        type=float,
        default=30.0,
        help="seconds an idle keep-alive connection stays open (uvicorn's default is 5)",
    )
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise ValueError("`nmengine serve` needs the serve extra: pip install 'nmengine[serve]'") from None
    import nmengine as nm

    from ..serve.app import create_app
    from ..serve.limits import Limits
    from ..serve.model import load_model

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        nm.set_num_threads(args.threads)
    limits = Limits(
        **{
            k: v
            for k, v in (
                ("max_inputs", args.max_inputs),
                ("max_input_chars", args.max_input_chars),
                ("max_body_bytes", args.max_body_bytes),
            )
            if v is not None
        }
    )
    t0 = time.perf_counter()
    model = load_model(args.model, mode=args.precision, name=args.name)
    app = create_app(
        model,
        limits=limits,
        max_batch_tokens=args.max_batch_tokens,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
    )
    # the loaded model (program, tables, tokenizer) is permanent: keep it out of the cyclic collector's
    # full passes, which otherwise rescan it while requests allocate
    gc.collect()
    gc.freeze()
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        timeout_graceful_shutdown=None,
        access_log=False,
        lifespan="on",
        timeout_keep_alive=args.keep_alive,
        proxy_headers=False,  # served directly (loopback or behind a proxy that logs for itself)
        server_header=False,
    )

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                where = f"[{host}]" if ":" in host else host
                print(
                    f"nmengine serve: listening on http://{where}:{port} (model {model.name!r}, "
                    f"{'text' if model.is_text else 'program'}, ready {time.perf_counter() - t0:.2f} s after "
                    f"start, {model.load_seconds:.2f} s loading)",
                    flush=True,
                )

    # uvicorn re-raises the signal that stopped it once it has shut down; a no-op handler for SIGTERM
    # lets the process end with status 0 after the drain instead of dying by the signal.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        _Server(config).run(sockets=[sock])
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    return 0
