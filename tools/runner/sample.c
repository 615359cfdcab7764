/*
 * sample.c - greedy / temperature / top-p sampling (see sample.h).
 */
#include "sample.h"

#include <math.h>
#include <stdlib.h>

int rn_sampler_init(rn_sampler_t *s, int n_vocab)
{
    s->n_vocab = n_vocab;
    s->probs = malloc((size_t)n_vocab * sizeof *s->probs);
    s->order = malloc((size_t)n_vocab * sizeof *s->order);
    return s->probs && s->order ? 0 : -1;
}

void rn_sampler_destroy(rn_sampler_t *s)
{
    free(s->probs);
    free(s->order);
    s->probs = NULL;
    s->order = NULL;
}

int32_t rn_argmax(const float *logits, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

double rn_rng_uniform(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return (double)((x * 0x2545f4914f6cdd1dull) >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t rn_rng_stream(uint64_t seed, uint64_t stream)
{
    /* splitmix64 of (seed, stream): distinct, never 0 */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (stream + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 0x2545f4914f6cdd1dull;
}

static const float *g_probs; /* for qsort's comparator */

static int by_prob_desc(const void *a, const void *b)
{
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (g_probs[x] != g_probs[y])
        return g_probs[x] > g_probs[y] ? -1 : 1;
    return x < y ? -1 : 1;
}

int32_t rn_sample_with(rn_sampler_t *s, const float *logits, float temperature, float top_p, double u)
{
    const int n = s->n_vocab;
    if (temperature <= 0)
        return rn_argmax(logits, n);
    if (!(top_p > 0 && top_p <= 1))
        top_p = 1.0f;
    const float mx = logits[rn_argmax(logits, n)];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        s->probs[i] = expf((logits[i] - mx) / temperature);
        sum += s->probs[i];
    }
    int m = 0;
    if (top_p < 1.0f) {
        /* only tokens above a tiny share can be in the nucleus: sort those */
        const float floor_p = (float)(sum * 1e-7);
        for (int i = 0; i < n; i++)
            if (s->probs[i] >= floor_p)
                s->order[m++] = i;
        g_probs = s->probs;
        qsort(s->order, (size_t)m, sizeof *s->order, by_prob_desc);
        double acc = 0;
        int keep = 0;
        while (keep < m) {
            acc += s->probs[s->order[keep++]];
            if (acc >= top_p * sum)
                break;
        }
        m = keep;
        sum = acc;
    } else {
        for (int i = 0; i < n; i++)
            s->order[m++] = i;
    }
    double r = u * sum, acc = 0;
    for (int k = 0; k < m; k++) {
        acc += s->probs[s->order[k]];
        if (r < acc)
            return s->order[k];
    }
    return s->order[m - 1];
}
