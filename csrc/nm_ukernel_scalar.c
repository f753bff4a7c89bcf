/* Portable microkernel (C11, no intrinsics).  -ffp-contract=off keeps a * b + acc as two
 * roundings; the compiler may vectorize the j loop with plain SSE multiplies and adds, which are
 * the same IEEE operations. */
#include "nm_ukernel.h"

void nm_ukr_scalar(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                   int m, int n, const nm_tile_ctx *t)
{
    float acc[NM_SCALAR_MR][NM_SCALAR_NR];
    for (int i = 0; i < NM_SCALAR_MR; i++)
        for (int j = 0; j < NM_SCALAR_NR; j++) acc[i][j] = 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        for (int i = 0; i < NM_SCALAR_MR; i++) {
            const float ai = a[i];
            for (int j = 0; j < NM_SCALAR_NR; j++) acc[i][j] += ai * b[j];
        }
        a += NM_SCALAR_MR;
        b += NM_SCALAR_NR;
    }
    nm_tile_finish(&acc[0][0], NM_SCALAR_NR, m, n, c, rsc, csc, t, nm_act_scalar);
}
