/* x86 int8 microkernels (compiled through target attributes, chosen at run time by cpuid):
 *   avx512vnni  6 x 32 tile: 12 zmm int32 accumulators, vpdpbusd (u8 x s8 -> s32, no saturation) on
 *               A bytes q + 128 broadcast per row, B panels loaded as 64-byte rows (16 columns x 4 k);
 *   avxvnni     3 x 16 tile, the same on ymm (VEX vpdpbusd);
 *   avx2        2 x 16 tile: both operands sign-extended to int16 and multiplied by vpmaddwd (pairs of
 *               int16 products summed into int32: |sum| <= 2 * 128 * 128, no saturation possible);
 *               each accumulator holds 4 columns x 2 half-sums, folded by vphaddd at the group end.
 * The float steps after each group are the scalar kernel's (mul, mul, add; -ffp-contract=off). */
#include "nm_qukernel.h"

#if NM_X86
#include <immintrin.h>
#include <string.h>

static inline int32_t nm_ld32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---- AVX512-VNNI ------------------------------------------------------------------------------ */
NM_QAVX512 void nm_qukr_avx512(const nm_qtile *t)
{
    enum { MR = NM_QAVX512_MR };
    __m512 f[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = _mm512_setzero_ps();
    const ptrdiff_t lda = t->lda;
    for (int g = 0; g < t->ng; g++) {
        const int64_t kb = (int64_t)g * t->g4;
        const int64_t ke = kb + t->g4 < t->k4 ? kb + t->g4 : t->k4;
        __m512i c[MR][2];
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm512_setzero_si512();
        const int8_t *b0 = t->b + kb * 64;
        const int8_t *b1 = b0 + t->pstride;
        const uint8_t *a = t->a + kb * 4;
        for (int64_t p = kb; p < ke; p++, b0 += 64, b1 += 64, a += 4) {
            const __m512i vb0 = _mm512_loadu_si512((const void *)b0);
            const __m512i vb1 = _mm512_loadu_si512((const void *)b1);
#pragma GCC unroll 8
            for (int i = 0; i < MR; i++) {
                const __m512i va = _mm512_set1_epi32(nm_ld32(a + i * lda));
                c[i][0] = _mm512_dpbusd_epi32(c[i][0], va, vb0);
                c[i][1] = _mm512_dpbusd_epi32(c[i][1], va, vb1);
            }
        }
        const int32_t *cs = t->colsum + (ptrdiff_t)g * t->ldg;
        const __m512i corr0 = _mm512_slli_epi32(_mm512_loadu_si512((const void *)cs), 7);
        const __m512i corr1 = _mm512_slli_epi32(_mm512_loadu_si512((const void *)(cs + 16)), 7);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            c[i][0] = _mm512_sub_epi32(c[i][0], corr0);
            c[i][1] = _mm512_sub_epi32(c[i][1], corr1);
        }
        if (t->ci) {
            for (int i = 0; i < MR; i++) {
                _mm512_storeu_si512((void *)(t->ci + i * 32), c[i][0]);
                _mm512_storeu_si512((void *)(t->ci + i * 32 + 16), c[i][1]);
            }
            continue;
        }
        const float *ws = t->ws + (ptrdiff_t)g * t->ldg;
        const __m512 w0 = _mm512_loadu_ps(ws), w1 = _mm512_loadu_ps(ws + 16);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            const __m512 sa = _mm512_set1_ps(t->sa[i * t->ng + g]);
            const __m512 s0 = _mm512_mul_ps(sa, w0), s1 = _mm512_mul_ps(sa, w1);
            f[i][0] = _mm512_add_ps(f[i][0], _mm512_mul_ps(_mm512_cvtepi32_ps(c[i][0]), s0));
            f[i][1] = _mm512_add_ps(f[i][1], _mm512_mul_ps(_mm512_cvtepi32_ps(c[i][1]), s1));
        }
    }
    if (!t->ci) {
        for (int i = 0; i < MR; i++) {
            _mm512_storeu_ps(t->f + i * 32, f[i][0]);
            _mm512_storeu_ps(t->f + i * 32 + 16, f[i][1]);
        }
    }
}

/* ---- AVX-VNNI (ymm) --------------------------------------------------------------------------- */
NM_QAVXVNNI void nm_qukr_avxvnni(const nm_qtile *t)
{
    enum { MR = NM_QAVXVNNI_MR };
    __m256 f[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    const ptrdiff_t lda = t->lda;
    for (int g = 0; g < t->ng; g++) {
        const int64_t kb = (int64_t)g * t->g4;
        const int64_t ke = kb + t->g4 < t->k4 ? kb + t->g4 : t->k4;
        __m256i c[MR][2];
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = _mm256_setzero_si256();
        const int8_t *b = t->b + kb * 64;
        const uint8_t *a = t->a + kb * 4;
        for (int64_t p = kb; p < ke; p++, b += 64, a += 4) {
            const __m256i vb0 = _mm256_loadu_si256((const __m256i *)b);
            const __m256i vb1 = _mm256_loadu_si256((const __m256i *)(b + 32));
#pragma GCC unroll 8
            for (int i = 0; i < MR; i++) {
                const __m256i va = _mm256_set1_epi32(nm_ld32(a + i * lda));
                c[i][0] = _mm256_dpbusd_avx_epi32(c[i][0], va, vb0);
                c[i][1] = _mm256_dpbusd_avx_epi32(c[i][1], va, vb1);
            }
        }
        const int32_t *cs = t->colsum + (ptrdiff_t)g * t->ldg;
        const __m256i corr0 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)cs), 7);
        const __m256i corr1 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(cs + 8)), 7);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            c[i][0] = _mm256_sub_epi32(c[i][0], corr0);
            c[i][1] = _mm256_sub_epi32(c[i][1], corr1);
        }
        if (t->ci) {
            for (int i = 0; i < MR; i++) {
                _mm256_storeu_si256((__m256i *)(t->ci + i * 16), c[i][0]);
                _mm256_storeu_si256((__m256i *)(t->ci + i * 16 + 8), c[i][1]);
            }
            continue;
        }
        const float *ws = t->ws + (ptrdiff_t)g * t->ldg;
        const __m256 w0 = _mm256_loadu_ps(ws), w1 = _mm256_loadu_ps(ws + 8);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            const __m256 sa = _mm256_set1_ps(t->sa[i * t->ng + g]);
            const __m256 s0 = _mm256_mul_ps(sa, w0), s1 = _mm256_mul_ps(sa, w1);
            f[i][0] = _mm256_add_ps(f[i][0], _mm256_mul_ps(_mm256_cvtepi32_ps(c[i][0]), s0));
            f[i][1] = _mm256_add_ps(f[i][1], _mm256_mul_ps(_mm256_cvtepi32_ps(c[i][1]), s1));
        }
    }
    if (!t->ci) {
        for (int i = 0; i < MR; i++) {
            _mm256_storeu_ps(t->f + i * 16, f[i][0]);
            _mm256_storeu_ps(t->f + i * 16 + 8, f[i][1]);
        }
    }
}

/* ---- AVX2 (vpmaddwd on widened operands) ------------------------------------------------------ */
NM_QAVX2 void nm_qukr_avx2(const nm_qtile *t)
{
    enum { MR = NM_QAVX2_MR };
    __m256 f[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) f[i][0] = f[i][1] = _mm256_setzero_ps();
    const ptrdiff_t lda = t->lda;
    for (int g = 0; g < t->ng; g++) {
        const int64_t kb = (int64_t)g * t->g4;
        const int64_t ke = kb + t->g4 < t->k4 ? kb + t->g4 : t->k4;
        /* c[i][q]: columns 4q..4q+3, lanes (col, k0+k1), (col, k2+k3) */
        __m256i c[MR][4];
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) c[i][0] = c[i][1] = c[i][2] = c[i][3] = _mm256_setzero_si256();
        const int8_t *b = t->b + kb * 64;
        const uint8_t *a = t->a + kb * 4;
        for (int64_t p = kb; p < ke; p++, b += 64, a += 4) {
            __m256i va[MR];
#pragma GCC unroll 8
            for (int i = 0; i < MR; i++)
                va[i] = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(nm_ld32(a + i * lda))));
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                const __m256i vb = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16 * q)));
#pragma GCC unroll 8
                for (int i = 0; i < MR; i++) c[i][q] = _mm256_add_epi32(c[i][q], _mm256_madd_epi16(vb, va[i]));
            }
        }
        __m256i s[MR][2];
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            s[i][0] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[i][0], c[i][1]), 0xD8);
            s[i][1] = _mm256_permute4x64_epi64(_mm256_hadd_epi32(c[i][2], c[i][3]), 0xD8);
        }
        if (t->ci) {
            for (int i = 0; i < MR; i++) {
                _mm256_storeu_si256((__m256i *)(t->ci + i * 16), s[i][0]);
                _mm256_storeu_si256((__m256i *)(t->ci + i * 16 + 8), s[i][1]);
            }
            continue;
        }
        const float *ws = t->ws + (ptrdiff_t)g * t->ldg;
        const __m256 w0 = _mm256_loadu_ps(ws), w1 = _mm256_loadu_ps(ws + 8);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            const __m256 sa = _mm256_set1_ps(t->sa[i * t->ng + g]);
            const __m256 s0 = _mm256_mul_ps(sa, w0), s1 = _mm256_mul_ps(sa, w1);
            f[i][0] = _mm256_add_ps(f[i][0], _mm256_mul_ps(_mm256_cvtepi32_ps(s[i][0]), s0));
            f[i][1] = _mm256_add_ps(f[i][1], _mm256_mul_ps(_mm256_cvtepi32_ps(s[i][1]), s1));
        }
    }
    if (!t->ci) {
        for (int i = 0; i < MR; i++) {
            _mm256_storeu_ps(t->f + i * 16, f[i][0]);
            _mm256_storeu_ps(t->f + i * 16 + 8, f[i][1]);
        }
    }
}

/* ---- AVX-512 tile finisher (32-column tiles, unit column strides) ----------------------------- */
NM_QAVX512 void nm_qfinish_avx512(const float *f, int m, int n, float *C, ptrdiff_t rsc, const float *bias_col,
                                  const float *bias_row, const float *res, ptrdiff_t res_rs)
{
    const __mmask16 m0 = (__mmask16)(n >= 16 ? 0xffffu : (1u << n) - 1u);
    const __mmask16 m1 = (__mmask16)(n >= 32 ? 0xffffu : n > 16 ? (1u << (n - 16)) - 1u : 0u);
    __m512 b0 = _mm512_setzero_ps(), b1 = b0;
    if (bias_col) b0 = _mm512_maskz_loadu_ps(m0, bias_col), b1 = _mm512_maskz_loadu_ps(m1, bias_col + 16);
    for (int i = 0; i < m; i++) {
        __m512 v0 = _mm512_loadu_ps(f + 32 * i), v1 = _mm512_loadu_ps(f + 32 * i + 16);
        if (bias_col) v0 = _mm512_add_ps(v0, b0), v1 = _mm512_add_ps(v1, b1);
        if (bias_row) {
            const __m512 br = _mm512_set1_ps(bias_row[i]);
            v0 = _mm512_add_ps(v0, br), v1 = _mm512_add_ps(v1, br);
        }
        if (res) {
            const float *r = res + i * res_rs;
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, r));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, r + 16));
        }
        _mm512_mask_storeu_ps(C + i * rsc, m0, v0);
        _mm512_mask_storeu_ps(C + i * rsc + 16, m1, v1);
    }
}

#else
typedef int nm_qukernel_x86_unused;
#endif
