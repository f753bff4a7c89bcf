/* The int8 GEMM driver: CPU dispatch, B packing, activation quantization, threads, tile epilogue.
 * (Over 500 lines: quantization, packing and the tile loop share one problem description and its
 * buffers, which a split would have to export.)
 *
 *   quantize A rows (per row and K group, or static scales) into a row-major byte buffer
 *   (q + 128 for the VNNI kernels, q otherwise), rows padded to the tile height, K to 4;
 *   barrier (threads: the core's pthread pool, nm_parallel in nm_threads.h)
 *   units of (row block x column range) from a dynamic schedule; in a unit, for each NR-column
 *   tile, for each MR-row tile: microkernel over all of K (group by group), then the float GEMM's
 *   tile finisher (bias, bias_row, residual, relu / PWL) on the float tile.
 *
 * Everything the kernels read fits the L2 of the shapes this serves (a transformer layer's packed
 * weights are <= 2.4 MB for d = 384, the quantized activations M x K bytes), so there is no K
 * blocking: the int32 sum of a group never leaves registers, and no cache blocking beyond the row
 * blocks.  See nm_qgemm.h for the arithmetic contract.
 */
#include "nm_qgemm.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "nm_cpu.h"
#include "nm_pwl_avx2.h"
#include "nm_pwl_avx512.h"
#include "nm_qukernel.h"
#include "nm_threads.h"

/* ---- CPU features --------------------------------------------------------------------------- */

#if NM_X86
#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
static void nm_qcpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    int v[4];
    __cpuidex(v, (int)leaf, (int)sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)v[i];
}
static uint64_t nm_qxgetbv0(void) { return (uint64_t)_xgetbv(0); }
#else
#include <cpuid.h>
static void nm_qcpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static uint64_t nm_qxgetbv0(void)
{
    uint32_t eax, edx;
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}
#endif

/* bit q set when kernel q is available; computed once (every thread computes the same value) */
static atomic_int nm_qfeatures = -1;

static int nm_qdetect(void)
{
    int mask = 1 << NM_QKERNEL_SCALAR;
    if (!nm_cpu_has_avx2_fma()) return mask;
    mask |= 1 << NM_QKERNEL_AVX2;
    unsigned r[4];
    nm_qcpuid(0, 0, r);
    if (r[0] < 7) return mask;
    const uint64_t xcr0 = nm_qxgetbv0();
    nm_qcpuid(7, 0, r);
    const unsigned ebx = r[1], ecx = r[2], max_sub = r[0];
    const int f = (ebx >> 16) & 1, dq = (ebx >> 17) & 1, bw = (ebx >> 30) & 1, vl = (ebx >> 31) & 1;
    const int vnni512 = (ecx >> 11) & 1;
    const int avx512 = f && dq && bw && vl && (xcr0 & 0xE6) == 0xE6;
    if (avx512 && vnni512) mask |= 1 << NM_QKERNEL_AVX512VNNI;
    /* AMX: tile config + tile data enabled in XCR0 (bits 17, 18), and Linux's permission */
    const unsigned edx = r[3];
    if (avx512 && NM_QAMX_COMPILED && ((edx >> 24) & 1) && ((edx >> 25) & 1) &&
        (xcr0 & 0x60000) == 0x60000 && nm_qamx_permit())
        mask |= 1 << NM_QKERNEL_AMX;
    if (max_sub >= 1) {
        nm_qcpuid(7, 1, r);
        if ((r[0] >> 4) & 1) mask |= 1 << NM_QKERNEL_AVXVNNI;
    }
    return mask;
}
#else
static atomic_int nm_qfeatures = -1;
static int nm_qdetect(void) { return 1 << NM_QKERNEL_SCALAR; }
#endif

int nm_qkernel_available(int qkernel)
{
    int m = atomic_load(&nm_qfeatures);
    if (m < 0) {
        m = nm_qdetect();
        atomic_store(&nm_qfeatures, m);
    }
    if (qkernel < NM_QKERNEL_SCALAR || qkernel > NM_QKERNEL_AMX) return 0;
    return (m >> qkernel) & 1;
}

int nm_qkernel_resolve(int qkernel)
{
    if (qkernel == NM_QKERNEL_AUTO) {
        static const int order[] = {NM_QKERNEL_AMX, NM_QKERNEL_AVX512VNNI, NM_QKERNEL_AVXVNNI, NM_QKERNEL_AVX2};
        for (int i = 0; i < 4; i++)
            if (nm_qkernel_available(order[i])) return order[i];
        return NM_QKERNEL_SCALAR;
    }
    return nm_qkernel_available(qkernel) ? qkernel : NM_EINVAL;
}

typedef struct nm_qkdesc {
    int mr, nr, offset, amx;
    nm_qukr_fn ukr;
    nm_act_fn act;
} nm_qkdesc;

static nm_qkdesc nm_qkdesc_for(int k)
{
    nm_qkdesc d;
    d.amx = 0;
#if NM_X86
    if (k == NM_QKERNEL_AMX) {
        d.mr = NM_QAMX_MR, d.nr = NM_QAMX_NR, d.offset = 0, d.ukr = nm_qukr_amx, d.act = nm_act_avx2, d.amx = 1;
        return d;
    }
    if (k == NM_QKERNEL_AVX512VNNI) {
        d.mr = NM_QAVX512_MR, d.nr = NM_QAVX512_NR, d.offset = 1, d.ukr = nm_qukr_avx512, d.act = nm_act_avx2;
        return d;
    }
    if (k == NM_QKERNEL_AVXVNNI) {
        d.mr = NM_QAVXVNNI_MR, d.nr = NM_QAVXVNNI_NR, d.offset = 1, d.ukr = nm_qukr_avxvnni, d.act = nm_act_avx2;
        return d;
    }
    if (k == NM_QKERNEL_AVX2) {
        d.mr = NM_QAVX2_MR, d.nr = NM_QAVX2_NR, d.offset = 0, d.ukr = nm_qukr_avx2, d.act = nm_act_avx2;
        return d;
    }
#endif
    (void)k;
    d.mr = NM_QSCALAR_MR, d.nr = NM_QSCALAR_NR, d.offset = 0, d.ukr = nm_qukr_scalar, d.act = nm_act_scalar;
    return d;
}

/* ---- sizes and packing ---------------------------------------------------------------------- */

static int64_t nm_qceil(int64_t a, int64_t b) { return (a + b - 1) / b; }
static int64_t nm_qmin(int64_t a, int64_t b) { return a < b ? a : b; }

int64_t nm_qpack_b_bytes(int64_t K, int64_t N)
{
    if (K < 0 || N < 0) return NM_EINVAL;
    return nm_qceil(K, 4) * 4 * nm_qceil(N, NM_Q_NPAD) * NM_Q_NPAD + 1024;
}

/* groups: (ng, g4) for K and G; returns 0 when G is invalid */
static int nm_qgroups(int64_t K, int64_t G, int64_t *ng, int64_t *g4)
{
    const int64_t k4 = nm_qceil(K, 4);
    if (G <= 0 || G >= K) {
        *ng = 1;
        *g4 = k4 > 0 ? k4 : 1;
        return 1;
    }
    if (G % 4) return 0;
    *ng = nm_qceil(K, G);
    *g4 = G / 4;
    return 1;
}

int nm_qpack_b(int64_t K, int64_t N, int64_t G, const int8_t *B, ptrdiff_t rsb, ptrdiff_t csb,
               int8_t *dst, int32_t *colsum)
{
    int64_t ng, g4;
    if (K < 0 || N < 0 || !nm_qgroups(K, G, &ng, &g4) || !colsum || (K > 0 && N > 0 && (!B || !dst)))
        return NM_EINVAL;
    const int64_t Kp = nm_qceil(K, 4) * 4, Np = nm_qceil(N, NM_Q_NPAD) * NM_Q_NPAD;
    if (dst) memset(dst, 0, (size_t)nm_qpack_b_bytes(K, N));
    memset(colsum, 0, (size_t)(ng * Np) * sizeof(int32_t));
    for (int64_t k = 0; k < K; k++) {
        const int64_t g = (k / 4) / g4;
        for (int64_t j = 0; j < N; j++) {
            const int8_t v = B[k * rsb + j * csb];
            dst[(j / 16) * Kp * 16 + (k / 4) * 64 + (j % 16) * 4 + k % 4] = v;
            colsum[g * Np + j] += v;
        }
    }
    return NM_OK;
}

/* ---- activation quantization ---------------------------------------------------------------- */

typedef struct nm_qplan {
    const nm_qgemm_args *x;
    nm_qkdesc kd;
    int64_t M, N, K, Kp, Np, lda, Mp, ng, g4, G, kc;
    uint8_t *abuf;
    float *sa;
    const float *rows;  /* derived PWL rows or NULL */
    int simd;           /* AVX2 quantizer (any x86 kernel but scalar; same bits as the C loops) */
    int z512;           /* activation by nm_act_avx512_reg (AVX-512 kernels; the same bits) */
    nm_pwl_reg reg;     /* its register table, built once per call (reg.ok == 0: not used) */
} nm_qplan;

/* y = act(x) over n floats in place, with the kernel's vector activation */
static void nm_qact(const nm_qplan *p, int act, const nm_pwl *pwl, float *x, int64_t n)
{
#if NM_X86
    if (p->z512) {
        nm_act_avx512_reg(act, pwl, act == NM_ACT_PWL ? &p->reg : NULL, p->rows, x, x, n);
        return;
    }
#endif
    p->kd.act(act, pwl, p->rows, x, x, n);
}

/* round half to even for |v| <= 2^22 (here |v| <= 127): two float additions */
static inline float nm_qrne(float v)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    return (v + magic) - magic;
}


#if NM_X86
/* max |t[k]| and the non-finite flag over the first n - n % 32 elements (returns that count), the
 * same values as the scalar loop: max is exact, and a non-finite element only sets *bad. */
NM_QAVX2 static int64_t nm_qabsmax_avx2(const float *t, int64_t n, float *amax, int *bad)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 big = _mm256_set1_ps(FLT_MAX);
    __m256 m0 = _mm256_setzero_ps(), m1 = m0, m2 = m0, m3 = m0;
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        const __m256 a0 = _mm256_and_ps(_mm256_loadu_ps(t + k), absmask);
        const __m256 a1 = _mm256_and_ps(_mm256_loadu_ps(t + k + 8), absmask);
        const __m256 a2 = _mm256_and_ps(_mm256_loadu_ps(t + k + 16), absmask);
        const __m256 a3 = _mm256_and_ps(_mm256_loadu_ps(t + k + 24), absmask);
        ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_and_ps(_mm256_cmp_ps(a0, big, _CMP_LE_OQ), _mm256_cmp_ps(a1, big, _CMP_LE_OQ)),
                                             _mm256_and_ps(_mm256_cmp_ps(a2, big, _CMP_LE_OQ), _mm256_cmp_ps(a3, big, _CMP_LE_OQ))));
        m0 = _mm256_max_ps(m0, a0);
        m1 = _mm256_max_ps(m1, a1);
        m2 = _mm256_max_ps(m2, a2);
        m3 = _mm256_max_ps(m3, a3);
    }
    if (k == 0) return 0;
    if (_mm256_movemask_ps(ok) != 0xff) *bad = 1;
    __m256 m = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    const float v = _mm_cvtss_f32(h);
    if (v > *amax) *amax = v;
    return k;
}

/* q = rne(clamp(t * inv, -127, 127)) (+ 128 when offset) for the first n - n % 32 elements. */
NM_QAVX2 static int64_t nm_qround_avx2(const float *t, int64_t n, float inv, int offset, uint8_t *dst)
{
    const __m256 vi = _mm256_set1_ps(inv), hi = _mm256_set1_ps(127.0f), lo = _mm256_set1_ps(-127.0f);
    const __m256 magic = _mm256_set1_ps(12582912.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i flip = _mm256_set1_epi8(offset ? (char)0x80 : 0);
    int64_t k = 0;
    for (; k + 32 <= n; k += 32) {
        __m256i q[4];
        for (int u = 0; u < 4; u++) {
            __m256 v = _mm256_mul_ps(_mm256_loadu_ps(t + k + 8 * u), vi);
            v = _mm256_min_ps(v, hi);  /* v is never NaN here (non-finite groups are zeroed) */
            v = _mm256_max_ps(v, lo);
            v = _mm256_sub_ps(_mm256_add_ps(v, magic), magic);
            q[u] = _mm256_cvtps_epi32(v); /* integral already: exact */
        }
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256((__m256i *)(dst + k), _mm256_xor_si256(_mm256_permutevar8x32_epi32(p, perm), flip));
    }
    return k;
}
#endif

static void nm_qrow(const nm_qplan *p, int64_t i, float *tmp)
{
    const nm_qgemm_args *x = p->x;
    uint8_t *dst = p->abuf + i * p->lda;
    float *sa = p->sa + i * p->ng;
    const int64_t K = p->K;
    const uint8_t zero = p->kd.offset ? 128 : 0;
    if (i >= p->M) { /* tile padding rows */
        memset(dst, zero, (size_t)p->lda);
        for (int64_t g = 0; g < p->ng; g++) sa[g] = 0.0f;
        return;
    }
    memset(dst + K, zero, (size_t)(p->lda - K));
    if (x->Aq) {
        const int8_t *a = x->Aq + i * x->rsa;
        for (int64_t k = 0; k < K; k++) dst[k] = (uint8_t)((int)a[k * x->csa] + (int)zero);
        for (int64_t g = 0; g < p->ng; g++) sa[g] = x->a_scale ? x->a_scale[i * p->ng + g] : 0.0f;
        return;
    }
    const float *a = x->A + i * x->rsa;
    const float *sm = x->inv_smooth;
    if (x->csa == 1) {
        if (sm) {
            for (int64_t k = 0; k < K; k++) tmp[k] = a[k] * sm[k];
        } else {
            memcpy(tmp, a, (size_t)K * sizeof(float));
        }
    } else if (sm) {
        for (int64_t k = 0; k < K; k++) tmp[k] = a[k * x->csa] * sm[k];
    } else {
        for (int64_t k = 0; k < K; k++) tmp[k] = a[k * x->csa];
    }
    /* the last group's SIMD loops may run on to K rounded up to 32 (within the row's lda bytes):
     * zeros there change no max and round to the padding byte the row already holds */
    const int64_t k32 = (K + 31) / 32 * 32;
    for (int64_t k = K; k < k32; k++) tmp[k] = 0.0f;
    for (int64_t g = 0; g < p->ng; g++) {
        const int64_t k0 = g * p->G, k1 = p->ng == 1 ? K : nm_qmin(K, k0 + p->G);
        const int64_t kv = k1 == K && k32 <= p->lda ? k32 : k1; /* SIMD end */
        float amax = 0.0f;
        int bad = 0;
        int64_t k = k0;
#if NM_X86
        if (p->simd) k = nm_qabsmax_avx2(tmp + k0, kv - k0, &amax, &bad) + k0;
        if (k > k1) k = k1;
#endif
        for (; k < k1; k++) {
            const float ax = fabsf(tmp[k]);
            bad |= !(ax <= FLT_MAX);
            amax = ax > amax ? ax : amax;
        }
        float s, inv;
        if (x->a_static) {
            s = x->a_static[g];
            inv = s > 0.0f && s <= FLT_MAX ? 1.0f / s : 0.0f;
        } else {
            s = amax / 127.0f;
            inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        }
        if (bad) {
            s = NAN;
            inv = 0.0f;
            for (int64_t k = k0; k < k1; k++) tmp[k] = 0.0f;
        }
        k = k0;
#if NM_X86
        if (p->simd) k = nm_qround_avx2(tmp + k0, kv - k0, inv, p->kd.offset, dst + k0) + k0;
        if (k > k1) k = k1;
#endif
        for (; k < k1; k++) {
            float v = tmp[k] * inv;
            v = v > 127.0f ? 127.0f : v;
            v = v < -127.0f ? -127.0f : v;
            dst[k] = (uint8_t)((int)nm_qrne(v) + (int)zero);
        }
        sa[g] = s;
    }
}

/* ---- tiles ---------------------------------------------------------------------------------- */

/* the AVX-512 tile finisher applies (32-column tiles, unit column strides of C and the residual;
 * the activation is then deferred to whole rows) */
static int nm_qfast_finish(const nm_qplan *p)
{
    const nm_qgemm_args *x = p->x;
    return p->z512 && p->kd.nr == 32 && x->C && x->csc == 1 && (!x->ep || !x->ep->res || x->ep->res_cs == 1);
}

/* defer_act: leave the activation to the caller (nm_qunit applies it to whole output rows) */
static void nm_qtile_run(const nm_qplan *p, int64_t i0, int64_t j0, int defer_act)
{
    const nm_qgemm_args *x = p->x;
    const int mr = p->kd.mr, nr = p->kd.nr;
    _Alignas(64) float f[NM_QMAX_MR * NM_QMAX_NR];
    _Alignas(64) int32_t ci[NM_QMAX_MR * NM_QMAX_NR];
    nm_qtile t;
    t.k4 = p->Kp / 4;
    t.g4 = p->g4;
    t.kc4 = p->kc / 4;
    t.ng = (int)p->ng;
    t.a = p->abuf + i0 * p->lda;
    t.lda = p->lda;
    t.sa = p->sa + i0 * p->ng;
    t.b = x->Bp + (j0 / 16) * p->Kp * 16;
    t.pstride = p->Kp * 16;
    t.colsum = x->colsum + j0;
    t.ws = x->Ci ? NULL : x->w_scale + j0;
    t.ldg = p->Np;
    t.f = f;
    t.ci = x->Ci ? ci : NULL;
    p->kd.ukr(&t);
    const int m = (int)nm_qmin(mr, p->M - i0);
    const int n = (int)nm_qmin(nr, p->N - j0);
    if (x->Ci) {
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++) x->Ci[(i0 + i) * x->rsc + (j0 + j) * x->csc] = ci[i * nr + j];
        return;
    }
    /* the float GEMM's epilogue (nm_tile_finish's operations in its order: + bias_col, + bias_row,
     * + residual, act), one row at a time in branch-free loops */
    const nm_epilogue *ep = x->ep;
    const int act = ep ? ep->act : NM_ACT_NONE;
#if NM_X86
    if (nm_qfast_finish(p)) {
        /* AVX-512: bias / residual (the activation is deferred to whole rows: nm_qunit) */
        nm_qfinish_avx512(f, m, n, x->C + i0 * x->rsc + j0, x->rsc, ep && ep->bias_col ? ep->bias_col + j0 : NULL,
                          ep && ep->bias_row ? ep->bias_row + i0 : NULL,
                          ep && ep->res ? ep->res + i0 * ep->res_rs + j0 : NULL, ep ? ep->res_rs : 0);
        return;
    }
#endif
    for (int i = 0; i < m; i++) {
        const int64_t r = i0 + i;
        float v[NM_QMAX_NR];
        memcpy(v, f + i * nr, (size_t)n * sizeof(float));
        if (ep && ep->bias_col) {
            const float *bc = ep->bias_col + j0;
            for (int j = 0; j < n; j++) v[j] = v[j] + bc[j];
        }
        if (ep && ep->bias_row) {
            const float br = ep->bias_row[r];
            for (int j = 0; j < n; j++) v[j] = v[j] + br;
        }
        if (ep && ep->res) {
            const float *rr = ep->res + r * ep->res_rs + j0 * ep->res_cs;
            const ptrdiff_t cs = ep->res_cs;
            if (cs == 1) {
                for (int j = 0; j < n; j++) v[j] = v[j] + rr[j];
            } else {
                for (int j = 0; j < n; j++) v[j] = v[j] + rr[j * cs];
            }
        }
        if (act != NM_ACT_NONE && !defer_act) nm_qact(p, act, ep->pwl, v, n);
        float *cr = x->C + r * x->rsc + j0 * x->csc;
        if (x->csc == 1) {
            memcpy(cr, v, (size_t)n * sizeof(float));
        } else {
            for (int j = 0; j < n; j++) cr[j * x->csc] = v[j];
        }
    }
}

/* unit u of nmu x ns: rows [u / ns block), columns tiles [range of u % ns) */
static void nm_qunit(const nm_qplan *p, int64_t u, int64_t mu, int64_t ns, int64_t ntile)
{
    const int64_t mi = u / ns, ni = u % ns;
    const int64_t r0 = mi * mu, r1 = nm_qmin(p->Mp, r0 + mu);
    const int64_t t0 = ntile * ni / ns, t1 = ntile * (ni + 1) / ns;
    const int defer = p->x->C && p->x->csc == 1 && p->x->ep && p->x->ep->act != NM_ACT_NONE;
    for (int64_t jt = t0; jt < t1; jt++)
        for (int64_t i0 = r0; i0 < r1; i0 += p->kd.mr) nm_qtile_run(p, i0, jt * p->kd.nr, defer);
    if (!defer) return;
    /* the activation over each output row of the unit at once (one call per row instead of per
     * tile row: the vector PWL's setup is amortized); elementwise, so the same bits */
    const nm_epilogue *ep = p->x->ep;
    const int64_t c0 = t0 * p->kd.nr, c1 = nm_qmin(p->N, t1 * p->kd.nr);
    for (int64_t r = r0; r < nm_qmin(r1, p->M); r++) {
        float *cr = p->x->C + r * p->x->rsc + c0;
        nm_qact(p, ep->act, ep->pwl, cr, c1 - c0);
    }
}

typedef struct nm_qtask_arg {
    const nm_qplan *p;
    float *tmps;
    size_t tmpf;
    int64_t mu, ns, ntile, units;
} nm_qtask_arg;

/* One thread of the team (the core's pthread pool, nm_threads.h): quantize a static share of the
 * rows, meet, then take work units from the team's dynamic counter.  team is NULL when alone. */
static void nm_qtask(void *arg, nm_team *team, int tid, int nt)
{
    const nm_qtask_arg *a = (const nm_qtask_arg *)arg;
    const nm_qplan *p = a->p;
    float *tmp = a->tmps + (size_t)tid * a->tmpf;
    for (int64_t i = p->Mp * tid / nt; i < p->Mp * (tid + 1) / nt; i++) nm_qrow(p, i, tmp);
    if (!team) {
        if (p->kd.amx) nm_qamx_begin((int)p->kc);
        for (int64_t u = 0; u < a->units; u++) nm_qunit(p, u, a->mu, a->ns, a->ntile);
        if (p->kd.amx) nm_qamx_end();
        return;
    }
    nm_team_barrier(team);
    if (p->kd.amx) nm_qamx_begin((int)p->kc);
    for (;;) {
        const int64_t u = nm_team_next(team);
        if (u >= a->units) break;
        nm_qunit(p, u, a->mu, a->ns, a->ntile);
    }
    if (p->kd.amx) nm_qamx_end();
}

int nm_qgemm(const nm_qgemm_args *x, int nthreads, int qkernel)
{
    if (!x) return NM_EINVAL;
    const int64_t M = x->M, N = x->N, K = x->K;
    int64_t ng, g4;
    if (M < 0 || N < 0 || K < 0 || !nm_qgroups(K, x->G, &ng, &g4)) return NM_EINVAL;
    if (!x->A == !x->Aq || !x->C == !x->Ci) return NM_EINVAL;
    if (x->Ci && ng != 1) return NM_EINVAL;
    if (x->C && !x->w_scale) return NM_EINVAL;
    if (x->C && x->Aq && !x->a_scale) return NM_EINVAL;
    const int act = x->ep && x->C ? x->ep->act : NM_ACT_NONE;
    if (act != NM_ACT_NONE && act != NM_ACT_RELU && act != NM_ACT_PWL) return NM_EINVAL;
    if (act == NM_ACT_PWL && (!x->ep->pwl || x->ep->pwl->n < 1 || x->ep->pwl->nhint < 1)) return NM_EINVAL;
    const int kres = nm_qkernel_resolve(qkernel);
    if (kres < 0) return NM_EINVAL;
    if (M == 0 || N == 0) return NM_OK;
    if (!x->colsum || (K > 0 && !x->Bp)) return NM_EINVAL;

    nm_qplan p;
    memset(&p, 0, sizeof p);
    p.x = x;
    p.kd = nm_qkdesc_for(kres);
    p.M = M, p.N = N, p.K = K;
    p.Kp = nm_qceil(K, 4) * 4;
    p.Np = nm_qceil(N, NM_Q_NPAD) * NM_Q_NPAD;
    p.lda = nm_qceil(p.Kp > 0 ? p.Kp : 4, 64) * 64;
    p.Mp = nm_qceil(M, p.kd.mr) * p.kd.mr;
    p.ng = ng, p.g4 = g4;
    p.G = ng == 1 ? K : x->G;
    /* AMX chunk along K: a whole number per group (gcd(G, 64)); one group: 64 */
    p.kc = 64;
    if (ng > 1)
        while (p.G % p.kc) p.kc /= 2;
    p.simd = NM_X86 && kres != NM_QKERNEL_SCALAR;
    p.z512 = NM_X86 && (kres == NM_QKERNEL_AMX || kres == NM_QKERNEL_AVX512VNNI);
#if NM_X86
    if (p.z512 && act == NM_ACT_PWL) nm_pwl_reg_of(x->ep->pwl, &p.reg);
#endif

    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    if (!NM_HAVE_THREADS) nt = 1;
    if ((double)M * (double)N * (double)(K > 0 ? K : 1) < 64.0 * 64.0 * 64.0) nt = 1;

    /* scratch: quantized A, row scales, one float row per thread, PWL rows */
    const int64_t rows_f = (act == NM_ACT_PWL && p.kd.act != nm_act_scalar &&
                            M * N >= 4 * (int64_t)x->ep->pwl->nhint) ? nm_pwl_rows_floats(x->ep->pwl) : 0;
    const size_t abytes = (size_t)(p.Mp * p.lda);
    const size_t sabytes = (size_t)(p.Mp * ng) * sizeof(float);
    const size_t tmpf = (size_t)(K > 0 ? K : 1) + 48; /* K rounded up to 32 (nm_qrow's zero tail), + 16 */
    const size_t total = abytes + 64 + sabytes + 64 + (size_t)nt * tmpf * sizeof(float) + 64 +
                         (size_t)rows_f * sizeof(float) + 64;
    void *raw = malloc(total);
    if (!raw) return NM_ENOMEM;
    uintptr_t cur = ((uintptr_t)raw + 63) & ~(uintptr_t)63;
    p.abuf = (uint8_t *)cur;
    cur = (cur + abytes + 63) & ~(uintptr_t)63;
    p.sa = (float *)cur;
    cur = (cur + sabytes + 63) & ~(uintptr_t)63;
    float *tmps = (float *)cur;
    cur = (cur + (size_t)nt * tmpf * sizeof(float) + 63) & ~(uintptr_t)63;
    if (rows_f) {
        float *rows = (float *)cur;
        nm_pwl_rows_build(x->ep->pwl, rows);
        p.rows = rows;
    }

    /* work units: row blocks of mu rows x ns column ranges, ~4 per thread */
    const int64_t ntile = nm_qceil(N, p.kd.nr);
    const int64_t mpan = p.Mp / p.kd.mr;
    const int64_t want = nt > 1 ? 4 * (int64_t)nt : 1;
    int64_t mu = nm_qceil(mpan, want) * p.kd.mr;
    const int64_t mu_max = (96 / p.kd.mr) * p.kd.mr;
    if (mu > mu_max) mu = mu_max;
    const int64_t nmu = nm_qceil(p.Mp, mu);
    int64_t ns = nmu >= want ? 1 : nm_qceil(want, nmu);
    if (ns > ntile) ns = ntile;
    const int64_t units = nmu * ns;

    nm_qtask_arg ta = {&p, tmps, tmpf, mu, ns, ntile, units};
    if (nt == 1) {
        nm_qtask(&ta, NULL, 0, 1);
    } else {
        nm_parallel(nt, nm_qtask, &ta);
    }
    free(raw);
    return NM_OK;
}
