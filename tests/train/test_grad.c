/*
 * test_grad.c - the hand-written backward pass against finite differences of
 * an independent double-precision forward pass, on tiny MLPs (two query MLPs
 * and a key MLP, as in a compact task); Adam's first step; input folding.
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

static void test_gradients(void)
{
    tr_backend_t *be = tr_backend_cpu_create();
    tr_net_t net;
    CHECK(tr_net_create(&net, be, D, M, NQ, B, NK) == 0, "net");
    size_t f = tr_mlp_floats(D, M), np = f * (NQ + 1);
    float *p = malloc(np * sizeof(float)), *g = malloc(np * sizeof(float));
    double *pd = malloc(np * sizeof(double));
    tr_rng_t r;
    tr_rng_seed(&r, 11, 0, 0, 0);
    for (int i = 0; i <= NQ; i++)
        tr_mlp_init(p + (size_t)i * f, D, M, 11, (uint64_t)i, 0);
    /* non-zero biases so that their gradients are exercised away from 0 */
    for (size_t i = 0; i < np; i++)
        p[i] += (float)(0.1 * tr_rng_normal(&r));
    float xq[B * D], xk[NK * D];
    double xqd[B * D], xkd[NK * D];
    for (int i = 0; i < B * D; i++)
        xqd[i] = xq[i] = (float)tr_rng_normal(&r);
    for (int i = 0; i < NK * D; i++)
        xkd[i] = xk[i] = (float)tr_rng_normal(&r);
    uint8_t labels[B * NK];
    for (int i = 0; i < B * NK; i++)
        labels[i] = (uint8_t)tr_rng_below(&r, 3);
    labels[0] = TR_LABEL_POS;
    labels[1] = TR_LABEL_NEG;
    int32_t rows[NQ] = {4, 2};
    const float pw = 20.0f;

    tr_net_set_params(&net, p);
    double loss = tr_net_loss_grad(&net, xq, rows, NK, xk, labels, pw);
    tr_net_get_grads(&net, g);
    for (size_t i = 0; i < np; i++)
        pd[i] = p[i];
    double ref = ref_loss(pd, f, xqd, rows, xkd, labels, pw);
    CHECK(fabs(loss - ref) < 1e-5 * (1 + fabs(ref)), "loss %.8f, double reference %.8f", loss, ref);

    double worst = 0;
    size_t worst_i = 0;
    int bad = 0;
    for (size_t i = 0; i < np; i++) {
        const double eps = 1e-6;
        double keep = pd[i];
        pd[i] = keep + eps;
        double lp = ref_loss(pd, f, xqd, rows, xkd, labels, pw);
        pd[i] = keep - eps;
        double lm = ref_loss(pd, f, xqd, rows, xkd, labels, pw);
        pd[i] = keep;
        double num = (lp - lm) / (2 * eps), err = fabs(num - g[i]) / (1e-3 + fabs(num));
        if (err > worst) {
            worst = err;
            worst_i = i;
        }
        bad += err > 1e-3;
    }
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
    printf("  seeds: gradients 11, folding 4 (fixed)\n");
    test_gradients();
    test_fold();
    return check_finish("test_train_grad");
}
