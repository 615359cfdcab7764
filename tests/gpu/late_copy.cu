/*
 * late_copy.cu - a host's kernel for test_gpu's decode_after_host_kernel.
 *
 * A kernel launched after this one with programmatic stream serialisation
 * (the library's first decode launch) may start as soon as this one has
 * triggered, which it does first thing; it must then wait (griddepcontrol.
 * wait) before it reads what this kernel writes, which happens only after
 * delay_us. A library kernel that read the block tables or sequence lengths
 * before its wait would see the values from before the copy.
 */
#include <cuda_runtime.h>
#include <stdint.h>

#include "late_copy.h"

static __device__ uint64_t now_ns()
{
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

static __global__ void late_copy_kernel(uint8_t *d0, const uint8_t *s0, size_t n0, uint8_t *d1, const uint8_t *s1,
                                        size_t n1, uint64_t delay_ns)
{
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    if (threadIdx.x == 0) {
        const uint64_t t0 = now_ns();
        while (now_ns() - t0 < delay_ns) {
        }
    }
    __syncthreads();
    for (size_t i = threadIdx.x; i < n0; i += blockDim.x)
        d0[i] = s0[i];
    for (size_t i = threadIdx.x; i < n1; i += blockDim.x)
        d1[i] = s1[i];
}

extern "C" int ht_late_copy(void *stream, void *dst0, const void *src0, size_t n0, void *dst1, const void *src1,
                            size_t n1, unsigned delay_us)
{
    late_copy_kernel<<<1, 256, 0, (cudaStream_t)stream>>>((uint8_t *)dst0, (const uint8_t *)src0, n0,
                                                            (uint8_t *)dst1, (const uint8_t *)src1, n1,
                                                            (uint64_t)delay_us * 1000u);
    return (int)cudaGetLastError();
}
