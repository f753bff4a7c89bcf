/* Threading shim: OpenMP when the build enables it (-fopenmp, detected by setup.py), otherwise a
 * serial build where every "team" has one thread.  The GEMM only ever splits the M/N loops or the
 * batch, never K, so results are the same with or without threads. */
#ifndef NM_THREADS_H
#define NM_THREADS_H

#ifdef _OPENMP
#include <omp.h>
#define NM_HAVE_OPENMP 1
#define NM_PRAGMA(x) _Pragma(#x)
#define NM_BARRIER() NM_PRAGMA(omp barrier)
#else
#define NM_HAVE_OPENMP 0
#define NM_BARRIER() ((void)0)
#endif

/* Upper bound on the threads of one call (pack buffers are allocated per thread). */
#define NM_MAX_THREADS 256

#endif
