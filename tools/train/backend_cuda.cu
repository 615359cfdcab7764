/*
 * backend_cuda.cu - the training math on one GPU: cuBLAS for the matrix
 * products, small kernels for the rest (backend.h). One backend = one stream
 * and one cuBLAS handle, so worker threads overlap on the device.
 *
 * cuBLAS is loaded with dlopen at backend creation (libcublas.so.13, .so.12,
 * or $HASHATTN_CUBLAS), so the trainer starts and trains on the CPU on
 * machines without it; the CUDA runtime is linked statically. Matrix products
 * run in plain FP32 (CUBLAS_DEFAULT_MATH: no TF32), so CPU and GPU training
 * agree to rounding.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_api.h>
#include <cuda_runtime.h>

extern "C" {
#include "backend.h"
}

/* the few cuBLAS entry points used, resolved at run time */
typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t, cudaStream_t);
typedef cublasStatus_t (*set_math_fn)(cublasHandle_t, cublasMath_t);
typedef cublasStatus_t (*sgemm_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                   const float *, const float *, int, const float *, int, const float *,
                                   float *, int);
typedef cublasStatus_t (*sgemv_fn)(cublasHandle_t, cublasOperation_t, int, int, const float *, const float *,
                                   int, const float *, int, const float *, float *, int);

typedef struct {
    tr_backend_t base; /* first: the table */
    void *dl;
    cublasHandle_t handle;
    cudaStream_t stream;
    destroy_fn destroy;
    sgemm_fn sgemm;
    sgemv_fn sgemv;
    float *ones;       /* [ones_n] of 1.0f, for column sums */
    int ones_n;
    float *partial;    /* [TR_CUDA_BLOCKS] loss partial sums */
    float *partial_h;  /* pinned host copy */
    int failed;        /* a CUDA or cuBLAS call failed; reported by tr_backend_cuda_failed */
} cuda_be_t;

#define TR_CUDA_BLOCKS 1024
#define TR_CUDA_THREADS 256

static cuda_be_t *C(tr_backend_t *be) { return (cuda_be_t *)be; }

static void check(cuda_be_t *c, cudaError_t e)
{
    if (e != cudaSuccess)
        c->failed = 1;
}

static int grid_for(size_t n)
{
    size_t g = (n + TR_CUDA_THREADS - 1) / TR_CUDA_THREADS;
    return (int)(g < TR_CUDA_BLOCKS ? (g ? g : 1) : TR_CUDA_BLOCKS);
}

static void *cu_alloc(tr_backend_t *be, size_t bytes)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess)
        return NULL;
    check(C(be), cudaMemsetAsync(p, 0, bytes ? bytes : 1, C(be)->stream));
    return p;
}

static void cu_release(tr_backend_t *be, void *p)
{
    cudaStreamSynchronize(C(be)->stream);
    cudaFree(p);
}

static void cu_upload(tr_backend_t *be, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        check(C(be), cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, C(be)->stream));
}

static void cu_download(tr_backend_t *be, void *dst, const void *src, size_t bytes)
{
    if (bytes)
        check(C(be), cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, C(be)->stream));
    check(C(be), cudaStreamSynchronize(C(be)->stream));
}

static void cu_zero(tr_backend_t *be, void *dst, size_t bytes)
{
    check(C(be), cudaMemsetAsync(dst, 0, bytes, C(be)->stream));
}

/* row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T */
static void cu_gemm(tr_backend_t *be, int ta, int tb, int m, int n, int k, float alpha, const float *a, int lda,
                    const float *b, int ldb, float beta, float *c, int ldc)
{
    if (m <= 0 || n <= 0)
        return;
    cuda_be_t *cb = C(be);
    if (cb->sgemm(cb->handle, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha,
                  b, ldb, a, lda, &beta, c, ldc) != CUBLAS_STATUS_SUCCESS)
        cb->failed = 1;
}

__global__ void k_bias_act(float *pre, const float *bias, size_t total, int n, int act, float *out)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float a = pre[i] + bias[i % (size_t)n];
        pre[i] = a;
        out[i] = act == TR_ACT_SILU ? a / (1.0f + expf(-a)) : act == TR_ACT_TANH ? tanhf(a) : a;
    }
}

static void cu_bias_act(tr_backend_t *be, float *pre, const float *bias, int m, int n, tr_act_t act, float *out)
{
    size_t total = (size_t)m * (size_t)n;
    if (!total)
        return;
    k_bias_act<<<grid_for(total), TR_CUDA_THREADS, 0, C(be)->stream>>>(pre, bias, total, n, (int)act, out);
    check(C(be), cudaGetLastError());
}

__global__ void k_act_grad(const float *pre, const float *out, const float *dout, size_t total, int act,
                           float *dpre)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        float g = 1.0f;
        if (act == TR_ACT_SILU) {
            float s = 1.0f / (1.0f + expf(-pre[i]));
            g = s * (1.0f + pre[i] * (1.0f - s));
        } else if (act == TR_ACT_TANH) {
            g = 1.0f - out[i] * out[i];
        }
        dpre[i] = dout[i] * g;
    }
}

static void cu_act_grad(tr_backend_t *be, const float *pre, const float *out, const float *dout, int m, int n,
                        tr_act_t act, float *dpre)
{
    size_t total = (size_t)m * (size_t)n;
    if (!total)
        return;
    k_act_grad<<<grid_for(total), TR_CUDA_THREADS, 0, C(be)->stream>>>(pre, out, dout, total, (int)act, dpre);
    check(C(be), cudaGetLastError());
}

__global__ void k_fill(float *p, int n, float v)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        p[i] = v;
}

/* db[N] += d^T 1: d row-major [M, N] is column-major [N, M] */
static void cu_colsum(tr_backend_t *be, const float *d, int m, int n, float *db)
{
    cuda_be_t *cb = C(be);
    if (m <= 0 || n <= 0)
        return;
    if (m > cb->ones_n) {
        if (cb->ones) {
            cudaStreamSynchronize(cb->stream);
            cudaFree(cb->ones);
        }
        cb->ones = NULL;
        cb->ones_n = 0;
        if (cudaMalloc((void **)&cb->ones, (size_t)m * sizeof(float)) != cudaSuccess) {
            cb->failed = 1;
            return;
        }
        cb->ones_n = m;
        k_fill<<<grid_for((size_t)m), TR_CUDA_THREADS, 0, cb->stream>>>(cb->ones, m, 1.0f);
    }
    const float one = 1.0f;
    if (cb->sgemv(cb->handle, CUBLAS_OP_N, n, m, &one, d, n, cb->ones, 1, &one, db, 1) != CUBLAS_STATUS_SUCCESS)
        cb->failed = 1;
}

__device__ float softplus_d(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

__global__ void k_bce(const float *z, const unsigned char *labels, size_t n, float pw, float scale, float *dz,
                      float *partial)
{
    __shared__ float red[TR_CUDA_THREADS];
    float acc = 0.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float pos = labels[i] == TR_LABEL_POS, neg = labels[i] == TR_LABEL_NEG;
        float w = pos * pw + neg, s = 1.0f / (1.0f + expf(-z[i]));
        acc += w * softplus_d(pos != 0.0f ? -z[i] : z[i]);
        dz[i] = scale * w * (s - pos);
    }
    red[threadIdx.x] = acc;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s)
            red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0)
        partial[blockIdx.x] = red[0];
}

static double cu_bce(tr_backend_t *be, const float *z, const uint8_t *labels, size_t n, float pw, float scale,
                     float *dz)
{
    cuda_be_t *cb = C(be);
    if (!n)
        return 0.0;
    int grid = grid_for(n);
    k_bce<<<grid, TR_CUDA_THREADS, 0, cb->stream>>>(z, labels, n, pw, scale, dz, cb->partial);
    check(cb, cudaGetLastError());
    check(cb, cudaMemcpyAsync(cb->partial_h, cb->partial, (size_t)grid * sizeof(float), cudaMemcpyDeviceToHost,
                              cb->stream));
    check(cb, cudaStreamSynchronize(cb->stream));
    double loss = 0.0;
    for (int i = 0; i < grid; i++)
        loss += cb->partial_h[i];
    return loss;
}

__global__ void k_adam(float *p, const float *g, float *m, float *v, size_t n, float lr, float b1, float b2,
                       float eps, float c1, float c2)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float mi = b1 * m[i] + (1.0f - b1) * g[i];
        float vi = b2 * v[i] + (1.0f - b2) * g[i] * g[i];
        m[i] = mi;
        v[i] = vi;
        p[i] -= lr * (mi * c1) / (sqrtf(vi * c2) + eps);
    }
}

static void cu_adam(tr_backend_t *be, float *p, const float *g, float *m, float *v, size_t n, float lr, float b1,
                    float b2, float eps, int64_t step)
{
    float c1 = 1.0f / (1.0f - powf(b1, (float)step)), c2 = 1.0f / (1.0f - powf(b2, (float)step));
    k_adam<<<grid_for(n), TR_CUDA_THREADS, 0, C(be)->stream>>>(p, g, m, v, n, lr, b1, b2, eps, c1, c2);
    check(C(be), cudaGetLastError());
}

static void cu_destroy(tr_backend_t *be)
{
    cuda_be_t *cb = C(be);
    if (cb->stream)
        cudaStreamSynchronize(cb->stream);
    if (cb->handle)
        cb->destroy(cb->handle);
    if (cb->ones)
        cudaFree(cb->ones);
    if (cb->partial)
        cudaFree(cb->partial);
    if (cb->partial_h)
        cudaFreeHost(cb->partial_h);
    if (cb->stream)
        cudaStreamDestroy(cb->stream);
    if (cb->dl)
        dlclose(cb->dl);
    free(cb);
}

extern "C" tr_backend_t *tr_backend_cuda_create(int device, char *err, size_t errlen)
{
    cuda_be_t *cb = (cuda_be_t *)calloc(1, sizeof *cb);
    if (!cb) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    const char *names[] = {getenv("HASHATTN_CUBLAS"), "libcublas.so.13", "libcublas.so.12", "libcublas.so"};
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !cb->dl; i++)
        if (names[i] && *names[i])
            cb->dl = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (!cb->dl) {
        snprintf(err, errlen, "cannot load cuBLAS (libcublas.so.13 or .12; set HASHATTN_CUBLAS): %s", dlerror());
        free(cb);
        return NULL;
    }
    create_fn create = (create_fn)dlsym(cb->dl, "cublasCreate_v2");
    set_stream_fn set_stream = (set_stream_fn)dlsym(cb->dl, "cublasSetStream_v2");
    set_math_fn set_math = (set_math_fn)dlsym(cb->dl, "cublasSetMathMode");
    cb->destroy = (destroy_fn)dlsym(cb->dl, "cublasDestroy_v2");
    cb->sgemm = (sgemm_fn)dlsym(cb->dl, "cublasSgemm_v2");
    cb->sgemv = (sgemv_fn)dlsym(cb->dl, "cublasSgemv_v2");
    cudaError_t e;
    if (!create || !set_stream || !set_math || !cb->destroy || !cb->sgemm || !cb->sgemv) {
        snprintf(err, errlen, "the loaded cuBLAS lacks a needed function");
    } else if ((e = cudaSetDevice(device)) != cudaSuccess ||
               (e = cudaStreamCreateWithFlags(&cb->stream, cudaStreamNonBlocking)) != cudaSuccess ||
               (e = cudaMalloc((void **)&cb->partial, TR_CUDA_BLOCKS * sizeof(float))) != cudaSuccess ||
               (e = cudaMallocHost((void **)&cb->partial_h, TR_CUDA_BLOCKS * sizeof(float))) != cudaSuccess) {
        snprintf(err, errlen, "CUDA device %d: %s", device, cudaGetErrorString(e));
    } else if (create(&cb->handle) != CUBLAS_STATUS_SUCCESS || set_stream(cb->handle, cb->stream) != CUBLAS_STATUS_SUCCESS ||
               set_math(cb->handle, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS handle creation failed");
    } else {
        tr_backend_t *b = &cb->base;
        b->name = "cuda";
        b->alloc = cu_alloc;
        b->release = cu_release;
        b->upload = cu_upload;
        b->download = cu_download;
        b->zero = cu_zero;
        b->gemm = cu_gemm;
        b->bias_act = cu_bias_act;
        b->act_grad = cu_act_grad;
        b->colsum = cu_colsum;
        b->bce = cu_bce;
        b->adam = cu_adam;
        b->destroy = cu_destroy;
        return b;
    }
    cu_destroy(&cb->base);
    return NULL;
}

extern "C" int tr_backend_cuda_failed(tr_backend_t *be)
{
    cuda_be_t *cb = C(be);
    cudaError_t e = cudaStreamSynchronize(cb->stream);
    return cb->failed || e != cudaSuccess;
}
