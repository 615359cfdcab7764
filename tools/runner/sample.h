/*
 * sample.h - next-token sampling: greedy (temperature 0), or temperature +
 * top-p (nucleus) with a seeded generator, so runs are reproducible.
 */
#ifndef HASHATTN_RUNNER_SAMPLE_H
#define HASHATTN_RUNNER_SAMPLE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Scratch for rn_sample_with over a vocabulary of n_vocab tokens (the
 * settings and the draw come with each call). */
typedef struct rn_sampler {
    int n_vocab;
    float *probs;      /* [n_vocab] */
    int32_t *order;    /* [n_vocab] */
} rn_sampler_t;

int rn_sampler_init(rn_sampler_t *s, int n_vocab);
void rn_sampler_destroy(rn_sampler_t *s);

/* Index of the largest logit (the lowest index on ties). */
int32_t rn_argmax(const float *logits, int n);

/* Pick the next token from logits [n_vocab] with these settings and the
 * uniform draw u in [0, 1): s is only scratch here (the engine keeps a
 * generator per sequence). Greedy (temperature <= 0) ignores u. */
int32_t rn_sample_with(rn_sampler_t *s, const float *logits, float temperature, float top_p, double u);

/* Per-sequence generators: stream i of a seed gives the same draws whatever
 * else runs beside it; rn_rng_uniform draws the next u from one. */
uint64_t rn_rng_stream(uint64_t seed, uint64_t stream);
double rn_rng_uniform(uint64_t *state);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_SAMPLE_H */
