/*
 * attn.h - the runner's attention interface on the CPU: many sequences per
 * step, paged caches, described by a step plan (plan.h).
 *
 * The model calls attend() once per layer with the step's post-RoPE q, k and
 * v rows (sequence after sequence, as in the plan): the implementation writes
 * the new tokens' K/V at the plan's slots and attends every query row
 * causally over its sequence's cached tokens: decode for the plan's first
 * n_decode sequences (one row each), prefill for the others. Tensors are
 * float32 row-major: q and out [n_tokens, Hq, D], k and v [n_tokens, Hkv, D].
 * Two implementations:
 *   - plugin: libhashattn.so (plugin.h) with the runner's own paged caches:
 *     cache_write, then one decode call for every decoding sequence and one
 *     prefill call (query_start_loc) for every prefilling one;
 *   - naive: dense causal attention computed in the runner over the same
 *     paged layout, for debugging and as a reference in tests.
 */
#ifndef HASHATTN_RUNNER_ATTN_H
#define HASHATTN_RUNNER_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "plan.h"
#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rn_attn rn_attn_t;

/* Per decoding sequence and step ("sequence steps"). */
typedef struct rn_attn_stats {
    uint64_t decode_steps;      /* sequence steps that decoded */
    double attended_sum;        /* per sequence step: mean tokens attended per
                                   (layer, selection head), summed */
    double context_sum;         /* per sequence step: tokens in the cache, summed */
    int64_t attended_min, attended_max; /* over single (layer, head) selections */
    int counts_known;           /* 0 when the plugin did not report counts */
} rn_attn_stats_t;

void rn_attn_stats_reset(rn_attn_stats_t *s);
/* Add one (sequence, layer)'s counts [hsel] at context len (layer 0 opens a
 * sequence step). Negative counts mean "not reported" (dense: len). */
void rn_attn_stats_add(rn_attn_stats_t *s, int layer, int num_layers, const int32_t *counts, int hsel, int64_t len);

typedef struct rn_attn_ops {
    const char *name;
    int (*attend)(rn_attn_t *a, int layer, const rn_plan_t *plan, const float *q, const float *k, const float *v,
                  float *out);
    /* 1: dense decode and no signature writes from now on; 0: hash (only
     * when created with hash). NULL when the mode cannot change. */
    int (*set_dense)(rn_attn_t *a, int dense);
    void (*destroy)(rn_attn_t *a);
} rn_attn_ops_t;

/* Common head of every implementation. */
struct rn_attn {
    const rn_attn_ops_t *ops;
    int num_layers, num_q_heads, num_kv_heads, head_dim;
    int32_t block_size, num_blocks; /* the caches' pages */
    int max_seqs, max_tokens;       /* per step */
    int32_t max_blocks;             /* columns of a block table */
    rn_attn_stats_t stats;
    char err[512];
    char desc[320];                 /* one line: backend, version, weights */
};

static inline int rn_attn_attend(rn_attn_t *a, int layer, const rn_plan_t *plan, const float *q, const float *k,
                                 const float *v, float *out)
{
    return a->ops->attend(a, layer, plan, q, k, v, out);
}

static inline void rn_attn_destroy(rn_attn_t *a)
{
    if (a)
        a->ops->destroy(a);
}

/* Capacities of the caches and of one step. */
typedef struct rn_attn_shape {
    int num_layers, num_q_heads, num_kv_heads, head_dim;
    int32_t block_size, num_blocks;
    int max_seqs, max_tokens;
    int32_t max_blocks;
} rn_attn_shape_t;

/* ---- naive ---- */
int rn_attn_naive_create(const rn_attn_shape_t *shape, rn_attn_t **out, char *err, size_t errlen);

/* ---- plugin (float32 on the CPU) ---- */
/* cfg's shape fields are taken from `shape`; cfg->hash = 0 gives dense
 * attention with no signature cache and no hash weights. */
int rn_attn_plugin_create(const rn_plugin_config_t *cfg, const rn_attn_shape_t *shape, rn_attn_t **out, char *err,
                          size_t errlen);

/* How plugin backends created from now on split a layer's prefill rows
 * over threads (attn_plugin.c): into `parts` calls (0 = rn_matmul_threads(),
 * at most 32), and only when the rows read at least min_work keys in all
 * (the default, 2e5, keeps small steps on one thread). Tests force splits. */
void rn_attn_plugin_split_defaults(int parts, double min_work);

/* 1 when the plugin backend bound random hash weights. */
int rn_attn_plugin_random_weights(const rn_attn_t *a);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_ATTN_H */
