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

/* ---- register-table form (nm_epilogue.h, nm_pwl_reg) ---------------------------------------- */

#include <math.h>

static float nm_reg_keyf(const nm_pwl_reg *r, float x)
{
    float xk = (x > r->lo) ? x : r->lo; /* _mm512_max_ps(x, lo): NaN -> lo */
    xk = (xk < r->hi) ? xk : r->hi;
    return fmaf(xk, r->scale, r->nlos); /* one rounding, as vfmadd */
}

/* Steps the grid [lo, hi] needs for the interior breakpoints (hint filled), or -1 when the key
 * would leave [0, BINS) or the breakpoints do not ascend. */
static int32_t nm_reg_grid(const nm_pwl *p, nm_pwl_reg *r, float lo, float hi)
{
    const int32_t n = p->n;
    if (!isfinite(lo) || !isfinite(hi) || !(hi >= lo)) return -1;
    float scale = (float)NM_PWL_REG_BINS - 0.5f;
    const float width = hi - lo;
    scale = width > 0.0f ? scale / width : 0.0f;
    if (!isfinite(scale)) scale = 0.0f;
    r->lo = lo;
    r->hi = hi;
    r->scale = scale;
    r->nlos = -(lo * scale);
    /* the key must stay in [0, BINS) over [lo, hi] (it is monotone, so the ends decide) */
    const float klo = nm_reg_keyf(r, lo), khi = nm_reg_keyf(r, hi);
    if (!(klo > -1.0f) || !(khi < (float)NM_PWL_REG_BINS)) return -1;
    int32_t count[NM_PWL_REG_BINS] = {0};
    for (int32_t i = 0; i < n - 1; i++) {
        const int32_t k = (int32_t)nm_reg_keyf(r, p->edges[i]);
        if (k < 0 || k >= NM_PWL_REG_BINS) return -1;
        if (i > 0 && !(p->edges[i] >= p->edges[i - 1])) return -1; /* breakpoints must ascend */
        count[k]++;
    }
    int32_t below = 0, steps = 0;
    for (int32_t k = 0; k < NM_PWL_REG_BINS; k++) {
        r->hint[k] = below;
        below += count[k];
        if (count[k] > steps) steps = count[k];
    }
    return steps;
}

void nm_pwl_reg_build(const nm_pwl *p, nm_pwl_reg *r)
{
    memset(r, 0, sizeof *r);
    const int32_t n = p->n;
    if (n < 1 || n > NM_PWL_REG_MAX) return;
    const uint32_t qnan = 0x7fc00000u;
    float nanf_;
    memcpy(&nanf_, &qnan, sizeof nanf_);
    for (int32_t s = 0; s < NM_PWL_REG_MAX; s++) {
        const int32_t q = s < n ? s : n - 1;
        r->edges[s] = s < n - 1 ? p->edges[s] : nanf_; /* x >= NaN is false: the walk stops */
        r->slopes[s] = p->slopes[q];
        r->icpt[s] = p->intercepts[q];
    }
    r->wide = n > 32;
    if (n == 1) {
        r->ok = 1; /* one segment: key 0, hint 0, no steps */
        return;
    }
    /* The grid spans [edges[i], edges[n - 2 - j]] for the i, j in 0..2 that need the fewest steps:
     * tables often end in far-out breakpoints (GELU at +-8 around a dense middle); they fall into
     * the end bins by the clamp. */
    nm_pwl_reg cand = *r;
    int32_t best = -1, bi = 0, bj = 0;
    for (int32_t i = 0; i < 3 && i < n - 1; i++) {
        for (int32_t j = 0; j < 3 && n - 2 - j >= i; j++) {
            const int32_t st = nm_reg_grid(p, &cand, p->edges[i], p->edges[n - 2 - j]);
            if (st >= 0 && (best < 0 || st < best)) {
                best = st;
                bi = i;
                bj = j;
            }
        }
    }
    if (best < 0 || best > NM_PWL_REG_MAX_STEPS) return;
    nm_reg_grid(p, r, p->edges[bi], p->edges[n - 2 - bj]);
    r->steps = best;
    r->ok = 1;
}
