/*
 * plan.h - the host side of a paged KV cache shared by many sequences, and
 * the plan of one forward step (vLLM V1's scheduler output in small).
 *
 * rn_kv_t owns the block pool (blocks.h) and a table of sequence ids. A
 * sequence is admitted with a reservation (the blocks it may need at most),
 * grows block by block as its tokens arrive, and gives every block back when
 * it ends. rn_kv_plan() turns "these sequences get these new tokens" into
 * everything the model and the plugin read for that step: positions, slots
 * (cache_write's slot_mapping), packed block tables, sequence lengths and
 * query_start_loc. The first n_decode sequences of a step decode one token
 * each (the plugin's decode); the others run a prefill chunk.
 *
 * Nothing here touches the plugin or a device: the CPU and CUDA executors
 * both read the same plan (the CUDA one copies it to the device).
 */
#ifndef HASHATTN_RUNNER_PLAN_H
#define HASHATTN_RUNNER_PLAN_H

#include <stddef.h>
#include <stdint.h>

#include "blocks.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rn_kv {
    rn_block_pool_t pool;
    int max_seqs;
    int32_t max_blocks;  /* per sequence: columns of a full block table */
    rn_seq_t *seqs;      /* [max_seqs] */
    int32_t *reserve;    /* [max_seqs] blocks reserved; 0 = id unused */
} rn_kv_t;

/* A pool of num_blocks blocks of block_size tokens for up to max_seqs
 * sequences of at most max_blocks blocks each. 0, or -1 (bad sizes, memory). */
int rn_kv_init(rn_kv_t *kv, int32_t num_blocks, int32_t block_size, int max_seqs, int32_t max_blocks);
void rn_kv_destroy(rn_kv_t *kv);

/* Blocks neither handed out nor promised to a running sequence. */
int64_t rn_kv_unreserved(const rn_kv_t *kv);

/* Admit a sequence that will hold at most max_tokens tokens: returns its id,
 * -1 when every id is in use, -2 when the blocks cannot be reserved now, -3
 * when max_tokens exceeds a sequence's table or the whole pool (never fits). */
int rn_kv_acquire(rn_kv_t *kv, int64_t max_tokens);

/* End sequence `id`: its blocks go back to the pool. */
void rn_kv_release(rn_kv_t *kv, int id);

/* Shorten sequence `id` to len tokens (benchmarks roll decode steps back). */
void rn_kv_truncate(rn_kv_t *kv, int id, int64_t len);

static inline int64_t rn_kv_len(const rn_kv_t *kv, int id) { return kv->seqs[id].len; }

typedef struct rn_plan {
    int cap_seqs, cap_tokens;
    int32_t cap_width;
    int n_seqs, n_decode, n_tokens;
    int32_t width;        /* columns of tables: >= every sequence's blocks */
    int32_t *seq_ids;     /* [n_seqs] */
    int32_t *tokens;      /* [n_tokens] input ids, sequence after sequence */
    int32_t *pos;         /* [n_tokens] positions in their sequences */
    int64_t *slots;       /* [n_tokens] block * block_size + offset */
    int32_t *q_start;     /* [n_seqs + 1] first row of each sequence */
    int32_t *seq_lens;    /* [n_seqs] tokens cached once the step is written */
    int32_t *tables;      /* [n_seqs, width] block ids, rows contiguous */
    int32_t *qsl_prefill; /* [n_seqs - n_decode + 1] query_start_loc of the prefill part */
} rn_plan_t;

/* Room for steps of up to cap_seqs sequences, cap_tokens tokens and block
 * tables of cap_width columns. 0, or -1 when out of memory. */
int rn_plan_init(rn_plan_t *p, int cap_seqs, int cap_tokens, int32_t cap_width);
void rn_plan_free(rn_plan_t *p);

/* Plan one step: sequence ids[i] gets n_new[i] tokens (tokens holds them all,
 * in order); the first n_decode entries have n_new = 1 and decode. The tokens
 * are appended to the sequences (blocks allocated). width is the largest
 * block count rounded up to a multiple of width_round (<= 1 = exact) and
 * capped at the plan's capacity. On failure (-1, message in err) no sequence
 * has changed. */
int rn_kv_plan(rn_kv_t *kv, rn_plan_t *p, int n, const int32_t *ids, const int32_t *n_new, int n_decode,
               const int32_t *tokens, int width_round, char *err, size_t errlen);

/* One sequence, for tests and simple tools: id 0 of a kv of its own. */
typedef struct rn_single {
    rn_kv_t kv;
    rn_plan_t plan;
    int id;
} rn_single_t;

/* max_len tokens in blocks of block_size (all of them in the pool), steps of
 * up to max_chunk tokens; shuffle = 1 hands the blocks out in a seeded
 * random order (exercises the tables). */
int rn_single_init(rn_single_t *s, int64_t max_len, int block_size, int max_chunk, int shuffle, uint64_t seed);
void rn_single_free(rn_single_t *s);
/* Plan n tokens (decode = 1: one token, the decode path). */
int rn_single_step(rn_single_t *s, const int32_t *tokens, int n, int decode, char *err, size_t errlen);
/* Forget the sequence (blocks back to the pool). */
void rn_single_reset(rn_single_t *s);
static inline int64_t rn_single_len(const rn_single_t *s) { return s->kv.seqs[s->id].len; }

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_PLAN_H */
