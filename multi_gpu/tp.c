/*
 * tp.c - a rank's share of the model, and the table entries that make a
 * context with tp_size > 1 behave as rank tp_rank of a tensor-parallel group.
 *
 * A TP context is an ordinary context for the rank's heads (context.c puts
 * Hq/tp and Hkv/tp in ctx->cfg), so cache_write, prefill, hash and the
 * rank's part of decode run the existing code and kernels unchanged. What is
 * added here:
 *   - weights: the host gives the whole model's hash weights (one file or one
 *     set of tensors for every rank); they are read into a temporary CPU
 *     context of the whole model (same checks, same messages) and the rank's
 *     heads are copied out: query MLPs of its query heads, key MLPs of its
 *     query heads (paper layout) or of its KV heads (compact);
 *   - decode: the rank's decode writes into its slot of a gather buffer in
 *     the workspace, an NCCL all-gather on the caller's stream fills the other
 *     slots and a small kernel interleaves [tp][seq][head] into the host's
 *     [seq][Hq] output; HASHATTN_DECODE_TP_SHARDED skips both;
 *   - workspace_size: decode's bytes grow by the gather buffer.
 * Contexts without a split go straight to the plugin's own functions.
 */
#include <stdlib.h>
#include <string.h>

#include "multi_gpu/tp.h"
#include "plugin/internal.h"

#define BAD HASHATTN_STATUS_INVALID_ARGUMENT
#define OK HASHATTN_STATUS_OK

/* Gather buffers start the workspace; the decode's own part follows. */
#define TP_ALIGN 256

static size_t align_up(size_t x) { return (x + TP_ALIGN - 1) / TP_ALIGN * TP_ALIGN; }

static size_t dtype_bytes(ha_dtype_t dt) { return dt == HA_DTYPE_F32 ? 4 : 2; }

static size_t gather_bytes(const hashattn_context_t *ctx, int64_t num_seqs)
{
    return align_up((size_t)ctx->tp_size * (size_t)num_seqs * (size_t)ctx->cfg.num_q_heads *
                    (size_t)ctx->cfg.head_dim * dtype_bytes(ctx->dtype));
}

/* ---- weights ---- */

/* A CPU context of the whole model with ctx's hash shape. */
static hashattn_status_t whole_model(hashattn_context_t *ctx, hashattn_context_t **out)
{
    hashattn_context_config_t c = ctx->cfg;
    c.struct_size = sizeof c;
    c.num_q_heads = ctx->full_q_heads;
    c.num_kv_heads = ctx->full_kv_heads;
    c.tp_rank = 0;
    c.tp_size = 0;
    c.device.device_type = kDLCPU;
    c.device.device_id = 0;
    c.dtype.code = kDLFloat;
    c.dtype.bits = 32;
    c.dtype.lanes = 1;
    hashattn_status_t st = ha_context_create(&c, out);
    if (st != OK)
        return ha_fail(ctx, st, "weights: %s", ha_thread_error());
    return OK;
}

/* Copy the rank's heads of every (side, layer, part) from the whole model's
 * block into a block of ctx's layout and install it. */
static hashattn_status_t take_slice(hashattn_context_t *ctx, const hashattn_context_t *whole)
{
    const size_t total = ha_weights_offset(ctx, HA_SIDE_KEY, ctx->cfg.num_layers);
    float *block = malloc(total * sizeof(float));
    if (!block)
        return ha_fail(ctx, HASHATTN_STATUS_OUT_OF_MEMORY, "weights: out of host memory (%zu floats)", total);
    const size_t m = (size_t)ctx->cfg.mlp_width, d = (size_t)ctx->cfg.head_dim;
    /* floats per head of w1 b1 w2 b2 w3 b3 */
    const size_t per_head[6] = {m * d, m, m * m, m, 32 * m, 32};
    for (int side = HA_SIDE_QUERY; side <= HA_SIDE_KEY; side++) {
        for (int l = 0; l < ctx->cfg.num_layers; l++) {
            ha_mlp_t src = ha_weights_mlp(whole, whole->host_weights, side, l);
            ha_mlp_t dst = ha_weights_mlp(ctx, block, side, l);
            const size_t first = (size_t)ctx->tp_rank * (size_t)dst.num_heads, n = (size_t)dst.num_heads;
            const float *s[6] = {src.w1, src.b1, src.w2, src.b2, src.w3, src.b3};
            const float *dd[6] = {dst.w1, dst.b1, dst.w2, dst.b2, dst.w3, dst.b3};
            for (int p = 0; p < 6; p++)
                memcpy((float *)dd[p], s[p] + first * per_head[p], n * per_head[p] * sizeof(float));
        }
    }
    return ha_weights_install(ctx, block, total);
}

hashattn_status_t ha_tp_weights_bind(hashattn_context_t *ctx, const hashattn_weights_bind_args_t *args)
{
    if (!ctx || ctx->tp_size <= 1)
        return ha_weights_bind(ctx, args);
    hashattn_context_t *whole = NULL;
    hashattn_status_t st = whole_model(ctx, &whole);
    if (st == OK) {
        st = ha_weights_bind(whole, args);
        if (st != OK)
            ha_fail(ctx, st, "%s (the whole model's weights, Hq = %d, Hkv = %d; the context keeps rank %d's "
                    "share)", whole->last_error, ctx->full_q_heads, ctx->full_kv_heads, ctx->tp_rank);
        else
            st = take_slice(ctx, whole);
    }
    ha_context_destroy(whole);
    return st;
}

hashattn_status_t ha_tp_weights_load(hashattn_context_t *ctx, const hashattn_weights_load_args_t *args)
{
    if (!ctx || ctx->tp_size <= 1)
        return ha_weights_load(ctx, args);
    hashattn_context_t *whole = NULL;
    hashattn_status_t st = whole_model(ctx, &whole);
    if (st == OK) {
        st = ha_weights_load(whole, args);
        if (st != OK)
            ha_fail(ctx, st, "%s (a tensor-parallel context reads the whole model's file)", whole->last_error);
        else
            st = take_slice(ctx, whole);
    }
    ha_context_destroy(whole);
    return st;
}

/* ---- workspace ---- */

hashattn_status_t ha_tp_workspace_size(const hashattn_context_t *cctx, const hashattn_workspace_args_t *args,
                                       size_t *bytes)
{
    hashattn_status_t st = ha_workspace_size(cctx, args, bytes);
    if (st != OK || cctx->tp_size <= 1 || cctx->backend != HA_BACKEND_CUDA)
        return st;
    /* args passed the struct_size rules: op and max_num_seqs are required fields */
    if (args->op == HASHATTN_OP_DECODE && args->max_num_seqs > 0)
        *bytes = align_up(*bytes) + gather_bytes(cctx, args->max_num_seqs);
    return OK;
}

/* ---- decode ---- */

hashattn_status_t ha_tp_decode(hashattn_context_t *ctx, const hashattn_decode_args_t *args)
{
    if (!ctx)
        return ha_decode(ctx, args);
    hashattn_decode_args_t a = HASHATTN_DECODE_ARGS_INIT;
    hashattn_status_t st = ha_read_struct(ctx, &ha_decode_desc, args, &a);
    if (st != OK)
        return st;
    const int sharded = (a.flags & HASHATTN_DECODE_TP_SHARDED) != 0;
    a.flags &= ~HASHATTN_DECODE_TP_SHARDED;
    a.struct_size = sizeof a;
    if (ctx->tp_size <= 1 || sharded)
        return ha_decode(ctx, &a); /* without a split the whole output is the rank's */

    static const char op[] = "decode";
    const hashattn_context_config_t *c = &ctx->cfg;
    if (ctx->backend != HA_BACKEND_CUDA)
        return ha_fail(ctx, HASHATTN_STATUS_UNSUPPORTED,
                       "decode: tp_size = %d on a CPU context: the gathered output needs a CUDA context with a "
                       "communicator; pass HASHATTN_DECODE_TP_SHARDED for the rank's heads only",
                       ctx->tp_size);
    if (!ctx->comm)
        return ha_fail(ctx, HASHATTN_STATUS_NOT_READY,
                       "decode: tp_size = %d and no communicator (call comm_create or comm_bind first, or pass "
                       "HASHATTN_DECODE_TP_SHARDED)", ctx->tp_size);
    ha_tensor_t vq, vo;
    int64_t eq[3] = {-1, c->num_q_heads, c->head_dim};
    st = ha_check_tensor(ctx, op, "query", a.query, 3, eq, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vq);
    if (st != OK)
        return st;
    const int64_t num_seqs = vq.shape[0];
    int64_t eo[3] = {num_seqs, ctx->full_q_heads, c->head_dim};
    st = ha_check_tensor(ctx, op, "output", a.output, 3, eo, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vo);
    if (st != OK)
        return st;
    if (num_seqs == 0)
        return ha_decode(ctx, &a); /* validates the rest; nothing to gather */

    const size_t es = dtype_bytes(ctx->dtype);
    const size_t count = (size_t)num_seqs * (size_t)c->num_q_heads * (size_t)c->head_dim; /* per rank */
    /* One sequence with heads packed: the output itself is the gather buffer. */
    const int direct = num_seqs == 1 && vo.strides[1] == c->head_dim;
    char *gbuf;
    size_t skip = 0;
    if (direct) {
        gbuf = vo.data;
    } else {
        skip = gather_bytes(ctx, num_seqs);
        if (a.workspace_size < skip)
            return ha_fail(ctx, HASHATTN_STATUS_WORKSPACE_TOO_SMALL,
                           "decode: workspace_size = %zu, the all-gather alone needs %zu bytes (ask "
                           "workspace_size)", a.workspace_size, skip);
        if (!a.workspace)
            return ha_fail(ctx, BAD, "decode: workspace is NULL but %zu bytes are needed", skip);
        if (((uintptr_t)a.workspace & 15u) != 0)
            return ha_fail(ctx, BAD, "decode: workspace = %p is not 16-byte aligned", a.workspace);
        gbuf = a.workspace;
    }

    /* The rank's heads go to its slot: compact [num_seqs, Hq/tp, D]. */
    int64_t lshape[3] = {num_seqs, c->num_q_heads, c->head_dim};
    DLTensor local;
    memset(&local, 0, sizeof local);
    local.data = gbuf + (size_t)ctx->tp_rank * count * es;
    local.device = a.output->device;
    local.ndim = 3;
    local.dtype = ha_dl_dtype(ctx->dtype);
    local.shape = lshape;
    a.output = &local;
    if (!direct) {
        a.workspace = (char *)a.workspace + skip;
        a.workspace_size -= skip;
    }
    st = ha_decode(ctx, &a);
    if (st != OK) {
        if (st == HASHATTN_STATUS_WORKSPACE_TOO_SMALL)
            ha_fail(ctx, st, "%s, after the %zu bytes of the all-gather buffer (ask workspace_size)",
                    ctx->last_error, skip);
        return st;
    }
    st = ha_comm_all_gather(ctx, op, gbuf, count, a.stream);
    if (st != OK || direct)
        return st;
    ha_tp_scatter_params_t p;
    memset(&p, 0, sizeof p);
    p.gather = gbuf;
    p.out = vo.data;
    p.out_stride_token = vo.strides[0];
    p.out_stride_head = vo.strides[1];
    p.tp = ctx->tp_size;
    p.num_seqs = (int32_t)num_seqs;
    p.heads = c->num_q_heads;
    p.head_dim = c->head_dim;
    p.stream = a.stream;
    p.device = c->device.device_id;
#ifdef HASHATTN_WITH_CUDA
    if (ha_cuda_tp_scatter(&p) != HA_KERNEL_OK) {
        char err[512] = "";
        ha_cuda_check(c->device.device_id, err, sizeof err);
        return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "decode: head interleave after the all-gather: %s", err);
    }
    return OK;
#else
    return ha_fail(ctx, HASHATTN_STATUS_INTERNAL, "decode: a CUDA context in a build without CUDA");
#endif
}
