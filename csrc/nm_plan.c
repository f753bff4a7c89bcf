/* The plan executor (nm_plan.h): a loop over core calls. */
#include "nm_plan.h"
#include <string.h>

int nm_tokens(const nm_tokens_args *a)
{
    if (!a || !a->src || !a->dst || a->n < 0) return NM_EINVAL;
    if (a->mode == NM_TOKENS_MASK) {
        const int64_t *src = (const int64_t *)a->src;
        unsigned char *dst = (unsigned char *)a->dst;
        for (int64_t i = 0; i < a->n; i++) dst[i] = src[i] != 0;
        return NM_OK;
    }
    if (a->mode == NM_TOKENS_POSITIONS) {
        if (a->cols < 1) return NM_EINVAL;
        const unsigned char *m = (const unsigned char *)a->src;
        int64_t *dst = (int64_t *)a->dst, k = 0;
        for (int64_t i = 0; i < a->n; i++)
            if (m[i]) dst[k++] = i % a->cols;
        return NM_OK;
    }
    if (a->mode == NM_TOKENS_GATHER) {
        if (!a->ids || a->rows < 0 || a->rowbytes < 0) return NM_EINVAL;
        const char *src = (const char *)a->src;
        char *dst = (char *)a->dst;
        for (int64_t k = 0; k < a->n; k++) {
            int64_t id = a->ids[k];
            if (id < 0 || id >= a->rows) return NM_ERANGE;
            memcpy(dst + k * a->rowbytes, src + id * a->rowbytes, (size_t)a->rowbytes);
        }
        return NM_OK;
    }
    return NM_EINVAL;
}

static int run_step(const nm_step *s, int nthreads, int kernel)
{
    switch (s->kind) {
    case NM_STEP_GEMM: {
        const nm_step_gemm *g = &s->u.gemm;
        return nm_sgemm_batched(g->P1, g->P2, g->M, g->N, g->K, g->A, g->ps1a, g->ps2a, g->rsa, g->csa,
                                g->B, g->ps1b, g->ps2b, g->rsb, g->csb, g->C, g->ps1c, g->ps2c, g->rsc, g->csc,
                                &g->ep, nthreads, kernel);
    }
    case NM_STEP_GEMM_PACKED: {
        const nm_step_packed *g = &s->u.packed;
        return nm_sgemm_packed(g->M, g->N, g->K, g->A, g->rsa, g->csa, g->Bp, g->C, g->rsc, g->csc, &g->ep,
                               nthreads, kernel);
    }
    case NM_STEP_SCALE:
        return nm_scale(&s->u.scale.a, s->u.scale.y, nthreads, kernel);
    case NM_STEP_PAIRWISE_MAX:
        return nm_pairwise_max(s->u.pmax.x, s->u.pmax.rows, s->u.pmax.n, s->u.pmax.y, nthreads, kernel);
    case NM_STEP_SOFTMAX: {
        const nm_step_softmax *f = &s->u.softmax;
        return nm_softmax_rows(f->s, f->rows, f->n, f->exp_pwl, f->recip_pwl, f->m, f->e, f->r, f->p, nthreads,
                               kernel);
    }
    case NM_STEP_LAYERNORM:
        return nm_layernorm_rows(&s->u.ln, nthreads, kernel);
    case NM_STEP_MOVE_ROWS: {
        const nm_step_move *m = &s->u.move;
        return nm_move_rows(m->src, m->dst, m->mask, m->zero, m->rows, m->rowbytes, m->unpack, nthreads);
    }
    case NM_STEP_WINDOWS:
        return nm_windows_mt(&s->u.win, nthreads);
    case NM_STEP_TOKENS:
        return nm_tokens(&s->u.tok);
    case NM_STEP_DEPTHWISE:
        return nm_depthwise(&s->u.dw, nthreads, kernel);
    case NM_STEP_CONV_NHWC:
        return nm_conv_nhwc(&s->u.conv, nthreads, kernel);
    case NM_STEP_MAXPOOL_NHWC:
        return nm_maxpool_nhwc(&s->u.win, nthreads);
    case NM_STEP_ATTENTION: {
        const nm_step_attention *a = &s->u.attn;
        return nm_attention_packed(a->qkv, a->ntok, a->ld_qkv, a->q_off, a->k_off, a->v_off, a->heads, a->d,
                                   a->mask, a->nseq, a->cols, a->bias, a->ld_bias, a->exp_pwl, a->recip_pwl,
                                   a->out, a->ld_out, nthreads, kernel);
    }
    default:
        return NM_EINVAL;
    }
}

int nm_plan_run(const nm_step *steps, int64_t lo, int64_t hi, int nthreads, int kernel, int64_t *failed)
{
    for (int64_t i = lo; i < hi; i++) {
        int rc = run_step(&steps[i], nthreads, kernel);
        if (steps[i].kind == NM_STEP_ATTENTION) {
            if (rc == NM_OK) {
                i += steps[i].u.attn.skip; /* done: the padded chain after it is not needed */
                continue;
            }
            if (rc == NM_ENOTPREFIX) continue; /* the padded chain runs instead */
        }
        if (rc != NM_OK) {
            if (failed) *failed = i;
            return rc;
        }
    }
    if (failed) *failed = hi;
    return NM_OK;
}
