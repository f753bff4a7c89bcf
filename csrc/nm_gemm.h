/* Public C API of the GEMM core: C = epilogue(A @ B [+ bias] [+ residual]).
 *
 * All matrices are float32 with arbitrary element strides (row stride rs, column stride cs; negative
 * and zero-free strides allowed), so transposed and sliced operands need no copies.  This layer knows
 * nothing of Python.  Functions return NM_OK or a negative NM_E* code and never abort.
 */
#ifndef NM_GEMM_H
#define NM_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "nm_pwl.h"

#define NM_OK 0
#define NM_ENOMEM (-1)
#define NM_EINVAL (-2)

#define NM_ACT_NONE 0
#define NM_ACT_RELU 1
#define NM_ACT_PWL 2

#define NM_KERNEL_AUTO 0
#define NM_KERNEL_SCALAR 1
#define NM_KERNEL_AVX2 2
#define NM_KERNEL_AVX512 3

/* Applied to each output tile while it is still in registers, after the last K block:
 *   x = acc (+ bias_col[j]) (+ bias_row[i]) (+ res[i, j]);  C[i, j] = act(x)
 * in exactly that order (one float rounding per addition).  Any pointer may be NULL. */
typedef struct nm_epilogue {
    const float *bias_col; /* [N] */
    const float *bias_row; /* [M] */
    const float *res;      /* residual, element (i, j) at res[i * res_rs + j * res_cs] */
    ptrdiff_t res_rs, res_cs;
    ptrdiff_t res_ps1, res_ps2; /* batch strides of the residual (nm_sgemm_batched only) */
    int act;               /* NM_ACT_* */
    const nm_pwl *pwl;     /* when act == NM_ACT_PWL */
} nm_epilogue;

/* Batched products over two batch levels (p1 < P1, p2 < P2), e.g. (sequence, head) of attention:
 *   C[p1, p2] = epilogue(A[p1, p2] @ B[p1, p2])
 * operand X of batch (p1, p2) starts at X + p1 * ps1x + p2 * ps2x (a stride may be 0 to broadcast);
 * the residual uses ep->res_ps1 / ep->res_ps2 the same way.  A plain GEMM is the 1 x 1 batch.
 * Each product: C[M,N] = epilogue(A[M,K] @ B[K,N]). ep may be NULL. K == 0 gives epilogue(0); M or
 * N == 0 is a no-op.  C must not overlap A, B or the epilogue operands.  Returns NM_EINVAL for
 * negative sizes, an unknown kernel/activation or act == NM_ACT_PWL without a table, NM_ENOMEM when
 * the pack buffers (sized to the problem, freed before returning) cannot be allocated.
 * Reduction order: K is cut into ceil(K / kc) equal blocks (kc of nm_get_blocking); within a block
 * each element is a chain of FMAs (avx2) or multiply-adds (scalar) in ascending k; blocks are
 * summed into C in order.  Threads split the batch or the output tiles but never K, and every
 * product runs the same code, so any nthreads gives the same bits. */
int nm_sgemm_batched(int64_t P1, int64_t P2, int64_t M, int64_t N, int64_t K,
                     const float *A, ptrdiff_t ps1a, ptrdiff_t ps2a, ptrdiff_t rsa, ptrdiff_t csa,
                     const float *B, ptrdiff_t ps1b, ptrdiff_t ps2b, ptrdiff_t rsb, ptrdiff_t csb,
                     float *C, ptrdiff_t ps1c, ptrdiff_t ps2c, ptrdiff_t rsc, ptrdiff_t csc,
                     const nm_epilogue *ep, int nthreads, int kernel);

/* Pre-packed B (a constant operand packed once, e.g. a weight matrix):
 * nm_packed_b_floats() is the size in floats of B[K, N] packed for `kernel` (NM_EINVAL when the kernel
 * is unknown); nm_pack_b_full() writes it (dst 64-byte aligned: the microkernels use aligned loads);
 * nm_sgemm_packed() is the plain (1 x 1) nm_sgemm_batched() reading that buffer instead of packing
 * B, so it gives the same bits.  The buffer is tied to the kernel it was packed for (its NR/NC/KC) and is only read. */
int64_t nm_packed_b_floats(int kernel, int64_t K, int64_t N);
int nm_pack_b_full(int kernel, int64_t K, int64_t N, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                   float *dst);
int nm_sgemm_packed(int64_t M, int64_t N, int64_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                    const float *Bp, float *C, ptrdiff_t rsc, ptrdiff_t csc,
                    const nm_epilogue *ep, int nthreads, int kernel);

/* y[i] = pwl(x[i]) for a contiguous vector (x == y allowed): the standalone table unit.
 * Same vector code and bits as the fused epilogue.  Returns NM_OK (n == 0 does nothing), or NM_EINVAL
 * for n < 0, a NULL table or vector, a table without segments, or an unknown kernel; then y is untouched. */
int nm_pwl_apply(const nm_pwl *pwl, const float *x, float *y, int64_t n, int nthreads, int kernel);

/* 1 when this CPU and OS support AVX2 + FMA (cpuid + xgetbv), else 0. */
int nm_cpu_has_avx2_fma(void);
/* 1 when this CPU and OS support AVX-512 F/BW/DQ/VL (cpuid + xgetbv), else 0. */
int nm_cpu_has_avx512(void);

/* The kernel actually used for a request (NM_KERNEL_AUTO resolves by cpuid: avx512, else avx2,
 * else scalar).  Returns NM_EINVAL for an unknown kernel, or for NM_KERNEL_AVX2/AVX512 in a build
 * without the x86 code.
 * Note: nm_sgemm_batched & co. trust an explicit NM_KERNEL_AVX2/AVX512 (no cpuid per call, which is a VM
 * exit under a hypervisor); callers must only pass them when nm_cpu_has_avx2_fma() /
 * nm_cpu_has_avx512() (nmengine/kernels.py checks). */
int nm_resolve_kernel(int kernel);

/* 1 when the library was built with OpenMP (nthreads > 1 can run in parallel), else 0.
 * (Added with the implementation; not part of the original contract.) */
int nm_has_openmp(void);

/* Cache blocking and register tile of the GEMM (for kernel_info()). */
typedef struct nm_blocking { int mr, nr, mc, kc, nc; } nm_blocking;
nm_blocking nm_get_blocking(int kernel);

#endif
