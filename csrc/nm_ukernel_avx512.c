/* AVX-512 microkernel, 14 x 32 (NM_AVX512_MR x NM_AVX512_NR).
 *
 * Register budget (32 zmm): 28 accumulators (14 rows x 2 vectors of 16 columns), 2 for the B row of
 * the current depth step; the A element is an embedded broadcast operand of the FMA
 * (vfmadd231ps zmm, zmm, m32{1to16}), so it needs no register.  Per depth step 2 aligned B loads and
 * 14 broadcast loads feed 28 FMAs: with two 512-bit FMA pipes (4-cycle latency, so >= 8 chains in
 * flight) that is 14 cycles for 16 loads, well under the two load ports.  14 x 32 maximises the
 * flops per loaded byte among the tiles that fit (12 x 32 reads 17% more A+B per flop; 8 x 48
 * wastes more of the M edge and 48 is not a power of two for the N edge).
 *
 * Each element is one FMA chain over p ascending within the K block, exactly as in the AVX2 kernel,
 * so with the same K blocking both give the same bits.  The epilogue (nm_pwl_avx512.h) runs on the
 * accumulators after the last K block, before the only store.  Edge tiles and strided C go through
 * a stack buffer with the same float operations.
 */
#include "nm_pwl_avx512.h"
#include "nm_ukernel.h"

#if NM_X86

#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)

#define DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define FMA(i)                                                       \
    {                                                                \
        const __m512 ai = _mm512_set1_ps(a[(i)]);                    \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                  \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);                  \
    }
#define STEP()                                                       \
    do {                                                             \
        const __m512 b0 = _mm512_load_ps(b);                         \
        const __m512 b1 = _mm512_load_ps(b + 16);                    \
        ROWS(FMA)                                                    \
        a += NM_AVX512_MR;                                           \
        b += NM_AVX512_NR;                                           \
    } while (0)

typedef struct ep_z {
    __m512 bc0, bc1;
    nm_pwl_z pwl;
} ep_z;

/* One row of a full tile: combine with C, and after the last K block apply the epilogue; store
 * (csc == 1, res_cs in {0, 1}). */
NM_AVX512 NM_INLINE void row_out(int i, __m512 x0, __m512 x1, float *c, ptrdiff_t rsc, const nm_tile_ctx *t,
                                 const ep_z *e)
{
    float *cr = c + i * rsc;
    if (t->load_c) {
        x0 = _mm512_add_ps(_mm512_loadu_ps(cr), x0);
        x1 = _mm512_add_ps(_mm512_loadu_ps(cr + 16), x1);
    }
    if (t->last) {
        if (t->bias_col) {
            x0 = _mm512_add_ps(x0, e->bc0);
            x1 = _mm512_add_ps(x1, e->bc1);
        }
        if (t->bias_row) {
            const __m512 br = _mm512_set1_ps(t->bias_row[i]);
            x0 = _mm512_add_ps(x0, br);
            x1 = _mm512_add_ps(x1, br);
        }
        if (t->res) {
            const float *r = t->res + i * t->res_rs;
            if (t->res_cs == 1) {
                x0 = _mm512_add_ps(x0, _mm512_loadu_ps(r));
                x1 = _mm512_add_ps(x1, _mm512_loadu_ps(r + 16));
            } else {
                const __m512 rv = _mm512_set1_ps(r[0]);
                x0 = _mm512_add_ps(x0, rv);
                x1 = _mm512_add_ps(x1, rv);
            }
        }
        if (t->act == NM_ACT_RELU) {
            x0 = nm_relu_z(x0);
            x1 = nm_relu_z(x1);
        } else if (t->act == NM_ACT_PWL) {
            x0 = nm_pwl_z_eval(&e->pwl, x0);
            x1 = nm_pwl_z_eval(&e->pwl, x1);
        }
    }
    _mm512_storeu_ps(cr, x0);
    _mm512_storeu_ps(cr + 16, x1);
}

/* Edge tile (m < MR or n < NR) or strided C / residual: the scalar combination of nm_tile_finish,
 * then the vector activation with this call's register table. */
NM_AVX512 static void finish_edge(const float *acc, int m, int n, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                                  const nm_tile_ctx *t)
{
    _Alignas(64) float x[NM_AVX512_NR];
    for (int i = 0; i < m; i++) {
        float *cr = c + i * rsc;
        const float *ar = acc + (ptrdiff_t)i * NM_AVX512_NR;
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
        if (t->last && t->act != NM_ACT_NONE) nm_act_avx512_reg(t->act, t->pwl, t->reg, t->rows, x, x, n);
        for (int j = 0; j < n; j++) cr[j * csc] = x[j];
    }
}

NM_AVX512 void nm_ukr_avx512(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc,
                             ptrdiff_t csc, int m, int n, const nm_tile_ctx *t)
{
    ROWS(DECL)
    const int fast = (m == NM_AVX512_MR && n == NM_AVX512_NR && csc == 1 &&
                      (!t->last || !t->res || t->res_cs == 0 || t->res_cs == 1));
    int64_t p = 0;
    for (; p + 4 <= kc; p += 4) {
        _mm_prefetch((const char *)(b + 512), _MM_HINT_T0);
        _mm_prefetch((const char *)(b + 528), _MM_HINT_T0);
        STEP();
        _mm_prefetch((const char *)(a + 224), _MM_HINT_T0);
        STEP();
        STEP();
        STEP();
    }
    for (; p < kc; p++) STEP();

    if (fast) {
        ep_z e;
        e.bc0 = e.bc1 = _mm512_setzero_ps();
        if (t->last) {
            if (t->bias_col) {
                e.bc0 = _mm512_loadu_ps(t->bias_col);
                e.bc1 = _mm512_loadu_ps(t->bias_col + 16);
            }
            if (t->act == NM_ACT_PWL) nm_pwl_z_init(&e.pwl, t->pwl, t->reg, t->rows);
        }
#define OUT(i) row_out(i, c##i##0, c##i##1, c, rsc, t, &e);
        ROWS(OUT)
#undef OUT
    } else {
        _Alignas(64) float buf[NM_AVX512_MR * NM_AVX512_NR];
#define SAVE(i)                                                      \
        _mm512_store_ps(buf + (i) * NM_AVX512_NR, c##i##0);          \
        _mm512_store_ps(buf + (i) * NM_AVX512_NR + 16, c##i##1);
        ROWS(SAVE)
#undef SAVE
        finish_edge(buf, m, n, c, rsc, csc, t);
    }
}

#else
typedef int nm_ukernel_avx512_unused; /* ISO C forbids an empty translation unit */
#endif
