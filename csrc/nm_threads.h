/* The core's thread pool: a small persistent pthread pool with a bounded spin, then a sleep.
 *
 * Why not OpenMP: libgomp's default wait policy spins idle workers for up to ~0.3 s after every
 * parallel region (GOMP_SPINCOUNT), which steals the cores from whatever runs next in the process
 * (numpy/OpenBLAS, ONNX Runtime, PyTorch): numpy's 1024^3 matmul ran 1.54x slower right after a small
 * nmengine call.  OMP_WAIT_POLICY can only be set before libgomp loads and applies to the whole
 * process.  This pool's workers spin at most NM_SPIN_US microseconds (default 50: covers the gap
 * between the back-to-back calls of one model run, costs another library at most that long), then
 * sleep on a condition variable; a call wakes only the workers it needs, after keeping them off the
 * caller's CPU (affinity; see nm_pool_steer in nm_threads.c).
 *
 * Use (C API, also for other kernels such as the int8 GEMM):
 *     static void task(void *arg, nm_team *team, int tid, int nt) { ... }
 *     nm_parallel(nt, task, &arg);           runs task on nt threads (the caller is tid 0) and
 *                                            returns when all are done
 *   inside a task:
 *     nm_team_barrier(team)                  all nt threads meet; also resets the dynamic counter
 *     nm_team_next(team)                     0, 1, 2, ... handed out across the team (dynamic
 *                                            schedules); reset by every barrier
 *     nm_parallel_for(nt, n, fn, arg)        static split of [0, n) into nt contiguous ranges
 * One call runs at a time: a call made while the pool is busy (another thread's call, or a call from
 * inside a task) runs on its caller alone (nt = 1).  The core only ever splits work so that every
 * output element's float operations do not depend on the thread count, so this changes no result.
 * Without pthreads (e.g. Windows builds) everything runs on the caller.
 */
#ifndef NM_THREADS_H
#define NM_THREADS_H

#include <stdint.h>

/* Upper bound on the threads of one call (pack buffers are allocated per thread). */
#define NM_MAX_THREADS 256

#if defined(__unix__) || defined(__APPLE__)
#define NM_HAVE_THREADS 1
#else
#define NM_HAVE_THREADS 0
#endif

typedef struct nm_team nm_team;
typedef void (*nm_task_fn)(void *arg, nm_team *team, int tid, int nt);
typedef void (*nm_range_fn)(void *arg, int64_t i0, int64_t i1, int tid);

/* Run task(arg, team, tid, nt) for tid = 0..nt-1 on nt threads; returns the team size used (1 when
 * nt <= 1, the pool is busy or threads are unavailable). */
int nm_parallel(int nt, nm_task_fn task, void *arg);

/* nm_parallel for tasks that take ALL their work from nm_team_next and never meet at a barrier
 * (tid only picks private scratch): the caller returns as soon as the work is done, without
 * waiting for workers that have not started yet (e.g. whose core another process holds).  A
 * worker that starts late finds no work; the work items, not the threads, fix every result. */
int nm_parallel_dyn(int nt, nm_task_fn task, void *arg);

/* nm_parallel for work split evenly across the team (equal static shares, or dynamic units between
 * barriers): the pool judges from the caller's waits whether a worker's core was taken by another
 * thread, and then runs the next calls on their caller alone for a while (nm_pool_judge). */
int nm_parallel_judged(int nt, nm_task_fn task, void *arg);

/* fn(arg, i0, i1, tid) on nt contiguous ranges [n * tid / nt, n * (tid + 1) / nt) (empty ones skipped). */
void nm_parallel_for(int nt, int64_t n, nm_range_fn fn, void *arg);

void nm_team_barrier(nm_team *team);
int64_t nm_team_next(nm_team *team);

/* Spin budget in microseconds before a waiting thread sleeps (default 50; NMENGINE_SPIN_US at the
 * first call overrides; 0 = sleep at once). */
int nm_spin_us(void);
void nm_set_spin_us(int us);

/* Workers currently alive in the pool (they are created on first need and live until exit). */
int nm_pool_workers(void);

/* How many times so far the pool ran calls on their caller alone for a while because team calls in a
 * row waited for a worker that could not run (its core taken by another library's or process's
 * thread; see nm_pool_judge in nm_threads.c). */
int64_t nm_pool_backoffs(void);

/* Legacy OpenMP shim for C code that still uses pragmas (prefer nm_parallel: libgomp's idle
 * workers spin for a long time after each region and slow other libraries in the process). */
#ifdef _OPENMP
#include <omp.h>
#define NM_HAVE_OPENMP 1
#define NM_PRAGMA(x) _Pragma(#x)
#define NM_BARRIER() NM_PRAGMA(omp barrier)
#else
#define NM_HAVE_OPENMP 0
#define NM_BARRIER() ((void)0)
#endif

#endif
