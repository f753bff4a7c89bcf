/* Row-wise ops (nm_rowops.h): the fused diagonal GEMM and the pairwise-max tree.
 *
 * One row at a time: the row (<= a few KiB) stays in L1 while each factor/term is applied in its
 * own short loop, so the data is read once and written once whatever the number of terms.  The
 * element loops are plain C compiled twice, for the portable path and with the avx2 target
 * attribute (the compiler vectorizes both; -ffp-contract=off keeps every multiply and add a
 * separate IEEE operation, so both give the same bits as numpy).  Rows are split among the pool's
 * threads (nm_threads.h) statically; every element's operations are independent of the split.
 */
#include <stdlib.h>
#include <string.h>

#include "nm_gemm.h"
#include "nm_gemm_ctx.h"
#include "nm_pwl_avx2.h"
#include "nm_rowops.h"
#include "nm_threads.h"

#define NM_ROWOPS_PAR_MIN 32768 /* elements below which one thread does everything */

/* Threads for `rows` rows holding `work` units: one below `min_work`, at most one per row. */
static int nm_rowops_threads(int nthreads, int64_t work, int64_t min_work, int64_t rows)
{
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    if (work < min_work) nt = 1;
    if (nt > rows) nt = (int)(rows < 1 ? 1 : rows);
    return nt;
}

/* The GEMM's K block for this kernel and K = n (nm_gemm.c: ceil(K / kc) equal blocks). */
static int64_t nm_gemm_kcb(int kernel, int64_t n)
{
    const int64_t kc = nm_kctx_get(kernel)->bk.kc;
    const int64_t nkb = (n + kc - 1) / kc;
    return (n + nkb - 1) / nkb;
}

/* Floats of the derived PWL rows worth building for `elems` outputs (several outputs per bin), else 0. */
static int64_t nm_pwl_rows_wanted(const nm_pwl *pwl, int64_t elems)
{
    const int64_t f = nm_pwl_rows_floats(pwl);
    return f > 0 && elems >= 4 * (int64_t)pwl->nhint ? f : 0;
}

/* raw rounded up to a 64-byte boundary (raw allocated with 64 bytes to spare) */
static float *nm_align64(void *raw)
{
    return (float *)(((uintptr_t)raw + 63) & ~(uintptr_t)63);
}

/* ---- scale -------------------------------------------------------------------------------- */

NM_INLINE void mul_op(float *restrict y, const nm_operand *o, int64_t r, int64_t n)
{
    switch (o->mode) {
    case NM_BC_FULL: {
        const float *restrict v = o->p + r * n;
        for (int64_t j = 0; j < n; j++) y[j] = y[j] * v[j];
        break;
    }
    case NM_BC_COL: {
        const float *restrict v = o->p;
        for (int64_t j = 0; j < n; j++) y[j] = y[j] * v[j];
        break;
    }
    case NM_BC_ROW:
    case NM_BC_SCALAR: {
        const float s = o->mode == NM_BC_ROW ? o->p[r] : o->p[0];
        for (int64_t j = 0; j < n; j++) y[j] = y[j] * s;
        break;
    }
    default: break;
    }
}

/* y = y + sign * v  for sign = +1 (add) or -1 (subtract), or y = y + (rb * v) when scaled */
NM_INLINE void add_op(float *restrict y, const nm_operand *o, int64_t r, int64_t n, int how, float rb)
{
    const float *restrict v;
    float s;
    switch (o->mode) {
    case NM_BC_FULL: v = o->p + r * n; break;
    case NM_BC_COL: v = o->p; break;
    case NM_BC_ROW: s = o->p[r]; goto scalar;
    case NM_BC_SCALAR: s = o->p[0]; goto scalar;
    default: return;
    }
    if (how == 0) {
        for (int64_t j = 0; j < n; j++) y[j] = y[j] + v[j];
    } else if (how == 1) {
        for (int64_t j = 0; j < n; j++) y[j] = y[j] - v[j];
    } else {
        for (int64_t j = 0; j < n; j++) {
            const float t = rb * v[j];
            y[j] = y[j] + t;
        }
    }
    return;
scalar:
    if (how == 1) {
        for (int64_t j = 0; j < n; j++) y[j] = y[j] - s;
    } else {
        if (how == 2) s = rb * s;
        for (int64_t j = 0; j < n; j++) y[j] = y[j] + s;
    }
}

NM_INLINE void scale_rows_impl(const nm_scale_args *a, float *y, int64_t r0, int64_t r1, int res_how,
                               nm_act_fn act, const float *pwl_rows)
{
    const int64_t n = a->n;
    for (int64_t r = r0; r < r1; r++) {
        const float *restrict x = a->x + r * n;
        float *restrict yr = y + r * n;
        if (a->has_alpha) {
            const float al = a->alpha;
            for (int64_t j = 0; j < n; j++) yr[j] = x[j] * al;
        } else if (x != yr) {
            memcpy(yr, x, (size_t)n * sizeof(float));
        }
        mul_op(yr, &a->mul, r, n);
        mul_op(yr, &a->row_scale, r, n);
        mul_op(yr, &a->col_scale, r, n);
        if (a->has_beta) {
            const float b = a->beta;
            for (int64_t j = 0; j < n; j++) yr[j] = yr[j] + b;
        }
        add_op(yr, &a->bias, r, n, 0, 0.0f);
        add_op(yr, &a->bias_row, r, n, 0, 0.0f);
        add_op(yr, &a->res, r, n, res_how, a->res_beta);
        if (a->act != NM_ACT_NONE) act(a->act, a->pwl, pwl_rows, yr, yr, n);
    }
}

static void scale_rows_scalar(const nm_scale_args *a, float *y, int64_t r0, int64_t r1, int res_how,
                              const float *pwl_rows)
{
    scale_rows_impl(a, y, r0, r1, res_how, nm_act_scalar, pwl_rows);
}

#if NM_X86
NM_AVX2 static void scale_rows_avx2(const nm_scale_args *a, float *y, int64_t r0, int64_t r1, int res_how,
                                    const float *pwl_rows)
{
    scale_rows_impl(a, y, r0, r1, res_how, nm_act_avx2, pwl_rows);
}
#endif

typedef struct nm_scale_task_args {
    const nm_scale_args *a;
    float *y;
    int res_how, avx2;
    const float *pwl_rows;
} nm_scale_task_args;

static void nm_scale_range(void *arg, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const nm_scale_task_args *t = (const nm_scale_task_args *)arg;
#if NM_X86
    if (t->avx2) scale_rows_avx2(t->a, t->y, r0, r1, t->res_how, t->pwl_rows);
    else
#endif
        scale_rows_scalar(t->a, t->y, r0, r1, t->res_how, t->pwl_rows);
}

static int nm_operand_ok(const nm_operand *o)
{
    if (o->mode == NM_BC_NONE) return 1;
    return o->p != NULL && o->mode >= NM_BC_FULL && o->mode <= NM_BC_SCALAR;
}

int nm_scale(const nm_scale_args *a, float *y, int nthreads, int kernel)
{
    const int k = nm_resolve_kernel(kernel);
    if (!a || !y || !a->x || a->rows < 0 || a->n < 0 || k < 0) return NM_EINVAL;
    if (a->act != NM_ACT_NONE && a->act != NM_ACT_RELU && a->act != NM_ACT_PWL) return NM_EINVAL;
    if (a->act == NM_ACT_PWL && (!a->pwl || a->pwl->n < 1 || a->pwl->nhint < 1)) return NM_EINVAL;
    if (!nm_operand_ok(&a->mul) || !nm_operand_ok(&a->row_scale) || !nm_operand_ok(&a->col_scale) ||
        !nm_operand_ok(&a->bias) || !nm_operand_ok(&a->bias_row) || !nm_operand_ok(&a->res))
        return NM_EINVAL;
    const int64_t rows = a->rows, n = a->n;
    if (rows == 0 || n == 0) return NM_OK;
    const int res_how = a->res_beta == 1.0f ? 0 : (a->res_beta == -1.0f ? 1 : 2);
    const int avx2 = NM_X86 && nm_kctx_get(k)->row_simd; /* the AVX2 loops (avx2, avx512) */

    /* derived PWL rows (avx2 only), worth it with several outputs per bin */
    void *raw = NULL;
    float *pwl_rows = NULL;
    if (avx2 && a->act == NM_ACT_PWL) {
        const int64_t f = nm_pwl_rows_wanted(a->pwl, rows * n);
        if (f > 0) {
            raw = malloc((size_t)f * sizeof(float) + 64);
            if (!raw) return NM_ENOMEM;
            pwl_rows = nm_align64(raw);
            nm_pwl_rows_build(a->pwl, pwl_rows);
        }
    }
    const int nt = nm_rowops_threads(nthreads, rows * n, NM_ROWOPS_PAR_MIN, rows);
    nm_scale_task_args ta = {a, y, res_how, avx2, pwl_rows};
    nm_parallel_for(nt, rows, nm_scale_range, &ta);
    free(raw);
    return NM_OK;
}

/* ---- pairwise max -------------------------------------------------------------------------- */

/* One tree level: lo[i] = relu(lo[i] - hi[i]) + hi[i] for i < h (numpy: d = a - b; max(d, 0); d += b) */
NM_INLINE void pmax_level(float *restrict dst, const float *restrict a, const float *restrict b, int64_t h)
{
    for (int64_t i = 0; i < h; i++) {
        float d = a[i] - b[i];
        d = (0.0f > d) ? 0.0f : d; /* np.maximum(d, 0): NaN propagates */
        dst[i] = d + b[i];
    }
}

/* The max of the row x[0, n) (n >= 1) by the halving tree: pairs (i, i + h), h = m / 2 of the m
 * values left, an odd last value carried; t is scratch of (n + 1) / 2 floats. */
NM_INLINE float pmax_tree(const float *x, int64_t n, float *t)
{
    if (n == 1) return x[0];
    /* first level straight from x into the scratch row */
    int64_t h = n / 2, m;
    pmax_level(t, x, x + h, h);
    if (n & 1) t[h] = x[2 * h];
    m = h + (n & 1);
    while (m > 1) {
        h = m / 2;
        /* in place: writes [0, h) read [0, h) and [h, 2h) */
        for (int64_t i = 0; i < h; i++) {
            float d = t[i] - t[i + h];
            d = (0.0f > d) ? 0.0f : d;
            t[i] = d + t[i + h];
        }
        if (m & 1) t[h] = t[2 * h];
        m = h + (m & 1);
    }
    return t[0];
}

NM_INLINE void pmax_rows_impl(const float *x, int64_t r0, int64_t r1, int64_t n, float *y, float *t)
{
    for (int64_t r = r0; r < r1; r++) y[r] = pmax_tree(x + r * n, n, t);
}

static void pmax_rows_scalar(const float *x, int64_t r0, int64_t r1, int64_t n, float *y, float *t)
{
    pmax_rows_impl(x, r0, r1, n, y, t);
}

#if NM_X86
NM_AVX2 static void pmax_rows_avx2(const float *x, int64_t r0, int64_t r1, int64_t n, float *y, float *t)
{
    pmax_rows_impl(x, r0, r1, n, y, t);
}
#endif

typedef struct nm_pmax_task_args {
    const float *x;
    int64_t n;
    float *y, *scratch;
    int64_t half;
    int avx2;
} nm_pmax_task_args;

static void nm_pmax_range(void *arg, int64_t r0, int64_t r1, int tid)
{
    const nm_pmax_task_args *a = (const nm_pmax_task_args *)arg;
    float *t = a->scratch + a->half * tid;
#if NM_X86
    if (a->avx2) pmax_rows_avx2(a->x, r0, r1, a->n, a->y, t);
    else
#endif
        pmax_rows_scalar(a->x, r0, r1, a->n, a->y, t);
}

int nm_pairwise_max(const float *x, int64_t rows, int64_t n, float *y, int nthreads, int kernel)
{
    const int k = nm_resolve_kernel(kernel);
    if (!x || !y || rows < 0 || n < 1 || k < 0) return NM_EINVAL;
    if (rows == 0) return NM_OK;
    const int avx2 = NM_X86 && nm_kctx_get(k)->row_simd; /* the AVX2 loops (avx2, avx512) */
    const int nt = nm_rowops_threads(nthreads, rows * n, NM_ROWOPS_PAR_MIN, rows);
    const int64_t half = (n + 1) / 2;
    float *scratch = (float *)malloc((size_t)(half * nt) * sizeof(float));
    if (!scratch) return NM_ENOMEM;
    nm_pmax_task_args ta = {x, n, y, scratch, half, avx2};
    nm_parallel_for(nt, rows, nm_pmax_range, &ta);
    free(scratch);
    return NM_OK;
}

/* ---- fused attention softmax rows ----------------------------------------------------------- */

NM_INLINE void softmax_rows_impl(const float *s, int64_t r0, int64_t r1, int64_t n, int64_t kcb,
                                 const nm_pwl *exp_pwl, const float *exp_rows, const nm_pwl *recip_pwl,
                                 float *m, float *e, float *r, float *p, float *t, float *erow,
                                 nm_act_fn act)
{
    for (int64_t row = r0; row < r1; row++) {
        const float *restrict x = s + row * n;
        float *restrict er = e ? e + row * n : erow;
        float *restrict pr = p + row * n;
        /* 1. the pairwise-max tree (nm_pairwise_max) */
        const float mx = pmax_tree(x, n, t);
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
                                float *r, float *p, float *t, float *erow)
{
    softmax_rows_impl(s, r0, r1, n, kcb, ep, erows, rp, m, e, r, p, t, erow, nm_act_scalar);
}

#if NM_X86
NM_AVX2 static void softmax_rows_avx2(const float *s, int64_t r0, int64_t r1, int64_t n, int64_t kcb,
                                      const nm_pwl *ep, const float *erows, const nm_pwl *rp, float *m,
                                      float *e, float *r, float *p, float *t, float *erow)
{
    softmax_rows_impl(s, r0, r1, n, kcb, ep, erows, rp, m, e, r, p, t, erow, nm_act_avx2);
}
#endif

typedef struct nm_softmax_task_args {
    const float *s;
    int64_t n, kcb;
    const nm_pwl *exp_pwl;
    const float *erows;
    const nm_pwl *recip_pwl;
    float *m, *e, *r, *p, *scratch;
    int64_t per, half;
    int avx2;
} nm_softmax_task_args;

static void nm_softmax_range(void *arg, int64_t r0, int64_t r1, int tid)
{
    const nm_softmax_task_args *a = (const nm_softmax_task_args *)arg;
    float *t = a->scratch + a->per * tid, *erow = t + a->half;
#if NM_X86
    if (a->avx2)
        softmax_rows_avx2(a->s, r0, r1, a->n, a->kcb, a->exp_pwl, a->erows, a->recip_pwl, a->m, a->e, a->r, a->p, t,
                          erow);
    else
#endif
        softmax_rows_scalar(a->s, r0, r1, a->n, a->kcb, a->exp_pwl, a->erows, a->recip_pwl, a->m, a->e, a->r, a->p,
                            t, erow);
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
    const int nt = nm_rowops_threads(nthreads, rows * n, NM_ROWOPS_PAR_MIN, rows);
    const int64_t half = (n + 1) / 2, per = (half + n + 15) / 16 * 16;
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
    nm_softmax_task_args ta = {s, n, kcb, exp_pwl, erows, recip_pwl, m, e, r, p, scratch, per, half, avx2};
    nm_parallel_for(nt, rows, nm_softmax_range, &ta);
    free(raw);
    return NM_OK;
}

/* ---- fused LayerNorm rows ------------------------------------------------------------------- */

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
    float mu[NM_LN_G], var[NM_LN_G], r[NM_LN_G];
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
    const int nt = nm_rowops_threads(nthreads, rows * n, NM_ROWOPS_PAR_MIN, rows);
    nm_ln_task_args ta = {a, kcb, avx2};
    nm_parallel_for(nt, rows, nm_ln_range, &ta);
    return NM_OK;
}

/* ---- token scatter / gather ----------------------------------------------------------------- */

/* Output rows [o0, o1) of a scatter (unpack) or gather (pack); src row of output row o is the
 * number of mask entries set before o. */
static void nm_rows_move(const char *src, char *dst, const unsigned char *mask, const unsigned char *zero,
                         int64_t o0, int64_t o1, int64_t rowbytes, int unpack)
{
    int64_t s = 0;
    for (int64_t o = 0; o < o0; o++) s += mask[o] != 0;
    for (int64_t o = o0; o < o1; o++) {
        if (mask[o]) {
            if (unpack) memcpy(dst + o * rowbytes, src + s * rowbytes, (size_t)rowbytes);
            else memcpy(dst + s * rowbytes, src + o * rowbytes, (size_t)rowbytes);
            s++;
        } else if (unpack && !(zero && zero[o])) {
            memset(dst + o * rowbytes, 0, (size_t)rowbytes);
        }
    }
}

typedef struct nm_move_task_args {
    const char *src;
    char *dst;
    const unsigned char *mask, *zero;
    int64_t rowbytes;
    int unpack;
} nm_move_task_args;

static void nm_move_range(void *arg, int64_t o0, int64_t o1, int tid)
{
    (void)tid;
    const nm_move_task_args *a = (const nm_move_task_args *)arg;
    nm_rows_move(a->src, a->dst, a->mask, a->zero, o0, o1, a->rowbytes, a->unpack);
}

int nm_move_rows(const void *src, void *dst, const unsigned char *mask, const unsigned char *zero, int64_t rows,
                 int64_t rowbytes, int unpack, int nthreads)
{
    if (!src || !dst || !mask || rows < 0 || rowbytes < 0) return NM_EINVAL;
    if (rows == 0 || rowbytes == 0) return NM_OK;
    const int nt = nm_rowops_threads(nthreads, rows * rowbytes, (int64_t)1 << 22, rows);
    nm_move_task_args ta = {(const char *)src, (char *)dst, mask, zero, rowbytes, unpack};
    nm_parallel_for(nt, rows, nm_move_range, &ta);
    return NM_OK;
}
