/*
 * engine.h - the serving loop: many prompts decoded together with continuous
 * batching over one executor (exec.h).
 *
 * Requests wait in order; one joins whenever a batch slot is free and the KV
 * pool can promise it the blocks it may need (prompt + max_new tokens), so a
 * running sequence never runs out of blocks (no preemption). Every step
 * decodes one token for each running sequence that has finished its prompt
 * and feeds the others' prompts in chunks (at most prefill_chunk prompt
 * tokens per step, oldest sequence first): one forward pass, one decode call
 * and one prefill call per layer. A sequence's blocks grow as it extends and
 * go back to the pool when it ends. Sampling draws from a generator per
 * request (seed, request index), so a request's tokens do not depend on what
 * runs beside it.
 */
#ifndef HASHATTN_RUNNER_ENGINE_H
#define HASHATTN_RUNNER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "exec.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { RN_STOP_NONE = 0, RN_STOP_EOS = 1, RN_STOP_MAX = 2, RN_STOP_CAPACITY = 3 };
const char *rn_stop_name(int stop);

typedef struct rn_request {
    const int32_t *prompt;
    int n_prompt;
    int max_new;
} rn_request_t;

typedef struct rn_result {
    int32_t *tokens;   /* generated ids (a stop token included); malloc'd */
    int n_tokens;
    int stop;          /* RN_STOP_* */
    double t_first, t_done; /* seconds from the start: first token, end */
} rn_result_t;

typedef struct rn_engine_stats {
    int n_requests, done, running, waiting, max_running;
    uint64_t steps, prefill_tokens, generated;
    uint64_t decode_steps, decode_tokens; /* steps without prompt tokens, and their tokens */
    double prefill_s, decode_s, total_s;  /* wall time of steps with / without prompt tokens */
    int64_t blocks_in_use, blocks_peak, num_blocks;
} rn_engine_stats_t;

typedef struct rn_engine_config {
    int max_batch;        /* concurrent sequences, <= the executor's max_seqs */
    int prefill_chunk;    /* prompt tokens per step, all joining sequences together */
    int64_t max_len;      /* tokens one sequence may hold (<= its table); 0 = the table's */
    float temperature, top_p;
    uint64_t seed;
    int ignore_eos;
    int shuffle_blocks;   /* hand blocks out in a seeded random order */
    void *user;
    int (*is_stop)(void *user, int32_t token);               /* NULL: nothing stops early */
    void (*on_token)(void *user, int req, int32_t token, int is_stop);
    void (*on_done)(void *user, int req, const rn_result_t *r);
    void (*on_progress)(void *user, const rn_engine_stats_t *st); /* after every step */
    /* every prompt position's logits [rows, V], positions pos0.. of request
     * req (for --dump-logits); NULL = not wanted */
    void (*on_logits)(void *user, int req, int pos0, int rows, const float *logits);
} rn_engine_config_t;

#define RN_ENGINE_CONFIG_INIT { 8, 512, 0, 0.0f, 1.0f, 1234, 0, 0, NULL, NULL, NULL, NULL, NULL, NULL }

/* Run every request to its end. results[n] receive the outputs (free them
 * with rn_results_free); st the totals (may be NULL). 0, or -1 with err. */
int rn_engine_run(rn_exec_t *ex, const rn_engine_config_t *cfg, const rn_request_t *reqs, int n,
                  rn_result_t *results, rn_engine_stats_t *st, char *err, size_t errlen);
void rn_results_free(rn_result_t *r, int n);

/* Decode speed at a fixed batch shape: `batch` sequences of `ctx` random
 * prompt tokens are prefilled once; then, for dense and for hash decode in
 * turn, `warmup` untimed and `steps` timed greedy decode steps of the whole
 * batch, rolled back afterwards so that both modes decode the same context. */
typedef struct rn_bench_mode {
    int ran;
    double tok_s, ms_per_step;
    double attended, context;  /* mean tokens attended / cached per (layer, head) */
    uint64_t graph_replays, eager_steps;
    /* profile_steps > 0 (and an executor that profiles): after the timed
     * steps, ms per replayed step in each part of the step (exec.h RN_PROF_*) */
    double prof_ms[RN_PROF_PARTS];
    uint64_t prof_steps;
} rn_bench_mode_t;

typedef struct rn_bench_result {
    double prefill_s;
    rn_bench_mode_t mode[2]; /* [0] dense, [1] hash */
} rn_bench_result_t;

int rn_engine_bench(rn_exec_t *ex, int batch, int ctx, int warmup, int steps, int profile_steps, int prefill_chunk,
                    int modes, uint64_t seed, rn_bench_result_t *out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_ENGINE_H */
