"""ModelSpec: the frontends' common description of a network.

A :class:`ModelSpec` is an ordered list of :class:`Layer` s over named values.  Each layer reads the
values named in ``inputs`` and writes the value named ``output``; the model's inputs are declared in
``inputs`` and its results named in ``outputs``.  Weights are numpy arrays owned by the layer, in the
PyTorch layout (``Linear.weight`` is ``(out_features, in_features)``, convolutions are NCHW with
``(C_out, C_in, kh, kw)`` kernels), so importers copy tensors without rearranging them.

Layer ops (``op``), their inputs, parameters (``params``) and weights:

==================  ==========================  =====================================  =========================
op                  inputs                      params                                 weights
==================  ==========================  =====================================  =========================
linear              x [..., in]                                                        weight (out, in), bias? (out)
conv2d              x [N, C, H, W]              stride=1, padding=0 (int or pair)      weight (Co, Ci, kh, kw), bias?
batchnorm2d         x [N, C, H, W]              eps=1e-5                               weight, bias, running_mean, running_var (C)
relu/gelu/gelu_tanh/tanh/sigmoid/silu  x (any)                                          -
maxpool2d           x [N, C, H, W]              kernel, stride=kernel, padding=0       -
avgpool2d           x [N, C, H, W]              kernel, stride=kernel, padding=0       -
global_avgpool      x [N, C, H, W] -> [N, C]                                           -
flatten             x [N, ...] -> [N, prod]                                            -
patchify            x [N, C, H, W] -> [N, T, C*p*p]   patch=p (row-major patches; C, kh, kw order)  -
add                 a, b (same shape)                                                  -
position_add        x [N, T, D]                                                        weight (T_max, D): adds rows 0..T-1
layernorm           x [..., D]                  eps=1e-5                               weight (D), bias (D)
embedding           ids [N, T] int (, token_type_ids [N, T])                         word (V, D), position? (P, D), token_type? (Tt, D)
mhsa                x [N, T, D] (, mask [N, T] 1=keep 0=pad)  heads                    q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, o_weight, o_bias
softmax             x [..., n] (over the last axis)                                    -
mean_pool           x [N, T, D] (, mask [N, T]) -> [N, D]                              -
l2_normalize        x [..., D]                  eps=1e-12                              -
==================  ==========================  =====================================  =========================

Pooling follows PyTorch: ``avgpool2d`` counts zero padding in the average (``count_include_pad``) and
``maxpool2d`` never picks a padded position.  ``l2_normalize`` computes ``x * rsqrt(sum(x^2) + eps^2)``
(PyTorch's ``x / max(|x|, eps)`` differs only for norms near ``eps``).

``embedding`` adds position rows ``0..T-1`` and token-type rows (type 0 when no token-type input is
given).  ``mhsa`` is multi-head self-attention with ``softmax(Q K^T / sqrt(D / heads) + mask_bias) V``
followed by the output projection, where padded keys (mask 0) get no weight.

Input declarations give a shape with ``None`` for free dimensions and a dtype kind, ``"float32"`` or
``"int64"``.  :meth:`ModelSpec.validate` checks the graph (names defined before use, weights present with
consistent shapes) and raises :class:`SpecError` (a ``ValueError``) naming the layer and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["Layer", "InputSpec", "ModelSpec", "SpecError", "LAYER_OPS", "ELEMENTWISE_OPS"]


class SpecError(ValueError):
    """A ModelSpec that cannot describe a network: unknown op, missing weight, inconsistent shapes."""


ELEMENTWISE_OPS = ("relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "silu")

#: op -> (number of required inputs, optional inputs, required weights, optional weights)
LAYER_OPS: dict[str, tuple[int, int, tuple[str, ...], tuple[str, ...]]] = {
    "linear": (1, 0, ("weight",), ("bias",)),
    "conv2d": (1, 0, ("weight",), ("bias",)),
    "batchnorm2d": (1, 0, ("weight", "bias", "running_mean", "running_var"), ()),
    **{op: (1, 0, (), ()) for op in ELEMENTWISE_OPS},
    "maxpool2d": (1, 0, (), ()),
    "avgpool2d": (1, 0, (), ()),
    "global_avgpool": (1, 0, (), ()),
    "flatten": (1, 0, (), ()),
    "patchify": (1, 0, (), ()),
    "add": (2, 0, (), ()),
    "position_add": (1, 0, ("weight",), ()),
    "layernorm": (1, 0, ("weight", "bias"), ()),
    "embedding": (1, 1, ("word",), ("position", "token_type")),
    "mhsa": (1, 1, tuple(f"{p}_{k}" for p in "qkvo" for k in ("weight", "bias")), ()),
    "softmax": (1, 0, (), ()),
    "mean_pool": (1, 1, (), ()),
    "l2_normalize": (1, 0, (), ()),
}


@dataclass
class Layer:
    """One layer: ``output = op(*inputs; params, weights)``."""

    op: str
    name: str
    inputs: list[str]
    output: str
    params: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class InputSpec:
    """A model input: ``shape`` with ``None`` for free dimensions, ``dtype`` "float32" or "int64"."""

    shape: tuple[int | None, ...]
    dtype: str = "float32"


class ModelSpec:
    """An ordered graph of layers with named weights (see the module docstring for the ops)."""

    def __init__(
        self,
        inputs: Mapping[str, InputSpec | tuple],
        layers: Iterable[Layer],
        outputs: Sequence[str],
        *,
        name: str = "model",
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.inputs: dict[str, InputSpec] = {
            k: v if isinstance(v, InputSpec) else InputSpec(tuple(v)) for k, v in inputs.items()
        }
        self.layers: list[Layer] = list(layers)
        self.outputs: list[str] = list(outputs)
        self.name = name
        self.meta = dict(meta or {})
        self.validate()

    def layer(self, name: str) -> Layer:
        for lyr in self.layers:
            if lyr.name == name:
                return lyr
        raise KeyError(f"no layer named {name!r}")

    def validate(self) -> None:
        """Check names, ops, weights and static shapes; raise SpecError naming the culprit."""
        if not self.inputs:
            raise SpecError("ModelSpec needs at least one input")
        for k, v in self.inputs.items():
            if v.dtype not in ("float32", "int64"):
                raise SpecError(f"input {k!r}: dtype must be 'float32' or 'int64', got {v.dtype!r}")
        defined = set(self.inputs)
        names = set()
        for lyr in self.layers:
            where = f"layer {lyr.name!r} ({lyr.op})"
            if lyr.op not in LAYER_OPS:
                raise SpecError(f"{where}: unknown op; expected one of {sorted(LAYER_OPS)}")
            if lyr.name in names:
                raise SpecError(f"{where}: duplicate layer name")
            names.add(lyr.name)
            n_req, n_opt, w_req, w_opt = LAYER_OPS[lyr.op]
            if not (n_req <= len(lyr.inputs) <= n_req + n_opt):
                raise SpecError(f"{where}: expects {n_req}..{n_req + n_opt} inputs, got {len(lyr.inputs)}")
            for x in lyr.inputs:
                if x not in defined:
                    raise SpecError(f"{where}: input {x!r} is not defined by an earlier layer or model input")
            missing = [w for w in w_req if w not in lyr.weights]
            if missing:
                raise SpecError(f"{where}: missing weight(s) {missing}")
            unknown = [w for w in lyr.weights if w not in w_req + w_opt]
            if unknown:
                raise SpecError(f"{where}: unexpected weight(s) {unknown}; expected {list(w_req + w_opt)}")
            for wname, w in lyr.weights.items():
                if not isinstance(w, np.ndarray) or w.dtype.kind != "f":
                    raise SpecError(f"{where}: weight {wname!r} must be a float numpy array, got {type(w).__name__}")
                if not np.all(np.isfinite(w)):
                    raise SpecError(f"{where}: weight {wname!r} has non-finite values")
            _check_weight_shapes(lyr, where)
            defined.add(lyr.output)
        for out in self.outputs:
            if out not in defined:
                raise SpecError(f"model output {out!r} is not produced by any layer")
        if not self.outputs:
            raise SpecError("ModelSpec needs at least one output")

    def n_parameters(self) -> int:
        return int(sum(w.size for lyr in self.layers for w in lyr.weights.values()))

    def __repr__(self) -> str:
        return (
            f"ModelSpec({self.name!r}, inputs={list(self.inputs)}, {len(self.layers)} layers, "
            f"{self.n_parameters():,} parameters, outputs={self.outputs})"
        )


def _shape(lyr: Layer, w: str) -> tuple[int, ...]:
    return tuple(lyr.weights[w].shape)


def _check_weight_shapes(lyr: Layer, where: str) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise SpecError(f"{where}: {msg}")

    op = lyr.op
    if op == "linear":
        need(len(_shape(lyr, "weight")) == 2, f"weight must be (out, in), got {_shape(lyr, 'weight')}")
        if "bias" in lyr.weights:
            need(
                _shape(lyr, "bias") == _shape(lyr, "weight")[:1],
                f"bias must be ({_shape(lyr, 'weight')[0]},), got {_shape(lyr, 'bias')}",
            )
    elif op == "conv2d":
        need(len(_shape(lyr, "weight")) == 4, f"weight must be (Co, Ci, kh, kw), got {_shape(lyr, 'weight')}")
        if "bias" in lyr.weights:
            need(
                _shape(lyr, "bias") == _shape(lyr, "weight")[:1],
                f"bias must be ({_shape(lyr, 'weight')[0]},), got {_shape(lyr, 'bias')}",
            )
        if lyr.params.get("groups", 1) != 1:
            raise SpecError(f"{where}: only groups=1 is supported, got groups={lyr.params['groups']}")
    elif op in ("batchnorm2d", "layernorm"):
        shapes = {w: _shape(lyr, w) for w in lyr.weights}
        first = next(iter(shapes.values()))
        need(
            len(first) == 1 and all(s == first for s in shapes.values()),
            f"weights must be equal 1-D vectors, got {shapes}",
        )
        if op == "batchnorm2d":
            need(bool(np.all(lyr.weights["running_var"] >= 0)), "running_var must be >= 0")
    elif op == "embedding":
        d = _shape(lyr, "word")
        need(len(d) == 2, f"word must be (vocab, dim), got {d}")
        for w in ("position", "token_type"):
            if w in lyr.weights:
                need(
                    len(_shape(lyr, w)) == 2 and _shape(lyr, w)[1] == d[1],
                    f"{w} must be (n, {d[1]}), got {_shape(lyr, w)}",
                )
    elif op == "mhsa":
        heads: Any = lyr.params.get("heads")
        need(isinstance(heads, int) and heads >= 1, f"params['heads'] must be a positive int, got {heads!r}")
        d = _shape(lyr, "q_weight")
        need(len(d) == 2 and d[0] == d[1], f"q_weight must be square (D, D), got {d}")
        need(d[0] % heads == 0, f"model dim {d[0]} is not divisible by heads={heads}")
        for p in "qkvo":
            need(_shape(lyr, f"{p}_weight") == d, f"{p}_weight must be {d}, got {_shape(lyr, f'{p}_weight')}")
            need(_shape(lyr, f"{p}_bias") == d[:1], f"{p}_bias must be {d[:1]}, got {_shape(lyr, f'{p}_bias')}")
    elif op == "position_add":
        need(len(_shape(lyr, "weight")) == 2, f"weight must be (T_max, D), got {_shape(lyr, 'weight')}")
    elif op in ("maxpool2d", "avgpool2d"):
        k = lyr.params.get("kernel")
        need(k is not None, "params['kernel'] is required")
    elif op == "patchify":
        patch = lyr.params.get("patch")
        need(isinstance(patch, int) and patch >= 1, f"params['patch'] must be a positive int, got {patch!r}")
