/*
 * attn_naive.c - dense causal attention computed in the runner over the same
 * paged layout as the plugin's (block tables from the plan): the debugging
 * stand-in for the plugin and a reference in tests (see attn.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"

typedef struct naive {
    rn_attn_t base;
    float *k, *v;  /* [L, num_blocks * block_size, Hkv, D] */
    float *score;  /* [max_blocks * block_size] */
} naive_t;

static int naive_attend(rn_attn_t *a, int layer, const rn_plan_t *plan, const float *q, const float *k,
                        const float *v, float *out)
{
    naive_t *s = (naive_t *)a;
    const int hq = a->num_q_heads, hkv = a->num_kv_heads, d = a->head_dim, g = hq / hkv, bs = a->block_size;
    const size_t row = (size_t)hkv * d, slots = (size_t)a->num_blocks * bs;
    float *kc = s->k + (size_t)layer * slots * row, *vc = s->v + (size_t)layer * slots * row;
    for (int t = 0; t < plan->n_tokens; t++) {
        const int64_t sl = plan->slots[t];
        if (sl < 0 || (size_t)sl >= slots) {
            snprintf(a->err, sizeof a->err, "naive attention: slot %lld is outside the cache", (long long)sl);
            return -1;
        }
        memcpy(kc + sl * row, k + (size_t)t * row, row * sizeof *k);
        memcpy(vc + sl * row, v + (size_t)t * row, row * sizeof *v);
    }
    const float scale = 1.0f / sqrtf((float)d);
    for (int i = 0; i < plan->n_seqs; i++) {
        const int r0 = plan->q_start[i], rows = plan->q_start[i + 1] - r0;
        const int32_t *table = plan->tables + (size_t)i * plan->width;
        for (int r = 0; r < rows; r++) {
            const int64_t ctx = plan->seq_lens[i] - rows + r + 1; /* causal: positions <= own */
            for (int h = 0; h < hq; h++) {
                const float *qh = q + ((size_t)(r0 + r) * hq + h) * d;
                const int kvh = h / g;
                float mx = -INFINITY;
                for (int64_t j = 0; j < ctx; j++) {
                    const float *kj = kc + ((size_t)table[j / bs] * bs + j % bs) * row + (size_t)kvh * d;
                    float dot = 0;
                    for (int t = 0; t < d; t++)
                        dot += qh[t] * kj[t];
                    s->score[j] = dot * scale;
                    if (s->score[j] > mx)
                        mx = s->score[j];
                }
                double sum = 0;
                for (int64_t j = 0; j < ctx; j++) {
                    s->score[j] = expf(s->score[j] - mx);
                    sum += s->score[j];
                }
                float *o = out + ((size_t)(r0 + r) * hq + h) * d;
                memset(o, 0, (size_t)d * sizeof *o);
                for (int64_t j = 0; j < ctx; j++) {
                    const float w = (float)(s->score[j] / sum);
                    const float *vj = vc + ((size_t)table[j / bs] * bs + j % bs) * row + (size_t)kvh * d;
                    for (int t = 0; t < d; t++)
                        o[t] += w * vj[t];
                }
            }
        }
        if (i < plan->n_decode) {
            const int32_t all = plan->seq_lens[i]; /* dense: every token */
            rn_attn_stats_add(&a->stats, layer, a->num_layers, &all, 1, plan->seq_lens[i]);
        }
    }
    return 0;
}

static void naive_destroy(rn_attn_t *a)
{
    naive_t *s = (naive_t *)a;
    free(s->k);
    free(s->v);
    free(s->score);
    free(s);
}

static const rn_attn_ops_t k_naive_ops = { "naive", naive_attend, NULL, naive_destroy };

int rn_attn_naive_create(const rn_attn_shape_t *sh, rn_attn_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (sh->num_layers < 1 || sh->num_kv_heads < 1 || sh->num_q_heads % sh->num_kv_heads || sh->head_dim < 1 ||
        sh->block_size < 1 || sh->num_blocks < 1 || sh->max_blocks < 1) {
        snprintf(err, errlen, "naive attention: bad shape (layers %d, heads %d/%d, dim %d, %d blocks of %d)",
                 sh->num_layers, sh->num_q_heads, sh->num_kv_heads, sh->head_dim, sh->num_blocks, sh->block_size);
        return -1;
    }
    naive_t *s = calloc(1, sizeof *s);
    size_t n = (size_t)sh->num_layers * sh->num_blocks * sh->block_size * sh->num_kv_heads * sh->head_dim;
    if (s) {
        s->k = calloc(n, sizeof *s->k);
        s->v = calloc(n, sizeof *s->v);
        s->score = malloc((size_t)sh->max_blocks * sh->block_size * sizeof *s->score);
    }
    if (!s || !s->k || !s->v || !s->score) {
        if (s)
            naive_destroy(&s->base);
        snprintf(err, errlen, "naive attention: out of memory for %d blocks", sh->num_blocks);
        return -1;
    }
    rn_attn_t *a = &s->base;
    a->ops = &k_naive_ops;
    a->num_layers = sh->num_layers;
    a->num_q_heads = sh->num_q_heads;
    a->num_kv_heads = sh->num_kv_heads;
    a->head_dim = sh->head_dim;
    a->block_size = sh->block_size;
    a->num_blocks = sh->num_blocks;
    a->max_seqs = sh->max_seqs;
    a->max_tokens = sh->max_tokens;
    a->max_blocks = sh->max_blocks;
    rn_attn_stats_reset(&a->stats);
    snprintf(a->desc, sizeof a->desc, "naive dense attention in the runner (no plugin)");
    *out = a;
    return 0;
}
