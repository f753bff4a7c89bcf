/* Portable int8 microkernel: 4 x 16 tile, int32 multiply-adds in C (s8 x s8, no offset). */
#include "nm_qukernel.h"

void nm_qukr_scalar(const nm_qtile *t)
{
    enum { MR = NM_QSCALAR_MR, NR = NM_QSCALAR_NR };
    float f[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) f[i][j] = 0.0f;
    const int8_t *a = (const int8_t *)t->a;
    for (int g = 0; g < t->ng; g++) {
        const int64_t kb = (int64_t)g * t->g4;
        const int64_t ke = kb + t->g4 < t->k4 ? kb + t->g4 : t->k4;
        int32_t c[MR][NR];
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) c[i][j] = 0;
        for (int64_t p = kb; p < ke; p++) {
            const int8_t *bp = t->b + p * 64;
            for (int i = 0; i < MR; i++) {
                const int8_t *ap = a + i * t->lda + p * 4;
                const int32_t a0 = ap[0], a1 = ap[1], a2 = ap[2], a3 = ap[3];
                for (int j = 0; j < NR; j++)
                    c[i][j] += a0 * bp[4 * j] + a1 * bp[4 * j + 1] + a2 * bp[4 * j + 2] + a3 * bp[4 * j + 3];
            }
        }
        if (t->ci) {
            for (int i = 0; i < MR; i++)
                for (int j = 0; j < NR; j++) t->ci[i * NR + j] = c[i][j];
            continue;
        }
        const float *ws = t->ws + (ptrdiff_t)g * t->ldg;
        for (int i = 0; i < MR; i++) {
            const float sa = t->sa[i * t->ng + g];
            for (int j = 0; j < NR; j++) {
                const float s = sa * ws[j];
                const float v = (float)c[i][j] * s;
                f[i][j] = f[i][j] + v;
            }
        }
    }
    if (!t->ci)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NR; j++) t->f[i * NR + j] = f[i][j];
}
