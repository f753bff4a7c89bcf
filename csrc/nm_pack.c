/* Operand packing (see nm_pack.h).  Portable C: the fixed-width inner loops are written with a
 * compile-time panel width so the compiler unrolls/vectorizes them (plain copies, no arithmetic,
 * so no floating-point semantics are involved). */
#include "nm_pack.h"

#include <string.h>

#if defined(__GNUC__)
#define NM_ALWAYS_INLINE static inline __attribute__((always_inline))
#else
#define NM_ALWAYS_INLINE static inline
#endif

/* One A micro-panel of W rows (rows >= m are zero). */
NM_ALWAYS_INLINE void pack_a_panel(int W, int m, int64_t kc, const float *a, ptrdiff_t rsa,
                                   ptrdiff_t csa, float *dst)
{
    if (m == W && csa == 1) {
        /* row-major A: read W contiguous rows, interleave */
        for (int i = 0; i < W; i++) {
            const float *src = a + i * rsa;
            for (int64_t p = 0; p < kc; p++) dst[p * W + i] = src[p];
        }
    } else if (m == W && rsa == 1) {
        /* column-major (transposed) A: every depth step is W contiguous floats */
        for (int64_t p = 0; p < kc; p++) {
            const float *src = a + p * csa;
            for (int i = 0; i < W; i++) dst[p * W + i] = src[i];
        }
    } else {
        for (int64_t p = 0; p < kc; p++) {
            int i = 0;
            for (; i < m; i++) dst[p * W + i] = a[i * rsa + p * csa];
            for (; i < W; i++) dst[p * W + i] = 0.0f;
        }
    }
}

/* One B micro-panel of W columns (columns >= n are zero). */
NM_ALWAYS_INLINE void pack_b_panel(int W, int n, int64_t kc, const float *b, ptrdiff_t rsb,
                                   ptrdiff_t csb, float *dst)
{
    if (n == W && csb == 1) {
        for (int64_t p = 0; p < kc; p++) {
            const float *src = b + p * rsb;
            for (int j = 0; j < W; j++) dst[p * W + j] = src[j];
        }
    } else if (n == W && rsb == 1) {
        for (int j = 0; j < W; j++) {
            const float *src = b + j * csb;
            for (int64_t p = 0; p < kc; p++) dst[p * W + j] = src[p];
        }
    } else {
        for (int64_t p = 0; p < kc; p++) {
            int j = 0;
            for (; j < n; j++) dst[p * W + j] = b[p * rsb + j * csb];
            for (; j < W; j++) dst[p * W + j] = 0.0f;
        }
    }
}

static void pack_a_generic(int W, int m, int64_t kc, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                           float *dst)
{
    for (int64_t p = 0; p < kc; p++) {
        int i = 0;
        for (; i < m; i++) dst[p * W + i] = a[i * rsa + p * csa];
        for (; i < W; i++) dst[p * W + i] = 0.0f;
    }
}

static void pack_b_generic(int W, int n, int64_t kc, const float *b, ptrdiff_t rsb, ptrdiff_t csb,
                           float *dst)
{
    for (int64_t p = 0; p < kc; p++) {
        int j = 0;
        for (; j < n; j++) dst[p * W + j] = b[p * rsb + j * csb];
        for (; j < W; j++) dst[p * W + j] = 0.0f;
    }
}

void nm_pack_a(int mr, int64_t mc, int64_t kc, const float *a, ptrdiff_t rsa, ptrdiff_t csa, float *dst)
{
    for (int64_t i0 = 0; i0 < mc; i0 += mr) {
        const int m = (int)(mc - i0 < mr ? mc - i0 : mr);
        const float *src = a + i0 * rsa;
        float *d = dst + i0 * kc;
        switch (mr) {
        case 14: pack_a_panel(14, m, kc, src, rsa, csa, d); break;
        case 6: pack_a_panel(6, m, kc, src, rsa, csa, d); break;
        case 4: pack_a_panel(4, m, kc, src, rsa, csa, d); break;
        default: pack_a_generic(mr, m, kc, src, rsa, csa, d); break;
        }
    }
}

void nm_pack_b(int nr, int64_t kc, int64_t nc, int64_t p0, int64_t p1,
               const float *b, ptrdiff_t rsb, ptrdiff_t csb, float *dst)
{
    for (int64_t r = p0; r < p1; r++) {
        const int64_t j0 = r * nr;
        const int n = (int)(nc - j0 < nr ? nc - j0 : nr);
        const float *src = b + j0 * csb;
        float *d = dst + j0 * kc;
        switch (nr) {
        case 32: pack_b_panel(32, n, kc, src, rsb, csb, d); break;
        case 16: pack_b_panel(16, n, kc, src, rsb, csb, d); break;
        case 8: pack_b_panel(8, n, kc, src, rsb, csb, d); break;
        default: pack_b_generic(nr, n, kc, src, rsb, csb, d); break;
        }
    }
}
