/* Helpers shared by the sliding-window kernels (nm_im2col.c) and the depthwise convolution
 * (nm_depthwise.c): which output columns of a window tap fall inside the image, and the size below
 * which a window pass runs on one thread. */
#ifndef NM_WINDOW_RANGE_H
#define NM_WINDOW_RANGE_H

#include <stdint.h>

#define NM_WIN_PAR_MIN 65536 /* output elements below which one thread does everything */

static inline int64_t clamp64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* First ox in [0, wo) with ox*s + off >= 0, and the end of the range with ox*s + off < w. */
static inline void inside_range(int64_t off, int64_t s, int64_t w, int64_t wo, int64_t *lo, int64_t *hi)
{
    int64_t a = off >= 0 ? 0 : (-off + s - 1) / s;
    int64_t b = (w - off <= 0) ? 0 : (w - off + s - 1) / s; /* ox*s + off < w  <=>  ox < (w - off)/s */
    if (a > wo) a = wo;
    if (b > wo) b = wo;
    if (b < a) b = a;
    *lo = a;
    *hi = b;
}

#endif
