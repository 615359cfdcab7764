/*
 * plan.c - sequences on a shared block pool, and step plans (see plan.h).
 */
#include "plan.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int rn_kv_init(rn_kv_t *kv, int32_t num_blocks, int32_t block_size, int max_seqs, int32_t max_blocks)
{
    memset(kv, 0, sizeof *kv);
    if (max_seqs < 1 || max_blocks < 1 || rn_block_pool_init(&kv->pool, num_blocks, block_size))
        return -1;
    kv->max_seqs = max_seqs;
    kv->max_blocks = max_blocks;
    kv->seqs = calloc((size_t)max_seqs, sizeof *kv->seqs);
    kv->reserve = calloc((size_t)max_seqs, sizeof *kv->reserve);
    if (!kv->seqs || !kv->reserve) {
        rn_kv_destroy(kv);
        return -1;
    }
    for (int i = 0; i < max_seqs; i++) {
        if (rn_seq_init(&kv->seqs[i], max_blocks)) {
            rn_kv_destroy(kv);
            return -1;
        }
    }
    return 0;
}

void rn_kv_destroy(rn_kv_t *kv)
{
    if (kv->seqs)
        for (int i = 0; i < kv->max_seqs; i++)
            rn_seq_destroy(&kv->seqs[i]);
    free(kv->seqs);
    free(kv->reserve);
    rn_block_pool_destroy(&kv->pool);
    memset(kv, 0, sizeof *kv);
}

int64_t rn_kv_unreserved(const rn_kv_t *kv)
{
    int64_t promised = 0;
    for (int i = 0; i < kv->max_seqs; i++)
        if (kv->reserve[i] > kv->seqs[i].n_blocks)
            promised += kv->reserve[i] - kv->seqs[i].n_blocks;
    return kv->pool.n_free - promised;
}

int rn_kv_acquire(rn_kv_t *kv, int64_t max_tokens)
{
    const int64_t need = max_tokens > 0 ? (max_tokens + kv->pool.block_size - 1) / kv->pool.block_size : 1;
    if (need > kv->max_blocks || need > kv->pool.num_blocks)
        return -3;
    int id = -1;
    for (int i = 0; i < kv->max_seqs && id < 0; i++)
        if (kv->reserve[i] == 0)
            id = i;
    if (id < 0)
        return -1;
    if (need > rn_kv_unreserved(kv))
        return -2;
    kv->reserve[id] = (int32_t)need;
    kv->seqs[id].len = 0;
    kv->seqs[id].n_blocks = 0;
    return id;
}

void rn_kv_release(rn_kv_t *kv, int id)
{
    if (id < 0 || id >= kv->max_seqs || kv->reserve[id] == 0)
        return;
    rn_seq_clear(&kv->pool, &kv->seqs[id]);
    kv->reserve[id] = 0;
}

void rn_kv_truncate(rn_kv_t *kv, int id, int64_t len)
{
    if (id >= 0 && id < kv->max_seqs)
        rn_seq_truncate(&kv->pool, &kv->seqs[id], len);
}

int rn_plan_init(rn_plan_t *p, int cap_seqs, int cap_tokens, int32_t cap_width)
{
    memset(p, 0, sizeof *p);
    if (cap_seqs < 1 || cap_tokens < 1 || cap_width < 1)
        return -1;
    p->cap_seqs = cap_seqs;
    p->cap_tokens = cap_tokens;
    p->cap_width = cap_width;
    p->seq_ids = malloc((size_t)cap_seqs * sizeof *p->seq_ids);
    p->tokens = malloc((size_t)cap_tokens * sizeof *p->tokens);
    p->pos = malloc((size_t)cap_tokens * sizeof *p->pos);
    p->slots = malloc((size_t)cap_tokens * sizeof *p->slots);
    p->q_start = malloc((size_t)(cap_seqs + 1) * sizeof *p->q_start);
    p->seq_lens = malloc((size_t)cap_seqs * sizeof *p->seq_lens);
    p->tables = malloc((size_t)cap_seqs * cap_width * sizeof *p->tables);
    p->qsl_prefill = malloc((size_t)(cap_seqs + 1) * sizeof *p->qsl_prefill);
    if (!p->seq_ids || !p->tokens || !p->pos || !p->slots || !p->q_start || !p->seq_lens || !p->tables ||
        !p->qsl_prefill) {
        rn_plan_free(p);
        return -1;
    }
    return 0;
}

void rn_plan_free(rn_plan_t *p)
{
    free(p->seq_ids);
    free(p->tokens);
    free(p->pos);
    free(p->slots);
    free(p->q_start);
    free(p->seq_lens);
    free(p->tables);
    free(p->qsl_prefill);
    memset(p, 0, sizeof *p);
}

int rn_kv_plan(rn_kv_t *kv, rn_plan_t *p, int n, const int32_t *ids, const int32_t *n_new, int n_decode,
               const int32_t *tokens, int width_round, char *err, size_t errlen)
{
    if (n < 1 || n > p->cap_seqs || n_decode < 0 || n_decode > n) {
        snprintf(err, errlen, "plan: %d sequences (%d decoding), capacity %d", n, n_decode, p->cap_seqs);
        return -1;
    }
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= kv->max_seqs || kv->reserve[ids[i]] == 0 || n_new[i] < 1 ||
            (i < n_decode && n_new[i] != 1)) {
            snprintf(err, errlen, "plan: entry %d: sequence %d with %d new tokens is not valid here", i, ids[i],
                     n_new[i]);
            return -1;
        }
        for (int j = 0; j < i; j++)
            if (ids[j] == ids[i]) {
                snprintf(err, errlen, "plan: sequence %d appears twice", ids[i]);
                return -1;
            }
        total += n_new[i];
    }
    if (total > p->cap_tokens) {
        snprintf(err, errlen, "plan: %lld tokens in one step, capacity %d", (long long)total, p->cap_tokens);
        return -1;
    }
    /* append, undoing on failure so that a refused step changes nothing */
    for (int i = 0; i < n; i++) {
        rn_seq_t *s = &kv->seqs[ids[i]];
        if (rn_seq_append(&kv->pool, s, n_new[i])) {
            for (int j = 0; j < i; j++)
                rn_seq_truncate(&kv->pool, &kv->seqs[ids[j]], kv->seqs[ids[j]].len - n_new[j]);
            snprintf(err, errlen, "plan: sequence %d cannot grow by %d tokens (length %lld, %d free blocks, "
                                  "table of %d)", ids[i], n_new[i], (long long)s->len, kv->pool.n_free,
                     s->max_blocks);
            return -1;
        }
    }
    int32_t maxb = 1;
    for (int i = 0; i < n; i++)
        if (kv->seqs[ids[i]].n_blocks > maxb)
            maxb = kv->seqs[ids[i]].n_blocks;
    int32_t w = maxb;
    if (width_round > 1)
        w = (int32_t)(((int64_t)maxb + width_round - 1) / width_round * width_round);
    if (w > p->cap_width)
        w = p->cap_width;
    if (w < maxb) {
        for (int i = 0; i < n; i++)
            rn_seq_truncate(&kv->pool, &kv->seqs[ids[i]], kv->seqs[ids[i]].len - n_new[i]);
        snprintf(err, errlen, "plan: a sequence has %d blocks, the tables hold %d", maxb, p->cap_width);
        return -1;
    }
    p->n_seqs = n;
    p->n_decode = n_decode;
    p->n_tokens = (int)total;
    p->width = w;
    const int32_t bs = kv->pool.block_size;
    int row = 0;
    for (int i = 0; i < n; i++) {
        const rn_seq_t *s = &kv->seqs[ids[i]];
        const int64_t start = s->len - n_new[i];
        p->seq_ids[i] = ids[i];
        p->q_start[i] = row;
        p->seq_lens[i] = (int32_t)s->len;
        for (int t = 0; t < n_new[i]; t++, row++) {
            p->tokens[row] = tokens[row];
            p->pos[row] = (int32_t)(start + t);
            p->slots[row] = rn_seq_slot(&kv->pool, s, start + t);
        }
        int32_t *tr = p->tables + (size_t)i * w;
        memcpy(tr, s->table, (size_t)s->n_blocks * sizeof *tr);
        for (int32_t b = s->n_blocks; b < w; b++)
            tr[b] = 0; /* past the sequence's blocks: never read, but a valid id */
    }
    p->q_start[n] = row;
    for (int i = n_decode; i <= n; i++)
        p->qsl_prefill[i - n_decode] = p->q_start[i] - p->q_start[n_decode];
    (void)bs;
    return 0;
}

int rn_single_init(rn_single_t *s, int64_t max_len, int block_size, int max_chunk, int shuffle, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    if (max_len < 1 || block_size < 1)
        return -1;
    const int32_t nb = (int32_t)((max_len + block_size - 1) / block_size);
    if (rn_kv_init(&s->kv, nb, block_size, 1, nb) || rn_plan_init(&s->plan, 1, max_chunk, nb)) {
        rn_kv_destroy(&s->kv);
        return -1;
    }
    if (shuffle)
        rn_block_pool_shuffle(&s->kv.pool, seed);
    s->id = rn_kv_acquire(&s->kv, max_len);
    return s->id == 0 ? 0 : -1;
}

void rn_single_free(rn_single_t *s)
{
    rn_kv_destroy(&s->kv);
    rn_plan_free(&s->plan);
}

int rn_single_step(rn_single_t *s, const int32_t *tokens, int n, int decode, char *err, size_t errlen)
{
    if (decode && n != 1) {
        snprintf(err, errlen, "decode takes one token, got %d", n);
        return -1;
    }
    const int32_t id = s->id, nn = n;
    return rn_kv_plan(&s->kv, &s->plan, 1, &id, &nn, decode ? 1 : 0, tokens, 1, err, errlen);
}

void rn_single_reset(rn_single_t *s)
{
    rn_kv_truncate(&s->kv, s->id, 0);
}
