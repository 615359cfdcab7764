/*
 * tp_cuda.cu - the CUDA side of tensor parallelism: the kernel that turns the
 * all-gather's [tp][num_seqs][Hq/tp][D] into the host's [num_seqs][Hq][D],
 * and the device helpers of comm.c (current device, warm-up scratch).
 */
#include <stdio.h>

#include <cuda_runtime.h>

#include "multi_gpu/tp.h"

namespace {

/* One thread moves 16 bytes (8 elements) when everything is 16-byte aligned,
 * else one element; grid-stride over all of them. */
template <typename V>
__global__ void scatter_kernel(const V *__restrict__ gather, char *__restrict__ out, int64_t st_tok_bytes,
                               int64_t st_head_bytes, int tp, int seqs, int heads, int vec_per_head,
                               int64_t total)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rest = i;
        const int v = (int)(rest % vec_per_head);
        rest /= vec_per_head;
        const int h = (int)(rest % heads);
        rest /= heads;
        const int s = (int)(rest % seqs);
        const int r = (int)(rest / seqs);
        V *dst = (V *)(out + s * st_tok_bytes + (int64_t)(r * heads + h) * st_head_bytes) + v;
        *dst = gather[i];
    }
}

void set_err(char *err, size_t errlen, const char *what, cudaError_t e)
{
    if (err && errlen)
        snprintf(err, errlen, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

} // namespace

extern "C" {

ha_kernel_status_t ha_cuda_tp_scatter(const ha_tp_scatter_params_t *p)
{
    int old = -1;
    if (ha_cuda_tp_enter(p->device, &old))
        return HA_KERNEL_DEVICE_ERROR;
    const int es = 2;
    const int64_t stb = p->out_stride_token * es, shb = p->out_stride_head * es;
    const bool vec = ((uintptr_t)p->gather & 15u) == 0 && ((uintptr_t)p->out & 15u) == 0 && stb % 16 == 0 &&
                     shb % 16 == 0 && (p->head_dim * es) % 16 == 0;
    const int per_head = vec ? p->head_dim * es / 16 : p->head_dim;
    const int64_t total = (int64_t)p->tp * p->num_seqs * p->heads * per_head;
    const int threads = 256;
    const int64_t want = (total + threads - 1) / threads;
    const int blocks = (int)(want < 4096 ? want : 4096);
    cudaStream_t s = (cudaStream_t)p->stream;
    if (vec)
        scatter_kernel<uint4><<<blocks, threads, 0, s>>>((const uint4 *)p->gather, (char *)p->out, stb, shb, p->tp,
                                                         p->num_seqs, p->heads, per_head, total);
    else
        scatter_kernel<unsigned short><<<blocks, threads, 0, s>>>((const unsigned short *)p->gather, (char *)p->out,
                                                                  stb, shb, p->tp, p->num_seqs, p->heads, per_head,
                                                                  total);
    const cudaError_t e = cudaGetLastError();
    ha_cuda_tp_leave(old);
    return e == cudaSuccess ? HA_KERNEL_OK : HA_KERNEL_DEVICE_ERROR;
}

int ha_cuda_tp_enter(int device, int *old)
{
    *old = -1;
    int cur = -1;
    if (cudaGetDevice(&cur) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    if (cur == device)
        return 0;
    if (cudaSetDevice(device) != cudaSuccess) {
        (void)cudaGetLastError();
        return -1;
    }
    *old = cur;
    return 0;
}

void ha_cuda_tp_leave(int old)
{
    if (old >= 0)
        cudaSetDevice(old);
}

ha_kernel_status_t ha_cuda_tp_scratch(int device, size_t bytes, void **buf, void **stream, char *err, size_t errlen)
{
    *buf = NULL;
    *stream = NULL;
    int old = -1;
    if (ha_cuda_tp_enter(device, &old)) {
        set_err(err, errlen, "cudaSetDevice", cudaErrorInvalidDevice);
        return HA_KERNEL_DEVICE_ERROR;
    }
    cudaStream_t s = NULL;
    cudaError_t e = cudaMalloc(buf, bytes);
    if (e == cudaSuccess)
        e = cudaMemset(*buf, 0, bytes);
    if (e == cudaSuccess)
        e = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        set_err(err, errlen, "warm-up scratch", e);
        if (*buf)
            cudaFree(*buf);
        *buf = NULL;
        (void)cudaGetLastError();
    }
    *stream = s;
    ha_cuda_tp_leave(old);
    return e == cudaSuccess ? HA_KERNEL_OK : HA_KERNEL_DEVICE_ERROR;
}

int ha_cuda_tp_stream_done(void *stream, char *err, size_t errlen)
{
    const cudaError_t e = cudaStreamQuery((cudaStream_t)stream);
    if (e == cudaSuccess)
        return 1;
    if (e == cudaErrorNotReady)
        return 0;
    set_err(err, errlen, "cudaStreamQuery", e);
    (void)cudaGetLastError();
    return -1;
}

void ha_cuda_tp_scratch_free(int device, void *buf, void *stream)
{
    int old = -1;
    if (ha_cuda_tp_enter(device, &old))
        return;
    /* after an abort the kernels have returned; if they have not, leak the
     * buffer rather than wait forever (cudaFree would synchronise) */
    const bool idle = !stream || cudaStreamQuery((cudaStream_t)stream) != cudaErrorNotReady;
    if (idle) {
        if (stream)
            cudaStreamDestroy((cudaStream_t)stream);
        if (buf)
            cudaFree(buf);
    }
    (void)cudaGetLastError();
    ha_cuda_tp_leave(old);
}

} /* extern "C" */
