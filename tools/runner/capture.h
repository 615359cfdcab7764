/*
 * capture.h - calibration capture: run the model densely over calibration
 * text and write what hashattn-train needs (docs/calibration-format.md) with
 * the calibration writer of tools/train (library hashattn_calib).
 *
 * The forward pass (model.c) already computes, per layer, the post-RoPE q
 * and k rows it hands the plugin (un-permuted Q/K rows, half-split RoPE):
 * the exact vectors the plugin's hash MLPs see. A hook on the model
 * (rn_model_t.qk_hook) receives them between RoPE and attention; the capture
 * keeps every key of the sequence and the queries at sampled positions, and
 * when the sequence is done writes per layer the keys of each KV head and
 * the sampled queries of each query head with their true top-k keys among
 * the candidates [sink, t - recent] (tr_calib_true_topk, the writer's own
 * labelling, run on several threads).
 *
 * This is what any host does inside its own serving stack: at the point it
 * calls cache_write / decode / prefill it holds the same post-RoPE q and k.
 */
#ifndef HASHATTN_RUNNER_CAPTURE_H
#define HASHATTN_RUNNER_CAPTURE_H

#include <stddef.h>
#include <stdint.h>

#include "exec.h"
#include "model.h"
#include "plugin.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rn_capture_config {
    const char *out;                /* calibration file to write */
    const char *const *texts;       /* text files; sequence s reads texts[s % n_texts] */
    int n_texts;
    int n_seqs;                     /* sequences to capture */
    int seq_len;                    /* tokens per sequence; 0 = the model's context length */
    int queries;                    /* sampled query positions per sequence (every head, every layer) */
    int sink, recent;               /* the budget the labels assume (default 128 / 128) */
    int topk;                       /* labels per query (32) */
    int f16;                        /* 1: store vectors as fp16 (labels come from fp32) */
    uint64_t seed;                  /* query positions */
    int block_size, prefill_chunk;  /* the KV pages and the prompt tokens per forward step */
    int threads;                    /* labelling threads; 0 = rn_matmul_threads() */
    double max_seconds;             /* > 0: start no sequence that the mean time of the
                                       finished ones says would end past this */
    const char *meta;               /* extra META text (NULL = none) */
    /* after every forward step and every written sequence; NULL = silent */
    void (*progress)(void *user, int seq, int n_seqs, int64_t done, int64_t len, const char *what);
    void *user;
    /* Documents (NULL = none): a sequence is the text up to the next doc_sep,
     * cut at seq_len tokens (the rest of a longer document is skipped); the
     * next starts after the separator and one newline after it. Documents of
     * at most sink + recent + topk tokens are skipped; text after the last
     * separator is read as without one. */
    const char *doc_sep;
    int tail;                       /* the last `tail` positions of every sequence are always among
                                       its `queries` sampled positions (e.g. a question and its answer) */
} rn_capture_config_t;

#define RN_CAPTURE_CONFIG_INIT \
    { NULL, NULL, 0, 1, 0, 256, 128, 128, 32, 1, 1, 16, 512, 0, 0.0, NULL, NULL, NULL, NULL, 0 }

typedef struct rn_capture_stats {
    int seqs;                     /* sequences written */
    int64_t tokens;               /* tokens run through the model */
    int64_t queries;              /* sampled positions, summed over sequences */
    int64_t text_bytes;           /* text consumed */
    double forward_s, label_s, write_s, total_s;
    int64_t file_bytes;
} rn_capture_stats_t;

/* Capture cfg->n_seqs sequences and write cfg->out. The attention runs in
 * the plugin described by pc (its shape and hash fields are ignored: dense,
 * no signatures). A text that runs out before a sequence is full ends the
 * capture there (a warning through progress, what = "text ended"); no
 * sequence at all is an error. With max_seconds, sequences stop early in
 * the same way (what = "time"). 0, or -1 with a message in err. */
int rn_capture_run(rn_model_t *m, const rn_tokenizer_t *tok, const rn_plugin_config_t *pc,
                   const rn_capture_config_t *cfg, rn_capture_stats_t *st, char *err, size_t errlen);

/* The extent of one captured sequence: its length (cfg->seq_len, or the
 * model's context when 0), the KV blocks it fills and the tokens of a
 * forward step (what an executor for rn_capture_run_exec must hold). */
typedef struct rn_capture_extent {
    int64_t len;
    int32_t blocks;
    int chunk;
} rn_capture_extent_t;
rn_capture_extent_t rn_capture_extent_of(const rn_capture_config_t *cfg, const rn_hparams_t *hp);

/* The same on an executor the caller made (exec.h: the CPU one, or one GPU
 * with --device cuda): dense attention, blocks of cfg->block_size, room for
 * one sequence of the capture's length in steps of cfg->prefill_chunk tokens.
 * The vectors come through the executor's capture hook (float32 post-RoPE q
 * and k; on CUDA after the float32 projections, with the KV dtype's attention
 * in the layers below). */
int rn_capture_run_exec(rn_exec_t *ex, const rn_hparams_t *hp, const rn_tokenizer_t *tok,
                        const rn_capture_config_t *cfg, rn_capture_stats_t *st, char *err, size_t errlen);

/* The query positions of one sequence of n tokens: `count` distinct
 * positions in [lo, n - 1], lo = min(sink + recent + topk, n - 1), ascending:
 * the last min(tail, count) positions of that range, and the others drawn
 * uniformly from the rest of it by (seed, seq) (tail 0: all drawn). Returns
 * how many (fewer when the range is smaller), or -1 (out of memory). Exposed
 * for tests. */
int rn_capture_positions(int64_t n, int sink, int recent, int topk, int count, int tail, uint64_t seed,
                         int64_t seq, int32_t *pos);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_CAPTURE_H */
