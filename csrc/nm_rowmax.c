/* The lane-folded row max (nm_rowmax.h; shared loops and the threading in nm_rows.h). */
#include "nm_rows.h"
#include "nm_rowmax.h"

NM_INLINE void pmax_rows_impl(const float *x, int64_t r0, int64_t r1, int64_t n, float *y)
{
    for (int64_t r = r0; r < r1; r++) y[r] = pmax_row(x + r * n, n);
}

static void pmax_rows_scalar(const float *x, int64_t r0, int64_t r1, int64_t n, float *y)
{
    pmax_rows_impl(x, r0, r1, n, y);
}

#if NM_X86
NM_AVX2 static void pmax_rows_avx2(const float *x, int64_t r0, int64_t r1, int64_t n, float *y)
{
    pmax_rows_impl(x, r0, r1, n, y);
}
#endif

typedef struct nm_pmax_task_args {
    const float *x;
    int64_t n;
    float *y;
    int avx2;
} nm_pmax_task_args;

static void nm_pmax_range(void *arg, int64_t r0, int64_t r1, int tid)
{
    (void)tid;
    const nm_pmax_task_args *a = (const nm_pmax_task_args *)arg;
#if NM_X86
    if (a->avx2) pmax_rows_avx2(a->x, r0, r1, a->n, a->y);
    else
#endif
        pmax_rows_scalar(a->x, r0, r1, a->n, a->y);
}

int nm_pairwise_max(const float *x, int64_t rows, int64_t n, float *y, int nthreads, int kernel)
{
    const int k = nm_resolve_kernel(kernel);
    if (!x || !y || rows < 0 || n < 1 || k < 0) return NM_EINVAL;
    if (rows == 0) return NM_OK;
    const int avx2 = NM_X86 && nm_kctx_get(k)->row_simd; /* the AVX2 loops (avx2, avx512) */
    const int nt = nm_rows_threads(nthreads, rows * n, NM_ROWS_PAR_MIN, rows);
    nm_pmax_task_args ta = {x, n, y, avx2};
    nm_parallel_for(nt, rows, nm_pmax_range, &ta);
    return NM_OK;
}
