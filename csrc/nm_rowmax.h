/* The row max of the runtime (op pairwise_max): a row maximum built from GEMM-family steps.
 *
 * Works on a [rows, n] float32 matrix in C order (the last axis of a numpy array is n) and keeps
 * the exact float operations of the numpy reference in nmengine/movement.py, one IEEE rounding per
 * operation (build with -ffp-contract=off), so it gives the same bits as that path, with either
 * kernel, any thread count and any split of the rows.
 */
#ifndef NM_ROWMAX_H
#define NM_ROWMAX_H

#include <stddef.h>
#include <stdint.h>

/* y[r] = max of x[r, 0..n) by steps m + relu(v - m) (nmengine.movement.pairwise_max): column j folds
 * into lane j % 16 left to right (a lane starts at its first column), then lane i absorbs lane i + h
 * for h = 8, 4, 2, 1, skipping lanes a row shorter than 16 lacks.  Appending columns at or below the
 * running value (masked attention columns) leaves y bit-identical.  n >= 1.  NaN propagates. */
int nm_pairwise_max(const float *x, int64_t rows, int64_t n, float *y, int nthreads, int kernel);

#endif
