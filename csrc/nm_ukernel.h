/* GEMM microkernels: one MR x NR register tile over one packed K block.
 *
 *   acc[i][j] = sum_p a[p * MR + i] * b[p * NR + j]       (p ascending: a fixed reduction order)
 *
 * then the tile is combined with C and finished by the epilogue (nm_epilogue.h):
 *   t->load_c ? C = C + acc : C = acc;  t->last ? C = epilogue(C)
 * Only the valid m x n part (m <= MR, n <= NR) is stored.  Every output element sees the same
 * sequence of float operations whatever its position in a tile, the tile's position in the matrix
 * or the thread that runs it, so results do not depend on the partition.
 */
#ifndef NM_UKERNEL_H
#define NM_UKERNEL_H

#include "nm_epilogue.h"

typedef void (*nm_ukr_fn)(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc,
                          ptrdiff_t csc, int m, int n, const nm_tile_ctx *t);

/* A microkernel for a full-height tile (m == MR) reading A in place: row i of the tile at a + i * lda
 * (unit column stride), no packing.  Same bits as packing A and calling nm_ukr_avx512. */
typedef void (*nm_ukr_direct_fn)(int64_t kc, const float *a, ptrdiff_t lda, const float *b, float *c,
                                 ptrdiff_t rsc, ptrdiff_t csc, int n, const nm_tile_ctx *t);

/* A microkernel for m < MR rows read in place with any strides (element (i, p) at a[i * rsa + p * csa])
 * against one packed B micro-panel: no packing, no zero rows.  Same bits as the packed tile. */
typedef void (*nm_ukr_small_fn)(int64_t kc, const float *a, ptrdiff_t rsa, ptrdiff_t csa, int m,
                                const float *b, float *c, ptrdiff_t rsc, ptrdiff_t csc, int n,
                                const nm_tile_ctx *t);

/* Portable C11 kernel: 4 x 8 tile, separate multiply and add (no FMA), auto-vectorizable. */
#define NM_SCALAR_MR 4
#define NM_SCALAR_NR 8
void nm_ukr_scalar(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                   int m, int n, const nm_tile_ctx *t);

#if NM_X86
/* AVX2 + FMA kernel: 6 x 16 tile in 12 ymm accumulators (vfmadd231ps), epilogue in registers. */
#define NM_AVX2_MR 6
#define NM_AVX2_NR 16
NM_AVX2 void nm_ukr_avx2(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc,
                         ptrdiff_t csc, int m, int n, const nm_tile_ctx *t);
/* nm_ukr_avx2 reading a row-major A in place (nm_ukr_direct_fn). */
NM_AVX2 void nm_ukr_avx2_direct(int64_t kc, const float *a, ptrdiff_t lda, const float *b, float *c,
                                ptrdiff_t rsc, ptrdiff_t csc, int n, const nm_tile_ctx *t);
/* Single-row tails (m == 1): the sums of a row against np <= 4 B micro-panels into acc[np * NR],
 * each element the same FMA chain as nm_ukr_avx2's; the caller finishes with nm_tile_finish. */
NM_AVX2 void nm_ukr_avx2_row1(int64_t kc, const float *a, const float *b, ptrdiff_t bstride, int np,
                              float *acc);
/* The same with A's elements csa floats apart (csa = 1: a row of a row-major A read in place). */
NM_AVX2 void nm_ukr_avx2_row1s(int64_t kc, const float *a, ptrdiff_t csa, const float *b, ptrdiff_t bstride,
                               int np, float *acc);

/* AVX-512 F kernel: 14 x 32 tile in 28 zmm accumulators, epilogue in registers (nm_pwl_avx512.h). */
#define NM_AVX512_MR 14
#define NM_AVX512_NR 32
NM_AVX512 void nm_ukr_avx512(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc,
                             ptrdiff_t csc, int m, int n, const nm_tile_ctx *t);
/* Partial row panels of the avx512 path (nm_ukr_small_fn): chunks of <= 7 rows. */
NM_AVX512 void nm_ukr_avx512_small(int64_t kc, const float *a, ptrdiff_t rsa, ptrdiff_t csa, int m,
                                   const float *b, float *c, ptrdiff_t rsc, ptrdiff_t csc, int n,
                                   const nm_tile_ctx *t);
/* One row of A (elements csa apart) against np <= 4 B micro-panels bstride apart: acc[np * 32], each
 * element nm_ukr_avx512's FMA chain (8 chains for np = 4); finish with nm_ukr_avx512_finish. */
NM_AVX512 void nm_ukr_avx512_row1(int64_t kc, const float *a, ptrdiff_t csa, const float *b, ptrdiff_t bstride,
                                  int np, float *acc);
/* Rows [0, m) of an accumulator buffer (row stride 32) combined with C and finished (epilogue). */
NM_AVX512 void nm_ukr_avx512_finish(const float *buf, int m, int n, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                                    const nm_tile_ctx *t);
/* nm_ukr_avx512 reading A in place (nm_ukr_direct_fn). */
NM_AVX512 void nm_ukr_avx512_direct(int64_t kc, const float *a, ptrdiff_t lda, const float *b, float *c,
                                    ptrdiff_t rsc, ptrdiff_t csc, int n, const nm_tile_ctx *t);
#endif

#endif
