/*
 * model.h - a Llama-architecture decoder (SmolLM2) loaded from GGUF, weights
 * dequantised to float32, forward pass on the CPU (matrix products in
 * matmul.h: OpenBLAS, or batch-invariant); attention through attn.h, many
 * sequences per step.
 *
 * Conventions, which the hash trainer and any transformers reference share:
 *   - attn_q / attn_k rows are un-permuted at load: llama.cpp's converter
 *     reorders each head's rows (HF row p*D/2 + i -> GGUF row 2*i + p) so that
 *     its interleaved RoPE works; undone here, half-split ("rotate_half") RoPE
 *     gives the HF q/k vectors, which is what the hash MLPs are trained on;
 *   - RoPE: for i < D/2, freq_i = theta^(-2i/D), (x_i, x_{i+D/2}) rotated by
 *     pos * freq_i;
 *   - RMSNorm y = x / sqrt(mean(x^2) + eps) * w;
 *   - tied embeddings: no output.weight -> the logits use token_embd.
 */
#ifndef HASHATTN_RUNNER_MODEL_H
#define HASHATTN_RUNNER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "attn.h"
#include "gguf.h"
#include "plan.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rn_hparams {
    int n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab;
    int64_t n_ctx_train;
    float rope_theta, rms_eps;
} rn_hparams_t;

typedef struct rn_layer {
    float *attn_norm;        /* [E] */
    float *wq, *wk, *wv, *wo;/* [Hq*D, E], [Hkv*D, E], [Hkv*D, E], [E, Hq*D] (row = output) */
    float *ffn_norm;         /* [E] */
    float *w_gate, *w_up;    /* [F, E] */
    float *w_down;           /* [E, F] */
} rn_layer_t;

/* Called by rn_model_forward for every layer between RoPE and attention with
 * the step's post-RoPE q [n_tokens, Hq, D] and k [n_tokens, Hkv, D] rows (in
 * the plan's order): the vectors the plugin gets. Nonzero stops the forward
 * pass with an error (the hook's message goes to err). Calibration capture
 * (capture.h) uses it. */
typedef int (*rn_qk_hook_fn)(void *user, int layer, const rn_plan_t *plan, const float *q, const float *k,
                             char *err, size_t errlen);

typedef struct rn_model {
    rn_hparams_t hp;
    float *tok_embd;    /* [V, E] */
    float *output_norm; /* [E] */
    float *output;      /* [V, E]; == tok_embd when tied */
    int tied;
    rn_layer_t *layers;
    size_t n_params;    /* floats held */
    /* scratch for up to cap tokens */
    int cap;
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2, *rope_cos, *rope_sin;
    rn_qk_hook_fn qk_hook; /* NULL = none */
    void *qk_user;
} rn_model_t;

/* Read the hyperparameters (llama.*) and dequantise every weight.
 * Returns 0, or -1 with a message. */
int rn_model_load(const gguf_file_t *f, rn_model_t **out, char *err, size_t errlen);
void rn_model_free(rn_model_t *m);

/* Un-permute llama.cpp's Q/K row order for `heads` heads of dim D (rows of
 * `cols` floats), in place. Exposed for tests. */
int rn_unpermute_rows(float *w, int heads, int head_dim, int cols);

/* cos and sin of the half-split RoPE angles of position pos: [D/2] each. */
void rn_rope_angles(const rn_hparams_t *hp, int64_t pos, float *cs, float *sn);

/* Run one step (plan.h: every sequence's new tokens, their positions and
 * slots) through the model; attn writes their K/V and attends. logits: NULL,
 * or [n_seqs, V] for the last token of each sequence, or [n_tokens, V] for
 * every token with all_logits. With the exact matrix products
 * (rn_matmul_set_exact) a row's result does not depend on the other rows of
 * the step; with OpenBLAS it may, in the last bits. Returns 0, or -1 with a
 * message in err. */
int rn_model_forward(rn_model_t *m, rn_attn_t *attn, const rn_plan_t *plan, float *logits, int all_logits,
                     char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_MODEL_H */
