/* Fused attention softmax rows (nm_softmax.h; shared loops and the threading in nm_rows.h). */
#include "nm_rows.h"
#include "nm_softmax.h"

NM_INLINE void softmax_rows_impl(const float *s, int64_t r0, int64_t r1, int64_t n, int64_t kcb,
                                 const nm_pwl *exp_pwl, const float *exp_rows, const nm_pwl *recip_pwl,
                                 float *m, float *e, float *r, float *p, float *erow, nm_act_fn act)
{
    for (int64_t row = r0; row < r1; row++) {
        const float *restrict x = s + row * n;
        float *restrict er = e ? e + row * n : erow;
        float *restrict pr = p + row * n;
        /* 1. the row max (nm_pairwise_max) */
        const float mx = pmax_row(x, n);
        if (m) m[row] = mx;
        /* 2. e = exp_pwl(x - max)  (scale: res broadcast per row, res_beta = -1) */
        for (int64_t j = 0; j < n; j++) er[j] = x[j] - mx;
        act(NM_ACT_PWL, exp_pwl, exp_rows, er, er, n);
        /* 3. the row-sum GEMM e @ ones: per K block a chain acc + e[k] (fma(e, 1, acc) == the
         *    rounded sum), blocks added in order, then the reciprocal table in the epilogue */
        float sum = 0.0f;
        for (int64_t pc = 0; pc < n; pc += kcb) {
            const int64_t pe = pc + kcb < n ? pc + kcb : n;
            float acc = 0.0f;
            for (int64_t k = pc; k < pe; k++) acc = acc + er[k];
            sum = pc == 0 ? acc : sum + acc;
        }
        const float rr = nm_pwl_s(recip_pwl, sum);
        if (r) r[row] = rr;
        /* 4. p = e * r  (scale: row_scale) */
        for (int64_t j = 0; j < n; j++) pr[j] = er[j] * rr;
    }
}

static void softmax_rows_scalar(const float *s, int64_t r0, int64_t r1, int64_t n, int64_t kcb,
                                const nm_pwl *ep, const float *erows, const nm_pwl *rp, float *m, float *e,
                                float *r, float *p, float *erow)
{
    softmax_rows_impl(s, r0, r1, n, kcb, ep, erows, rp, m, e, r, p, erow, nm_act_scalar);
}

#if NM_X86
NM_AVX2 static void softmax_rows_avx2(const float *s, int64_t r0, int64_t r1, int64_t n, int64_t kcb,
                                      const nm_pwl *ep, const float *erows, const nm_pwl *rp, float *m,
                                      float *e, float *r, float *p, float *erow)
{
    softmax_rows_impl(s, r0, r1, n, kcb, ep, erows, rp, m, e, r, p, erow, nm_act_avx2);
}
#endif

typedef struct nm_softmax_task_args {
    const float *s;
    int64_t n, kcb;
    const nm_pwl *exp_pwl;
    const float *erows;
    const nm_pwl *recip_pwl;
    float *m, *e, *r, *p, *scratch;
    int64_t per;
    int avx2;
} nm_softmax_task_args;

static void nm_softmax_range(void *arg, int64_t r0, int64_t r1, int tid)
{
    const nm_softmax_task_args *a = (const nm_softmax_task_args *)arg;
    float *erow = a->scratch + a->per * tid;
#if NM_X86
    if (a->avx2)
        softmax_rows_avx2(a->s, r0, r1, a->n, a->kcb, a->exp_pwl, a->erows, a->recip_pwl, a->m, a->e, a->r, a->p,
                          erow);
    else
#endif
        softmax_rows_scalar(a->s, r0, r1, a->n, a->kcb, a->exp_pwl, a->erows, a->recip_pwl, a->m, a->e, a->r, a->p,
                            erow);
}

int nm_softmax_rows(const float *s, int64_t rows, int64_t n, const nm_pwl *exp_pwl, const nm_pwl *recip_pwl,
                    float *m, float *e, float *r, float *p, int nthreads, int kernel)
{
    const int k = nm_resolve_kernel(kernel);
    if (!s || !p || rows < 0 || n < 1 || k < 0 || !exp_pwl || !recip_pwl) return NM_EINVAL;
    if (exp_pwl->n < 1 || exp_pwl->nhint < 1 || recip_pwl->n < 1 || recip_pwl->nhint < 1) return NM_EINVAL;
    if (rows == 0) return NM_OK;
    const int avx2 = NM_X86 && nm_kctx_get(k)->row_simd; /* the AVX2 loops (avx2, avx512) */
    const int64_t kcb = nm_gemm_kcb(k, n);
    const int nt = nm_rows_threads(nthreads, rows * n, NM_ROWS_PAR_MIN, rows);
    const int64_t per = (n + 15) / 16 * 16; /* one scratch row per thread (e when not stored) */
    const int64_t rf = avx2 ? nm_pwl_rows_wanted(exp_pwl, rows * n) : 0;
    void *raw = malloc((size_t)(per * nt + rf) * sizeof(float) + 64);
    if (!raw) return NM_ENOMEM;
    float *base = nm_align64(raw);
    float *erows = NULL;
    if (rf) {
        erows = base; /* 64-byte aligned, rf a multiple of 8 floats */
        nm_pwl_rows_build(exp_pwl, erows);
    }
    float *scratch = base + rf;
    nm_softmax_task_args ta = {s, n, kcb, exp_pwl, erows, recip_pwl, m, e, r, p, scratch, per, avx2};
    nm_parallel_for(nt, rows, nm_softmax_range, &ta);
    free(raw);
    return NM_OK;
}
