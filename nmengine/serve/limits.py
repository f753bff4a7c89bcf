"""Request limits and validation for the server: every bad request becomes a :class:`RequestError`
with an HTTP status and a JSON body that says what was expected and what came.

Status codes:

* 400: the body is not UTF-8 or not JSON (or holds unpaired surrogates).
* 413: a limit was exceeded (``max_body_bytes``, ``max_inputs``, ``max_input_chars``); the body names
  the limit, its value and what the request had.
* 422: well-formed JSON of the wrong shape (missing ``input``, a number where a string belongs, an
  unknown ``encoding_format``, arrays that do not fit the program).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Mapping, Optional

import numpy as np

__all__ = [
    "Limits",
    "RequestError",
    "read_body",
    "parse_json",
    "texts_field",
    "check_texts",
    "decode_array",
    "run_inputs",
    "encode_array",
]


@dataclass(frozen=True)
class Limits:
    """Per-request limits (all positive ints)."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_inputs: int = 512
    max_input_chars: int = 32_768

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"Limits.{k} must be a positive int, got {v!r}")


class RequestError(Exception):
    """A request the server refuses: ``status`` and the JSON ``body`` of the response."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error", **details: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": kind, "code": status, **details}}


def limit_error(limit: str, allowed: int, got: int, what: str) -> RequestError:
    return RequestError(
        413,
        f"{what}: {got} exceeds the limit {limit}={allowed}",
        kind="limit_exceeded",
        limit=limit,
        allowed=allowed,
        got=got,
    )


async def read_body(chunks: AsyncIterator[bytes], limits: Limits, content_length: Optional[str]) -> bytes:
    """The request body, refused (413) as soon as it passes ``max_body_bytes``."""
    cap = limits.max_body_bytes
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise RequestError(400, f"Content-Length must be an integer, got {content_length!r}") from None
        if declared > cap:
            raise limit_error("max_body_bytes", cap, declared, "request body bytes")
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > cap:
            raise limit_error("max_body_bytes", cap, len(buf), "request body bytes (at least)")
    return bytes(buf)


def parse_json(body: bytes) -> Any:
    """Strict UTF-8, then JSON; 400 otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"request body is not valid UTF-8 (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise RequestError(400, "request body is empty; expected a JSON document")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(
            400, f"request body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        ) from None


def texts_field(doc: Any, key: str) -> list[str]:
    """``doc[key]`` as a list of texts (a str is one text)."""
    if not isinstance(doc, dict):
        raise RequestError(422, f"expected a JSON object with {key!r}, got {type(doc).__name__}")
    if key not in doc:
        raise RequestError(422, f"missing field {key!r} (a string or a list of strings)")
    value = doc[key]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise RequestError(422, f"{key!r} must be a string or a list of strings, got {type(value).__name__}")
    if (
        value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        or any(isinstance(v, list) for v in value)
    ):
        raise RequestError(422, f"{key!r} holds token ids; this server takes text (strings) only")
    return value


def check_texts(texts: list[Any], limits: Limits, field: str = "input") -> list[str]:
    """Types, counts, lengths and encodability of the texts of one request."""
    if len(texts) > limits.max_inputs:
        raise limit_error("max_inputs", limits.max_inputs, len(texts), f"number of {field} texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise RequestError(422, f"{field}[{i}] must be a string, got {type(t).__name__}")
        if len(t) > limits.max_input_chars:
            raise limit_error("max_input_chars", limits.max_input_chars, len(t), f"characters in {field}[{i}]")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(400, f"{field}[{i}] contains an unpaired surrogate (not valid Unicode text)") from None
    return texts


def decode_array(name: str, value: Any) -> np.ndarray:
    """A named array from JSON: nested lists, or ``{"npy": base64 of an .npy file}``."""
    if isinstance(value, dict):
        if set(value) != {"npy"} or not isinstance(value["npy"], str):
            raise RequestError(
                422,
                f'inputs[{name!r}] must be a nested list or {{"npy": <base64 .npy>}}, '
                f"got an object with keys {sorted(value)}",
            )
        try:
            raw = base64.b64decode(value["npy"], validate=True)
            arr = np.load(io.BytesIO(raw), allow_pickle=False)
        except (binascii.Error, ValueError, OSError, EOFError) as e:
            raise RequestError(422, f"inputs[{name!r}]: not a base64 .npy array ({e})") from None
        if arr.dtype.kind not in "fiub":
            raise RequestError(422, f"inputs[{name!r}]: .npy dtype must be numeric, got {arr.dtype}")
        return arr
    if not isinstance(value, list):
        raise RequestError(
            422, f'inputs[{name!r}] must be a nested list of numbers or {{"npy": ...}}, got {type(value).__name__}'
        )
    try:
        arr = np.array(value)
    except ValueError as e:  # ragged
        raise RequestError(422, f"inputs[{name!r}] is not a rectangular array: {e}") from None
    if arr.dtype.kind not in "fiub":
        raise RequestError(422, f"inputs[{name!r}] must hold numbers only, got dtype {arr.dtype}")
    return arr


def encode_array(arr: np.ndarray, fmt: str) -> Any:
    """An output array as nested lists (``"json"``) or ``{"npy": base64}`` (``"npy"``)."""
    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return {
            "npy": base64.b64encode(buf.getvalue()).decode("ascii"),
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
        }
    return arr.tolist()


def run_inputs(doc: Any, input_names: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """``(named arrays, output format)`` of a ``/v1/run`` request."""
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), dict):
        raise RequestError(
            422, f'expected {{"inputs": {{name: array, ...}}}} with the program\'s input names {sorted(input_names)}'
        )
    fmt = doc.get("format", "json")
    if fmt not in ("json", "npy"):
        raise RequestError(422, f"format must be 'json' or 'npy', got {fmt!r}")
    given = doc["inputs"]
    missing = sorted(set(input_names) - set(given))
    extra = sorted(set(given) - set(input_names))
    if missing or extra:
        raise RequestError(422, f"inputs must be exactly {sorted(input_names)}; missing {missing}, unknown {extra}")
    return {k: decode_array(k, v) for k, v in given.items()}, fmt
