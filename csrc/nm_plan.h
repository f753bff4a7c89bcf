/* A plan executor: runs a list of core calls (GEMM, scale, pairwise max, fused softmax / LayerNorm
 * rows, token row moves) in one C call, so a whole network runs without returning to the caller.
 *
 * Each step holds the exact arguments of one core function (nm_gemm.h, nm_scale.h, nm_rowmax.h,
 * nm_softmax.h, nm_layernorm.h, nm_move.h); running the list calls those functions in order with the
 * given thread count and kernel, so results are those of the individual calls, bit for bit.  The caller keeps every pointed-to buffer and table alive and
 * unchanged-in-layout while the list runs.  This layer knows nothing of Python.
 */
#ifndef NM_PLAN_H
#define NM_PLAN_H
#include <stddef.h>
#include <stdint.h>
#include "nm_attention.h"
#include "nm_gemm.h"
#include "nm_layernorm.h"
#include "nm_move.h"
#include "nm_qgemm.h"
#include "nm_rowmax.h"
#include "nm_scale.h"
#include "nm_softmax.h"

enum {
    NM_STEP_GEMM = 1,      /* nm_sgemm_batched (a plain GEMM is a 1 x 1 batch) */
    NM_STEP_GEMM_PACKED,   /* nm_sgemm_packed */
    NM_STEP_SCALE,         /* nm_scale */
    NM_STEP_PAIRWISE_MAX,  /* nm_pairwise_max */
    NM_STEP_SOFTMAX,       /* nm_softmax_rows */
    NM_STEP_LAYERNORM,     /* nm_layernorm_rows */
    NM_STEP_MOVE_ROWS,     /* nm_move_rows */
    NM_STEP_WINDOWS,       /* nm_windows */
    NM_STEP_TOKENS,        /* nm_tokens */
    NM_STEP_DEPTHWISE,     /* nm_depthwise */
    NM_STEP_CONV_NHWC,     /* nm_conv_nhwc */
    NM_STEP_MAXPOOL_NHWC,  /* nm_maxpool_nhwc */
    NM_STEP_ATTENTION      /* nm_attention_packed; then `skip` steps run only when it refuses the mask */
};

/* Token bookkeeping, pure copies:
 *   NM_TOKENS_MASK       dst[i] = (src_int64[i] != 0) for i < n  (uint8)
 *   NM_TOKENS_POSITIONS  dst_int64[k] = i % cols for the k-th nonzero src_uint8[i], i < n (row-major)
 *   NM_TOKENS_GATHER     row k of dst = row ids[k] of src (rows rows of rowbytes bytes), k < n;
 *                        NM_ERANGE (nothing defined past the first bad id) when an id is outside [0, rows) */
#define NM_TOKENS_MASK 0
#define NM_TOKENS_POSITIONS 1
#define NM_TOKENS_GATHER 2
#define NM_ERANGE (-3)
typedef struct nm_tokens_args {
    const void *src; const int64_t *ids; void *dst;
    int64_t n, rows, cols, rowbytes;
    int mode;
} nm_tokens_args;
int nm_tokens(const nm_tokens_args *a);

/* Sliding windows of an NCHW float32 image batch x[n, c, h, w] (C order), for convolution (im2col)
 * and pooling; a pure copy.  Output element (img, ch, i, j, oy, ox) reads x[img, ch, oy*sh + i - ph,
 * ox*sw + j - pw]; outside the image it is 0.0 (edge == 0) or the nearest edge pixel (edge == 1).
 *   layout 0 (im2col):       out[img, (ch*kh + i)*kw + j, oy*wo + ox]
 *   layout 1 (pool windows): out[img, ch, oy, ox, i*kw + j]
 * Channels-last: x is NHWC x[n, h, w, c] (the fields keep their meaning), output element
 * (img, ch, i, j, oy, ox) reads x[img, oy*sh + i - ph, ox*sw + j - pw, ch]:
 *   layout 2 (NHWC im2col, zero padding only): out[img, oy, ox, (i*kw + j)*c + ch]
 *   layout 3 (NHWC pool windows):              out[img, oy, ox, ch, i*kw + j]
 * ho = (h + 2ph - kh) / sh + 1, wo likewise (the caller checks ho, wo >= 1). */
typedef struct nm_windows_args {
    const float *x; float *out;
    int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo;
    int edge, layout;
} nm_windows_args;
int nm_windows(const nm_windows_args *a);
/* nm_windows on up to nthreads threads of the pool (a copy: the result does not depend on them). */
int nm_windows_mt(const nm_windows_args *a, int nthreads);

/* Depthwise convolution straight from the image: what im2col (layout 0, zero padding) followed by
 * nm_sgemm_batched with P1 = n, P2 = c, M = 1, K = kh*kw, N = ho*wo computes, without the copy:
 *   out[img, ch, p] = epilogue(sum_k w[ch*kk + k] * col[img, ch, k, p])   (p = oy*wo + ox)
 * each term one multiply and one add in ascending k (padding terms skipped: they add +0), then the
 * epilogue of nm_gemm.h with (i, j) = (0, p) and the residual's batch strides (res_ps1, res_ps2) per
 * (img, ch).  Planes (img, ch) are split over the pool's threads; the result does not depend on them,
 * nor on kernel, which picks the activation's vector code (the same bits on every path) and, on the
 * SIMD paths, loops compiled for AVX2 (the same operations in the same order). */
typedef struct nm_depthwise_args {
    nm_windows_args win;   /* x, out (= the GEMM's C, [n, c, ho*wo] contiguous), geometry; layout 0 */
    const float *w;        /* [c, kh*kw] contiguous */
    nm_epilogue ep;
} nm_depthwise_args;
int nm_depthwise(const nm_depthwise_args *a, int nthreads, int kernel);

/* Max pooling of NHWC x straight from the image: what nm_windows (layout 3) followed by
 * nm_pairwise_max over each window computes, without the windows: a->out is y[n, ho, wo, c] and
 * y[img, oy, ox, ch] = the lane-folded row max (nm_rowmax.h) of the window's kh*kw values in (i, j)
 * order, padding zeros or replicated edges (a->edge).  a->layout must be 3.  Pixels are split over
 * the pool's threads; the result does not depend on them. */
int nm_maxpool_nhwc(const nm_windows_args *a, int nthreads);

/* A channels-last convolution: nm_windows layout 2 (NHWC im2col, K = kh*kw*c) followed by
 *   C[R, N] = epilogue(cols[R, K] @ B[K, N])     (R = n*ho*wo, B packed by nm_pack_b_full, C row-major)
 * computed by blocks of output pixels, each a single-threaded GEMM on its rows: the block's windows
 * are built in win.out (the full [R, K] im2col buffer, used as scratch: a per-thread part when blocks
 * are handed out dynamically, else the block's own rows) right before the GEMM reads them; with
 * fewer than 4 blocks per thread each thread takes one block of whole MR-row panels (no barriers),
 * and up to 128 rows the whole im2col is built and one nm_sgemm_packed call splits the work.
 * A 1x1 stride-1 unpadded conv reads x in place as the im2col (win.out is not touched).  The
 * epilogue's res (element (r, j) at res[r * res_rs + j * res_cs]) and bias_row follow the block's
 * rows.  Every element is the same GEMM arithmetic whichever block it falls in, so the result does
 * not depend on the thread count. */
typedef struct nm_conv_args {
    nm_windows_args win;   /* x NHWC, geometry, layout 2, edge 0; out = the [R, K] im2col buffer */
    const float *Bp;       /* B[K, N] packed for the kernel */
    int64_t N;
    float *C;              /* [R, N] contiguous */
    nm_epilogue ep;
} nm_conv_args;
int nm_conv_nhwc(const nm_conv_args *a, int nthreads, int kernel);

/* The same channels-last convolution with the int8 GEMM (nm_qgemm.h): q describes the whole product
 * C[R, N] = epilogue(dequant(quant(cols[R, K]) @ Bq)) (q.M = R, q.K = kh*kw*c; q.A, q.Aq, q.rsa, q.csa
 * are ignored: the windows are the activations; q.C row-major with q.rsc, q.csc = 1; q.ep's res and
 * bias_row follow the rows).  Blocks of output pixels as in nm_conv_nhwc, each block's windows built
 * right before a single-threaded nm_qgemm quantizes and multiplies them; every row's quantization
 * (per row and K group) and products are those of one nm_qgemm over the whole im2col, so the result
 * does not depend on the blocks or the thread count. */
typedef struct nm_qconv_args {
    nm_windows_args win;   /* as nm_conv_args.win */
    nm_qgemm_args q;
} nm_qconv_args;
int nm_qconv_nhwc(const nm_qconv_args *a, int nthreads, int qkernel);

typedef struct nm_step_gemm {
    int64_t P1, P2, M, N, K;
    const float *A; ptrdiff_t ps1a, ps2a, rsa, csa;
    const float *B; ptrdiff_t ps1b, ps2b, rsb, csb;
    float *C; ptrdiff_t ps1c, ps2c, rsc, csc;
    nm_epilogue ep;
} nm_step_gemm;

typedef struct nm_step_packed {
    int64_t M, N, K;
    const float *A; ptrdiff_t rsa, csa;
    const float *Bp;
    float *C; ptrdiff_t rsc, csc;
    nm_epilogue ep;
} nm_step_packed;

typedef struct nm_step_pmax { const float *x; int64_t rows, n; float *y; } nm_step_pmax;

typedef struct nm_step_softmax {
    const float *s; int64_t rows, n;
    const nm_pwl *exp_pwl, *recip_pwl;
    float *m, *e, *r, *p;
} nm_step_softmax;

typedef struct nm_step_move {
    const void *src; void *dst; const unsigned char *mask, *zero;
    int64_t rows, rowbytes; int unpack;
} nm_step_move;

typedef struct nm_step_scale { nm_scale_args a; float *y; } nm_step_scale;

/* nm_attention_packed's arguments.  The `skip` steps recorded right after it compute the same
 * result on the padded grid: nm_plan_run skips them when the attention step succeeds and runs them
 * when it answers NM_ENOTPREFIX (a mask that is not right-padded). */
typedef struct nm_step_attention {
    const float *qkv; int64_t ntok, ld_qkv, q_off, k_off, v_off, heads, d;
    const unsigned char *mask; int64_t nseq, cols;
    const float *bias; int64_t ld_bias;
    const nm_pwl *exp_pwl, *recip_pwl;
    float *out; int64_t ld_out;
    int64_t skip;
} nm_step_attention;

typedef union nm_step_u {
    nm_step_gemm gemm;
    nm_step_packed packed;
    nm_step_scale scale;
    nm_step_pmax pmax;
    nm_step_softmax softmax;
    nm_ln_args ln;
    nm_step_move move;
    nm_windows_args win;
    nm_tokens_args tok;
    nm_depthwise_args dw;
    nm_conv_args conv;
    nm_step_attention attn;
} nm_step_u;

typedef struct nm_step {
    int kind; /* NM_STEP_* */
    nm_step_u u;
} nm_step;

/* Run steps[lo..hi) in order.  Returns NM_OK, or the first failing step's code; *failed (may be NULL)
 * receives that step's index (hi when all succeed).  An unknown kind is NM_EINVAL. */
int nm_plan_run(const nm_step *steps, int64_t lo, int64_t hi, int nthreads, int kernel, int64_t *failed);
#endif
