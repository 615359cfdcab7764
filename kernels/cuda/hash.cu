/*
 * hash.cu - ha_cuda_hash: the hash MLP on arbitrary vectors (mlp.cuh).
 * signatures[t, o] = MLP_o(input[t, o / group]), bit-identical to the CPU.
 */
#include "kernels/cuda/mlp.cuh"

using namespace ha;

extern "C" ha_kernel_status_t ha_cuda_hash(const ha_hash_params_t *p)
{
    if (p->num_tokens <= 0 || p->num_out_heads <= 0)
        return HA_KERNEL_OK;
    if (p->mlp.dim != p->head_dim || !p->mlp.w1)
        return HA_KERNEL_UNSUPPORTED;
    DeviceGuard guard(p->device);
    if (!guard.ok) {
        note_error(cudaGetLastError(), "ha_cuda_hash: selecting the stream's device");
        return HA_KERNEL_DEVICE_ERROR;
    }
    const HashArgs h = hash_args_of(*p);
    cudaStream_t st = (cudaStream_t)p->stream;
    switch (p->dtype) {
    case HA_DTYPE_F32: return launch_hash<float>(h, p->num_out_heads, st, false);
    case HA_DTYPE_F16: return launch_hash<__half>(h, p->num_out_heads, st, false);
    case HA_DTYPE_BF16: return launch_hash<__nv_bfloat16>(h, p->num_out_heads, st, false);
    default: return HA_KERNEL_UNSUPPORTED;
    }
}
