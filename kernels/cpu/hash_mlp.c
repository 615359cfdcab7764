/*
 * hash_mlp.c - the hash MLP signature and ha_cpu_hash.
 *
 * Order of operations (kernels/cuda reproduces it bit for bit):
 *   every output i of a layer starts as acc = b[i], then
 *   acc = fmaf(W[i][j], in[j], acc) for j = 0, 1, ..., in_dim - 1;
 *   SiLU is ha_silu (kernels/hash_math.h: the same bits on CPU and GPU);
 *   bit i of the signature is (o[i] > 0.0f) (nan and -0 give 0).
 * fmaf is explicit so that no compiler contraction setting changes the result.
 *
 * cache_write and hash evaluate HA_CPU_MLP_LANES tokens at once with the lanes
 * innermost: each lane runs exactly the scalar order above, and the compiler
 * turns the lane loop into vector fma where the CPU has one (target_clones
 * picks the FMA build at load time; without FMA, fmaf is a library call and
 * about 30x slower).
 */
#include <math.h>

#include "kernels/cpu/common.h"
#include "kernels/hash_math.h"

#define L HA_CPU_MLP_LANES

/* out[i] = act(b[i] + sum_j W[i][j] in[j]), W row-major [out_dim, in_dim]. */
HA_FMA_CLONES
static void linear(const float *w, const float *b, const float *in, int32_t in_dim,
                   int32_t out_dim, int apply_silu, float *out)
{
    for (int32_t i = 0; i < out_dim; i++) {
        const float *row = w + (size_t)i * (size_t)in_dim;
        float acc = b[i];
        for (int32_t j = 0; j < in_dim; j++)
            acc = fmaf(row[j], in[j], acc);
        out[i] = apply_silu ? ha_silu(acc) : acc;
    }
}

/* Static, with ha_cpu_mlp_signature below a plain call to it: GCC gives the
 * ifunc symbol of a target_clones function default visibility whatever
 * -fvisibility says, so an extern one would be exported but for the version
 * script. */
HA_FMA_CLONES
static uint32_t mlp_signature(const ha_mlp_t *mlp, int32_t head, const float *x, float *h1, float *h2)
{
    size_t m = (size_t)mlp->width;
    size_t d = (size_t)mlp->dim;
    size_t h = (size_t)head;

    linear(mlp->w1 + h * m * d, mlp->b1 + h * m, x, mlp->dim, mlp->width, 1, h1);
    linear(mlp->w2 + h * m * m, mlp->b2 + h * m, h1, mlp->width, mlp->width, 1, h2);

    const float *w3 = mlp->w3 + h * 32u * m;
    const float *b3 = mlp->b3 + h * 32u;
    uint32_t sig = 0;
    for (int32_t i = 0; i < 32; i++) {
        const float *row = w3 + (size_t)i * m;
        float acc = b3[i];
        for (size_t j = 0; j < m; j++)
            acc = fmaf(row[j], h2[j], acc);
        if (acc > 0.0f)
            sig |= 1u << i;
    }
    return sig;
}

uint32_t ha_cpu_mlp_signature(const ha_mlp_t *mlp, int32_t head, const float *x, float *h1,
                              float *h2)
{
    return mlp_signature(mlp, head, x, h1, h2);
}

/* The lane version of linear(): in_t [in_dim][L], out_t [out_dim][L]. Two
 * outputs at a time give the core independent fma chains to overlap. */
HA_FMA_CLONES
static void linear_lanes(const float *w, const float *b, const float *in_t, int32_t in_dim,
                         int32_t out_dim, int apply_silu, float *out_t)
{
    int32_t i = 0;
    for (; i + 1 < out_dim; i += 2) {
        const float *r0 = w + (size_t)i * (size_t)in_dim, *r1 = r0 + in_dim;
        float a0[L], a1[L];
        for (int t = 0; t < L; t++) {
            a0[t] = b[i];
            a1[t] = b[i + 1];
        }
        for (int32_t j = 0; j < in_dim; j++) {
            const float *x = in_t + (size_t)j * L;
            const float w0 = r0[j], w1 = r1[j];
            for (int t = 0; t < L; t++) {
                a0[t] = fmaf(w0, x[t], a0[t]);
                a1[t] = fmaf(w1, x[t], a1[t]);
            }
        }
        for (int t = 0; t < L; t++) {
            out_t[(size_t)i * L + t] = apply_silu ? ha_silu(a0[t]) : a0[t];
            out_t[(size_t)(i + 1) * L + t] = apply_silu ? ha_silu(a1[t]) : a1[t];
        }
    }
    for (; i < out_dim; i++) {
        const float *r0 = w + (size_t)i * (size_t)in_dim;
        float a0[L];
        for (int t = 0; t < L; t++)
            a0[t] = b[i];
        for (int32_t j = 0; j < in_dim; j++)
            for (int t = 0; t < L; t++)
                a0[t] = fmaf(r0[j], in_t[(size_t)j * L + t], a0[t]);
        for (int t = 0; t < L; t++)
            out_t[(size_t)i * L + t] = apply_silu ? ha_silu(a0[t]) : a0[t];
    }
}

void ha_cpu_mlp_signature_lanes(const ha_mlp_t *mlp, int32_t head, const float *xt, float *h1t,
                                float *h2t, uint32_t *sig)
{
    size_t m = (size_t)mlp->width, d = (size_t)mlp->dim, h = (size_t)head;
    linear_lanes(mlp->w1 + h * m * d, mlp->b1 + h * m, xt, mlp->dim, mlp->width, 1, h1t);
    linear_lanes(mlp->w2 + h * m * m, mlp->b2 + h * m, h1t, mlp->width, mlp->width, 1, h2t);
    float out_small[32 * L];
    linear_lanes(mlp->w3 + h * 32u * m, mlp->b3 + h * 32u, h2t, mlp->width, 32, 0, out_small);
    for (int t = 0; t < L; t++) {
        uint32_t s = 0;
        for (int i = 0; i < 32; i++)
            if (out_small[i * L + t] > 0.0f)
                s |= 1u << i;
        sig[t] = s;
    }
}

void ha_cpu_load_lane(ha_dtype_t dt, const void *base, int64_t idx, int32_t dim, float *row,
                      float *xt, int32_t lane)
{
    ha_cpu_load_row(dt, base, idx, dim, row);
    for (int32_t j = 0; j < dim; j++)
        xt[(size_t)j * L + lane] = row[j];
}

/* signatures[t, o] = MLP_o(input[t, o / group]), L tokens at a time. */
ha_kernel_status_t ha_cpu_hash(const ha_hash_params_t *p)
{
    ha_cpu_plan_t plan;
    void *buf[HA_MLP_BUF_COUNT];
    ha_cpu_plan_mlp(&plan, p->head_dim > p->mlp.dim ? p->head_dim : p->mlp.dim, p->mlp.width);
    if (!ha_cpu_plan_carve(&plan, p->workspace, p->workspace_size, buf))
        return HA_KERNEL_WORKSPACE_TOO_SMALL;
    float *xt = buf[HA_MLP_BUF_X], *h1t = buf[HA_MLP_BUF_H1], *h2t = buf[HA_MLP_BUF_H2];
    float *row = buf[HA_MLP_BUF_ROW];
    int32_t group = p->group > 0 ? p->group : 1;

    for (int64_t t0 = 0; t0 < p->num_tokens; t0 += L) {
        int32_t lanes = p->num_tokens - t0 < L ? (int32_t)(p->num_tokens - t0) : L;
        int32_t loaded = -1; /* input head now in xt */
        for (int32_t o = 0; o < p->num_out_heads; o++) {
            int32_t in = o / group;
            if (in != loaded) {
                for (int32_t t = 0; t < L; t++) {
                    int64_t tok = t0 + (t < lanes ? t : 0); /* spare lanes repeat a real row */
                    ha_cpu_load_lane(p->dtype, p->input.data,
                                     tok * p->input.stride_token + in * p->input.stride_head,
                                     p->head_dim, row, xt, t);
                }
                loaded = in;
            }
            uint32_t sig[L];
            ha_cpu_mlp_signature_lanes(&p->mlp, o, xt, h1t, h2t, sig);
            for (int32_t t = 0; t < lanes; t++)
                p->signatures[(t0 + t) * p->sig_stride_token + o * p->sig_stride_head] = sig[t];
        }
    }
    return HA_KERNEL_OK;
}
