/*
 * cuda_exec.h - the CUDA executor (cuda_exec.cu, built with
 * HASHATTN_WITH_CUDA): the whole forward pass on one GPU with cuBLAS and a
 * few small kernels, attention through the plugin on a kDLCUDA context,
 * sampling on the device, pure-decode steps replayed from CUDA graphs.
 */
#ifndef HASHATTN_RUNNER_CUDA_EXEC_H
#define HASHATTN_RUNNER_CUDA_EXEC_H

#include "exec.h"
#include "plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rn_cuda_config {
    int device;            /* GPU ordinal */
    int weights_bf16;      /* 0: float32 weights (fp32 GEMMs, no TF32); 1: bfloat16 weights and GEMM inputs */
    int kv_dtype;          /* RN_DT_BF16 (default) or RN_DT_F16: q/k/v/output and caches of the plugin */
    int graphs;            /* 1: capture pure-decode steps in CUDA graphs */
    int no_fused;          /* 1: never the fused kernels of cuda_fused.cuh (steps of <= 32 rows,
                              bf16 weights): RMSNorm, GEMM and RoPE/SwiGLU as separate launches */
    int decode_qhash;      /* 1: decode hashes its queries itself; 0: cache_write hashes them in its
                              launch and decode takes the signatures (ABI 1.2; older libraries: 1) */
    int cublas_proj;       /* 1: the O and down projections of fused steps stay cuBLAS GEMMs */
    int no_pdl;            /* 1: the fused kernels are not chained to the kernel before by PDL */
    int32_t block_size, num_blocks;
    int max_seqs, max_tokens;
    int32_t max_blocks;
    int width_round;       /* block-table widths rounded to this many blocks (graph reuse) */
    rn_plugin_config_t plugin; /* shape, device and dtype are filled in here */
    /* tensor parallelism (rn_exec_cuda_create_tp fills these): attention on
     * this rank's heads through a TP context, everything else replicated */
    int tp_rank, tp_size;      /* 0, 0 = one GPU */
} rn_cuda_config_t;

/* Upload m's weights (m may be freed afterwards) and create everything.
 * 0, or -1 with err. */
int rn_exec_cuda_create(const rn_model_t *m, const rn_cuda_config_t *cfg, rn_exec_t **out, char *err, size_t errlen);

/* The same over `tp` GPUs (cfg->device .. cfg->device + tp - 1), tp dividing
 * the model's KV heads: one executor per GPU, each running the whole model
 * except attention, which runs on its rank's heads through a tensor-parallel
 * plugin context (the gathered decode output; prefill outputs summed with the
 * plugin's all_reduce over zeroed other heads, which is exact). A step runs on
 * every rank at once (one host thread per rank) and rank 0's tokens are
 * returned; the ranks compute the same tokens. Hash mode needs a weights file
 * (random weights are refused). tp = 1 is rn_exec_cuda_create. */
int rn_exec_cuda_create_tp(const rn_model_t *m, const rn_cuda_config_t *cfg, int tp, rn_exec_t **out, char *err,
                           size_t errlen);

/* 1 when random hash weights were bound. */
int rn_exec_cuda_random_weights(const rn_exec_t *e);

/* 1 when steps of <= 32 rows run cuda_fused.cuh's fused kernels. */
int rn_exec_cuda_fused(const rn_exec_t *e);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_RUNNER_CUDA_EXEC_H */
