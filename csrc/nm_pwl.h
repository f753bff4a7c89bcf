/* Piecewise-linear tables: the accelerator's only nonlinearity.
 *
 * The layout mirrors nmengine/pwl.py (PWLTable), which builds every field; read its module docstring
 * for the lookup scheme.  Segment i computes slopes[i] * x + intercepts[i] as one float multiply and
 * one float add (no FMA: build with -ffp-contract=off), so C and numpy agree bit for bit.
 */
#ifndef NM_PWL_H
#define NM_PWL_H

#include <stdint.h>

#define NM_PWL_KEY_LINEAR 0 /* key = floor(clamp((x - origin) * scale, 0, nhint - 1)) */
#define NM_PWL_KEY_LOG2 1   /* key = clamp((bits(x) >> shift) - base, 0, nhint - 1)   */

struct nm_pwl_reg; /* the kernels' register forms of a table (nm_epilogue.h) */

typedef struct nm_pwl {
    int32_t n;        /* segments (>= 1) */
    int32_t key_mode; /* NM_PWL_KEY_* */
    int32_t nhint;    /* bins of the hint grid (>= 1) */
    int32_t steps;    /* correction comparisons after the hint (>= 0) */
    int32_t shift;    /* log2 key */
    int32_t base;     /* log2 key */
    float origin;     /* linear key */
    float scale;      /* linear key */
    float xmin;       /* input clamp (-inf unless the first segment is constant) */
    float xmax;       /* input clamp (+inf unless the last segment is constant) */
    const int32_t *hint;     /* [nhint] lower bound of the segment of every x in the bin */
    const float *edges;      /* [n] interior breakpoints b[1..n-1], then NaN */
    const float *slopes;     /* [n] */
    const float *intercepts; /* [n] */
    /* The table's register forms built once (nm_pwl_reg_new), or NULL: every call that needs them
     * builds them (a grid search over the breakpoints, ~10 us). */
    const struct nm_pwl_reg *reg;
} nm_pwl;

#endif
