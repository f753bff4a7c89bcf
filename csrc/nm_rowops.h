/* Row-wise GEMM-family ops of the runtime: the diagonal GEMM ("scale") and the pairwise-max tree.
 *
 * Both work on a [rows, n] float32 matrix in C order (the last axis of a numpy array is n) and keep
 * the exact float operations of the numpy reference in nmengine/runtime.py, one IEEE rounding per
 * operation (build with -ffp-contract=off), so they give the same bits as that path, with either
 * kernel, any thread count and any split of the rows.
 */
#ifndef NM_ROWOPS_H
#define NM_ROWOPS_H

#include <stddef.h>
#include <stdint.h>

#include "nm_pwl.h"

/* How an operand broadcasts against the [rows, n] output. */
#define NM_BC_NONE 0   /* absent */
#define NM_BC_FULL 1   /* [rows, n], contiguous rows */
#define NM_BC_ROW 2    /* [rows]: one value per row, broadcast along the last axis */
#define NM_BC_COL 3    /* [n]: one value per column, shared by every row */
#define NM_BC_SCALAR 4 /* [1] */

typedef struct nm_operand {
    const float *p;
    int mode; /* NM_BC_* */
} nm_operand;

/* y = act(alpha * x * mul * row_scale * col_scale + beta + bias + bias_row + res_beta * res)
 * evaluated left to right, each factor/term optional (has_alpha / has_beta, mode NM_BC_NONE):
 *   y = has_alpha ? x * alpha : x;  y = y * mul;  y = y * row_scale;  y = y * col_scale;
 *   y = has_beta ? y + beta : y;  y = y + bias;  y = y + bias_row;
 *   res_beta == 1: y = y + res;  res_beta == -1: y = y - res;  else: y = y + (res_beta * res);
 *   y = act(y)           (NM_ACT_NONE / NM_ACT_RELU / NM_ACT_PWL with pwl, the epilogue's code)
 * x is [rows, n] (contiguous).  y may be x. */
typedef struct nm_scale_args {
    int64_t rows, n;
    const float *x;
    int has_alpha, has_beta;
    float alpha, beta, res_beta;
    nm_operand mul, row_scale, col_scale, bias, bias_row, res;
    int act;
    const nm_pwl *pwl;
} nm_scale_args;

/* Returns NM_OK, NM_EINVAL (bad sizes, modes, activation or kernel) or NM_ENOMEM. */
int nm_scale(const nm_scale_args *a, float *y, int nthreads, int kernel);

/* y[r] = max of x[r, 0..n) as a halving tree of steps b + relu(a - b): at each level with m values,
 * h = m / 2, value i < h becomes (relu(v[i] - v[i + h])) + v[i + h] and an odd last value v[2h] is
 * carried to index h (nmengine.runtime._pairwise_max).  n >= 1.  NaN propagates. */
int nm_pairwise_max(const float *x, int64_t rows, int64_t n, float *y, int nthreads, int kernel);

/* The attention softmax chain of a Program, fused into one pass per row (the runtime recognises
 *   m = pairwise_max(s);  e = scale(s, res=m, res_beta=-1) with exp table;
 *   r = gemm(e, ones[n, 1]) with reciprocal table;  p = scale(e, row_scale=r)
 * and computes all four with each op's own float operations: the tree as nm_pairwise_max, the row
 * sum as the GEMM core's reduction of e @ ones for `kernel` (ceil(n / kc) equal K blocks, each a
 * chain acc + e[k] from 0 -- fma(e, 1, acc) and acc + e * 1 round the same -- blocks added in order),
 * the tables with the epilogue's code.  s, e, p are [rows, n]; m, r are [rows]; m, e, r may be NULL
 * (not stored: e then lives in a scratch row). */
int nm_softmax_rows(const float *s, int64_t rows, int64_t n, const nm_pwl *exp_pwl, const nm_pwl *recip_pwl,
                    float *m, float *e, float *r, float *p, int nthreads, int kernel);

/* A LayerNorm as lowered by nmengine/compile/lower.py, fused into one pass per row:
 *   mean = gemm(x, w_mean[n, 1]);  c = scale(x, res=mean, res_beta=-1);  sq = scale(c, mul=c);
 *   rstd = gemm(sq, w_var[n, 1], bias=eps) with rsqrt table;
 *   y = scale(c, row_scale=rstd[, col_scale=gamma][, bias=beta])
 * with each op's own float operations: the two N = 1 GEMMs as the GEMM core's reduction for `kernel`
 * (ceil(n / kc) equal K blocks, each a chain from 0 of fma(v, w, acc) for the avx2 kernel or
 * acc + v * w for the portable one, blocks added in order, then + eps and the table), the scale ops
 * left to right.  x, c, sq, y are [rows, n]; mean, rstd are [rows]; mean, rstd, c, sq, gamma, beta
 * may be NULL (not stored / absent). */
typedef struct nm_ln_args {
    int64_t rows, n;
    const float *x, *w_mean, *w_var, *gamma, *beta;
    float eps;
    const nm_pwl *rsqrt;
    float *mean, *c, *sq, *rstd, *y;
} nm_ln_args;

int nm_layernorm_rows(const nm_ln_args *a, int nthreads, int kernel);

/* Token rows between a packed [count, rowbytes] buffer and a padded [rows, rowbytes] one, mask[rows]
 * (nonzero = real token, count of them = packed rows): unpack copies the k-th real row to the k-th
 * set position and zeroes the others (every output byte written once); pack gathers the set rows
 * in order.  Plain copies, any element type.  zero (unpack, may be NULL): rows of dst known to hold
 * zeros already (nonzero entries), which are not rewritten. */
int nm_move_rows(const void *src, void *dst, const unsigned char *mask, const unsigned char *zero, int64_t rows,
                 int64_t rowbytes, int unpack, int nthreads);

#endif
