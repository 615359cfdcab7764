/*
 * exec.h - an executor runs planned steps (plan.h) of the model on one
 * device and samples each sequence's next token: exec_cpu.c (model.c +
 * attn.h on the CPU) and cuda_exec.cu (the whole forward pass on a GPU).
 * The serving loop (engine.h) only sees this interface.
 */
#ifndef HASHATTN_RUNNER_EXEC_H
#define HASHATTN_RUNNER_EXEC_H

#include <stddef.h>
#include <stdint.h>

#include "attn.h"
#include "model.h"
#include "plan.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How to pick one sequence's next token: greedy when temperature <= 0,
 * else softmax(logits / temperature) with nucleus top_p and the uniform
 * draw u in [0, 1) from the sequence's own generator. */
typedef struct rn_sample_req {
    float temperature, top_p;
    double u;
} rn_sample_req_t;

typedef struct rn_exec rn_exec_t;

/* The parts of a step that set_profile times (GPU time between marks). */
enum {
    RN_PROF_EMBED,       /* the plan's upload and the embedding */
    RN_PROF_QKV,         /* per layer: RMSNorm, the q/k/v projections, RoPE */
    RN_PROF_CACHE_WRITE, /* per layer: the plugin's cache_write (K/V rows, key signatures) */
    RN_PROF_ATTENTION,   /* per layer: the plugin's decode and prefill */
    RN_PROF_FFN,         /* per layer: output projection, RMSNorm, SwiGLU MLP */
    RN_PROF_HEAD,        /* final RMSNorm, logits, sampling, copies back */
    RN_PROF_PARTS
};

typedef struct rn_exec_ops {
    /* Run the step; next[i] is the token sampled from the last row of the
     * plan's sequence i (smp[i] says how). all_logits: NULL, or a host buffer
     * [n_tokens, V] that receives every row's logits. 0, or -1 (e->err). */
    int (*step)(rn_exec_t *e, const rn_plan_t *plan, const rn_sample_req_t *smp, int32_t *next, float *all_logits);
    /* 1: dense decode without signature writes; 0: hash decode (only when
     * created for hash mode). For benchmarks. */
    int (*set_dense)(rn_exec_t *e, int dense);
    void (*destroy)(rn_exec_t *e);
    /* Calibration capture: fn (NULL = none) receives, per layer of every
     * later step, the step's post-RoPE q [n_tokens, Hq, D] and k
     * [n_tokens, Hkv, D] rows as float32 host arrays, between RoPE and
     * attention (model.h, rn_qk_hook_fn); its error fails the step. Steps
     * with a hook run eagerly (no CUDA graphs). NULL op: not supported. */
    int (*set_qk_hook)(rn_exec_t *e, rn_qk_hook_fn fn, void *user);
    /* Profiling: while on, every step replayed from a CUDA graph adds the
     * GPU time of each part (RN_PROF_*, summed over layers) to prof_ms and
     * counts itself in prof_steps; the marks are event nodes in their own
     * graphs. NULL op: not supported (the CPU). */
    int (*set_profile)(rn_exec_t *e, int on);
} rn_exec_ops_t;

struct rn_exec {
    const rn_exec_ops_t *ops;
    int n_vocab;
    int32_t block_size, num_blocks; /* the KV pool */
    int max_seqs, max_tokens;       /* per step */
    int32_t max_blocks;             /* block-table columns */
    int width_round;                /* plans' table widths rounded to this (CUDA graphs) */
    const rn_attn_stats_t *stats;   /* attended tokens per decode */
    uint64_t graph_replays, graph_captures, eager_steps; /* CUDA graphs at work */
    double prof_ms[RN_PROF_PARTS];  /* set_profile's sums */
    uint64_t prof_steps;
    char err[768];
    char desc[512];
};

static inline int rn_exec_step(rn_exec_t *e, const rn_plan_t *p, const rn_sample_req_t *smp, int32_t *next,
                               float *all_logits)
{
    return e->ops->step(e, p, smp, next, all_logits);
}

static inline void rn_exec_destroy(rn_exec_t *e)
{
    if (e)
        e->ops->destroy(e);
}

/* The CPU executor over a loaded model and an attention backend (neither is
 * owned: free them after the executor). Capacities come from attn. */
int rn_exec_cpu_create(rn_model_t *m, rn_attn_t *attn, rn_exec_t **out, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_EXEC_H */
