/*
 * tp.h - private interface of multi_gpu/: tensor parallelism over GPUs.
 *
 *   tp.c       rank shares of heads and weights, and the TP-aware wrappers of
 *              weights_bind, weights_load, workspace_size and decode
 *   comm.c     NCCL (loaded with dlopen at first use), the communicator
 *              entries, the all-gather and all-reduce on the caller's stream
 *   tp_cuda.cu the head-interleaving kernel after the all-gather and the
 *              device helpers of comm.c
 */
#ifndef HASHATTN_MULTI_GPU_TP_H
#define HASHATTN_MULTI_GPU_TP_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Rows of one rank's share: heads [first, first + count) of `total` split
 * over `size` ranks (size divides total). */
static inline int32_t ha_tp_share(int32_t total, int32_t size) { return total / size; }
static inline int32_t ha_tp_first(int32_t total, int32_t size, int32_t rank) { return rank * (total / size); }

#ifdef HASHATTN_BUILDING_LIBRARY
#include "hashattn/hashattn.h" /* the public types are all this needs (tp_cuda.cu includes it) */
/* All-gather in place on `stream`: buf is [tp_size][count] elements of the
 * context's dtype and this rank's part, buf + rank * count, is the input.
 * Needs a communicator; never synchronises. */
hashattn_status_t ha_comm_all_gather(hashattn_context_t *ctx, const char *op, void *buf, size_t count,
                                     void *stream);
#endif

/* ---- CUDA side (tp_cuda.cu) ---- */

/* out[s][r * heads + h][:] = gather[r][s][h][:] for 2-byte elements. */
typedef struct ha_tp_scatter_params {
    const void *gather;           /* [tp][num_seqs][heads][head_dim], compact */
    void *out;                    /* [num_seqs][tp * heads][head_dim], strides below */
    int64_t out_stride_token, out_stride_head; /* elements */
    int32_t tp, num_seqs, heads, head_dim;
    void *stream;
    int32_t device;
} ha_tp_scatter_params_t;

ha_kernel_status_t ha_cuda_tp_scatter(const ha_tp_scatter_params_t *p);
/* Make `device` current; *old receives the previous one (-1 when unchanged).
 * 0 or -1. */
int ha_cuda_tp_enter(int device, int *old);
void ha_cuda_tp_leave(int old);
/* A scratch buffer (zeroed) and a stream on `device` for the warm-up
 * collectives of comm_create; freed by ha_cuda_tp_scratch_free. */
ha_kernel_status_t ha_cuda_tp_scratch(int device, size_t bytes, void **buf, void **stream, char *err,
                                      size_t errlen);
/* 1: the stream's work is done, 0: still running, -1: an error (err). */
int ha_cuda_tp_stream_done(void *stream, char *err, size_t errlen);
void ha_cuda_tp_scratch_free(int device, void *buf, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* HASHATTN_MULTI_GPU_TP_H */
