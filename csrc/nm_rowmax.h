/* The pairwise-max tree of the runtime: a row maximum built from GEMM-family steps.
 *
 * Works on a [rows, n] float32 matrix in C order (the last axis of a numpy array is n) and keeps
 * the exact float operations of the numpy reference in nmengine/runtime.py, one IEEE rounding per
 * operation (build with -ffp-contract=off), so it gives the same bits as that path, with either
 * kernel, any thread count and any split of the rows.
 */
#ifndef NM_ROWMAX_H
#define NM_ROWMAX_H

#include <stddef.h>
#include <stdint.h>

/* y[r] = max of x[r, 0..n) as a halving tree of steps b + relu(a - b): at each level with m values,
 * h = m / 2, value i < h becomes (relu(v[i] - v[i + h])) + v[i + h] and an odd last value v[2h] is
 * carried to index h (nmengine.runtime._pairwise_max).  n >= 1.  NaN propagates. */
int nm_pairwise_max(const float *x, int64_t rows, int64_t n, float *y, int nthreads, int kernel);

#endif
