/* AVX-512 activation over a vector: the standalone table unit and the finisher of edge tiles. */
#include "nm_pwl_avx512.h"

#if NM_X86

NM_AVX512 void nm_act_avx512_reg(int act, const nm_pwl *pwl, const nm_pwl_reg *reg, const float *rows,
                                 const float *x, float *y, int64_t n)
{
    int64_t i = 0;
    if (act == NM_ACT_RELU) {
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, nm_relu_z(_mm512_loadu_ps(x + i)));
        if (i < n) {
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
            _mm512_mask_storeu_ps(y + i, m, nm_relu_z(_mm512_maskz_loadu_ps(m, x + i)));
        }
    } else if (act == NM_ACT_PWL) {
        nm_pwl_z z;
        nm_pwl_z_init(&z, pwl, reg, rows);
        for (; i + 32 <= n; i += 32) {
            const __m512 a = nm_pwl_z_eval(&z, _mm512_loadu_ps(x + i));
            const __m512 b = nm_pwl_z_eval(&z, _mm512_loadu_ps(x + i + 16));
            _mm512_storeu_ps(y + i, a);
            _mm512_storeu_ps(y + i + 16, b);
        }
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, nm_pwl_z_eval(&z, _mm512_loadu_ps(x + i)));
        if (i < n) {
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1u);
            _mm512_mask_storeu_ps(y + i, m, nm_pwl_z_eval(&z, _mm512_maskz_loadu_ps(m, x + i)));
        }
    } else if (x != y) {
        memmove(y, x, (size_t)n * sizeof(float));
    }
}

NM_AVX512 void nm_act_avx512(int act, const nm_pwl *pwl, const float *rows, const float *x, float *y,
                             int64_t n)
{
    if (act == NM_ACT_PWL && n >= 1024) {
        nm_pwl_reg reg;
        nm_pwl_reg_of(pwl, &reg);
        nm_act_avx512_reg(act, pwl, &reg, rows, x, y, n);
    } else {
        nm_act_avx512_reg(act, pwl, NULL, rows, x, y, n);
    }
}

#else
typedef int nm_pwl_avx512_unused; /* ISO C forbids an empty translation unit */
#endif
