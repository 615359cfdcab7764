/*
 * params.h - the contract between the plugin and its kernels.
 *
 * The plugin validates every argument against the public ABI, resolves
 * DLTensors to plain pointers and element strides, applies defaults and then
 * calls one launcher per operation with one of these params structs. Each
 * launcher exists twice with the same meaning: ha_cpu_<op> in kernels/cpu/
 * (the reference) and ha_cuda_<op> in kernels/cuda/. Kernels may assume the
 * params are valid (shapes consistent; on the CPU backend the plugin has also
 * checked every block id, slot and sequence length); the CUDA kernels check
 * the values that live on the device (block_tables, slot_mapping, seq_lens)
 * against num_blocks and report bad ones through ha_cuda_check. They never
 * allocate and take scratch memory only from `workspace`.
 *
 * Conventions:
 *  - all strides are in elements; the innermost (head_dim) stride is 1;
 *  - "rows" tensors are [n, H, D] with strides (stride_token, stride_head, 1);
 *  - signature caches are paged views of uint32 with stride_token = 1;
 *  - hash weights are float32, contiguous, already offset to the call's layer:
 *      w1 [H, m, D], b1 [H, m], w2 [H, m, m], b2 [H, m], w3 [H, 32, m], b3 [H, 32]
 *    (torch Linear: y = W x + b), living on the kernel's device;
 *  - query head h belongs to KV head h / group; its signature head is h with
 *    the paper's layout (sig_per_kv_head = 0) and h / group when compact;
 *  - the MLP's SiLU is ha_silu from kernels/hash_math.h on both backends, with
 *    every multiply-add an explicit fmaf in ascending input order, so that
 *    signatures are bit-identical across backends.
 */
#ifndef HASHATTN_KERNELS_PARAMS_H
#define HASHATTN_KERNELS_PARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "kvcache/paged.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ha_dtype { HA_DTYPE_F32 = 0, HA_DTYPE_F16 = 1, HA_DTYPE_BF16 = 2 } ha_dtype_t;

/* Result of a launcher. A kernel never fails on valid params except through
 * the device (HA_KERNEL_DEVICE_ERROR) or an unsupported variant. */
typedef enum ha_kernel_status {
    HA_KERNEL_OK = 0,
    HA_KERNEL_UNSUPPORTED = 1, /* e.g. a head_dim the CUDA templates do not cover */
    HA_KERNEL_DEVICE_ERROR = 2,
    HA_KERNEL_WORKSPACE_TOO_SMALL = 3
} ha_kernel_status_t;

/* [n, H, D] tensor of dtype elements. */
typedef struct ha_rows_view {
    void *data;
    int64_t stride_token;
    int64_t stride_head;
} ha_rows_view_t;

/* One side's hash MLPs for one layer (see the header comment). */
typedef struct ha_mlp {
    const float *w1, *b1, *w2, *b2, *w3, *b3;
    int32_t num_heads; /* H */
    int32_t width;     /* m */
    int32_t dim;       /* D */
} ha_mlp_t;

/* Budget after defaults are applied. */
typedef struct ha_budget {
    int32_t sink;        /* I */
    int32_t recent;      /* R >= 1 */
    int32_t heavy_count; /* >= 0: K; < 0: use heavy_fraction */
    float heavy_fraction;
    int32_t dense_below; /* > 0: sequences with n < dense_below are dense */
} ha_budget_t;

/* Heavy budget K for a sequence of n tokens (host and device). */
#if defined(__CUDACC__)
__host__ __device__ __forceinline__
#else
static inline
#endif
int64_t ha_heavy_budget(const ha_budget_t *b, int64_t n)
{
    if (b->heavy_count >= 0)
        return b->heavy_count;
    return (int64_t)((double)b->heavy_fraction * (double)n);
}

/* ---- hash ---- */
typedef struct ha_hash_params {
    ha_dtype_t dtype;
    int32_t num_tokens;
    int32_t num_in_heads;   /* Hq (query side) or Hkv (key side) */
    int32_t num_out_heads;  /* Hq or Hsig */
    int32_t group;          /* output head o reads input head o / group */
    int32_t head_dim;
    ha_rows_view_t input;   /* [n, num_in_heads, D] */
    uint32_t *signatures;   /* [n, num_out_heads] */
    int64_t sig_stride_token;
    int64_t sig_stride_head;
    ha_mlp_t mlp;           /* num_heads = num_out_heads */
    void *workspace;
    size_t workspace_size;
    void *stream;
    int32_t device;       /* CUDA ordinal of the context (0 on the CPU) */
} ha_hash_params_t;

/* ---- cache_write ---- */
typedef struct ha_cache_write_params {
    ha_dtype_t dtype;
    int32_t num_tokens;
    int32_t num_kv_heads;
    int32_t num_sig_heads; /* Hq (paper) or Hkv (compact) */
    int32_t group;         /* G = Hq / Hkv */
    int32_t sig_per_kv_head;
    int32_t head_dim;
    int32_t block_size;
    int32_t write_kv;      /* 0: signatures only */
    ha_rows_view_t key;    /* [num_tokens, Hkv, D] */
    ha_rows_view_t value;  /* [num_tokens, Hkv, D] (unused when !write_kv) */
    ha_paged_view_t key_cache, value_cache; /* dtype */
    ha_paged_view_t sig_cache;              /* uint32, stride_token 1 */
    const int64_t *slot_mapping;            /* [num_tokens], < 0 = skip */
    ha_mlp_t key_mlp;                       /* num_heads = num_sig_heads */
    void *workspace;
    size_t workspace_size;
    void *stream;
    int32_t device;       /* CUDA ordinal of the context (0 on the CPU) */
    int64_t num_blocks;   /* blocks of the caches: the CUDA kernels check slots against it */
    /* 1.2: the step's queries hashed in the same work (query side, group 1;
     * workspace and stream the call's); num_tokens 0 = none. num_tokens
     * above may then be 0. */
    ha_hash_params_t query_hash;
} ha_cache_write_params_t;

/* ---- decode ---- */
typedef struct ha_decode_params {
    ha_dtype_t dtype;
    int32_t num_seqs;
    int32_t num_q_heads;
    int32_t num_kv_heads;
    int32_t num_sig_heads;
    int32_t group;
    int32_t sig_per_kv_head;
    int32_t group_selection; /* 1: one selection per KV head (sum of G scores) */
    int32_t dense;           /* 1: attend to every token */
    int32_t head_dim;
    int32_t block_size;
    float scale;             /* softmax scale */
    ha_budget_t budget;
    ha_rows_view_t query;    /* [num_seqs, Hq, D] */
    ha_rows_view_t output;   /* [num_seqs, Hq, D] */
    ha_paged_view_t key_cache, value_cache, sig_cache;
    const int32_t *block_tables; /* [num_seqs, max_blocks_per_seq] */
    int64_t block_table_stride;  /* elements between rows */
    int32_t max_blocks_per_seq;
    const int32_t *seq_lens;     /* [num_seqs] */
    ha_mlp_t query_mlp;          /* num_heads = Hq */
    /* optional inspection outputs, NULL when not wanted */
    int32_t *sel_indices;        /* [num_seqs, Hsel, sel_cap] */
    int64_t sel_stride_seq, sel_stride_head;
    int32_t sel_cap;
    int32_t *sel_counts;         /* [num_seqs, Hsel] */
    int64_t cnt_stride_seq, cnt_stride_head;
    void *workspace;
    size_t workspace_size;
    void *stream;
    int32_t device;       /* CUDA ordinal of the context (0 on the CPU) */
    int64_t num_blocks;   /* blocks of the caches: the CUDA kernels check block ids against it */
    /* 1.2: the queries' signatures given by the host ([num_seqs, Hq], rows
     * qsig_stride words apart): the query MLPs are not run. NULL: hash query. */
    const uint32_t *query_sigs;
    int64_t qsig_stride;
} ha_decode_params_t;

/* ---- prefill ---- */
typedef struct ha_prefill_params {
    ha_dtype_t dtype;
    int32_t num_seqs;
    int32_t num_tokens;
    int32_t num_q_heads;
    int32_t num_kv_heads;
    int32_t group;
    int32_t head_dim;
    int32_t block_size;
    float scale;
    ha_rows_view_t query;   /* [num_tokens, Hq, D] */
    ha_rows_view_t output;  /* [num_tokens, Hq, D] */
    ha_paged_view_t key_cache, value_cache;
    const int32_t *block_tables;
    int64_t block_table_stride;
    int32_t max_blocks_per_seq;
    const int32_t *seq_lens;        /* [num_seqs] */
    const int32_t *query_start_loc; /* [num_seqs + 1] */
    void *workspace;
    size_t workspace_size;
    void *stream;
    int32_t device;       /* CUDA ordinal of the context (0 on the CPU) */
    int64_t num_blocks;   /* blocks of the caches: the CUDA kernels check block ids against it */
} ha_prefill_params_t;


/* Workspace bytes for each op, given the bounds (see hashattn_workspace_args). */
typedef struct ha_workspace_bounds {
    int32_t num_q_heads, num_kv_heads, num_sig_heads, head_dim, block_size, mlp_width;
    int32_t group_selection; /* the context's selection: 1 group, 0 per-head */
    int32_t max_num_seqs;
    int64_t max_num_tokens;
    int32_t max_blocks_per_seq;
} ha_workspace_bounds_t;

/* CPU reference backend (kernels/cpu/). */
size_t ha_cpu_workspace_size(int op, const ha_workspace_bounds_t *b);
ha_kernel_status_t ha_cpu_cache_write(const ha_cache_write_params_t *p);
ha_kernel_status_t ha_cpu_decode(const ha_decode_params_t *p);
ha_kernel_status_t ha_cpu_prefill(const ha_prefill_params_t *p);
ha_kernel_status_t ha_cpu_hash(const ha_hash_params_t *p);

/* CUDA backend (kernels/cuda/), built when HASHATTN_WITH_CUDA. */
size_t ha_cuda_workspace_size(int op, const ha_workspace_bounds_t *b);
/* What one call with exactly these sizes needs (<= the bound above). */
size_t ha_cuda_workspace_need(int op, const ha_workspace_bounds_t *b);
ha_kernel_status_t ha_cuda_cache_write(const ha_cache_write_params_t *p);
ha_kernel_status_t ha_cuda_decode(const ha_decode_params_t *p);
ha_kernel_status_t ha_cuda_prefill(const ha_prefill_params_t *p);
ha_kernel_status_t ha_cuda_hash(const ha_hash_params_t *p);

/* Device memory for the plugin's own copies (hash weights), outside the run
 * path. Each returns HA_KERNEL_OK or HA_KERNEL_DEVICE_ERROR and, on error,
 * writes CUDA's message into err[errlen]. */
int ha_cuda_device_count(void); /* 0 when no driver or no GPU; never fails */
ha_kernel_status_t ha_cuda_alloc_copy(int device, void **dst, const void *host_src, size_t bytes,
                                      char *err, size_t errlen);
void ha_cuda_free(int device, void *ptr);
/* Status of the device after earlier stream-ordered work (sticky errors,
 * device-side validation failures): HA_KERNEL_OK or HA_KERNEL_DEVICE_ERROR. */
ha_kernel_status_t ha_cuda_check(int device, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_KERNELS_PARAMS_H */
