/*
 * mlp.h - one hash MLP as the trainer keeps it, and its exact inference.
 *
 * A hash MLP (abi/hashattn/hashattn.h, hashattn_mlp_weights_t) is
 *   Linear(D->m) + SiLU -> Linear(m->m) + SiLU -> Linear(m->32),
 * y = W x + b, bit i of the signature = (output i > 0). The trainer keeps one
 * MLP as one float block [w1 | b1 | w2 | b2 | w3 | b3] in those shapes (w1
 * [m, D], w2 [m, m], w3 [32, m]): the per-head slice of the weight file.
 *
 * tr_mlp_signatures is the plugin's arithmetic, bit for bit: every output
 * starts at b[i], then acc = fmaf(W[i][j], in[j], acc) for j = 0, 1, ...; SiLU
 * is ha_silu (kernels/hash_math.h). The tests compare it with api->hash.
 */
#ifndef HASHATTN_TOOLS_TRAIN_MLP_H
#define HASHATTN_TOOLS_TRAIN_MLP_H

#include <stddef.h>
#include <stdint.h>

#define TR_BITS 32

typedef struct tr_mlp_parts {
    float *w1, *b1, *w2, *b2, *w3, *b3;
} tr_mlp_parts_t;

/* floats of each part [6] and of the whole block */
void tr_mlp_part_sizes(int32_t dim, int32_t width, size_t sizes[6]);
size_t tr_mlp_floats(int32_t dim, int32_t width);
tr_mlp_parts_t tr_mlp_parts(float *block, int32_t dim, int32_t width);

/* Fresh weights: He-uniform w1 and w2 (SiLU layers), Xavier-uniform w3, zero
 * biases; drawn from the stream `seed`, `a`, `b`. */
void tr_mlp_init(float *block, int32_t dim, int32_t width, uint64_t seed, uint64_t a, uint64_t b);

/* Input normalisation folded into the first layer. The trainer works on
 * x' = (x - mu) / sigma (per input dimension); the MLP on raw x with
 *   W1 = W1' diag(1/sigma),  b1 = b1' - W1' (mu / sigma)
 * computes the same function. fold: normalised -> raw; unfold: the inverse. */
void tr_mlp_fold_input(float *block, int32_t dim, int32_t width, const float *mu, const float *sigma);
void tr_mlp_unfold_input(float *block, int32_t dim, int32_t width, const float *mu, const float *sigma);

/* Signatures of n vectors x [n, ldx >= D] (raw, not normalised), exact
 * plugin arithmetic. */
int tr_mlp_signatures(const float *block, int32_t dim, int32_t width, const float *x, int64_t n,
                      size_t ldx, uint32_t *sig); /* 0, or -1: out of memory */

/* The SimHash baseline: bit i = (r_i . x > 0), r_i standard normal [32, D]. */
void tr_simhash_init(float *proj, int32_t dim, uint64_t seed, uint64_t a, uint64_t b);
uint32_t tr_simhash(const float *proj, int32_t dim, const float *x);

#endif
