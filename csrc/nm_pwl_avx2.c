/* AVX2 activation over a vector: the standalone table unit and the finisher of edge tiles. */
#include "nm_pwl_avx2.h"

#if NM_X86

NM_AVX2 void nm_act_avx2(int act, const nm_pwl *pwl, const float *rows, const float *x, float *y,
                         int64_t n)
{
    int64_t i = 0;
    if (act == NM_ACT_RELU) {
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, nm_relu_v(_mm256_loadu_ps(x + i)));
        for (; i < n; i++) y[i] = nm_relu_s(x[i]);
    } else if (act == NM_ACT_PWL) {
        nm_pwl_v v;
        nm_pwl_v_init(&v, pwl, rows);
        for (; i + 16 <= n; i += 16) {
            __m256 a = nm_pwl_v_eval(&v, _mm256_loadu_ps(x + i));
            __m256 b = nm_pwl_v_eval(&v, _mm256_loadu_ps(x + i + 8));
            _mm256_storeu_ps(y + i, a);
            _mm256_storeu_ps(y + i + 8, b);
        }
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, nm_pwl_v_eval(&v, _mm256_loadu_ps(x + i)));
        if (i < n) {
            float buf[8] = {0};
            const int r = (int)(n - i);
            memcpy(buf, x + i, (size_t)r * sizeof(float));
            _mm256_storeu_ps(buf, nm_pwl_v_eval(&v, _mm256_loadu_ps(buf)));
            memcpy(y + i, buf, (size_t)r * sizeof(float));
        }
    } else if (x != y) {
        (void)rows;
        memmove(y, x, (size_t)n * sizeof(float));
    }
}

#else
typedef int nm_pwl_avx2_unused; /* ISO C forbids an empty translation unit */
#endif
