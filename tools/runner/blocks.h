/*
 * blocks.h - a paged KV block allocator for a standalone host (vLLM-style):
 * a pool of fixed-size blocks shared by all layers, and per-sequence block
 * tables. A sequence's token at position p lives in block table[p / bs] at
 * offset p % bs; its slot (what cache_write's slot_mapping takes) is
 * block * bs + offset. Self-contained (no plugin types) so that it can move
 * to kvcache/ later.
 */
#ifndef HASHATTN_RUNNER_BLOCKS_H
#define HASHATTN_RUNNER_BLOCKS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rn_block_pool {
    int32_t num_blocks;
    int32_t block_size;
    int32_t *free_ids; /* stack of free block ids */
    int32_t n_free;
} rn_block_pool_t;

typedef struct rn_seq {
    int32_t *table;      /* [max_blocks] block ids; the first n_blocks are valid */
    int32_t max_blocks;
    int32_t n_blocks;
    int64_t len;         /* tokens stored */
} rn_seq_t;

/* A pool of num_blocks blocks of block_size tokens. Blocks are handed out
 * lowest id first unless shuffled. Returns 0, -1 on bad sizes or no memory. */
int rn_block_pool_init(rn_block_pool_t *p, int32_t num_blocks, int32_t block_size);
void rn_block_pool_destroy(rn_block_pool_t *p);

/* Permute the free list (seeded), so that sequences get scattered blocks:
 * a test of the block-table path. */
void rn_block_pool_shuffle(rn_block_pool_t *p, uint64_t seed);

/* One free block id, or -1 when the pool is exhausted. */
int32_t rn_block_alloc(rn_block_pool_t *p);
void rn_block_free(rn_block_pool_t *p, int32_t id);

int rn_seq_init(rn_seq_t *s, int32_t max_blocks);
void rn_seq_destroy(rn_seq_t *s);

/* Grow s to hold `n` more tokens (allocating blocks as needed) and advance
 * its length. Returns 0, or -1 (nothing changed) when the pool or the
 * table would overflow. */
int rn_seq_append(rn_block_pool_t *p, rn_seq_t *s, int64_t n);

/* Slot of token position pos (< s->len). */
int64_t rn_seq_slot(const rn_block_pool_t *p, const rn_seq_t *s, int64_t pos);

/* Give every block back and set the length to 0. */
void rn_seq_clear(rn_block_pool_t *p, rn_seq_t *s);

/* Shorten s to `len` tokens (<= s->len) and give back the blocks past the
 * last one it still uses. */
void rn_seq_truncate(rn_block_pool_t *p, rn_seq_t *s, int64_t len);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_BLOCKS_H */
