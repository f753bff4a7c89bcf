/* Shared internals of the row kernels (nm_scale.c, nm_rowmax.c, nm_softmax.c, nm_layernorm.c,
 * nm_move.c): the thread count for a row split, the GEMM's K block (the fused reductions reproduce
 * it), when to build derived PWL rows, and the pairwise-max tree (nm_pairwise_max and the fused
 * softmax both run it).  Not part of the core's interface.
 *
 * One row at a time: the row (<= a few KiB) stays in L1 while each factor/term is applied in its
 * own short loop, so the data is read once and written once whatever the number of terms.  The
 * element loops are plain C compiled twice, for the portable path and with the avx2 target
 * attribute (the compiler vectorizes both; -ffp-contract=off keeps every multiply and add a
 * separate IEEE operation, so both give the same bits as numpy).  Rows are split among the pool's
 * threads (nm_threads.h) statically; every element's operations are independent of the split.
 */
#ifndef NM_ROWS_H
#define NM_ROWS_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nm_gemm.h"
#include "nm_gemm_ctx.h"
#include "nm_pwl_avx2.h"
#include "nm_threads.h"

#define NM_ROWS_PAR_MIN 32768 /* elements below which one thread does everything */

/* Threads for `rows` rows holding `work` units: one below `min_work`, at most one per row. */
static inline int nm_rows_threads(int nthreads, int64_t work, int64_t min_work, int64_t rows)
{
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    if (work < min_work) nt = 1;
    if (nt > rows) nt = (int)(rows < 1 ? 1 : rows);
    return nt;
}

/* The GEMM's K block for this kernel and K = n (nm_gemm.c: ceil(K / kc) equal blocks). */
static inline int64_t nm_gemm_kcb(int kernel, int64_t n)
{
    const int64_t kc = nm_kctx_get(kernel)->bk.kc;
    const int64_t nkb = (n + kc - 1) / kc;
    return (n + nkb - 1) / nkb;
}

/* Floats of the derived PWL rows worth building for `elems` outputs (several outputs per bin), else 0. */
static inline int64_t nm_pwl_rows_wanted(const nm_pwl *pwl, int64_t elems)
{
    const int64_t f = nm_pwl_rows_floats(pwl);
    return f > 0 && elems >= 4 * (int64_t)pwl->nhint ? f : 0;
}

/* raw rounded up to a 64-byte boundary (raw allocated with 64 bytes to spare) */
static inline float *nm_align64(void *raw)
{
    return (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
}

/* ---- the pairwise-max tree ------------------------------------------------------------------ */

/* One tree level: lo[i] = relu(lo[i] - hi[i]) + hi[i] for i < h (numpy: d = a - b; max(d, 0); d += b) */
NM_INLINE void pmax_level(float *restrict dst, const float *restrict a, const float *restrict b, int64_t h)
{
    for (int64_t i = 0; i < h; i++) {
        float d = a[i] - b[i];
        d = (0.0f > d) ? 0.0f : d; /* np.maximum(d, 0): NaN propagates */
        dst[i] = d + b[i];
    }
}

/* The max of the row x[0, n) (n >= 1) by the halving tree: pairs (i, i + h), h = m / 2 of the m
 * values left, an odd last value carried; t is scratch of (n + 1) / 2 floats. */
NM_INLINE float pmax_tree(const float *x, int64_t n, float *t)
{
    if (n == 1) return x[0];
    /* first level straight from x into the scratch row */
    int64_t h = n / 2, m;
    pmax_level(t, x, x + h, h);
    if (n & 1) t[h] = x[2 * h];
    m = h + (n & 1);
    while (m > 1) {
        h = m / 2;
        /* in place: writes [0, h) read [0, h) and [h, 2h) */
        for (int64_t i = 0; i < h; i++) {
            float d = t[i] - t[i + h];
            d = (0.0f > d) ? 0.0f : d;
            t[i] = d + t[i + h];
        }
        if (m & 1) t[h] = t[2 * h];
        m = h + (m & 1);
    }
    return t[0];
}

#endif
