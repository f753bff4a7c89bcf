/* cpuid + xgetbv dispatch support.  See nm_cpu.h. */
#include "nm_cpu.h"

#include <stdint.h>
#include <time.h>

#if defined(__x86_64__) || defined(_M_X64)

#if defined(_MSC_VER) && !defined(__clang__)
#include <intrin.h>
#include <immintrin.h>
static void nm_cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    int v[4];
    __cpuidex(v, (int)leaf, (int)sub);
    for (int i = 0; i < 4; i++) r[i] = (unsigned)v[i];
}
static uint64_t nm_xgetbv0(void) { return (uint64_t)_xgetbv(0); }
#else
#include <cpuid.h>
static void nm_cpuid(unsigned leaf, unsigned sub, unsigned r[4])
{
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static uint64_t nm_xgetbv0(void)
{
    uint32_t eax, edx;
    /* xgetbv with ecx = 0 (XCR0), spelled as bytes so no -mxsave is needed */
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}
#endif

int nm_cpu_has_avx2_fma(void)
{
    unsigned r[4];
    nm_cpuid(0, 0, r);
    unsigned max_leaf = r[0];
    if (max_leaf < 7) return 0;
    nm_cpuid(1, 0, r);
    const unsigned ecx = r[2];
    const int fma = (ecx >> 12) & 1, osxsave = (ecx >> 27) & 1, avx = (ecx >> 28) & 1;
    if (!(fma && osxsave && avx)) return 0;
    if ((nm_xgetbv0() & 0x6) != 0x6) return 0; /* XMM and YMM state enabled by the OS */
    nm_cpuid(7, 0, r);
    return (int)((r[1] >> 5) & 1); /* EBX bit 5: AVX2 */
}

int nm_cpu_has_avx512(void)
{
    if (!nm_cpu_has_avx2_fma()) return 0;
    if ((nm_xgetbv0() & 0xE6) != 0xE6) return 0; /* XMM, YMM, opmask, ZMM_Hi256, Hi16_ZMM */
    unsigned r[4];
    nm_cpuid(7, 0, r);
    const unsigned ebx = r[1];
    const int f = (ebx >> 16) & 1, dq = (ebx >> 17) & 1, bw = (ebx >> 30) & 1, vl = (ebx >> 31) & 1;
    return f && dq && bw && vl;
}

static double nm_now(void)
{
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

double nm_cpu_measure_ghz(void)
{
#if defined(__GNUC__) || defined(__clang__)
    double best = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        /* x 8 dependent adds of a register.  Not of an immediate: Golden Cove cores (Alder Lake,
         * Sapphire Rapids) fold chains of add-immediate at rename, several per cycle, which read
         * as a clock of ~18 GHz. */
        const uint64_t iters = 2000000;
        uint64_t x = 0, one = 1;
        const double t0 = nm_now();
        for (uint64_t i = 0; i < iters; i++) {
            __asm__ volatile("add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\t"
                             "add %1, %0\n\tadd %1, %0\n\tadd %1, %0\n\tadd %1, %0"
                             : "+r"(x)
                             : "r"(one));
        }
        const double dt = nm_now() - t0;
        if (dt > 0 && x == iters * 8) {
            const double ghz = (double)(iters * 8) / dt * 1e-9;
            if (ghz > best) best = ghz;
        }
    }
    return best;
#else
    return 0.0;
#endif
}

#else

int nm_cpu_has_avx2_fma(void) { return 0; }
int nm_cpu_has_avx512(void) { return 0; }
double nm_cpu_measure_ghz(void) { return 0.0; }

#endif
