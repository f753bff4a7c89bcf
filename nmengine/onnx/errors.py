"""Exceptions of the ONNX importer (all are ``ValueError`` s, so the CLI reports them as errors)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["OnnxImportError", "UnsupportedModelError"]


class OnnxImportError(ValueError):
    """An ONNX model that cannot be read or imported: malformed or truncated protobuf, missing external
    data, wrong input dtypes, inconsistent graph.  The message says what was expected and what came."""


class UnsupportedModelError(OnnxImportError):
    """The model uses ONNX operators (or operator forms) the importer cannot matrixize.

    ``unsupported`` is a list of ``(op_type, node_name, reason)``; the message lists every one of them
    with the model's opset, so one error tells the whole story before any compile work starts.
    """

    def __init__(self, unsupported: Iterable[tuple[str, str, str]], opset: int) -> None:
        self.unsupported = list(unsupported)
        self.opset = opset
        by_type: dict[str, list[str]] = {}
        for op_type, node, reason in self.unsupported:
            by_type.setdefault(op_type, []).append(f"{node!r}" + (f" ({reason})" if reason else ""))
        lines = [
            f"  {t}: {len(v)} node(s): {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
            for t, v in sorted(by_type.items())
        ]
        super().__init__(
            f"the model (opset {opset}) uses {len(by_type)} unsupported ONNX op type(s):\n"
            + "\n".join(lines)
            + "\nsee docs/onnx.md for the supported operators"
        )
