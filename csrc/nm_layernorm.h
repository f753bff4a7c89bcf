/* The fused LayerNorm rows of the runtime.
 *
 * Works on a [rows, n] float32 matrix in C order (the last axis of a numpy array is n) and keeps
 * the exact float operations of the numpy reference in nmengine/runtime.py, one IEEE rounding per
 * operation (build with -ffp-contract=off), so it gives the same bits as that path, with either
 * kernel, any thread count and any split of the rows.
 */
#ifndef NM_LAYERNORM_H
#define NM_LAYERNORM_H

#include <stddef.h>
#include <stdint.h>

#include "nm_pwl.h"

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

#endif
