/*
 * common.cuh - pieces shared by the CUDA kernels (internal, never installed).
 *
 * Element types and 16-byte row chunks, cp.async, programmatic dependent
 * launch (PDL), block scans, the one dtype x head-dim dispatch macro, the
 * launch helper and the error bookkeeping that ha_cuda_check reports.
 */
#ifndef HASHATTN_KERNELS_CUDA_COMMON_CUH
#define HASHATTN_KERNELS_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/tuning.h"
#include "kernels/params.h"

namespace ha {

/* ------------------------------------------------------------------------- */
/* Errors                                                                     */
/* ------------------------------------------------------------------------- */

/* Records the first failure of a launcher (per host thread) so that
 * ha_cuda_check can name it even after cudaGetLastError cleared it. */
void note_error(cudaError_t e, const char *where);

#define HA_CUDA_TRY(...)                                    \
    do {                                                    \
        cudaError_t e_ = (__VA_ARGS__);                     \
        if (e_ != cudaSuccess) {                            \
            ::ha::note_error(e_, #__VA_ARGS__);             \
            return HA_KERNEL_DEVICE_ERROR;                  \
        }                                                   \
    } while (0)

/* ------------------------------------------------------------------------- */
/* Dispatch: the one place where runtime dtype and head dim become templates */
/* ------------------------------------------------------------------------- */

/* HA_DISPATCH(dtype, head_dim, T, D, body): body sees `T` (element type) and
 * `D` (constexpr head dim). Anything not built returns HA_KERNEL_UNSUPPORTED. */
#define HA_DISPATCH_D_(T_, dim, D, ...)                   \
    switch (dim) {                                        \
    case 64: {                                            \
        using T = T_;                                     \
        constexpr int D = 64;                             \
        __VA_ARGS__;                                      \
    } break;                                              \
    case 128: {                                           \
        using T = T_;                                     \
        constexpr int D = 128;                            \
        __VA_ARGS__;                                      \
    } break;                                              \
    default: return HA_KERNEL_UNSUPPORTED;                \
    }

#define HA_DISPATCH(dtype, dim, T, D, ...)                                   \
    switch (dtype) {                                                         \
    case HA_DTYPE_F16: HA_DISPATCH_D_(__half, dim, D, __VA_ARGS__) break;    \
    case HA_DTYPE_BF16: HA_DISPATCH_D_(__nv_bfloat16, dim, D, __VA_ARGS__) break; \
    default: return HA_KERNEL_UNSUPPORTED;                                   \
    }

/* Group heads per attention block: a power of two >= min(G, 8). */
#define HA_DISPATCH_GH(gh, GH, ...)                           \
    switch (gh) {                                             \
    case 1: { constexpr int GH = 1; __VA_ARGS__; } break;     \
    case 2: { constexpr int GH = 2; __VA_ARGS__; } break;     \
    case 4: { constexpr int GH = 4; __VA_ARGS__; } break;     \
    case 8: { constexpr int GH = 8; __VA_ARGS__; } break;     \
    default: return HA_KERNEL_UNSUPPORTED;                    \
    }

/* ------------------------------------------------------------------------- */
/* Elements                                                                   */
/* ------------------------------------------------------------------------- */

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x)
{
    return __float2bfloat16_rn(x);
}

/* 8 elements (16 bytes) -> 8 floats. */
template <typename T> __device__ __forceinline__ void unpack8(const uint4 &v, float (&f)[8]);
template <> __device__ __forceinline__ void unpack8<__nv_bfloat16>(const uint4 &v, float (&f)[8])
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        f[2 * i] = __uint_as_float(w[i] << 16);
        f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}
template <> __device__ __forceinline__ void unpack8<__half>(const uint4 &v, float (&f)[8])
{
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __half2 h;
        memcpy(&h, &w[i], 4);
        const float2 x = __half22float2(h);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

/* ------------------------------------------------------------------------- */
/* cp.async and PDL                                                           */
/* ------------------------------------------------------------------------- */

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void *smem, const void *gmem)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* A kernel launched with programmatic stream serialisation may start before
 * the previous kernel of the stream ends; it must wait here before reading
 * what that kernel wrote. Without the attribute both are no-ops. */
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
__device__ __forceinline__ void pdl_launch_dependents()
{
    asm volatile("griddepcontrol.launch_dependents;\n" ::);
}

/* ------------------------------------------------------------------------- */
/* Scans                                                                      */
/* ------------------------------------------------------------------------- */

__device__ __forceinline__ int warp_incl_scan(int x)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o)
            x += y;
    }
    return x;
}

__device__ __forceinline__ int warp_sum(int x)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

/* Exclusive scan of NV values per thread across the block (blockDim.x a
 * multiple of 32, at most 1024). sm: NV * 32 ints of shared memory. Every
 * thread gets its exclusive prefix in v[] and the block totals in tot[]. */
template <int NV>
__device__ __forceinline__ void block_excl_scan(int (&v)[NV], int (&tot)[NV], int *sm)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int incl[NV];
#pragma unroll
    for (int k = 0; k < NV; k++) {
        incl[k] = warp_incl_scan(v[k]);
        if (lane == 31)
            sm[k * 32 + warp] = incl[k];
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < NV; k++) {
        int before = 0, all = 0;
        for (int w = 0; w < nw; w++) {
            const int x = sm[k * 32 + w];
            before += w < warp ? x : 0;
            all += x;
        }
        v[k] = incl[k] - v[k] + before;
        tot[k] = all;
    }
    __syncthreads();
}

/* ------------------------------------------------------------------------- */
/* Launching                                                                  */
/* ------------------------------------------------------------------------- */

/* Launch `kernel` on `stream`, with programmatic stream serialisation when
 * pdl is set (the kernel then calls pdl_wait before its dependent reads). */
template <typename... KArgs, typename... Args>
__host__ cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                            cudaStream_t stream, bool pdl, Args &&...args)
{
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...);
}

/* Allow `bytes` of dynamic shared memory for kernel (above 48 KB it must be
 * asked for). The attribute is set once per kernel and device (to the
 * device's opt-in maximum), so calls during graph capture touch nothing. */
cudaError_t allow_smem_fn(const void *kernel, size_t bytes);
template <typename K> __host__ cudaError_t allow_smem(K kernel, size_t bytes)
{
    return allow_smem_fn(reinterpret_cast<const void *>(kernel), bytes);
}

/* Multiprocessors of the current device (cached per device). */
int sm_count();

/* The tuning knobs (kernels/cuda/tuning.h) currently in force. */
const ha_cuda_tuning_t &tuning();

__host__ __forceinline__ size_t align_up(size_t x, size_t a) { return (x + a - 1) / a * a; }
__host__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
__host__ __forceinline__ int pow2_ceil(int64_t x)
{
    int p = 1;
    while (p < x)
        p <<= 1;
    return p;
}

/* Runs on the context's device: the launchers switch to it and back
 * (cudaSetDevice is not a stream operation, so this is capture-safe). */
struct DeviceGuard {
    int old = -1;
    bool ok = true;
    explicit DeviceGuard(int device)
    {
        int cur = 0;
        if (cudaGetDevice(&cur) != cudaSuccess) {
            ok = false;
            return;
        }
        if (cur != device) {
            if (cudaSetDevice(device) != cudaSuccess) {
                ok = false;
                return;
            }
            old = cur;
        }
    }
    ~DeviceGuard()
    {
        if (old >= 0)
            cudaSetDevice(old);
    }
};

/* 16-byte alignment of a pointer and of element strides of elem-byte items. */
__host__ __forceinline__ bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }
__host__ __forceinline__ bool stride16(int64_t s, int elem) { return ((s * elem) & 15) == 0; }

} // namespace ha

#endif /* HASHATTN_KERNELS_CUDA_COMMON_CUH */
