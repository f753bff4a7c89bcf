"""What the server serves: a sentence embedder (text in, vectors out) or a bare Program (arrays in,
arrays out), loaded from a Hugging Face directory, a bundle (.nmb) or an .onnx file."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["ServedModel", "load_model"]


@dataclass
class ServedModel:
    """A loaded model: ``program`` always; ``embedder`` when it embeds text."""

    name: str
    program: Any
    embedder: Optional[Any] = None
    mode: str = "matrixized"
    source: str = ""
    load_seconds: float = 0.0

    @property
    def is_text(self) -> bool:
        return self.embedder is not None

    @property
    def dim(self) -> Optional[int]:
        return int(self.embedder.dim) if self.embedder is not None else None

    def describe(self) -> dict[str, Any]:
        prog = self.program
        info: dict[str, Any] = {
            "model": self.name,
            "kind": "sentence-embedder" if self.is_text else "program",
            "source": self.source,
            "inputs": {
                k: {"shape": ["?" if d is None else d for d in v.shape], "dtype": v.dtype}
                for k, v in prog.inputs.items()
            },
            "outputs": list(prog.outputs),
            "mode": self.mode,
        }
        if self.is_text:
            info["dim"] = self.dim
            info["max_length"] = getattr(self.embedder, "max_length", None)
        return info


def _name(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in (".nmb", ".onnx") else base


def load_model(path: str, *, mode: str = "matrixized", name: Optional[str] = None) -> ServedModel:
    """Load ``path`` (a Hugging Face BERT directory, a ``.nmb`` bundle or an ``.onnx`` file).

    A bundle of a sentence embedder (its program carries the ``hf`` metadata) serves text; any other
    bundle serves ``/v1/run`` only.  ``mode`` is ``"matrixized"`` or ``"exact"``.
    """
    import nmengine as nm
    from nmengine.runtime import MODES

    if mode not in MODES:
        raise ValueError(f"precision/mode must be one of {MODES}, got {mode!r}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"model {path!r} not found (expected a Hugging Face directory, a .nmb bundle or an .onnx file)"
        )
    t0 = time.perf_counter()
    embedder = None
    if os.path.isdir(path):
        embedder = nm.hf.SentenceEmbedder(path, mode=mode)
        program = embedder.program
    elif path.lower().endswith(".onnx"):
        try:
            from nmengine import onnx as nm_onnx  # the ONNX frontend (#12)
        except ImportError:
            raise ValueError(
                f"{path}: serving .onnx files needs the ONNX frontend (nmengine.onnx), which this "
                "build does not have; export a bundle (.nmb) instead"
            ) from None
        # no calibration inputs at hand: the importer calibrates on synthetic inputs (and says so);
        # export a bundle calibrated on real data for accuracy-critical use
        program = nm_onnx.load(path, exact=(mode == "exact"))
    else:
        program = nm.load(path)
        if "hf" in program.meta:
            embedder = nm.hf.SentenceEmbedder(program=program, mode=mode)
    return ServedModel(name or _name(path), program, embedder, mode, os.path.abspath(path), time.perf_counter() - t0)
