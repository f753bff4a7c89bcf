/* Attention over packed tokens at each sequence's own length (nm_attention.h). */
#include <stdlib.h>

#include "nm_attention.h"
#include "nm_gemm.h"
#include "nm_softmax.h"
#include "nm_threads.h"

typedef struct nm_attn_args {
    const float *qkv;
    int64_t ld_qkv, q_off, k_off, v_off, heads, d;
    const float *bias;
    int64_t ld_bias;
    const nm_pwl *exp_pwl, *recip_pwl;
    float *out;
    int64_t ld_out;
    int kernel;
    const int64_t *start, *len, *order; /* per sequence: first packed row, length; longest first */
    int64_t nseq, maxlen;
    int per_head;
    volatile int err;
} nm_attn_args;

/* Heads h0 .. h0 + nh - 1 of sequence s; scores holds nh * n * n floats. */
static int nm_attn_one(const nm_attn_args *a, int64_t s, int64_t h0, int64_t nh, float *scores)
{
    const int64_t n = a->len[s], r0 = a->start[s], d = a->d, ld = a->ld_qkv;
    if (n == 0) return NM_OK;
    const float *rows = a->qkv + r0 * ld + h0 * d;
    nm_epilogue ep = {0};
    if (a->bias) {
        ep.res = a->bias + s * a->ld_bias;
        ep.res_rs = 0; /* one bias per column, broadcast over the rows and heads */
        ep.res_cs = 1;
    }
    ep.act = NM_ACT_NONE;
    /* S[h] = Q_h K_h^T: A[i, c] = qkv[i, q_off + h d + c], B[c, j] = qkv[j, k_off + h d + c] */
    int rc = nm_sgemm_batched(1, nh, n, n, d, rows + a->q_off, 0, d, ld, 1, rows + a->k_off, 0, d, 1, ld,
                              scores, 0, n * n, n, 1, &ep, 1, a->kernel);
    if (rc != NM_OK) return rc;
    rc = nm_softmax_rows(scores, nh * n, n, a->exp_pwl, a->recip_pwl, NULL, NULL, NULL, scores, 1, a->kernel);
    if (rc != NM_OK) return rc;
    /* out rows, head h = P[h] V_h: B[j, c] = qkv[j, v_off + h d + c] */
    return nm_sgemm_batched(1, nh, n, d, n, scores, 0, n * n, n, 1, rows + a->v_off, 0, d, ld, 1,
                            a->out + r0 * a->ld_out + h0 * d, 0, d, a->ld_out, 1, NULL, 1, a->kernel);
}

/* Work items: whole sequences when there are enough of them to share out (a->per_head == 0), else
 * (sequence, head) pairs, so that a batch of one still uses every thread.  Either way every head's
 * products and softmax rows are the same calls on the same data, so the split changes no bit. */
static void nm_attn_task(void *arg, nm_team *team, int tid, int nt)
{
    (void)tid;
    nm_attn_args *a = (nm_attn_args *)arg;
    const int64_t items = a->per_head ? a->nseq * a->heads : a->nseq;
    const int64_t nh = a->per_head ? 1 : a->heads;
    float *scores = NULL;
    for (int64_t i = nt > 1 ? nm_team_next(team) : 0; i < items; i = nt > 1 ? nm_team_next(team) : i + 1) {
        const int64_t s = a->order[a->per_head ? i / a->heads : i];
        const int64_t h0 = a->per_head ? i % a->heads : 0;
        if (a->len[s] == 0) continue;
        if (!scores) {
            scores = (float *)malloc((size_t)(nh * a->maxlen * a->maxlen) * sizeof(float));
            if (!scores) {
                a->err = NM_ENOMEM;
                return;
            }
        }
        const int rc = nm_attn_one(a, s, h0, nh, scores);
        if (rc != NM_OK) a->err = rc;
    }
    free(scores);
}

static int nm_len_cmp_desc(const void *x, const void *y, const int64_t *len)
{
    const int64_t i = *(const int64_t *)x, j = *(const int64_t *)y;
    if (len[i] != len[j]) return len[i] > len[j] ? -1 : 1;
    return i < j ? -1 : (i > j);
}

int nm_attention_packed(const float *qkv, int64_t ntok, int64_t ld_qkv, int64_t q_off, int64_t k_off, int64_t v_off,
                        int64_t heads, int64_t d, const unsigned char *mask, int64_t nseq, int64_t cols,
                        const float *bias, int64_t ld_bias, const nm_pwl *exp_pwl, const nm_pwl *recip_pwl,
                        float *out, int64_t ld_out, int nthreads, int kernel)
{
    if (nseq < 0 || cols < 0 || heads < 1 || d < 1 || !exp_pwl || !recip_pwl || (nseq > 0 && cols > 0 && !mask))
        return NM_EINVAL;
    if (q_off < 0 || k_off < 0 || v_off < 0 || q_off + heads * d > ld_qkv || k_off + heads * d > ld_qkv ||
        v_off + heads * d > ld_qkv || heads * d > ld_out || (bias && ld_bias < cols))
        return NM_EINVAL;
    if (nm_resolve_kernel(kernel) < 0) return NM_EINVAL;
    if (nseq == 0) return NM_OK;
    int64_t *idx = (int64_t *)malloc((size_t)nseq * 3 * sizeof(int64_t));
    if (!idx) return NM_ENOMEM;
    int64_t *start = idx, *len = idx + nseq, *order = idx + 2 * nseq;
    int64_t total = 0, maxlen = 0;
    for (int64_t s = 0; s < nseq; s++) {
        const unsigned char *m = mask + s * cols;
        int64_t n = 0;
        while (n < cols && m[n]) n++;
        for (int64_t j = n; j < cols; j++) {
            if (m[j]) {
                free(idx);
                return NM_ENOTPREFIX;
            }
        }
        start[s] = total;
        len[s] = n;
        total += n;
        if (n > maxlen) maxlen = n;
    }
    if (total != ntok || (total > 0 && (!qkv || !out))) {
        free(idx);
        return NM_EINVAL;
    }
    if (total == 0) {
        free(idx);
        return NM_OK;
    }
    /* longest first (insertion sort: a batch holds few sequences), so the dynamic schedule ends even */
    for (int64_t i = 0; i < nseq; i++) {
        int64_t j = i;
        order[j] = i;
        while (j > 0 && nm_len_cmp_desc(&order[j], &order[j - 1], len) < 0) {
            const int64_t t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
            j--;
        }
    }
    nm_attn_args a = {qkv, ld_qkv, q_off, k_off, v_off, heads, d, bias, ld_bias, exp_pwl, recip_pwl,
                      out, ld_out, kernel, start, len, order, nseq, maxlen, 0, NM_OK};
    int nt = nthreads < 1 ? 1 : (nthreads > NM_MAX_THREADS ? NM_MAX_THREADS : nthreads);
    a.per_head = nt > 1 && nseq < 4 * (int64_t)nt;
    const int64_t items = a.per_head ? nseq * heads : nseq;
    if (nt > items) nt = (int)items;
    if (nt > 1)
        nm_parallel_dyn(nt, nm_attn_task, &a);
    else
        nm_attn_task(&a, NULL, 0, 1);
    free(idx);
    return a.err;
}
