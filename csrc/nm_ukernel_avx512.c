/* AVX-512 microkernel, 14 x 32 (NM_AVX512_MR x NM_AVX512_NR).
 *
 * Register budget (32 zmm): 28 accumulators (14 rows x 2 vectors of 16 columns), 2 for the B row of
 * the current depth step; the A element is an embedded broadcast operand of the FMA
 * (vfmadd231ps zmm, zmm, m32{1to16}), so it needs no register.  Per depth step 2 aligned B loads and
 * 14 broadcast loads feed 28 FMAs: with two 512-bit FMA pipes (4-cycle latency, so >= 8 chains in
 * flight) that is 14 cycles for 16 loads, well under the two load ports.  14 x 32 maximises the
 * flops per loaded byte among the tiles that fit (12 x 32 reads 17% more A+B per flop; 8 x 48
 * wastes more of the M edge and 48 is not a power of two for the N edge).
 *
 * Each element is one FMA chain over p ascending within the K block, exactly as in the AVX2 kernel,
 * so with the same K blocking both give the same bits.  The epilogue (nm_pwl_avx512.h) runs on the
 * accumulators after the last K block, before the only store.  Edge tiles and strided C go through
 * a stack buffer with the same float operations.
 */
#include "nm_pwl_avx512.h"
#include "nm_ukernel.h"

#if NM_X86

#define ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)

#define DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define FMA(i)                                                       \
    {                                                                \
        const __m512 ai = _mm512_set1_ps(a[(i)]);                    \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                  \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);                  \
    }
#define STEP()                                                       \
    do {                                                             \
        const __m512 b0 = _mm512_load_ps(b);                         \
        const __m512 b1 = _mm512_load_ps(b + 16);                    \
        ROWS(FMA)                                                    \
        a += NM_AVX512_MR;                                           \
        b += NM_AVX512_NR;                                           \
    } while (0)

typedef struct ep_z {
    __m512 bc0, bc1;
    nm_pwl_z pwl;
} ep_z;

/* One row of a full tile: combine with C, and after the last K block apply the epilogue; store
 * (csc == 1, res_cs in {0, 1}). */
NM_AVX512 NM_INLINE void row_out(int i, __m512 x0, __m512 x1, float *c, ptrdiff_t rsc, const nm_tile_ctx *t,
                                 const ep_z *e)
{
    float *cr = c + i * rsc;
    if (t->load_c) {
        x0 = _mm512_add_ps(_mm512_loadu_ps(cr), x0);
        x1 = _mm512_add_ps(_mm512_loadu_ps(cr + 16), x1);
    }
    if (t->last) {
        if (t->bias_col) {
            x0 = _mm512_add_ps(x0, e->bc0);
            x1 = _mm512_add_ps(x1, e->bc1);
        }
        if (t->bias_row) {
            const __m512 br = _mm512_set1_ps(t->bias_row[i]);
            x0 = _mm512_add_ps(x0, br);
            x1 = _mm512_add_ps(x1, br);
        }
        if (t->res) {
            const float *r = t->res + i * t->res_rs;
            if (t->res_cs == 1) {
                x0 = _mm512_add_ps(x0, _mm512_loadu_ps(r));
                x1 = _mm512_add_ps(x1, _mm512_loadu_ps(r + 16));
            } else {
                const __m512 rv = _mm512_set1_ps(r[0]);
                x0 = _mm512_add_ps(x0, rv);
                x1 = _mm512_add_ps(x1, rv);
            }
        }
        if (t->act == NM_ACT_RELU) {
            x0 = nm_relu_z(x0);
            x1 = nm_relu_z(x1);
        } else if (t->act == NM_ACT_PWL) {
            x0 = nm_pwl_z_eval(&e->pwl, x0);
            x1 = nm_pwl_z_eval(&e->pwl, x1);
        }
    }
    _mm512_storeu_ps(cr, x0);
    _mm512_storeu_ps(cr + 16, x1);
}

/* Edge tile (m < MR or n < NR) or strided C / residual: the scalar combination of nm_tile_finish,
 * then the vector activation with this call's register table. */
NM_AVX512 static void finish_edge(const float *acc, int m, int n, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                                  const nm_tile_ctx *t)
{
    _Alignas(64) float x[NM_AVX512_NR];
    for (int i = 0; i < m; i++) {
        float *cr = c + i * rsc;
        const float *ar = acc + (ptrdiff_t)i * NM_AVX512_NR;
        nm_tile_row_combine(ar, cr, csc, i, n, t, x);
        if (t->last && t->act != NM_ACT_NONE) nm_act_avx512_reg(t->act, t->pwl, t->reg, t->rows, x, x, n);
        for (int j = 0; j < n; j++) cr[j * csc] = x[j];
    }
}

/* Rows [0, m) of a full-width tile (csc == 1) from the accumulator buffer: combine with C, epilogue, store. */
NM_AVX512 static void nm_avx512_tile_out(const float *buf, int m, float *c, ptrdiff_t rsc, const nm_tile_ctx *t)
{
    ep_z e;
    memset(&e, 0, sizeof e);
    if (t->last) {
        if (t->bias_col) {
            e.bc0 = _mm512_loadu_ps(t->bias_col);
            e.bc1 = _mm512_loadu_ps(t->bias_col + 16);
        }
        if (t->act == NM_ACT_PWL) nm_pwl_z_init(&e.pwl, t->pwl, t->reg, t->rows);
    }
    for (int i = 0; i < m; i++)
        row_out(i, _mm512_load_ps(buf + i * NM_AVX512_NR), _mm512_load_ps(buf + i * NM_AVX512_NR + 16), c, rsc, t,
                &e);
}

/* The K loop in assembly: accumulators in zmm0-27 (row i: zmm 2i, 2i+1), the B row in zmm28-29, the
 * broadcast A element alternating zmm30/31.  Compilers do not keep 28 accumulators in registers
 * through an unrolled intrinsic loop (GCC 12 rotates and spills them); the instructions are the ones
 * the intrinsics name (vbroadcastss, vfmadd231ps), so the arithmetic is the same.  Ends with the 28
 * accumulators stored row-major in acc[14 * 32]. */
NM_AVX512 static void nm_avx512_kloop(int64_t kc, const float *a, const float *b, float *acc)
{
    if (kc <= 0) {
        memset(acc, 0, sizeof(float) * NM_AVX512_MR * NM_AVX512_NR);
        return;
    }
    __asm__ volatile(
        "vpxord %%zmm0, %%zmm0, %%zmm0\n\t" "vpxord %%zmm1, %%zmm1, %%zmm1\n\t" "vpxord %%zmm2, %%zmm2, %%zmm2\n\t" "vpxord %%zmm3, %%zmm3, %%zmm3\n\t" "vpxord %%zmm4, %%zmm4, %%zmm4\n\t" "vpxord %%zmm5, %%zmm5, %%zmm5\n\t" "vpxord %%zmm6, %%zmm6, %%zmm6\n\t" "vpxord %%zmm7, %%zmm7, %%zmm7\n\t" "vpxord %%zmm8, %%zmm8, %%zmm8\n\t" "vpxord %%zmm9, %%zmm9, %%zmm9\n\t" "vpxord %%zmm10, %%zmm10, %%zmm10\n\t" "vpxord %%zmm11, %%zmm11, %%zmm11\n\t" "vpxord %%zmm12, %%zmm12, %%zmm12\n\t" "vpxord %%zmm13, %%zmm13, %%zmm13\n\t" "vpxord %%zmm14, %%zmm14, %%zmm14\n\t" "vpxord %%zmm15, %%zmm15, %%zmm15\n\t" "vpxord %%zmm16, %%zmm16, %%zmm16\n\t" "vpxord %%zmm17, %%zmm17, %%zmm17\n\t" "vpxord %%zmm18, %%zmm18, %%zmm18\n\t" "vpxord %%zmm19, %%zmm19, %%zmm19\n\t" "vpxord %%zmm20, %%zmm20, %%zmm20\n\t" "vpxord %%zmm21, %%zmm21, %%zmm21\n\t" "vpxord %%zmm22, %%zmm22, %%zmm22\n\t" "vpxord %%zmm23, %%zmm23, %%zmm23\n\t" "vpxord %%zmm24, %%zmm24, %%zmm24\n\t" "vpxord %%zmm25, %%zmm25, %%zmm25\n\t" "vpxord %%zmm26, %%zmm26, %%zmm26\n\t" "vpxord %%zmm27, %%zmm27, %%zmm27\n\t"
        "1:\n\t"
        "vmovaps (%[b]), %%zmm28\n\t"
        "vmovaps 64(%[b]), %%zmm29\n\t"
        "prefetcht0 1024(%[b])\n\t"
        "prefetcht0 1088(%[b])\n\t"
        "vbroadcastss 0(%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm0\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm1\n\t"
        "vbroadcastss 4(%[a]), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm2\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm3\n\t"
        "vbroadcastss 8(%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm4\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm5\n\t"
        "vbroadcastss 12(%[a]), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm6\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm7\n\t"
        "vbroadcastss 16(%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm8\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm9\n\t"
        "vbroadcastss 20(%[a]), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm10\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm11\n\t"
        "vbroadcastss 24(%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm12\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm13\n\t"
        "vbroadcastss 28(%[a]), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm14\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm15\n\t"
        "vbroadcastss 32(%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm16\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm17\n\t"
        "vbroadcastss 36(%[a]), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm18\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm19\n\t"
        "vbroadcastss 40(%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm20\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm21\n\t"
        "vbroadcastss 44(%[a]), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm22\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm23\n\t"
        "vbroadcastss 48(%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm24\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm25\n\t"
        "vbroadcastss 52(%[a]), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm26\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm27\n\t"
        "addq $56, %[a]\n\t"
        "addq $128, %[b]\n\t"
        "decq %[k]\n\t"
        "jnz 1b\n\t"
        "vmovaps %%zmm0, 0(%[c])\n\t" "vmovaps %%zmm1, 64(%[c])\n\t" "vmovaps %%zmm2, 128(%[c])\n\t" "vmovaps %%zmm3, 192(%[c])\n\t" "vmovaps %%zmm4, 256(%[c])\n\t" "vmovaps %%zmm5, 320(%[c])\n\t" "vmovaps %%zmm6, 384(%[c])\n\t" "vmovaps %%zmm7, 448(%[c])\n\t" "vmovaps %%zmm8, 512(%[c])\n\t" "vmovaps %%zmm9, 576(%[c])\n\t" "vmovaps %%zmm10, 640(%[c])\n\t" "vmovaps %%zmm11, 704(%[c])\n\t" "vmovaps %%zmm12, 768(%[c])\n\t" "vmovaps %%zmm13, 832(%[c])\n\t" "vmovaps %%zmm14, 896(%[c])\n\t" "vmovaps %%zmm15, 960(%[c])\n\t" "vmovaps %%zmm16, 1024(%[c])\n\t" "vmovaps %%zmm17, 1088(%[c])\n\t" "vmovaps %%zmm18, 1152(%[c])\n\t" "vmovaps %%zmm19, 1216(%[c])\n\t" "vmovaps %%zmm20, 1280(%[c])\n\t" "vmovaps %%zmm21, 1344(%[c])\n\t" "vmovaps %%zmm22, 1408(%[c])\n\t" "vmovaps %%zmm23, 1472(%[c])\n\t" "vmovaps %%zmm24, 1536(%[c])\n\t" "vmovaps %%zmm25, 1600(%[c])\n\t" "vmovaps %%zmm26, 1664(%[c])\n\t" "vmovaps %%zmm27, 1728(%[c])\n\t"
        : [a] "+r"(a), [b] "+r"(b), [k] "+r"(kc)
        : [c] "r"(acc)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "cc", "memory");
}

/* Prefetch a full tile's rows of C (the earlier K blocks' sums, read after the K loop) into L1
 * before the K loop, every cache line of each row: a row of 32 floats spans 3 lines when C is not
 * 64-byte aligned (numpy's large arrays are 16-byte aligned). */
NM_AVX512 NM_INLINE void nm_avx512_prefetch_c(const float *c, ptrdiff_t rsc)
{
    for (int i = 0; i < NM_AVX512_MR; i++) {
        _mm_prefetch((const char *)(c + i * rsc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * rsc + 16), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * rsc + NM_AVX512_NR - 1), _MM_HINT_T0);
    }
}

NM_AVX512 void nm_ukr_avx512(int64_t kc, const float *a, const float *b, float *c, ptrdiff_t rsc,
                             ptrdiff_t csc, int m, int n, const nm_tile_ctx *t)
{
    const int fast = (m == NM_AVX512_MR && n == NM_AVX512_NR && csc == 1 &&
                      (!t->last || !t->res || t->res_cs == 0 || t->res_cs == 1));
    /* The accumulators go through an L1 buffer (28 stores + 28 loads per tile, under 1% of the
     * tile's FMAs at KC = 384): the epilogue's registers never compete with the FMA loop's. */
    _Alignas(64) float buf[NM_AVX512_MR * NM_AVX512_NR];
    if (fast && t->load_c) nm_avx512_prefetch_c(c, rsc);
#if defined(__GNUC__) || defined(__clang__)
    nm_avx512_kloop(kc, a, b, buf);
#else
    ROWS(DECL)
    for (int64_t p = 0; p < kc; p++) STEP();
#define SAVE(i)                                                      \
    _mm512_store_ps(buf + (i) * NM_AVX512_NR, c##i##0);              \
    _mm512_store_ps(buf + (i) * NM_AVX512_NR + 16, c##i##1);
    ROWS(SAVE)
#undef SAVE
#endif
    if (fast) nm_avx512_tile_out(buf, NM_AVX512_MR, c, rsc, t);
    else finish_edge(buf, m, n, c, rsc, csc, t);
}

/* nm_avx512_kloop reading A in place: 14 rows of a row-major A (row i at a + i * lda, lda in
 * floats, unit column stride) instead of a packed micro-panel.  Same broadcasts, same FMAs, same
 * order, so the same bits; used where packing A would not pay (few B panels per A panel). */
NM_AVX512 static void nm_avx512_kloop_direct(int64_t kc, const float *a, ptrdiff_t lda, const float *b, float *acc)
{
    if (kc <= 0) {
        memset(acc, 0, sizeof(float) * NM_AVX512_MR * NM_AVX512_NR);
        return;
    }
    const float *a8 = a + 8 * lda;
    const ptrdiff_t l1 = lda * 4, l3 = 3 * l1, l5 = 5 * l1, l7 = 7 * l1;
    __asm__ volatile(
        "vpxord %%zmm0, %%zmm0, %%zmm0\n\t" "vpxord %%zmm1, %%zmm1, %%zmm1\n\t" "vpxord %%zmm2, %%zmm2, %%zmm2\n\t" "vpxord %%zmm3, %%zmm3, %%zmm3\n\t" "vpxord %%zmm4, %%zmm4, %%zmm4\n\t" "vpxord %%zmm5, %%zmm5, %%zmm5\n\t" "vpxord %%zmm6, %%zmm6, %%zmm6\n\t" "vpxord %%zmm7, %%zmm7, %%zmm7\n\t" "vpxord %%zmm8, %%zmm8, %%zmm8\n\t" "vpxord %%zmm9, %%zmm9, %%zmm9\n\t" "vpxord %%zmm10, %%zmm10, %%zmm10\n\t" "vpxord %%zmm11, %%zmm11, %%zmm11\n\t" "vpxord %%zmm12, %%zmm12, %%zmm12\n\t" "vpxord %%zmm13, %%zmm13, %%zmm13\n\t" "vpxord %%zmm14, %%zmm14, %%zmm14\n\t" "vpxord %%zmm15, %%zmm15, %%zmm15\n\t" "vpxord %%zmm16, %%zmm16, %%zmm16\n\t" "vpxord %%zmm17, %%zmm17, %%zmm17\n\t" "vpxord %%zmm18, %%zmm18, %%zmm18\n\t" "vpxord %%zmm19, %%zmm19, %%zmm19\n\t" "vpxord %%zmm20, %%zmm20, %%zmm20\n\t" "vpxord %%zmm21, %%zmm21, %%zmm21\n\t" "vpxord %%zmm22, %%zmm22, %%zmm22\n\t" "vpxord %%zmm23, %%zmm23, %%zmm23\n\t" "vpxord %%zmm24, %%zmm24, %%zmm24\n\t" "vpxord %%zmm25, %%zmm25, %%zmm25\n\t" "vpxord %%zmm26, %%zmm26, %%zmm26\n\t" "vpxord %%zmm27, %%zmm27, %%zmm27\n\t"
        "1:\n\t"
        "vmovaps (%[b]), %%zmm28\n\t"
        "vmovaps 64(%[b]), %%zmm29\n\t"
        "prefetcht0 1024(%[b])\n\t"
        "prefetcht0 1088(%[b])\n\t"
        "vbroadcastss (%[a]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm0\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm1\n\t"
        "vbroadcastss (%[a],%[l1],1), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm2\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm3\n\t"
        "vbroadcastss (%[a],%[l1],2), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm4\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm5\n\t"
        "vbroadcastss (%[a],%[l3],1), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm6\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm7\n\t"
        "vbroadcastss (%[a],%[l1],4), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm8\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm9\n\t"
        "vbroadcastss (%[a],%[l5],1), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm10\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm11\n\t"
        "vbroadcastss (%[a],%[l3],2), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm12\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm13\n\t"
        "vbroadcastss (%[a],%[l7],1), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm14\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm15\n\t"
        "vbroadcastss (%[a8]), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm16\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm17\n\t"
        "vbroadcastss (%[a8],%[l1],1), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm18\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm19\n\t"
        "vbroadcastss (%[a8],%[l1],2), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm20\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm21\n\t"
        "vbroadcastss (%[a8],%[l3],1), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm22\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm23\n\t"
        "vbroadcastss (%[a8],%[l1],4), %%zmm30\n\t" "vfmadd231ps %%zmm30, %%zmm28, %%zmm24\n\t" "vfmadd231ps %%zmm30, %%zmm29, %%zmm25\n\t"
        "vbroadcastss (%[a8],%[l5],1), %%zmm31\n\t" "vfmadd231ps %%zmm31, %%zmm28, %%zmm26\n\t" "vfmadd231ps %%zmm31, %%zmm29, %%zmm27\n\t"
        "addq $4, %[a]\n\t"
        "addq $4, %[a8]\n\t"
        "addq $128, %[b]\n\t"
        "decq %[k]\n\t"
        "jnz 1b\n\t"
        "vmovaps %%zmm0, 0(%[c])\n\t" "vmovaps %%zmm1, 64(%[c])\n\t" "vmovaps %%zmm2, 128(%[c])\n\t" "vmovaps %%zmm3, 192(%[c])\n\t" "vmovaps %%zmm4, 256(%[c])\n\t" "vmovaps %%zmm5, 320(%[c])\n\t" "vmovaps %%zmm6, 384(%[c])\n\t" "vmovaps %%zmm7, 448(%[c])\n\t" "vmovaps %%zmm8, 512(%[c])\n\t" "vmovaps %%zmm9, 576(%[c])\n\t" "vmovaps %%zmm10, 640(%[c])\n\t" "vmovaps %%zmm11, 704(%[c])\n\t" "vmovaps %%zmm12, 768(%[c])\n\t" "vmovaps %%zmm13, 832(%[c])\n\t" "vmovaps %%zmm14, 896(%[c])\n\t" "vmovaps %%zmm15, 960(%[c])\n\t" "vmovaps %%zmm16, 1024(%[c])\n\t" "vmovaps %%zmm17, 1088(%[c])\n\t" "vmovaps %%zmm18, 1152(%[c])\n\t" "vmovaps %%zmm19, 1216(%[c])\n\t" "vmovaps %%zmm20, 1280(%[c])\n\t" "vmovaps %%zmm21, 1344(%[c])\n\t" "vmovaps %%zmm22, 1408(%[c])\n\t" "vmovaps %%zmm23, 1472(%[c])\n\t" "vmovaps %%zmm24, 1536(%[c])\n\t" "vmovaps %%zmm25, 1600(%[c])\n\t" "vmovaps %%zmm26, 1664(%[c])\n\t" "vmovaps %%zmm27, 1728(%[c])\n\t"
        : [a] "+r"(a), [a8] "+r"(a8), [b] "+r"(b), [k] "+r"(kc)
        : [c] "r"(acc), [l1] "r"(l1), [l3] "r"(l3), [l5] "r"(l5), [l7] "r"(l7)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "cc", "memory");
}

/* nm_ukr_avx512 with A read in place (a: the tile's first row, lda its row stride in floats). */
NM_AVX512 void nm_ukr_avx512_direct(int64_t kc, const float *a, ptrdiff_t lda, const float *b, float *c,
                                    ptrdiff_t rsc, ptrdiff_t csc, int n, const nm_tile_ctx *t)
{
    const int fast = (n == NM_AVX512_NR && csc == 1 && (!t->last || !t->res || t->res_cs == 0 || t->res_cs == 1));
    _Alignas(64) float buf[NM_AVX512_MR * NM_AVX512_NR];
    if (fast && t->load_c) nm_avx512_prefetch_c(c, rsc);
    nm_avx512_kloop_direct(kc, a, lda, b, buf);
    if (fast) nm_avx512_tile_out(buf, NM_AVX512_MR, c, rsc, t);
    else finish_edge(buf, NM_AVX512_MR, n, c, rsc, csc, t);
}

/* Up to 7 rows of A read in place with any strides (element (i, p) at a[i * rsa + p * csa]) against
 * one packed B micro-panel: acc rows [0, M) of 32.  The same chain per element (broadcast a, FMA in
 * ascending p) as the 14-row kernels.  Few enough accumulators for the compiler to keep in registers. */
#define NM_KLOOP_SMALL(M)                                                                              \
    NM_AVX512 static void nm_avx512_kloop_##M(int64_t kc, const float *a, ptrdiff_t rsa, ptrdiff_t csa,     \
                                              const float *b, float *acc)                               \
    {                                                                                                  \
        __m512 x0[M], x1[M];                                                                           \
        for (int i = 0; i < M; i++) x0[i] = x1[i] = _mm512_setzero_ps();                               \
        for (int64_t p = 0; p < kc; p++) {                                                             \
            _mm_prefetch((const char *)(b + p * NM_AVX512_NR + 512), _MM_HINT_T0);                     \
            _mm_prefetch((const char *)(b + p * NM_AVX512_NR + 528), _MM_HINT_T0);                     \
            const __m512 b0 = _mm512_load_ps(b + p * NM_AVX512_NR);                                    \
            const __m512 b1 = _mm512_load_ps(b + p * NM_AVX512_NR + 16);                               \
            const float *ap = a + p * csa;                                                             \
            for (int i = 0; i < M; i++) {                                                              \
                const __m512 ai = _mm512_set1_ps(ap[i * rsa]);                                         \
                x0[i] = _mm512_fmadd_ps(ai, b0, x0[i]);                                                \
                x1[i] = _mm512_fmadd_ps(ai, b1, x1[i]);                                                \
            }                                                                                          \
        }                                                                                              \
        for (int i = 0; i < M; i++) {                                                                  \
            _mm512_store_ps(acc + i * NM_AVX512_NR, x0[i]);                                            \
            _mm512_store_ps(acc + i * NM_AVX512_NR + 16, x1[i]);                                       \
        }                                                                                              \
    }
NM_KLOOP_SMALL(1)
NM_KLOOP_SMALL(2)
NM_KLOOP_SMALL(3)
NM_KLOOP_SMALL(4)
NM_KLOOP_SMALL(5)
NM_KLOOP_SMALL(6)
NM_KLOOP_SMALL(7)

NM_AVX512 void nm_ukr_avx512_small(int64_t kc, const float *a, ptrdiff_t rsa, ptrdiff_t csa, int m,
                                   const float *b, float *c, ptrdiff_t rsc, ptrdiff_t csc, int n,
                                   const nm_tile_ctx *t)
{
    _Alignas(64) float buf[NM_AVX512_MR * NM_AVX512_NR];
    for (int i0 = 0; i0 < m; i0 += 7) {
        const float *ai = a + i0 * rsa;
        float *acc = buf + i0 * NM_AVX512_NR;
        switch (m - i0 < 7 ? m - i0 : 7) {
        case 1: nm_avx512_kloop_1(kc, ai, rsa, csa, b, acc); break;
        case 2: nm_avx512_kloop_2(kc, ai, rsa, csa, b, acc); break;
        case 3: nm_avx512_kloop_3(kc, ai, rsa, csa, b, acc); break;
        case 4: nm_avx512_kloop_4(kc, ai, rsa, csa, b, acc); break;
        case 5: nm_avx512_kloop_5(kc, ai, rsa, csa, b, acc); break;
        case 6: nm_avx512_kloop_6(kc, ai, rsa, csa, b, acc); break;
        default: nm_avx512_kloop_7(kc, ai, rsa, csa, b, acc); break;
        }
    }
    const int fast = (n == NM_AVX512_NR && csc == 1 && (!t->last || !t->res || t->res_cs == 0 || t->res_cs == 1));
    if (fast) nm_avx512_tile_out(buf, m, c, rsc, t);
    else finish_edge(buf, m, n, c, rsc, csc, t);
}

/* One row of A (element p at a[p * csa]) against np <= 4 consecutive packed B micro-panels
 * (bstride floats apart): acc[q * 32 + j] = the same FMA chain over p as every other kernel of this
 * path, with 2 * np independent chains (8 for np = 4: enough to cover the FMA latency) where the
 * one-panel small kernel has 2.  For M = 1 (GEMV) and one-row tails: B streams once. */
NM_AVX512 void nm_ukr_avx512_row1(int64_t kc, const float *a, ptrdiff_t csa, const float *b, ptrdiff_t bstride,
                                  int np, float *acc)
{
    __m512 c[8];
    for (int q = 0; q < 8; q++) c[q] = _mm512_setzero_ps();
    if (np == 4) {
        const float *b1 = b + bstride, *b2 = b + 2 * bstride, *b3 = b + 3 * bstride;
        for (int64_t p = 0; p < kc; p++) {
            const __m512 ai = _mm512_set1_ps(a[p * csa]);
            const int64_t o = p * NM_AVX512_NR;
            c[0] = _mm512_fmadd_ps(ai, _mm512_load_ps(b + o), c[0]);
            c[1] = _mm512_fmadd_ps(ai, _mm512_load_ps(b + o + 16), c[1]);
            c[2] = _mm512_fmadd_ps(ai, _mm512_load_ps(b1 + o), c[2]);
            c[3] = _mm512_fmadd_ps(ai, _mm512_load_ps(b1 + o + 16), c[3]);
            c[4] = _mm512_fmadd_ps(ai, _mm512_load_ps(b2 + o), c[4]);
            c[5] = _mm512_fmadd_ps(ai, _mm512_load_ps(b2 + o + 16), c[5]);
            c[6] = _mm512_fmadd_ps(ai, _mm512_load_ps(b3 + o), c[6]);
            c[7] = _mm512_fmadd_ps(ai, _mm512_load_ps(b3 + o + 16), c[7]);
        }
    } else {
        for (int64_t p = 0; p < kc; p++) {
            const __m512 ai = _mm512_set1_ps(a[p * csa]);
            const int64_t o = p * NM_AVX512_NR;
            for (int q = 0; q < np; q++) {
                c[2 * q] = _mm512_fmadd_ps(ai, _mm512_load_ps(b + q * bstride + o), c[2 * q]);
                c[2 * q + 1] = _mm512_fmadd_ps(ai, _mm512_load_ps(b + q * bstride + o + 16), c[2 * q + 1]);
            }
        }
    }
    for (int q = 0; q < 2 * np; q++) _mm512_storeu_ps(acc + 16 * q, c[q]);
}

/* Finish rows [0, m) of an accumulator buffer (row stride 32) into C: the tile kernels' own
 * combination and epilogue (register table, vector activation), for callers that compute the sums
 * themselves (nm_ukr_avx512_row1). */
NM_AVX512 void nm_ukr_avx512_finish(const float *buf, int m, int n, float *c, ptrdiff_t rsc, ptrdiff_t csc,
                                    const nm_tile_ctx *t)
{
    const int fast = (n == NM_AVX512_NR && csc == 1 && (!t->last || !t->res || t->res_cs == 0 || t->res_cs == 1));
    if (fast) nm_avx512_tile_out(buf, m, c, rsc, t);
    else finish_edge(buf, m, n, c, rsc, csc, t);
}

#else
typedef int nm_ukernel_avx512_unused; /* ISO C forbids an empty translation unit */
#endif
