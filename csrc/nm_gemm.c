/* The GEMM driver: five-loop blocking, threads, batches, and the standalone PWL unit.
 * (Over 500 lines: the loops, the four thread modes and the pre-packed-B entry points share one
 * problem description, nm_prob, and its buffers, which a split would have to export.)
 *
 *   for jc in N step NC                     B block columns (shared by the team)
 *     for pc in K step kcb                  kcb = ceil(K / ceil(K / KC)): equal K blocks
 *       pack B[pc:pc+kc, jc:jc+nc]          NR-column micro-panels, split among the team
 *       barrier
 *       for ic in (my M rows) step MC       A block, private to the thread
 *         pack A[ic:ic+mc, pc:pc+kc]        MR-row micro-panels
 *         for jr in (my NR panels)          B micro-panel stays in L1
 *           for ir in MR panels             A micro-panel streams from L2
 *             microkernel (+ epilogue on the last K block)
 *       barrier
 *
 * Cache blocking for the AVX2 6x16 kernel on Zen 2/3/4 (L1d 32 KiB, L2 512 KiB-1 MiB, L3 16-32 MiB):
 *   KC = 384: a B micro-panel is KC*NR*4 = 24 KiB and an A micro-panel 9 KiB.  Together they slightly
 *             exceed L1d, but the kernel streams B at only ~11 B/cycle (2 loads per 12 FMAs), well
 *             under the L2 bandwidth, while fewer K blocks mean fewer C read-modify-write passes
 *             (transformer K = 384 becomes one block).  Measured on Zen 4: KC 384 beat 256 by 5-25%
 *             single-threaded on the bench shapes (BLIS uses 256 for the same tile).
 *   MC = 144 (24 micro-panels): the packed A block is 216 KiB, inside the 1 MiB L2 with room for the
 *             B micro-panels in flight; each B micro-panel loaded into L1 is reused 24 times.
 *   NC = 4080 (255 micro-panels): the packed B block is <= 6 MiB, which stays in the shared L3.
 * K blocks are equalized (K = 513 -> 2 x 257 rather than 384 + 129) so no block is short.
 * A row block ending in a single row (M = 25, 499, ...) runs that row against 4 B micro-panels per
 * pass (nm_ukr_avx2_row1) instead of a 6 x 16 tile with 5 zero rows per panel; same FMA chains.
 *
 * Threads (OpenMP): a team packs each B block cooperatively, then takes (row block x column range)
 * units (~4 per thread) from a dynamic schedule.  Batched
 * calls with enough products give each thread whole products instead.  K is never split, so every
 * output element's float operations are the same for any thread count or partition.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "nm_cpu.h"
#include "nm_gemm.h"
#include "nm_pack.h"
#include "nm_gemm_ctx.h"
#include "nm_pwl_avx512.h"
#include "nm_threads.h"
#include "nm_ukernel.h"

typedef nm_kctx nm_kdesc;

/* AVX-512 blocking (14 x 32 tile; Ice Lake / Sapphire Rapids: L1d 48 KiB, L2 1.25-2 MiB; Zen 4/5:
 * L1d 32-48 KiB, L2 1 MiB).  A B micro-panel is KC * 32 * 4 = 48 KiB at KC = 384, i.e. all of L1d,
 * so the loop order of BLIS (transposed) is used instead of the AVX2 one: the A micro-panel
 * (14 x KC = 21 KiB) stays in L1 while the ir loop is outside and the jr loop streams the B
 * micro-panels from L2 (2 zmm per 28 FMAs: 9 B/cycle, far under L2 bandwidth).  The packed B block
 * KC x NC must then live in L2: NC = 640 (20 micro-panels) is 960 KiB, under 1 MiB with A in flight.
 * KC = 384 keeps transformer K = 384 in one block (no C read-modify-write pass) and is the AVX2
 * kernel's KC, so both paths give the same bits (same FMA chains, same K blocks).  MC = 1008
 * (72 micro-panels) bounds the private packed A block (1.5 MiB, from L3) and the per-thread units. */
#ifndef NM_AVX512_MC
#define NM_AVX512_MC 1008
#endif
#ifndef NM_AVX512_NC
#define NM_AVX512_NC 640
#endif
#ifndef NM_AVX512_A_RESIDENT
#define NM_AVX512_A_RESIDENT 1
#endif

/* ---- the context table (nm_gemm_ctx.h) ------------------------------------------------------ */

static const nm_kctx nm_kctx_table[] = {
    {NM_KERNEL_SCALAR, "scalar", {NM_SCALAR_MR, NM_SCALAR_NR, 128, 256, 4096}, 0, 0, nm_ukr_scalar, NULL, NULL,
     nm_act_scalar, nm_act_scalar, 0},
#if NM_X86
    {NM_KERNEL_AVX2, "avx2", {NM_AVX2_MR, NM_AVX2_NR, 144, 384, 4080}, 1, 0, nm_ukr_avx2, nm_ukr_avx2_direct, NULL, nm_act_avx2,
     nm_act_avx2, 1},
    {NM_KERNEL_AVX512, "avx512", {NM_AVX512_MR, NM_AVX512_NR, NM_AVX512_MC, 384, NM_AVX512_NC}, 1,
     NM_AVX512_A_RESIDENT, nm_ukr_avx512, nm_ukr_avx512_direct,
     nm_ukr_avx512_small, nm_act_avx512, nm_act_avx2, 1},
#endif
};

const nm_kctx *nm_kctx_get(int kernel)
{
    for (size_t i = 0; i < sizeof nm_kctx_table / sizeof nm_kctx_table[0]; i++)
        if (nm_kctx_table[i].kernel == kernel) return &nm_kctx_table[i];
    return &nm_kctx_table[0];
}

static nm_kdesc nm_kdesc_for(int kernel) { return *nm_kctx_get(kernel); }

int nm_resolve_kernel(int kernel)
{
    switch (kernel) {
    case NM_KERNEL_AUTO:
        return nm_cpu_has_avx512() ? NM_KERNEL_AVX512 : nm_cpu_has_avx2_fma() ? NM_KERNEL_AVX2 : NM_KERNEL_SCALAR;
    case NM_KERNEL_SCALAR: return NM_KERNEL_SCALAR;
    case NM_KERNEL_AVX2: return NM_X86 ? NM_KERNEL_AVX2 : NM_EINVAL;
    case NM_KERNEL_AVX512: return NM_X86 ? NM_KERNEL_AVX512 : NM_EINVAL;
    default: return NM_EINVAL;
    }
}

nm_blocking nm_get_blocking(int kernel)
{
    int k = nm_resolve_kernel(kernel);
    return nm_kdesc_for(k < 0 ? NM_KERNEL_SCALAR : k).bk;
}

int nm_has_openmp(void) { return 0; } /* threads come from nm_threads.c, not OpenMP */

/* ---- aligned scratch ---------------------------------------------------------------------- */

#define NM_ALIGN 64

static float *nm_alloc_floats(size_t n, void **raw)
{
    if (n > (SIZE_MAX - NM_ALIGN) / sizeof(float)) return NULL;
    *raw = malloc(n * sizeof(float) + NM_ALIGN);
    if (!*raw) return NULL;
    uintptr_t p = ((uintptr_t)*raw + NM_ALIGN - 1) & ~(uintptr_t)(NM_ALIGN - 1);
    return (float *)p;
}

static size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }
static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Floats of derived PWL rows worth building for `elems` outputs (0: use the table directly). */
static int64_t nm_pwl_rows_wanted(const nm_kdesc *kd, int act, const nm_pwl *pwl, int64_t elems)
{
    if (act != NM_ACT_PWL || kd->act == nm_act_scalar) return 0;
    const int64_t f = nm_pwl_rows_floats(pwl);
    /* building costs ~1 row store per bin: only when there are several outputs per bin */
    return (f > 0 && elems >= 4 * (int64_t)pwl->nhint) ? f : 0;
}

/* ---- one product ------------------------------------------------------------------------- */

typedef struct nm_prob {
    int64_t M, N, K;
    const float *A;
    ptrdiff_t rsa, csa;
    const float *B;
    ptrdiff_t rsb, csb;
    float *C;
    ptrdiff_t rsc, csc;
    const float *bias_col, *bias_row, *res;
    ptrdiff_t res_rs, res_cs;
    int act;
    const nm_pwl *pwl;
    const float *rows; /* derived PWL rows (avx2) or NULL */
    const nm_pwl_reg *reg; /* register form of the table (avx512) or NULL */
    const float *bpacked; /* B packed once by nm_pack_b_full (single products), or NULL */
} nm_prob;

/* Depth of the K blocks: ceil(K / KC) blocks of equal size (the last may be shorter by < nblocks). */
static int64_t nm_kc_block(int64_t K, int kc)
{
    if (K <= 0) return 0;
    const int64_t nkb = ceil_div(K, kc);
    return ceil_div(K, nkb);
}

static void nm_tile_ctx_at(const nm_prob *p, int64_t i0, int64_t j0, int load_c, int last, nm_tile_ctx *t)
{
    t->load_c = load_c;
    t->last = last;
    t->act = p->act;
    t->pwl = p->pwl;
    t->rows = p->rows;
    t->reg = p->reg;
    t->bias_col = p->bias_col ? p->bias_col + j0 : NULL;
    t->bias_row = p->bias_row ? p->bias_row + i0 : NULL;
    t->res = p->res ? p->res + i0 * p->res_rs + j0 * p->res_cs : NULL;
    t->res_rs = p->res_rs;
    t->res_cs = p->res_cs;
}

/* K == 0: C = epilogue(0). */
static void nm_run_k0(const nm_prob *p, const nm_kdesc *kd)
{
    const float zeros[NM_MAX_MR * NM_MAX_NR] = {0};
    const int mr = NM_MAX_MR, nr = NM_MAX_NR;
    nm_tile_ctx t;
    for (int64_t i0 = 0; i0 < p->M; i0 += mr) {
        for (int64_t j0 = 0; j0 < p->N; j0 += nr) {
            nm_tile_ctx_at(p, i0, j0, 0, 1, &t);
            nm_tile_finish(zeros, nr, (int)min64(mr, p->M - i0), (int)min64(nr, p->N - j0),
                           p->C + i0 * p->rsc + j0 * p->csc, p->rsc, p->csc, &t, kd->act);
        }
    }
}

/* B-resident paths (avx2) read A in place only when a unit has at most this many B panels (N <= 256):
 * there packing A costs a large share of the few tiles it feeds (measured, 1 thread, thread CPU time:
 * in place 4-19% faster at N = 64..256; 3-8% slower at N >= 1024, where each A panel feeds many
 * tiles from a contiguous packed copy). */
#ifndef NM_AVX2_DIRECT_MAX_PANELS
#define NM_AVX2_DIRECT_MAX_PANELS 16
#endif

/* When to read a row-major A in place: always on the A-resident avx512 path (the tile reads the same
 * 14 rows either way; packing only pays for strided or transposed A), for small N on avx2. */
#ifndef NM_DIRECT_A_OK
#define NM_DIRECT_A_OK(kd, npanels) ((kd)->a_resident || (npanels) <= NM_AVX2_DIRECT_MAX_PANELS)
#endif

/* One work unit: rows [i0, i1) (within one K block) against NR panels [jp0, jp1) of the packed B. */
static void nm_unit(const nm_prob *p, const nm_kdesc *kd, float *abuf, const float *bbuf, int64_t jc,
                    int64_t pc, int64_t kcur, int load_c, int last, int64_t i0, int64_t i1, int64_t jp0,
                    int64_t jp1)
{
    const int mr = kd->bk.mr, nr = kd->bk.nr, mc = kd->bk.mc;
    nm_tile_ctx t;
    for (int64_t ic = i0; ic < i1; ic += mc) {
        const int64_t mcur = min64(mc, i1 - ic);
        /* Paths with in-place kernels (avx512, avx2): full micro-panels of a row-major A are read in
         * place; a partial last panel is read in place too where there is a small-row kernel
         * (avx512), else packed at its panel index; without in-place kernels everything is packed */
        const int direct = kd->ukr_direct != NULL && p->csa == 1 && NM_DIRECT_A_OK(kd, jp1 - jp0);
        const int small_tail = kd->a_resident && kd->ukr_small != NULL;
        const int64_t nfull = mcur / mr;
        if (!direct) {
            const int64_t rows = small_tail ? nfull * mr : mcur;
            if (rows > 0) nm_pack_a(mr, rows, kcur, p->A + ic * p->rsa + pc * p->csa, p->rsa, p->csa, abuf);
        } else if (!small_tail && mcur > nfull * mr) {
            nm_pack_a(mr, mcur - nfull * mr, kcur, p->A + (ic + nfull * mr) * p->rsa + pc, p->rsa, 1,
                      abuf + nfull * mr * kcur);
        }
        /* a one-row last micro-panel (avx2): several B panels per pass instead of a 6-row tile each */
        const int64_t npan = (mcur + mr - 1) / mr;
#if NM_X86
        const int row1 = (kd->ukr == nm_ukr_avx2 || kd->kernel == NM_KERNEL_AVX512) && mcur % mr == 1;
#else
        const int row1 = 0;
#endif
        const int64_t ipn = row1 ? npan - 1 : npan;
        if (kd->a_resident) {
            /* A micro-panel in L1, B micro-panels streaming from L2 */
            for (int64_t ip = 0; ip < ipn; ip++) {
                const int64_t r0 = ic + ip * mr;
                const int m = (int)min64(mr, ic + mcur - r0);
                const float *aip = p->A + r0 * p->rsa + pc * p->csa; /* in place */
                const int how = m == mr ? (direct ? 1 : 0) : (small_tail ? 2 : 0);
                for (int64_t jp = jp0; jp < jp1; jp++) {
                    const int64_t j0 = jc + jp * nr;
                    float *cp = p->C + r0 * p->rsc + j0 * p->csc;
                    const float *bp = bbuf + jp * nr * kcur;
                    const int n = (int)min64(nr, p->N - j0);
                    nm_tile_ctx_at(p, r0, j0, load_c, last, &t);
                    if (how == 1) kd->ukr_direct(kcur, aip, p->rsa, bp, cp, p->rsc, p->csc, n, &t);
                    else if (how == 2) kd->ukr_small(kcur, aip, p->rsa, p->csa, m, bp, cp, p->rsc, p->csc, n, &t);
                    else kd->ukr(kcur, abuf + ip * mr * kcur, bp, cp, p->rsc, p->csc, m, n, &t);
                }
            }
        } else {
            for (int64_t jp = jp0; jp < jp1; jp++) {
                const int64_t j0 = jc + jp * nr;
                const int n = (int)min64(nr, p->N - j0);
                const float *bp = bbuf + jp * nr * kcur;
                for (int64_t ip = 0; ip < ipn; ip++) {
                    const int64_t r0 = ic + ip * mr;
                    const int m = (int)min64(mr, ic + mcur - r0);
                    float *cp = p->C + r0 * p->rsc + j0 * p->csc;
                    nm_tile_ctx_at(p, r0, j0, load_c, last, &t);
                    if (direct && ip < nfull) kd->ukr_direct(kcur, p->A + r0 * p->rsa + pc, p->rsa, bp, cp, p->rsc, p->csc, n, &t);
                    else kd->ukr(kcur, abuf + ip * mr * kcur, bp, cp, p->rsc, p->csc, m, n, &t);
                }
            }
        }
#if NM_X86
        if (row1) {
            /* the one-row last panel against 4 B panels per pass (8 FMA chains instead of 2); on
             * avx512 the row is read in place (never packed there), on avx2 from the packed panel */
            _Alignas(64) float acc[4 * NM_MAX_NR];
            const int64_t r0 = ic + ipn * mr;
            const int z = kd->kernel == NM_KERNEL_AVX512;
            for (int64_t jp = jp0; jp < jp1; jp += 4) {
                const int np = (int)min64(4, jp1 - jp);
                if (z)
                    nm_ukr_avx512_row1(kcur, p->A + r0 * p->rsa + pc * p->csa, p->csa, bbuf + jp * nr * kcur, nr * kcur,
                                       np, acc);
                else nm_ukr_avx2_row1(kcur, abuf + ipn * mr * kcur, bbuf + jp * nr * kcur, nr * kcur, np, acc);
                for (int q = 0; q < np; q++) {
                    const int64_t j0 = jc + (jp + q) * nr;
                    const int n = (int)min64(nr, p->N - j0);
                    float *cp = p->C + r0 * p->rsc + j0 * p->csc;
                    nm_tile_ctx_at(p, r0, j0, load_c, last, &t);
                    if (z) nm_ukr_avx512_finish(acc + q * nr, 1, n, cp, p->rsc, p->csc, &t);
                    else nm_tile_finish(acc + q * nr, nr, 1, n, cp, p->rsc, p->csc, &t, kd->act);
                }
            }
        }
#endif
    }
}

/* The five loops for thread tid of a team of nt working on the same product (nt == 1: alone).
 * abuf is private, bbuf shared by the team.  In a team, B panels are packed with a static split,
 * then (row block x column range) units are handed out dynamically (an OpenMP dynamic loop), so a
 * thread that is descheduled by the OS delays the team by at most one unit.  Which thread computes
 * a unit never changes its arithmetic. */
static void nm_run(const nm_prob *p, const nm_kdesc *kd, float *abuf, float *bbuf, nm_team *team, int tid, int nt)
{
    const int mr = kd->bk.mr, nr = kd->bk.nr, mc = kd->bk.mc, nc = kd->bk.nc;
    const int64_t M = p->M, N = p->N, K = p->K;
    if (K == 0) {
        if (tid == 0) nm_run_k0(p, kd);
        return;
    }
    const int64_t kcb = nm_kc_block(K, kd->bk.kc);
    const int64_t nkb = ceil_div(K, kcb);
    /* units: rows in blocks of mu (<= MC, a multiple of MR) x ns column ranges, ~4 per thread */
    const int64_t want = nt > 1 ? 4 * (int64_t)nt : 1;
    const int64_t mp = ceil_div(M, mr);
    int64_t mu = nt > 1 ? ceil_div(mp, want) * mr : mc;
    if (mu > mc) mu = mc;
    const int64_t nmu = ceil_div(M, mu);

    for (int64_t jc = 0; jc < N; jc += nc) {
        const int64_t ncur = min64(nc, N - jc);
        const int64_t np = ceil_div(ncur, nr);
        int64_t ns = nmu >= want ? 1 : ceil_div(want, nmu);
        if (ns > np) ns = np;
        const int64_t units = nmu * ns;
        for (int64_t kb = 0; kb < nkb; kb++) {
            const int64_t pc = kb * kcb;
            const int64_t kcur = min64(kcb, K - pc);
            const int load_c = kb > 0, last = kb == nkb - 1;
            /* pre-packed: the block as nm_pack_b_full laid it out (same panels, same zero padding) */
            const float *bblk = p->bpacked ? p->bpacked + jc * K + pc * np * nr : bbuf;
            if (!p->bpacked)
                nm_pack_b(nr, kcur, ncur, np * tid / nt, np * (tid + 1) / nt,
                          p->B + pc * p->rsb + jc * p->csb, p->rsb, p->csb, bbuf);
            if (nt > 1) {
                if (!p->bpacked) nm_team_barrier(team); /* B block packed by the whole team */
                for (int64_t u = nm_team_next(team); u < units; u = nm_team_next(team)) {
                    const int64_t mi = u / ns, ni = u % ns;
                    nm_unit(p, kd, abuf, bblk, jc, pc, kcur, load_c, last, mi * mu, min64(M, (mi + 1) * mu),
                            np * ni / ns, np * (ni + 1) / ns);
                }
                nm_team_barrier(team); /* B may be repacked; resets the unit counter */
                continue;
            }
            for (int64_t u = 0; u < units; u++) {
                const int64_t mi = u / ns, ni = u % ns;
                nm_unit(p, kd, abuf, bblk, jc, pc, kcur, load_c, last, mi * mu, min64(M, (mi + 1) * mu),
                        np * ni / ns, np * (ni + 1) / ns);
            }
        }
    }
}

/* Column split of one product with pre-packed B (small M): work units of NM_COL_CHUNK B micro-panels
 * (within one NC block) x all rows x all K blocks, handed out dynamically (nm_team_next), so each
 * thread streams only its share of B (which tends to stay in its core's L2 from call to call) and a
 * thread whose core is busy elsewhere holds up nobody (nm_parallel_dyn).  Every output element is
 * computed by the same kernel calls whichever thread runs its unit. */
#define NM_COL_CHUNK 4
static void nm_run_cols(const nm_prob *p, const nm_kdesc *kd, float *abuf, nm_team *team)
{
    const int nr = kd->bk.nr, nc = kd->bk.nc; /* nc is a multiple of nr */
    const int64_t M = p->M, N = p->N, K = p->K;
    const int64_t kcb = nm_kc_block(K, kd->bk.kc), nkb = ceil_div(K, kcb);
    const int64_t nblk = ceil_div(N, nc), upb = ceil_div(nc / nr, NM_COL_CHUNK);
    const int64_t units = (nblk - 1) * upb + ceil_div(ceil_div(N - (nblk - 1) * nc, nr), NM_COL_CHUNK);
    for (int64_t u = nm_team_next(team); u < units; u = nm_team_next(team)) {
        const int64_t jc = u / upb * nc, np = ceil_div(min64(nc, N - jc), nr);
        const int64_t lo = u % upb * NM_COL_CHUNK, hi = min64(np, lo + NM_COL_CHUNK);
        for (int64_t kb = 0; kb < nkb; kb++) {
            const int64_t pc = kb * kcb, kcur = min64(kcb, K - pc);
            nm_unit(p, kd, abuf, p->bpacked + jc * K + pc * np * nr, jc, pc, kcur, kb > 0, kb == nkb - 1, 0, M, lo, hi);
        }
    }
}

static void nm_prob_at(nm_prob *p, const nm_prob *base, int64_t q, int64_t P2,
                       const float *A, ptrdiff_t ps1a, ptrdiff_t ps2a,
                       const float *B, ptrdiff_t ps1b, ptrdiff_t ps2b,
                       float *C, ptrdiff_t ps1c, ptrdiff_t ps2c,
                       const float *res, ptrdiff_t ps1r, ptrdiff_t ps2r)
{
    const int64_t p1 = q / P2, p2 = q % P2;
    *p = *base;
    p->A = A + p1 * ps1a + p2 * ps2a;
    p->B = B + p1 * ps1b + p2 * ps2b;
    p->C = C + p1 * ps1c + p2 * ps2c;
    p->res = res ? res + p1 * ps1r + p2 * ps2r : NULL;
}

/* The parallel part of one call: how the team splits it (mode 0 whole products, dynamically; 1 row
 * ranges with private buffers; 2 one shared-B team per product; 3 column chunks of a pre-packed B,
 * dynamically). */
typedef struct nm_gemm_task_args {
    const nm_prob *base;
    const nm_kdesc *kd;
    float *buf, *bbufs;
    size_t asz, bsz;
    int64_t P, P2;
    const float *A;
    ptrdiff_t ps1a, ps2a;
    const float *B;
    ptrdiff_t ps1b, ps2b;
    float *C;
    ptrdiff_t ps1c, ps2c;
    const float *res;
    ptrdiff_t ps1r, ps2r;
    int mode;
} nm_gemm_task_args;

static void nm_gemm_task(void *arg, nm_team *team, int tid, int nt)
{
    const nm_gemm_task_args *g = (const nm_gemm_task_args *)arg;
    nm_prob pq;
    float *abuf = g->buf + g->asz * (size_t)tid;
    (void)nt;
    if (g->mode == 0) {
        /* whole products, handed out dynamically (nm_parallel_dyn) */
        for (int64_t q = nm_team_next(team); q < g->P; q = nm_team_next(team)) {
            nm_prob_at(&pq, g->base, q, g->P2, g->A, g->ps1a, g->ps2a, g->B, g->ps1b, g->ps2b, g->C, g->ps1c,
                       g->ps2c, g->res, g->ps1r, g->ps2r);
            nm_run(&pq, g->kd, abuf, g->bbufs + g->bsz * (size_t)tid, NULL, 0, 1);
        }
    } else if (g->mode == 1) {
        const int64_t mr = g->kd->bk.mr, M = g->base->M, mp = ceil_div(M, mr);
        const int64_t r0 = mp * tid / nt * mr, r1 = min64(M, mp * (tid + 1) / nt * mr);
        if (r1 > r0) {
            nm_prob_at(&pq, g->base, 0, g->P2, g->A, g->ps1a, g->ps2a, g->B, g->ps1b, g->ps2b, g->C, g->ps1c,
                       g->ps2c, g->res, g->ps1r, g->ps2r);
            pq.M = r1 - r0;
            pq.A += r0 * pq.rsa;
            pq.C += r0 * pq.rsc;
            if (pq.bias_row) pq.bias_row += r0;
            if (pq.res) pq.res += r0 * pq.res_rs;
            nm_run(&pq, g->kd, abuf, g->bbufs + g->bsz * (size_t)tid, NULL, 0, 1);
        }
    } else if (g->mode == 3) {
        nm_prob_at(&pq, g->base, 0, g->P2, g->A, g->ps1a, g->ps2a, g->B, g->ps1b, g->ps2b, g->C, g->ps1c, g->ps2c,
                   g->res, g->ps1r, g->ps2r);
        nm_run_cols(&pq, g->kd, abuf, team);
    } else {
        for (int64_t q = 0; q < g->P; q++) {
            nm_prob_at(&pq, g->base, q, g->P2, g->A, g->ps1a, g->ps2a, g->B, g->ps1b, g->ps2b, g->C, g->ps1c,
                       g->ps2c, g->res, g->ps1r, g->ps2r);
            nm_run(&pq, g->kd, abuf, g->bbufs, team, tid, nt);
        }
    }
}

/* Products of at most this many rows with a pre-packed B split their columns among threads. */
#ifndef NM_COL_SPLIT_MAX_M
#define NM_COL_SPLIT_MAX_M 128
#endif

/* Products up to this many multiply-adds split their rows among threads without barriers. */
#define NM_ROW_SPLIT_WORK (16.0 * 1024.0 * 1024.0)

static int nm_sgemm_impl(int64_t P1, int64_t P2, int64_t M, int64_t N, int64_t K,
                         const float *A, ptrdiff_t ps1a, ptrdiff_t ps2a, ptrdiff_t rsa, ptrdiff_t csa,
                         const float *B, ptrdiff_t ps1b, ptrdiff_t ps2b, ptrdiff_t rsb, ptrdiff_t csb,
                         float *C, ptrdiff_t ps1c, ptrdiff_t ps2c, ptrdiff_t rsc, ptrdiff_t csc,
                         const nm_epilogue *ep, int nthreads, int kernel, const float *bpacked)
{
    if (P1 < 0 || P2 < 0 || M < 0 || N < 0 || K < 0) return NM_EINVAL;
    const int act = ep ? ep->act : NM_ACT_NONE;
    if (act != NM_ACT_NONE && act != NM_ACT_RELU && act != NM_ACT_PWL) return NM_EINVAL;
    if (act == NM_ACT_PWL && (!ep->pwl || ep->pwl->n < 1 || ep->pwl->nhint < 1)) return NM_EINVAL;
    const int kres = nm_resolve_kernel(kernel);
    if (kres < 0) return NM_EINVAL;
    if (P1 == 0 || P2 == 0 || M == 0 || N == 0) return NM_OK;
    const nm_kdesc kd = nm_kdesc_for(kres);

    nm_prob base;
    memset(&base, 0, sizeof base);
    base.M = M;
    base.N = N;
    base.K = K;
    base.rsa = rsa;
    base.csa = csa;
    base.rsb = rsb;
    base.csb = csb;
    base.rsc = rsc;
    base.csc = csc;
    base.act = act;
    base.bpacked = bpacked;
    if (ep) {
        base.bias_col = ep->bias_col;
        base.bias_row = ep->bias_row;
        base.res_rs = ep->res_rs;
        base.res_cs = ep->res_cs;
        base.pwl = ep->pwl;
    }
    const float *res = ep ? ep->res : NULL;
    const ptrdiff_t ps1r = ep ? ep->res_ps1 : 0, ps2r = ep ? ep->res_ps2 : 0;
    const int64_t P = P1 * P2;
    nm_prob p;

    if (K == 0) {
        for (int64_t q = 0; q < P; q++) {
            nm_prob_at(&p, &base, q, P2, A, ps1a, ps2a, B, ps1b, ps2b, C, ps1c, ps2c, res, ps1r, ps2r);
            nm_run_k0(&p, &kd);
        }
        return NM_OK;
    }

    /* threads: none for tiny work; whole products per thread when the batch is large enough */
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    const double work = (double)M * (double)N * (double)K * (double)P;
    if (work < 64.0 * 64.0 * 64.0) nt = 1;
    const int batch_split = nt > 1 && P >= nt && (P % nt == 0 || P >= 4 * (int64_t)nt);
    if (!batch_split && nt > 1) {
        /* no more threads than tiles */
        const int64_t tiles = ceil_div(M, kd.bk.mr) * ceil_div(min64(N, kd.bk.nc), kd.bk.nr);
        if (tiles < nt) nt = (int)tiles;
    }

    /* Small single products: each thread takes whole MR-aligned row ranges and runs alone with its own
     * A and B buffers, so the team meets only at the region's end.  Packing B twice costs less than the
     * two barriers of the shared-B team, each of which must wake threads sleeping under a passive wait
     * policy (tens of microseconds).  Rows keep their global MR alignment: the same tiles, the same
     * arithmetic per element as every other partition. */
    /* Small M against a pre-packed B (batch-1 transformer layers, attention): split the columns, so
     * that each thread reads half of B (the big operand) and no thread idles when M < nt * MR. */
    const int col_split = nt > 1 && !batch_split && P == 1 && bpacked && M <= NM_COL_SPLIT_MAX_M &&
                          ceil_div(N, kd.bk.nr) >= 2 * (int64_t)nt;
    const int row_split = !col_split && nt > 1 && !batch_split && P == 1 && work <= NM_ROW_SPLIT_WORK &&
                          ceil_div(M, kd.bk.mr) >= nt;

    /* pack buffers sized to the problem */
    const int64_t kcb = nm_kc_block(K, kd.bk.kc);
    const size_t asz = round_up((size_t)min64(kd.bk.mc, round_up((size_t)M, kd.bk.mr)) * (size_t)kcb, 16);
    const size_t bsz = bpacked ? 0 : round_up((size_t)min64(kd.bk.nc, round_up((size_t)N, kd.bk.nr)) * (size_t)kcb, 16);
    const size_t nbuf_b = (batch_split || row_split) ? (size_t)nt : 1;
    size_t rsz = round_up((size_t)nm_pwl_rows_wanted(&kd, act, base.pwl, M * N * P), 16);
#if NM_X86
    /* the AVX-512 epilogue reads the table from registers when it fits, else the rows/gathers */
    nm_pwl_reg reg;
    if (act == NM_ACT_PWL && kres == NM_KERNEL_AVX512) {
        nm_pwl_reg_of(base.pwl, &reg);
        if (reg.ok) {
            base.reg = &reg;
            rsz = 0;
        }
    } else if (act == NM_ACT_PWL && kres == NM_KERNEL_AVX2) {
        /* full tiles read the 8-bin register form; edge tiles keep the rows (same bits) */
        nm_pwl_reg_of(base.pwl, &reg);
        if (reg.ok8) base.reg = &reg;
    }
#endif
    void *raw = NULL;
    float *buf = nm_alloc_floats(asz * (size_t)nt + bsz * nbuf_b + rsz, &raw);
    if (!buf) return NM_ENOMEM;
    float *bbufs = buf + asz * (size_t)nt;
    if (rsz) {
        float *rows = bbufs + bsz * nbuf_b;
        nm_pwl_rows_build(base.pwl, rows);
        base.rows = rows;
    }

    if (nt == 1) {
        for (int64_t q = 0; q < P; q++) {
            nm_prob_at(&p, &base, q, P2, A, ps1a, ps2a, B, ps1b, ps2b, C, ps1c, ps2c, res, ps1r, ps2r);
            nm_run(&p, &kd, buf, bbufs, NULL, 0, 1);
        }
    }
    else {
        nm_gemm_task_args ta = {&base, &kd, buf, bbufs, asz, bsz, P, P2, A, ps1a, ps2a, B, ps1b, ps2b,
                                C, ps1c, ps2c, res, ps1r, ps2r, batch_split ? 0 : row_split ? 1 : col_split ? 3 : 2};
        /* the dynamic modes (0, 3) let the call finish without a worker that has not started */
        if (ta.mode == 0 || ta.mode == 3) nm_parallel_dyn(nt, nm_gemm_task, &ta);
        else nm_parallel_judged(nt, nm_gemm_task, &ta); /* even shares: a starved worker shows */
    }
    free(raw);
    return NM_OK;
}

int nm_sgemm_batched(int64_t P1, int64_t P2, int64_t M, int64_t N, int64_t K,
                     const float *A, ptrdiff_t ps1a, ptrdiff_t ps2a, ptrdiff_t rsa, ptrdiff_t csa,
                     const float *B, ptrdiff_t ps1b, ptrdiff_t ps2b, ptrdiff_t rsb, ptrdiff_t csb,
                     float *C, ptrdiff_t ps1c, ptrdiff_t ps2c, ptrdiff_t rsc, ptrdiff_t csc,
                     const nm_epilogue *ep, int nthreads, int kernel)
{
    return nm_sgemm_impl(P1, P2, M, N, K, A, ps1a, ps2a, rsa, csa, B, ps1b, ps2b, rsb, csb,
                         C, ps1c, ps2c, rsc, csc, ep, nthreads, kernel, NULL);
}

/* ---- pre-packed B ---------------------------------------------------------------------------
 * Layout: the B blocks of nm_run in loop order, for jc in N step NC, for pc in K step kcb, each
 * block nm_pack_b's ceil(ncur / NR) micro-panels (zero-padded columns).  Every column block but the
 * last is NC wide (a multiple of NR), so block (jc, pc) starts at jc * K + pc * ceil(ncur / NR) * NR. */
int64_t nm_packed_b_floats(int kernel, int64_t K, int64_t N)
{
    const int k = nm_resolve_kernel(kernel);
    if (k < 0 || K < 0 || N < 0) return NM_EINVAL;
    const nm_kdesc kd = nm_kdesc_for(k);
    int64_t total = 0;
    for (int64_t jc = 0; jc < N; jc += kd.bk.nc) {
        const int64_t ncur = min64(kd.bk.nc, N - jc);
        total += ceil_div(ncur, kd.bk.nr) * kd.bk.nr * K;
    }
    return total;
}

int nm_pack_b_full(int kernel, int64_t K, int64_t N, const float *B, ptrdiff_t rsb, ptrdiff_t csb,
                   float *dst)
{
    const int k = nm_resolve_kernel(kernel);
    if (k < 0 || K < 0 || N < 0 || (K > 0 && N > 0 && (!B || !dst))) return NM_EINVAL;
    const nm_kdesc kd = nm_kdesc_for(k);
    const int nr = kd.bk.nr, nc = kd.bk.nc;
    const int64_t kcb = nm_kc_block(K, kd.bk.kc);
    for (int64_t jc = 0; jc < N; jc += nc) {
        const int64_t ncur = min64(nc, N - jc);
        const int64_t np = ceil_div(ncur, nr);
        for (int64_t pc = 0; pc < K; pc += kcb) {
            const int64_t kcur = min64(kcb, K - pc);
            nm_pack_b(nr, kcur, ncur, 0, np, B + pc * rsb + jc * csb, rsb, csb, dst + jc * K + pc * np * nr);
        }
    }
    return NM_OK;
}

int nm_sgemm_packed(int64_t M, int64_t N, int64_t K, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                    const float *Bp, float *C, ptrdiff_t rsc, ptrdiff_t csc,
                    const nm_epilogue *ep, int nthreads, int kernel)
{
    if (!Bp && M > 0 && N > 0 && K > 0) return NM_EINVAL;
    return nm_sgemm_impl(1, 1, M, N, K, A, 0, 0, rsa, csa, Bp, 0, 0, 0, 0, C, 0, 0, rsc, csc, ep,
                         nthreads, kernel, Bp);
}

typedef struct nm_pwl_apply_args {
    const nm_kdesc *kd;
    const nm_pwl *pwl;
    const float *rows, *x;
    float *y;
} nm_pwl_apply_args;

/* chunks [c0, c1) of 64 elements */
static void nm_pwl_apply_range(void *arg, int64_t c0, int64_t c1, int tid)
{
    (void)tid;
    const nm_pwl_apply_args *a = (const nm_pwl_apply_args *)arg;
    a->kd->act(NM_ACT_PWL, a->pwl, a->rows, a->x + c0 * 64, a->y + c0 * 64, (c1 - c0) * 64);
}

int nm_pwl_apply(const nm_pwl *pwl, const float *x, float *y, int64_t n, int nthreads, int kernel)
{
    const int k = nm_resolve_kernel(kernel);
    if (!pwl || n < 0 || k < 0 || pwl->n < 1 || pwl->nhint < 1 || (n > 0 && (!x || !y))) return NM_EINVAL;
    if (n == 0) return NM_OK;
    const nm_kdesc kd = nm_kdesc_for(k);
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    if (n < 65536) nt = 1;
    /* derived rows when there are enough elements; without memory, the plain table path */
    const int64_t rf = nm_pwl_rows_wanted(&kd, NM_ACT_PWL, pwl, n);
    void *raw = NULL;
    float *rows = rf ? nm_alloc_floats((size_t)rf, &raw) : NULL;
    if (rows) nm_pwl_rows_build(pwl, rows);
    const int64_t whole = n / 64 * 64;
    nm_pwl_apply_args a = {&kd, pwl, rows, x, y};
    if (nt > 1) nm_parallel_for(nt, whole / 64, nm_pwl_apply_range, &a);
    else if (whole) kd.act(NM_ACT_PWL, pwl, rows, x, y, whole);
    if (whole < n) kd.act(NM_ACT_PWL, pwl, rows, x + whole, y + whole, n - whole);
    free(raw);
    return NM_OK;
}
