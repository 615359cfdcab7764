/*
 * backend_cpu.c - the training math on the CPU: cblas_sgemm for every matrix
 * product, loops for the rest. Threads come from the trainer (one task per
 * thread), so OpenBLAS is usually told to use one thread (main.c).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "backend.h"

static void *cpu_alloc(tr_backend_t *be, size_t bytes)
{
    (void)be;
    return calloc(1, bytes ? bytes : 1);
}

static void cpu_release(tr_backend_t *be, void *p)
{
    (void)be;
    free(p);
}

static void cpu_copy(tr_backend_t *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memcpy(dst, src, bytes);
}

static void cpu_zero(tr_backend_t *be, void *dst, size_t bytes)
{
    (void)be;
    memset(dst, 0, bytes);
}

static void cpu_gemm(tr_backend_t *be, int ta, int tb, int m, int n, int k, float alpha, const float *a,
                     int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    (void)be;
    if (m <= 0 || n <= 0)
        return;
    if (k <= 0) { /* OpenBLAS leaves C alone for k = 0 only with beta = 1 */
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
                c[(size_t)i * (size_t)ldc + (size_t)j] *= beta;
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k,
                alpha, a, lda, b, ldb, beta, c, ldc);
}

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* one loop per activation, without branches, so that GCC vectorises the
 * calls (glibc's vector expf/tanhf under -ffast-math) */
static void cpu_bias_act(tr_backend_t *be, float *pre, const float *bias, int m, int n, tr_act_t act,
                         float *out)
{
    (void)be;
    for (int i = 0; i < m; i++) {
        float *p = pre + (size_t)i * (size_t)n, *o = out + (size_t)i * (size_t)n;
        for (int j = 0; j < n; j++)
            p[j] += bias[j];
        if (act == TR_ACT_SILU)
            for (int j = 0; j < n; j++)
                o[j] = p[j] / (1.0f + expf(-p[j]));
        else if (act == TR_ACT_TANH)
            for (int j = 0; j < n; j++)
                o[j] = tanhf(p[j]);
        else
            for (int j = 0; j < n; j++)
                o[j] = p[j];
    }
}

static void cpu_act_grad(tr_backend_t *be, const float *pre, const float *out, const float *dout, int m,
                         int n, tr_act_t act, float *dpre)
{
    (void)be;
    size_t total = (size_t)m * (size_t)n;
    if (act == TR_ACT_SILU) {
        for (size_t i = 0; i < total; i++) {
            float s = 1.0f / (1.0f + expf(-pre[i]));
            dpre[i] = dout[i] * (s * (1.0f + pre[i] * (1.0f - s)));
        }
    } else if (act == TR_ACT_TANH) {
        for (size_t i = 0; i < total; i++)
            dpre[i] = dout[i] * (1.0f - out[i] * out[i]);
    } else if (dpre != dout) {
        memcpy(dpre, dout, total * sizeof(float));
    }
}

static void cpu_colsum(tr_backend_t *be, const float *d, int m, int n, float *db)
{
    (void)be;
    for (int i = 0; i < m; i++) {
        const float *r = d + (size_t)i * (size_t)n;
        for (int j = 0; j < n; j++)
            db[j] += r[j];
    }
}

/* softplus(x) = log(1 + e^x), stable for large |x| */
static inline float softplusf(float x) { return (x > 0 ? x : 0.0f) + log1pf(expf(-fabsf(x))); }

static double cpu_bce(tr_backend_t *be, const float *z, const uint8_t *labels, size_t n, float pw,
                      float scale, float *dz)
{
    (void)be;
    /* branch-free so that the loop vectorises; float partial sums per row */
    double loss = 0.0;
    const size_t row = 4096;
    for (size_t i0 = 0; i0 < n; i0 += row) {
        size_t end = n - i0 < row ? n : i0 + row;
        float part = 0.0f;
        for (size_t i = i0; i < end; i++) {
            float pos = labels[i] == TR_LABEL_POS, neg = labels[i] == TR_LABEL_NEG;
            float w = pos * pw + neg, s = sigmoidf(z[i]);
            part += w * softplusf(pos ? -z[i] : z[i]);
            dz[i] = scale * w * (s - pos);
        }
        loss += part;
    }
    return loss;
}

static void cpu_adam(tr_backend_t *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
                     float b1, float b2, float eps, int64_t step)
{
    (void)be;
    const float c1 = 1.0f / (1.0f - powf(b1, (float)step)), c2 = 1.0f / (1.0f - powf(b2, (float)step));
    for (size_t i = 0; i < n; i++) {
        m[i] = b1 * m[i] + (1.0f - b1) * g[i];
        v[i] = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        p[i] -= lr * (m[i] * c1) / (sqrtf(v[i] * c2) + eps);
    }
}

static void cpu_destroy(tr_backend_t *be) { free(be); }

void tr_backend_cpu_set_threads(int n) { openblas_set_num_threads(n > 0 ? n : 1); }

tr_backend_t *tr_backend_cpu_create(void)
{
    tr_backend_t *be = calloc(1, sizeof *be);
    if (!be)
        return NULL;
    be->name = "cpu";
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->upload = cpu_copy;
    be->download = cpu_copy;
    be->zero = cpu_zero;
    be->gemm = cpu_gemm;
    be->bias_act = cpu_bias_act;
    be->act_grad = cpu_act_grad;
    be->colsum = cpu_colsum;
    be->bce = cpu_bce;
    be->adam = cpu_adam;
    be->destroy = cpu_destroy;
    return be;
}
