"""The core's sliding windows (csrc/nm_im2col.c: im2col and pooling windows) against a float64 numpy
reference written from the definition: out(img, ch, i, j, oy, ox) = x[img, ch, oy*sh + i - ph,
ox*sw + j - pw], 0 (or the nearest edge pixel) outside the image; for any thread count."""

from __future__ import annotations

import numpy as np
import pytest

from nmengine import _core as core
from nmengine import kernels

from .helpers import kernel_ok


def _reference(
    x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, edge: bool, layout: int
) -> np.ndarray:
    n, c, h, w = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    x64 = x.astype(np.float64)
    ref = np.zeros((n, c, kh, kw, ho, wo))
    for i in range(kh):
        for j in range(kw):
            for oy in range(ho):
                for ox in range(wo):
                    y, xx = oy * sh + i - ph, ox * sw + j - pw
                    if 0 <= y < h and 0 <= xx < w:
                        ref[:, :, i, j, oy, ox] = x64[:, :, y, xx]
                    elif edge:
                        ref[:, :, i, j, oy, ox] = x64[:, :, min(max(y, 0), h - 1), min(max(xx, 0), w - 1)]
    if layout == 0:
        return ref.reshape(n, c * kh * kw, ho * wo)
    return ref.transpose(0, 1, 4, 5, 2, 3).reshape(n, c, ho, wo, kh * kw)


CASES = [  # n, c, h, w, kh, kw, sh, sw, ph, pw
    (1, 1, 5, 5, 3, 3, 1, 1, 1, 1),
    (2, 3, 7, 9, 3, 3, 2, 2, 1, 1),
    (1, 4, 8, 6, 1, 1, 2, 2, 0, 0),
    (3, 2, 11, 10, 5, 3, 1, 3, 2, 1),
    (2, 5, 6, 6, 7, 7, 2, 2, 3, 3),  # kernel wider than the unpadded image
    (1, 3, 4, 13, 2, 4, 3, 1, 0, 3),
    (2, 16, 40, 40, 3, 3, 1, 1, 1, 1),  # big enough to run on several threads
    (1, 8, 56, 56, 3, 3, 2, 2, 1, 1),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout,edge", [(0, False), (1, False), (1, True)])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_windows_match_reference(case, layout, edge, nthreads):
    n, c, h, w, kh, kw, sh, sw, ph, pw = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    ref = _reference(x, kh, kw, sh, sw, ph, pw, edge, layout)
    out = np.full(ref.shape, np.nan, np.float32)  # every element must be written
    core.windows(x, out, kh, kw, sh, sw, ph, pw, edge, layout, nthreads)
    np.testing.assert_array_equal(out.astype(np.float64), ref)


def test_windows_random_shapes_thread_independent():
    rng = np.random.default_rng(7)
    for _ in range(25):
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 6))
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        if h + 2 * ph < kh or w + 2 * pw < kw:
            continue
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        ref = _reference(x, kh, kw, sh, sw, ph, pw, False, 0)
        for nt in (1, 2):
            out = np.full(ref.shape, np.nan, np.float32)
            core.windows(x, out, kh, kw, sh, sw, ph, pw, False, 0, nt)
            np.testing.assert_array_equal(out.astype(np.float64), ref)


def test_windows_rejects_bad_output_size():
    x = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="wrong size"):
        core.windows(x, np.zeros(7, np.float32), 3, 3, 1, 1, 1, 1, False, 0)


def _depthwise_reference(x, w, kh, kw, sh, sw, ph, pw, bias, relu):
    """float64 depthwise conv from the definition (per channel, zero padding) + per-channel bias (+ relu)."""
    n, c, h, wd = x.shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, c, ho, wo))
    for i in range(kh):
        for j in range(kw):
            y += (
                w[None, :, i * kw + j, None, None].astype(np.float64)
                * xp[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            )
    if bias is not None:
        y += bias.astype(np.float64)[None, :, None, None]
    return np.maximum(y, 0) if relu else y


def test_depthwise_matches_reference():
    """core.depthwise (direct depthwise conv with the GEMM epilogue) against float64, random shapes,
    strides, pads, bias and activation, on every kernel path the CPU has (the blocked AVX2 loops and
    the portable ones) with 1 and 2 threads: the same bits for all of them."""
    codes = [code for code, name in kernels.KERNEL_NAMES.items() if kernel_ok(name)]
    rng = np.random.default_rng(11)
    done = 0
    while done < 40:
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 9))
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 44))
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        ph, pw = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        if h + 2 * ph < kh or w + 2 * pw < kw:
            continue
        done += 1
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = rng.standard_normal((c, kh * kw)).astype(np.float32)
        bias = rng.standard_normal(c).astype(np.float32) if done % 2 else None
        relu = done % 3 == 0
        res = None if bias is None else np.broadcast_to(bias.reshape(1, c, 1, 1), (n, c, 1, ho * wo))
        ref = _depthwise_reference(x, wt, kh, kw, sh, sw, ph, pw, bias, relu)
        outs = []
        for nt, code in [(nt, code) for nt in (1, 2) for code in codes]:
            out = np.full((n, c, 1, ho * wo), np.nan, np.float32)
            core.depthwise(
                x,
                wt,
                out,
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                None,
                None,
                res,
                core.ACT_RELU if relu else core.ACT_NONE,
                None,
                nt,
                code,
            )
            outs.append(out)
            scale = np.abs(ref).max() + 1e-30
            assert np.abs(out.reshape(ref.shape) - ref).max() / scale <= 1e-5
        for other in outs[1:]:
            np.testing.assert_array_equal(outs[0], other)


def test_depthwise_rejects_bad_sizes():
    x = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="wrong size"):
        core.depthwise(
            x,
            np.zeros((2, 9), np.float32),
            np.zeros(7, np.float32),
            3,
            3,
            1,
            1,
            1,
            1,
            None,
            None,
            None,
            core.ACT_NONE,
            None,
            1,
            0,
        )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout,edge", [(2, False), (3, False), (3, True)])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_channels_last_windows_match_reference(case, layout, edge, nthreads):
    """Layouts 2/3 read NHWC x: im2col [N, Ho, Wo, (i, j, c)] and pool windows [N, Ho, Wo, C, kh*kw];
    the core and the numpy path (nmengine.movement, attrs layout="nhwc") against the same reference."""
    from nmengine import movement

    n, c, h, w, kh, kw, sh, sw, ph, pw = case
    rng = np.random.default_rng(sum(case) + layout)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    ref6 = _reference(x, kh, kw, sh, sw, ph, pw, edge, 0).reshape(n, c, kh, kw, *_hw(h, w, kh, kw, sh, sw, ph, pw))
    ho, wo = ref6.shape[-2:]
    if layout == 2:
        ref = ref6.transpose(0, 4, 5, 2, 3, 1).reshape(n, ho, wo, kh * kw * c)
    else:
        ref = ref6.transpose(0, 4, 5, 1, 2, 3).reshape(n, ho, wo, c, kh * kw)
    xl = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    out = np.full(ref.shape, np.nan, np.float32)
    core.windows(xl, out, kh, kw, sh, sw, ph, pw, edge, layout, nthreads)
    np.testing.assert_array_equal(out.astype(np.float64), ref)
    attrs = {"kernel": [kh, kw], "stride": [sh, sw], "padding": [ph, pw], "layout": "nhwc"}
    if layout == 2:
        got = movement.im2col(xl, attrs, np.full(ref.shape, np.nan, np.float32))
    else:
        got = movement.pool_windows(xl, {**attrs, "pad": "edge" if edge else "zero"})
    np.testing.assert_array_equal(got.astype(np.float64), ref)


def _hw(h, w, kh, kw, sh, sw, ph, pw):
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def test_channels_last_im2col_refuses_edge_padding():
    x = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError):
        core.windows(x, np.zeros((1, 4, 4, 18), np.float32), 3, 3, 1, 1, 1, 1, True, 2, 1)


CONV_CASES = [  # n, c, h, w, kh, kw, sh, sw, ph, pw, N
    (1, 3, 9, 9, 3, 3, 1, 1, 1, 1, 5),
    (2, 16, 40, 40, 3, 3, 1, 1, 1, 1, 24),  # a few pixel blocks: one per thread
    (4, 8, 64, 64, 3, 3, 1, 1, 1, 1, 16),  # many pixel blocks: shared out dynamically
    (3, 8, 30, 30, 1, 1, 2, 2, 0, 0, 33),
    (2, 3, 45, 45, 7, 7, 2, 2, 3, 3, 16),
    (1, 64, 7, 7, 3, 3, 1, 1, 1, 1, 40),  # few rows: the GEMM's own split
    (2, 32, 20, 20, 1, 1, 1, 1, 0, 0, 48),  # 1x1 stride 1: the image read in place
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("with_res,act", [(False, "none"), (True, "relu")])
def test_conv_nhwc_is_im2col_then_gemm(case, with_res, act):
    """nm_conv_nhwc (windows built block by block right before their GEMM) gives the bits of the NHWC
    im2col followed by one pre-packed GEMM with the same epilogue, for any thread count; and the
    convolution itself against a float64 reference from the definition."""
    from nmengine import kernels

    n, c, h, w, kh, kw, sh, sw, ph, pw, N = case
    rng = np.random.default_rng(sum(case))
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    ho, wo = _hw(h, w, kh, kw, sh, sw, ph, pw)
    R, K = n * ho * wo, kh * kw * c
    wt = rng.standard_normal((K, N)).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32)
    res = rng.standard_normal((R, N)).astype(np.float32) if with_res else None
    code = kernels.kernel_code()
    bp = kernels.pack_b(wt, kernels.KERNEL_NAMES[code]).data
    a = core.ACT_RELU if act == "relu" else core.ACT_NONE
    cols = np.empty((R, K), np.float32)
    core.windows(x, cols, kh, kw, sh, sw, ph, pw, False, 2, 1)
    want = np.empty((R, N), np.float32)
    core.sgemm_packed(cols, bp, N, want, bias, None, res, a, None, 1, code)
    for nt in (1, 2, 3):
        got = np.full((R, N), np.nan, np.float32)
        core.conv_nhwc(
            x, np.empty((R, K), np.float32), kh, kw, sh, sw, ph, pw, bp, N, got, bias, None, res, a, None, nt, code
        )
        np.testing.assert_array_equal(got, want)
    # the definition, in float64
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    w4 = wt.astype(np.float64).reshape(kh, kw, c, N)
    ref = np.zeros((n, ho, wo, N))
    for i in range(kh):
        for j in range(kw):
            ref += xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] @ w4[i, j]
    ref = ref.reshape(R, N) + bias + (0 if res is None else res)
    if act == "relu":
        ref = np.maximum(ref, 0)
    np.testing.assert_allclose(want, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("edge", [False, True])
@pytest.mark.parametrize("nthreads", [1, 2, 3])
def test_maxpool_nhwc_is_windows_then_pairwise_max(case, edge, nthreads):
    """nm_maxpool_nhwc gives the bits of the NHWC pool windows followed by the pairwise-max tree
    (numpy's matrixized tree in nmengine.movement), and the max itself within rounding."""
    from nmengine import movement

    n, c, h, w, kh, kw, sh, sw, ph, pw = case
    rng = np.random.default_rng(sum(case) + 11)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    attrs = {
        "kernel": [kh, kw],
        "stride": [sh, sw],
        "padding": [ph, pw],
        "layout": "nhwc",
        "pad": "edge" if edge else "zero",
    }
    win = movement.pool_windows(x, attrs)
    want = movement.pairwise_max(win, exact=False)[..., 0]
    got = np.full(want.shape, np.nan, np.float32)
    core.maxpool_nhwc(x, got, kh, kw, sh, sw, ph, pw, edge, nthreads)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, win.max(axis=-1), rtol=1e-6, atol=1e-6)
