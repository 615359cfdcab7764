/*
 * fill.cu - device-side random fills for the benchmark (no host round trip
 * for gigabytes of cache). Values are a hash of (seed, index): reproducible.
 */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

__device__ __forceinline__ uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

__global__ void fill_bf16_kernel(__nv_bfloat16 *p, size_t n, uint64_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint64_t h = mix64(seed ^ (i * 0x9e3779b97f4a7c15ull));
        const float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* [0, 1) */
        p[i] = __float2bfloat16_rn(2.0f * u - 1.0f);
    }
}

__global__ void fill_u32_kernel(uint32_t *p, size_t n, uint64_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        p[i] = (uint32_t)(mix64(seed ^ (i * 0x9e3779b97f4a7c15ull)) >> 16);
}

extern "C" int ha_bench_fill_bf16(void *p, size_t n, uint64_t seed)
{
    fill_bf16_kernel<<<4096, 256>>>((__nv_bfloat16 *)p, n, seed);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}

extern "C" int ha_bench_fill_u32(void *p, size_t n, uint64_t seed)
{
    fill_u32_kernel<<<4096, 256>>>((uint32_t *)p, n, seed);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}

/* The read flush (bench_decode --flush read): every 16-byte word of the
 * buffer read once, so that the L2 holds clean lines of it afterwards (a
 * memset leaves it full of dirty ones, written back during the timed work). */
__global__ void read_flush_kernel(const uint4 *p, size_t words, uint32_t *sink)
{
    uint32_t acc = 0u;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < words; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = p[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u) /* practically never: keeps the loads */
        *sink = acc;
}

extern "C" int ha_bench_read_flush(const void *p, size_t bytes, void *sink, cudaStream_t st)
{
    read_flush_kernel<<<1056, 256, 0, st>>>((const uint4 *)p, bytes / 16, (uint32_t *)sink);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}

/* A one-thread kernel that holds its stream until *flag >= value (a pinned,
 * mapped host word that the host sets) or about two seconds have passed, so
 * that work queued behind it on several GPUs starts at one moment
 * (bench_tp's queued timing). The timeout keeps a rank that never gets its
 * release (another rank failed) from hanging. */
__global__ void gate_kernel(const volatile int *flag, int value)
{
    uint64_t t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    for (;;) {
        if (*flag >= value)
            return;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t - t0 > 2000000000ull)
            return;
        __nanosleep(200);
    }
}

extern "C" int ha_bench_gate(const volatile int *flag, int value, cudaStream_t st)
{
    gate_kernel<<<1, 1, 0, st>>>(flag, value);
    return cudaGetLastError() == cudaSuccess ? 0 : -1;
}
