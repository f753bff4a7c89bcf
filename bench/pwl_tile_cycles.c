/* Cycle-counter microbenchmark of the AVX2 kernel's PWL epilogue (#12): a stream of 24 full 6 x 16
 * tiles (A micro-panels in L2, one B micro-panel in L1) through nm_ukr_avx2, last K block, with no
 * activation (mode 0) or a tanh table of S uniform segments on [-4, 4] (mode 1), as in
 * bench/gemm_cputime.py.  Prints the best of 2000 passes in TSC ticks per tile; the difference
 * between the modes is the epilogue's cost on a GEMM that keeps both FMA ports busy, without the
 * packing, C traffic and noise of the full product.
 *
 *   gcc -O3 -std=c11 -ffp-contract=off -fno-math-errno -Icsrc -o /tmp/pwl_tile_cycles \
 *       bench/pwl_tile_cycles.c csrc/nm_ukernel_avx2.c csrc/nm_epilogue.c csrc/nm_pwl_avx2.c -lm
 *   /tmp/pwl_tile_cycles 32 0; /tmp/pwl_tile_cycles 32 1; /tmp/pwl_tile_cycles 16 1   # [S mode [K]]
 *
 * x86-64 with AVX2 + FMA only (the kernel is called directly, no dispatch).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <x86intrin.h>

#include "nm_pwl.h"
#include "nm_ukernel.h"

/* tanh interpolated at S + 1 uniform points on [-4, 4] (breakpoints as float32, like numpy's). */
static void tanh_table(int S, nm_pwl *p, float *edges, float *sl, float *ic, int32_t *hint)
{
    for (int i = 0; i < S; i++) {
        const float x0 = (float)(-4.0 + 8.0 * i / S), x1 = (float)(-4.0 + 8.0 * (i + 1) / S);
        const float y0 = tanhf(x0), y1 = tanhf(x1);
        sl[i] = (y1 - y0) / (x1 - x0);
        ic[i] = y0 - sl[i] * x0;
        if (i < S - 1) edges[i] = x1;
    }
    edges[S - 1] = NAN;
    memset(p, 0, sizeof *p);
    p->n = S;
    p->edges = edges;
    p->slopes = sl;
    p->intercepts = ic;
    p->xmin = -INFINITY;
    p->xmax = INFINITY;
    p->nhint = 1; /* the hint grid is not used by the register form */
    hint[0] = 0;
    p->hint = hint;
    p->steps = S;
}

int main(int argc, char **argv)
{
    const int S = argc > 1 ? atoi(argv[1]) : 32, mode = argc > 2 ? atoi(argv[2]) : 1;
    const int kc = argc > 3 ? atoi(argv[3]) : 384, ntile = 24, ldc = 64;
    if (S < 1 || S > 64 || kc < 1) {
        fprintf(stderr, "usage: %s [segments 1..64] [mode 0|1] [K >= 1]\n", argv[0]);
        return 2;
    }
    nm_pwl p;
    float e[64], s[64], c[64];
    int32_t h[1];
    tanh_table(S, &p, e, s, c, h);
    static nm_pwl_reg r;
    nm_pwl_reg_build(&p, &r);
    float *A = aligned_alloc(64, sizeof(float) * 6 * (size_t)kc * ntile);
    float *B = aligned_alloc(64, sizeof(float) * 16 * (size_t)kc);
    float *C = aligned_alloc(64, sizeof(float) * 6 * ntile * ldc);
    if (!A || !B || !C) return 1;
    for (long i = 0; i < 6L * kc * ntile; i++) A[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    for (long i = 0; i < 16L * kc; i++) B[i] = (float)((i * 104729) % 1000) / 20000.0f - 0.025f;
    nm_tile_ctx t;
    memset(&t, 0, sizeof t);
    t.last = 1;
    t.act = mode ? NM_ACT_PWL : NM_ACT_NONE;
    t.pwl = &p;
    t.reg = &r;
    unsigned long long best = ~0ull;
    for (int rep = 0; rep < 2000; rep++) {
        const unsigned long long t0 = __rdtsc();
        for (int i = 0; i < ntile; i++) nm_ukr_avx2(kc, A + 6L * kc * i, B, C + 6L * i * ldc, ldc, 1, 6, 16, &t);
        const unsigned long long d = __rdtsc() - t0;
        if (d < best) best = d;
    }
    printf("segments %d (register form %s, %d steps%s) mode %d K %d: %.1f TSC ticks per 6 x 16 tile\n", S,
           r.ok8 ? "yes" : "no", r.steps8, r.floor8 ? ", floor key" : "", mode, kc, (double)best / ntile);
    free(A);
    free(B);
    free(C);
    return 0;
}
