/*
 * internal.h - the plugin's private types: the context, error reporting,
 * args-struct reading and DLTensor validation.
 *
 * Flow of every call: read the caller's args struct (struct_size rules),
 * validate every tensor against the context (shape, dtype, strides, device,
 * and on the CPU the index values), fill a kernels/params.h struct, call the
 * backend's launcher, translate its status. Nothing is written before all
 * validation has passed, so a refused call leaves the caches untouched.
 */
#ifndef HASHATTN_PLUGIN_INTERNAL_H
#define HASHATTN_PLUGIN_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "hashattn/hashattn.h"
#include "kernels/params.h"

#define HA_ERROR_LEN 1024
#define HA_MAX_DIMS 8

typedef enum ha_backend { HA_BACKEND_CPU = 0, HA_BACKEND_CUDA = 1 } ha_backend_t;

/* Which MLP a weight block belongs to. */
enum { HA_SIDE_QUERY = 0, HA_SIDE_KEY = 1 };

struct hashattn_context {
    hashattn_context_config_t cfg; /* the caller's config with defaults applied */
    ha_backend_t backend;
    int32_t group;          /* G = Hq / Hkv */
    int32_t num_sig_heads;  /* Hq or Hkv */
    ha_dtype_t dtype;
    float scale;            /* softmax scale after the default */
    int32_t dense_below;    /* cfg.dense_below resolved: > 0 tokens, or 0 (never) */

    /* Hash weights, float32, both sides of every layer in one block
     * (ha_weights_offset gives the layout); a device copy on CUDA. */
    int weights_bound;
    float *host_weights;
    void *device_weights;
    size_t weights_floats;

    /* Tensor parallelism (multi_gpu/tp.c). cfg holds this rank's head counts
     * (num_q_heads = Hq / tp_size, ...), so every op works on the rank's
     * heads unchanged; the whole model's counts are kept here. */
    int32_t tp_rank, tp_size;       /* tp_size >= 1 after defaults */
    int32_t full_q_heads, full_kv_heads;
    void *comm;                     /* ncclComm_t or NULL */
    int comm_owned;                 /* 1: made by comm_create, freed with the context */
    int32_t comm_timeout_ms;

    char last_error[HA_ERROR_LEN];
    atomic_flag error_lock; /* taken while a message is copied into last_error */
};

/* ---- errors ---- */

/* Record a message on ctx (or, when ctx is NULL, on the calling thread) and
 * return `status`. Messages name the argument and the value. */
hashattn_status_t ha_fail(hashattn_context_t *ctx, hashattn_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
const char *ha_thread_error(void);

/* ---- args structs ---- */

/* Description of an args struct for the struct_size rules. fields lists
 * the [start, end) offsets of every top-level field in order; min_end is the end of the
 * last required field; known is sizeof the struct as this library has it
 * (trailing padding included, which a caller may leave uninitialised). */
typedef struct ha_field {
    size_t start, end;
} ha_field_t;

typedef struct ha_struct_desc {
    const char *name;
    const ha_field_t *fields;
    int num_fields;
    size_t min_end;
    size_t known;
} ha_struct_desc_t;

/* Copy the caller's struct (`src`, whose first field is struct_size) over
 * `dst`, which holds the defaults; fields past the caller's size keep their
 * default. Refuses NULL, short, misaligned and longer-with-nonzero-tail
 * structs. */
hashattn_status_t ha_read_struct(hashattn_context_t *ctx, const ha_struct_desc_t *desc,
                                 const void *src, void *dst);

/* decode's args description (ops.c), also read by the tensor-parallel decode (multi_gpu/tp.c) */
extern const ha_struct_desc_t ha_decode_desc;

/* ---- tensors ---- */

/* A validated DLTensor: data pointer with byte_offset applied, element
 * strides (compact ones filled in when strides is NULL). */
typedef struct ha_tensor {
    const DLTensor *t;
    char *data;
    int ndim;
    int64_t shape[HA_MAX_DIMS];
    int64_t strides[HA_MAX_DIMS];
} ha_tensor_t;

/* Where a tensor must live. */
typedef enum ha_where {
    HA_ON_CONTEXT = 0, /* the context's device */
    HA_ON_HOST = 1     /* host memory (kDLCPU or kDLCUDAHost) */
} ha_where_t;

/* Validate `t` (argument name `name` of operation `op`): not NULL, data not
 * NULL unless the tensor is empty, ndim, each shape entry (expected[i] < 0 =
 * any, filled in the result), dtype, device, innermost stride 1, strides not
 * negative. */
hashattn_status_t ha_check_tensor(hashattn_context_t *ctx, const char *op, const char *name,
                                  const DLTensor *t, int ndim, const int64_t *expected,
                                  DLDataType dtype, ha_where_t where, ha_tensor_t *out);

/* The dtype the context computes in, and fixed index dtypes. */
DLDataType ha_dl_dtype(ha_dtype_t dt);
extern const DLDataType HA_DL_INT32, HA_DL_INT64, HA_DL_UINT32, HA_DL_FLOAT32, HA_DL_BFLOAT16;
const char *ha_dtype_name(DLDataType dt, char buf[32]);

/* ---- weights ---- */

/* Float offset of (side, layer) in the weight block, and the MLP view of it
 * at `base` (host or device copy). */
size_t ha_weights_offset(const hashattn_context_t *ctx, int side, int layer);
size_t ha_weights_layer_floats(const hashattn_context_t *ctx, int side);
ha_mlp_t ha_weights_mlp(const hashattn_context_t *ctx, const float *base, int side, int layer);
/* Install a freshly built float32 block (takes ownership of `host`). */
hashattn_status_t ha_weights_install(hashattn_context_t *ctx, float *host, size_t floats);

/* ---- entry points (one per table slot) ---- */
hashattn_status_t ha_context_create(const hashattn_context_config_t *config, hashattn_context_t **out);
hashattn_status_t ha_context_destroy(hashattn_context_t *ctx);
hashattn_status_t ha_weights_bind(hashattn_context_t *ctx, const hashattn_weights_bind_args_t *args);
hashattn_status_t ha_weights_load(hashattn_context_t *ctx, const hashattn_weights_load_args_t *args);
hashattn_status_t ha_workspace_size(const hashattn_context_t *ctx, const hashattn_workspace_args_t *args,
                                    size_t *bytes);
hashattn_status_t ha_cache_write(hashattn_context_t *ctx, const hashattn_cache_write_args_t *args);
hashattn_status_t ha_decode(hashattn_context_t *ctx, const hashattn_decode_args_t *args);
hashattn_status_t ha_prefill(hashattn_context_t *ctx, const hashattn_prefill_args_t *args);
hashattn_status_t ha_hash(hashattn_context_t *ctx, const hashattn_hash_args_t *args);

/* ---- tensor parallelism (multi_gpu/): table entries and the wrappers that
 * make weights_bind, weights_load, workspace_size and decode TP-aware (they
 * forward to the ha_ functions above for contexts without a split) ---- */
hashattn_status_t ha_tp_weights_bind(hashattn_context_t *ctx, const hashattn_weights_bind_args_t *args);
hashattn_status_t ha_tp_weights_load(hashattn_context_t *ctx, const hashattn_weights_load_args_t *args);
hashattn_status_t ha_tp_workspace_size(const hashattn_context_t *ctx, const hashattn_workspace_args_t *args,
                                       size_t *bytes);
hashattn_status_t ha_tp_decode(hashattn_context_t *ctx, const hashattn_decode_args_t *args);
hashattn_status_t ha_comm_unique_id(hashattn_comm_id_t *out);
hashattn_status_t ha_comm_create(hashattn_context_t *ctx, const hashattn_comm_create_args_t *args);
hashattn_status_t ha_comm_bind(hashattn_context_t *ctx, const hashattn_comm_bind_args_t *args);
hashattn_status_t ha_comm_abort(hashattn_context_t *ctx);
hashattn_status_t ha_all_reduce(hashattn_context_t *ctx, const hashattn_all_reduce_args_t *args);
/* Release the context's communicator (context_destroy). */
void ha_comm_release(hashattn_context_t *ctx);

/* Helpers for ha_struct_desc_t tables. */
#define HA_END(T, f) (offsetof(T, f) + sizeof(((T *)0)->f))
#define HA_F(T, f) { offsetof(T, f), HA_END(T, f) }

#endif /* HASHATTN_PLUGIN_INTERNAL_H */
