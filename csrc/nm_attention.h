/* Multi-head attention over packed tokens, every sequence at its own length.
 *
 * A Program computes attention on the padded [batch, tokens] grid: unpack the packed QKV rows,
 * scores = Q K^T + mask bias per sequence and head (nm_sgemm_batched), the fused softmax rows
 * (nm_softmax_rows), context = P V (nm_sgemm_batched), pack the context rows again.  For a mask whose
 * every row is a prefix (real tokens first: right padding), the padded columns of a row contribute
 * exact zeros to every one of those operations (the row max fold, the exp table, the row sum, the
 * P V reduction), so each sequence's rows are the same bits when the chain runs on that sequence
 * alone at its own length n_s, as long as the padded length is at most the GEMM's K block (the
 * reductions are then one block whatever the length).  This function does that: the work and
 * memory of attention follow sum(n_s^2) instead of batch x padded length^2, and nothing is
 * unpacked or packed.
 */
#ifndef NM_ATTENTION_H
#define NM_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "nm_pwl.h"

/* The mask is not right-padded (a real token after a padded one): use the padded chain. */
#define NM_ENOTPREFIX (-4)

/* qkv: packed rows [ntok, ld_qkv] (row r = the r-th real token of the mask in row-major order; the
 * mask must hold ntok real tokens, else NM_EINVAL);
 * head h of sequence s reads Q at column q_off + h * d, K at k_off + h * d, V at v_off + h * d of its
 * rows.  mask: [nseq, cols] bytes, nonzero = real token; every row must be a prefix of ones
 * (else NM_ENOTPREFIX and nothing is written).  bias: NULL, or [nseq, ld_bias] floats added to
 * column j of every score row of sequence s (the mask bias: bias[s * ld_bias + j]).  out: [ntok,
 * ld_out] floats, head h of a token at columns h * d .. h * d + d - 1.  Per sequence s with n_s real
 * tokens (skipped when n_s == 0), for every head:
 *     S = Q K^T (+ bias row)          nm_sgemm_batched, [n_s, n_s], K = d
 *     P = softmax_rows(S)             nm_softmax_rows with the exp and reciprocal tables
 *     out rows = P V                  nm_sgemm_batched, [n_s, d], K = n_s
 * Sequences (longest first), or (sequence, head) pairs when there are fewer than 4 sequences per
 * thread, are handed out to the pool's threads one at a time; each head's operations are the same
 * single-threaded calls whatever the split, so any nthreads gives the same bits.  Returns NM_OK, NM_EINVAL for
 * bad sizes / a missing table, NM_ENOMEM, or NM_ENOTPREFIX. */
int nm_attention_packed(const float *qkv, int64_t ntok, int64_t ld_qkv, int64_t q_off, int64_t k_off, int64_t v_off,
                        int64_t heads, int64_t d, const unsigned char *mask, int64_t nseq, int64_t cols,
                        const float *bias, int64_t ld_bias, const nm_pwl *exp_pwl, const nm_pwl *recip_pwl,
                        float *out, int64_t ld_out, int nthreads, int kernel);

#endif
