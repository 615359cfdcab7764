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

typedef struct rn_sampler {
    float temperature; /* <= 0: greedy */
    float top_p;       /* (0, 1]; 1 = off */
    uint64_t state;    /* generator state (xorshift64*) */
    int n_vocab;
    float *probs;      /* [n_vocab] scratch */
    int32_t *order;    /* [n_vocab] scratch */
} rn_sampler_t;

int rn_sampler_init(rn_sampler_t *s, int n_vocab, float temperature, float top_p, uint64_t seed);
void rn_sampler_destroy(rn_sampler_t *s);

/* Index of the largest logit (the lowest index on ties). */
int32_t rn_argmax(const float *logits, int n);

/* Pick the next token from logits [n_vocab]. */
int32_t rn_sample(rn_sampler_t *s, const float *logits);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_SAMPLE_H */
