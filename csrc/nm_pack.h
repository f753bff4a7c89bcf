/* Packing of GEMM operands into micro-panels (the layout the microkernels stream).
 *
 * A block (mc x kc of A, any strides) becomes ceil(mc / mr) micro-panels of mr rows; panel r stores
 * element (r * mr + i, p) at dst[r * mr * kc + p * mr + i].  B block (kc x nc) becomes ceil(nc / nr)
 * micro-panels of nr columns: element (p, r * nr + j) at dst[r * nr * kc + p * nr + j].  Rows/columns
 * past the edge of the matrix are zero-filled, so the microkernel always runs a full mr x nr tile; the
 * padded results are never stored, so NaN/Inf in real data still propagate to every real output.
 */
#ifndef NM_PACK_H
#define NM_PACK_H

#include <stddef.h>
#include <stdint.h>

/* Pack rows [0, mc) x depth [0, kc) of A (element (i, p) at a[i * rsa + p * csa]). */
void nm_pack_a(int mr, int64_t mc, int64_t kc, const float *a, ptrdiff_t rsa, ptrdiff_t csa, float *dst);

/* Pack micro-panels [p0, p1) of B block (element (p, j) at b[p * rsb + j * csb]) with nc columns. */
void nm_pack_b(int nr, int64_t kc, int64_t nc, int64_t p0, int64_t p1,
               const float *b, ptrdiff_t rsb, ptrdiff_t csb, float *dst);

#endif
