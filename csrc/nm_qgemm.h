/* Public C API of the int8 GEMM: C = epilogue(dequant(quant(A) @ Bq)), exact int32 products inside.
 *
 *   A   float32 activations [M, K] (any element strides), quantized here, or int8 given directly;
 *   Bq  int8 weights [K, N] (symmetric, -127..127 recommended; -128 is exact too), packed once by
 *       nm_qpack_b();
 *   K is cut into groups of G (a multiple of 4; G >= K means one group).  For every group g the
 *   int8 x int8 products are summed exactly in int32 (acc_g), then, in float32, in group order:
 *
 *       f = 0;  for g:  f = f + (float)acc_g[i, j] * (sa[i, g] * sw[g, j])
 *
 *   (one rounding per operation, the same in every kernel, so all kernels give the same bits), and
 *   the fused epilogue of the float GEMM (nm_epilogue: bias, bias_row, residual, relu / PWL table)
 *   finishes the tile: the PWL tables, LayerNorm statistics and softmax stay float32.
 *
 * Activation quantization (per row and group, at run time, "dynamic"):
 *   v[k] = A[i, k] (* inv_smooth[k] when given: SmoothQuant-style migration, the weights carry the
 *   smoothing factor);  amax = max |v| over the group;  sa = amax / 127;  q = rne(v * (127 / amax))
 *   clamped to [-127, 127]  (rne: round half to even).  amax == 0 gives sa = 0 and q = 0.  With
 *   static scales (a_static[g], from calibration) sa = a_static[g] and q = rne(clamp(v * (1 / sa))).
 *   A row group with NaN or Inf gets sa = NaN, so its outputs are NaN (never a silent number).
 *
 * Exactness: every kernel forms acc_g exactly (int32 wraps only if |acc| >= 2^31, i.e. never for
 * K < 2^17 with |values| <= 128).  The VNNI kernels compute (q + 128) * b with vpdpbusd (u8 x s8, no
 * saturation) and subtract 128 * colsum(b) (exact); AMX tdpbssd multiplies s8 x s8 exactly; the AVX2 kernel sign-extends both operands to
 * int16 and uses vpmaddwd (no saturation possible); the scalar kernel multiplies in C.
 * Threads split rows and columns, never K: results do not depend on the thread count.
 * Functions return NM_OK or a negative NM_E* code and never abort.  Knows nothing of Python.
 */
#ifndef NM_QGEMM_H
#define NM_QGEMM_H

#include <stddef.h>
#include <stdint.h>

#include "nm_gemm.h"

#define NM_QKERNEL_AUTO 0
#define NM_QKERNEL_SCALAR 1
#define NM_QKERNEL_AVX2 2       /* vpmaddwd on sign-extended operands */
#define NM_QKERNEL_AVXVNNI 3    /* VEX vpdpbusd on ymm (AVX-VNNI) */
#define NM_QKERNEL_AVX512VNNI 4 /* EVEX vpdpbusd on zmm (AVX512-VNNI + BW) */
#define NM_QKERNEL_AMX 5        /* AMX tiles, tdpbssd (AMX-TILE + AMX-INT8 + AVX-512, Linux) */

/* Columns of the packed B are padded to a multiple of this (every kernel reads the same layout). */
#define NM_Q_NPAD 32

/* 1 when the CPU and OS support the kernel (cpuid + xgetbv); the scalar kernel is always 1. */
int nm_qkernel_available(int qkernel);
/* AUTO -> the fastest available kernel; an explicit kernel -> itself when available, else NM_EINVAL. */
int nm_qkernel_resolve(int qkernel);

/* Packed B: Kp = K rounded up to 4, Np = N rounded up to NM_Q_NPAD.  Layout: Np / 16 panels of 16
 * columns; panel r holds element (k, 16 r + j) at dst[r * Kp * 16 + (k / 4) * 64 + j * 4 + k % 4]
 * (zero padding), followed by 1024 zero bytes (the AMX kernel's 64-byte K chunks may read past Kp).  colsum[g * Np + j] = sum of B[k, j] over group g (the VNNI offset correction).
 * nm_qpack_b_bytes() is the size of dst (NM_EINVAL for negative sizes). */
int64_t nm_qpack_b_bytes(int64_t K, int64_t N);
int nm_qpack_b(int64_t K, int64_t N, int64_t G, const int8_t *B, ptrdiff_t rsb, ptrdiff_t csb,
               int8_t *dst, int32_t *colsum);

typedef struct nm_qgemm_args {
    int64_t M, N, K, G;          /* G: group size along K, a multiple of 4, or >= K (one group) */
    /* A: exactly one of */
    const float *A;              /* float activations, element (i, k) at A[i * rsa + k * csa] */
    const int8_t *Aq;            /* int8 activations, element (i, k) at Aq[i * rsa + k * csa] */
    ptrdiff_t rsa, csa;
    const float *inv_smooth;     /* [K] or NULL (float A only) */
    const float *a_static;       /* [ngroups] static activation scales, or NULL: dynamic (float A) */
    const float *a_scale;        /* [M * ngroups] scales of Aq (float output from int8 A), or NULL */
    /* B packed by nm_qpack_b with the same K, N, G */
    const int8_t *Bp;
    const int32_t *colsum;       /* [ngroups * Np] */
    const float *w_scale;        /* [ngroups * Np] (zero padded), NULL for int32 output */
    /* output: exactly one of */
    float *C;                    /* float32, element (i, j) at C[i * rsc + j * csc] */
    int32_t *Ci;                 /* int32 (one group, no scales): the exact products */
    ptrdiff_t rsc, csc;
    const nm_epilogue *ep;       /* float output only; may be NULL */
} nm_qgemm_args;

/* Returns NM_EINVAL for inconsistent arguments (negative sizes, G not a multiple of 4 while < K,
 * both or neither A/Aq or C/Ci, int32 output with several groups, unknown or unavailable kernel,
 * PWL without a table), NM_ENOMEM when the scratch cannot be allocated.  M or N == 0: no-op;
 * K == 0: C = epilogue(0) (Ci = 0). */
int nm_qgemm(const nm_qgemm_args *args, int nthreads, int qkernel);

#endif
