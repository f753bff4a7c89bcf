/* The diagonal GEMM ("scale") (nm_scale.h; shared loops and the threading in nm_rows.h). */
#include "nm_rows.h"
#include "nm_scale.h"

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
    const int nt = nm_rows_threads(nthreads, rows * n, NM_ROWS_PAR_MIN, rows);
    nm_scale_task_args ta = {a, y, res_how, avx2, pwl_rows};
    nm_parallel_for(nt, rows, nm_scale_range, &ta);
    free(raw);
    return NM_OK;
}
