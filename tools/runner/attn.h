/*
 * attn.h - the runner's attention interface: one sequence, all layers.
 *
 * The model calls, for every forward step of n new tokens:
 *   rn_attn_append(a, n)                       once, before layer 0;
 *   rn_attn_attend(a, layer, q, k, v, n, ...)  once per layer: stores the new
 *       tokens' K/V and attends the n queries causally over every token so far.
 * Two implementations:
 *   - plugin: libhashattn.so through dlopen + hashattn_get_api, with the
 *     runner's own paged caches (blocks.h): cache_write, then prefill for a
 *     prompt chunk or decode for one generated token (hash selection there,
 *     or HASHATTN_DECODE_DENSE);
 *   - naive: contiguous caches and plain dense causal attention in the
 *     runner, for debugging and as a reference in tests.
 * Tensors are float32 row-major: q [n, Hq, D], k and v [n, Hkv, D],
 * out [n, Hq, D]. The new tokens sit at positions [len - n, len).
 */
#ifndef HASHATTN_RUNNER_ATTN_H
#define HASHATTN_RUNNER_ATTN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rn_attn rn_attn_t;

typedef struct rn_attn_stats {
    uint64_t decode_steps;      /* decode calls of layer 0 */
    double attended_sum;        /* per decode step: mean tokens attended per
                                   (layer, selection head), summed over steps */
    double context_sum;         /* per decode step: tokens in the cache, summed */
    int64_t attended_min, attended_max; /* over single (layer, head) selections */
    int counts_known;           /* 0 when the plugin did not report counts */
} rn_attn_stats_t;

typedef struct rn_attn_ops {
    const char *name;
    int (*append)(rn_attn_t *a, int n);
    int (*attend)(rn_attn_t *a, int layer, const float *q, const float *k, const float *v, int n,
                  int decode, float *out);
    void (*reset)(rn_attn_t *a);
    void (*destroy)(rn_attn_t *a);
} rn_attn_ops_t;

/* Common head of every implementation. */
struct rn_attn {
    const rn_attn_ops_t *ops;
    int num_layers, num_q_heads, num_kv_heads, head_dim;
    int64_t len;     /* tokens in the sequence (after the last append) */
    int64_t max_len; /* capacity */
    rn_attn_stats_t stats;
    char err[512];
    char desc[256];  /* one line: backend, version, weights */
};

/* n new tokens; -1 (message in a->err) past the capacity. */
static inline int rn_attn_append(rn_attn_t *a, int n) { return a->ops->append(a, n); }

/* decode = 1: n must be 1; the plugin's decode path (sparse unless dense). */
static inline int rn_attn_attend(rn_attn_t *a, int layer, const float *q, const float *k, const float *v,
                                 int n, int decode, float *out)
{
    return a->ops->attend(a, layer, q, k, v, n, decode, out);
}

/* Empty the sequence (caches are reused). */
static inline void rn_attn_reset(rn_attn_t *a) { a->ops->reset(a); }

static inline void rn_attn_destroy(rn_attn_t *a)
{
    if (a)
        a->ops->destroy(a);
}

/* ---- naive ---- */
int rn_attn_naive_create(int num_layers, int num_q_heads, int num_kv_heads, int head_dim, int64_t max_len,
                         rn_attn_t **out, char *err, size_t errlen);

/* ---- plugin ---- */
typedef struct rn_plugin_config {
    const char *path;         /* libhashattn.so to dlopen */
    int num_layers, num_q_heads, num_kv_heads, head_dim;
    int block_size;           /* tokens per KV block (default 16) */
    int64_t max_len;          /* cache capacity in tokens */
    int max_chunk;            /* most tokens per append (workspace bound) */
    int dense;                /* 1: HASHATTN_DECODE_DENSE on every decode */
    int selection;            /* hashattn_selection_t */
    int sink, recent;         /* budget */
    int heavy_count;          /* >= 0 count, else heavy_fraction */
    float heavy_fraction;
    const char *hash_weights; /* safetensors file, NULL = random weights */
    uint64_t seed;            /* random weights and block shuffling */
    int mlp_width;            /* random weights' hidden width (default 128) */
    int shuffle_blocks;       /* 1: scatter the blocks (tests the tables) */
} rn_plugin_config_t;

#define RN_PLUGIN_CONFIG_INIT                                                              \
    { NULL, 0, 0, 0, 0, 16, 0, 512, 0, 1 /* GROUP */, 128, 128, -1, 0.0625f, NULL, 1234, \
      128, 0 }

int rn_attn_plugin_create(const rn_plugin_config_t *cfg, rn_attn_t **out, char *err, size_t errlen);

/* 1 when the plugin backend bound random hash weights. */
int rn_attn_plugin_random_weights(const rn_attn_t *a);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_ATTN_H */
