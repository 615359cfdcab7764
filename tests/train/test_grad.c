/*
 * test_grad.c - the hand-written backward pass against finite differences of
 * an independent double-precision forward pass, on tiny MLPs (two query MLPs
 * and a key MLP, as in a compact task; and the group objective's joint loss
 * with two key MLPs or one); Adam's first step; input folding.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "mlp.h"
#include "net.h"
#include "rng.h"

enum { D = 5, M = 4, NQ = 2, B = 6, NK = 7 };

static double silu(double a) { return a / (1.0 + exp(-a)); }

/* tanh(phi(x)) in double, MLP block p (float) with perturbation applied by the caller */
static void phi(const double *p, const double *x, double *u)
{
    const double *w1 = p, *b1 = w1 + M * D, *w2 = b1 + M, *b2 = w2 + M * M, *w3 = b2 + M, *b3 = w3 + 32 * M;
    double h1[M], h2[M];
    for (int i = 0; i < M; i++) {
        double a = b1[i];
        for (int j = 0; j < D; j++)
            a += w1[i * D + j] * x[j];
        h1[i] = silu(a);
    }
    for (int i = 0; i < M; i++) {
        double a = b2[i];
        for (int j = 0; j < M; j++)
            a += w2[i * M + j] * h1[j];
        h2[i] = silu(a);
    }
    for (int i = 0; i < 32; i++) {
        double a = b3[i];
        for (int j = 0; j < M; j++)
            a += w3[i * M + j] * h2[j];
        u[i] = tanh(a);
    }
}

static double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }

static double ref_loss(const double *params, size_t f, const double *xq, const int32_t *rows, const double *xk,
                       const uint8_t *labels, double pw)
{
    double uq[B][32], vk[NK][32];
    for (int i = 0, slot = 0, left = rows[0]; i < B; i++) {
        while (left == 0)
            left = rows[++slot];
        phi(params + (size_t)slot * f, xq + i * D, uq[i]);
        left--;
    }
    for (int j = 0; j < NK; j++)
        phi(params + (size_t)NQ * f, xk + j * D, vk[j]);
    double loss = 0;
    int valid = 0;
    for (int i = 0; i < B; i++)
        for (int j = 0; j < NK; j++) {
            uint8_t y = labels[i * NK + j];
            if (y == TR_LABEL_MASK)
                continue;
            double z = 0;
            for (int b = 0; b < 32; b++)
                z += uq[i][b] * vk[j][b];
            loss += y == TR_LABEL_POS ? pw * softplus(-z) : softplus(z);
            valid++;
        }
    return loss / valid;
}

/* A random case: nmlp MLP blocks of f floats (fresh init plus noise, so that
 * the biases' gradients are exercised away from 0), B query rows, NK keys,
 * nlab labels of every kind; the doubles are the same values. */
static void random_case(uint64_t seed, int nmlp, size_t f, float *p, double *pd, float *xq, double *xqd, float *xk,
                        double *xkd, uint8_t *labels, int nlab)
{
    tr_rng_t r;
    tr_rng_seed(&r, seed, (uint64_t)nmlp, 0, 0);
    for (int i = 0; i < nmlp; i++)
        tr_mlp_init(p + (size_t)i * f, D, M, seed, (uint64_t)i, 0);
    for (size_t i = 0; i < (size_t)nmlp * f; i++) {
        p[i] += (float)(0.1 * tr_rng_normal(&r));
        pd[i] = p[i];
    }
    for (int i = 0; i < B * D; i++)
        xqd[i] = xq[i] = (float)tr_rng_normal(&r);
    for (int i = 0; i < NK * D; i++)
        xkd[i] = xk[i] = (float)tr_rng_normal(&r);
    for (int i = 0; i < nlab; i++)
        labels[i] = (uint8_t)tr_rng_below(&r, 3);
    labels[0] = TR_LABEL_POS;
    labels[1] = TR_LABEL_NEG;
}

/* The analytic gradients g [np] against central differences of the double
 * reference loss at pd (restored); the count off by more than 1e-3 relative. */
static int fd_check(double *pd, size_t np, const float *g, double (*ref)(const double *, const void *),
                    const void *ctx, double *worst, size_t *worst_i)
{
    int bad = 0;
    *worst = 0;
    *worst_i = 0;
    for (size_t i = 0; i < np; i++) {
        const double eps = 1e-6;
        double keep = pd[i];
        pd[i] = keep + eps;
        double lp = ref(pd, ctx);
        pd[i] = keep - eps;
        double lm = ref(pd, ctx);
        pd[i] = keep;
        double num = (lp - lm) / (2 * eps), err = fabs(num - g[i]) / (1e-3 + fabs(num));
        if (err > *worst) {
            *worst = err;
            *worst_i = i;
        }
        bad += err > 1e-3;
    }
    return bad;
}

typedef struct {
    size_t f;
    int nkm;
    const double *xq, *xk;
    const int32_t *rows;
    const uint8_t *labels;
    double pw;
} ref_ctx_t;

static double ref_head(const double *pd, const void *v)
{
    const ref_ctx_t *c = v;
    return ref_loss(pd, c->f, c->xq, c->rows, c->xk, c->labels, c->pw);
}

static void test_gradients(void)
{
    tr_backend_t *be = tr_backend_cpu_create();
    tr_net_t net;
    CHECK(tr_net_create(&net, be, D, M, NQ, 1, 0, B, NK) == 0, "net");
    size_t f = tr_mlp_floats(D, M), np = f * (NQ + 1);
    float *p = malloc(np * sizeof(float)), *g = malloc(np * sizeof(float));
    double *pd = malloc(np * sizeof(double));
    float xq[B * D], xk[NK * D];
    double xqd[B * D], xkd[NK * D];
    uint8_t labels[B * NK];
    random_case(11, NQ + 1, f, p, pd, xq, xqd, xk, xkd, labels, B * NK);
    int32_t rows[NQ] = {4, 2};
    const float pw = 20.0f;

    tr_net_set_params(&net, p);
    double loss = tr_net_loss_grad(&net, xq, rows, NK, xk, labels, pw);
    tr_net_get_grads(&net, g);
    const ref_ctx_t ctx = {f, 1, xqd, xkd, rows, labels, pw};
    double ref = ref_head(pd, &ctx);
    CHECK(fabs(loss - ref) < 1e-5 * (1 + fabs(ref)), "loss %.8f, double reference %.8f", loss, ref);

    double worst;
    size_t worst_i;
    int bad = fd_check(pd, np, g, ref_head, &ctx, &worst, &worst_i);
    CHECK(bad == 0, "%d of %zu gradients off; worst relative error %.2e at parameter %zu", bad, np, worst, worst_i);
    printf("  gradient check: %zu parameters, worst relative error %.2e\n", np, worst);

    /* a query MLP without rows in the batch gets zero gradients */
    int32_t rows0[NQ] = {B, 0};
    tr_net_loss_grad(&net, xq, rows0, NK, xk, labels, pw);
    tr_net_get_grads(&net, g);
    int nonzero = 0;
    for (size_t i = f; i < 2 * f; i++)
        nonzero += g[i] != 0.0f;
    CHECK(nonzero == 0, "%d gradients of an idle query MLP are not zero", nonzero);

    /* Adam's first step moves every parameter with a non-zero gradient by lr * sign(g) */
    tr_net_loss_grad(&net, xq, rows, NK, xk, labels, pw);
    tr_net_get_grads(&net, g);
    tr_net_adam(&net, 1e-3f);
    float *p2 = malloc(np * sizeof(float));
    tr_net_get_params(&net, p2);
    int adam_bad = 0;
    for (size_t i = 0; i < np; i++) {
        double step = (double)p[i] - p2[i], want = fabs(g[i]) > 1e-5 ? (g[i] > 0 ? 1e-3 : -1e-3) : step;
        adam_bad += fabs(step - want) > 2e-5;
    }
    CHECK(adam_bad == 0, "%d parameters did not move by lr * sign(g) on Adam's first step", adam_bad);

    /* every pair masked: NaN loss, zero gradients */
    uint8_t masked[B * NK];
    memset(masked, TR_LABEL_MASK, sizeof masked);
    CHECK(isnan(tr_net_loss_grad(&net, xq, rows, NK, xk, masked, pw)), "all-masked batch has a loss");

    free(p);
    free(p2);
    free(g);
    free(pd);
    tr_net_destroy(&net);
    be->destroy(be);
}

/* The group objective: NQ query MLPs over the same P positions and NKM key
 * MLPs (NQ: the paper's layout, 1: compact), z_pj = sum_g u_g(p) . v_k(g)(j) / NQ. */
static double ref_loss_joint(const double *params, size_t f, int nkm, const double *xq, const double *xk,
                             const uint8_t *labels, double pw)
{
    enum { P = B / NQ };
    double uq[NQ][P][32], vk[NQ][NK][32];
    for (int g = 0; g < NQ; g++)
        for (int i = 0; i < P; i++)
            phi(params + (size_t)g * f, xq + (g * P + i) * D, uq[g][i]);
    for (int kj = 0; kj < nkm; kj++)
        for (int j = 0; j < NK; j++)
            phi(params + (size_t)(NQ + kj) * f, xk + j * D, vk[kj][j]);
    double loss = 0;
    int valid = 0;
    for (int i = 0; i < P; i++)
        for (int j = 0; j < NK; j++) {
            uint8_t y = labels[i * NK + j];
            if (y == TR_LABEL_MASK)
                continue;
            double z = 0;
            for (int g = 0; g < NQ; g++)
                for (int b = 0; b < 32; b++)
                    z += uq[g][i][b] * vk[nkm == 1 ? 0 : g][j][b];
            z /= NQ;
            loss += y == TR_LABEL_POS ? pw * softplus(-z) : softplus(z);
            valid++;
        }
    return loss / valid;
}

static double ref_joint(const double *pd, const void *v)
{
    const ref_ctx_t *c = v;
    return ref_loss_joint(pd, c->f, c->nkm, c->xq, c->xk, c->labels, c->pw);
}

static void test_joint_gradients(int nkm)
{
    enum { P = B / NQ };
    tr_backend_t *be = tr_backend_cpu_create();
    tr_net_t net;
    CHECK(tr_net_create(&net, be, D, M, NQ, nkm, 1, B, NK) == 0, "joint net, %d key MLPs", nkm);
    size_t f = tr_mlp_floats(D, M), np = f * (size_t)(NQ + nkm);
    CHECK(net.num_params == np, "joint net: %zu parameters, expected %zu", net.num_params, np);
    float *p = malloc(np * sizeof(float)), *g = malloc(np * sizeof(float));
    double *pd = malloc(np * sizeof(double));
    float xq[B * D], xk[NK * D];
    double xqd[B * D], xkd[NK * D];
    uint8_t labels[P * NK];
    random_case(13, NQ + nkm, f, p, pd, xq, xqd, xk, xkd, labels, P * NK);
    int32_t rows[NQ] = {P, P};
    const float pw = 20.0f;
    tr_net_set_params(&net, p);
    double loss = tr_net_loss_grad(&net, xq, rows, NK, xk, labels, pw);
    tr_net_get_grads(&net, g);
    const ref_ctx_t ctx = {f, nkm, xqd, xkd, rows, labels, pw};
    double ref = ref_joint(pd, &ctx);
    CHECK(fabs(loss - ref) < 1e-5 * (1 + fabs(ref)), "joint (%d key MLPs): loss %.8f, double reference %.8f", nkm,
          loss, ref);
    double worst;
    size_t worst_i;
    int bad = fd_check(pd, np, g, ref_joint, &ctx, &worst, &worst_i);
    CHECK(bad == 0, "joint (%d key MLPs): %d of %zu gradients off; worst relative error %.2e at parameter %zu", nkm,
          bad, np, worst, worst_i);
    printf("  joint gradient check, %d key MLP(s): %zu parameters, worst relative error %.2e\n", nkm, np, worst);
    /* unequal blocks are refused: no loss, zero gradients */
    int32_t uneven[NQ] = {P, P - 1};
    CHECK(isnan(tr_net_loss_grad(&net, xq, uneven, NK, xk, labels, pw)), "joint: unequal query blocks have a loss");
    free(p);
    free(g);
    free(pd);
    tr_net_destroy(&net);
    /* the shapes a joint net cannot have */
    CHECK(tr_net_create(&net, be, D, M, NQ, NQ + 1, 1, B, NK) != 0, "a joint net with nq + 1 key MLPs");
    CHECK(tr_net_create(&net, be, D, M, NQ, NQ, 0, B, NK) != 0, "a per-head net with nq key MLPs");
    be->destroy(be);
}

/* folding the input normalisation into w1/b1 keeps the function */
static void test_fold(void)
{
    enum { DD = 16, MM = 8, N = 200 };
    size_t f = tr_mlp_floats(DD, MM);
    float *p = malloc(f * sizeof(float)), *q = malloc(f * sizeof(float));
    tr_mlp_init(p, DD, MM, 4, 0, 0);
    float mu[DD], sg[DD];
    tr_rng_t r;
    tr_rng_seed(&r, 4, 1, 0, 0);
    for (int j = 0; j < DD; j++) {
        mu[j] = (float)(3 * tr_rng_normal(&r));
        sg[j] = (float)(0.5 + 4 * tr_rng_uniform(&r));
    }
    memcpy(q, p, f * sizeof(float));
    tr_mlp_fold_input(q, DD, MM, mu, sg);
    /* pre-activations of layer 1: folded on raw x == original on normalised x */
    double worst = 0;
    for (int n = 0; n < N; n++) {
        float x[DD], xn[DD];
        for (int j = 0; j < DD; j++) {
            x[j] = mu[j] + sg[j] * (float)tr_rng_normal(&r);
            xn[j] = (x[j] - mu[j]) / sg[j];
        }
        tr_mlp_parts_t a = tr_mlp_parts(p, DD, MM), b = tr_mlp_parts(q, DD, MM);
        for (int i = 0; i < MM; i++) {
            double ya = a.b1[i], yb = b.b1[i];
            for (int j = 0; j < DD; j++) {
                ya += (double)a.w1[i * DD + j] * xn[j];
                yb += (double)b.w1[i * DD + j] * x[j];
            }
            worst = fmax(worst, fabs(ya - yb));
        }
    }
    CHECK(worst < 1e-4, "folded first layer differs by %.2e", worst);
    tr_mlp_unfold_input(q, DD, MM, mu, sg);
    double back = 0;
    for (size_t i = 0; i < f; i++)
        back = fmax(back, fabs((double)q[i] - p[i]));
    CHECK(back < 1e-5, "fold then unfold moves a parameter by %.2e", back);
    free(p);
    free(q);
}

int main(void)
{
    printf("  seeds: gradients 11, joint 13, folding 4 (fixed)\n");
    test_gradients();
    test_joint_gradients(NQ);
    test_joint_gradients(1);
    test_fold();
    return check_finish("test_train_grad");
}
