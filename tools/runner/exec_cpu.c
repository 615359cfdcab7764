/*
 * exec_cpu.c - the CPU executor: model.c's forward pass, attention through
 * attn.h, sampling with sample.c (see exec.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "exec.h"
#include "matmul.h"
#include "sample.h"

typedef struct cpu_exec {
    rn_exec_t base;
    rn_model_t *m;
    rn_attn_t *attn;
    float *logits;     /* [max_seqs, V] */
    rn_sampler_t smp;  /* scratch */
} cpu_exec_t;

static int cpu_step(rn_exec_t *e, const rn_plan_t *plan, const rn_sample_req_t *smp, int32_t *next,
                    float *all_logits)
{
    cpu_exec_t *c = (cpu_exec_t *)e;
    const int V = c->m->hp.n_vocab;
    float *lg = all_logits ? all_logits : c->logits;
    if (rn_model_forward(c->m, c->attn, plan, lg, all_logits != NULL, e->err, sizeof e->err))
        return -1;
    for (int i = 0; i < plan->n_seqs; i++) {
        const float *row = lg + (size_t)(all_logits ? plan->q_start[i + 1] - 1 : i) * V;
        next[i] = rn_sample_with(&c->smp, row, smp[i].temperature, smp[i].top_p, smp[i].u);
    }
    return 0;
}

static int cpu_set_dense(rn_exec_t *e, int dense)
{
    cpu_exec_t *c = (cpu_exec_t *)e;
    if (!c->attn->ops->set_dense) {
        snprintf(e->err, sizeof e->err, "the %s attention has one mode only", c->attn->ops->name);
        return dense ? 0 : -1;
    }
    if (c->attn->ops->set_dense(c->attn, dense)) {
        snprintf(e->err, sizeof e->err, "%s", c->attn->err);
        return -1;
    }
    return 0;
}

static void cpu_destroy(rn_exec_t *e)
{
    cpu_exec_t *c = (cpu_exec_t *)e;
    free(c->logits);
    rn_sampler_destroy(&c->smp);
    free(c);
}

static int cpu_set_qk_hook(rn_exec_t *e, rn_qk_hook_fn fn, void *user)
{
    cpu_exec_t *c = (cpu_exec_t *)e;
    c->m->qk_hook = fn;
    c->m->qk_user = user;
    return 0;
}

static const rn_exec_ops_t k_cpu_ops = { cpu_step, cpu_set_dense, cpu_destroy, cpu_set_qk_hook, NULL };

int rn_exec_cpu_create(rn_model_t *m, rn_attn_t *attn, rn_exec_t **out, char *err, size_t errlen)
{
    *out = NULL;
    cpu_exec_t *c = calloc(1, sizeof *c);
    if (!c || rn_sampler_init(&c->smp, m->hp.n_vocab) ||
        !(c->logits = malloc((size_t)attn->max_seqs * m->hp.n_vocab * sizeof(float)))) {
        if (c)
            cpu_destroy(&c->base);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rn_exec_t *e = &c->base;
    e->ops = &k_cpu_ops;
    c->m = m;
    c->attn = attn;
    e->n_vocab = m->hp.n_vocab;
    e->block_size = attn->block_size;
    e->num_blocks = attn->num_blocks;
    e->max_seqs = attn->max_seqs;
    e->max_tokens = attn->max_tokens;
    e->max_blocks = attn->max_blocks;
    e->width_round = 1;
    e->stats = &attn->stats;
    snprintf(e->desc, sizeof e->desc, "CPU, float32, %s; attention: %s", rn_matmul_desc(), attn->desc);
    *out = e;
    return 0;
}
