/* AMX int8 microkernel (Intel AMX-TILE + AMX-INT8, chosen at run time by cpuid, XCR0 and the Linux
 * permission request for the tile data state):
 *
 *   32 x 32 tile = 2 x 2 AMX tiles of 16 x 16 int32 (tmm0..3); per chunk of kc bytes along K
 *   (kc = gcd(G, 64): a group is a whole number of chunks) two A tiles (16 rows x kc bytes of the
 *   quantized, signed A, stride lda; tmm4, tmm5) and two B tiles (kc / 4 rows of 64 bytes: the packed
 *   panel layout of nm_qpack_b is AMX's B layout, 16 columns x 4 k per row; tmm6, tmm7), and four
 *   tdpbssd (s8 x s8 -> s32, exact, no offset).  A group's int32 tiles are stored, then converted
 *   and scaled in AVX-512 with the scalar kernel's float steps (mul, mul, add).
 *
 * Reads past K: the last chunk of the last group may run past K (K not a multiple of kc).  A rows
 * are zero from K up to lda (>= K rounded up to 64, nm_qgemm.c), so those products are 0 whatever B
 * holds there (the next panel's bytes, or the zeroed slack nm_qpack_b_bytes adds after the last panel).
 *
 * The tile configuration is per thread: nm_qamx_begin(kc) before the tiles of one nm_qgemm call in
 * a thread, nm_qamx_end() after (releases the tile state). */
#define _GNU_SOURCE 1 /* syscall() */
#include "nm_qukernel.h"

#if NM_QAMX_COMPILED
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NM_ARCH_REQ_XCOMP_PERM 0x1023
#define NM_XFEATURE_XTILEDATA 18

int nm_qamx_permit(void)
{
    /* Linux >= 5.16 gives a process the AMX tile data state only on request (once per process) */
    return syscall(SYS_arch_prctl, NM_ARCH_REQ_XCOMP_PERM, NM_XFEATURE_XTILEDATA) == 0;
}

typedef struct nm_qamx_cfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} nm_qamx_cfg;

NM_QAMX void nm_qamx_begin(int kc)
{
    nm_qamx_cfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 4; i++) cfg.rows[i] = 16, cfg.colsb[i] = 64;        /* C: 16 x 16 int32 */
    for (int i = 4; i < 6; i++) cfg.rows[i] = 16, cfg.colsb[i] = (uint16_t)kc; /* A: 16 x kc bytes */
    for (int i = 6; i < 8; i++) cfg.rows[i] = (uint8_t)(kc / 4), cfg.colsb[i] = 64; /* B */
    /* not _tile_loadconfig: GCC's macro names only the first 8 bytes as read, so the compiler may drop
     * the stores of the rest */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
}

NM_QAMX void nm_qamx_end(void) { _tile_release(); }

/* tdpbssd over group g's chunks into tmm0..3 (zeroed first) */
NM_QAMX static inline void nm_qamx_group(const nm_qtile *t, int g)
{
    const ptrdiff_t lda = t->lda;
    const int64_t kc4 = t->kc4;
    const int64_t kb = (int64_t)g * t->g4;
    const int64_t ke = kb + t->g4 < t->k4 ? kb + t->g4 : t->k4;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    const int8_t *b0 = t->b + kb * 64;
    const int8_t *b1 = b0 + t->pstride;
    const uint8_t *a = t->a + kb * 4;
    for (int64_t p = kb; p < ke; p += kc4, b0 += 64 * kc4, b1 += 64 * kc4, a += 4 * kc4) {
        _tile_loadd(4, a, lda);
        _tile_loadd(6, b0, 64);
        _tile_dpbssd(0, 4, 6);
        _tile_loadd(7, b1, 64);
        _tile_dpbssd(1, 4, 7);
        _tile_loadd(5, a + 16 * lda, lda);
        _tile_dpbssd(2, 5, 6);
        _tile_dpbssd(3, 5, 7);
    }
}

NM_QAMX void nm_qukr_amx(const nm_qtile *t)
{
    _Alignas(64) int32_t c[32 * 32];
    float *f = t->f;
    int32_t *ci = t->ci ? t->ci : c;
    if (!t->ci)
        for (int i = 0; i < 64; i++) _mm512_storeu_ps(f + 16 * i, _mm512_setzero_ps());
    /* software pipelined: group g + 1's tile products run on the AMX unit while group g's int32
     * sums are converted and scaled (program order: store g, issue g + 1, convert g) */
    nm_qamx_group(t, 0);
    for (int g = 0; g < t->ng; g++) {
        _tile_stored(0, ci, 128);
        _tile_stored(1, ci + 16, 128);
        _tile_stored(2, ci + 16 * 32, 128);
        _tile_stored(3, ci + 16 * 32 + 16, 128);
        if (t->ci) return; /* int output: one group */
        if (g + 1 < t->ng) nm_qamx_group(t, g + 1);
        const float *ws = t->ws + (ptrdiff_t)g * t->ldg;
        const __m512 w0 = _mm512_loadu_ps(ws), w1 = _mm512_loadu_ps(ws + 16);
        const float *sa = t->sa + g;
        const int ng = t->ng;
#pragma GCC unroll 4
        for (int i = 0; i < 32; i++) {
            const __m512 s = _mm512_set1_ps(sa[i * ng]);
            const __m512 s0 = _mm512_mul_ps(s, w0), s1 = _mm512_mul_ps(s, w1);
            const __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512((const void *)(c + 32 * i))), s0);
            const __m512 v1 =
                _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512((const void *)(c + 32 * i + 16))), s1);
            _mm512_storeu_ps(f + 32 * i, _mm512_add_ps(_mm512_loadu_ps(f + 32 * i), v0));
            _mm512_storeu_ps(f + 32 * i + 16, _mm512_add_ps(_mm512_loadu_ps(f + 32 * i + 16), v1));
        }
    }
}

#else
int nm_qamx_permit(void) { return 0; }
void nm_qamx_begin(int kc) { (void)kc; }
void nm_qamx_end(void) {}
void nm_qukr_amx(const nm_qtile *t) { (void)t; }
#endif
