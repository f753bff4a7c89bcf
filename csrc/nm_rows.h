/* Shared internals of the row kernels (nm_scale.c, nm_rowmax.c, nm_softmax.c, nm_layernorm.c,
 * nm_move.c): the thread count for a row split, the GEMM's K block (the fused reductions reproduce
 * it), when to build derived PWL rows, and the lane-folded row max (nm_pairwise_max and the fused
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

/* ---- the row max ---------------------------------------------------------------------------- */

/* The row max x[0, n) (n >= 1) as NM_PMAX_LANES lanes of steps m + relu(v - m) (nmengine.movement
 * .pairwise_max): column j folds into lane j % 16 left to right (a lane starts at its first column),
 * then lane i absorbs lane i + h for h = 8, 4, 2, 1 (lanes a short row lacks are skipped).  Columns
 * at or below the running value add an exact zero, so trailing masked columns change nothing. */
#define NM_PMAX_LANES 16

NM_INLINE float pmax_step(float m, float v)
{
    float d = v - m;
    d = (0.0f > d) ? 0.0f : d; /* np.maximum(d, 0): NaN propagates */
    return m + d;
}

NM_INLINE float pmax_row(const float *restrict x, int64_t n)
{
    float m[NM_PMAX_LANES];
    int w = n < NM_PMAX_LANES ? (int)n : NM_PMAX_LANES;
    for (int j = 0; j < w; j++) m[j] = x[j];
    int64_t c = NM_PMAX_LANES;
    for (; c + NM_PMAX_LANES <= n; c += NM_PMAX_LANES)
        for (int j = 0; j < NM_PMAX_LANES; j++) m[j] = pmax_step(m[j], x[c + j]);
    for (int j = 0; j < n - c; j++) m[j] = pmax_step(m[j], x[c + j]);
    for (int h = NM_PMAX_LANES / 2; h >= 1; h /= 2) {
        if (w > h) {
            for (int j = 0; j < w - h; j++) m[j] = pmax_step(m[j], m[j + h]);
            w = h;
        }
    }
    return m[0];
}

#endif
