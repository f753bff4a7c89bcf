# int8 GEMM entry points of nmengine._core (csrc/nm_qgemm.h), included by _core.pyx.
# Only nmengine.kernels calls these: it validates shapes/dtypes and keeps the arrays alive.

from libc.stdint cimport int8_t

cdef extern from "nm_qgemm.h":
    int NM_QKERNEL_AUTO
    int NM_QKERNEL_SCALAR
    int NM_QKERNEL_AVX2
    int NM_QKERNEL_AVXVNNI
    int NM_QKERNEL_AVX512VNNI
    int NM_QKERNEL_AMX
    int NM_Q_NPAD

    ctypedef struct nm_qgemm_args:
        int64_t M, N, K, G
        const float *A
        const int8_t *Aq
        Py_ssize_t rsa, csa
        const float *inv_smooth
        const float *a_static
        const float *a_scale
        const int8_t *Bp
        const int32_t *colsum
        const float *w_scale
        float *C
        int32_t *Ci
        Py_ssize_t rsc, csc
        const nm_epilogue *ep

    int nm_qkernel_available(int qkernel) nogil
    int nm_qkernel_resolve(int qkernel) nogil
    int64_t nm_qpack_b_bytes(int64_t K, int64_t N) nogil
    int nm_qpack_b(int64_t K, int64_t N, int64_t G, const int8_t *B, Py_ssize_t rsb, Py_ssize_t csb,
                   int8_t *dst, int32_t *colsum) nogil
    int nm_qgemm(const nm_qgemm_args *args, int nthreads, int qkernel) nogil

QKERNEL_AUTO = NM_QKERNEL_AUTO
QKERNEL_SCALAR = NM_QKERNEL_SCALAR
QKERNEL_AVX2 = NM_QKERNEL_AVX2
QKERNEL_AVXVNNI = NM_QKERNEL_AVXVNNI
QKERNEL_AVX512VNNI = NM_QKERNEL_AVX512VNNI
QKERNEL_AMX = NM_QKERNEL_AMX
Q_NPAD = NM_Q_NPAD


def qkernel_available(int qkernel) -> bool:
    """True when the int8 kernel can run on this CPU (cpuid + xgetbv, detected once)."""
    return nm_qkernel_available(qkernel) != 0


def qkernel_resolve(int qkernel) -> int:
    """The int8 kernel a request resolves to (negative when unavailable)."""
    return nm_qkernel_resolve(qkernel)


def qpack_b(cnp.ndarray b, int64_t G, int64_t ngroups) -> tuple:
    """(packed, colsum): int8 B (2-D, any element strides) in the int8 kernels' panel layout (a
    64-byte aligned 1-D int8 array) and its per-group column sums (ngroups, Np) int32."""
    if b.ndim != 2 or b.dtype != np.int8:
        raise ValueError("qpack_b expects a 2-D int8 array")
    cdef int64_t K = b.shape[0], N = b.shape[1]
    cdef int64_t n = nm_qpack_b_bytes(K, N)
    cdef int64_t Np = (N + NM_Q_NPAD - 1) // NM_Q_NPAD * NM_Q_NPAD
    raw = np.empty(n + 64, dtype=np.int8)
    cdef Py_ssize_t addr = raw.__array_interface__["data"][0]
    cdef Py_ssize_t off = (64 - addr % 64) % 64
    cdef cnp.ndarray dst = raw[off:off + n]
    cdef cnp.ndarray cs = np.zeros((ngroups, Np), dtype=np.int32)
    cdef const int8_t *pb = <const int8_t *>cnp.PyArray_DATA(b)
    cdef int8_t *pd = <int8_t *>cnp.PyArray_DATA(dst)
    cdef int32_t *pc = <int32_t *>cnp.PyArray_DATA(cs)
    cdef Py_ssize_t rsb = cnp.PyArray_STRIDES(b)[0], csb = cnp.PyArray_STRIDES(b)[1]
    cdef int rc
    with nogil:
        rc = nm_qpack_b(K, N, G, pb, rsb, csb, pd, pc)
    _check(rc)
    return dst, cs


cdef inline const float *_fopt(object a):
    cdef cnp.ndarray arr
    if a is None:
        return NULL
    arr = a
    return <const float *>cnp.PyArray_DATA(arr)


def qgemm(cnp.ndarray a, cnp.ndarray bp, cnp.ndarray colsum, object w_scale, int64_t K, int64_t N,
          int64_t G, object c, object ci, object inv_smooth, object a_static, object a_scale,
          object bias_col, object bias_row, object res, int act, object table, int nthreads,
          int qkernel) -> None:
    """nm_qgemm: a is (M, K) float32 (quantized here) or int8; exactly one of c (M, N) float32 /
    ci (M, N) int32 (any element strides).  Vectors are C-contiguous float32 or None; the caller
    checks every shape."""
    cdef nm_qgemm_args x
    cdef nm_pwl pwl
    cdef list keep = []
    cdef cnp.ndarray carr, ciarr
    cdef nm_epilogue ep = _epilogue(bias_col, bias_row, res, act, table, &pwl, keep)
    x.M = a.shape[0]
    x.N = N
    x.K = K
    x.G = G
    x.A = NULL
    x.Aq = NULL
    if a.dtype == np.int8:
        x.Aq = <const int8_t *>cnp.PyArray_DATA(a)
        x.rsa = cnp.PyArray_STRIDES(a)[0]
        x.csa = cnp.PyArray_STRIDES(a)[1]
    else:
        x.A = <const float *>cnp.PyArray_DATA(a)
        x.rsa = _es(a, 0)
        x.csa = _es(a, 1)
    x.inv_smooth = _fopt(inv_smooth)
    x.a_static = _fopt(a_static)
    x.a_scale = _fopt(a_scale)
    x.Bp = <const int8_t *>cnp.PyArray_DATA(bp)
    x.colsum = <const int32_t *>cnp.PyArray_DATA(colsum)
    x.w_scale = _fopt(w_scale)
    x.C = NULL
    x.Ci = NULL
    if c is not None:
        carr = c
        x.C = <float *>cnp.PyArray_DATA(carr)
        x.rsc = _es(carr, 0)
        x.csc = _es(carr, 1)
        x.ep = &ep
    else:
        ciarr = ci
        x.Ci = <int32_t *>cnp.PyArray_DATA(ciarr)
        x.rsc = _es(ciarr, 0)
        x.csc = _es(ciarr, 1)
        x.ep = NULL
    cdef int rc
    with nogil:
        rc = nm_qgemm(&x, nthreads, qkernel)
    _check(rc)
    del keep


cdef extern from "nm_plan.h":
    ctypedef struct nm_qconv_args:
        nm_windows_args win
        nm_qgemm_args q

    int nm_qconv_nhwc(const nm_qconv_args *a, int nthreads, int qkernel) nogil


def qconv_nhwc(cnp.ndarray x, cnp.ndarray cols, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
               int64_t pw, cnp.ndarray bp, cnp.ndarray colsum, cnp.ndarray w_scale, int64_t N, int64_t G,
               cnp.ndarray c, object inv_smooth, object a_static, object bias_col, object bias_row, object res,
               int act, object table, int nthreads, int qkernel) -> None:
    """Channels-last convolution with the int8 GEMM (nm_qconv_nhwc): c [N*Ho*Wo, N] =
    epilogue(dequant(quant(im2col(x)) @ Bq)) for NHWC x, Bq packed by qpack_b [kh*kw*C, N] with its
    column sums and scales; cols is the [N*Ho*Wo, kh*kw*C] float im2col buffer (scratch).  The caller
    checks dtypes and shapes of the vectors (as for qgemm)."""
    cdef nm_qconv_args a
    cdef nm_pwl pwl
    cdef list keep = []
    cdef int rc
    _fill_windows(&a.win, x, cols, kh, kw, sh, sw, ph, pw, False, 2)
    if c.ndim != 2 or c.dtype != np.float32 or not c.flags.c_contiguous \
            or c.shape[0] != a.win.n * a.win.ho * a.win.wo or c.shape[1] != N:
        raise ValueError("qconv_nhwc: c must be C-contiguous float32 [N*Ho*Wo, N]")
    if bp.dtype != np.int8 or colsum.dtype != np.int32 or w_scale.dtype != np.float32:
        raise ValueError("qconv_nhwc: bp must be int8 (qpack_b), colsum int32, w_scale float32")
    cdef nm_epilogue ep = _epilogue(bias_col, bias_row, res, act, table, &pwl, keep)
    a.q.M = a.win.n * a.win.ho * a.win.wo
    a.q.N = N
    a.q.K = kh * kw * a.win.c
    a.q.G = G
    a.q.A = NULL
    a.q.Aq = NULL
    a.q.rsa = 0
    a.q.csa = 1
    a.q.inv_smooth = _fopt(inv_smooth)
    a.q.a_static = _fopt(a_static)
    a.q.a_scale = NULL
    a.q.Bp = <const int8_t *>cnp.PyArray_DATA(bp)
    a.q.colsum = <const int32_t *>cnp.PyArray_DATA(colsum)
    a.q.w_scale = <const float *>cnp.PyArray_DATA(w_scale)
    a.q.C = <float *>cnp.PyArray_DATA(c)
    a.q.Ci = NULL
    a.q.rsc = N
    a.q.csc = 1
    a.q.ep = &ep
    with nogil:
        rc = nm_qconv_nhwc(&a, nthreads, qkernel)
    del keep
    _check(rc)
