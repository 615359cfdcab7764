/*
 * device.cu - device helpers of the CUDA backend: device count, weight
 * copies, error reporting, workspace sizes and the tuning knobs.
 *
 * Nothing here prints; without a driver or a GPU ha_cuda_device_count is 0.
 */
#include <stdio.h>
#include <string.h>

#include <mutex>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/plan.cuh"

namespace ha {

static thread_local char g_err[320];

void note_error(cudaError_t e, const char *where)
{
    if (g_err[0])
        return; /* keep the first: later ones are usually consequences */
    snprintf(g_err, sizeof g_err, "%s (%s) in %s", cudaGetErrorString(e), cudaGetErrorName(e), where);
}

int sm_count()
{
    static int cache[64];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0)
        return 132;
    if (dev < 64 && cache[dev] > 0)
        return cache[dev];
    int v = 0;
    if (cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || v <= 0)
        v = 132;
    if (dev < 64)
        cache[dev] = v;
    return v;
}

static const ha_cuda_tuning_t kDefaults = {
    1,    /* pdl */
    2,    /* dense_waves */
    4,    /* sparse_waves */
    1024, /* sparse_chunk_min */
    2048, /* sparse_chunk_max */
    0,    /* dense_chunk */
    0,    /* sparse_chunk */
    0,    /* select_only */
};
static ha_cuda_tuning_t g_tuning = kDefaults;

const ha_cuda_tuning_t &tuning() { return g_tuning; }

cudaError_t allow_smem_fn(const void *kernel, size_t bytes)
{
    struct Entry {
        const void *fn;
        int dev;
    };
    static std::mutex mu;
    static Entry done[512];
    static int ndone;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess)
        return e;
    std::lock_guard<std::mutex> lock(mu);
    for (int i = 0; i < ndone; i++)
        if (done[i].fn == kernel && done[i].dev == dev)
            return cudaSuccess;
    int max_optin = 0;
    e = cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess)
        return e;
    cudaFuncAttributes fa;
    e = cudaFuncGetAttributes(&fa, kernel);
    if (e != cudaSuccess)
        return e;
    const int dyn_max = max_optin - (int)fa.sharedSizeBytes; /* static + dynamic <= opt-in */
    if (dyn_max < 0 || (size_t)dyn_max < bytes)
        return cudaErrorInvalidValue;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dyn_max);
    if (e == cudaSuccess && ndone < 512)
        done[ndone++] = Entry{kernel, dev};
    return e;
}

static void set_msg(char *err, size_t errlen, const char *what, cudaError_t e)
{
    if (err && errlen)
        snprintf(err, errlen, "%s: %s (%s)", what, cudaGetErrorString(e), cudaGetErrorName(e));
}

} // namespace ha

using namespace ha;

extern "C" {

void ha_cuda_set_tuning(const ha_cuda_tuning_t *t) { g_tuning = t ? *t : kDefaults; }
void ha_cuda_get_tuning(ha_cuda_tuning_t *t)
{
    if (t)
        *t = g_tuning;
}

int ha_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0 ? n : 0;
}

ha_kernel_status_t ha_cuda_alloc_copy(int device, void **dst, const void *host_src, size_t bytes, char *err,
                                      size_t errlen)
{
    int old = -1;
    cudaError_t e = cudaGetDevice(&old);
    if (e == cudaSuccess && old != device)
        e = cudaSetDevice(device);
    if (e != cudaSuccess) {
        set_msg(err, errlen, "cudaSetDevice", e);
        (void)cudaGetLastError();
        return HA_KERNEL_DEVICE_ERROR;
    }
    void *p = NULL;
    e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e == cudaSuccess && bytes)
        e = cudaMemcpy(p, host_src, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        set_msg(err, errlen, p ? "cudaMemcpy" : "cudaMalloc", e);
        if (p)
            cudaFree(p);
        (void)cudaGetLastError();
        p = NULL;
    }
    if (old >= 0 && old != device)
        cudaSetDevice(old);
    *dst = p;
    return p ? HA_KERNEL_OK : HA_KERNEL_DEVICE_ERROR;
}

void ha_cuda_free(int device, void *ptr)
{
    if (!ptr)
        return;
    int old = -1;
    if (cudaGetDevice(&old) != cudaSuccess)
        return;
    if (old != device)
        cudaSetDevice(device);
    cudaFree(ptr);
    if (old != device)
        cudaSetDevice(old);
}

/* Non-blocking: reports an error recorded by a launcher of this thread or
 * the runtime's last error (launch failures, sticky faults already seen). */
ha_kernel_status_t ha_cuda_check(int device, char *err, size_t errlen)
{
    (void)device;
    const cudaError_t e = cudaGetLastError();
    if (g_err[0]) {
        if (err && errlen)
            snprintf(err, errlen, "%s", g_err);
        g_err[0] = 0;
        return HA_KERNEL_DEVICE_ERROR;
    }
    if (e != cudaSuccess) {
        set_msg(err, errlen, "CUDA", e);
        return HA_KERNEL_DEVICE_ERROR;
    }
    return HA_KERNEL_OK;
}

size_t ha_cuda_workspace_size(int op, const ha_workspace_bounds_t *b)
{
    switch (op) {
    case 0: /* HASHATTN_OP_CACHE_WRITE */
        return cache_write_bytes(b->max_num_tokens);
    case 1: /* HASHATTN_OP_DECODE */
        if (b->max_num_seqs <= 0)
            return 0;
        return decode_layout(b->max_num_seqs, b->num_q_heads, b->num_kv_heads, b->head_dim,
                             (int64_t)b->max_blocks_per_seq * b->block_size)
            .total;
    case 2: /* HASHATTN_OP_PREFILL */
        return prefill_partials_bytes(b->max_num_tokens, b->num_q_heads, b->head_dim);
    default: /* HASHATTN_OP_HASH */
        return 0;
    }
}

} /* extern "C" */
