/* Scalar epilogue: the tile finisher shared by all kernels and the portable activation. */
#include "nm_epilogue.h"

void nm_act_scalar(int act, const nm_pwl *pwl, const float *rows, const float *x, float *y, int64_t n)
{
    (void)rows;
    if (act == NM_ACT_RELU) {
        for (int64_t i = 0; i < n; i++) y[i] = nm_relu_s(x[i]);
    } else if (act == NM_ACT_PWL) {
        for (int64_t i = 0; i < n; i++) y[i] = nm_pwl_s(pwl, x[i]);
    } else if (x != y) {
        memmove(y, x, (size_t)n * sizeof(float));
    }
}

void nm_tile_finish(const float *acc, int ldacc, int m, int n, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                    const nm_tile_ctx *t, nm_act_fn act)
{
    float x[NM_MAX_NR];
    for (int i = 0; i < m; i++) {
        float *cr = c + i * rsc;
        const float *ar = acc + (ptrdiff_t)i * ldacc;
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
        if (t->last && t->act != NM_ACT_NONE) act(t->act, t->pwl, t->rows, x, x, n);
        for (int j = 0; j < n; j++) cr[j * csc] = x[j];
    }
}

int64_t nm_pwl_rows_floats(const nm_pwl *p)
{
    if (!p || p->steps > 1 || p->nhint < 1) return 0;
    return (int64_t)p->nhint * NM_PWL_ROW;
}

void nm_pwl_rows_build(const nm_pwl *p, float *rows)
{
    const int32_t n = p->n;
    for (int32_t k = 0; k < p->nhint; k++) {
        const int32_t s0 = p->hint[k];
        const int32_t s1 = s0 + 1 < n ? s0 + 1 : n - 1;
        float *r = rows + (int64_t)k * NM_PWL_ROW;
        if (p->steps) {
            r[0] = p->edges[s0]; /* NaN sentinel when s0 == n - 1 */
        } else {
            const uint32_t qnan = 0x7fc00000u; /* x >= NaN is false: seg stays seg0 */
            memcpy(&r[0], &qnan, sizeof qnan);
        }
        r[1] = p->slopes[s0];
        r[2] = p->intercepts[s0];
        r[3] = p->slopes[s1];
        r[4] = p->intercepts[s1];
        r[5] = r[6] = r[7] = 0.0f;
    }
}
