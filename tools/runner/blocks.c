/*
 * blocks.c - paged KV block allocator (see blocks.h).
 */
#include "blocks.h"

#include <stdlib.h>

int rn_block_pool_init(rn_block_pool_t *p, int32_t num_blocks, int32_t block_size)
{
    p->free_ids = NULL;
    p->num_blocks = p->n_free = 0;
    p->block_size = block_size;
    if (num_blocks < 1 || block_size < 1)
        return -1;
    p->free_ids = malloc((size_t)num_blocks * sizeof *p->free_ids);
    if (!p->free_ids)
        return -1;
    p->num_blocks = num_blocks;
    /* a stack: push the highest id first so that block 0 comes out first */
    for (int32_t i = 0; i < num_blocks; i++)
        p->free_ids[i] = num_blocks - 1 - i;
    p->n_free = num_blocks;
    return 0;
}

void rn_block_pool_destroy(rn_block_pool_t *p)
{
    free(p->free_ids);
    p->free_ids = NULL;
    p->num_blocks = p->n_free = 0;
}

void rn_block_pool_shuffle(rn_block_pool_t *p, uint64_t seed)
{
    uint64_t x = seed ? seed : 0x9e3779b97f4a7c15ull;
    for (int32_t i = p->n_free - 1; i > 0; i--) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int32_t j = (int32_t)(x % (uint64_t)(i + 1));
        int32_t t = p->free_ids[i];
        p->free_ids[i] = p->free_ids[j];
        p->free_ids[j] = t;
    }
}

int32_t rn_block_alloc(rn_block_pool_t *p)
{
    return p->n_free ? p->free_ids[--p->n_free] : -1;
}

void rn_block_free(rn_block_pool_t *p, int32_t id)
{
    if (id >= 0 && id < p->num_blocks && p->n_free < p->num_blocks)
        p->free_ids[p->n_free++] = id;
}

int rn_seq_init(rn_seq_t *s, int32_t max_blocks)
{
    s->n_blocks = 0;
    s->len = 0;
    s->max_blocks = max_blocks;
    s->table = calloc((size_t)(max_blocks > 0 ? max_blocks : 1), sizeof *s->table);
    return s->table && max_blocks > 0 ? 0 : -1;
}

void rn_seq_destroy(rn_seq_t *s)
{
    free(s->table);
    s->table = NULL;
    s->max_blocks = s->n_blocks = 0;
    s->len = 0;
}

int rn_seq_append(rn_block_pool_t *p, rn_seq_t *s, int64_t n)
{
    if (n < 0)
        return -1;
    int64_t need = (s->len + n + p->block_size - 1) / p->block_size;
    if (need > s->max_blocks || need - s->n_blocks > p->n_free)
        return -1;
    while (s->n_blocks < need)
        s->table[s->n_blocks++] = rn_block_alloc(p);
    s->len += n;
    return 0;
}

int64_t rn_seq_slot(const rn_block_pool_t *p, const rn_seq_t *s, int64_t pos)
{
    return (int64_t)s->table[pos / p->block_size] * p->block_size + pos % p->block_size;
}

void rn_seq_clear(rn_block_pool_t *p, rn_seq_t *s)
{
    while (s->n_blocks > 0)
        rn_block_free(p, s->table[--s->n_blocks]);
    s->len = 0;
}

void rn_seq_truncate(rn_block_pool_t *p, rn_seq_t *s, int64_t len)
{
    if (len < 0 || len > s->len)
        return;
    const int64_t keep = (len + p->block_size - 1) / p->block_size;
    while (s->n_blocks > keep)
        rn_block_free(p, s->table[--s->n_blocks]);
    s->len = len;
}
