"""nmengine: whole neural networks as GEMM + piecewise-linear table lookups (NeuralMatrix).

The public API (contracts other modules and users rely on)::

    import nmengine as nm
    nm.gemm(a, b, bias=..., residual=..., epilogue="relu" | nm.PWLTable | None)
    nm.gemm_batched(a, b, epilogue=...)
    nm.PWLTable(breakpoints, slopes, intercepts)
    nm.approx.fit("gelu", segments=32)
    program = nm.compile(spec, calibration=inputs); program.run(inputs)
    sess = nm.Session(program_or_bundle_path, threads=None, kernel=None); sess.run(inputs)
    nm.save(program, "model.nmb"); nm.load("model.nmb")
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported eagerly: the subpackage ``nmengine.compile`` and the function ``nm.compile`` share a name,
# and a lazy attribute would be replaced by the module as soon as anything imported the subpackage.
from .compile import compile  # noqa: E402  (loads the program, runtime and compiled core too)
from .pwl import PWLTable
from .spec import InputSpec, Layer, ModelSpec, SpecError

__version__ = "0.1.0"

_LAZY_SUBMODULES = {
    "approx",
    "hf",
    "train",
    "cost",
    "bundle",
    "cli",
    "workflow",
    "corpus",
    "serve",
    "onnx",
    "distributed",
}
_LAZY_ATTRS: dict[str, tuple[str, str]] = {
    "gemm": ("kernels", "gemm"),
    "gemm_batched": ("kernels", "gemm_batched"),
    "set_num_threads": ("kernels", "set_num_threads"),
    "get_num_threads": ("kernels", "get_num_threads"),
    "kernel_info": ("kernels", "kernel_info"),
    "pwl_apply": ("kernels", "pwl_apply"),
    "Program": ("program", "Program"),
    "Session": ("session", "Session"),
    "save": ("bundle", "save"),
    "load": ("bundle", "load"),
    "BundleError": ("bundle", "BundleError"),
    "AcceleratorConfig": ("cost", "AcceleratorConfig"),
    "cost_report": ("cost", "cost_report"),
}


def __getattr__(name: str) -> Any:
    # Subpackages and the compiled core load on first use, so they cost nothing until used.
    if name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY_ATTRS:
        mod, attr = _LAZY_ATTRS[name]
        value = getattr(importlib.import_module(f".{mod}", __name__), attr)
    else:
        raise AttributeError(f"module 'nmengine' has no attribute {name!r}")
    globals()[name] = value  # resolved once: later lookups are plain module attributes
    return value


__all__ = ["compile", "PWLTable", "ModelSpec", "Layer", "InputSpec", "SpecError", *_LAZY_ATTRS, *_LAZY_SUBMODULES]
