/* The fused GEMM epilogue: per-tile context and the scalar (portable) element operations.
 *
 *   x = acc;  if load_c: x = C_prev + x          (C holds the sum of the earlier K blocks)
 *   if last:  x = x + bias_col[j];  x = x + bias_row[i];  x = x + res[i, j];  x = act(x)
 *
 * every step one IEEE float32 operation, identical in the scalar and the vector (nm_pwl_avx2.h)
 * code, so a tile gives the same bits whichever path finishes it.
 *
 * NaN conventions (chosen to match numpy, see nmengine/pwl.py):
 *   relu(x)         = (0 > x) ? 0 : x         relu(NaN) = NaN   (== _mm256_max_ps(0, x))
 *   PWL key clamp   = fmax/fmin style          NaN key -> bin 0
 *   PWL input clamp = maximum/minimum style    NaN propagates   (== _mm256_max_ps(xmin, x), ...)
 */
#ifndef NM_EPILOGUE_H
#define NM_EPILOGUE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nm_gemm.h"
#include "nm_pwl.h"

#if defined(__x86_64__) || defined(_M_X64)
#define NM_X86 1
#else
#define NM_X86 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NM_AVX2 __attribute__((target("avx2,fma")))
#define NM_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")))
#define NM_INLINE static inline __attribute__((always_inline))
#else
#define NM_AVX2
#define NM_AVX512
#define NM_INLINE static inline
#endif

/* Largest register tile any kernel uses (the finisher's scratch row). */
#define NM_MAX_MR 16
#define NM_MAX_NR 32

/* A PWL table of at most NM_PWL_REG_MAX segments prepared for lookups from vector registers
 * (permutes instead of gathers), built per call by nm_pwl_reg_build:
 *   key  = cvtt(fma(max(min(max(x, lo), hi)), scale, -lo * scale))      in [0, NM_PWL_REG_BINS)
 *   seg  = hint[key];  steps x { seg += (x >= edges[seg]) }
 * Its own grid of NM_PWL_REG_BINS bins over [lo, hi] = [edges[i], edges[n - 2 - j]] with the
 * i, j in 0..2 that need the fewest steps (far-out end breakpoints fall into the end bins by the
 * clamp), not the table's hint grid (64..4096 bins): the key is monotone in x, so hint[k] = the number of
 * breakpoints whose key is < k is a lower bound of the segment of every x in bin k and `steps`
 * (the most breakpoints sharing one bin) comparisons reach it.  The segment found is the one the
 * breakpoints define, i.e. the one PWLTable finds, so the output bits are the same.
 * ok == 0 when the table is larger or needs more than NM_PWL_REG_MAX_STEPS steps. */
#define NM_PWL_REG_MAX 64
#define NM_PWL_REG_BINS 32
#define NM_PWL_REG_MAX_STEPS 3
#define NM_PWL_R8_BINS 8
#ifndef NM_PWL_R8_MAX_STEPS
#define NM_PWL_R8_MAX_STEPS 6
#endif
typedef struct nm_pwl_reg {
    _Alignas(64) float edges[NM_PWL_REG_MAX];  /* edges[s]: the breakpoint that ends segment s; NaN past */
    _Alignas(64) float slopes[NM_PWL_REG_MAX];
    _Alignas(64) float icpt[NM_PWL_REG_MAX];
    _Alignas(64) int32_t hint[NM_PWL_REG_BINS];
    float lo, hi, scale, nlos;  /* nlos = -lo * scale (rounded) */
    int ok, wide, steps;        /* wide: more than 32 segments (two register pairs per array) */
    /* The AVX2 form (8-lane permutes, one ymm register per table): an own grid of NM_PWL_R8_BINS
     * bins over [lo8, hi8] (same key formula), and per bin k, with seg0 = the segment below its
     * first breakpoint and its breakpoints e_0 <= e_1 <= ... (at most steps8, NaN-padded):
     *   s0[k] = slopes[seg0], c0[k] = intercepts[seg0],
     *   e8[j][k] = e_j, ds[j][k] = bits(slopes[seg0 + j]) ^ bits(slopes[seg0 + j + 1]), dc likewise,
     * so with m_j = (x >= e_j) (monotone in j: m_j implies m_{j-1}) the slope of x is
     *   s0 ^ (m_0 & ds[0]) ^ (m_1 & ds[1]) ^ ...  = slopes[seg0 + #{j : x >= e_j}]
     * exactly (a bit select, no arithmetic): one vpermps per table and step, no gathers or blends.
     * ok8 == 0 when the table needs more than NM_PWL_R8_MAX_STEPS steps on any grid tried. */
    _Alignas(32) float s0[NM_PWL_R8_BINS];
    _Alignas(32) float c0[NM_PWL_R8_BINS];
    _Alignas(32) float e8[NM_PWL_R8_MAX_STEPS][NM_PWL_R8_BINS];
    _Alignas(32) uint32_t ds[NM_PWL_R8_MAX_STEPS][NM_PWL_R8_BINS];
    _Alignas(32) uint32_t dc[NM_PWL_R8_MAX_STEPS][NM_PWL_R8_BINS];
    float lo8, hi8, scale8, nlos8;
    int ok8, steps8;
    int floor8; /* key = cvtt(floor(v)) mod 8 instead of cvtt(v) (v > -1): see nm_pwl_r8_build */
} nm_pwl_reg;
void nm_pwl_reg_build(const nm_pwl *p, nm_pwl_reg *r);
/* *r = the register forms of p: a copy of p->reg when the table carries them, else built. */
void nm_pwl_reg_of(const nm_pwl *p, nm_pwl_reg *r);
/* A heap copy of p's register forms (64-byte aligned) for nm_pwl.reg, or NULL when out of memory;
 * nm_pwl_reg_free releases it (NULL is a no-op). */
nm_pwl_reg *nm_pwl_reg_new(const nm_pwl *p);
void nm_pwl_reg_free(nm_pwl_reg *r);

/* Epilogue state of one output tile; pointers are already offset to the tile's (i0, j0). */
typedef struct nm_tile_ctx {
    int load_c;            /* C holds a partial sum of earlier K blocks: x = C + acc */
    int last;              /* last K block: apply bias/residual/activation */
    int act;               /* NM_ACT_* */
    const float *bias_col; /* bias_col[j], or NULL */
    const float *bias_row; /* bias_row[i], or NULL */
    const float *res;      /* res[i * res_rs + j * res_cs], or NULL */
    ptrdiff_t res_rs, res_cs;
    const nm_pwl *pwl;
    const float *rows;     /* derived PWL lookup rows (nm_pwl_rows_build) or NULL */
    const nm_pwl_reg *reg; /* register-table form of pwl (nm_pwl_reg_build) or NULL */
} nm_tile_ctx;

/* x[0..n) = row i of a finished tile before its activation: the accumulator row ar, plus C when this
 * is not the first K block, plus bias_col / bias_row / residual on the last one (the order every
 * path of the core uses, so all give the same bits).  Shared by the generic and the edge finishers. */
NM_INLINE void nm_tile_row_combine(const float *ar, const float *cr, ptrdiff_t csc, int i, int n,
                                   const nm_tile_ctx *t, float *x)
{
    for (int j = 0; j < n; j++) {
        float v = ar[j];
        if (t->load_c) v = cr[j * csc] + v;
        if (t->last) {
            if (t->bias_col) v = v + t->bias_col[j];
            if (t->bias_row) v = v + t->bias_row[i];
            if (t->res) v = v + t->res[i * t->res_rs + j * t->res_cs];
        }
        x[j] = v;
    }
}

/* y[0..n) = act(x[0..n)) (x == y allowed): a kernel's vectorized activation (nm_act_scalar,
 * nm_act_avx2).  Both produce the same bits.  rows: optional derived lookup rows (may be NULL). */
typedef void (*nm_act_fn)(int act, const nm_pwl *pwl, const float *rows, const float *x, float *y,
                          int64_t n);

/* Derived lookup rows for the vector PWL (a per-call cache built from the table, never global).
 * Valid when steps <= 1: row k (8 floats, 32-byte aligned) of bin k holds
 *     { e0, s0, c0, s1, c1, 0, 0, 0 }   with seg0 = hint[k], e0 = edges[seg0] (NaN when steps == 0),
 *     (s0, c0) = segment seg0, (s1, c1) = segment min(seg0 + 1, n - 1),
 * so seg = seg0 + (x >= e0) and (slope, intercept) = x >= e0 ? (s1, c1) : (s0, c0): the same
 * entries the hint walk reads, fetched with one row load per lane instead of four gathers.
 * nm_pwl_rows_floats() is the size in floats (0 when the rows do not apply). */
#define NM_PWL_ROW 8
int64_t nm_pwl_rows_floats(const nm_pwl *p);
void nm_pwl_rows_build(const nm_pwl *p, float *rows);

/* ---- scalar element operations ------------------------------------------------------------- */

NM_INLINE float nm_relu_s(float x) { return (0.0f > x) ? 0.0f : x; }

NM_INLINE int32_t nm_pwl_key_s(const nm_pwl *p, float x)
{
    if (p->key_mode == NM_PWL_KEY_LINEAR) {
        const float nh1 = (float)(p->nhint - 1);
        float v = (x - p->origin) * p->scale;
        v = (v > 0.0f) ? v : 0.0f; /* NaN -> 0 (np.fmax) */
        v = (v < nh1) ? v : nh1;   /* np.fmin */
        return (int32_t)v;         /* v in [0, nhint-1]: truncation == floor */
    } else {
        int32_t bits;
        memcpy(&bits, &x, sizeof bits);
        int32_t k = (bits >> p->shift) - p->base; /* arithmetic shift, like numpy int32 >> */
        if (k < 0) k = 0;
        if (k > p->nhint - 1) k = p->nhint - 1;
        return k;
    }
}

NM_INLINE float nm_pwl_s(const nm_pwl *p, float x)
{
    int32_t seg = p->hint[nm_pwl_key_s(p, x)];
    for (int32_t s = 0; s < p->steps; s++) seg += (x >= p->edges[seg]);
    float xc = (p->xmin > x) ? p->xmin : x; /* np.maximum: NaN propagates */
    xc = (p->xmax < xc) ? p->xmax : xc;     /* np.minimum */
    float y = p->slopes[seg] * xc;          /* two roundings: -ffp-contract=off */
    return y + p->intercepts[seg];
}

NM_INLINE float nm_act_s(int act, const nm_pwl *p, float x)
{
    if (act == NM_ACT_RELU) return nm_relu_s(x);
    if (act == NM_ACT_PWL) return nm_pwl_s(p, x);
    return x;
}

/* Portable activation over a vector (the scalar kernel's nm_act_fn). */
void nm_act_scalar(int act, const nm_pwl *pwl, const float *rows, const float *x, float *y, int64_t n);

/* Finish an m x n tile (n <= NM_MAX_NR) whose K-block sums are in
 * acc[i * ldacc + j]: combine with C, apply the epilogue when t->last, store the valid part. */
void nm_tile_finish(const float *acc, int ldacc, int m, int n, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                    const nm_tile_ctx *t, nm_act_fn act);

#endif
