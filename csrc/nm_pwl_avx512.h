/* Vector (AVX-512) PWL lookup: 16 lanes of exactly the scalar nm_pwl_s() result.
 *
 * Tables of up to 64 segments whose register form is ok (nm_pwl_reg, nm_epilogue.h) are evaluated
 * from registers: the bin of the table's own 32-bin grid (max, min, one FMA, cvtt), the hint by one
 * vpermt2d over 32 entries, then the step comparisons and the slope/intercept selection by vpermt2ps
 * over 32 entries (two and a blend for 33..64 segments).  No gathers, no memory traffic beyond the
 * table constants.  The segment found is the one the breakpoints define (the same PWLTable finds),
 * and y = slope * clamp(x) + intercept is the same mul then add, so the bits are the same.
 * Other tables fall back to two 8-lane halves of the AVX2 code (derived rows or gathers).
 * x86-only, compiled through function target attributes.
 */
#ifndef NM_PWL_AVX512_H
#define NM_PWL_AVX512_H

#include <math.h>

#include "nm_pwl_avx2.h"

#if NM_X86
#include <immintrin.h>

typedef struct nm_pwl_z {
    const nm_pwl_reg *reg; /* register form, or NULL: use the ymm fallback */
    __m512 lo, hi, scale, nlos, xmin, xmax;
    int steps, wide, clamp_lo, clamp_hi;
    nm_pwl_v v; /* fallback state (only when reg == NULL) */
} nm_pwl_z;

NM_AVX512 NM_INLINE void nm_pwl_z_init(nm_pwl_z *z, const nm_pwl *p, const nm_pwl_reg *reg, const float *rows)
{
    z->reg = reg && reg->ok ? reg : NULL;
    z->xmin = _mm512_set1_ps(p->xmin);
    z->xmax = _mm512_set1_ps(p->xmax);
    z->clamp_lo = !(isinf(p->xmin) && p->xmin < 0); /* max(-inf, x) == x, NaN included */
    z->clamp_hi = !(isinf(p->xmax) && p->xmax > 0);
    if (z->reg) {
        z->lo = _mm512_set1_ps(reg->lo);
        z->hi = _mm512_set1_ps(reg->hi);
        z->scale = _mm512_set1_ps(reg->scale);
        z->nlos = _mm512_set1_ps(reg->nlos);
        z->steps = reg->steps;
        z->wide = reg->wide;
    } else {
        z->lo = z->hi = z->scale = z->nlos = _mm512_setzero_ps();
        z->steps = z->wide = 0;
        nm_pwl_v_init(&z->v, p, rows);
    }
}

/* tab[idx] for idx in [0, 32) or [0, 64) (wide) */
NM_AVX512 NM_INLINE __m512 nm_z_lut(const float *tab, __m512i idx, int wide)
{
    __m512 a = _mm512_permutex2var_ps(_mm512_load_ps(tab), idx, _mm512_load_ps(tab + 16));
    if (wide) {
        const __m512 b = _mm512_permutex2var_ps(_mm512_load_ps(tab + 32), idx, _mm512_load_ps(tab + 48));
        a = _mm512_mask_blend_ps(_mm512_test_epi32_mask(idx, _mm512_set1_epi32(32)), a, b);
    }
    return a;
}

NM_AVX512 NM_INLINE __m512 nm_pwl_z_eval(const nm_pwl_z *z, __m512 x)
{
    __m512 s, c;
    if (z->reg) {
        const nm_pwl_reg *r = z->reg;
        __m512 xk = _mm512_max_ps(x, z->lo); /* NaN -> lo */
        xk = _mm512_min_ps(xk, z->hi);
        const __m512i key = _mm512_cvttps_epi32(_mm512_fmadd_ps(xk, z->scale, z->nlos));
        __m512i seg = _mm512_permutex2var_epi32(_mm512_load_si512((const void *)r->hint), key,
                                                _mm512_load_si512((const void *)(r->hint + 16)));
        for (int i = 0; i < z->steps; i++) {
            const __m512 e = nm_z_lut(r->edges, seg, z->wide);
            const __mmask16 up = _mm512_cmp_ps_mask(x, e, _CMP_GE_OQ);
            seg = _mm512_mask_add_epi32(seg, up, seg, _mm512_set1_epi32(1));
        }
        s = nm_z_lut(r->slopes, seg, z->wide);
        c = nm_z_lut(r->icpt, seg, z->wide);
    } else {
        const __m256 lo8 = nm_pwl_v_eval(&z->v, _mm512_castps512_ps256(x));
        const __m256 hi8 = nm_pwl_v_eval(&z->v, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo8)),
                                                   _mm256_castps_pd(hi8), 1));
    }
    __m512 xc = x;
    if (z->clamp_lo) xc = _mm512_max_ps(z->xmin, xc); /* xmin > x ? xmin : x  (NaN propagates) */
    if (z->clamp_hi) xc = _mm512_min_ps(z->xmax, xc); /* xmax < xc ? xmax : xc */
    return _mm512_add_ps(_mm512_mul_ps(s, xc), c);
}

NM_AVX512 NM_INLINE __m512 nm_relu_z(__m512 x) { return _mm512_max_ps(_mm512_setzero_ps(), x); }

/* The AVX-512 kernel's nm_act_fn (nm_pwl_avx512.c): builds the register form itself when the
 * vector is long enough to pay for it. */
NM_AVX512 void nm_act_avx512(int act, const nm_pwl *pwl, const float *rows, const float *x, float *y,
                             int64_t n);

/* The same with a prepared register form (may be NULL or not ok). */
NM_AVX512 void nm_act_avx512_reg(int act, const nm_pwl *pwl, const nm_pwl_reg *reg, const float *rows,
                                 const float *x, float *y, int64_t n);

#endif /* NM_X86 */
#endif
