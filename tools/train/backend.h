/*
 * backend.h - the batch math of training behind a small table, so that the
 * same step (net.c) runs on the CPU (OpenBLAS) or, later, on a GPU (cuBLAS and
 * a few elementwise kernels, backend_cuda.cu).
 *
 * Every pointer a backend function takes is backend memory (from alloc),
 * except where "host" is said. Matrices are row-major; the functions may be
 * asynchronous on a device backend except download and bce's loss.
 * One backend instance serves one thread.
 */
#ifndef HASHATTN_TOOLS_TRAIN_BACKEND_H
#define HASHATTN_TOOLS_TRAIN_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef enum tr_act { TR_ACT_NONE = 0, TR_ACT_SILU = 1, TR_ACT_TANH = 2 } tr_act_t;

/* label values of a (query, key) pair */
enum { TR_LABEL_NEG = 0, TR_LABEL_POS = 1, TR_LABEL_MASK = 2 };

typedef struct tr_backend tr_backend_t;
struct tr_backend {
    const char *name;
    void *(*alloc)(tr_backend_t *be, size_t bytes); /* zeroed; NULL on failure */
    void (*release)(tr_backend_t *be, void *p);
    void (*upload)(tr_backend_t *be, void *dst, const void *host_src, size_t bytes);
    void (*download)(tr_backend_t *be, void *host_dst, const void *src, size_t bytes);
    void (*zero)(tr_backend_t *be, void *dst, size_t bytes);
    /* C[M, N] = alpha op(A) op(B) + beta C; op(A) [M, K], op(B) [K, N] */
    void (*gemm)(tr_backend_t *be, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc);
    /* pre[M, N] += bias (per column); out = act(pre) */
    void (*bias_act)(tr_backend_t *be, float *pre, const float *bias, int m, int n, tr_act_t act,
                     float *out);
    /* dpre = dout * act'(pre) (out = act(pre) given too); dpre may alias dout */
    void (*act_grad)(tr_backend_t *be, const float *pre, const float *out, const float *dout, int m,
                     int n, tr_act_t act, float *dpre);
    /* db[N] += sum over rows of d[M, N] */
    void (*colsum)(tr_backend_t *be, const float *d, int m, int n, float *db);
    /* Weighted BCE with logits z [n] against labels [n] (TR_LABEL_*):
     * loss = sum over unmasked of w * softplus(+-z), w = pos_weight for
     * positives; dz = scale * w * (sigmoid(z) - y) (0 where masked). Returns
     * the unscaled loss sum (host value; synchronises a device backend). */
    double (*bce)(tr_backend_t *be, const float *z, const uint8_t *labels, size_t n, float pos_weight,
                  float scale, float *dz);
    /* Adam with bias correction; step counts from 1. */
    void (*adam)(tr_backend_t *be, float *p, const float *g, float *m, float *v, size_t n, float lr,
                 float beta1, float beta2, float eps, int64_t step);
    void (*destroy)(tr_backend_t *be);
};

/* The CPU backend: OpenBLAS sgemm and plain loops. */
tr_backend_t *tr_backend_cpu_create(void);
/* The CUDA backend (built when HASHATTN_TRAIN_CUDA is defined): NULL with a
 * message when no GPU or no cuBLAS is found. failed() synchronises and says
 * whether any CUDA or cuBLAS call failed since creation. */
#ifdef HASHATTN_TRAIN_CUDA
tr_backend_t *tr_backend_cuda_create(int device, char *err, size_t errlen);
int tr_backend_cuda_failed(tr_backend_t *be);
#endif

/* Threads of each OpenBLAS call (process-wide). tr_train sets it so that
 * tasks x BLAS threads = the threads asked for. */
void tr_backend_cpu_set_threads(int n);

#endif
