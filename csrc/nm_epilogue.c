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
        nm_tile_row_combine(ar, cr, csc, i, n, t, x);
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
#include <stdlib.h>

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

static uint32_t nm_f2u(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* The AVX2 key of x before the bin is taken mod NM_PWL_R8_BINS: trunc(v) (floor8 == 0, v > -1) or
 * floor(v) (floor8 == 1), v = fma(clamp(x, lo, hi), scale, nlos) as the vector code computes it. */
static int32_t nm_r8_key(const nm_pwl_reg *g, int floor8, float x)
{
    const float v = nm_reg_keyf(g, x);
    return floor8 ? (int32_t)floorf(v) : (int32_t)v;
}

/* Breakpoint e opens the bin of key k > kmin when every float below it keys below k and e keys k
 * (the key is monotone, so checking the float just below e suffices): x >= e then holds for every
 * x of the bin (NaN aside, whose output is NaN whatever the segment) and costs no comparison.
 * A zero breakpoint needs both zeros to key k (-0.0 >= +0.0; the float below is -denorm_min). */
static int nm_r8_opens(const nm_pwl_reg *g, int floor8, float e, int32_t k, int32_t kmin)
{
    if (k <= kmin) return 0;
    if (e == 0.0f && (nm_r8_key(g, floor8, -0.0f) != k || nm_r8_key(g, floor8, 0.0f) != k)) return 0;
    return nm_r8_key(g, floor8, e) == k && nm_r8_key(g, floor8, nextafterf(e, -INFINITY)) < k;
}

/* The AVX2 form on the key of NM_PWL_R8_BINS bins (nm_r8_key, keys kmin..kmin + 7, bin position
 * key mod 8): the most comparisons any bin needs (its breakpoints, less one that opens it), or -1
 * when the keys span more than the bins or the breakpoints do not ascend; fills r's 8-bin tables
 * when fill != 0. */
static int32_t nm_r8_grid(const nm_pwl *p, nm_pwl_reg *r, float lo, float hi, float scale, float nlos,
                          int floor8, int fill)
{
    const int32_t nb = p->n - 1; /* breakpoints */
    if (!isfinite(lo) || !isfinite(hi) || !(hi >= lo) || !isfinite(scale) || !(scale >= 0.0f) || !isfinite(nlos))
        return -1;
    nm_pwl_reg g; /* key parameters only */
    g.lo = lo;
    g.hi = hi;
    g.scale = scale;
    g.nlos = nlos;
    const float vlo = nm_reg_keyf(&g, lo), vhi = nm_reg_keyf(&g, hi);
    int32_t kmin = 0;
    if (floor8) {
        if (!(vlo > -1e6f) || !(vhi < 1e6f)) return -1;
        kmin = (int32_t)floorf(vlo);
        if ((int32_t)floorf(vhi) - kmin >= NM_PWL_R8_BINS) return -1;
    } else if (!(vlo > -1.0f) || !(vhi < (float)NM_PWL_R8_BINS)) {
        return -1;
    }
    int32_t count[NM_PWL_R8_BINS] = {0}, open[NM_PWL_R8_BINS] = {0};
    for (int32_t i = 0; i < nb; i++) {
        const int32_t k = nm_r8_key(&g, floor8, p->edges[i]), bin = k - kmin;
        if (bin < 0 || bin >= NM_PWL_R8_BINS) return -1;
        if (i > 0 && !(p->edges[i] >= p->edges[i - 1])) return -1;
        if (count[bin] == 0) open[bin] = nm_r8_opens(&g, floor8, p->edges[i], k, kmin);
        count[bin]++;
    }
    int32_t steps = 0;
    for (int32_t b = 0; b < NM_PWL_R8_BINS; b++)
        if (count[b] - open[b] > steps) steps = count[b] - open[b];
    if (!fill) return steps;
    if (steps > NM_PWL_R8_MAX_STEPS) return -1;
    const uint32_t qnan = 0x7fc00000u;
    float nanf_;
    memcpy(&nanf_, &qnan, sizeof nanf_);
    int32_t below = 0;
    for (int32_t b = 0; b < NM_PWL_R8_BINS; b++) {
        /* breakpoints with a smaller key all lie below x, and so does one that opens the bin */
        const int32_t s0 = below + open[b], nk = count[b] - open[b];
        const int32_t k = (int32_t)(((uint32_t)(kmin + b)) & (NM_PWL_R8_BINS - 1)); /* vpermps: key mod 8 */
        r->s0[k] = p->slopes[s0];
        r->c0[k] = p->intercepts[s0];
        for (int32_t j = 0; j < NM_PWL_R8_MAX_STEPS; j++) {
            if (j < nk) {
                r->e8[j][k] = p->edges[s0 + j];
                r->ds[j][k] = nm_f2u(p->slopes[s0 + j]) ^ nm_f2u(p->slopes[s0 + j + 1]);
                r->dc[j][k] = nm_f2u(p->intercepts[s0 + j]) ^ nm_f2u(p->intercepts[s0 + j + 1]);
            } else {
                r->e8[j][k] = nanf_; /* x >= NaN is false */
                r->ds[j][k] = r->dc[j][k] = 0;
            }
        }
        below += count[b];
    }
    r->lo8 = g.lo;
    r->hi8 = g.hi;
    r->scale8 = g.scale;
    r->nlos8 = g.nlos;
    r->floor8 = floor8;
    r->steps8 = steps;
    r->ok8 = 1;
    return steps;
}

/* The trunc grid spanning [lo, hi] (bins of width (hi - lo) / (BINS - 1/2)). */
static int32_t nm_r8_span(const nm_pwl *p, nm_pwl_reg *r, float lo, float hi, float *scale, float *nlos)
{
    if (!isfinite(lo) || !isfinite(hi) || !(hi >= lo)) return -1;
    const float width = hi - lo;
    float sc = width > 0.0f ? ((float)NM_PWL_R8_BINS - 0.5f) / width : 0.0f;
    if (!isfinite(sc)) sc = 0.0f;
    *scale = sc;
    *nlos = -(lo * sc);
    return nm_r8_grid(p, r, lo, hi, *scale, *nlos, 0, 0);
}

/* The grid with the fewest steps among
 *  - trunc keys over [edges[i] - h, edges[nb - 1 - j] + h] for i, j in 0..2 and h in {0, half the
 *    mean breakpoint spacing} (the shifted grids put uniform breakpoints inside bins rather than on
 *    their edges);
 *  - floor keys with bins G mean spacings wide, v = x * scale (+ an offset that puts one of the
 *    first G breakpoints at 0): on uniform tables whose breakpoints sit on multiples of the bin
 *    width, every bin but the first opens at a breakpoint, which needs no comparison (32 uniform
 *    segments on [-4, 4]: 3 steps instead of 4; 16: 1 instead of 2).  Floor costs one rounding
 *    instruction, so it is taken only for fewer steps.  v = x * scale is exact for a power-of-two
 *    scale, and a breakpoint opens a bin only where nm_r8_opens verifies it for the floats as
 *    computed, so the segment found is always the breakpoints' one. */
static void nm_pwl_r8_build(const nm_pwl *p, nm_pwl_reg *r)
{
    const int32_t nb = p->n - 1;
    if (nb < 0) return;
    if (nb == 0) {
        nm_r8_grid(p, r, 0.0f, 0.0f, 0.0f, 0.0f, 0, 1);
        return;
    }
    int32_t best = -1;
    int bfl = 0;
    float blo = 0.0f, bhi = 0.0f, bsc = 0.0f, bnl = 0.0f, sc, nl;
    for (int32_t i = 0; i < 3 && i < nb; i++) {
        for (int32_t j = 0; j < 3 && nb - 1 - j >= i; j++) {
            const float lo = p->edges[i], hi = p->edges[nb - 1 - j];
            const int32_t gaps = nb - 1 - j - i;
            const float h = gaps > 0 ? 0.5f * (hi - lo) / (float)gaps : 0.0f;
            for (int v = 0; v < 4; v++) {
                const float l = (v & 1) ? lo - h : lo, u = (v & 2) ? hi + h : hi;
                const int32_t st = nm_r8_span(p, r, l, u, &sc, &nl);
                if (st >= 0 && (best < 0 || st < best)) {
                    best = st;
                    blo = l;
                    bhi = u;
                    bsc = sc;
                    bnl = nl;
                }
            }
        }
    }
    const float e0 = p->edges[0], en = p->edges[nb - 1];
    const float d = nb > 1 ? (en - e0) / (float)(nb - 1) : 0.0f;
    for (int32_t G = 1; d > 0.0f && best > 0 && G <= NM_PWL_R8_MAX_STEPS + 1; G++) {
        const float scale = 1.0f / ((float)G * d);
        for (int32_t o = -1; o < G && o < nb; o++) {
            const float nlos = o < 0 ? 0.0f : -(p->edges[o] * scale);
            const int32_t st = nm_r8_grid(p, r, e0, en, scale, nlos, 1, 0);
            if (st >= 0 && (best < 0 || st < best)) {
                best = st;
                bfl = 1;
                blo = e0;
                bhi = en;
                bsc = scale;
                bnl = nlos;
            }
        }
    }
    if (best >= 0 && best <= NM_PWL_R8_MAX_STEPS) nm_r8_grid(p, r, blo, bhi, bsc, bnl, bfl, 1);
}

void nm_pwl_reg_of(const nm_pwl *p, nm_pwl_reg *r)
{
    if (p->reg) memcpy(r, p->reg, sizeof *r);
    else nm_pwl_reg_build(p, r);
}

nm_pwl_reg *nm_pwl_reg_new(const nm_pwl *p)
{
    /* malloc'ed with room to align to 64 bytes; the raw pointer sits just below the struct */
    const size_t align = 64;
    void *raw = malloc(sizeof(nm_pwl_reg) + align + sizeof(void *));
    if (!raw) return NULL;
    const uintptr_t at = ((uintptr_t)raw + sizeof(void *) + align - 1) & ~(uintptr_t)(align - 1);
    nm_pwl_reg *r = (nm_pwl_reg *)at;
    ((void **)r)[-1] = raw;
    nm_pwl_reg_build(p, r);
    return r;
}

void nm_pwl_reg_free(nm_pwl_reg *r)
{
    if (r) free(((void **)r)[-1]);
}

void nm_pwl_reg_build(const nm_pwl *p, nm_pwl_reg *r)
{
    memset(r, 0, sizeof *r);
    nm_pwl_r8_build(p, r);
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
