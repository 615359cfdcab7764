/*
 * tiny_model.h - a small Llama GGUF written by the tests themselves (few
 * layers, small dims, every supported tensor type, a byte-level BPE
 * vocabulary) and a direct reference forward pass in double precision that
 * follows llama.cpp's conventions: Q/K rows as stored (permuted) with
 * interleaved RoPE. The runner un-permutes and uses half-split RoPE; both
 * must give the same logits.
 */
#ifndef HASHATTN_TESTS_RUNNER_TINY_MODEL_H
#define HASHATTN_TESTS_RUNNER_TINY_MODEL_H

#include <stddef.h>
#include <stdint.h>

enum { TINY_MAX_LAYERS = 4 };

typedef struct tiny_cfg {
    int n_layer, n_embd, n_ff, n_head, n_head_kv, head_dim, n_vocab;
    float rope_theta, rms_eps;
    int tied;          /* 0: write output.weight */
    uint32_t out_type; /* its type when untied */
} tiny_cfg_t;

typedef struct tiny_layer {
    float *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *w_gate, *w_up, *w_down; /* as stored */
    uint32_t type[9]; /* tensor types, in the order above */
} tiny_layer_t;

typedef struct tiny_model {
    tiny_cfg_t cfg;
    float *embd, *out_norm, *out;
    tiny_layer_t layers[TINY_MAX_LAYERS];
    uint8_t *gguf;
    size_t size;
} tiny_model_t;

/* The default shape: 2 layers, embd 256, ff 512, 4/2 heads of 64, vocab 320. */
tiny_cfg_t tiny_default_cfg(void);

/* Build the weights (seeded) and the GGUF image. Exits on out of memory. */
/* The tokenizer.* metadata of the tiny model into w: a byte-level vocabulary
 * of three control tokens (<|endoftext|>, <|im_start|>, <|im_end|>), the 256
 * byte characters, a few merges and padding tokens up to n_vocab (>= 259),
 * the smollm pre-tokenizer and a ChatML template. */
struct gw;
void tiny_add_tokenizer(struct gw *w, int n_vocab);

void tiny_build(tiny_model_t *m, const tiny_cfg_t *cfg, uint64_t seed);
void tiny_free(tiny_model_t *m);

/* SmolLM2-135M-Instruct's shape: 30 layers, embd 576, ff 1536, 9/3 heads of
 * 64, vocab 49152, RoPE base 100000, tied output. */
tiny_cfg_t tiny_smollm2_cfg(void);

/* A GGUF image of cfg's shape with random weights, in the tensor types of
 * SmolLM2-135M-Instruct's Q4_1 file (Q4_1 matrices, F32 norms, a Q8_0
 * embedding) and the tiny vocabulary padded to n_vocab: what the runner's
 * speed depends on (shapes, types, the load path) without the model's
 * values, for timing runs where the real file is not at hand. Its text is
 * noise. Any number of layers (no exact values kept); malloc'd, caller
 * frees. Exits on out of memory. */
uint8_t *tiny_synth_gguf(const tiny_cfg_t *cfg, uint64_t seed, size_t *size);

/* Reference logits [T, V] for tokens at positions 0..T-1. */
void tiny_reference(const tiny_model_t *m, const int32_t *tokens, int T, double *logits);

#endif
