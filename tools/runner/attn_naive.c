/*
 * attn_naive.c - dense causal attention with contiguous caches, in the
 * runner itself: the debugging stand-in for the plugin (see attn.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn.h"

typedef struct naive {
    rn_attn_t base;
    float *k, *v;  /* [L, max_len, Hkv, D] */
    float *score;  /* [max_len] */
} naive_t;

static int naive_append(rn_attn_t *a, int n)
{
    if (n < 1 || a->len + n > a->max_len) {
        snprintf(a->err, sizeof a->err, "naive attention: %lld + %d tokens exceed the capacity %lld",
                 (long long)a->len, n, (long long)a->max_len);
        return -1;
    }
    a->len += n;
    return 0;
}

static int naive_attend(rn_attn_t *a, int layer, const float *q, const float *k, const float *v, int n,
                        int decode, float *out)
{
    naive_t *s = (naive_t *)a;
    const int hq = a->num_q_heads, hkv = a->num_kv_heads, d = a->head_dim, g = hq / hkv;
    const size_t row = (size_t)hkv * d;
    const int64_t start = a->len - n;
    float *kc = s->k + (size_t)layer * a->max_len * row, *vc = s->v + (size_t)layer * a->max_len * row;
    memcpy(kc + start * row, k, (size_t)n * row * sizeof *k);
    memcpy(vc + start * row, v, (size_t)n * row * sizeof *v);
    const float scale = 1.0f / sqrtf((float)d);
    for (int i = 0; i < n; i++) {
        int64_t ctx = start + i + 1; /* causal: positions <= own */
        for (int h = 0; h < hq; h++) {
            const float *qh = q + ((size_t)i * hq + h) * d;
            const int kvh = h / g;
            float mx = -INFINITY;
            for (int64_t j = 0; j < ctx; j++) {
                const float *kj = kc + j * row + (size_t)kvh * d;
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
            float *o = out + ((size_t)i * hq + h) * d;
            memset(o, 0, (size_t)d * sizeof *o);
            for (int64_t j = 0; j < ctx; j++) {
                const float w = (float)(s->score[j] / sum);
                const float *vj = vc + j * row + (size_t)kvh * d;
                for (int t = 0; t < d; t++)
                    o[t] += w * vj[t];
            }
        }
    }
    if (decode && layer == 0) {
        a->stats.decode_steps++;
        a->stats.attended_sum += (double)a->len;
        a->stats.context_sum += (double)a->len;
        if (a->stats.attended_min < 0 || a->len < a->stats.attended_min)
            a->stats.attended_min = a->len;
        if (a->len > a->stats.attended_max)
            a->stats.attended_max = a->len;
    }
    return 0;
}

static void naive_reset(rn_attn_t *a)
{
    a->len = 0;
}

static void naive_destroy(rn_attn_t *a)
{
    naive_t *s = (naive_t *)a;
    free(s->k);
    free(s->v);
    free(s->score);
    free(s);
}

static const rn_attn_ops_t k_naive_ops = { "naive", naive_append, naive_attend, naive_reset, naive_destroy };

int rn_attn_naive_create(int num_layers, int num_q_heads, int num_kv_heads, int head_dim, int64_t max_len,
                         rn_attn_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (num_layers < 1 || num_kv_heads < 1 || num_q_heads % num_kv_heads || head_dim < 1 || max_len < 1) {
        snprintf(err, errlen, "naive attention: bad shape (layers %d, heads %d/%d, dim %d, len %lld)",
                 num_layers, num_q_heads, num_kv_heads, head_dim, (long long)max_len);
        return -1;
    }
    naive_t *s = calloc(1, sizeof *s);
    size_t n = (size_t)num_layers * max_len * num_kv_heads * head_dim;
    if (s) {
        s->k = malloc(n * sizeof *s->k);
        s->v = malloc(n * sizeof *s->v);
        s->score = malloc((size_t)max_len * sizeof *s->score);
    }
    if (!s || !s->k || !s->v || !s->score) {
        if (s)
            naive_destroy(&s->base);
        snprintf(err, errlen, "naive attention: out of memory for %lld tokens", (long long)max_len);
        return -1;
    }
    rn_attn_t *a = &s->base;
    a->ops = &k_naive_ops;
    a->num_layers = num_layers;
    a->num_q_heads = num_q_heads;
    a->num_kv_heads = num_kv_heads;
    a->head_dim = head_dim;
    a->max_len = max_len;
    a->stats.attended_min = -1;
    a->stats.counts_known = 1;
    snprintf(a->desc, sizeof a->desc, "naive dense attention in the runner (no plugin)");
    *out = a;
    return 0;
}
