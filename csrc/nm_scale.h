/* The diagonal GEMM ("scale") of the runtime: a row-wise fused multiply/add chain.
 *
 * Works on a [rows, n] float32 matrix in C order (the last axis of a numpy array is n) and keeps
 * the exact float operations of the numpy reference in nmengine/runtime.py, one IEEE rounding per
 * operation (build with -ffp-contract=off), so it gives the same bits as that path, with either
 * kernel, any thread count and any split of the rows.
 */
#ifndef NM_SCALE_H
#define NM_SCALE_H

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

#endif
