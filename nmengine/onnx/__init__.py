"""Import ONNX models: any network a framework exports runs matrixized (GEMM + PWL + data movement).

    import nmengine as nm
    program = nm.onnx.load("resnet18.onnx", calibration={"input": images})
    y = program.run({"input": x})                   # names are the ONNX graph's
    graph = nm.onnx.to_spec("model.onnx")          # the compiler's input (LoweredGraph), no compile

The ONNX graph is read and checked (:mod:`.loader`), exporter patterns are fused (:mod:`.patterns`),
shape arithmetic is folded with free dims kept symbolic (:mod:`.dims`), and every node is lowered by
the rule of its op type onto the Program's ops (:mod:`.ops_nn`, :mod:`.ops_math`, :mod:`.ops_shape`);
the compiler (:func:`nmengine.compile.lowered.compile_lowered`, steps 3-5 of ``nm.compile``) then fuses epilogues, calibrates and fits the PWL tables.  The op table with
how each operator is matrixized is ``docs/onnx.md`` (and :func:`op_table`).

Needs the ``onnx`` package: ``pip install 'nmengine[onnx]'``.
"""

from __future__ import annotations

try:
    import onnx as _onnx  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "nmengine.onnx needs the 'onnx' package: install the extra with pip install 'nmengine[onnx]' "
        "(or pip install onnx)"
    ) from e

from .context import RULES
from .errors import OnnxImportError, UnsupportedModelError
from .importer import import_summary, load, to_spec

__all__ = ["OnnxImportError", "UnsupportedModelError", "import_summary", "load", "op_table", "to_spec"]


def op_table() -> list[tuple[str, str, str]]:
    """(ONNX op type, how it is matrixized, PWL tables it uses) for every supported operator."""
    return [(t, r.how, r.tables) for t, r in sorted(RULES.items()) if not t.startswith("Nm")]
