/* Run-time CPU feature detection (cpuid + xgetbv).  No cached state: every call asks the CPU, so
 * callers that care about the cost (a VM exit per cpuid under KVM) should cache the answer
 * themselves (nmengine/kernels.py does, once per process). */
#ifndef NM_CPU_H
#define NM_CPU_H

/* 1 when the CPU has AVX2 and FMA3 and the OS saves YMM state (OSXSAVE, XCR0 bits 1 and 2). */
int nm_cpu_has_avx2_fma(void);

/* 1 when the CPU has AVX-512 F, BW, DQ and VL on top of AVX2 + FMA and the OS saves the opmask and
 * ZMM state (XCR0 bits 5, 6, 7 besides 1 and 2). */
int nm_cpu_has_avx512(void);

/* Core clock estimate in GHz: times a chain of dependent integer adds (one cycle each on every
 * x86-64 core) with the C11 wall clock; ~20 ms.  Returns 0 when it cannot measure (non-x86).
 * For benchmark reports only (peak FLOP/s), never used for dispatch. */
double nm_cpu_measure_ghz(void);

#endif
