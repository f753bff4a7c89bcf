/* Depthwise convolution straight from the image (nm_plan.h: nm_depthwise).
 *
 * Every output element is acc = 0, then acc = acc + w[i][j] * x[y_i][ox * sw + j - pw] (a rounded
 * product, then an add: -ffp-contract=off) over the taps inside the image, in (i, j) order; taps in
 * the padding are skipped.  Interior columns (every tap column inside the row) run 8 outputs at a
 * time with the taps inner, so the sums stay in registers (AVX2 intrinsics on the SIMD paths; stride
 * 1 border and tail columns in masked blocks there); other border columns run one at a time with the
 * same terms in the same order.  The kernel columns' ranges are worked out once per call, and the
 * epilogue's activation is the kernel path's vector code, once over each thread's planes. */
#include <stdlib.h>
#include <string.h>

#include "nm_epilogue.h"
#include "nm_gemm.h"
#include "nm_gemm_ctx.h"
#include "nm_plan.h"
#include "nm_threads.h"
#include "nm_window_range.h"

#if NM_X86
#include <immintrin.h>
#endif

#define NM_DW_MAXK 32 /* kh, kw up to this use the blocked loop; larger kernels the plain one */

typedef struct dw_ctx {
    const nm_depthwise_args *d;
    nm_act_fn act;                        /* the kernel path's vector activation (same bits as nm_pwl_s) */
    int64_t lo[NM_DW_MAXK], hi[NM_DW_MAXK]; /* output columns [lo_j, hi_j) whose tap column j is inside */
    int64_t in_lo, in_hi;                 /* columns where every tap column is inside */
} dw_ctx;

/* one border output: the taps inside, in (i, j) order */
static inline float dw_point(const dw_ctx *c, const float *const *rp, const float *const *wr, int ni, int64_t kw,
                             int64_t sw, int64_t ox)
{
    float acc = 0.0f;
    for (int t = 0; t < ni; t++)
        for (int64_t j = 0; j < kw; j++)
            if (ox >= c->lo[j] && ox < c->hi[j]) {
                const float p = wr[t][j] * rp[t][ox * sw + j];
                acc = acc + p;
            }
    return acc;
}

/* interior outputs [ox, ox1) left over after the 8-output blocks, one at a time */
#define NM_DW_TAIL(SW)                                                                       \
    for (; ox < ox1; ox++) {                                                                 \
        float acc = 0.0f;                                                                    \
        for (int t = 0; t < ni; t++)                                                         \
            for (int64_t j = 0; j < kw; j++) {                                               \
                const float p = wr[t][j] * rp[t][ox * (SW) + j];                             \
                acc = acc + p;                                                               \
            }                                                                                \
        o[ox] = acc;                                                                         \
    }

/* the GEMM epilogue's additions on one plane (img, ch): x (+ bias_col[p]) (+ bias_row[0]) (+ res) */
static inline void dw_adds(const nm_epilogue *ep, float *out, int64_t hw, int64_t img, int64_t ch)
{
    const float *res = ep->res ? ep->res + img * ep->res_ps1 + ch * ep->res_ps2 : NULL;
    if (ep->bias_col)
        for (int64_t p = 0; p < hw; p++) out[p] = out[p] + ep->bias_col[p];
    if (ep->bias_row) {
        const float b = ep->bias_row[0];
        for (int64_t p = 0; p < hw; p++) out[p] = out[p] + b;
    }
    if (res && ep->res_cs == 0) {
        const float r = res[0];
        for (int64_t p = 0; p < hw; p++) out[p] = out[p] + r;
    } else if (res) {
        for (int64_t p = 0; p < hw; p++) out[p] = out[p] + res[p * ep->res_cs];
    }
}

/* the activation, elementwise: once over planes [p0, p1) (contiguous), not per plane */
static inline void dw_act(const dw_ctx *c, int64_t p0, int64_t p1, int64_t hw)
{
    const nm_epilogue *ep = &c->d->ep;
    float *y = c->d->win.out + p0 * hw;
    if (ep->act != NM_ACT_NONE && p1 > p0) c->act(ep->act, ep->pwl, NULL, y, y, (p1 - p0) * hw);
}

/* interior outputs [ox0, ox1) of one row, 8 at a time, stride SW (a constant where inlined) */
#define NM_DW_INTERIOR(SW)                                                                   \
    do {                                                                                     \
        int64_t ox = ox0;                                                                    \
        for (; ox + 8 <= ox1; ox += 8) {                                                     \
            float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                         \
            for (int t = 0; t < ni; t++)                                                     \
                for (int64_t j = 0; j < kw; j++) {                                           \
                    const float wv = wr[t][j];                                               \
                    const float *s = rp[t] + ox * (SW) + j;                                  \
                    for (int q = 0; q < 8; q++) {                                            \
                        const float p = wv * s[q * (SW)];                                    \
                        acc[q] = acc[q] + p;                                                 \
                    }                                                                        \
                }                                                                            \
            for (int q = 0; q < 8; q++) o[ox + q] = acc[q];                                  \
        }                                                                                    \
        NM_DW_TAIL(SW);                                                                      \
    } while (0)

/* planes [p0, p1): the convolution, then the GEMM epilogue x (+ bias_col[p]) (+ bias_row[0]) (+ res); act */
#define NM_DW_PLANES_BODY(INTERIOR, ROW_FAST)                                                          \
    const dw_ctx *c = (const dw_ctx *)arg;                                                             \
    const nm_depthwise_args *d = c->d;                                                                 \
    const nm_windows_args *a = &d->win;                                                                \
    const nm_epilogue *ep = &d->ep;                                                                    \
    const int64_t kh = a->kh, kw = a->kw, sw = a->sw, kk = kh * kw, hw = a->ho * a->wo;                \
    for (int64_t plane = p0; plane < p1; plane++) {                                                    \
        const int64_t img = plane / a->c, ch = plane % a->c;                                           \
        const float *src = a->x + plane * a->h * a->w;                                                 \
        const float *wk = d->w + ch * kk;                                                              \
        float *out = a->out + plane * hw;                                                              \
        for (int64_t oy = 0; oy < a->ho; oy++) {                                                       \
            float *o = out + oy * a->wo;                                                               \
            const float *rp[NM_DW_MAXK], *wr[NM_DW_MAXK];                                              \
            int ni = 0;                                                                                \
            for (int64_t i = 0; i < kh; i++) {                                                         \
                const int64_t y = oy * a->sh + i - a->ph;                                              \
                if (y < 0 || y >= a->h) continue;                                                      \
                rp[ni] = src + y * a->w - a->pw; /* + ox * sw + j: column ox * sw + j - pw */          \
                wr[ni] = wk + i * kw;                                                                  \
                ni++;                                                                                  \
            }                                                                                          \
            if (ROW_FAST) continue;                                                                    \
            for (int64_t ox = 0; ox < c->in_lo; ox++) o[ox] = dw_point(c, rp, wr, ni, kw, sw, ox);     \
            const int64_t ox0 = c->in_lo, ox1 = c->in_hi;                                              \
            if (sw == 1) INTERIOR(1);                                                                  \
            else if (sw == 2) INTERIOR(2);                                                             \
            else NM_DW_INTERIOR(sw);                                                                   \
            for (int64_t ox = c->in_hi > c->in_lo ? c->in_hi : c->in_lo; ox < a->wo; ox++)              \
                o[ox] = dw_point(c, rp, wr, ni, kw, sw, ox);                                           \
        }                                                                                              \
        dw_adds(ep, out, hw, img, ch);                                                                 \
    }                                                                                                  \
    dw_act(c, p0, p1, hw);

static void depthwise_planes(void *arg, int64_t p0, int64_t p1, int tid)
{
    (void)tid;
    NM_DW_PLANES_BODY(NM_DW_INTERIOR, 0)
}

#if NM_X86
/* Interior outputs 8 at a time in one ymm register: a multiply, then an add per tap (no FMA), the
 * same terms in the same order as NM_DW_INTERIOR; stride 2 takes the even floats of 16 by a shuffle
 * and a cross-lane permute. */
#define NM_DW_INTERIOR_AVX2(SW)                                                              \
    do {                                                                                     \
        int64_t ox = ox0;                                                                    \
        for (; ox + 8 <= ox1; ox += 8) {                                                     \
            __m256 acc = _mm256_setzero_ps();                                                \
            for (int t = 0; t < ni; t++)                                                     \
                for (int64_t j = 0; j < kw; j++) {                                           \
                    const __m256 wv = _mm256_set1_ps(wr[t][j]);                              \
                    const float *s = rp[t] + ox * (SW) + j;                                  \
                    __m256 v;                                                                \
                    if ((SW) == 1) {                                                         \
                        v = _mm256_loadu_ps(s);                                              \
                    } else {                                                                 \
                        const __m256 e = _mm256_shuffle_ps(_mm256_loadu_ps(s), _mm256_loadu_ps(s + 8), 0x88); \
                        v = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8)); \
                    }                                                                        \
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(wv, v));                          \
                }                                                                            \
            _mm256_storeu_ps(o + ox, acc);                                                   \
        }                                                                                    \
        NM_DW_TAIL(SW);                                                                      \
    } while (0)

/* A stride-1 row entirely in 8-output blocks: interior blocks as NM_DW_INTERIOR_AVX2, blocks with
 * border or tail columns load only the lanes whose tap is inside the row (vmaskmovps) and add the
 * product masked to +0 elsewhere.  acc + (+0) is acc (the sum starts at +0 and never becomes -0), so
 * each lane gets the same bits as skipping the tap. */
NM_AVX2 NM_INLINE int dw_row1_avx2_k(const dw_ctx *c, const float *const *rp, const float *const *wr, int ni,
                                     int64_t kw, int64_t wo, float *o)
{
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t ox = 0; ox < wo; ox += 8) {
        __m256 acc = _mm256_setzero_ps();
        if (ox >= c->in_lo && ox + 8 <= c->in_hi) {
            for (int t = 0; t < ni; t++)
                for (int64_t j = 0; j < kw; j++) {
                    const __m256 p = _mm256_mul_ps(_mm256_set1_ps(wr[t][j]), _mm256_loadu_ps(rp[t] + ox + j));
                    acc = _mm256_add_ps(acc, p);
                }
        } else {
            /* per tap column j, the lanes q with ox + q in [lo_j, min(hi_j, wo)); taps in (i, j) order */
            __m256i m[NM_DW_MAXK];
            for (int64_t j = 0; j < kw; j++) {
                int64_t lo = c->lo[j] - ox, hi = (c->hi[j] < wo ? c->hi[j] : wo) - ox;
                lo = lo < 0 ? 0 : lo > 8 ? 8 : lo;
                hi = hi < 0 ? 0 : hi > 8 ? 8 : hi;
                m[j] = _mm256_and_si256(_mm256_cmpgt_epi32(lane, _mm256_set1_epi32((int)lo - 1)),
                                        _mm256_cmpgt_epi32(_mm256_set1_epi32((int)hi), lane));
            }
            for (int t = 0; t < ni; t++)
                for (int64_t j = 0; j < kw; j++) {
                    const __m256 v = _mm256_maskload_ps(rp[t] + ox + j, m[j]);
                    const __m256 p = _mm256_and_ps(_mm256_mul_ps(_mm256_set1_ps(wr[t][j]), v), _mm256_castsi256_ps(m[j]));
                    acc = _mm256_add_ps(acc, p);
                }
        }
        if (ox + 8 <= wo) _mm256_storeu_ps(o + ox, acc);
        else _mm256_maskstore_ps(o + ox, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(wo - ox)), lane), acc);
    }
    return 1;
}

/* kw a compile-time 3 (the common 3 x 3 depthwise kernel: the tap loops unroll) or run-time */
NM_AVX2 static int dw_row1_avx2(const dw_ctx *c, const float *const *rp, const float *const *wr, int ni,
                                int64_t kw, int64_t wo, float *o)
{
    if (kw == 3) return dw_row1_avx2_k(c, rp, wr, ni, 3, wo, o);
    return dw_row1_avx2_k(c, rp, wr, ni, kw, wo, o);
}

NM_AVX2 static void depthwise_planes_avx2(void *arg, int64_t p0, int64_t p1, int tid)
{
    (void)tid;
    NM_DW_PLANES_BODY(NM_DW_INTERIOR_AVX2, sw == 1 && dw_row1_avx2(c, rp, wr, ni, kw, a->wo, o))
}
#undef NM_DW_INTERIOR_AVX2
#endif
#undef NM_DW_PLANES_BODY
#undef NM_DW_INTERIOR
#undef NM_DW_TAIL

/* kernels wider or taller than NM_DW_MAXK: acc[lo..hi) += w * s[ox * sw] per tap, the same terms */
static void depthwise_planes_plain(void *arg, int64_t p0, int64_t p1, int tid)
{
    (void)tid;
    const dw_ctx *c = (const dw_ctx *)arg;
    const nm_depthwise_args *d = c->d;
    const nm_windows_args *a = &d->win;
    const int64_t kk = a->kh * a->kw, hw = a->ho * a->wo;
    for (int64_t plane = p0; plane < p1; plane++) {
        const int64_t img = plane / a->c, ch = plane % a->c;
        const float *src = a->x + plane * a->h * a->w;
        const float *wk = d->w + ch * kk;
        float *out = a->out + plane * hw;
        for (int64_t oy = 0; oy < a->ho; oy++) {
            float *acc = out + oy * a->wo;
            memset(acc, 0, (size_t)a->wo * sizeof(float));
            for (int64_t i = 0; i < a->kh; i++) {
                const int64_t y = oy * a->sh + i - a->ph;
                if (y < 0 || y >= a->h) continue;
                for (int64_t j = 0; j < a->kw; j++) {
                    int64_t lo, hi;
                    inside_range(j - a->pw, a->sw, a->w, a->wo, &lo, &hi);
                    const float wv = wk[i * a->kw + j], *s = src + y * a->w + j - a->pw;
                    for (int64_t ox = lo; ox < hi; ox++) {
                        const float p = wv * s[ox * a->sw];
                        acc[ox] = acc[ox] + p;
                    }
                }
            }
        }
        dw_adds(&d->ep, out, hw, img, ch);
    }
    dw_act(c, p0, p1, hw);
}

int nm_depthwise(const nm_depthwise_args *d, int nthreads, int kernel)
{
    const nm_windows_args *a = d ? &d->win : NULL;
    if (!a || !a->x || !a->out || !d->w || a->n < 0 || a->c < 0 || a->h < 1 || a->w < 1 || a->kh < 1
        || a->kw < 1 || a->sh < 1 || a->sw < 1 || a->ph < 0 || a->pw < 0 || a->ho < 0 || a->wo < 0
        || a->layout != 0 || a->edge)
        return NM_EINVAL;
    const nm_epilogue *ep = &d->ep;
    if (ep->act != NM_ACT_NONE && ep->act != NM_ACT_RELU && ep->act != NM_ACT_PWL) return NM_EINVAL;
    if (ep->act == NM_ACT_PWL && !ep->pwl) return NM_EINVAL;
    const int kres = nm_resolve_kernel(kernel);
    if (kres < 0) return NM_EINVAL;
    const int64_t planes = a->n * a->c;
    if (planes == 0 || a->ho * a->wo == 0) return NM_OK;
    const nm_kctx *kd = nm_kctx_get(kres);
    dw_ctx c;
    c.d = d;
    c.act = kd->act;
    nm_range_fn fn = depthwise_planes_plain;
    if (a->kh <= NM_DW_MAXK && a->kw <= NM_DW_MAXK) {
        c.in_lo = 0;
        c.in_hi = a->wo;
        for (int64_t j = 0; j < a->kw; j++) {
            inside_range(j - a->pw, a->sw, a->w, a->wo, &c.lo[j], &c.hi[j]);
            if (c.lo[j] > c.in_lo) c.in_lo = c.lo[j];
            if (c.hi[j] < c.in_hi) c.in_hi = c.hi[j];
        }
        fn = depthwise_planes;
#if NM_X86
        if (kd->row_simd) fn = depthwise_planes_avx2;
#endif
    }
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    if (planes * a->ho * a->wo * a->kh * a->kw < NM_WIN_PAR_MIN) nt = 1;
    if (nt > planes) nt = (int)planes;
    nm_parallel_for(nt, planes, fn, (void *)&c);
    return NM_OK;
}
