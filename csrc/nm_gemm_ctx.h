/* The per-CPU kernel context table: everything a kernel path needs, in one place.
 *
 * One entry per kernel (scalar, avx2, avx512), read by the GEMM driver (nm_gemm.c), the row kernels
 * (nm_rows.h; the fused reductions of nm_softmax.c and nm_layernorm.c reproduce the GEMM's K blocking
 * and FMA use bit for bit) and anything else that must agree with the GEMM (e.g. a plan executor).  Blocking lives only here.
 */
#ifndef NM_GEMM_CTX_H
#define NM_GEMM_CTX_H

#include "nm_gemm.h"
#include "nm_ukernel.h"

typedef struct nm_kctx {
    int kernel;        /* NM_KERNEL_* (resolved, never AUTO) */
    const char *name;  /* "scalar", "avx2", "avx512" */
    nm_blocking bk;    /* register tile mr x nr, cache blocks mc, kc, nc */
    int fma;           /* 1: a K block is a chain of fused multiply-adds; 0: multiply, then add */
    int a_resident;    /* 1: the A micro-panel stays in L1 and B micro-panels stream (jr inside ir) */
    nm_ukr_fn ukr;     /* the microkernel */
    nm_ukr_direct_fn ukr_direct; /* the same reading row-major A in place, or NULL */
    nm_ukr_small_fn ukr_small;   /* partial row panels read in place, or NULL */
    nm_act_fn act;     /* vectorized activation of this path (edge tiles, the standalone table unit) */
    nm_act_fn row_act; /* activation the row kernels use (same bits as act) */
    int row_simd;      /* row kernels: 1 = the AVX2-compiled loops, 0 = portable */
} nm_kctx;

/* The context of a resolved kernel code (NM_KERNEL_SCALAR/AVX2/AVX512); the scalar entry for
 * anything else.  Static data: never freed, safe from any thread. */
const nm_kctx *nm_kctx_get(int kernel);

#endif
