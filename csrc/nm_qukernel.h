/* int8 GEMM microkernels (internal to nm_qgemm*.c): one MR x NR tile over the whole K, group by group.
 *
 *   for g:  acc = sum over the group's k of a[i, k] * b[k, j]           (exact int32)
 *           [VNNI: a holds q + 128 (u8) and acc -= 128 * colsum[g, j]]
 *           int output: ci[i, j] = acc          (one group)
 *           float:      f = f + (float)acc * (sa[i, g] * ws[g, j])     (f starts at 0)
 *
 * The float tile (MR x NR, ld NR) is then finished by the float GEMM's epilogue (nm_tile_finish).
 * A is the quantized row-major buffer (lda bytes per row, rows padded to a multiple of MR); B is
 * nm_qpack_b's layout (16-column panels, pstride bytes apart). */
#ifndef NM_QUKERNEL_H
#define NM_QUKERNEL_H

#include <stddef.h>
#include <stdint.h>

#include "nm_epilogue.h"

typedef struct nm_qtile {
    int64_t k4;              /* Kp / 4 */
    int64_t g4;              /* k4 steps per group */
    int64_t kc4;             /* k4 steps per AMX chunk (AMX kernel only) */
    int ng;                  /* groups */
    const uint8_t *a;        /* row i0 of the quantized A */
    ptrdiff_t lda;
    const float *sa;         /* sa[i * ng + g] from row i0 */
    const int8_t *b;         /* panel of column j0 */
    ptrdiff_t pstride;       /* bytes between 16-column panels */
    const int32_t *colsum;   /* colsum[g * ldg + j] from column j0 */
    const float *ws;         /* ws[g * ldg + j] from column j0, NULL for int output */
    ptrdiff_t ldg;           /* Np */
    float *f;                /* float tile [MR][NR] */
    int32_t *ci;             /* int tile [MR][NR] (int output) */
} nm_qtile;

typedef void (*nm_qukr_fn)(const nm_qtile *t);

#define NM_QMAX_MR 32
#define NM_QMAX_NR 32

#define NM_QSCALAR_MR 4
#define NM_QSCALAR_NR 16
void nm_qukr_scalar(const nm_qtile *t);

#if NM_X86
#if defined(__GNUC__) || defined(__clang__)
#define NM_QAVX2 __attribute__((target("avx2,fma")))
#define NM_QAVXVNNI __attribute__((target("avx2,fma,avxvnni")))
#define NM_QAVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#else
#define NM_QAVX2
#define NM_QAVXVNNI
#define NM_QAVX512
#endif
#define NM_QAVX2_MR 2
#define NM_QAVX2_NR 16
NM_QAVX2 void nm_qukr_avx2(const nm_qtile *t);
#define NM_QAVXVNNI_MR 3
#define NM_QAVXVNNI_NR 16
NM_QAVXVNNI void nm_qukr_avxvnni(const nm_qtile *t);
#define NM_QAVX512_MR 6
#define NM_QAVX512_NR 32
NM_QAVX512 void nm_qukr_avx512(const nm_qtile *t);
/* rows 0..m of a float tile (ld 32, n <= 32 columns) finished into C (unit column stride): + bias_col,
 * + bias_row[i], + res (unit column stride), in that order, each one float addition (the generic
 * finisher's operations; no activation) */
NM_QAVX512 void nm_qfinish_avx512(const float *f, int m, int n, float *C, ptrdiff_t rsc, const float *bias_col,
                                  const float *bias_row, const float *res, ptrdiff_t res_rs);
#endif

/* AMX (nm_qukernel_amx.c): compiled with GCC >= 11 / clang >= 12 on x86-64 Linux (the tile data
 * state needs the kernel's per-process permission), else stubs that are never chosen. */
#if NM_X86 && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define NM_QAMX_COMPILED 1
#define NM_QAMX __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-int8")))
#else
#define NM_QAMX_COMPILED 0
#define NM_QAMX
#endif
#define NM_QAMX_MR 32
#define NM_QAMX_NR 32
/* 1 when the process may use the tile data state (asks Linux once; call only when cpuid shows AMX) */
int nm_qamx_permit(void);
/* per thread, around the tiles of one call: load the tile configuration for chunks of kc bytes
 * (a multiple of 4, <= 64), release the tile state */
NM_QAMX void nm_qamx_begin(int kc);
NM_QAMX void nm_qamx_end(void);
NM_QAMX void nm_qukr_amx(const nm_qtile *t);

#endif
