/*
 * mlp.c - hash MLP blocks: layout, init, input folding, exact signatures.
 */
#include "mlp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/hash_math.h"
#include "rng.h"

/* Lanes: vectors hashed at once, innermost, so that the compiler vectorises
 * the lane loop while each lane keeps the scalar fmaf order. */
#define TL 16

void tr_mlp_part_sizes(int32_t dim, int32_t width, size_t s[6])
{
    size_t d = (size_t)dim, m = (size_t)width;
    s[0] = m * d;
    s[1] = m;
    s[2] = m * m;
    s[3] = m;
    s[4] = (size_t)TR_BITS * m;
    s[5] = TR_BITS;
}

size_t tr_mlp_floats(int32_t dim, int32_t width)
{
    size_t s[6], t = 0;
    tr_mlp_part_sizes(dim, width, s);
    for (int i = 0; i < 6; i++)
        t += s[i];
    return t;
}

tr_mlp_parts_t tr_mlp_parts(float *block, int32_t dim, int32_t width)
{
    size_t s[6];
    tr_mlp_part_sizes(dim, width, s);
    tr_mlp_parts_t p;
    p.w1 = block;
    p.b1 = p.w1 + s[0];
    p.w2 = p.b1 + s[1];
    p.b2 = p.w2 + s[2];
    p.w3 = p.b2 + s[3];
    p.b3 = p.w3 + s[4];
    return p;
}

static void fill_uniform(float *w, size_t n, double bound, tr_rng_t *r)
{
    for (size_t i = 0; i < n; i++)
        w[i] = (float)((2.0 * tr_rng_uniform(r) - 1.0) * bound);
}

void tr_mlp_init(float *block, int32_t dim, int32_t width, uint64_t seed, uint64_t a, uint64_t b)
{
    tr_rng_t r;
    tr_rng_seed(&r, seed, a, b, 0x1417);
    size_t s[6];
    tr_mlp_part_sizes(dim, width, s);
    tr_mlp_parts_t p = tr_mlp_parts(block, dim, width);
    fill_uniform(p.w1, s[0], sqrt(6.0 / dim), &r);
    fill_uniform(p.w2, s[2], sqrt(6.0 / width), &r);
    fill_uniform(p.w3, s[4], sqrt(6.0 / (width + TR_BITS)), &r);
    memset(p.b1, 0, s[1] * sizeof(float));
    memset(p.b2, 0, s[3] * sizeof(float));
    memset(p.b3, 0, s[5] * sizeof(float));
}

void tr_mlp_fold_input(float *block, int32_t dim, int32_t width, const float *mu, const float *sigma)
{
    tr_mlp_parts_t p = tr_mlp_parts(block, dim, width);
    for (int32_t i = 0; i < width; i++) {
        float *row = p.w1 + (size_t)i * (size_t)dim;
        double shift = 0.0;
        for (int32_t j = 0; j < dim; j++) {
            double w = (double)row[j] / (double)sigma[j];
            shift += w * (double)mu[j];
            row[j] = (float)w;
        }
        p.b1[i] = (float)((double)p.b1[i] - shift);
    }
}

void tr_mlp_unfold_input(float *block, int32_t dim, int32_t width, const float *mu, const float *sigma)
{
    tr_mlp_parts_t p = tr_mlp_parts(block, dim, width);
    for (int32_t i = 0; i < width; i++) {
        float *row = p.w1 + (size_t)i * (size_t)dim;
        double shift = 0.0;
        for (int32_t j = 0; j < dim; j++) {
            shift += (double)row[j] * (double)mu[j];
            row[j] = (float)((double)row[j] * (double)sigma[j]);
        }
        p.b1[i] = (float)((double)p.b1[i] + shift);
    }
}

/* out_t[i][t] = act(b[i] + sum_j w[i][j] in_t[j][t]), four outputs at a time
 * for independent fma chains. */
HA_FMA_CLONES
static void layer_lanes(const float *w, const float *b, const float *in_t, int32_t in_dim,
                        int32_t out_dim, int silu, float *out_t)
{
    int32_t i = 0;
    for (; i + 3 < out_dim; i += 4) {
        const float *r0 = w + (size_t)i * (size_t)in_dim;
        const float *r1 = r0 + in_dim, *r2 = r1 + in_dim, *r3 = r2 + in_dim;
        float a0[TL], a1[TL], a2[TL], a3[TL];
        for (int t = 0; t < TL; t++) {
            a0[t] = b[i];
            a1[t] = b[i + 1];
            a2[t] = b[i + 2];
            a3[t] = b[i + 3];
        }
        for (int32_t j = 0; j < in_dim; j++) {
            const float *x = in_t + (size_t)j * TL;
            for (int t = 0; t < TL; t++) {
                a0[t] = fmaf(r0[j], x[t], a0[t]);
                a1[t] = fmaf(r1[j], x[t], a1[t]);
                a2[t] = fmaf(r2[j], x[t], a2[t]);
                a3[t] = fmaf(r3[j], x[t], a3[t]);
            }
        }
        float *o = out_t + (size_t)i * TL;
        for (int t = 0; t < TL; t++) {
            o[t] = silu ? ha_silu(a0[t]) : a0[t];
            o[TL + t] = silu ? ha_silu(a1[t]) : a1[t];
            o[2 * TL + t] = silu ? ha_silu(a2[t]) : a2[t];
            o[3 * TL + t] = silu ? ha_silu(a3[t]) : a3[t];
        }
    }
    for (; i < out_dim; i++) {
        const float *r0 = w + (size_t)i * (size_t)in_dim;
        float a0[TL];
        for (int t = 0; t < TL; t++)
            a0[t] = b[i];
        for (int32_t j = 0; j < in_dim; j++)
            for (int t = 0; t < TL; t++)
                a0[t] = fmaf(r0[j], in_t[(size_t)j * TL + t], a0[t]);
        for (int t = 0; t < TL; t++)
            out_t[(size_t)i * TL + t] = silu ? ha_silu(a0[t]) : a0[t];
    }
}

int tr_mlp_signatures(const float *block, int32_t dim, int32_t width, const float *x, int64_t n,
                      size_t ldx, uint32_t *sig)
{
    tr_mlp_parts_t p = tr_mlp_parts((float *)block, dim, width);
    size_t d = (size_t)dim, m = (size_t)width;
    float *buf = malloc((d + 2 * m + TR_BITS) * TL * sizeof(float));
    if (!buf)
        return -1;
    float *xt = buf, *h1 = xt + d * TL, *h2 = h1 + m * TL, *o = h2 + m * TL;
    for (int64_t t0 = 0; t0 < n; t0 += TL) {
        int lanes = n - t0 < TL ? (int)(n - t0) : TL;
        for (int t = 0; t < TL; t++) {
            const float *row = x + (size_t)(t0 + (t < lanes ? t : 0)) * ldx; /* spare lanes repeat */
            for (size_t j = 0; j < d; j++)
                xt[j * TL + (size_t)t] = row[j];
        }
        layer_lanes(p.w1, p.b1, xt, dim, width, 1, h1);
        layer_lanes(p.w2, p.b2, h1, width, width, 1, h2);
        layer_lanes(p.w3, p.b3, h2, width, TR_BITS, 0, o);
        for (int t = 0; t < lanes; t++) {
            uint32_t s = 0;
            for (int i = 0; i < TR_BITS; i++)
                if (o[i * TL + t] > 0.0f)
                    s |= 1u << i;
            sig[t0 + t] = s;
        }
    }
    free(buf);
    return 0;
}

void tr_simhash_init(float *proj, int32_t dim, uint64_t seed, uint64_t a, uint64_t b)
{
    tr_rng_t r;
    tr_rng_seed(&r, seed, a, b, 0x51);
    for (size_t i = 0; i < (size_t)TR_BITS * (size_t)dim; i++)
        proj[i] = (float)tr_rng_normal(&r);
}

uint32_t tr_simhash(const float *proj, int32_t dim, const float *x)
{
    uint32_t s = 0;
    for (int i = 0; i < TR_BITS; i++) {
        const float *r = proj + (size_t)i * (size_t)dim;
        double acc = 0.0;
        for (int32_t j = 0; j < dim; j++)
            acc += (double)r[j] * (double)x[j];
        if (acc > 0.0)
            s |= 1u << i;
    }
    return s;
}
