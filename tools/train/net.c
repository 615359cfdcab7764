/*
 * net.c - forward and backward of the hash MLP pair by hand (backend.h).
 * Shapes: per MLP w1 [m, D], w2 [m, m], w3 [32, m]; activations [rows, width].
 */
#include "net.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "mlp.h"

#define B_ TR_BITS

static int side_alloc(tr_net_t *net, tr_side_buf_t *s, int32_t rows)
{
    tr_backend_t *be = net->be;
    size_t r = (size_t)rows, d = (size_t)net->dim, m = (size_t)net->width, f = sizeof(float);
    s->x = be->alloc(be, r * d * f);
    s->a1 = be->alloc(be, r * m * f);
    s->h1 = be->alloc(be, r * m * f);
    s->a2 = be->alloc(be, r * m * f);
    s->h2 = be->alloc(be, r * m * f);
    s->o = be->alloc(be, r * B_ * f);
    s->u = be->alloc(be, r * B_ * f);
    s->du = be->alloc(be, r * B_ * f);
    s->g1 = be->alloc(be, r * m * f);
    s->g2 = be->alloc(be, r * m * f);
    return s->x && s->a1 && s->h1 && s->a2 && s->h2 && s->o && s->u && s->du && s->g1 && s->g2 ? 0 : -1;
}

static void side_free(tr_net_t *net, tr_side_buf_t *s)
{
    float **p[] = {&s->x, &s->a1, &s->h1, &s->a2, &s->h2, &s->o, &s->u, &s->du, &s->g1, &s->g2};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) {
        if (*p[i])
            net->be->release(net->be, *p[i]);
        *p[i] = NULL;
    }
}

void tr_net_destroy(tr_net_t *net)
{
    if (!net->be)
        return;
    tr_backend_t *be = net->be;
    side_free(net, &net->q);
    side_free(net, &net->k);
    void *p[] = {net->params, net->grads, net->adam_m, net->adam_v, net->z, net->dz, net->labels};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (p[i])
            be->release(be, p[i]);
    memset(net, 0, sizeof *net);
}

int tr_net_create(tr_net_t *net, tr_backend_t *be, int32_t dim, int32_t width, int32_t nq, int32_t nkm, int joint,
                  int32_t max_q, int32_t max_k)
{
    memset(net, 0, sizeof *net);
    if (nq < 1 || (joint ? nkm != 1 && nkm != nq : nkm != 1))
        return -1;
    net->be = be;
    net->dim = dim;
    net->width = width;
    net->nq = nq;
    net->nkm = nkm;
    net->joint = joint != 0;
    net->max_q = max_q;
    net->max_k = max_k;
    net->mlp_floats = tr_mlp_floats(dim, width);
    net->num_params = net->mlp_floats * (size_t)(nq + nkm);
    /* joint: the pairs are (position, key), max_q / nq positions at most */
    size_t pb = net->num_params * sizeof(float), zb = (size_t)(joint ? max_q / nq : max_q) * (size_t)max_k;
    net->params = be->alloc(be, pb);
    net->grads = be->alloc(be, pb);
    net->adam_m = be->alloc(be, pb);
    net->adam_v = be->alloc(be, pb);
    net->z = be->alloc(be, zb * sizeof(float));
    net->dz = be->alloc(be, zb * sizeof(float));
    net->labels = be->alloc(be, zb);
    /* every key MLP has its own activation rows over the same keys */
    if (!net->params || !net->grads || !net->adam_m || !net->adam_v || !net->z || !net->dz ||
        !net->labels || side_alloc(net, &net->q, max_q) || side_alloc(net, &net->k, max_k * nkm)) {
        tr_net_destroy(net);
        return -1;
    }
    return 0;
}

void tr_net_set_params(tr_net_t *net, const float *host)
{
    net->be->upload(net->be, net->params, host, net->num_params * sizeof(float));
}

void tr_net_get_params(const tr_net_t *net, float *host)
{
    net->be->download(net->be, host, net->params, net->num_params * sizeof(float));
}

void tr_net_get_grads(const tr_net_t *net, float *host)
{
    net->be->download(net->be, host, net->grads, net->num_params * sizeof(float));
}

/* u = tanh(phi(x)) for rows [r0, r0 + rows) of side s with MLP block p; the
 * inputs are the rows [x0, x0 + rows) of s->x (x0 != r0: several key MLPs
 * over the same keys) */
static void forward(tr_net_t *net, const float *p, tr_side_buf_t *s, int32_t x0, int32_t r0, int32_t rows)
{
    tr_backend_t *be = net->be;
    int d = net->dim, m = net->width;
    tr_mlp_parts_t w = tr_mlp_parts((float *)p, d, m);
    size_t o_m = (size_t)r0 * (size_t)m, o_b = (size_t)r0 * B_;
    be->gemm(be, 0, 1, rows, m, d, 1.0f, s->x + (size_t)x0 * (size_t)d, d, w.w1, d, 0.0f, s->a1 + o_m, m);
    be->bias_act(be, s->a1 + o_m, w.b1, rows, m, TR_ACT_SILU, s->h1 + o_m);
    be->gemm(be, 0, 1, rows, m, m, 1.0f, s->h1 + o_m, m, w.w2, m, 0.0f, s->a2 + o_m, m);
    be->bias_act(be, s->a2 + o_m, w.b2, rows, m, TR_ACT_SILU, s->h2 + o_m);
    be->gemm(be, 0, 1, rows, B_, m, 1.0f, s->h2 + o_m, m, w.w3, m, 0.0f, s->o + o_b, B_);
    be->bias_act(be, s->o + o_b, w.b3, rows, B_, TR_ACT_TANH, s->u + o_b);
}

/* gradients of MLP p (into g) from du at rows [r0, r0 + rows), inputs as forward's */
static void backward(tr_net_t *net, const float *p, float *g, tr_side_buf_t *s, int32_t x0, int32_t r0,
                     int32_t rows)
{
    tr_backend_t *be = net->be;
    int d = net->dim, m = net->width;
    tr_mlp_parts_t w = tr_mlp_parts((float *)p, d, m), gw = tr_mlp_parts(g, d, m);
    size_t o_m = (size_t)r0 * (size_t)m, o_b = (size_t)r0 * B_;
    float *du = s->du + o_b, *g1 = s->g1 + o_m, *g2 = s->g2 + o_m;
    be->act_grad(be, s->o + o_b, s->u + o_b, du, rows, B_, TR_ACT_TANH, du); /* du -> d(o) */
    be->gemm(be, 1, 0, B_, m, rows, 1.0f, du, B_, s->h2 + o_m, m, 1.0f, gw.w3, m);
    be->colsum(be, du, rows, B_, gw.b3);
    be->gemm(be, 0, 0, rows, m, B_, 1.0f, du, B_, w.w3, m, 0.0f, g2, m); /* d(h2) */
    be->act_grad(be, s->a2 + o_m, s->h2 + o_m, g2, rows, m, TR_ACT_SILU, g2);
    be->gemm(be, 1, 0, m, m, rows, 1.0f, g2, m, s->h1 + o_m, m, 1.0f, gw.w2, m);
    be->colsum(be, g2, rows, m, gw.b2);
    be->gemm(be, 0, 0, rows, m, m, 1.0f, g2, m, w.w2, m, 0.0f, g1, m); /* d(h1) */
    be->act_grad(be, s->a1 + o_m, s->h1 + o_m, g1, rows, m, TR_ACT_SILU, g1);
    be->gemm(be, 1, 0, m, d, rows, 1.0f, g1, m, s->x + (size_t)x0 * (size_t)d, d, 1.0f, gw.w1, d);
    be->colsum(be, g1, rows, m, gw.b1);
}

double tr_net_loss_grad(tr_net_t *net, const float *xq, const int32_t *rows, int32_t nk,
                        const float *xk, const uint8_t *labels, float pos_weight)
{
    tr_backend_t *be = net->be;
    int32_t bq = 0, same = 1;
    for (int32_t i = 0; i < net->nq; i++) {
        bq += rows[i];
        same &= rows[i] == rows[0];
    }
    /* the pairs: (query row, key), or joint (position, key) with P positions */
    const int32_t np = net->joint ? rows[0] : bq;
    size_t d = (size_t)net->dim, pairs = (size_t)np * (size_t)nk, valid = 0;
    be->zero(be, net->grads, net->num_params * sizeof(float));
    if (bq > net->max_q || nk > net->max_k || (net->joint && !same))
        return NAN;
    for (size_t i = 0; i < pairs; i++)
        valid += labels[i] != TR_LABEL_MASK;
    if (!valid)
        return NAN;
    be->upload(be, net->q.x, xq, (size_t)bq * d * sizeof(float));
    be->upload(be, net->k.x, xk, (size_t)nk * d * sizeof(float));
    be->upload(be, net->labels, labels, pairs);

    const float *kp = net->params + (size_t)net->nq * net->mlp_floats;
    float *kg = net->grads + (size_t)net->nq * net->mlp_floats;
    for (int32_t i = 0, r0 = 0; i < net->nq; r0 += rows[i], i++)
        if (rows[i])
            forward(net, net->params + (size_t)i * net->mlp_floats, &net->q, r0, r0, rows[i]);
    /* key MLP j's rows: [j nk, (j + 1) nk), all over the nk keys */
    for (int32_t j = 0; j < net->nkm; j++)
        forward(net, kp + (size_t)j * net->mlp_floats, &net->k, 0, j * nk, nk);

    if (!net->joint) {
        /* z = U V^T, then dz, du = dz V, dv = dz^T U */
        be->gemm(be, 0, 1, bq, nk, B_, 1.0f, net->q.u, B_, net->k.u, B_, 0.0f, net->z, nk);
        double loss = be->bce(be, net->z, net->labels, pairs, pos_weight, 1.0f / (float)valid, net->dz);
        be->gemm(be, 0, 0, bq, B_, nk, 1.0f, net->dz, nk, net->k.u, B_, 0.0f, net->q.du, B_);
        be->gemm(be, 1, 0, nk, B_, bq, 1.0f, net->dz, nk, net->q.u, B_, 0.0f, net->k.du, B_);
        for (int32_t i = 0, r0 = 0; i < net->nq; r0 += rows[i], i++)
            if (rows[i])
                backward(net, net->params + (size_t)i * net->mlp_floats,
                         net->grads + (size_t)i * net->mlp_floats, &net->q, r0, r0, rows[i]);
        backward(net, kp, kg, &net->k, 0, 0, nk);
        return loss / (double)valid;
    }

    /* joint: z = sum_g U_g V_k(g)^T / nq; du_g = dz V_k(g) / nq; dv_k(g) (+)= dz^T U_g / nq */
    const size_t ub = (size_t)np * B_, vb = (size_t)nk * B_;
    const float zs = 1.0f / (float)net->nq; /* the mean: one head's logit scale */
    for (int32_t g = 0; g < net->nq; g++) {
        const int32_t kj = net->nkm == 1 ? 0 : g;
        be->gemm(be, 0, 1, np, nk, B_, zs, net->q.u + g * ub, B_, net->k.u + kj * vb, B_, g ? 1.0f : 0.0f,
                 net->z, nk);
    }
    double loss = be->bce(be, net->z, net->labels, pairs, pos_weight, 1.0f / (float)valid, net->dz);
    for (int32_t g = 0; g < net->nq; g++) {
        const int32_t kj = net->nkm == 1 ? 0 : g;
        be->gemm(be, 0, 0, np, B_, nk, zs, net->dz, nk, net->k.u + kj * vb, B_, 0.0f, net->q.du + g * ub, B_);
        be->gemm(be, 1, 0, nk, B_, np, zs, net->dz, nk, net->q.u + g * ub, B_, net->nkm == 1 && g ? 1.0f : 0.0f,
                 net->k.du + kj * vb, B_);
    }
    for (int32_t g = 0; g < net->nq; g++)
        backward(net, net->params + (size_t)g * net->mlp_floats, net->grads + (size_t)g * net->mlp_floats, &net->q,
                 g * np, g * np, np);
    for (int32_t j = 0; j < net->nkm; j++)
        backward(net, kp + (size_t)j * net->mlp_floats, kg + (size_t)j * net->mlp_floats, &net->k, 0, j * nk, nk);
    return loss / (double)valid;
}

void tr_net_adam(tr_net_t *net, float lr)
{
    net->step++;
    net->be->adam(net->be, net->params, net->grads, net->adam_m, net->adam_v, net->num_params, lr, 0.9f,
                  0.999f, 1e-8f, net->step);
}
