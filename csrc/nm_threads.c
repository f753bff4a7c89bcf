/* The core's thread pool (see nm_threads.h for the why and the API). */
#if defined(__linux__) && !defined(_GNU_SOURCE)
#define _GNU_SOURCE /* sched_getcpu, pthread_{get,set}affinity_np: steering workers off the caller's core */
#endif
#if !defined(_POSIX_C_SOURCE) || _POSIX_C_SOURCE < 200809L
#undef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif
#include "nm_threads.h"

#include <stdlib.h>

#if NM_HAVE_THREADS
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

struct nm_team {
    int nt;
    _Atomic int64_t next;    /* dynamic schedule counter */
    _Atomic int arrived;     /* barrier arrivals */
    _Atomic unsigned gen;    /* barrier generation */
    _Atomic int sleepers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

typedef struct nm_worker {
    _Alignas(64) _Atomic unsigned gen; /* bumped once per call that asks this worker to join */
    _Atomic int sleepers;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
} nm_worker;

/* The gate of the current call: bits 32.. a call sequence number, bit 31 open, bits 0..30 the
 * workers that have entered.  A woken worker enters only an open gate (CAS), and takes the next
 * tid; the caller does not reuse the call's descriptor (P.task, ...) before every worker that entered
 * has finished, and a worker that finds the gate closed touches nothing of the call. */
#define NM_GATE_OPEN ((uint64_t)1 << 31)
#define NM_GATE_COUNT(g) ((int)((g) & (NM_GATE_OPEN - 1)))
static struct {
    pthread_mutex_t create_mu;
    _Atomic int busy;
    _Atomic int spin_us; /* < 0: not read yet */
    int nworkers;
    int steer_cpu; /* the caller's CPU the workers' affinity excludes (-1: none applied yet) */
    int steer_off; /* NMENGINE_POOL_STEER=0 */
    double solo_until;  /* calls before this time (nm_now_us) run on their caller alone */
    double backoff_us;  /* the current solo period after starved calls (0: the last team call was sound) */
    int strikes;        /* consecutive starved team calls */
    _Atomic double entered_us; /* when the last worker entered the current call (nm_now_us) */
    _Atomic int64_t backoffs; /* solo periods started so far */
    nm_worker *w[NM_MAX_THREADS];
    nm_team team;
    _Atomic uint64_t gate;
    nm_task_fn task; /* the current call (stable while a worker is inside the gate) */
    void *arg;
    int nt;
    _Atomic int done;
    _Atomic unsigned done_gen;
    _Atomic int done_sleepers;
    pthread_mutex_t done_mu;
    pthread_cond_t done_cv;
    int atfork;
} P = {
    .create_mu = PTHREAD_MUTEX_INITIALIZER,
    .spin_us = -1,
    .steer_cpu = -1,
    .steer_off = -1,
    .team = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER},
    .done_mu = PTHREAD_MUTEX_INITIALIZER,
    .done_cv = PTHREAD_COND_INITIALIZER,
};

static double nm_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

static inline void nm_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

int nm_spin_us(void)
{
    int us = atomic_load_explicit(&P.spin_us, memory_order_relaxed);
    if (us < 0) {
        const char *e = getenv("NMENGINE_SPIN_US");
        us = 50;
        if (e && *e) {
            char *end = NULL;
            const long v = strtol(e, &end, 10);
            if (end && *end == '\0' && v >= 0 && v <= 1000000) us = (int)v;
        }
        atomic_store(&P.spin_us, us);
    }
    return us;
}

void nm_set_spin_us(int us) { atomic_store(&P.spin_us, us < 0 ? 0 : us); }

/* Waits inside a call (a team barrier, the caller waiting for the team at the end) spin at least
 * this long before they sleep.  The team is working on the call, so the wait is for a teammate that
 * is about to arrive; sleeping instead costs a futex wake-up, which in a VM guest (an IPI to a halted
 * vCPU) takes tens to hundreds of microseconds and, repeated at every barrier of a 1-2 ms GEMM, made
 * 2 threads slower than 1 (784 x 1152 x 128: 2.0 ms with 2 threads against 1.6 ms with 1; 0.9 ms with
 * this budget).  Idle workers between calls keep the short NM_SPIN_US budget: that is the wait that
 * could steal a core from another library.  NMENGINE_SPIN_US=0 turns every spin off. */
#define NM_TEAM_SPIN_US 1000
#define NM_YIELD_AFTER_US 20

static int nm_team_spin_us(void)
{
    const int us = nm_spin_us();
    return us == 0 ? 0 : (us > NM_TEAM_SPIN_US ? us : NM_TEAM_SPIN_US);
}

/* Time the caller of a team call spends waiting for its team (barriers, the end of the call). */
static _Thread_local int nm_is_caller;
static _Thread_local double nm_caller_wait_us;

/* Wait until *v != old: spin for `us` microseconds, then sleep on (mu, cv). */
static void nm_wait_change_impl(_Atomic unsigned *v, unsigned old, _Atomic int *sleepers, pthread_mutex_t *mu,
                           pthread_cond_t *cv, int us)
{
    if (atomic_load_explicit(v, memory_order_acquire) != old) return;
    if (us > 0) {
        const double t0 = nm_now_us();
        for (unsigned i = 1;; i++) {
            nm_relax();
            if (atomic_load_explicit(v, memory_order_acquire) != old) return;
            if ((i & 63) == 0) {
                const double dt = nm_now_us() - t0;
                if (dt > us) break;
                /* past the first microseconds, let whatever shares this core run: the teammate we
                 * wait for may be queued behind us (the OS placed both threads on one core) */
                if (dt > NM_YIELD_AFTER_US) sched_yield();
            }
        }
    }
    pthread_mutex_lock(mu);
    atomic_fetch_add(sleepers, 1); /* seq_cst: pairs with nm_publish's load of sleepers */
    while (atomic_load(v) == old) pthread_cond_wait(cv, mu);
    atomic_fetch_sub(sleepers, 1);
    pthread_mutex_unlock(mu);
}

static void nm_wait_change(_Atomic unsigned *v, unsigned old, _Atomic int *sleepers, pthread_mutex_t *mu,
                           pthread_cond_t *cv, int us)
{
    /* a caller's wait counts once every worker has entered the call: waiting for a sleeping worker to
     * wake up (tens to hundreds of microseconds in a VM) is not what nm_pool_judge looks for */
    if (!nm_is_caller || NM_GATE_COUNT(atomic_load_explicit(&P.gate, memory_order_relaxed)) < P.nt - 1) {
        nm_wait_change_impl(v, old, sleepers, mu, cv, us);
        return;
    }
    const double t0 = nm_now_us();
    nm_wait_change_impl(v, old, sleepers, mu, cv, us);
    nm_caller_wait_us += nm_now_us() - t0;
}

/* *v += 1 and wake the sleepers of (mu, cv), if any. */
static void nm_publish(_Atomic unsigned *v, _Atomic int *sleepers, pthread_mutex_t *mu, pthread_cond_t *cv)
{
    atomic_fetch_add(v, 1);
    if (atomic_load(sleepers) > 0) {
        pthread_mutex_lock(mu);
        pthread_cond_broadcast(cv);
        pthread_mutex_unlock(mu);
    }
}

static void *nm_worker_main(void *p)
{
    nm_worker *w = (nm_worker *)p;
    unsigned seen = 0;
#if defined(__linux__) && defined(__GLIBC__)
    (void)pthread_setname_np(pthread_self(), "nm-pool"); /* what top -H and /proc/.../comm show */
#endif
    for (;;) {
        nm_wait_change(&w->gen, seen, &w->sleepers, &w->mu, &w->cv, nm_spin_us());
        seen = atomic_load_explicit(&w->gen, memory_order_acquire);
        uint64_t g = atomic_load(&P.gate);
        while ((g & NM_GATE_OPEN) && !atomic_compare_exchange_weak(&P.gate, &g, g + 1)) {
        }
        if (!(g & NM_GATE_OPEN)) continue; /* the call finished without this worker */
        atomic_store_explicit(&P.entered_us, nm_now_us(), memory_order_relaxed);
        const int tid = NM_GATE_COUNT(g) + 1;
        if (tid < P.nt) P.task(P.arg, &P.team, tid, P.nt); /* (a surplus entrant only reports done) */
        atomic_fetch_add(&P.done, 1);
        nm_publish(&P.done_gen, &P.done_sleepers, &P.done_mu, &P.done_cv);
    }
    return NULL;
}

static void nm_pool_atfork_child(void)
{
    /* the child has none of the parent's workers: start over (the old structs are leaked) */
    P.nworkers = 0;
    P.steer_cpu = -1;
    P.solo_until = 0;
    P.backoff_us = 0;
    P.strikes = 0;
    atomic_store(&P.busy, 0);
    atomic_store(&P.gate, 0);
    pthread_mutex_init(&P.create_mu, NULL);
    pthread_mutex_init(&P.team.mu, NULL);
    pthread_cond_init(&P.team.cv, NULL);
    pthread_mutex_init(&P.done_mu, NULL);
    pthread_cond_init(&P.done_cv, NULL);
    atomic_store(&P.team.sleepers, 0);
    atomic_store(&P.done_sleepers, 0);
}

/* Workers 1..n (creating the missing ones); returns how many exist (may be fewer on failure). */
static int nm_pool_grow(int n)
{
    pthread_mutex_lock(&P.create_mu);
    if (!P.atfork) {
        pthread_atfork(NULL, NULL, nm_pool_atfork_child);
        P.atfork = 1;
    }
    while (P.nworkers < n) {
        nm_worker *w = NULL;
        if (posix_memalign((void **)&w, 64, sizeof *w) != 0 || !w) break;
        atomic_init(&w->gen, 0);
        atomic_init(&w->sleepers, 0);
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        if (pthread_create(&w->th, NULL, nm_worker_main, w) != 0) {
            free(w);
            break;
        }
        P.w[++P.nworkers] = w;
    }
    const int have = P.nworkers;
    pthread_mutex_unlock(&P.create_mu);
    return have;
}

int nm_pool_workers(void) { return P.nworkers; }

/* Wait until P.done reaches n. */
static void nm_wait_done(int n)
{
    for (;;) {
        const unsigned dg = atomic_load(&P.done_gen);
        if (atomic_load(&P.done) >= n) return;
        nm_wait_change(&P.done_gen, dg, &P.done_sleepers, &P.done_mu, &P.done_cv, nm_team_spin_us());
    }
}

/* Keep the workers off the caller's core.  A worker woken from its sleep is placed by the OS next to
 * its waker, and on a small machine (a 2-vCPU guest) the scheduler then often leaves caller and worker
 * time-sharing one core for tens of milliseconds while the other idles: a 1-2 ms GEMM ran at the
 * 1-thread rate in about half of the blocks of calls (784 x 1152 x 128: 1.8-1.9 ms against 0.83-0.94
 * ms), with or without another library in the process.  So before a call wakes its workers, their
 * affinity becomes the caller's CPU set minus the CPU the caller runs on (the process's set, read from
 * the main thread, when the caller is pinned to one CPU); the syscalls are paid only when the caller's
 * CPU changes (sched_getcpu is a vDSO read).  Nothing is done when no other CPU is allowed, or when
 * NMENGINE_POOL_STEER=0.  Called with P.busy held. */
static void nm_pool_steer(void)
{
#if defined(__linux__) && defined(CPU_COUNT)
    if (P.steer_off < 0) {
        const char *e = getenv("NMENGINE_POOL_STEER");
        P.steer_off = (e && e[0] == '0' && e[1] == '\0') ? 1 : 0;
    }
    if (P.steer_off) return;
    const int cpu = sched_getcpu();
    if (cpu < 0 || cpu == P.steer_cpu || cpu >= CPU_SETSIZE) return;
    P.steer_cpu = cpu;
    cpu_set_t m;
    if (pthread_getaffinity_np(pthread_self(), sizeof m, &m) != 0) return;
    if (CPU_COUNT(&m) < 2 && sched_getaffinity(getpid(), sizeof m, &m) != 0) return;
    CPU_CLR(cpu, &m);
    if (CPU_COUNT(&m) < 1) return;
    for (int i = 1; i <= P.nworkers; i++) (void)pthread_setaffinity_np(P.w[i]->th, sizeof m, &m);
#endif
}

/* A team call whose caller spent more than this share of the call waiting for its team had a worker
 * that could not run: its core was taken (numpy/OpenBLAS keeps its threads spinning for a while
 * after each of its calls; another process), so the worker's static share (its part of the packed B
 * block, then each barrier) held the caller up.  Measured: 784 x 1152 x 128 called right after a
 * numpy matmul took 6.3 ms on 2 threads against ~1.8 ms on 1.  After NM_STRIKES such calls in a row
 * (one alone is often a sleeping worker's slow wake-up in a VM) the next calls run on the caller
 * alone for a while: 2 ms, doubling while the next team call is starved again, up to 64 ms; a sound
 * team call resets it, so a call is never much slower than on one thread.  A worker that enters the
 * call more than NM_LATE_ENTRY_US late counts as starved too (its core was busy); the caller's waits
 * before every worker has entered do not count (a sleeping worker's wake-up).  Only calls whose work is
 * balanced by construction are judged (nm_parallel_judged: the GEMM's shared-B team and its row
 * split), where a healthy team keeps the caller waiting a few percent of the call; a static split of
 * uneven work (sequences of different lengths) would read as starvation.  Calls shorter than
 * NM_JUDGE_MIN_US are not judged.  The
 * thread count never changes a result, so this changes only the time.  NMENGINE_POOL_STEER=0 turns
 * this off too. */
#define NM_STARVED_SHARE 0.2
#define NM_STRIKES 2
#define NM_JUDGE_MIN_US 300.0
#define NM_LATE_ENTRY_US 500.0
#define NM_BACKOFF_MIN_US 2000.0
#define NM_BACKOFF_MAX_US 64000.0

static void nm_pool_judge(double t0, double t1, double waited)
{
    const double wall = t1 - t0;
    if (P.steer_off > 0 || wall < NM_JUDGE_MIN_US) return;
    /* a worker that entered late could not get a core (a wake-up takes under ~0.3 ms even in a VM) */
    const double late = atomic_load_explicit(&P.entered_us, memory_order_relaxed) - t0;
    const int late_entry = late > NM_LATE_ENTRY_US && late > NM_STARVED_SHARE * wall;
    if (!late_entry && waited <= NM_STARVED_SHARE * wall) {
        P.strikes = 0;
        P.backoff_us = 0;
        return;
    }
    if (++P.strikes < NM_STRIKES) return;
    P.backoff_us = P.backoff_us > 0 ? 2 * P.backoff_us : NM_BACKOFF_MIN_US;
    if (P.backoff_us > NM_BACKOFF_MAX_US) P.backoff_us = NM_BACKOFF_MAX_US;
    P.solo_until = t1 + P.backoff_us;
    atomic_fetch_add(&P.backoffs, 1);
}

int64_t nm_pool_backoffs(void) { return atomic_load(&P.backoffs); }

static int nm_parallel_impl(int nt, nm_task_fn task, void *arg, int dyn, int judged)
{
    if (nt > NM_MAX_THREADS) nt = NM_MAX_THREADS;
    int expect = 0;
    if (nt > 1 && atomic_compare_exchange_strong(&P.busy, &expect, 1)) {
        double t0 = 0;
        if (P.solo_until > 0) {
            t0 = nm_now_us();
            if (t0 < P.solo_until) nt = 1; /* backing off after a starved call (nm_pool_judge) */
        }
        const int had = P.nworkers;
        const int have = nm_pool_grow(nt - 1);
        if (have != had) P.steer_cpu = -1; /* new workers start with the creator's affinity */
        if (have + 1 < nt) nt = have + 1;
        if (nt > 1) {
            nm_pool_steer();
            if (t0 == 0) t0 = nm_now_us();
            nm_is_caller = judged;
            nm_caller_wait_us = 0;
            nm_team *t = &P.team;
            t->nt = nt;
            atomic_store(&t->next, 0);
            atomic_store(&t->arrived, 0);
            atomic_store(&P.done, 0);
            P.task = task;
            P.arg = arg;
            P.nt = nt;
            const uint64_t seq = (atomic_load(&P.gate) >> 32) + 1;
            atomic_store(&P.gate, (seq << 32) | NM_GATE_OPEN); /* publishes the descriptor */
            for (int i = 1; i < nt; i++) nm_publish(&P.w[i]->gen, &P.w[i]->sleepers, &P.w[i]->mu, &P.w[i]->cv);
            task(arg, t, 0, nt);
            if (dyn) {
                /* the work is all handed out: workers not yet inside may stay out */
                const uint64_t g = atomic_fetch_and(&P.gate, ~NM_GATE_OPEN);
                nm_wait_done(NM_GATE_COUNT(g));
            } else {
                nm_wait_done(nt - 1); /* every tid must run (static splits, barriers) */
                const uint64_t g = atomic_fetch_and(&P.gate, ~NM_GATE_OPEN);
                nm_wait_done(NM_GATE_COUNT(g)); /* surplus entrants, if any */
            }
            if (judged) {
                nm_is_caller = 0;
                nm_pool_judge(t0, nm_now_us(), nm_caller_wait_us);
            }
            atomic_store(&P.busy, 0);
            return nt;
        }
        atomic_store(&P.busy, 0);
    }
    nm_team solo;
    solo.nt = 1;
    atomic_init(&solo.next, 0);
    atomic_init(&solo.arrived, 0);
    atomic_init(&solo.gen, 0);
    atomic_init(&solo.sleepers, 0);
    task(arg, &solo, 0, 1);
    return 1;
}

int nm_parallel(int nt, nm_task_fn task, void *arg) { return nm_parallel_impl(nt, task, arg, 0, 0); }

int nm_parallel_judged(int nt, nm_task_fn task, void *arg) { return nm_parallel_impl(nt, task, arg, 0, 1); }

int nm_parallel_dyn(int nt, nm_task_fn task, void *arg) { return nm_parallel_impl(nt, task, arg, 1, 0); }

void nm_team_barrier(nm_team *t)
{
    if (t->nt <= 1) {
        atomic_store(&t->next, 0);
        return;
    }
    const unsigned g = atomic_load(&t->gen);
    if (atomic_fetch_add(&t->arrived, 1) == t->nt - 1) {
        atomic_store(&t->arrived, 0);
        atomic_store(&t->next, 0);
        nm_publish(&t->gen, &t->sleepers, &t->mu, &t->cv);
    } else {
        nm_wait_change(&t->gen, g, &t->sleepers, &t->mu, &t->cv, nm_team_spin_us());
    }
}

int64_t nm_team_next(nm_team *t) { return atomic_fetch_add(&t->next, 1); }

#else /* no threads: everything runs on the caller */

struct nm_team {
    int nt;
    int64_t next;
};

int nm_parallel(int nt, nm_task_fn task, void *arg)
{
    (void)nt;
    nm_team solo = {1, 0};
    task(arg, &solo, 0, 1);
    return 1;
}
int nm_parallel_dyn(int nt, nm_task_fn task, void *arg) { return nm_parallel(nt, task, arg); }
int nm_parallel_judged(int nt, nm_task_fn task, void *arg) { return nm_parallel(nt, task, arg); }
void nm_team_barrier(nm_team *t) { t->next = 0; }
int64_t nm_team_next(nm_team *t) { return t->next++; }
int nm_spin_us(void) { return 0; }
void nm_set_spin_us(int us) { (void)us; }
int nm_pool_workers(void) { return 0; }
int64_t nm_pool_backoffs(void) { return 0; }

#endif

typedef struct nm_for_args {
    int64_t n;
    nm_range_fn fn;
    void *arg;
} nm_for_args;

static void nm_for_task(void *p, nm_team *team, int tid, int nt)
{
    (void)team;
    const nm_for_args *a = (const nm_for_args *)p;
    const int64_t i0 = a->n * tid / nt, i1 = a->n * (tid + 1) / nt;
    if (i1 > i0) a->fn(a->arg, i0, i1, tid);
}

void nm_parallel_for(int nt, int64_t n, nm_range_fn fn, void *arg)
{
    if (n <= 0) return;
    if (nt > n) nt = (int)(n < NM_MAX_THREADS ? n : NM_MAX_THREADS);
    nm_for_args a = {n, fn, arg};
    nm_parallel(nt, nm_for_task, &a);
}
