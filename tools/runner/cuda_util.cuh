/*
 * cuda_util.cuh - the CUDA executor's device helpers: the bf16 type, dtype
 * conversions through float, a warp sum. Included inside a namespace after
 * cuda_bf16.h and cuda_fp16.h, by cuda_exec.cu and by the tests that run
 * cuda_fused.cuh's kernels on their own (tests/runner/test_fused_gpu.cu).
 */
typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
