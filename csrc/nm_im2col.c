/* Sliding windows (nm_plan.h: nm_windows): im2col for convolutions and pooling windows, a pure copy.
 *
 * im2col (layout 0) is split by output row (img, ch, i, j): each row is Ho segments of Wo floats,
 * each segment a zero head, a copied middle (memcpy when the stride is 1) and a zero tail, worked out
 * once per segment instead of per element.  Pooling windows (layout 1) and replicated-edge padding
 * use the per-element loop, split by (img, ch) plane.  Channels-last layouts (2, 3) are split by
 * output pixel, each (i, j) tap of a pixel one run of c channels.  Rows/planes go to the pool's threads
 * (nm_threads.h) statically; every output element is one copy, so the result is the same bits for
 * any thread count.
 */
#include <stdlib.h>
#include <string.h>

#include "nm_epilogue.h"
#include "nm_gemm.h"
#include "nm_gemm_ctx.h"
#include "nm_plan.h"
#include "nm_threads.h"

#if NM_X86
#include <immintrin.h>
#endif

#define NM_WIN_PAR_MIN 65536 /* output elements below which one thread does everything */

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* First ox in [0, wo) with ox*s + off >= 0, and the end of the range with ox*s + off < w. */
static void inside_range(int64_t off, int64_t s, int64_t w, int64_t wo, int64_t *lo, int64_t *hi)
{
    int64_t a = off >= 0 ? 0 : (-off + s - 1) / s;
    int64_t b = (w - off <= 0) ? 0 : (w - off + s - 1) / s; /* ox*s + off < w  <=>  ox < (w - off)/s */
    if (a > wo) a = wo;
    if (b > wo) b = wo;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

/* im2col rows r0..r1 (row = (img*c + ch)*kh*kw + i*kw + j), zero padding */
static void im2col_rows(void *arg, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const nm_windows_args *a = (const nm_windows_args *)arg;
    const int64_t kk = a->kh * a->kw, hw = a->ho * a->wo;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t plane = r / kk, ij = r % kk, i = ij / a->kw, j = ij % a->kw;
        const float *src = a->x + plane * a->h * a->w;
        float *dst = a->out + r * hw;
        int64_t lo, hi;
        inside_range(j - a->pw, a->sw, a->w, a->wo, &lo, &hi);
        for (int64_t oy = 0; oy < a->ho; oy++) {
            float *d = dst + oy * a->wo;
            const int64_t y = oy * a->sh + i - a->ph;
            if (y < 0 || y >= a->h) {
                memset(d, 0, (size_t)a->wo * sizeof(float));
                continue;
            }
            if (lo > 0) memset(d, 0, (size_t)lo * sizeof(float));
            const float *s = src + y * a->w + j - a->pw;
            if (a->sw == 1) {
                if (hi > lo) memcpy(d + lo, s + lo, (size_t)(hi - lo) * sizeof(float));
            } else {
                for (int64_t ox = lo; ox < hi; ox++) d[ox] = s[ox * a->sw];
            }
            if (hi < a->wo) memset(d + hi, 0, (size_t)(a->wo - hi) * sizeof(float));
        }
    }
}

/* Any layout / padding, planes p0..p1 (plane = img*c + ch): the per-element definition. */
static void windows_planes(void *arg, int64_t p0, int64_t p1, int tid)
{
    (void)tid;
    const nm_windows_args *a = (const nm_windows_args *)arg;
    const int64_t kk = a->kh * a->kw, hw = a->ho * a->wo;
    for (int64_t plane = p0; plane < p1; plane++) {
        const int64_t img = plane / (a->c > 0 ? a->c : 1), ch = plane % (a->c > 0 ? a->c : 1);
        const float *src = a->x + plane * a->h * a->w;
        for (int64_t i = 0; i < a->kh; i++)
            for (int64_t j = 0; j < a->kw; j++)
                for (int64_t oy = 0; oy < a->ho; oy++) {
                    int64_t y = oy * a->sh + i - a->ph;
                    int inside_y = y >= 0 && y < a->h;
                    int64_t yc = clamp64(y, 0, a->h - 1);
                    for (int64_t ox = 0; ox < a->wo; ox++) {
                        int64_t xx = ox * a->sw + j - a->pw;
                        float v;
                        if (inside_y && xx >= 0 && xx < a->w) v = src[y * a->w + xx];
                        else if (a->edge) v = src[yc * a->w + clamp64(xx, 0, a->w - 1)];
                        else v = 0.0f;
                        int64_t o;
                        if (a->layout == 0)
                            o = (img * a->c * kk + (ch * a->kh + i) * a->kw + j) * hw + oy * a->wo + ox;
                        else
                            o = (((img * a->c + ch) * a->ho + oy) * a->wo + ox) * kk + i * a->kw + j;
                        a->out[o] = v;
                    }
                }
    }
}

/* Channels-last (NHWC) windows, output pixels r0..r1 (r = (img*ho + oy)*wo + ox), x[n, h, w, c]:
 *   layout 2 (im2col):       out[r, (i*kw + j)*c + ch]   the taps of one i inside the image are one
 *                            contiguous run of x (one memcpy), the rest zeros
 *   layout 3 (pool windows): out[r, ch*kh*kw + i*kw + j] zero or replicated-edge padding */
/* NHWC im2col (layout 2) of output pixels r0..r1 into dst (row r at dst + (r - r0) * kh*kw*c) */
static void nhwc_rows(const nm_windows_args *a, int64_t r0, int64_t r1, float *dst)
{
    const int64_t c = a->c, row = a->kh * a->kw * c;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t img = r / (a->ho * a->wo), oy = (r / a->wo) % a->ho, ox = r % a->wo;
        const float *src = a->x + img * a->h * a->w * c;
        float *d = dst + (r - r0) * row;
        /* taps j in [jlo, jhi) are inside the image: in NHWC they are one run of (jhi - jlo)*c floats */
        const int64_t x0 = ox * a->sw - a->pw;
        const int64_t jlo = clamp64(-x0, 0, a->kw), jhi = clamp64(a->w - x0, jlo, a->kw);
        for (int64_t i = 0; i < a->kh; i++) {
            const int64_t y = oy * a->sh + i - a->ph;
            float *o = d + i * a->kw * c;
            if (y < 0 || y >= a->h) {
                memset(o, 0, (size_t)(a->kw * c) * sizeof(float));
                continue;
            }
            if (jlo > 0) memset(o, 0, (size_t)(jlo * c) * sizeof(float));
            if (jhi > jlo)
                memcpy(o + jlo * c, src + (y * a->w + x0 + jlo) * c, (size_t)((jhi - jlo) * c) * sizeof(float));
            if (jhi < a->kw) memset(o + jhi * c, 0, (size_t)((a->kw - jhi) * c) * sizeof(float));
        }
    }
}

static void nhwc_pixels(void *arg, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const nm_windows_args *a = (const nm_windows_args *)arg;
    const int64_t kk = a->kh * a->kw, c = a->c;
    if (a->layout == 2) {
        nhwc_rows(a, r0, r1, a->out + r0 * kk * c);
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t img = r / (a->ho * a->wo), oy = (r / a->wo) % a->ho, ox = r % a->wo;
        const float *src = a->x + img * a->h * a->w * c;
        float *d = a->out + r * kk * c;
        for (int64_t i = 0; i < a->kh; i++) {
            const int64_t y = oy * a->sh + i - a->ph;
            const int in_y = y >= 0 && y < a->h;
            const int64_t yc = clamp64(y, 0, a->h - 1);
            for (int64_t j = 0; j < a->kw; j++) {
                const int64_t xx = ox * a->sw + j - a->pw;
                const int in = in_y && xx >= 0 && xx < a->w;
                const float *s = in || a->edge ? src + (yc * a->w + clamp64(xx, 0, a->w - 1)) * c : NULL;
                float *o = d + i * a->kw + j;
                if (s)
                    for (int64_t ch = 0; ch < c; ch++) o[ch * kk] = s[ch];
                else
                    for (int64_t ch = 0; ch < c; ch++) o[ch * kk] = 0.0f;
            }
        }
    }
}

int nm_windows_mt(const nm_windows_args *a, int nthreads)
{
    if (!a || !a->x || !a->out || a->n < 0 || a->c < 0 || a->h < 1 || a->w < 1 || a->kh < 1 || a->kw < 1
        || a->sh < 1 || a->sw < 1 || a->ph < 0 || a->pw < 0 || a->ho < 0 || a->wo < 0
        || a->layout < 0 || a->layout > 3 || (a->layout == 2 && a->edge))
        return NM_EINVAL;
    const int64_t planes = a->n * a->c, kk = a->kh * a->kw;
    const int64_t elems = planes * kk * a->ho * a->wo;
    if (elems == 0) return NM_OK;
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    if (elems < NM_WIN_PAR_MIN) nt = 1;
    if (a->layout >= 2) {
        const int64_t pixels = a->n * a->ho * a->wo;
        if (nt > pixels) nt = (int)pixels;
        nm_parallel_for(nt, pixels, nhwc_pixels, (void *)a);
    } else if (a->layout == 0 && !a->edge) {
        if (nt > planes * kk) nt = (int)(planes * kk);
        nm_parallel_for(nt, planes * kk, im2col_rows, (void *)a);
    } else {
        if (nt > planes) nt = (int)planes;
        nm_parallel_for(nt, planes, windows_planes, (void *)a);
    }
    return NM_OK;
}

int nm_windows(const nm_windows_args *a) { return nm_windows_mt(a, 1); }

/* ---- depthwise convolution (nm_plan.h: nm_depthwise) ------------------------------------------ */

/* Every output element is acc = 0, then acc = acc + w[i][j] * x[y_i][ox * sw + j - pw] (a rounded
 * product, then an add: -ffp-contract=off) over the taps inside the image, in (i, j) order; taps in
 * the padding are skipped.  Interior columns (every tap column inside the row) run 8 outputs at a
 * time with the taps inner, so the sums stay in registers; border columns run one at a time with
 * the same terms in the same order.  The kernel columns' ranges are worked out once per call. */

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
        for (; ox < ox1; ox++) {                                                             \
            float acc = 0.0f;                                                                \
            for (int t = 0; t < ni; t++)                                                     \
                for (int64_t j = 0; j < kw; j++) {                                           \
                    const float p = wr[t][j] * rp[t][ox * (SW) + j];                         \
                    acc = acc + p;                                                           \
                }                                                                            \
            o[ox] = acc;                                                                     \
        }                                                                                    \
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
        const float *res = ep->res ? ep->res + img * ep->res_ps1 + ch * ep->res_ps2 : NULL;            \
        if (ep->bias_col)                                                                              \
            for (int64_t p = 0; p < hw; p++) out[p] = out[p] + ep->bias_col[p];                        \
        if (ep->bias_row) {                                                                            \
            const float b = ep->bias_row[0];                                                           \
            for (int64_t p = 0; p < hw; p++) out[p] = out[p] + b;                                      \
        }                                                                                              \
        if (res && ep->res_cs == 0) {                                                                  \
            const float r = res[0];                                                                    \
            for (int64_t p = 0; p < hw; p++) out[p] = out[p] + r;                                      \
        } else if (res) {                                                                              \
            for (int64_t p = 0; p < hw; p++) out[p] = out[p] + res[p * ep->res_cs];                    \
        }                                                                                              \
    }                                                                                                  \
    /* the activation is elementwise: once over the range's planes (contiguous), not per plane */      \
    if (ep->act != NM_ACT_NONE && p1 > p0)                                                             \
        c->act(ep->act, ep->pwl, NULL, a->out + p0 * hw, a->out + p0 * hw, (p1 - p0) * hw);

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
        for (; ox < ox1; ox++) {                                                             \
            float acc = 0.0f;                                                                \
            for (int t = 0; t < ni; t++)                                                     \
                for (int64_t j = 0; j < kw; j++) {                                           \
                    const float p = wr[t][j] * rp[t][ox * (SW) + j];                         \
                    acc = acc + p;                                                           \
                }                                                                            \
            o[ox] = acc;                                                                     \
        }                                                                                    \
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

/* kernels wider or taller than NM_DW_MAXK: acc[lo..hi) += w * s[ox * sw] per tap, the same terms */
static void depthwise_planes_plain(void *arg, int64_t p0, int64_t p1, int tid)
{
    (void)tid;
    const dw_ctx *c = (const dw_ctx *)arg;
    const nm_depthwise_args *d = c->d;
    const nm_windows_args *a = &d->win;
    const nm_epilogue *ep = &d->ep;
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
    if (ep->act != NM_ACT_NONE && p1 > p0)
        c->act(ep->act, ep->pwl, NULL, a->out + p0 * hw, a->out + p0 * hw, (p1 - p0) * hw);
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

/* ---- channels-last max pooling (nm_plan.h: nm_maxpool_nhwc) ---------------------------------- */

#define NM_MP_LANES 16 /* NM_PMAX_LANES of nm_rows.h: part of the row max's definition */

typedef struct nm_maxpool_task {
    const nm_windows_args *a;
    float *scratch;      /* per thread: min(kk, 16) lane rows of c floats */
    const float **taps;  /* per thread: kk row pointers */
    const float *zeros;  /* c zeros (zero padding) */
} nm_maxpool_task;

/* m[ch] = m[ch] + relu(v[ch] - m[ch]) for a row of c channels (nm_rows.h: pmax_step) */
static inline void mp_step(float *m, const float *v, int64_t c)
{
    for (int64_t ch = 0; ch < c; ch++) {
        float d = v[ch] - m[ch];
        d = (0.0f > d) ? 0.0f : d;
        m[ch] = m[ch] + d;
    }
}

static void maxpool_pixels(void *arg, int64_t r0, int64_t r1, int tid)
{
    const nm_maxpool_task *mt = (const nm_maxpool_task *)arg;
    const nm_windows_args *a = mt->a;
    const int64_t kk = a->kh * a->kw, c = a->c;
    const int64_t w0 = kk < NM_MP_LANES ? kk : NM_MP_LANES;
    float *m = mt->scratch + (size_t)tid * (size_t)(w0 * c);
    const float **tap = mt->taps + (size_t)tid * (size_t)kk;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t img = r / (a->ho * a->wo), oy = (r / a->wo) % a->ho, ox = r % a->wo;
        const float *src = a->x + img * a->h * a->w * c;
        for (int64_t i = 0; i < a->kh; i++) {
            const int64_t y = oy * a->sh + i - a->ph;
            for (int64_t j = 0; j < a->kw; j++) {
                const int64_t xx = ox * a->sw + j - a->pw;
                const int in = y >= 0 && y < a->h && xx >= 0 && xx < a->w;
                tap[i * a->kw + j] = in || a->edge ? src + (clamp64(y, 0, a->h - 1) * a->w + clamp64(xx, 0, a->w - 1)) * c
                                                   : mt->zeros;
            }
        }
        /* nm_pairwise_max's lane fold over the window's kk values, each channel on its own: tap k
         * folds into lane k % 16 left to right, then lane l absorbs lane l + h, h = 8, 4, 2, 1 */
        for (int64_t l = 0; l < w0; l++) memcpy(m + l * c, tap[l], (size_t)c * sizeof(float));
        for (int64_t k = NM_MP_LANES; k < kk; k++) mp_step(m + (k % NM_MP_LANES) * c, tap[k], c);
        int64_t w = w0;
        for (int64_t h = NM_MP_LANES / 2; h >= 1; h /= 2) {
            if (w > h) {
                for (int64_t l = 0; l < w - h; l++) mp_step(m + l * c, m + (l + h) * c, c);
                w = h;
            }
        }
        memcpy(a->out + r * c, m, (size_t)c * sizeof(float));
    }
}

int nm_maxpool_nhwc(const nm_windows_args *a, int nthreads)
{
    if (!a || !a->x || !a->out || a->n < 0 || a->c < 0 || a->h < 1 || a->w < 1 || a->kh < 1 || a->kw < 1
        || a->sh < 1 || a->sw < 1 || a->ph < 0 || a->pw < 0 || a->ho < 0 || a->wo < 0 || a->layout != 3)
        return NM_EINVAL;
    const int64_t pixels = a->n * a->ho * a->wo, kk = a->kh * a->kw, c = a->c;
    if (pixels == 0 || c == 0) return NM_OK;
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    if (pixels * kk * c < NM_WIN_PAR_MIN) nt = 1;
    if (nt > pixels) nt = (int)pixels;
    const size_t tfl = (size_t)((kk < NM_MP_LANES ? kk : NM_MP_LANES) * c);
    float *scratch = (float *)malloc((tfl * (size_t)nt + (size_t)c) * sizeof(float));
    const float **taps = (const float **)malloc((size_t)(kk * nt) * sizeof(*taps));
    if (!scratch || !taps) {
        free(scratch);
        free(taps);
        return NM_ENOMEM;
    }
    float *zeros = scratch + tfl * (size_t)nt;
    memset(zeros, 0, (size_t)c * sizeof(float));
    nm_maxpool_task mt = {a, scratch, taps, zeros};
    nm_parallel_for(nt, pixels, maxpool_pixels, &mt);
    free(scratch);
    free(taps);
    return NM_OK;
}

/* ---- channels-last convolution (nm_plan.h: nm_conv_nhwc) ------------------------------------- */

/* A block of output pixels: its windows (rows x K floats) should stay in L2 for the GEMM that reads
 * them (~384 KiB), but the GEMM re-reads the packed weights once per block, so a block has at least
 * NM_CONV_MIN_ROWS rows (B traffic per flop ~ 1 / rows). */
#define NM_CONV_BLOCK_FLOATS (96 * 1024)
#define NM_CONV_MIN_ROWS 224
/* Up to this many rows the whole product goes to nm_sgemm_packed's threads (its column split for
 * small M against a pre-packed B, nm_gemm.c: NM_COL_SPLIT_MAX_M) instead of row blocks. */
#define NM_CONV_GEMM_SPLIT_M 128

typedef struct nm_conv_task {
    const nm_conv_args *c;
    int64_t rows, nblocks, K, R;
    int kernel;
    int direct;  /* 1x1, stride 1, no padding: the image is the im2col, read in place */
    int shared;  /* blocks handed out dynamically, each thread's windows in its own scratch rows */
    int rc[NM_MAX_THREADS];
} nm_conv_task;

/* block q: its windows (unless direct) in buf, then its rows of the GEMM on this thread alone */
static int conv_block(const nm_conv_task *t, int64_t q, float *buf)
{
    const nm_conv_args *c = t->c;
    const int64_t r0 = q * t->rows, r1 = r0 + t->rows < t->R ? r0 + t->rows : t->R;
    const float *A;
    if (t->direct) {
        A = c->win.x + r0 * t->K;
    } else {
        nhwc_rows(&c->win, r0, r1, buf);
        A = buf;
    }
    nm_epilogue ep = c->ep;
    if (ep.res) ep.res += r0 * ep.res_rs;
    if (ep.bias_row) ep.bias_row += r0;
    return nm_sgemm_packed(r1 - r0, c->N, t->K, A, t->K, 1, c->Bp, c->C + r0 * c->N, c->N, 1, &ep, 1, t->kernel);
}

static void conv_task(void *arg, nm_team *team, int tid, int nt)
{
    (void)nt;
    nm_conv_task *t = (nm_conv_task *)arg;
    float *cols = t->c->win.out;
    int rc = NM_OK;
    for (int64_t q = nm_team_next(team); q < t->nblocks; q = nm_team_next(team)) {
        /* shared: scratch rows of this thread (nblocks >= 4 nt keeps them inside the buffer);
         * else the block's own rows of the im2col buffer */
        float *buf = cols + (size_t)((t->shared ? (int64_t)tid : q) * t->rows * t->K);
        const int r = conv_block(t, q, buf);
        if (r != NM_OK) rc = r;
    }
    t->rc[tid] = rc;
}

int nm_conv_nhwc(const nm_conv_args *c, int nthreads, int kernel)
{
    const nm_windows_args *a = c ? &c->win : NULL;
    if (!a || !a->x || !a->out || !c->Bp || !c->C || c->N < 0 || a->n < 0 || a->c < 1 || a->h < 1 || a->w < 1
        || a->kh < 1 || a->kw < 1 || a->sh < 1 || a->sw < 1 || a->ph < 0 || a->pw < 0 || a->ho < 0 || a->wo < 0
        || a->layout != 2 || a->edge)
        return NM_EINVAL;
    const int kres = nm_resolve_kernel(kernel);
    if (kres < 0) return NM_EINVAL;
    const int64_t K = a->kh * a->kw * a->c, R = a->n * a->ho * a->wo;
    if (R == 0 || c->N == 0) return NM_OK;
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    const int mr = nm_get_blocking(kres).mr;
    nm_conv_task t;
    t.c = c;
    t.K = K;
    t.R = R;
    t.kernel = kres;
    t.direct = a->kh == 1 && a->kw == 1 && a->sh == 1 && a->sw == 1 && a->ph == 0 && a->pw == 0;
    int64_t rows = NM_CONV_BLOCK_FLOATS / K;
    if (rows < NM_CONV_MIN_ROWS) rows = NM_CONV_MIN_ROWS;
    rows = rows / mr * mr;
    if (rows < mr) rows = mr;
    t.shared = 1;
    if (nt > 1 && R <= NM_CONV_GEMM_SPLIT_M) {
        /* few rows (batch-1 deep layers): the whole im2col, then the GEMM's own small-M split, which
         * shares out the columns so that each thread streams only its part of the weights */
        if (!t.direct) {
            const int rc = nm_windows_mt(a, nt);
            if (rc != NM_OK) return rc;
        }
        return nm_sgemm_packed(R, c->N, K, t.direct ? a->x : a->out, K, 1, c->Bp, c->C, c->N, 1, &c->ep, nt, kres);
    }
    if (nt > 1 && (R + rows - 1) / rows < 4 * (int64_t)nt) {
        /* too few blocks to share out: one block of whole MR-row panels per thread */
        const int64_t panels = (R + mr - 1) / mr;
        rows = (panels + nt - 1) / nt * mr;
        t.shared = 0;
    }
    if (2.0 * (double)R * (double)c->N * (double)K < 2.0 * 64 * 64 * 64) nt = 1; /* tiny: one thread */
    t.rows = rows;
    t.nblocks = (R + rows - 1) / rows;
    if (nt > t.nblocks) nt = (int)t.nblocks;
    if (nt <= 1) {
        for (int64_t q = 0; q < t.nblocks; q++) {
            const int rc = conv_block(&t, q, a->out + (t.shared ? 0 : q * rows * K));
            if (rc != NM_OK) return rc;
        }
        return NM_OK;
    }
    for (int i = 0; i < nt; i++) t.rc[i] = NM_OK;
    const int used = nm_parallel(nt, conv_task, &t);
    for (int i = 0; i < used; i++)
        if (t.rc[i] != NM_OK) return t.rc[i];
    return NM_OK;
}

/* ---- channels-last convolution, int8 GEMM (nm_plan.h: nm_qconv_nhwc) -------------------------- */

/* Row blocks are a multiple of every int8 kernel's tile height (AMX 32, AVX512-VNNI 6, AVX-VNNI 3,
 * AVX2 2, scalar 4), so no block ends in a partly padded tile except the last. */
#define NM_QCONV_ROW_UNIT 96

typedef struct nm_qconv_task {
    const nm_qconv_args *c;
    int64_t rows, nblocks, K, R;
    int qkernel;
    int direct;
    int shared;
    int rc[NM_MAX_THREADS];
} nm_qconv_task;

static int qconv_block(const nm_qconv_task *t, int64_t q, float *buf)
{
    const nm_qconv_args *c = t->c;
    const int64_t r0 = q * t->rows, r1 = r0 + t->rows < t->R ? r0 + t->rows : t->R;
    nm_qgemm_args x = c->q;
    nm_epilogue ep;
    x.M = r1 - r0;
    x.K = t->K;
    x.Aq = NULL;
    if (t->direct) {
        x.A = c->win.x + r0 * t->K;
    } else {
        nhwc_rows(&c->win, r0, r1, buf);
        x.A = buf;
    }
    x.rsa = t->K;
    x.csa = 1;
    x.C = c->q.C + r0 * c->q.rsc;
    if (c->q.ep) {
        ep = *c->q.ep;
        if (ep.res) ep.res += r0 * ep.res_rs;
        if (ep.bias_row) ep.bias_row += r0;
        x.ep = &ep;
    }
    return nm_qgemm(&x, 1, t->qkernel);
}

static void qconv_task(void *arg, nm_team *team, int tid, int nt)
{
    (void)nt;
    nm_qconv_task *t = (nm_qconv_task *)arg;
    float *cols = t->c->win.out;
    int rc = NM_OK;
    for (int64_t q = nm_team_next(team); q < t->nblocks; q = nm_team_next(team)) {
        float *buf = cols + (size_t)((t->shared ? (int64_t)tid : q) * t->rows * t->K);
        const int r = qconv_block(t, q, buf);
        if (r != NM_OK) rc = r;
    }
    t->rc[tid] = rc;
}

int nm_qconv_nhwc(const nm_qconv_args *c, int nthreads, int qkernel)
{
    const nm_windows_args *a = c ? &c->win : NULL;
    if (!a || !a->x || !a->out || !c->q.Bp || !c->q.C || !c->q.colsum || c->q.N < 0 || c->q.csc != 1 || a->n < 0
        || a->c < 1 || a->h < 1 || a->w < 1 || a->kh < 1 || a->kw < 1 || a->sh < 1 || a->sw < 1 || a->ph < 0
        || a->pw < 0 || a->ho < 0 || a->wo < 0 || a->layout != 2 || a->edge)
        return NM_EINVAL;
    if (nm_qkernel_resolve(qkernel) < 0) return NM_EINVAL;
    const int64_t K = a->kh * a->kw * a->c, R = a->n * a->ho * a->wo;
    if (c->q.K != K || c->q.M != R) return NM_EINVAL;
    if (R == 0 || c->q.N == 0) return NM_OK;
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    nm_qconv_task t;
    t.c = c;
    t.K = K;
    t.R = R;
    t.qkernel = qkernel;
    t.direct = a->kh == 1 && a->kw == 1 && a->sh == 1 && a->sw == 1 && a->ph == 0 && a->pw == 0;
    int64_t rows = NM_CONV_BLOCK_FLOATS / K;
    if (rows < NM_CONV_MIN_ROWS) rows = NM_CONV_MIN_ROWS;
    rows = (rows + NM_QCONV_ROW_UNIT - 1) / NM_QCONV_ROW_UNIT * NM_QCONV_ROW_UNIT;
    t.shared = 1;
    if (nt > 1 && R <= NM_CONV_GEMM_SPLIT_M) {
        /* few rows: the whole im2col, then one int8 GEMM that shares out its tiles */
        nm_qgemm_args x = c->q;
        x.Aq = NULL;
        if (!t.direct) {
            const int rc = nm_windows_mt(a, nt);
            if (rc != NM_OK) return rc;
        }
        x.A = t.direct ? a->x : a->out;
        x.rsa = K;
        x.csa = 1;
        return nm_qgemm(&x, nt, qkernel);
    }
    if (nt > 1 && (R + rows - 1) / rows < 4 * (int64_t)nt) {
        /* too few blocks to share out: one block of whole row units per thread */
        const int64_t units = (R + NM_QCONV_ROW_UNIT - 1) / NM_QCONV_ROW_UNIT;
        rows = (units + nt - 1) / nt * NM_QCONV_ROW_UNIT;
        t.shared = 0;
    }
    if (2.0 * (double)R * (double)c->q.N * (double)K < 2.0 * 64 * 64 * 64) nt = 1; /* tiny: one thread */
    t.rows = rows;
    t.nblocks = (R + rows - 1) / rows;
    if (nt > t.nblocks) nt = (int)t.nblocks;
    if (nt <= 1) {
        for (int64_t q = 0; q < t.nblocks; q++) {
            const int rc = qconv_block(&t, q, a->out + (t.shared ? 0 : q * rows * K));
            if (rc != NM_OK) return rc;
        }
        return NM_OK;
    }
    for (int i = 0; i < nt; i++) t.rc[i] = NM_OK;
    const int used = nm_parallel(nt, qconv_task, &t);
    for (int i = 0; i < used; i++)
        if (t.rc[i] != NM_OK) return t.rc[i];
    return NM_OK;
}
