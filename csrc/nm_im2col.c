/* Sliding windows (nm_plan.h: nm_windows): im2col for convolutions and pooling windows, a pure copy.
 *
 * im2col (layout 0) is split by output row (img, ch, i, j): each row is Ho segments of Wo floats,
 * each segment a zero head, a copied middle (memcpy when the stride is 1) and a zero tail, worked out
 * once per segment instead of per element.  Pooling windows (layout 1) and replicated-edge padding
 * use the per-element loop, split by (img, ch) plane.  Channels-last layouts (2, 3) are split by
 * output pixel, each (i, j) tap of a pixel one run of c channels.  Rows/planes go to the pool's threads
 * (nm_threads.h) statically; every output element is one copy, so the result is the same bits for
 * any thread count.  Below them, the kernels that read windows straight from a channels-last image:
 * max pooling (nm_maxpool_nhwc) and the float32 and int8 convolutions (nm_conv_nhwc, nm_qconv_nhwc),
 * which build each block's windows right before its GEMM.  The depthwise convolution is in
 * nm_depthwise.c.
 */
#include <stdlib.h>
#include <string.h>

#include "nm_epilogue.h"
#include "nm_gemm.h"
#include "nm_plan.h"
#include "nm_threads.h"
#include "nm_window_range.h"

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
