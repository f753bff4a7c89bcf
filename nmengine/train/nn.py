"""Modules: parameters, state, train/eval modes and export to :class:`~nmengine.spec.ModelSpec`.

Design
------
:class:`Module` follows PyTorch's conventions so that names line up everywhere: assigning a
:class:`~nmengine.train.tensor.Parameter` or a sub-:class:`Module` to an attribute registers it, and
``named_parameters()`` / ``state_dict()`` / ``named_modules()`` use dotted *module paths*
("blocks.0.attn.q_weight").  Non-trainable state (BatchNorm running statistics) are *buffers*
(plain numpy arrays, :meth:`Module.register_buffer`), included in ``state_dict``.

Export: every module implements ``_emit(builder, path, *values) -> value``, appending the spec layers
that compute it (in eval-mode semantics) and returning the name of the value it produces.  A *leaf*
module (one spec layer: Linear, Conv2d, LayerNorm, GELU, MultiHeadSelfAttention, ...) names its layer
by its module path, and a layer's output value has the same name as the layer.  Containers emit their
children in forward order; residual containers add ``add`` layers named ``<path>.add`` (CNN block) or
``<path>.add1`` / ``<path>.add2`` (transformer encoder layer).  Dropout and Identity emit nothing.
The model input is the value ``"x"``.  Because leaf names are module paths, the PWL tables the
compiler produces per spec layer map straight back onto modules (see :mod:`nmengine.train.aat`).

Approximation hook: modules with scalar nonlinearities list them in ``nl_roles`` (activation modules:
their op name; LayerNorm and L2Normalize: ``rsqrt``; attention and softmax: ``exp`` and ``reciprocal``;
MeanPool: ``reciprocal`` of the token count when masked) and evaluate them
through ``self._nl`` when it is set (``None`` = exact, fused fast path).

Why one module of this length: one class per layer, each with its forward and its ModelSpec export
(``_emit``) side by side, so a layer and its spec can be read together.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from ..spec import InputSpec, Layer, ModelSpec
from . import functional as F
from .tensor import Parameter, Tensor

__all__ = [
    "Module",
    "Sequential",
    "SpecBuilder",
    "manual_seed",
    "Linear",
    "Conv2d",
    "BatchNorm2d",
    "LayerNorm",
    "Embedding",
    "PositionAdd",
    "Patchify",
    "ReLU",
    "GELU",
    "GELUTanh",
    "Tanh",
    "Sigmoid",
    "SiLU",
    "activation",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool",
    "Flatten",
    "MeanPool",
    "L2Normalize",
    "Softmax",
    "Dropout",
    "Identity",
    "MultiHeadSelfAttention",
    "MLP",
    "ResidualBlock",
    "TransformerEncoderLayer",
]

_RNG = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Seed the generator used for initialisation when a module is built without ``rng``."""
    global _RNG
    _RNG = np.random.default_rng(seed)


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    return _RNG if rng is None else rng


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class SpecBuilder:
    """Collects spec layers during export; weights are copied in ``dtype``."""

    def __init__(self, dtype: Any = np.float32) -> None:
        self.layers: list[Layer] = []
        self.dtype = np.dtype(dtype)

    def add(
        self,
        op: str,
        name: str,
        inputs: Sequence[str],
        params: Mapping[str, Any] | None = None,
        weights: Mapping[str, Any] | None = None,
    ) -> str:
        """Append a layer named ``name`` (``op`` when empty); its output value has the same name."""
        name = name or op
        w = {k: np.array(v.data if isinstance(v, Tensor) else v, dtype=self.dtype) for k, v in (weights or {}).items()}
        self.layers.append(
            Layer(op=op, name=name, inputs=list(inputs), output=name, params=dict(params or {}), weights=w)
        )
        return name


class Module:
    """Base class: parameter/buffer/submodule registry, modes, state, dtype casting and spec export."""

    #: scalar-function roles this module evaluates through ``self._nl`` (see :mod:`.aat`).
    nl_roles: tuple[str, ...] = ()

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_nl", None)

    # -- registry -----------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(
                f"{type(self).__name__}.__init__ must call super().__init__() before assigning attributes"
            )
        if isinstance(value, (Parameter, Module)):
            for d in (self._parameters, self._modules, self._buffers, self.__dict__):
                d.pop(name, None)
            (self._parameters if isinstance(value, Parameter) else self._modules)[name] = value
        elif name in self._buffers:
            self._buffers[name] = np.asarray(value)
        else:
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for key in ("_parameters", "_modules", "_buffers"):
            if key in d and name in d[key]:
                return d[key][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def register_buffer(self, name: str, value: np.ndarray) -> None:
        """Register non-trainable state (saved in ``state_dict``, cast by :meth:`to`)."""
        self._buffers[name] = np.asarray(value)

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        yield from self._modules.items()

    def children(self) -> Iterator["Module"]:
        yield from self._modules.values()

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        """All modules (this one first, path ``prefix``), depth first in registration order."""
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(_join(prefix, name))

    def modules(self) -> Iterator["Module"]:
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for path, m in self.named_modules(prefix):
            for name, p in m._parameters.items():
                yield _join(path, name), p

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for path, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                yield _join(path, name), b

    def n_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of all parameters and buffers, by dotted name."""
        out = {k: p.data.copy() for k, p in self.named_parameters()}
        out.update({k: np.array(b, copy=True) for k, b in self.named_buffers()})
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy values into parameters and buffers (shapes must match; dtype is kept)."""
        params = dict(self.named_parameters())
        bufs = {}
        for path, m in self.named_modules():
            for name in m._buffers:
                bufs[_join(path, name)] = (m, name)
        if strict:
            missing = sorted((set(params) | set(bufs)) - set(state))
            unexpected = sorted(set(state) - set(params) - set(bufs))
            if missing or unexpected:
                raise KeyError(f"load_state_dict: missing {missing}, unexpected {unexpected}")
        for k, v in state.items():
            v = np.asarray(v)
            if k in params:
                p = params[k]
                if v.shape != p.shape:
                    raise ValueError(f"load_state_dict: {k} has shape {v.shape}, expected {p.shape}")
                p.data = v.astype(p.dtype, copy=True)
            elif k in bufs:
                m, name = bufs[k]
                old = m._buffers[name]
                if v.shape != old.shape:
                    raise ValueError(f"load_state_dict: {k} has shape {v.shape}, expected {old.shape}")
                m._buffers[name] = v.astype(old.dtype, copy=True)

    def to(self, dtype: Any) -> "Module":
        """Cast all floating parameters and buffers to ``dtype`` in place (e.g. float64 for grad checks)."""
        dt = np.dtype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dt)
                p.grad = None
            for name, b in m._buffers.items():
                if b.dtype.kind == "f":
                    m._buffers[name] = b.astype(dt)
        return self

    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # -- forward ------------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self.forward(*args, **kwargs)

    # -- export -------------------------------------------------------------------------------
    def _emit(self, b: SpecBuilder, path: str, *values: Any, **kw: Any) -> str:
        """Append this module's spec layers reading the values named ``values``; return the output's name.

        Each module takes its own inputs, as its ``forward`` does (``x``; ``x, mask``; ``ids,
        token_type_ids``): the open signature here (like ``forward``'s) is what lets subclasses narrow it.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be exported to a ModelSpec (no _emit)")

    def to_spec(
        self,
        input_shape: Sequence[int] | None = None,
        *,
        inputs: Mapping[str, InputSpec] | None = None,
        name: str | None = None,
        dtype: Any = np.float32,
        meta: Mapping[str, Any] | None = None,
    ) -> ModelSpec:
        """Export the network (eval semantics) as a :class:`ModelSpec`.

        ``input_shape`` is the per-sample shape (without the batch dim; defaults to the model's
        ``input_shape`` attribute) of the single float input ``"x"``.  Modules with several inputs (e.g.
        attention with a key mask) take ``inputs`` instead: an ordered mapping name -> InputSpec whose
        values are passed to the top-level ``_emit`` in order.  Weights are copied in ``dtype``.
        """
        if inputs is None:
            shape = input_shape if input_shape is not None else getattr(self, "input_shape", None)
            if shape is None:
                raise ValueError(f"{type(self).__name__}.to_spec: pass input_shape (per-sample, e.g. (1, 8, 8))")
            inputs = {"x": InputSpec((None, *tuple(int(s) for s in shape)), "float32")}
        b = SpecBuilder(dtype)
        out = self._emit(b, "", *inputs)
        info = {"source": "nmengine.train", "class": type(self).__name__}
        info.update(meta or {})
        return ModelSpec(dict(inputs), b.layers, [out], name=name or type(self).__name__, meta=info)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return lines[0] + ")" if len(lines) == 1 else "\n".join(lines) + "\n)"


class Identity(Module):
    def forward(self, x: Tensor) -> Tensor:
        return x

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return x


class Sequential(Module):
    """Children applied in order, named "0", "1", ... (or by the keyword names given)."""

    def __init__(self, *modules: Module, **named: Module) -> None:
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)
        for k, m in named.items():
            setattr(self, k, m)

    def __getitem__(self, i: int) -> Module:
        return list(self._modules.values())[i]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self) -> Iterator[Module]:
        return iter(self._modules.values())

    def forward(self, x: Tensor) -> Tensor:
        for m in self._modules.values():
            x = m(x)
        return x

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        for name, m in self._modules.items():
            x = m._emit(b, _join(path, name), x)
        return x


# ---------------------------------------------------------------------------------------------
# GEMM layers


class Linear(Module):
    """``y = x @ weight.T + bias`` with ``weight (out, in)``; PyTorch's default uniform init, or ``init="xavier"``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init: str = "default",
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        r = _rng(rng)
        self.in_features, self.out_features = in_features, out_features
        if init == "default":
            bound = 1.0 / math.sqrt(in_features)
            w = r.uniform(-bound, bound, (out_features, in_features))
            bvec = r.uniform(-bound, bound, out_features)
        elif init == "xavier":
            bound = math.sqrt(6.0 / (in_features + out_features))
            w = r.uniform(-bound, bound, (out_features, in_features))
            bvec = np.zeros(out_features)
        else:
            raise ValueError(f"Linear init must be 'default' or 'xavier', got {init!r}")
        self.weight = Parameter(w.astype(np.float32))
        self.bias = Parameter(bvec.astype(np.float32)) if bias else None
        self._bias_shift: np.ndarray | None = None  # constant added in approximate mode (compiler bias correction)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        return y if self._bias_shift is None else y + self._bias_shift.astype(y.dtype)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        w = {"weight": self.weight}
        if self.bias is not None:
            w["bias"] = self.bias
        return b.add("linear", path, [x], weights=w)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution with ``weight (Co, Ci, kh, kw)``, He-normal init, zero bias."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        bias: bool = True,
        *,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        fan_in = in_channels * kh * kw
        w = _rng(rng).normal(0.0, math.sqrt(2.0 / fan_in), (out_channels, in_channels, kh, kw))
        self.weight = Parameter(w.astype(np.float32))
        self.bias = Parameter(np.zeros(out_channels, np.float32)) if bias else None
        self.stride, self.padding = stride, padding
        self._bias_shift: np.ndarray | None = None  # per-channel constant added in approximate mode

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return y if self._bias_shift is None else y + self._bias_shift.astype(y.dtype).reshape(1, -1, 1, 1)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        w = {"weight": self.weight}
        if self.bias is not None:
            w["bias"] = self.bias
        return b.add("conv2d", path, [x], params={"stride": self.stride, "padding": self.padding}, weights=w)

    def extra_repr(self) -> str:
        co, ci, kh, kw = self.weight.shape
        return f"{ci}, {co}, kernel=({kh}, {kw}), stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"


# ---------------------------------------------------------------------------------------------
# normalisation


class BatchNorm2d(Module):
    """Per-channel batch normalisation with running statistics (momentum 0.1, eps 1e-5)."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.weight = Parameter(np.ones(channels, np.float32))
        self.bias = Parameter(np.zeros(channels, np.float32))
        self.register_buffer("running_mean", np.zeros(channels, np.float32))
        self.register_buffer("running_var", np.ones(channels, np.float32))
        self.eps, self.momentum = eps, momentum

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm2d(
            x,
            self.weight,
            self.bias,
            self._buffers["running_mean"],
            self._buffers["running_var"],
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        w = {
            "weight": self.weight,
            "bias": self.bias,
            "running_mean": self._buffers["running_mean"],
            "running_var": self._buffers["running_var"],
        }
        return b.add("batchnorm2d", path, [x], params={"eps": self.eps}, weights=w)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(Module):
    """LayerNorm over the last axis; ``rsqrt`` goes through the approximation hook."""

    nl_roles = ("rsqrt",)

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = Parameter(np.ones(dim, np.float32))
        self.bias = Parameter(np.zeros(dim, np.float32))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps, nl=self._nl)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add(
            "layernorm", path, [x], params={"eps": self.eps}, weights={"weight": self.weight, "bias": self.bias}
        )

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


# ---------------------------------------------------------------------------------------------
# activations


class _Activation(Module):
    op = ""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        if self._nl is not None:
            return self._nl(self.op, x)
        return F.exact_nonlinearity(self.op, x)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add(self.op, path, [x])


class ReLU(_Activation):
    op = "relu"  # stays exact: no nl_roles


class GELU(_Activation):
    op = "gelu"
    nl_roles = ("gelu",)


class GELUTanh(_Activation):
    op = "gelu_tanh"
    nl_roles = ("gelu_tanh",)


class Tanh(_Activation):
    op = "tanh"
    nl_roles = ("tanh",)


class Sigmoid(_Activation):
    op = "sigmoid"
    nl_roles = ("sigmoid",)


class SiLU(_Activation):
    op = "silu"
    nl_roles = ("silu",)


_ACTIVATIONS = {"relu": ReLU, "gelu": GELU, "gelu_tanh": GELUTanh, "tanh": Tanh, "sigmoid": Sigmoid, "silu": SiLU}


def activation(name: str) -> Module:
    """An activation module by spec op name (relu, gelu, gelu_tanh, tanh, sigmoid, silu)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


# ---------------------------------------------------------------------------------------------
# pooling, reshaping, dropout


class MaxPool2d(Module):
    def __init__(self, kernel: int, stride: int | None = None, padding: int = 0) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, kernel if stride is None else stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel, self.stride, self.padding)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add(
            "maxpool2d", path, [x], params={"kernel": self.kernel, "stride": self.stride, "padding": self.padding}
        )


class AvgPool2d(MaxPool2d):
    """Average pooling (zero padding counts in the average)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add(
            "avgpool2d", path, [x], params={"kernel": self.kernel, "stride": self.stride, "padding": self.padding}
        )


class GlobalAvgPool(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.global_avg_pool(x)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add("global_avgpool", path, [x])


class Flatten(Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.flatten(x)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add("flatten", path, [x])


class Patchify(Module):
    """(N, C, H, W) -> (N, T, C*p*p) non-overlapping patches."""

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = int(patch)

    def forward(self, x: Tensor) -> Tensor:
        return F.patchify(x, self.patch)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add("patchify", path, [x], params={"patch": self.patch})


class MeanPool(Module):
    """Mean over tokens (N, T, D) -> (N, D), optionally over unmasked tokens only.

    With a mask, ``1 / token count`` is the ``reciprocal`` role (the compiler's masked mean pooling).
    """

    nl_roles = ("reciprocal",)

    def forward(self, x: Tensor, mask: np.ndarray | None = None) -> Tensor:
        return F.mean_pool(x, mask, nl=self._nl)

    def _emit(self, b: SpecBuilder, path: str, x: str, mask: str | None = None) -> str:
        return b.add("mean_pool", path, [x] if mask is None else [x, mask])


class L2Normalize(Module):
    """``x * rsqrt(sum(x^2) + eps^2)`` over the last axis (spec op ``l2_normalize``; role ``rsqrt``)."""

    nl_roles = ("rsqrt",)

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.l2_normalize(x, self.eps, nl=self._nl)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add("l2_normalize", path, [x], params={"eps": self.eps})


class Softmax(Module):
    """Softmax over the last axis; ``exp``/``reciprocal`` go through the approximation hook."""

    nl_roles = ("exp", "reciprocal")

    def forward(self, x: Tensor) -> Tensor:
        return F.softmax(x, axis=-1, nl=self._nl)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add("softmax", path, [x])


class Dropout(Module):
    """Inverted dropout in training mode; identity in eval mode and omitted from the spec."""

    def __init__(self, p: float = 0.1, *, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.rng, self.training)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return x

    def extra_repr(self) -> str:
        return f"p={self.p}"


# ---------------------------------------------------------------------------------------------
# embeddings


class Embedding(Module):
    """Token embedding as the spec's ``embedding`` op: word rows (+ position rows 0..T-1) (+ token-type rows).

    ``forward(ids, token_type_ids=None)`` with integer ``ids (N, T)``; with a token-type table and no
    token-type ids, type 0 is added (spec semantics).
    """

    def __init__(
        self,
        vocab: int,
        dim: int,
        max_positions: int | None = None,
        token_types: int | None = None,
        *,
        std: float = 0.02,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        r = _rng(rng)
        self.word = Parameter(r.normal(0.0, std, (vocab, dim)).astype(np.float32))
        self.position = (
            Parameter(r.normal(0.0, std, (max_positions, dim)).astype(np.float32)) if max_positions else None
        )
        self.token_type = Parameter(r.normal(0.0, std, (token_types, dim)).astype(np.float32)) if token_types else None

    def forward(self, ids: Any, token_type_ids: Any = None) -> Tensor:
        ids = np.asarray(ids)
        x = F.embedding(ids, self.word)
        if self.position is not None:
            if ids.ndim != 2:
                raise ValueError(f"Embedding with positions needs ids (N, T), got shape {ids.shape}")
            x = x + self.position[: ids.shape[1]]
        if self.token_type is not None:
            tt = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
            x = x + F.embedding(tt, self.token_type)
        return x

    def _emit(self, b: SpecBuilder, path: str, ids: str, token_type_ids: str | None = None) -> str:
        w = {"word": self.word}
        if self.position is not None:
            w["position"] = self.position
        if self.token_type is not None:
            w["token_type"] = self.token_type
        return b.add("embedding", path, [ids] if token_type_ids is None else [ids, token_type_ids], weights=w)


class PositionAdd(Module):
    """Learned absolute positions: ``x (N, T, D) + weight[:T]``."""

    def __init__(self, max_len: int, dim: int, *, std: float = 0.02, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.weight = Parameter(_rng(rng).normal(0.0, std, (max_len, dim)).astype(np.float32))

    def forward(self, x: Tensor) -> Tensor:
        return F.position_add(x, self.weight)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        return b.add("position_add", path, [x], weights={"weight": self.weight})


# ---------------------------------------------------------------------------------------------
# attention and blocks


class MultiHeadSelfAttention(Module):
    """Multi-head self-attention with separate q/k/v/o projections (spec op ``mhsa``).

    Parameters are named like the spec weights: ``q_weight (D, D)``, ``q_bias (D,)``, ... ``o_bias``.
    ``forward(x, mask=None)`` with ``mask (N, T)``: 1 = keep the key, 0 = padding.
    """

    nl_roles = ("exp", "reciprocal")

    def __init__(self, dim: int, heads: int, *, rng: np.random.Generator | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        r = _rng(rng)
        self.dim, self.heads = dim, heads
        bound = math.sqrt(6.0 / (2 * dim))  # xavier uniform
        for p in "qkvo":
            setattr(self, f"{p}_weight", Parameter(r.uniform(-bound, bound, (dim, dim)).astype(np.float32)))
            setattr(self, f"{p}_bias", Parameter(np.zeros(dim, np.float32)))

    def forward(self, x: Tensor, mask: np.ndarray | None = None) -> Tensor:
        P = self._parameters
        return F.multi_head_self_attention(
            x,
            P["q_weight"],
            P["q_bias"],
            P["k_weight"],
            P["k_bias"],
            P["v_weight"],
            P["v_bias"],
            P["o_weight"],
            P["o_bias"],
            self.heads,
            mask=mask,
            nl=self._nl,
        )

    def _emit(self, b: SpecBuilder, path: str, x: str, mask: str | None = None) -> str:
        return b.add(
            "mhsa",
            path,
            [x] if mask is None else [x, mask],
            params={"heads": self.heads},
            weights=dict(self._parameters),
        )

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}"


class MLP(Sequential):
    """fc1 -> activation -> dropout -> fc2 (children ``fc1``, ``act``, ``drop``, ``fc2``)."""

    def __init__(
        self, dim: int, hidden: int, act: str = "gelu", dropout: float = 0.0, *, rng: np.random.Generator | None = None
    ) -> None:
        r = _rng(rng)
        super().__init__(
            fc1=Linear(dim, hidden, init="xavier", rng=r),
            act=activation(act),
            drop=Dropout(dropout),
            fc2=Linear(hidden, dim, init="xavier", rng=r),
        )


class ResidualBlock(Module):
    """ResNet basic block: conv-bn-act-conv-bn (+ shortcut) -> add -> act.

    The shortcut is the identity, or a 1x1 conv + BN (``shortcut_conv``, ``shortcut_bn``) when the
    channel count or stride changes.  Spec names: ``<path>.conv1`` ... ``<path>.bn2``, ``<path>.add``,
    ``<path>.act2``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        act: str = "relu",
        *,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        r = _rng(rng)
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, rng=r)
        self.bn1 = BatchNorm2d(out_channels)
        self.act1 = activation(act)
        self.conv2 = Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, rng=r)
        self.bn2 = BatchNorm2d(out_channels)
        self.has_projection = stride != 1 or in_channels != out_channels
        if self.has_projection:
            self.shortcut_conv = Conv2d(in_channels, out_channels, 1, stride, 0, bias=False, rng=r)
            self.shortcut_bn = BatchNorm2d(out_channels)
        self.act2 = activation(act)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        s = self.shortcut_bn(self.shortcut_conv(x)) if self.has_projection else x
        return self.act2(y + s)

    def _emit(self, b: SpecBuilder, path: str, x: str) -> str:
        y = x
        for name in ("conv1", "bn1", "act1", "conv2", "bn2"):
            y = self._modules[name]._emit(b, _join(path, name), y)
        s = x
        if self.has_projection:
            s = self.shortcut_conv._emit(b, _join(path, "shortcut_conv"), x)
            s = self.shortcut_bn._emit(b, _join(path, "shortcut_bn"), s)
        a = b.add("add", _join(path, "add"), [y, s])
        return self.act2._emit(b, _join(path, "act2"), a)


class TransformerEncoderLayer(Module):
    """Transformer encoder layer (pre-LN by default).

    pre-LN:  ``x = x + drop(attn(ln1(x)))``;  ``x = x + drop(mlp(ln2(x)))``
    post-LN: ``x = ln1(x + drop(attn(x)))``;  ``x = ln2(x + drop(mlp(x)))``

    Spec names: ``<path>.ln1``, ``<path>.attn``, ``<path>.add1``, ``<path>.ln2``, ``<path>.mlp.fc1``,
    ``<path>.mlp.act``, ``<path>.mlp.fc2``, ``<path>.add2``.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_hidden: int,
        *,
        dropout: float = 0.0,
        act: str = "gelu",
        norm_first: bool = True,
        rng: np.random.Generator | None = None,
    ) -> None:
        super().__init__()
        r = _rng(rng)
        self.norm_first = norm_first
        self.ln1 = LayerNorm(dim)
        self.attn = MultiHeadSelfAttention(dim, heads, rng=r)
        self.drop1 = Dropout(dropout)
        self.ln2 = LayerNorm(dim)
        self.mlp = MLP(dim, mlp_hidden, act, dropout, rng=r)
        self.drop2 = Dropout(dropout)

    def forward(self, x: Tensor, mask: np.ndarray | None = None) -> Tensor:
        if self.norm_first:
            x = x + self.drop1(self.attn(self.ln1(x), mask))
            return x + self.drop2(self.mlp(self.ln2(x)))
        x = self.ln1(x + self.drop1(self.attn(x, mask)))
        return self.ln2(x + self.drop2(self.mlp(x)))

    def _emit(self, b: SpecBuilder, path: str, x: str, mask: str | None = None) -> str:
        p = lambda n: _join(path, n)  # noqa: E731
        if self.norm_first:
            h = self.ln1._emit(b, p("ln1"), x)
            h = self.attn._emit(b, p("attn"), h, mask)
            x = b.add("add", p("add1"), [x, h])
            h = self.ln2._emit(b, p("ln2"), x)
            h = self.mlp._emit(b, p("mlp"), h)
            return b.add("add", p("add2"), [x, h])
        h = self.attn._emit(b, p("attn"), x, mask)
        x = self.ln1._emit(b, p("ln1"), b.add("add", p("add1"), [x, h]))
        h = self.mlp._emit(b, p("mlp"), x)
        return self.ln2._emit(b, p("ln2"), b.add("add", p("add2"), [x, h]))
