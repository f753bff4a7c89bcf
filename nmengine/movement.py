"""Data movement and the pairwise-max reduction, on numpy arrays (the runtime's generic path).

No arithmetic here but the matrixized max tree (``b + relu(a - b)`` steps, an exact PWL): im2col,
pooling windows, patches and token packing masks.  Output sizes follow :mod:`nmengine.shapes`.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .shapes import conv_out_hw
from .shapes import pair as _pair

__all__ = ["pairwise_max", "im2col", "pool_windows", "patchify", "mask_bool"]


# ---------------------------------------------------------------------------------------------
#: lanes of the matrixized row max (part of its definition: every kernel computes these 16 lanes)
PMAX_LANES = 16


def pairwise_max(x: np.ndarray, *, exact: bool) -> np.ndarray:
    """Max over the last axis (keepdims).

    Matrixized: every step is ``m + relu(v - m)`` (a GEMM-style add and the exact 2-segment ReLU).
    Column ``j`` folds into lane ``j % 16`` left to right (a lane starts at its first column), then
    the lanes fold halving, lane ``i`` absorbing lane ``i + h`` for h = 8, 4, 2, 1 (lanes that do not
    exist for rows shorter than 16 are skipped).  A column at or below the running value adds an exact
    zero, so masked (very negative) columns appended to a row leave its result bit-identical: a
    sentence's attention does not depend on how far its batch pads it.  NaN propagates.
    """
    if x.shape[-1] == 0:
        raise ValueError("pairwise_max over an empty axis")
    if exact:
        return np.max(x, axis=-1, keepdims=True).astype(np.float32, copy=False)
    x = np.asarray(x, dtype=np.float32)
    n = x.shape[-1]
    w = min(n, PMAX_LANES)
    m = x[..., :w].copy()
    for c in range(PMAX_LANES, n, PMAX_LANES):
        chunk = x[..., c : c + PMAX_LANES]
        k = chunk.shape[-1]
        d = chunk - m[..., :k]
        np.maximum(d, np.float32(0), out=d)  # relu: the exact 2-segment PWL
        m[..., :k] += d
    h = PMAX_LANES // 2
    while h >= 1:
        if w > h:
            k = w - h  # lanes i < k absorb lanes i + h
            d = m[..., h:w] - m[..., :k]
            np.maximum(d, np.float32(0), out=d)
            m[..., :k] += d
            w = h
        h //= 2
    return m[..., :1]


def mask_bool(mask: np.ndarray, like: tuple[int, ...] | None) -> np.ndarray:
    if mask.ndim != 2 or (like is not None and tuple(like[:2]) != mask.shape):
        raise ValueError(f"token mask of shape {mask.shape} does not fit values of shape {like}")
    return mask != 0


def im2col(x: np.ndarray, attrs: Mapping[str, Any], out: np.ndarray) -> np.ndarray:
    """NCHW -> [N, C*kh*kw, Ho*Wo], rows in (c, i, j) order to match a (Co, Ci, kh, kw) kernel.

    With ``layout="nhwc"`` (channels last): NHWC -> [N, Ho, Wo, kh*kw*C], one row per output pixel,
    columns in (i, j, c) order to match a kernel laid out as [kh, kw, Ci, Co]."""
    kh, kw = _pair(attrs["kernel"])
    sh, sw = _pair(attrs.get("stride", 1))
    ph, pw = _pair(attrs.get("padding", 0))
    if attrs.get("layout", "nchw") == "nhwc":
        n, h, w, c = x.shape
        ho, wo = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
        xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0))) if (ph or pw) else x
        o = out.reshape(n, ho, wo, kh, kw, c)
        for i in range(kh):
            for j in range(kw):
                o[:, :, :, i, j] = xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
        return out
    n, c, h, w = x.shape
    ho, wo = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    o = out.reshape(n, c, kh, kw, ho, wo)
    for i in range(kh):
        for j in range(kw):
            o[:, :, i, j] = xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
    return out


def pool_windows(x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    """NCHW -> [N, C, Ho, Wo, kh*kw] windows; padding is zeros (avg) or replicated edges (max).
    With ``layout="nhwc"``: NHWC -> [N, Ho, Wo, C, kh*kw]."""
    if attrs.get("layout", "nchw") == "nhwc":
        at = {k: v for k, v in attrs.items() if k != "layout"}
        win = pool_windows(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), at)
        return np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4))
    kh, kw = _pair(attrs["kernel"])
    sh, sw = _pair(attrs.get("stride", attrs["kernel"]))
    ph, pw = _pair(attrs.get("padding", 0))
    n, c, h, w = x.shape
    ho, wo = conv_out_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    if ph or pw:
        widths = ((0, 0), (0, 0), (ph, ph), (pw, pw))
        x = np.pad(x, widths, mode="edge") if attrs.get("pad", "zero") == "edge" else np.pad(x, widths)
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :ho, :wo]
    return np.ascontiguousarray(win).reshape(n, c, ho, wo, kh * kw)


def patchify(x: np.ndarray, p: int) -> np.ndarray:
    n, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"patchify: image {h}x{w} is not divisible by patch {p}")
    y = x.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
    return np.ascontiguousarray(y).reshape(n, (h // p) * (w // p), c * p * p)
