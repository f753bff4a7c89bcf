# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin Cython wrapper over the C GEMM core (csrc/nm_gemm.h).

Only nmengine.kernels calls this module: it validates shapes/dtypes, casts, broadcasts and picks
the kernel; the functions here take float32 arrays whose strides are multiples of 4 bytes and
aligned data, read their element strides, release the GIL and call C.  The Python objects (arrays,
table arrays) stay referenced by the caller's frame for the whole call.

Why one module of this length (~1,070 lines with _core_int8.pxi): Cython builds one extension per
.pyx, and every entry point of the C core (GEMM, packing, row kernels, the plan executor) is a short
typed-memoryview shim declared next to the C prototypes it calls; the int8 entry points are split out
into the included _core_int8.pxi.
"""

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

import numpy as np

cnp.import_array()

cdef extern from "nm_pwl.h":
    cdef struct nm_pwl_reg
    ctypedef struct nm_pwl:
        int32_t n
        int32_t key_mode
        int32_t nhint
        int32_t steps
        int32_t shift
        int32_t base
        float origin
        float scale
        float xmin
        float xmax
        const int32_t *hint
        const float *edges
        const float *slopes
        const float *intercepts
        const nm_pwl_reg *reg

cdef extern from "nm_epilogue.h":
    nm_pwl_reg *nm_pwl_reg_new(const nm_pwl *p) nogil
    void nm_pwl_reg_free(nm_pwl_reg *r) nogil

cdef extern from "nm_cpu.h":
    double nm_cpu_measure_ghz() nogil

cdef extern from "nm_gemm.h":
    int NM_OK
    int NM_ENOMEM
    int NM_EINVAL
    int NM_ACT_NONE
    int NM_ACT_RELU
    int NM_ACT_PWL
    int NM_KERNEL_SCALAR
    int NM_KERNEL_AVX2
    int NM_KERNEL_AVX512

    ctypedef struct nm_epilogue:
        const float *bias_col
        const float *bias_row
        const float *res
        Py_ssize_t res_rs, res_cs
        Py_ssize_t res_ps1, res_ps2
        int act
        const nm_pwl *pwl

    ctypedef struct nm_blocking:
        int mr, nr, mc, kc, nc

    int nm_sgemm_batched(int64_t P1, int64_t P2, int64_t M, int64_t N, int64_t K,
                         const float *A, Py_ssize_t ps1a, Py_ssize_t ps2a, Py_ssize_t rsa, Py_ssize_t csa,
                         const float *B, Py_ssize_t ps1b, Py_ssize_t ps2b, Py_ssize_t rsb, Py_ssize_t csb,
                         float *C, Py_ssize_t ps1c, Py_ssize_t ps2c, Py_ssize_t rsc, Py_ssize_t csc,
                         const nm_epilogue *ep, int nthreads, int kernel) nogil
    int nm_pwl_apply(const nm_pwl *pwl, const float *x, float *y, int64_t n, int nthreads,
                     int kernel) nogil
    int64_t nm_packed_b_floats(int kernel, int64_t K, int64_t N) nogil
    int nm_pack_b_full(int kernel, int64_t K, int64_t N, const float *B, Py_ssize_t rsb, Py_ssize_t csb,
                       float *dst) nogil
    int nm_sgemm_packed(int64_t M, int64_t N, int64_t K, const float *A, Py_ssize_t rsa, Py_ssize_t csa,
                        const float *Bp, float *C, Py_ssize_t rsc, Py_ssize_t csc,
                        const nm_epilogue *ep, int nthreads, int kernel) nogil
    int nm_cpu_has_avx2_fma()
    int nm_cpu_has_avx512()
    int nm_has_openmp()
    nm_blocking nm_get_blocking(int kernel)

cdef extern from "nm_threads.h":
    int NM_HAVE_THREADS
    int nm_spin_us()
    void nm_set_spin_us(int us)
    int nm_pool_workers()
    int64_t nm_pool_backoffs()

cdef extern from "nm_scale.h":
    int NM_BC_NONE
    int NM_BC_FULL
    int NM_BC_ROW
    int NM_BC_COL
    int NM_BC_SCALAR

    ctypedef struct nm_operand:
        const float *p
        int mode

    ctypedef struct nm_scale_args:
        int64_t rows, n
        const float *x
        int has_alpha, has_beta
        float alpha, beta, res_beta
        nm_operand mul, row_scale, col_scale, bias, bias_row, res
        int act
        const nm_pwl *pwl

    int nm_scale(const nm_scale_args *a, float *y, int nthreads, int kernel) nogil

cdef extern from "nm_rowmax.h":
    int nm_pairwise_max(const float *x, int64_t rows, int64_t n, float *y, int nthreads, int kernel) nogil

cdef extern from "nm_softmax.h":
    int nm_softmax_rows(const float *s, int64_t rows, int64_t n, const nm_pwl *exp_pwl,
                        const nm_pwl *recip_pwl, float *m, float *e, float *r, float *p,
                        int nthreads, int kernel) nogil

cdef extern from "nm_plan.h":
    ctypedef struct nm_step_attention:
        const float *qkv
        int64_t ntok, ld_qkv, q_off, k_off, v_off, heads, d
        const unsigned char *mask
        int64_t nseq, cols
        const float *bias
        int64_t ld_bias
        const nm_pwl *exp_pwl
        const nm_pwl *recip_pwl
        float *out
        int64_t ld_out
        int64_t skip

cdef extern from "nm_attention.h":
    int NM_ENOTPREFIX
    int nm_attention_packed(const float *qkv, int64_t ntok, int64_t ld_qkv, int64_t q_off, int64_t k_off,
                            int64_t v_off, int64_t heads, int64_t d, const unsigned char *mask, int64_t nseq,
                            int64_t cols, const float *bias, int64_t ld_bias, const nm_pwl *exp_pwl,
                            const nm_pwl *recip_pwl, float *out, int64_t ld_out, int nthreads, int kernel) nogil

cdef extern from "nm_layernorm.h":
    ctypedef struct nm_ln_args:
        int64_t rows, n
        const float *x
        const float *w_mean
        const float *w_var
        const float *gamma
        const float *beta
        float eps
        const nm_pwl *rsqrt
        float *mean
        float *c
        float *sq
        float *rstd
        float *y

    int nm_layernorm_rows(const nm_ln_args *a, int nthreads, int kernel) nogil

cdef extern from "nm_move.h":
    int nm_move_rows(const void *src, void *dst, const unsigned char *mask, const unsigned char *zero,
                     int64_t rows, int64_t rowbytes, int unpack, int nthreads) nogil

BC_NONE = NM_BC_NONE
BC_FULL = NM_BC_FULL
BC_ROW = NM_BC_ROW
BC_COL = NM_BC_COL
BC_SCALAR = NM_BC_SCALAR

ACT_NONE = NM_ACT_NONE
ACT_RELU = NM_ACT_RELU
ACT_PWL = NM_ACT_PWL
KERNEL_SCALAR = NM_KERNEL_SCALAR
KERNEL_AVX2 = NM_KERNEL_AVX2
KERNEL_AVX512 = NM_KERNEL_AVX512


def cpu_has_avx2_fma() -> bool:
    """True when the CPU and OS support AVX2 + FMA (cpuid + xgetbv)."""
    return nm_cpu_has_avx2_fma() != 0


def cpu_has_avx512() -> bool:
    """True when the CPU and OS support AVX-512 F/BW/DQ/VL (cpuid + xgetbv)."""
    return nm_cpu_has_avx512() != 0


def measure_ghz() -> float:
    """Core clock estimate in GHz from a dependent-add chain (~20 ms; 0.0 when unavailable)."""
    cdef double g
    with nogil:
        g = nm_cpu_measure_ghz()
    return g


def has_openmp() -> bool:
    """True when the GEMM core runs its threads through OpenMP (no longer: see has_threads)."""
    return nm_has_openmp() != 0


def has_threads() -> bool:
    """True when the core's own thread pool (csrc/nm_threads.c) can run threads in parallel."""
    return NM_HAVE_THREADS != 0


def spin_us() -> int:
    """Microseconds an idle pool thread spins before it sleeps."""
    return nm_spin_us()


def set_spin_us(int us) -> None:
    """Set the pool's spin budget in microseconds (0: sleep at once)."""
    nm_set_spin_us(us)


def pool_workers() -> int:
    """Worker threads alive in the pool (created on first need)."""
    return nm_pool_workers()


def pool_backoffs() -> int:
    """Times so far the pool ran calls single-threaded for a few milliseconds because team calls in a
    row waited on a worker whose core another thread held."""
    return nm_pool_backoffs()


def get_blocking(int kernel) -> dict:
    """Register tile and cache blocking of a kernel: {"mr", "nr", "mc", "kc", "nc"}."""
    cdef nm_blocking b = nm_get_blocking(kernel)
    return {"mr": b.mr, "nr": b.nr, "mc": b.mc, "kc": b.kc, "nc": b.nc}


cdef inline float *_fptr(cnp.ndarray a):
    return <float *>cnp.PyArray_DATA(a)


cdef inline Py_ssize_t _es(cnp.ndarray a, int axis):
    # element stride (the caller guarantees byte strides are multiples of 4)
    return cnp.PyArray_STRIDES(a)[axis] // 4


cdef tuple _fill_pwl(nm_pwl *p, object table):
    """Fill p from a PWLTable; returns the arrays that must stay alive while C runs."""
    cdef cnp.ndarray hint = np.ascontiguousarray(table.hint, dtype=np.int32)
    cdef cnp.ndarray edges = np.ascontiguousarray(table.edges, dtype=np.float32)
    cdef cnp.ndarray slopes = np.ascontiguousarray(table.slopes, dtype=np.float32)
    cdef cnp.ndarray icpt = np.ascontiguousarray(table.intercepts, dtype=np.float32)
    cdef int n = int(table.n_segments)
    cdef int nhint = int(table.nhint)
    if n < 1 or edges.shape[0] != n or slopes.shape[0] != n or icpt.shape[0] != n:
        raise ValueError(f"inconsistent PWLTable: {n} segments but edges/slopes/intercepts of "
                         f"{edges.shape[0]}/{slopes.shape[0]}/{icpt.shape[0]} entries")
    if nhint < 1 or hint.shape[0] != nhint:
        raise ValueError(f"inconsistent PWLTable: nhint={nhint} but hint has {hint.shape[0]} entries")
    if hint.shape[0] and (int(hint.min()) < 0 or int(hint.max()) > n - 1):
        raise ValueError("inconsistent PWLTable: hint entries outside [0, n_segments)")
    p.n = n
    p.key_mode = int(table.key_mode)
    p.nhint = nhint
    p.steps = int(table.steps)
    p.shift = int(table.shift)
    p.base = int(table.base)
    p.origin = float(table.origin)
    p.scale = float(table.scale)
    p.xmin = float(table.xmin)
    p.xmax = float(table.xmax)
    p.hint = <const int32_t *>cnp.PyArray_DATA(hint)
    p.edges = <const float *>cnp.PyArray_DATA(edges)
    p.slopes = <const float *>cnp.PyArray_DATA(slopes)
    p.intercepts = <const float *>cnp.PyArray_DATA(icpt)
    p.reg = NULL  # built per call; PreparedTable builds it once
    return (hint, edges, slopes, icpt)


cdef class PreparedTable:
    """A PWLTable's C descriptor, built once (the runtime keeps one per op instead of rebuilding it
    on every call), with the kernels' register forms of the table (the grid search behind them
    cost ~10 us per GEMM call when it ran per call).  Holds its own contiguous copies of the table
    arrays; read-only.  ``keep_table=False`` does not hold the PWLTable itself (``table`` is then None):
    for caches keyed by the table's lifetime."""
    cdef nm_pwl p
    cdef tuple keep
    cdef readonly object table

    def __cinit__(self):
        self.p.reg = NULL

    def __init__(self, object table, bint keep_table=True):
        nm_pwl_reg_free(<nm_pwl_reg *>self.p.reg)  # __init__ called again: drop the old forms
        self.p.reg = NULL
        self.keep = _fill_pwl(&self.p, table)
        self.table = table if keep_table else None
        self.p.reg = nm_pwl_reg_new(&self.p)
        if self.p.reg == NULL:
            raise MemoryError("PreparedTable: out of memory for the register forms")

    def __dealloc__(self):
        nm_pwl_reg_free(<nm_pwl_reg *>self.p.reg)
        self.p.reg = NULL


cdef const nm_pwl *_pwl_of(object table, nm_pwl *tmp, list keep) except NULL:
    """The nm_pwl of a PreparedTable, or tmp filled from a PWLTable (arrays appended to keep)."""
    if isinstance(table, PreparedTable):
        return &(<PreparedTable>table).p
    keep.append(_fill_pwl(tmp, table))
    return tmp


cdef nm_epilogue _epilogue(object bias_col, object bias_row, object res, int act, object table,
                           nm_pwl *tmp, list keep, bint batched=False) except *:
    """bias_col/bias_row contiguous float32 or None; res None or a float32 array (any strides):
    2-D (rows, cols), or 4-D (P1, P2, rows, cols) when batched."""
    cdef nm_epilogue ep
    cdef cnp.ndarray bc, br, r
    ep.bias_col = NULL
    ep.bias_row = NULL
    ep.res = NULL
    ep.res_rs = ep.res_cs = ep.res_ps1 = ep.res_ps2 = 0
    ep.act = act
    ep.pwl = NULL
    if bias_col is not None:
        bc = bias_col
        ep.bias_col = _fptr(bc)
    if bias_row is not None:
        br = bias_row
        ep.bias_row = _fptr(br)
    if res is not None:
        r = res
        ep.res = _fptr(r)
        if batched:
            ep.res_ps1 = _es(r, 0)
            ep.res_ps2 = _es(r, 1)
            ep.res_rs = _es(r, 2)
            ep.res_cs = _es(r, 3)
        else:
            ep.res_rs = _es(r, 0)
            ep.res_cs = _es(r, 1)
    if act == NM_ACT_PWL:
        ep.pwl = _pwl_of(table, tmp, keep)
    return ep


cdef int _check(int rc) except -1:
    if rc == NM_ENOMEM:
        raise MemoryError("nmengine GEMM core: out of memory for the pack buffers")
    if rc != NM_OK:
        raise ValueError(f"nmengine GEMM core rejected the arguments (code {rc})")
    return 0


def sgemm_batched(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, object bias_col, object bias_row,
                  object res, int act, object table, int nthreads, int kernel) -> None:
    """c[p1, p2] = epilogue(a[p1, p2] @ b[p1, p2]) on 4-D float32 arrays (P1, P2, rows, cols).

    bias_col (N,) / bias_row (M,) are contiguous float32 or None; res is None or a 4-D float32
    array of c's shape (broadcast strides allowed).  Strides may be 0 or negative.
    """
    cdef nm_pwl pwl
    cdef list keep = []
    cdef int rc
    if a.ndim != 4 or b.ndim != 4 or c.ndim != 4:
        raise ValueError("sgemm_batched expects 4-D arrays")
    cdef int64_t P1 = c.shape[0], P2 = c.shape[1], M = c.shape[2], N = c.shape[3], K = a.shape[3]
    cdef nm_epilogue ep = _epilogue(bias_col, bias_row, res, act, table, &pwl, keep, True)
    cdef const float *pa = _fptr(a)
    cdef const float *pb = _fptr(b)
    cdef float *pc = _fptr(c)
    cdef Py_ssize_t a0 = _es(a, 0), a1 = _es(a, 1), a2 = _es(a, 2), a3 = _es(a, 3)
    cdef Py_ssize_t b0 = _es(b, 0), b1 = _es(b, 1), b2 = _es(b, 2), b3 = _es(b, 3)
    cdef Py_ssize_t c0 = _es(c, 0), c1 = _es(c, 1), c2 = _es(c, 2), c3 = _es(c, 3)
    with nogil:
        rc = nm_sgemm_batched(P1, P2, M, N, K, pa, a0, a1, a2, a3, pb, b0, b1, b2, b3,
                              pc, c0, c1, c2, c3, &ep, nthreads, kernel)
    _check(rc)
    del keep


def pwl_apply(object table, cnp.ndarray x, cnp.ndarray y, int nthreads, int kernel) -> None:
    """y = table(x) for C-contiguous float32 arrays of the same size (x is y allowed)."""
    cdef nm_pwl pwl
    cdef list keep = []
    cdef const nm_pwl *pp = _pwl_of(table, &pwl, keep)
    cdef const float *px = _fptr(x)
    cdef float *py = _fptr(y)
    cdef int64_t n = x.size
    if y.size != n:
        raise ValueError(f"pwl_apply: x has {n} elements but y has {y.size}")
    cdef int rc
    with nogil:
        rc = nm_pwl_apply(pp, px, py, n, nthreads, kernel)
    _check(rc)
    del keep


def pack_b(cnp.ndarray b, int kernel) -> cnp.ndarray:
    """B (2-D float32, any element strides) packed into the kernel's panel layout: a 64-byte aligned
    1-D float32 array (see nm_pack_b_full)."""
    if b.ndim != 2:
        raise ValueError("pack_b expects a 2-D array")
    cdef int64_t K = b.shape[0], N = b.shape[1]
    cdef int64_t n = nm_packed_b_floats(kernel, K, N)
    if n < 0:
        raise ValueError(f"pack_b: unknown kernel {kernel}")
    raw = np.empty(n + 16, dtype=np.float32)
    cdef Py_ssize_t addr = raw.__array_interface__["data"][0]
    cdef Py_ssize_t off = ((64 - addr % 64) % 64) // 4  # addr >= 0 (C remainder semantics)
    if addr % 4:
        raise ValueError("pack_b: numpy returned a misaligned float32 buffer")
    cdef cnp.ndarray dst = raw[off:off + n]
    cdef const float *pb = _fptr(b)
    cdef float *pd = _fptr(dst)
    cdef Py_ssize_t rsb = _es(b, 0), csb = _es(b, 1)
    cdef int rc
    with nogil:
        rc = nm_pack_b_full(kernel, K, N, pb, rsb, csb, pd)
    _check(rc)
    return dst


def sgemm_packed(cnp.ndarray a, cnp.ndarray bp, int64_t N, cnp.ndarray c, object bias_col,
                 object bias_row, object res, int act, object table, int nthreads, int kernel) -> None:
    """c = epilogue(a @ B) with B given packed (pack_b for the same kernel); a (M, K), c (M, N)
    2-D float32 with any element strides; res None or 2-D of c's shape (broadcast strides allowed)."""
    cdef nm_pwl pwl
    cdef list keep = []
    cdef nm_epilogue ep = _epilogue(bias_col, bias_row, res, act, table, &pwl, keep)
    cdef int64_t M = a.shape[0], K = a.shape[1]
    cdef const float *pa = _fptr(a)
    cdef const float *pb = _fptr(bp)
    cdef float *pc = _fptr(c)
    cdef Py_ssize_t a0 = _es(a, 0), a1 = _es(a, 1), c0 = _es(c, 0), c1 = _es(c, 1)
    cdef int rc
    with nogil:
        rc = nm_sgemm_packed(M, N, K, pa, a0, a1, pb, pc, c0, c1, &ep, nthreads, kernel)
    _check(rc)


cdef inline nm_operand _operand(object arr, int mode):
    cdef nm_operand o
    cdef cnp.ndarray a
    o.p = NULL
    o.mode = NM_BC_NONE
    if arr is not None and mode != NM_BC_NONE:
        a = arr
        o.p = _fptr(a)
        o.mode = mode
    return o


cdef void _fill_scale(nm_scale_args *s, cnp.ndarray x, int64_t rows, int64_t n, object alpha, object beta,
                      float res_beta, object mul, int mul_mode, object row_scale, int rs_mode, object col_scale,
                      int cs_mode, object bias, int b_mode, object bias_row, int br_mode, object res, int res_mode,
                      int act):
    """The arguments of one nm_scale call (the standalone entry and a CPlan step alike); pwl left NULL."""
    s.rows = rows
    s.n = n
    s.x = _fptr(x)
    s.has_alpha = alpha is not None
    s.alpha = <float>alpha if alpha is not None else 1.0
    s.has_beta = beta is not None
    s.beta = <float>beta if beta is not None else 0.0
    s.res_beta = res_beta
    s.mul = _operand(mul, mul_mode)
    s.row_scale = _operand(row_scale, rs_mode)
    s.col_scale = _operand(col_scale, cs_mode)
    s.bias = _operand(bias, b_mode)
    s.bias_row = _operand(bias_row, br_mode)
    s.res = _operand(res, res_mode)
    s.act = act
    s.pwl = NULL


def scale(cnp.ndarray x, cnp.ndarray y, int64_t rows, int64_t n, object alpha, object beta, float res_beta,
          object mul, int mul_mode, object row_scale, int rs_mode, object col_scale, int cs_mode,
          object bias, int b_mode, object bias_row, int br_mode, object res, int res_mode,
          int act, object table, int nthreads, int kernel) -> None:
    """y = act(alpha*x*mul*row_scale*col_scale + beta + bias + bias_row + res_beta*res) (nm_scale).

    x and y are C-contiguous float32 with rows*n elements; every operand is a C-contiguous float32
    array laid out as its mode says (BC_FULL rows*n, BC_ROW rows, BC_COL n, BC_SCALAR 1) or None;
    alpha / beta are None when absent.  The caller checks the sizes."""
    cdef nm_scale_args s
    cdef nm_pwl pwl
    cdef list keep = []
    _fill_scale(&s, x, rows, n, alpha, beta, res_beta, mul, mul_mode, row_scale, rs_mode, col_scale, cs_mode,
                bias, b_mode, bias_row, br_mode, res, res_mode, act)
    if act == NM_ACT_PWL:
        s.pwl = _pwl_of(table, &pwl, keep)
    cdef float *py = _fptr(y)
    cdef int rc
    with nogil:
        rc = nm_scale(&s, py, nthreads, kernel)
    _check(rc)


def pairwise_max(cnp.ndarray x, cnp.ndarray y, int64_t rows, int64_t n, int nthreads, int kernel) -> None:
    """y[r] = lane-folded row max of x[r, :n] (nm_pairwise_max); x C-contiguous float32 rows*n, y rows."""
    cdef const float *px = _fptr(x)
    cdef float *py = _fptr(y)
    cdef int rc
    with nogil:
        rc = nm_pairwise_max(px, rows, n, py, nthreads, kernel)
    _check(rc)


def sgemm(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, object bias_col, object bias_row, object res,
          int act, object table, int nthreads, int kernel) -> None:
    """c = epilogue(a @ b) on 2-D float32 arrays (any element strides; the caller checks shapes);
    res None or 2-D of c's shape (broadcast strides allowed)."""
    cdef nm_pwl pwl
    cdef list keep = []
    cdef nm_epilogue ep = _epilogue(bias_col, bias_row, res, act, table, &pwl, keep)
    cdef int64_t M = c.shape[0], N = c.shape[1], K = a.shape[1]
    cdef const float *pa = _fptr(a)
    cdef const float *pb = _fptr(b)
    cdef float *pc = _fptr(c)
    cdef Py_ssize_t a0 = _es(a, 0), a1 = _es(a, 1), b0 = _es(b, 0), b1 = _es(b, 1)
    cdef Py_ssize_t c0 = _es(c, 0), c1 = _es(c, 1)
    cdef int rc
    with nogil:
        rc = nm_sgemm_batched(1, 1, M, N, K, pa, 0, 0, a0, a1, pb, 0, 0, b0, b1, pc, 0, 0, c0, c1,
                              &ep, nthreads, kernel)
    _check(rc)


cdef inline float *_optr(object a):
    cdef cnp.ndarray arr
    if a is None:
        return NULL
    arr = a
    return _fptr(arr)


def softmax_rows(cnp.ndarray s, int64_t rows, int64_t n, object exp_table, object recip_table,
                 object m, object e, object r, cnp.ndarray p, int nthreads, int kernel) -> None:
    """Fused attention softmax rows (nm_softmax_rows): s, e, p C-contiguous float32 rows*n; m, r
    rows; m, e, r may be None.  The caller checks the sizes."""
    cdef nm_pwl t1, t2
    cdef list keep = []
    cdef const nm_pwl *pe = _pwl_of(exp_table, &t1, keep)
    cdef const nm_pwl *pr = _pwl_of(recip_table, &t2, keep)
    cdef const float *ps = _fptr(s)
    cdef float *pm = _optr(m)
    cdef float *pe_ = _optr(e)
    cdef float *prr = _optr(r)
    cdef float *pp = _fptr(p)
    cdef int rc
    with nogil:
        rc = nm_softmax_rows(ps, rows, n, pe, pr, pm, pe_, prr, pp, nthreads, kernel)
    _check(rc)


cdef int _fill_attention(nm_step_attention *a, cnp.ndarray qkv, int64_t q_off, int64_t k_off, int64_t v_off,
                         int64_t heads, int64_t d, cnp.ndarray mask, object bias, cnp.ndarray out) except -1:
    """Check the arrays of an attention_packed call and fill a's pointers and sizes (tables apart)."""
    cdef cnp.ndarray b
    if qkv.ndim != 2 or out.ndim != 2 or mask.ndim != 2:
        raise ValueError("attention_packed expects 2-D qkv, mask and out")
    for name, arr in (("qkv", qkv), ("out", out)):
        if arr.dtype != np.float32 or not arr.flags.c_contiguous:
            raise ValueError(f"attention_packed: {name} must be C-contiguous float32")
    if mask.itemsize != 1 or mask.dtype.kind not in "bu" or not mask.flags.c_contiguous:
        raise ValueError("attention_packed: mask must be C-contiguous bool or uint8")
    if out.shape[0] != qkv.shape[0]:
        raise ValueError(f"attention_packed: out has {out.shape[0]} rows for {qkv.shape[0]} qkv rows")
    a.bias = NULL
    a.ld_bias = 0
    if bias is not None:
        b = bias
        if b.ndim != 2 or b.dtype != np.float32 or not b.flags.c_contiguous or b.shape[0] != mask.shape[0]:
            raise ValueError("attention_packed: bias must be C-contiguous float32 [nseq, cols]")
        a.bias = _fptr(b)
        a.ld_bias = b.shape[1]
    a.qkv = _fptr(qkv)
    a.ntok = qkv.shape[0]
    a.ld_qkv = qkv.shape[1]
    a.q_off, a.k_off, a.v_off, a.heads, a.d = q_off, k_off, v_off, heads, d
    a.mask = <const unsigned char *>cnp.PyArray_DATA(mask)
    a.nseq = mask.shape[0]
    a.cols = mask.shape[1]
    a.out = _fptr(out)
    a.ld_out = out.shape[1]
    a.skip = 0
    return 0


def attention_packed(cnp.ndarray qkv, int64_t q_off, int64_t k_off, int64_t v_off, int64_t heads, int64_t d,
                     cnp.ndarray mask, object bias, object exp_table, object recip_table, cnp.ndarray out,
                     int nthreads, int kernel) -> bool:
    """Attention of packed tokens, each sequence at its own length (nm_attention_packed): qkv
    [ntok, ld] and out [ntok, >= heads * d] C-contiguous float32, mask [nseq, cols] C-contiguous
    bool/uint8 with ntok nonzero entries, bias None or [nseq, >= cols] C-contiguous float32.  Returns
    False (nothing written) when a mask row is not right-padded (the caller runs the padded chain)."""
    cdef nm_pwl t1, t2
    cdef list keep = []
    cdef nm_step_attention a
    _fill_attention(&a, qkv, q_off, k_off, v_off, heads, d, mask, bias, out)
    a.exp_pwl = _pwl_of(exp_table, &t1, keep)
    a.recip_pwl = _pwl_of(recip_table, &t2, keep)
    cdef int rc
    with nogil:
        rc = nm_attention_packed(a.qkv, a.ntok, a.ld_qkv, a.q_off, a.k_off, a.v_off, a.heads, a.d, a.mask,
                                 a.nseq, a.cols, a.bias, a.ld_bias, a.exp_pwl, a.recip_pwl, a.out, a.ld_out,
                                 nthreads, kernel)
    if rc == NM_ENOTPREFIX:
        return False
    _check(rc)
    return True


def layernorm_rows(cnp.ndarray x, int64_t rows, int64_t n, cnp.ndarray w_mean, cnp.ndarray w_var,
                   float eps, object rsqrt_table, object gamma, object beta, object mean, object c,
                   object sq, object rstd, cnp.ndarray y, int nthreads, int kernel) -> None:
    """Fused LayerNorm rows (nm_layernorm_rows): x, c, sq, y C-contiguous float32 rows*n; w_mean,
    w_var, gamma, beta n; mean, rstd rows; gamma, beta, mean, c, sq, rstd may be None.  The caller
    checks the sizes."""
    cdef nm_pwl t
    cdef list keep = []
    cdef nm_ln_args a
    a.rows = rows
    a.n = n
    a.x = _fptr(x)
    a.w_mean = _fptr(w_mean)
    a.w_var = _fptr(w_var)
    a.gamma = _optr(gamma)
    a.beta = _optr(beta)
    a.eps = eps
    a.rsqrt = _pwl_of(rsqrt_table, &t, keep)
    a.mean = _optr(mean)
    a.c = _optr(c)
    a.sq = _optr(sq)
    a.rstd = _optr(rstd)
    a.y = _fptr(y)
    cdef int rc
    with nogil:
        rc = nm_layernorm_rows(&a, nthreads, kernel)
    _check(rc)


def move_rows(cnp.ndarray src, cnp.ndarray dst, cnp.ndarray mask, object zero, int64_t rows,
              int64_t rowbytes, bint unpack, int nthreads) -> None:
    """Scatter (unpack) or gather (pack) token rows by a C-contiguous bool/uint8 mask of rows entries
    (nm_move_rows); src and dst C-contiguous of the same dtype; zero None or a bool mask like mask
    (dst rows already zero).  The caller checks the sizes."""
    cdef const void *ps = cnp.PyArray_DATA(src)
    cdef void *pd = cnp.PyArray_DATA(dst)
    cdef const unsigned char *pm = <const unsigned char *>cnp.PyArray_DATA(mask)
    cdef const unsigned char *pz = NULL
    cdef cnp.ndarray za
    if zero is not None:
        za = zero
        pz = <const unsigned char *>cnp.PyArray_DATA(za)
    cdef int rc
    with nogil:
        rc = nm_move_rows(ps, pd, pm, pz, rows, rowbytes, unpack, nthreads)
    _check(rc)


# ---------------------------------------------------------------------------------------------
# Plans: a list of the calls above, run in one C call (csrc/nm_plan.h)
# ---------------------------------------------------------------------------------------------
from libc.stdlib cimport realloc, free
from libc.string cimport memset

cdef extern from "nm_plan.h":
    int NM_STEP_ATTENTION
    int NM_STEP_GEMM
    int NM_STEP_GEMM_PACKED
    int NM_STEP_SCALE
    int NM_STEP_PAIRWISE_MAX
    int NM_STEP_SOFTMAX
    int NM_STEP_LAYERNORM
    int NM_STEP_MOVE_ROWS
    int NM_STEP_WINDOWS

    ctypedef struct nm_windows_args:
        const float *x
        float *out
        int64_t n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo
        int edge, layout

    int nm_windows(const nm_windows_args *a) nogil
    int nm_windows_mt(const nm_windows_args *a, int nthreads) nogil

    ctypedef struct nm_depthwise_args:
        nm_windows_args win
        const float *w
        nm_epilogue ep

    int nm_depthwise(const nm_depthwise_args *a, int nthreads, int kernel) nogil

    ctypedef struct nm_conv_args:
        nm_windows_args win
        const float *Bp
        int64_t N
        float *C
        nm_epilogue ep

    int nm_conv_nhwc(const nm_conv_args *a, int nthreads, int kernel) nogil
    int nm_maxpool_nhwc(const nm_windows_args *a, int nthreads) nogil
    int NM_STEP_CONV_NHWC
    int NM_STEP_MAXPOOL_NHWC

    int NM_STEP_TOKENS
    int NM_STEP_DEPTHWISE
    int NM_ERANGE
    ctypedef struct nm_tokens_args:
        const void *src
        const int64_t *ids
        void *dst
        int64_t n, rows, cols, rowbytes
        int mode

    int nm_tokens(const nm_tokens_args *a) nogil

    ctypedef struct nm_step_gemm:
        int64_t P1, P2, M, N, K
        const float *A
        Py_ssize_t ps1a, ps2a, rsa, csa
        const float *B
        Py_ssize_t ps1b, ps2b, rsb, csb
        float *C
        Py_ssize_t ps1c, ps2c, rsc, csc
        nm_epilogue ep

    ctypedef struct nm_step_packed:
        int64_t M, N, K
        const float *A
        Py_ssize_t rsa, csa
        const float *Bp
        float *C
        Py_ssize_t rsc, csc
        nm_epilogue ep

    ctypedef struct nm_step_scale:
        nm_scale_args a
        float *y

    ctypedef struct nm_step_pmax:
        const float *x
        int64_t rows, n
        float *y

    ctypedef struct nm_step_softmax:
        const float *s
        int64_t rows, n
        const nm_pwl *exp_pwl
        const nm_pwl *recip_pwl
        float *m
        float *e
        float *r
        float *p

    ctypedef struct nm_step_move:
        const void *src
        void *dst
        const unsigned char *mask
        const unsigned char *zero
        int64_t rows, rowbytes
        int unpack

    ctypedef union nm_step_u:
        nm_step_attention attn
        nm_step_gemm gemm
        nm_step_packed packed
        nm_step_scale scale
        nm_step_pmax pmax
        nm_step_softmax softmax
        nm_ln_args ln
        nm_step_move move
        nm_windows_args win
        nm_tokens_args tok
        nm_depthwise_args dw
        nm_conv_args conv

    ctypedef struct nm_step:
        int kind
        nm_step_u u

    int nm_plan_run(const nm_step *steps, int64_t lo, int64_t hi, int nthreads, int kernel,
                    int64_t *failed) nogil


cdef int _fill_windows(nm_windows_args *w, cnp.ndarray x, cnp.ndarray out, int64_t kh, int64_t kw, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, bint edge, int layout, bint reduced=False) except -1:
    """reduced: out holds one value per window (the max pool), not the windows."""
    if x.ndim != 4 or x.dtype != np.float32 or out.dtype != np.float32 or not x.flags.c_contiguous \
            or not out.flags.c_contiguous:
        raise ValueError("windows: x must be a C-contiguous float32 NCHW array and out C-contiguous float32")
    w.x = _fptr(x)
    w.out = _fptr(out)
    if layout >= 2:  # channels last: x is NHWC
        w.n, w.h, w.w, w.c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    else:
        w.n, w.c, w.h, w.w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    w.kh, w.kw, w.sh, w.sw, w.ph, w.pw = kh, kw, sh, sw, ph, pw
    w.ho = (w.h + 2 * ph - kh) // sh + 1
    w.wo = (w.w + 2 * pw - kw) // sw + 1
    w.edge = edge
    w.layout = layout
    if w.ho < 1 or w.wo < 1 or out.size != w.n * w.c * (1 if reduced else kh * kw) * w.ho * w.wo:
        raise ValueError("windows: the window does not fit the image, or out has the wrong size")
    return 0


def windows(cnp.ndarray x, cnp.ndarray out, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
            int64_t pw, bint edge, int layout, int nthreads=1) -> None:
    """Sliding windows of NCHW x into out (nm_windows): layout 0 im2col [N, C*kh*kw, Ho*Wo], layout 1
    pooling windows [N, C, Ho, Wo, kh*kw]; NHWC x: layout 2 im2col [N, Ho, Wo, kh*kw*C] ((i, j, c)
    order), layout 3 pooling windows [N, Ho, Wo, C, kh*kw]; padding zeros (edge False) or replicated
    edges (not layout 2).  A copy on up to nthreads threads (same bits for any count)."""
    cdef nm_windows_args w
    _fill_windows(&w, x, out, kh, kw, sh, sw, ph, pw, edge, layout)
    cdef int rc
    with nogil:
        rc = nm_windows_mt(&w, nthreads)
    _check(rc)


TOKENS_MASK = 0
TOKENS_POSITIONS = 1
TOKENS_GATHER = 2


cdef int _fill_tokens(nm_tokens_args *t, int mode, cnp.ndarray src, object ids, cnp.ndarray dst, int64_t n,
                      int64_t rows, int64_t cols, int64_t rowbytes) except -1:
    cdef cnp.ndarray ia
    if not src.flags.c_contiguous or not dst.flags.c_contiguous:
        raise ValueError("tokens: src and dst must be C-contiguous")
    if mode == 0 and (src.dtype != np.int64 or src.size != n or dst.itemsize != 1 or dst.size != n):
        raise ValueError("tokens (mask): src int64 and dst uint8/bool of n entries")
    if mode == 1 and (src.itemsize != 1 or src.size != n or dst.dtype != np.int64 or cols < 1):
        raise ValueError("tokens (positions): src uint8/bool of n entries, dst int64, cols >= 1")
    t.ids = NULL
    if mode == 2:
        ia = ids
        if ia.dtype != np.int64 or not ia.flags.c_contiguous or ia.size != n or dst.nbytes != n * rowbytes \
                or src.nbytes != rows * rowbytes:
            raise ValueError("tokens (gather): ids int64 [n], src [rows, rowbytes], dst [n, rowbytes]")
        t.ids = <const int64_t *>cnp.PyArray_DATA(ia)
    elif mode not in (0, 1):
        raise ValueError(f"tokens: unknown mode {mode}")
    t.src = cnp.PyArray_DATA(src)
    t.dst = cnp.PyArray_DATA(dst)
    t.n, t.rows, t.cols, t.rowbytes, t.mode = n, rows, cols, rowbytes, mode
    return 0


def tokens(int mode, cnp.ndarray src, object ids, cnp.ndarray dst, int64_t n, int64_t rows, int64_t cols,
           int64_t rowbytes) -> None:
    """Token bookkeeping (nm_tokens): TOKENS_MASK dst = src != 0; TOKENS_POSITIONS the column of every
    nonzero of a bool mask; TOKENS_GATHER rows of src by int64 ids (ValueError for an id outside
    [0, rows))."""
    cdef nm_tokens_args t
    _fill_tokens(&t, mode, src, ids, dst, n, rows, cols, rowbytes)
    cdef int rc
    with nogil:
        rc = nm_tokens(&t)
    if rc == NM_ERANGE:
        raise ValueError(f"ids must be in [0, {rows})")
    _check(rc)


cdef int _fill_depthwise(nm_depthwise_args *d, cnp.ndarray x, cnp.ndarray w, cnp.ndarray out, int64_t kh,
                         int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) except -1:
    if x.ndim != 4 or x.dtype != np.float32 or out.dtype != np.float32 or w.dtype != np.float32 \
            or not x.flags.c_contiguous or not out.flags.c_contiguous or not w.flags.c_contiguous:
        raise ValueError("depthwise: x (NCHW), w and out must be C-contiguous float32 arrays")
    cdef nm_windows_args *a = &d.win
    a.x = _fptr(x)
    a.out = _fptr(out)
    a.n, a.c, a.h, a.w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    a.kh, a.kw, a.sh, a.sw, a.ph, a.pw = kh, kw, sh, sw, ph, pw
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError("depthwise: kernel and stride must be >= 1, padding >= 0")
    a.ho = (a.h + 2 * ph - kh) // sh + 1
    a.wo = (a.w + 2 * pw - kw) // sw + 1
    a.edge = 0
    a.layout = 0
    if a.ho < 1 or a.wo < 1 or out.size != a.n * a.c * a.ho * a.wo or w.size != a.c * kh * kw:
        raise ValueError("depthwise: the window does not fit the image, or out / w has the wrong size")
    d.w = _fptr(w)
    return 0


def depthwise(cnp.ndarray x, cnp.ndarray w, cnp.ndarray out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
              int64_t ph, int64_t pw, object bias_col, object bias_row, object res, int act, object table,
              int nthreads, int kernel) -> None:
    """Depthwise conv of NCHW x with w [C, kh*kw] into out [N, C, Ho*Wo] (nm_depthwise): what im2col +
    sgemm_batched (P1 = N, P2 = C, M = 1) computes, with that GEMM's epilogue (res 4-D [N, C, 1, Ho*Wo],
    any strides).  kernel picks the activation's vector code (same bits on every path) and, on the
    SIMD paths, the AVX2-compiled loops."""
    cdef nm_depthwise_args d
    cdef nm_pwl pwl
    cdef list keep = []
    cdef int rc
    _fill_depthwise(&d, x, w, out, kh, kw, sh, sw, ph, pw)
    d.ep = _epilogue(bias_col, bias_row, res, act, table, &pwl, keep, True)
    with nogil:
        rc = nm_depthwise(&d, nthreads, kernel)
    del keep
    _check(rc)


cdef int _fill_conv(nm_conv_args *a, cnp.ndarray x, cnp.ndarray cols, int64_t kh, int64_t kw, int64_t sh,
                    int64_t sw, int64_t ph, int64_t pw, cnp.ndarray bp, int64_t N, cnp.ndarray c) except -1:
    _fill_windows(&a.win, x, cols, kh, kw, sh, sw, ph, pw, False, 2)
    if c.ndim != 2 or c.dtype != np.float32 or not c.flags.c_contiguous \
            or c.shape[0] != a.win.n * a.win.ho * a.win.wo or c.shape[1] != N:
        raise ValueError("conv_nhwc: c must be C-contiguous float32 [N*Ho*Wo, N]")
    if bp.dtype != np.float32 or not bp.flags.c_contiguous:
        raise ValueError("conv_nhwc: bp must be a packed float32 B (pack_b)")
    a.Bp = _fptr(bp)
    a.N = N
    a.C = _fptr(c)
    return 0


def conv_nhwc(cnp.ndarray x, cnp.ndarray cols, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
              int64_t pw, cnp.ndarray bp, int64_t N, cnp.ndarray c, object bias_col, object bias_row, object res,
              int act, object table, int nthreads, int kernel) -> None:
    """Channels-last convolution (nm_conv_nhwc): c [N*Ho*Wo, N] = epilogue(im2col(x) @ B) for NHWC x, B
    packed by pack_b [kh*kw*C, N]; cols is the [N*Ho*Wo, kh*kw*C] im2col buffer (scratch); res None or
    2-D of c's shape (any strides)."""
    cdef nm_conv_args a
    cdef nm_pwl pwl
    cdef list keep = []
    cdef int rc
    _fill_conv(&a, x, cols, kh, kw, sh, sw, ph, pw, bp, N, c)
    a.ep = _epilogue(bias_col, bias_row, res, act, table, &pwl, keep)
    with nogil:
        rc = nm_conv_nhwc(&a, nthreads, kernel)
    del keep
    _check(rc)


def maxpool_nhwc(cnp.ndarray x, cnp.ndarray y, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                 int64_t pw, bint edge, int nthreads=1) -> None:
    """Max pooling of NHWC x into y [N, Ho, Wo, C] (nm_maxpool_nhwc): windows (layout 3) + the
    pairwise-max tree of each window, without the windows copy."""
    cdef nm_windows_args w
    cdef int rc
    _fill_windows(&w, x, y, kh, kw, sh, sw, ph, pw, edge, 3, True)
    with nogil:
        rc = nm_maxpool_nhwc(&w, nthreads)
    _check(rc)


cdef class CPlan:
    """A list of core calls recorded once and run in one C call with the GIL released.

    Each ``add_<name>`` takes exactly the arguments of the module function ``<name>`` (including
    nthreads and kernel, which must be the same for every step) and records that call instead of
    making it; :meth:`run` makes the recorded calls ``lo..hi`` in order (nm_plan_run), so results are
    those of the individual calls.  The plan keeps every array and table it points into alive; the
    caller must not resize or replace them (writing their contents is the point).
    """
    cdef nm_step *steps
    cdef int64_t n, cap
    cdef list keep
    cdef readonly int nthreads, kernel

    def __cinit__(self):
        self.steps = NULL
        self.n = 0
        self.cap = 0
        self.keep = []
        self.nthreads = -1
        self.kernel = -1

    def __dealloc__(self):
        free(self.steps)

    def __len__(self):
        return self.n

    cdef nm_step *_new(self, int kind, int nthreads, int kernel) except NULL:
        cdef nm_step *p
        # nthreads / kernel < 0: a step that does not use them (row moves, windows)
        if (nthreads >= 0 and self.nthreads >= 0 and nthreads != self.nthreads) or (
                kernel >= 0 and self.kernel >= 0 and kernel != self.kernel):
            raise ValueError("CPlan: every step must use the same thread count and kernel")
        if nthreads >= 0:
            self.nthreads = nthreads
        if kernel >= 0:
            self.kernel = kernel
        if self.n == self.cap:
            cap = 16 if self.cap == 0 else 2 * self.cap
            p = <nm_step *>realloc(self.steps, cap * sizeof(nm_step))
            if p == NULL:
                raise MemoryError("CPlan: out of memory")
            self.steps = p
            self.cap = cap
        p = &self.steps[self.n]
        memset(p, 0, sizeof(nm_step))
        p.kind = kind
        self.n += 1
        return p

    cdef object _prepared(self, object table):
        if table is None or isinstance(table, PreparedTable):
            return table
        return PreparedTable(table)

    def add_sgemm_batched(self, cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, object bias_col, object bias_row,
                          object res, int act, object table, int nthreads, int kernel):
        if a.ndim != 4 or b.ndim != 4 or c.ndim != 4:
            raise ValueError("sgemm_batched expects 4-D arrays")
        table = self._prepared(table) if act == NM_ACT_PWL else None
        cdef nm_step *s = self._new(NM_STEP_GEMM, nthreads, kernel)
        cdef nm_step_gemm *g = &s.u.gemm
        g.ep = _epilogue(bias_col, bias_row, res, act, table, NULL, None, True)
        g.P1, g.P2, g.M, g.N, g.K = c.shape[0], c.shape[1], c.shape[2], c.shape[3], a.shape[3]
        g.A, g.B, g.C = _fptr(a), _fptr(b), _fptr(c)
        g.ps1a, g.ps2a, g.rsa, g.csa = _es(a, 0), _es(a, 1), _es(a, 2), _es(a, 3)
        g.ps1b, g.ps2b, g.rsb, g.csb = _es(b, 0), _es(b, 1), _es(b, 2), _es(b, 3)
        g.ps1c, g.ps2c, g.rsc, g.csc = _es(c, 0), _es(c, 1), _es(c, 2), _es(c, 3)
        self.keep.append((a, b, c, bias_col, bias_row, res, table))

    def add_sgemm(self, cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, object bias_col, object bias_row,
                  object res, int act, object table, int nthreads, int kernel):
        table = self._prepared(table) if act == NM_ACT_PWL else None
        cdef nm_step *s = self._new(NM_STEP_GEMM, nthreads, kernel)
        cdef nm_step_gemm *g = &s.u.gemm
        g.ep = _epilogue(bias_col, bias_row, res, act, table, NULL, None)
        g.P1, g.P2, g.M, g.N, g.K = 1, 1, c.shape[0], c.shape[1], a.shape[1]
        g.A, g.B, g.C = _fptr(a), _fptr(b), _fptr(c)
        g.rsa, g.csa, g.rsb, g.csb, g.rsc, g.csc = _es(a, 0), _es(a, 1), _es(b, 0), _es(b, 1), _es(c, 0), _es(c, 1)
        self.keep.append((a, b, c, bias_col, bias_row, res, table))

    def add_sgemm_packed(self, cnp.ndarray a, cnp.ndarray bp, int64_t N, cnp.ndarray c, object bias_col,
                         object bias_row, object res, int act, object table, int nthreads, int kernel):
        table = self._prepared(table) if act == NM_ACT_PWL else None
        cdef nm_step *s = self._new(NM_STEP_GEMM_PACKED, nthreads, kernel)
        cdef nm_step_packed *g = &s.u.packed
        g.ep = _epilogue(bias_col, bias_row, res, act, table, NULL, None)
        g.M, g.N, g.K = a.shape[0], N, a.shape[1]
        g.A, g.Bp, g.C = _fptr(a), _fptr(bp), _fptr(c)
        g.rsa, g.csa, g.rsc, g.csc = _es(a, 0), _es(a, 1), _es(c, 0), _es(c, 1)
        self.keep.append((a, bp, c, bias_col, bias_row, res, table))

    def add_scale(self, cnp.ndarray x, cnp.ndarray y, int64_t rows, int64_t n, object alpha, object beta,
                  float res_beta, object mul, int mul_mode, object row_scale, int rs_mode, object col_scale,
                  int cs_mode, object bias, int b_mode, object bias_row, int br_mode, object res, int res_mode,
                  int act, object table, int nthreads, int kernel):
        table = self._prepared(table) if act == NM_ACT_PWL else None
        cdef nm_step *st = self._new(NM_STEP_SCALE, nthreads, kernel)
        cdef nm_scale_args *s = &st.u.scale.a
        _fill_scale(s, x, rows, n, alpha, beta, res_beta, mul, mul_mode, row_scale, rs_mode, col_scale,
                    cs_mode, bias, b_mode, bias_row, br_mode, res, res_mode, act)
        if act == NM_ACT_PWL:
            s.pwl = &(<PreparedTable>table).p
        st.u.scale.y = _fptr(y)
        self.keep.append((x, y, mul, row_scale, col_scale, bias, bias_row, res, table))

    def add_pairwise_max(self, cnp.ndarray x, cnp.ndarray y, int64_t rows, int64_t n, int nthreads, int kernel):
        cdef nm_step *s = self._new(NM_STEP_PAIRWISE_MAX, nthreads, kernel)
        s.u.pmax.x = _fptr(x)
        s.u.pmax.y = _fptr(y)
        s.u.pmax.rows = rows
        s.u.pmax.n = n
        self.keep.append((x, y))

    def add_softmax_rows(self, cnp.ndarray s_, int64_t rows, int64_t n, object exp_table, object recip_table,
                         object m, object e, object r, cnp.ndarray p, int nthreads, int kernel):
        exp_table = self._prepared(exp_table)
        recip_table = self._prepared(recip_table)
        cdef nm_step *s = self._new(NM_STEP_SOFTMAX, nthreads, kernel)
        cdef nm_step_softmax *f = &s.u.softmax
        f.s = _fptr(s_)
        f.rows = rows
        f.n = n
        f.exp_pwl = &(<PreparedTable>exp_table).p
        f.recip_pwl = &(<PreparedTable>recip_table).p
        f.m = _optr(m)
        f.e = _optr(e)
        f.r = _optr(r)
        f.p = _fptr(p)
        self.keep.append((s_, exp_table, recip_table, m, e, r, p))

    def add_attention_packed(self, cnp.ndarray qkv, int64_t q_off, int64_t k_off, int64_t v_off, int64_t heads,
                             int64_t d, cnp.ndarray mask, object bias, object exp_table, object recip_table,
                             cnp.ndarray out, int nthreads, int kernel, int64_t skip=0):
        """attention_packed's call; the ``skip`` calls recorded next run only when it refuses the mask
        (they must compute the same result on the padded grid)."""
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        exp_table = self._prepared(exp_table)
        recip_table = self._prepared(recip_table)
        cdef nm_step_attention a
        _fill_attention(&a, qkv, q_off, k_off, v_off, heads, d, mask, bias, out)
        cdef nm_step *s = self._new(NM_STEP_ATTENTION, nthreads, kernel)
        s.u.attn = a
        s.u.attn.exp_pwl = &(<PreparedTable>exp_table).p
        s.u.attn.recip_pwl = &(<PreparedTable>recip_table).p
        s.u.attn.skip = skip
        self.keep.append((qkv, mask, bias, exp_table, recip_table, out))

    def add_layernorm_rows(self, cnp.ndarray x, int64_t rows, int64_t n, cnp.ndarray w_mean, cnp.ndarray w_var,
                           float eps, object rsqrt_table, object gamma, object beta, object mean, object c,
                           object sq, object rstd, cnp.ndarray y, int nthreads, int kernel):
        rsqrt_table = self._prepared(rsqrt_table)
        cdef nm_step *s = self._new(NM_STEP_LAYERNORM, nthreads, kernel)
        cdef nm_ln_args *a = &s.u.ln
        a.rows = rows
        a.n = n
        a.x = _fptr(x)
        a.w_mean = _fptr(w_mean)
        a.w_var = _fptr(w_var)
        a.gamma = _optr(gamma)
        a.beta = _optr(beta)
        a.eps = eps
        a.rsqrt = &(<PreparedTable>rsqrt_table).p
        a.mean = _optr(mean)
        a.c = _optr(c)
        a.sq = _optr(sq)
        a.rstd = _optr(rstd)
        a.y = _fptr(y)
        self.keep.append((x, w_mean, w_var, rsqrt_table, gamma, beta, mean, c, sq, rstd, y))

    def add_move_rows(self, cnp.ndarray src, cnp.ndarray dst, cnp.ndarray mask, object zero, int64_t rows,
                      int64_t rowbytes, bint unpack, int nthreads):
        cdef nm_step *s = self._new(NM_STEP_MOVE_ROWS, nthreads, -1)
        cdef cnp.ndarray za
        s.u.move.src = cnp.PyArray_DATA(src)
        s.u.move.dst = cnp.PyArray_DATA(dst)
        s.u.move.mask = <const unsigned char *>cnp.PyArray_DATA(mask)
        s.u.move.zero = NULL
        if zero is not None:
            za = zero
            s.u.move.zero = <const unsigned char *>cnp.PyArray_DATA(za)
        s.u.move.rows = rows
        s.u.move.rowbytes = rowbytes
        s.u.move.unpack = unpack
        self.keep.append((src, dst, mask, zero))

    def add_depthwise(self, cnp.ndarray x, cnp.ndarray w, cnp.ndarray out, int64_t kh, int64_t kw, int64_t sh,
                      int64_t sw, int64_t ph, int64_t pw, object bias_col, object bias_row, object res, int act,
                      object table, int nthreads, int kernel):
        table = self._prepared(table) if act == NM_ACT_PWL else None
        cdef nm_depthwise_args d
        _fill_depthwise(&d, x, w, out, kh, kw, sh, sw, ph, pw)
        d.ep = _epilogue(bias_col, bias_row, res, act, table, NULL, None, True)
        cdef nm_step *s = self._new(NM_STEP_DEPTHWISE, nthreads, kernel)
        s.u.dw = d
        self.keep.append((x, w, out, bias_col, bias_row, res, table))

    def add_conv_nhwc(self, cnp.ndarray x, cnp.ndarray cols, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                      int64_t ph, int64_t pw, cnp.ndarray bp, int64_t N, cnp.ndarray c, object bias_col,
                      object bias_row, object res, int act, object table, int nthreads, int kernel):
        table = self._prepared(table) if act == NM_ACT_PWL else None
        cdef nm_conv_args a
        _fill_conv(&a, x, cols, kh, kw, sh, sw, ph, pw, bp, N, c)
        a.ep = _epilogue(bias_col, bias_row, res, act, table, NULL, None)
        cdef nm_step *s = self._new(NM_STEP_CONV_NHWC, nthreads, kernel)
        s.u.conv = a
        self.keep.append((x, cols, bp, c, bias_col, bias_row, res, table))

    def add_maxpool_nhwc(self, cnp.ndarray x, cnp.ndarray y, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                         int64_t ph, int64_t pw, bint edge, int nthreads=1):
        cdef nm_windows_args w
        _fill_windows(&w, x, y, kh, kw, sh, sw, ph, pw, edge, 3, True)
        cdef nm_step *s = self._new(NM_STEP_MAXPOOL_NHWC, nthreads, -1)
        s.u.win = w
        self.keep.append((x, y))

    def add_windows(self, cnp.ndarray x, cnp.ndarray out, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                    int64_t ph, int64_t pw, bint edge, int layout, int nthreads=1):
        cdef nm_windows_args w
        _fill_windows(&w, x, out, kh, kw, sh, sw, ph, pw, edge, layout)
        cdef nm_step *s = self._new(NM_STEP_WINDOWS, nthreads, -1)
        s.u.win = w
        self.keep.append((x, out))

    def add_tokens(self, int mode, cnp.ndarray src, object ids, cnp.ndarray dst, int64_t n, int64_t rows,
                   int64_t cols, int64_t rowbytes):
        cdef nm_tokens_args t
        _fill_tokens(&t, mode, src, ids, dst, n, rows, cols, rowbytes)
        cdef nm_step *s = self._new(NM_STEP_TOKENS, -1, -1)
        s.u.tok = t
        self.keep.append((src, ids, dst))

    def run(self, int64_t lo, int64_t hi) -> None:
        """Make the recorded calls lo..hi (GIL released)."""
        cdef int rc
        cdef int64_t failed = 0
        if lo < 0 or hi > self.n or lo > hi:
            raise IndexError(f"CPlan.run({lo}, {hi}) outside 0..{self.n}")
        cdef int kernel = self.kernel if self.kernel >= 0 else NM_KERNEL_SCALAR
        cdef int nthreads = self.nthreads if self.nthreads >= 1 else 1
        with nogil:
            rc = nm_plan_run(self.steps, lo, hi, nthreads, kernel, &failed)
        if rc == NM_ERANGE:
            raise ValueError(f"ids must be in [0, {self.steps[failed].u.tok.rows}) (plan step {failed})")
        if rc != NM_OK:
            try:
                _check(rc)
            except (MemoryError, ValueError) as e:
                raise type(e)(f"{e} (plan step {failed})") from None

include "_core_int8.pxi"
