/* AVX2 + FMA microkernel, 6 x 16.
 *
 * Register budget (16 ymm): 12 accumulators (6 rows x 2 vectors of 8 columns), 2 for the B row
 * of the current depth step, 1 for the broadcast A element.  Zen 2/3/4 have two 256-bit FMA pipes
 * with 4-5 cycle latency, so >= 10 independent FMAs are needed in flight; 12 chains keep both
 * pipes busy.  Per depth step: 2 aligned B loads + 6 broadcasts feed 12 FMAs (loads < 2/cycle).
 *
 * The epilogue runs on the accumulators after the last K block, before the only store of the
 * tile.  Edge tiles, strided C (csc != 1) and strided residuals go through a 6 x 16 stack buffer
 * and the shared finisher with the same float operations (nm_tile_finish + nm_act_avx2).
 */
#include "nm_pwl_avx2.h"
#include "nm_ukernel.h"

#if NM_X86

#if defined(__GNUC__) || defined(__clang__)
#define NM_ALIGN64 __attribute__((aligned(64)))
#else
#define NM_ALIGN64
#endif

#define FMA_ROW(oa, i)                                               \
    do {                                                             \
        const __m256 ai = _mm256_broadcast_ss(a + (oa) * acs + (i) * ars); \
        c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);                  \
        c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1);                  \
    } while (0)

/* one depth step: A element offset oa, B offset ob within the current unrolled group */
#define STEP(oa, ob)                                                 \
    do {                                                             \
        const __m256 b0 = _mm256_load_ps(b + (ob));                  \
        const __m256 b1 = _mm256_load_ps(b + (ob) + 8);              \
        FMA_ROW(oa, 0); FMA_ROW(oa, 1); FMA_ROW(oa, 2);              \
        FMA_ROW(oa, 3); FMA_ROW(oa, 4); FMA_ROW(oa, 5);              \
    } while (0)

typedef struct ep_v {
    __m256 bc0, bc1;
    nm_pwl_v pwl;
} ep_v;

/* One row of a full tile before the last K block: C = acc or C = C + acc (csc == 1). */
NM_AVX2 NM_INLINE void store_row(int i, __m256 x0, __m256 x1, float *c, ptrdiff_t rsc,
                                 const nm_tile_ctx *t)
{
    float *cr = c + i * rsc;
    if (t->load_c) {
        x0 = _mm256_add_ps(_mm256_loadu_ps(cr), x0);
        x1 = _mm256_add_ps(_mm256_loadu_ps(cr + 8), x1);
    }
    _mm256_storeu_ps(cr, x0);
    _mm256_storeu_ps(cr + 8, x1);
}

/* One row of a full tile after the last K block: combine with C, epilogue, store
 * (csc == 1, res_cs in {0, 1}). */
NM_AVX2 NM_INLINE void finish_row(int i, __m256 x0, __m256 x1, float *c, ptrdiff_t rsc,
                                  const nm_tile_ctx *t, const ep_v *e, const float *cin, ptrdiff_t rscin)
{
    float *cr = c + i * rsc;
    if (t->load_c) {
        const float *ci = cin + i * rscin; /* the earlier K blocks' sum (C itself, read before any store) */
        x0 = _mm256_add_ps(_mm256_loadu_ps(ci), x0);
        x1 = _mm256_add_ps(_mm256_loadu_ps(ci + 8), x1);
    }
    {
        if (t->bias_col) {
            x0 = _mm256_add_ps(x0, e->bc0);
            x1 = _mm256_add_ps(x1, e->bc1);
        }
        if (t->bias_row) {
            const __m256 br = _mm256_broadcast_ss(t->bias_row + i);
            x0 = _mm256_add_ps(x0, br);
            x1 = _mm256_add_ps(x1, br);
        }
        if (t->res) {
            const float *r = t->res + i * t->res_rs;
            if (t->res_cs == 1) {
                x0 = _mm256_add_ps(x0, _mm256_loadu_ps(r));
                x1 = _mm256_add_ps(x1, _mm256_loadu_ps(r + 8));
            } else {
                const __m256 rv = _mm256_broadcast_ss(r);
                x0 = _mm256_add_ps(x0, rv);
                x1 = _mm256_add_ps(x1, rv);
            }
        }
        if (t->act == NM_ACT_RELU) {
            x0 = nm_relu_v(x0);
            x1 = nm_relu_v(x1);
        } else if (t->act == NM_ACT_PWL) {
            x0 = nm_pwl_v_eval(&e->pwl, x0);
            x1 = nm_pwl_v_eval(&e->pwl, x1);
        }
    }
    _mm256_storeu_ps(cr, x0);
    _mm256_storeu_ps(cr + 8, x1);
}

/* A full 6 x 16 tile after its last K block: buf (row stride 16, 32-byte aligned) holds the sums;
 * combine with C / bias / residual, apply the epilogue, store (csc == 1, res_cs in {0, 1}). */
NM_AVX2 __attribute__((noinline)) static void nm_avx2_finish_full(float *buf, float *c, ptrdiff_t rsc,
                                                                  const nm_tile_ctx *t)
{
    ep_v e;
    e.bc0 = e.bc1 = _mm256_setzero_ps();
    if (t->bias_col) {
        e.bc0 = _mm256_loadu_ps(t->bias_col);
        e.bc1 = _mm256_loadu_ps(t->bias_col + 8);
    }
    if (t->act == NM_ACT_PWL && t->reg && t->reg->ok8) {
        /* register-form table: the combined tile back into the buffer (row i is read before it
         * is written), then one pass evaluates and stores it */
        if (t->load_c || t->bias_col || t->bias_row || t->res) { /* else buf holds x already */
            nm_tile_ctx tn = *t;
            tn.act = NM_ACT_NONE;
            for (int i = 0; i < NM_AVX2_MR; i++)
                finish_row(i, _mm256_load_ps(buf + 16 * i), _mm256_load_ps(buf + 16 * i + 8), buf, NM_AVX2_NR, &tn,
                           &e, c, rsc);
        }
        nm_pwl_v8 v;
        nm_pwl_v8_init(&v, t->pwl, t->reg);
        nm_pwl_v8_block16(&v, buf, NM_AVX2_MR, c, rsc);
        return;
    }
    if (t->act == NM_ACT_PWL) nm_pwl_v_init(&e.pwl, t->pwl, t->rows);
    else memset(&e.pwl, 0, sizeof e.pwl);
    for (int i = 0; i < NM_AVX2_MR; i++)
        finish_row(i, _mm256_load_ps(buf + 16 * i), _mm256_load_ps(buf + 16 * i + 8), c, rsc, t, &e, c, rsc);
}

/* The kernel body for A element (i, p) at a[i * ars + p * acs]: packed micro-panels (ars 1, acs 6,
 * constants after inlining) or a row-major A read in place (ars = row stride, acs 1). */
NM_AVX2 NM_INLINE void nm_ukr_avx2_body(int64_t kc, const float *a, ptrdiff_t ars, ptrdiff_t acs, const float *b,
                                        float *c, ptrdiff_t rsc, ptrdiff_t csc, int m, int n, const nm_tile_ctx *t)
{
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

    const int fast = (m == NM_AVX2_MR && n == NM_AVX2_NR && csc == 1 &&
                      (!t->last || !t->res || t->res_cs == 0 || t->res_cs == 1));
    if (fast) {
        for (int i = 0; i < NM_AVX2_MR; i++) {
            _mm_prefetch((const char *)(c + i * rsc), _MM_HINT_T0);
            _mm_prefetch((const char *)(c + i * rsc + NM_AVX2_NR - 1), _MM_HINT_T0);
        }
    }

    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        if (acs == NM_AVX2_MR) _mm_prefetch((const char *)(a + 96), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 256), _MM_HINT_T0);
        STEP(0, 0);
        STEP(1, 16);
        STEP(2, 32);
        STEP(3, 48);
        a += 4 * acs;
        b += 64;
    }
    for (; p < kc; p++) {
        STEP(0, 0);
        a += acs;
        b += 16;
    }

    if (fast && !t->last) {
        store_row(0, c00, c01, c, rsc, t);
        store_row(1, c10, c11, c, rsc, t);
        store_row(2, c20, c21, c, rsc, t);
        store_row(3, c30, c31, c, rsc, t);
        store_row(4, c40, c41, c, rsc, t);
        store_row(5, c50, c51, c, rsc, t);
        return;
    }
    /* after the last K block (or an edge tile): the sums go through an L1 buffer to a separate
     * finisher, so this function's code (the K loop's placement, the registers it gets) is the
     * same whatever the epilogue variants compile to; the K loop's speed moved by ~2% with them */
    _Alignas(32) float buf[NM_AVX2_MR * NM_AVX2_NR];
    _mm256_store_ps(buf + 0, c00); _mm256_store_ps(buf + 8, c01);
    _mm256_store_ps(buf + 16, c10); _mm256_store_ps(buf + 24, c11);
    _mm256_store_ps(buf + 32, c20); _mm256_store_ps(buf + 40, c21);
    _mm256_store_ps(buf + 48, c30); _mm256_store_ps(buf + 56, c31);
    _mm256_store_ps(buf + 64, c40); _mm256_store_ps(buf + 72, c41);
    _mm256_store_ps(buf + 80, c50); _mm256_store_ps(buf + 88, c51);
    if (fast) nm_avx2_finish_full(buf, c, rsc, t);
    else nm_tile_finish(buf, NM_AVX2_NR, m, n, c, rsc, csc, t, nm_act_avx2);
}

/* 64-byte aligned entry points: the K loop then sits at the same offset from a cache-line (and
 * uop-cache window) boundary whatever the link layout of the rest of the library (its speed moved
 * by ~2% with the layout). */
NM_AVX2 NM_ALIGN64 void nm_ukr_avx2(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc,
                         ptrdiff_t csc, int m, int n, const nm_tile_ctx *t)
{
    nm_ukr_avx2_body(kc, a, 1, NM_AVX2_MR, b, c, rsc, csc, m, n, t);
}

NM_AVX2 NM_ALIGN64 void nm_ukr_avx2_direct(int64_t kc, const float *a, ptrdiff_t lda, const float *b, float *c,
                                ptrdiff_t rsc, ptrdiff_t csc, int n, const nm_tile_ctx *t)
{
    nm_ukr_avx2_body(kc, a, lda, 1, b, c, rsc, csc, NM_AVX2_MR, n, t);
}

/* One row of A (the first row of a packed micro-panel) against np <= 4 consecutive B micro-panels
 * (bstride floats apart): acc[q * NR + j] = the same FMA chain over p as in nm_ukr_avx2, with 2 * np
 * independent chains instead of the 12 (mostly zero-row) chains of a full tile. */
NM_AVX2 void nm_ukr_avx2_row1(int64_t kc, const float *a, const float *b, ptrdiff_t bstride, int np,
                              float *acc)
{
    nm_ukr_avx2_row1s(kc, a, NM_AVX2_MR, b, bstride, np, acc);
}

NM_AVX2 void nm_ukr_avx2_row1s(int64_t kc, const float *a, ptrdiff_t csa, const float *b, ptrdiff_t bstride,
                               int np, float *acc)
{
    __m256 c[8];
    for (int q = 0; q < 8; q++) c[q] = _mm256_setzero_ps();
    if (np == 4) {
        const float *b1 = b + bstride, *b2 = b + 2 * bstride, *b3 = b + 3 * bstride;
        for (int64_t p = 0; p < kc; p++) {
            const __m256 ai = _mm256_broadcast_ss(a + p * csa);
            const int64_t o = p * NM_AVX2_NR;
            c[0] = _mm256_fmadd_ps(ai, _mm256_load_ps(b + o), c[0]);
            c[1] = _mm256_fmadd_ps(ai, _mm256_load_ps(b + o + 8), c[1]);
            c[2] = _mm256_fmadd_ps(ai, _mm256_load_ps(b1 + o), c[2]);
            c[3] = _mm256_fmadd_ps(ai, _mm256_load_ps(b1 + o + 8), c[3]);
            c[4] = _mm256_fmadd_ps(ai, _mm256_load_ps(b2 + o), c[4]);
            c[5] = _mm256_fmadd_ps(ai, _mm256_load_ps(b2 + o + 8), c[5]);
            c[6] = _mm256_fmadd_ps(ai, _mm256_load_ps(b3 + o), c[6]);
            c[7] = _mm256_fmadd_ps(ai, _mm256_load_ps(b3 + o + 8), c[7]);
        }
    } else {
        for (int64_t p = 0; p < kc; p++) {
            const __m256 ai = _mm256_broadcast_ss(a + p * csa);
            const int64_t o = p * NM_AVX2_NR;
            for (int q = 0; q < np; q++) {
                c[2 * q] = _mm256_fmadd_ps(ai, _mm256_load_ps(b + q * bstride + o), c[2 * q]);
                c[2 * q + 1] = _mm256_fmadd_ps(ai, _mm256_load_ps(b + q * bstride + o + 8), c[2 * q + 1]);
            }
        }
    }
    for (int q = 0; q < 2 * np; q++) _mm256_storeu_ps(acc + 8 * q, c[q]);
}

#else
typedef int nm_ukernel_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
