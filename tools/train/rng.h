/*
 * rng.h - the trainer's random numbers: splitmix64 to seed, xoshiro256** to
 * draw. Every (layer, head) task seeds its own stream from (seed, layer,
 * head), so results do not depend on thread scheduling.
 */
#ifndef HASHATTN_TOOLS_TRAIN_RNG_H
#define HASHATTN_TOOLS_TRAIN_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct tr_rng {
    uint64_t s[4];
} tr_rng_t;

static inline uint64_t tr_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A stream for (seed, a, b, c): independent streams for independent tasks. */
static inline void tr_rng_seed(tr_rng_t *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = seed ^ (a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full) ^
                 (c * 0x165667b19e3779f9ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = tr_splitmix64(&x);
}

static inline uint64_t tr_rng_next(tr_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t x = s[1] * 5u;
    uint64_t out = ((x << 7) | (x >> 57)) * 9u;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return out;
}

/* uniform in [0, 1) with 53 bits */
static inline double tr_rng_uniform(tr_rng_t *r) { return (double)(tr_rng_next(r) >> 11) * 0x1.0p-53; }

/* uniform integer in [0, n), n >= 1 (Lemire's multiply; bias below 2^-32 for our n) */
static inline uint32_t tr_rng_below(tr_rng_t *r, uint32_t n)
{
    return (uint32_t)(((tr_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

/* standard normal (Box-Muller; one of the pair is dropped: simple, fast enough) */
static inline double tr_rng_normal(tr_rng_t *r)
{
    double u1 = tr_rng_uniform(r), u2 = tr_rng_uniform(r);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif
