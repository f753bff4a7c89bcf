/* The fused attention softmax rows of the runtime.
 *
 * Works on a [rows, n] float32 matrix in C order (the last axis of a numpy array is n) and keeps
 * the exact float operations of the numpy reference in nmengine/runtime.py, one IEEE rounding per
 * operation (build with -ffp-contract=off), so it gives the same bits as that path, with either
 * kernel, any thread count and any split of the rows.
 */
#ifndef NM_SOFTMAX_H
#define NM_SOFTMAX_H

#include <stddef.h>
#include <stdint.h>

#include "nm_pwl.h"

/* The attention softmax chain of a Program, fused into one pass per row (the runtime recognises
 *   m = pairwise_max(s);  e = scale(s, res=m, res_beta=-1) with exp table;
 *   r = gemm(e, ones[n, 1]) with reciprocal table;  p = scale(e, row_scale=r)
 * and computes all four with each op's own float operations: the max as nm_pairwise_max, the row
 * sum as the GEMM core's reduction of e @ ones for `kernel` (ceil(n / kc) equal K blocks, each a
 * chain acc + e[k] from 0 -- fma(e, 1, acc) and acc + e * 1 round the same -- blocks added in order),
 * the tables with the epilogue's code.  s, e, p are [rows, n]; m, r are [rows]; m, e, r may be NULL
 * (not stored: e then lives in a scratch row). */
int nm_softmax_rows(const float *s, int64_t rows, int64_t n, const nm_pwl *exp_pwl, const nm_pwl *recip_pwl,
                    float *m, float *e, float *r, float *p, int nthreads, int kernel);

#endif
