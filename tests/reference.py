"""An independent float64 numpy forward of a ModelSpec, written from the layer definitions alone.

It shares no code with the compiler, the runtime or the trainer: it is the yardstick for all of them
(``test_compile``, ``test_train_spec``), and its scalar functions (:data:`ACT`, :func:`gelu_tanh`) are the
tests' one reference for those formulas.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from nmengine.spec import ModelSpec


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv2d(x, w, b, stride, padding):
    n, c, h, wd = x.shape
    co, ci, kh, kw = w.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = np.zeros((n, co, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            y[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    if b is not None:
        y += b[None, :, None, None]
    return y


def pool2d(x, kernel, stride, padding, kind):
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            win = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            y[:, :, i, j] = win.max(axis=(2, 3)) if kind == "max" else win.mean(axis=(2, 3))
    return y


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


#: ``sqrt(2 / pi)`` of the tanh form of GELU (Hendrycks & Gimpel, 2016).
GELU_TANH_K = math.sqrt(2.0 / math.pi)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(GELU_TANH_K * (x + 0.044715 * x**3)))


def softmax(x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def layernorm(x, g, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


ACT = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": gelu,
    "gelu_tanh": gelu_tanh,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
}


def forward(spec: ModelSpec, inputs: dict) -> dict:
    """Float64 outputs of ``spec`` on ``inputs`` (a dict name -> array)."""
    env = {
        k: (np.asarray(v, np.float64) if spec.inputs[k].dtype == "float32" else np.asarray(v))
        for k, v in inputs.items()
    }
    for L in spec.layers:
        W = {k: np.asarray(v, np.float64) for k, v in L.weights.items()}
        xs = [env[i] for i in L.inputs]
        x = xs[0]
        p = L.params
        if L.op == "linear":
            y = x @ W["weight"].T + (W["bias"] if "bias" in W else 0)
        elif L.op == "conv2d":
            y = conv2d(x, W["weight"], W.get("bias"), p.get("stride", 1), p.get("padding", 0))
        elif L.op == "batchnorm2d":
            s = W["weight"] / np.sqrt(W["running_var"] + p.get("eps", 1e-5))
            y = (x - W["running_mean"][None, :, None, None]) * s[None, :, None, None] + W["bias"][None, :, None, None]
        elif L.op in ACT:
            y = ACT[L.op](x)
        elif L.op in ("maxpool2d", "avgpool2d"):
            y = pool2d(x, p["kernel"], p.get("stride", p["kernel"]), p.get("padding", 0), L.op[:3])
        elif L.op == "global_avgpool":
            y = x.mean(axis=(2, 3))
        elif L.op == "flatten":
            y = x.reshape(x.shape[0], -1)
        elif L.op == "patchify":
            q = p["patch"]
            n, c, h, w = x.shape
            y = x.reshape(n, c, h // q, q, w // q, q).transpose(0, 2, 4, 1, 3, 5).reshape(n, -1, c * q * q)
        elif L.op == "add":
            y = x + xs[1]
        elif L.op == "position_add":
            y = x + W["weight"][: x.shape[1]]
        elif L.op == "layernorm":
            y = layernorm(x, W["weight"], W["bias"], p.get("eps", 1e-5))
        elif L.op == "embedding":
            y = W["word"][x]
            if "position" in W:
                y = y + W["position"][: x.shape[1]]
            if "token_type" in W:
                y = y + (W["token_type"][xs[1]] if len(xs) > 1 else W["token_type"][0])
        elif L.op == "mhsa":
            n, t, d = x.shape
            h = p["heads"]
            hd = d // h

            q, k, v = (
                (x @ W[f"{name}_weight"].T + W[f"{name}_bias"]).reshape(n, t, h, hd).transpose(0, 2, 1, 3)
                for name in ("q", "k", "v")
            )
            s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
            if len(xs) > 1:
                s = np.where(xs[1][:, None, None, :] > 0, s, -np.inf)
            a = softmax(s) @ v
            y = a.transpose(0, 2, 1, 3).reshape(n, t, d) @ W["o_weight"].T + W["o_bias"]
        elif L.op == "softmax":
            y = softmax(x)
        elif L.op == "mean_pool":
            if len(xs) > 1:
                m = np.asarray(xs[1], np.float64)[:, :, None]
                y = (x * m).sum(1) / m.sum(1)
            else:
                y = x.mean(1)
        elif L.op == "l2_normalize":
            y = x / np.sqrt((x * x).sum(-1, keepdims=True) + p.get("eps", 1e-12) ** 2)  # as spec.py defines it
        else:
            raise NotImplementedError(L.op)
        env[L.output] = y
    return {o: env[o] for o in spec.outputs}
