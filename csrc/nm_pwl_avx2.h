/* Vector (AVX2) PWL lookup and activation: 8 lanes of exactly the scalar nm_pwl_s() arithmetic.
 *
 *   key  linear: v = (x - origin) * scale; v = max(v, 0) [NaN -> 0]; v = min(v, nhint-1); cvtt
 *        log2:   k = (bits(x) >>a shift) - base, clamped to [0, nhint-1] with integer min/max
 *   seg  = gather(hint, key); steps x { seg += (x >= gather(edges, seg)) }
 *   y    = gather(slopes, seg) * clamp(x) + gather(intercepts, seg)     (mul, then add: no FMA)
 *
 * Faster equivalents that read the same table entries (so give the same bits):
 *  - rows (nm_pwl_rows_build, steps <= 1): one 32-byte row load per lane + an 8x8 transpose
 *    replaces the four gathers (gathers cost ~10 cycles per 8 lanes each on Zen 4);
 *  - small tables (n <= 8 segments, nhint <= 8 bins): in-register permutes (vpermps).
 * Everything here is x86-only and compiled for avx2+fma through function attributes.
 */
#ifndef NM_PWL_AVX2_H
#define NM_PWL_AVX2_H

#include "nm_epilogue.h"

#if NM_X86
#include <immintrin.h>
#include <math.h>

typedef struct nm_pwl_v {
    __m256 origin, scale, nh1f, xmin, xmax;
    __m256 edges8, slopes8, icpt8; /* small tables: entries 0..7 (padded) */
    __m256i nh1i, base, hint8;
    __m128i shift;
    int mode, steps, small_tab, small_hint;
    const int32_t *hint;
    const float *edges, *slopes, *icpt;
    const float *rows; /* nm_pwl_rows_build() rows, or NULL */
} nm_pwl_v;

NM_AVX2 NM_INLINE void nm_pwl_v_init(nm_pwl_v *v, const nm_pwl *p, const float *rows)
{
    v->origin = _mm256_set1_ps(p->origin);
    v->scale = _mm256_set1_ps(p->scale);
    v->nh1f = _mm256_set1_ps((float)(p->nhint - 1));
    v->xmin = _mm256_set1_ps(p->xmin);
    v->xmax = _mm256_set1_ps(p->xmax);
    v->nh1i = _mm256_set1_epi32(p->nhint - 1);
    v->base = _mm256_set1_epi32(p->base);
    v->shift = _mm_cvtsi32_si128(p->shift);
    v->mode = p->key_mode;
    v->steps = p->steps;
    v->hint = p->hint;
    v->edges = p->edges;
    v->slopes = p->slopes;
    v->icpt = p->intercepts;
    v->small_tab = p->n <= 8;
    v->small_hint = p->nhint <= 8;
    /* small tables (permutes + at most a hint gather) beat the rows; rows beat gathers */
    v->rows = v->small_tab ? NULL : rows;
    v->edges8 = v->slopes8 = v->icpt8 = _mm256_setzero_ps();
    v->hint8 = _mm256_setzero_si256();
    if (v->small_tab) {
        float e[8] = {0}, s[8] = {0}, c[8] = {0};
        for (int i = 0; i < p->n; i++) {
            e[i] = p->edges[i];
            s[i] = p->slopes[i];
            c[i] = p->intercepts[i];
        }
        v->edges8 = _mm256_loadu_ps(e);
        v->slopes8 = _mm256_loadu_ps(s);
        v->icpt8 = _mm256_loadu_ps(c);
    }
    if (v->small_hint) {
        int32_t h[8] = {0};
        for (int i = 0; i < p->nhint; i++) h[i] = p->hint[i];
        v->hint8 = _mm256_loadu_si256((const __m256i *)h);
    }
}

/* The hint-grid bin of every lane (the key). */
NM_AVX2 NM_INLINE __m256i nm_pwl_v_key(const nm_pwl_v *v, __m256 x)
{
    if (v->mode == NM_PWL_KEY_LINEAR) {
        __m256 t = _mm256_mul_ps(_mm256_sub_ps(x, v->origin), v->scale);
        t = _mm256_max_ps(t, _mm256_setzero_ps()); /* t > 0 ? t : 0  (NaN -> 0) */
        t = _mm256_min_ps(t, v->nh1f);             /* t < nh1 ? t : nh1 */
        return _mm256_cvttps_epi32(t);
    } else {
        __m256i k = _mm256_sub_epi32(_mm256_sra_epi32(_mm256_castps_si256(x), v->shift), v->base);
        k = _mm256_max_epi32(k, _mm256_setzero_si256());
        return _mm256_min_epi32(k, v->nh1i);
    }
}

NM_AVX2 NM_INLINE __m256 nm_pwl_v_eval(const nm_pwl_v *v, __m256 x)
{
    const __m256i key = nm_pwl_v_key(v, x);
    __m256 s, c;
    if (v->rows) {
        /* one 32-byte row per lane, transposed into columns e0, s0, c0, s1, c1 */
        const float *R = v->rows;
        /* row offsets in floats (key * 8), two lanes per 64-bit extract */
        const __m256i off = _mm256_slli_epi32(key, 3);
        const __m128i lo = _mm256_castsi256_si128(off), hi = _mm256_extracti128_si256(off, 1);
        const uint64_t q0 = (uint64_t)_mm_cvtsi128_si64(lo), q1 = (uint64_t)_mm_extract_epi64(lo, 1);
        const uint64_t q2 = (uint64_t)_mm_cvtsi128_si64(hi), q3 = (uint64_t)_mm_extract_epi64(hi, 1);
        const __m256 r0 = _mm256_load_ps(R + (uint32_t)q0);
        const __m256 r1 = _mm256_load_ps(R + (q0 >> 32));
        const __m256 r2 = _mm256_load_ps(R + (uint32_t)q1);
        const __m256 r3 = _mm256_load_ps(R + (q1 >> 32));
        const __m256 r4 = _mm256_load_ps(R + (uint32_t)q2);
        const __m256 r5 = _mm256_load_ps(R + (q2 >> 32));
        const __m256 r6 = _mm256_load_ps(R + (uint32_t)q3);
        const __m256 r7 = _mm256_load_ps(R + (q3 >> 32));
        /* per 128-bit lane: t0 = (r0[0] r1[0] r0[1] r1[1] | r0[4] r1[4] r0[5] r1[5]) ... */
        const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
        const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
        /* u0 = column 0 of rows 0-3 (low lane) and column 4 (high lane), ... */
        const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44);
        const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44);
        const __m256 e0 = _mm256_permute2f128_ps(u0, u4, 0x20);
        const __m256 s0 = _mm256_permute2f128_ps(u1, u5, 0x20);
        const __m256 c0 = _mm256_permute2f128_ps(u2, u6, 0x20);
        const __m256 u3 = _mm256_shuffle_ps(t1, t3, 0xEE), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        const __m256 s1 = _mm256_permute2f128_ps(u3, u7, 0x20);
        const __m256 c1 = _mm256_permute2f128_ps(u0, u4, 0x31);
        const __m256 up = _mm256_cmp_ps(x, e0, _CMP_GE_OQ); /* seg = seg0 + 1 */
        s = _mm256_blendv_ps(s0, s1, up);
        c = _mm256_blendv_ps(c0, c1, up);
    } else {
        __m256i seg;
        if (v->small_hint) seg = _mm256_permutevar8x32_epi32(v->hint8, key);
        else seg = _mm256_i32gather_epi32((const int *)v->hint, key, 4);
        if (v->small_tab) {
            for (int i = 0; i < v->steps; i++) {
                __m256 e = _mm256_permutevar8x32_ps(v->edges8, seg);
                seg = _mm256_sub_epi32(seg, _mm256_castps_si256(_mm256_cmp_ps(x, e, _CMP_GE_OQ)));
            }
            s = _mm256_permutevar8x32_ps(v->slopes8, seg);
            c = _mm256_permutevar8x32_ps(v->icpt8, seg);
        } else {
            for (int i = 0; i < v->steps; i++) {
                __m256 e = _mm256_i32gather_ps(v->edges, seg, 4);
                seg = _mm256_sub_epi32(seg, _mm256_castps_si256(_mm256_cmp_ps(x, e, _CMP_GE_OQ)));
            }
            s = _mm256_i32gather_ps(v->slopes, seg, 4);
            c = _mm256_i32gather_ps(v->icpt, seg, 4);
        }
    }
    __m256 xc = _mm256_max_ps(v->xmin, x); /* xmin > x ? xmin : x  (NaN propagates) */
    xc = _mm256_min_ps(v->xmax, xc);       /* xmax < xc ? xmax : xc */
    return _mm256_add_ps(_mm256_mul_ps(s, xc), c);
}

/* The register form (nm_pwl_reg's 8-bin AVX2 tables, ok8): key = cvtt(fma(clamp(x, lo8, hi8),
 * scale8, nlos8)) in [0, 8) (or, floor8, cvtt(floor(..)) mod 8), then one vpermps per table and step
 * and a bit select (see nm_epilogue.h).  About 10 + 8 * steps8 vector instructions per 8 lanes (+1
 * rounding for floor8), no loads but the table operands.  The cost of the epilogue on a GEMM that
 * keeps both FMA ports busy is close to its instruction count (measured: ~0.5 cycle per instruction,
 * whether right after the tile or interleaved with the next tile's K loop), so steps are what the
 * grid search (nm_pwl_r8_build) minimises. */
typedef struct nm_pwl_v8 {
    __m256 lo, hi, scale, nlos, xmin, xmax;
    const nm_pwl_reg *r;
    int steps, floor8, clamp;
} nm_pwl_v8;

NM_AVX2 NM_INLINE void nm_pwl_v8_init(nm_pwl_v8 *v, const nm_pwl *p, const nm_pwl_reg *r)
{
    v->r = r;
    v->lo = _mm256_set1_ps(r->lo8);
    v->hi = _mm256_set1_ps(r->hi8);
    v->scale = _mm256_set1_ps(r->scale8);
    v->nlos = _mm256_set1_ps(r->nlos8);
    v->xmin = _mm256_set1_ps(p->xmin);
    v->xmax = _mm256_set1_ps(p->xmax);
    v->steps = r->steps8;
    v->floor8 = r->floor8;
    /* max(-inf, x) == x and min(inf, x) == x, NaN included: one flag for both clamps */
    v->clamp = !(p->xmin == -INFINITY) || !(p->xmax == INFINITY);
}

/* nm_pwl_v8 on x with `steps`, `fl` (v->floor8) and `cl` (v->clamp) compile-time constants after
 * inlining (the loop unrolls, and no per-vector test of the clamp flag is left in the loop: gcc
 * re-evaluated a run-time flag there with a vmovd + vucomiss + branch per clamp and vector, two of
 * them on the shuffle port the lookups need).  With fl the key is floor(v) mod 8 (vpermps reads the
 * index's low 3 bits). */
NM_AVX2 NM_INLINE __m256 nm_pwl_v8_eval_st(const nm_pwl_v8 *v, __m256 x, int steps, int fl, int cl)
{
    const nm_pwl_reg *r = v->r;
    __m256 xk = _mm256_max_ps(x, v->lo); /* NaN -> lo */
    xk = _mm256_min_ps(xk, v->hi);
    __m256 kv = _mm256_fmadd_ps(xk, v->scale, v->nlos);
    if (fl) kv = _mm256_round_ps(kv, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m256i key = _mm256_cvttps_epi32(kv);
    __m256 s = _mm256_permutevar8x32_ps(_mm256_load_ps(r->s0), key);
    __m256 c = _mm256_permutevar8x32_ps(_mm256_load_ps(r->c0), key);
    for (int j = 0; j < steps; j++) {
        const __m256 e = _mm256_permutevar8x32_ps(_mm256_load_ps(r->e8[j]), key);
        const __m256 m = _mm256_cmp_ps(x, e, _CMP_GE_OQ);
        const __m256 ds = _mm256_permutevar8x32_ps(_mm256_load_ps((const float *)r->ds[j]), key);
        const __m256 dc = _mm256_permutevar8x32_ps(_mm256_load_ps((const float *)r->dc[j]), key);
        s = _mm256_xor_ps(s, _mm256_and_ps(m, ds)); /* bit select: slopes[seg0 + j + 1] when m */
        c = _mm256_xor_ps(c, _mm256_and_ps(m, dc));
    }
    __m256 xc = x;
    if (cl) {
        xc = _mm256_max_ps(v->xmin, xc); /* xmin > x ? xmin : x  (NaN propagates) */
        xc = _mm256_min_ps(v->xmax, xc);
    }
    return _mm256_add_ps(_mm256_mul_ps(s, xc), c);
}

/* y[i * ldy + j] = pwl(x[i * 16 + j]) for a rows x 16 block (x aligned), steps, key form and
 * clamp unrolled per case. */
#define NM_V8_BLOCK(ST, FL, CL)                                                           \
    for (int i = 0; i < rows; i++) {                                                     \
        const __m256 a0 = nm_pwl_v8_eval_st(v, _mm256_load_ps(x + 16 * i), ST, FL, CL);   \
        const __m256 a1 = nm_pwl_v8_eval_st(v, _mm256_load_ps(x + 16 * i + 8), ST, FL, CL); \
        _mm256_storeu_ps(y + i * ldy, a0);                                                \
        _mm256_storeu_ps(y + i * ldy + 8, a1);                                            \
    }
/* every steps count of the register form (floor keys, chosen only when they save a step, have 1..4) */
#if NM_PWL_R8_MAX_STEPS > 4
#define NM_V8_MORE(FL, CL)                                 \
    case 5: NM_V8_BLOCK(5, FL, CL); break;                 \
    default: NM_V8_BLOCK(NM_PWL_R8_MAX_STEPS, FL, CL); break;
#else
#define NM_V8_MORE(FL, CL) default: NM_V8_BLOCK(4, FL, CL); break; /* steps8 <= NM_PWL_R8_MAX_STEPS */
#endif
#define NM_V8_STEPS(FL, CL)                                \
    switch (v->steps) {                                    \
    case 0: NM_V8_BLOCK(0, FL, CL); break;                 \
    case 1: NM_V8_BLOCK(1, FL, CL); break;                 \
    case 2: NM_V8_BLOCK(2, FL, CL); break;                 \
    case 3: NM_V8_BLOCK(3, FL, CL); break;                 \
    case 4: NM_V8_BLOCK(4, FL, CL); break;                 \
    NM_V8_MORE(FL, CL)                                     \
    }
NM_AVX2 NM_INLINE void nm_pwl_v8_block16(const nm_pwl_v8 *v, const float *x, int rows, float *y, ptrdiff_t ldy)
{
    if (v->floor8) {
        if (v->clamp) NM_V8_STEPS(1, 1) else NM_V8_STEPS(1, 0)
    } else {
        if (v->clamp) NM_V8_STEPS(0, 1) else NM_V8_STEPS(0, 0)
    }
}
#undef NM_V8_STEPS
#undef NM_V8_MORE
#undef NM_V8_BLOCK

NM_AVX2 NM_INLINE __m256 nm_pwl_v8_eval(const nm_pwl_v8 *v, __m256 x) { return nm_pwl_v8_eval_st(v, x, v->steps, v->floor8, v->clamp); }

NM_AVX2 NM_INLINE __m256 nm_relu_v(__m256 x) { return _mm256_max_ps(_mm256_setzero_ps(), x); }

/* The AVX2 kernel's nm_act_fn (nm_pwl_avx2.c). */
NM_AVX2 void nm_act_avx2(int act, const nm_pwl *pwl, const float *rows, const float *x, float *y,
                         int64_t n);

#endif /* NM_X86 */
#endif
