/* Operand packing (see nm_pack.h).  Portable C: the fixed-width inner loops are written with a
 * compile-time panel width so the compiler unrolls/vectorizes them (plain copies, no arithmetic,
 * so no floating-point semantics are involved). */
#include "nm_pack.h"

#include <string.h>

#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define NM_PACK_SSE2 1
#else
#define NM_PACK_SSE2 0
#endif

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
#if NM_PACK_SSE2
        if (W == 6) {
            /* 4 depth steps at a time: 6 row loads, a 4 x 4 transpose of rows 0-3 plus the pairs of
             * rows 4-5, 8 stores of the 24 floats (the scalar loop's 24 strided stores were ~4% of a
             * 1024^3 product) */
            int64_t p = 0;
            for (; p + 4 <= kc; p += 4) {
                __m128 r0 = _mm_loadu_ps(a + p), r1 = _mm_loadu_ps(a + rsa + p);
                __m128 r2 = _mm_loadu_ps(a + 2 * rsa + p), r3 = _mm_loadu_ps(a + 3 * rsa + p);
                const __m128 r4 = _mm_loadu_ps(a + 4 * rsa + p), r5 = _mm_loadu_ps(a + 5 * rsa + p);
                _MM_TRANSPOSE4_PS(r0, r1, r2, r3); /* r_q = rows 0-3 at depth p + q */
                const __m128 u01 = _mm_unpacklo_ps(r4, r5), u23 = _mm_unpackhi_ps(r4, r5);
                float *d = dst + p * 6;
                _mm_storeu_ps(d, r0);
                _mm_storel_pi((__m64 *)(void *)(d + 4), u01);
                _mm_storeu_ps(d + 6, r1);
                _mm_storeh_pi((__m64 *)(void *)(d + 10), u01);
                _mm_storeu_ps(d + 12, r2);
                _mm_storel_pi((__m64 *)(void *)(d + 16), u23);
                _mm_storeu_ps(d + 18, r3);
                _mm_storeh_pi((__m64 *)(void *)(d + 22), u23);
            }
            for (; p < kc; p++)
                for (int i = 0; i < 6; i++) dst[p * 6 + i] = a[i * rsa + p];
            return;
        }
#endif
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

/* NM_PACK_B_GROUP full micro-panels of a row-major B at once: each depth row is read as one
 * contiguous run of G * W floats (a panel at a time read W floats from each of kc rows a row stride
 * apart, which the hardware prefetchers do not follow). */
#define NM_PACK_B_GROUP 4
NM_ALWAYS_INLINE void pack_b_rows_group(int W, int g, int64_t kc, const float *b, ptrdiff_t rsb, float *dst)
{
    for (int64_t p = 0; p < kc; p++) {
        const float *src = b + p * rsb;
        for (int q = 0; q < g; q++) memcpy(dst + q * W * kc + p * W, src + q * W, (size_t)W * sizeof(float));
    }
}

/* g (2..NM_PACK_B_GROUP) and W compile-time constants in each case */
NM_ALWAYS_INLINE void pack_b_group(int W, int g, int64_t kc, const float *b, ptrdiff_t rsb, float *dst)
{
    switch (g) {
    case 2: pack_b_rows_group(W, 2, kc, b, rsb, dst); break;
    case 3: pack_b_rows_group(W, 3, kc, b, rsb, dst); break;
    default: pack_b_rows_group(W, NM_PACK_B_GROUP, kc, b, rsb, dst); break;
    }
}

void nm_pack_b(int nr, int64_t kc, int64_t nc, int64_t p0, int64_t p1,
               const float *b, ptrdiff_t rsb, ptrdiff_t csb, float *dst)
{
    if (csb == 1 && (nr == 16 || nr == 32)) {
        const int64_t full = nc / nr < p1 ? nc / nr : p1; /* panels [p0, full) have nr real columns */
        while (full - p0 >= 2) {
            const int g = (int)(full - p0 < NM_PACK_B_GROUP ? full - p0 : NM_PACK_B_GROUP);
            if (nr == 16) pack_b_group(16, g, kc, b + p0 * 16, rsb, dst + p0 * 16 * kc);
            else pack_b_group(32, g, kc, b + p0 * 32, rsb, dst + p0 * 32 * kc);
            p0 += g;
        }
    }
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
