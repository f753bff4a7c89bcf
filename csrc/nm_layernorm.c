/* Fused LayerNorm rows (nm_layernorm.h; shared loops and the threading in nm_rows.h). */
#include "nm_rows.h"
#include "nm_layernorm.h"

#define NM_LN_G 8 /* rows whose reductions run interleaved (independent dependency chains) */

/* sum[g] = the N = 1 GEMM v[g, :] @ w for G rows (the GEMM core's order for `kernel`): per K block of
 * kcb a chain acc = fma(v, w, acc) (avx2 microkernel) or acc = acc + v * w (portable microkernel)
 * from acc = 0, blocks added in order (C = C + acc).  centred: v = (x - mu[g])^2 (the centre and
 * square ops, each rounded), else v = x. */
NM_INLINE void ln_dots(const float *x, int64_t n, int G, const float *w, int64_t kcb, const float *mu,
                       int centred, int use_fma, float *sum)
{
    for (int64_t pc = 0; pc < n; pc += kcb) {
        const int64_t pe = pc + kcb < n ? pc + kcb : n;
        float acc[NM_LN_G];
        for (int g = 0; g < G; g++) acc[g] = 0.0f;
        for (int64_t k = pc; k < pe; k++) {
            const float wk = w[k];
            for (int g = 0; g < G; g++) {
                float v = x[g * n + k];
                if (centred) {
                    v = v - mu[g];
                    v = v * v;
                }
#if defined(__GNUC__) || defined(__clang__)
                if (use_fma) acc[g] = __builtin_fmaf(v, wk, acc[g]);
                else
#endif
                {
                    const float t = v * wk;
                    acc[g] = acc[g] + t;
                }
            }
        }
        for (int g = 0; g < G; g++) sum[g] = pc == 0 ? acc[g] : sum[g] + acc[g];
    }
}

NM_INLINE void ln_group(const nm_ln_args *a, int64_t row, int G, int64_t kcb, int use_fma, nm_act_fn act)
{
    const int64_t n = a->n;
    const float *x = a->x + row * n;
    /* zeros: with n == 0 the dots below add nothing, as a GEMM with K = 0 gives 0 */
    float mu[NM_LN_G] = {0}, var[NM_LN_G] = {0}, r[NM_LN_G];
    /* 1. mean = x @ w_mean  (gemm, no epilogue) */
    ln_dots(x, n, G, a->w_mean, kcb, NULL, 0, use_fma, mu);
    /* 2-4. variance: ((x - mean)^2) @ w_var, + eps (bias), rsqrt table */
    ln_dots(x, n, G, a->w_var, kcb, mu, 1, use_fma, var);
    for (int g = 0; g < G; g++) var[g] = var[g] + a->eps;
    act(NM_ACT_PWL, a->rsqrt, NULL, var, r, G);
    for (int g = 0; g < G; g++) {
        const float *restrict xr = x + g * n;
        const float m = mu[g], rr = r[g];
        if (a->mean) a->mean[row + g] = m;
        if (a->rstd) a->rstd[row + g] = rr;
        if (a->c) {
            float *restrict cr = a->c + (row + g) * n;
            for (int64_t j = 0; j < n; j++) cr[j] = xr[j] - m;
        }
        if (a->sq) {
            float *restrict sr = a->sq + (row + g) * n;
            for (int64_t j = 0; j < n; j++) {
                const float c = xr[j] - m;
                sr[j] = c * c;
            }
        }
        /* 5. y = c * r (* gamma) (+ beta)  (scale: row_scale, col_scale, bias) */
        float *restrict yr = a->y + (row + g) * n;
        for (int64_t j = 0; j < n; j++) {
            const float c = xr[j] - m;
            yr[j] = c * rr;
        }
        if (a->gamma) {
            const float *restrict gm = a->gamma;
            for (int64_t j = 0; j < n; j++) yr[j] = yr[j] * gm[j];
        }
        if (a->beta) {
            const float *restrict bt = a->beta;
            for (int64_t j = 0; j < n; j++) yr[j] = yr[j] + bt[j];
        }
    }
}

NM_INLINE void ln_rows_impl(const nm_ln_args *a, int64_t r0, int64_t r1, int64_t kcb, int use_fma,
                            nm_act_fn act)
{
    int64_t row = r0;
    for (; row + NM_LN_G <= r1; row += NM_LN_G) ln_group(a, row, NM_LN_G, kcb, use_fma, act);
    for (; row < r1; row++) ln_group(a, row, 1, kcb, use_fma, act);
}

static void ln_rows_scalar(const nm_ln_args *a, int64_t r0, int64_t r1, int64_t kcb)
{
    ln_rows_impl(a, r0, r1, kcb, 0, nm_act_scalar);
}

#if NM_X86
NM_AVX2 static void ln_rows_avx2(const nm_ln_args *a, int64_t r0, int64_t r1, int64_t kcb)
{
    ln_rows_impl(a, r0, r1, kcb, 1, nm_act_avx2);
}
#endif

typedef struct nm_ln_task_args {
    const nm_ln_args *a;
    int64_t kcb;
    int avx2;
} nm_ln_task_args;

static void nm_ln_range(void *arg, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const nm_ln_task_args *t = (const nm_ln_task_args *)arg;
#if NM_X86
    if (t->avx2) ln_rows_avx2(t->a, r0, r1, t->kcb);
    else
#endif
        ln_rows_scalar(t->a, r0, r1, t->kcb);
}

int nm_layernorm_rows(const nm_ln_args *a, int nthreads, int kernel)
{
    const int k = nm_resolve_kernel(kernel);
    if (!a || !a->x || !a->y || !a->w_mean || !a->w_var || a->rows < 0 || a->n < 1 || k < 0) return NM_EINVAL;
    if (!a->rsqrt || a->rsqrt->n < 1 || a->rsqrt->nhint < 1) return NM_EINVAL;
    const int64_t rows = a->rows, n = a->n;
    if (rows == 0) return NM_OK;
    const int avx2 = NM_X86 && nm_kctx_get(k)->row_simd; /* the AVX2 loops (avx2, avx512) */
    const int64_t kcb = nm_gemm_kcb(k, n);
    const int nt = nm_rows_threads(nthreads, rows * n, NM_ROWS_PAR_MIN, rows);
    nm_ln_task_args ta = {a, kcb, avx2};
    nm_parallel_for(nt, rows, nm_ln_range, &ta);
    return NM_OK;
}
