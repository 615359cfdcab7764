/*
 * context.c - context creation and destruction, config and budget checks.
 */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plugin/internal.h"
#include "plugin/budget.h"

#define CFG hashattn_context_config_t
static const ha_field_t config_fields[] = {
    HA_F(CFG, struct_size), HA_F(CFG, flags),       HA_F(CFG, num_layers),
    HA_F(CFG, num_q_heads), HA_F(CFG, num_kv_heads), HA_F(CFG, head_dim),
    HA_F(CFG, block_size),  HA_F(CFG, dtype),        HA_F(CFG, device),
    HA_F(CFG, kv_layout),   HA_F(CFG, hash_bits),    HA_F(CFG, mlp_width),
    HA_F(CFG, selection),   HA_F(CFG, signature_layout), HA_F(CFG, softmax_scale),
    HA_F(CFG, budget),      HA_F(CFG, tp_rank),     HA_F(CFG, tp_size),
    HA_F(CFG, dense_below),
};
static const ha_struct_desc_t config_desc = {"config", config_fields,
                                             (int)(sizeof config_fields / sizeof config_fields[0]),
                                             HA_END(CFG, head_dim), sizeof(CFG)};
#undef CFG

#define BUD hashattn_budget_t
static const ha_field_t budget_fields[] = {HA_F(BUD, struct_size), HA_F(BUD, sink_tokens),
                                     HA_F(BUD, recent_tokens), HA_F(BUD, heavy_count),
                                     HA_F(BUD, heavy_fraction)};
static const ha_struct_desc_t budget_desc = {"budget", budget_fields, 5, HA_END(BUD, heavy_fraction), sizeof(BUD)};
#undef BUD

hashattn_status_t ha_check_budget(hashattn_context_t *ctx, const char *op, const hashattn_budget_t *b)
{
    const hashattn_status_t bad = HASHATTN_STATUS_INVALID_ARGUMENT;
    if (b->sink_tokens < 0)
        return ha_fail(ctx, bad, "%s: budget.sink_tokens = %d must be >= 0", op, b->sink_tokens);
    if (b->recent_tokens < 1)
        return ha_fail(ctx, bad, "%s: budget.recent_tokens = %d must be >= 1 (the current token is "
                       "always attended)", op, b->recent_tokens);
    if (b->heavy_count < -1)
        return ha_fail(ctx, bad, "%s: budget.heavy_count = %d must be >= 0, or -1 to use "
                       "heavy_fraction", op, b->heavy_count);
    if (!(b->heavy_fraction >= 0.0f && b->heavy_fraction <= 1.0f))
        return ha_fail(ctx, bad, "%s: budget.heavy_fraction = %g must be in [0, 1]", op,
                       (double)b->heavy_fraction);
    return HASHATTN_STATUS_OK;
}

hashattn_status_t ha_read_budget(hashattn_context_t *ctx, const char *op, const hashattn_budget_t *src,
                                 ha_budget_t *out)
{
    hashattn_budget_t b = ctx->cfg.budget;
    if (src) {
        hashattn_status_t st = ha_read_struct(ctx, &budget_desc, src, &b);
        if (st != HASHATTN_STATUS_OK)
            return st;
        st = ha_check_budget(ctx, op, &b);
        if (st != HASHATTN_STATUS_OK)
            return st;
    }
    out->sink = b.sink_tokens;
    out->recent = b.recent_tokens;
    out->heavy_count = b.heavy_count;
    out->heavy_fraction = b.heavy_fraction;
    out->dense_below = ctx->dense_below;
    return HASHATTN_STATUS_OK;
}

static hashattn_status_t check_config(const hashattn_context_config_t *c, ha_backend_t *backend,
                                      ha_dtype_t *dtype)
{
    const hashattn_status_t bad = HASHATTN_STATUS_INVALID_ARGUMENT;
    if (c->flags != 0)
        return ha_fail(NULL, bad, "config.flags = 0x%x has unknown bits (none are defined)", c->flags);
    if (c->num_layers < 1 || c->num_layers > 4096)
        return ha_fail(NULL, bad, "config.num_layers = %d must be in [1, 4096]", c->num_layers);
    if (c->num_q_heads < 1 || c->num_q_heads > 1024)
        return ha_fail(NULL, bad, "config.num_q_heads = %d must be in [1, 1024]", c->num_q_heads);
    if (c->num_kv_heads < 1 || c->num_q_heads % c->num_kv_heads != 0)
        return ha_fail(NULL, bad, "config.num_kv_heads = %d must be >= 1 and divide num_q_heads = %d",
                       c->num_kv_heads, c->num_q_heads);
    if (c->head_dim < 8 || c->head_dim > 256 || c->head_dim % 8 != 0)
        return ha_fail(NULL, bad, "config.head_dim = %d must be a multiple of 8 in [8, 256]",
                       c->head_dim);
    if (c->block_size < 1 || c->block_size > 1024)
        return ha_fail(NULL, bad, "config.block_size = %d must be in [1, 1024]", c->block_size);
    if (c->kv_layout != HASHATTN_KV_LAYOUT_NHD && c->kv_layout != HASHATTN_KV_LAYOUT_HND)
        return ha_fail(NULL, bad, "config.kv_layout = %d is not a hashattn_kv_layout_t", c->kv_layout);
    if (c->hash_bits != 32)
        return ha_fail(NULL, bad, "config.hash_bits = %d; only 32-bit signatures exist", c->hash_bits);
    if (c->mlp_width < 1 || c->mlp_width > 1024)
        return ha_fail(NULL, bad, "config.mlp_width = %d must be in [1, 1024]", c->mlp_width);
    if (c->selection != HASHATTN_SELECTION_PER_HEAD && c->selection != HASHATTN_SELECTION_GROUP)
        return ha_fail(NULL, bad, "config.selection = %d is not a hashattn_selection_t", c->selection);
    if (c->signature_layout != HASHATTN_SIGNATURE_PER_QUERY_HEAD &&
        c->signature_layout != HASHATTN_SIGNATURE_PER_KV_HEAD)
        return ha_fail(NULL, bad, "config.signature_layout = %d is not a hashattn_signature_layout_t",
                       c->signature_layout);
    if (!(c->softmax_scale >= 0.0f) || isinf(c->softmax_scale))
        return ha_fail(NULL, bad, "config.softmax_scale = %g must be finite and >= 0 (0 = 1/sqrt(D))",
                       (double)c->softmax_scale);
    hashattn_status_t st = ha_check_budget(NULL, "config", &c->budget);
    if (st != HASHATTN_STATUS_OK)
        return st;
    const int32_t tp = c->tp_size == 0 ? 1 : c->tp_size;
    if (tp < 1 || tp > 1024)
        return ha_fail(NULL, bad, "config.tp_size = %d must be in [1, 1024] (0 = 1: no tensor parallelism)",
                       c->tp_size);
    if (c->num_kv_heads % tp != 0)
        return ha_fail(NULL, bad, "config.tp_size = %d must divide num_kv_heads = %d (each rank owns whole "
                       "KV heads)", c->tp_size, c->num_kv_heads);
    if (c->tp_rank < 0 || c->tp_rank >= tp)
        return ha_fail(NULL, bad, "config.tp_rank = %d is outside [0, tp_size = %d)", c->tp_rank, tp);

    if (c->dense_below < -1)
        return ha_fail(NULL, bad, "config.dense_below = %d must be >= -1 (0 = automatic, -1 = never)",
                       c->dense_below);

    DLDataType dt = c->dtype;
    if (dt.lanes != 1)
        return ha_fail(NULL, bad, "config.dtype.lanes = %u must be 1", (unsigned)dt.lanes);
    if (dt.code == kDLFloat && dt.bits == 32)
        *dtype = HA_DTYPE_F32;
    else if (dt.code == kDLFloat && dt.bits == 16)
        *dtype = HA_DTYPE_F16;
    else if (dt.code == kDLBfloat && dt.bits == 16)
        *dtype = HA_DTYPE_BF16;
    else {
        char b[32];
        return ha_fail(NULL, bad, "config.dtype = %s; expected float16, bfloat16 or float32",
                       ha_dtype_name(dt, b));
    }

    if (c->device.device_type == kDLCPU) {
        if (c->device.device_id != 0)
            return ha_fail(NULL, bad, "config.device.device_id = %d; the CPU is device 0",
                           c->device.device_id);
        *backend = HA_BACKEND_CPU;
        return HASHATTN_STATUS_OK;
    }
    if (c->device.device_type != kDLCUDA)
        return ha_fail(NULL, bad, "config.device.device_type = %d; expected kDLCPU (1) or kDLCUDA (2)",
                       (int)c->device.device_type);
#ifdef HASHATTN_WITH_CUDA
    int count = ha_cuda_device_count();
    if (count == 0)
        return ha_fail(NULL, HASHATTN_STATUS_DEVICE_ERROR,
                       "config.device = kDLCUDA:%d, but no CUDA device is available",
                       c->device.device_id);
    if (c->device.device_id < 0 || c->device.device_id >= count)
        return ha_fail(NULL, bad, "config.device.device_id = %d is outside the %d CUDA devices",
                       c->device.device_id, count);
    if (*dtype == HA_DTYPE_F32)
        return ha_fail(NULL, HASHATTN_STATUS_UNSUPPORTED,
                       "config.dtype = float32 is CPU-only; use float16 or bfloat16 on CUDA");
    if (c->head_dim != 64 && c->head_dim != 128)
        return ha_fail(NULL, HASHATTN_STATUS_UNSUPPORTED,
                       "config.head_dim = %d; the CUDA backend supports 64 and 128", c->head_dim);
    *backend = HA_BACKEND_CUDA;
    return HASHATTN_STATUS_OK;
#else
    return ha_fail(NULL, HASHATTN_STATUS_UNSUPPORTED,
                   "config.device = kDLCUDA:%d, but this library was built without CUDA",
                   c->device.device_id);
#endif
}

/* config.dense_below after the automatic choice: the CPU backend's sparse
 * step is cheaper than its dense one at every length, so it has none; on
 * CUDA a sequence is dense while its K and V are under
 * HASHATTN_CUDA_DENSE_BELOW_BYTES, counted over the whole model's KV heads
 * (c is the config as given, before a tensor-parallel split), so that a
 * model decides alike at every tp_size. */
static int32_t resolve_dense_below(const hashattn_context_config_t *c, ha_backend_t backend, ha_dtype_t dtype)
{
    if (c->dense_below != 0)
        return c->dense_below > 0 ? c->dense_below : 0;
    if (backend != HA_BACKEND_CUDA)
        return 0;
    const long long per_token = (long long)c->num_kv_heads * c->head_dim * 2 * (dtype == HA_DTYPE_F32 ? 4 : 2);
    const long long n = (HASHATTN_CUDA_DENSE_BELOW_BYTES + per_token - 1) / per_token;
    return n < INT32_MAX ? (int32_t)n : INT32_MAX;
}

hashattn_status_t ha_context_create(const hashattn_context_config_t *config, hashattn_context_t **out)
{
    if (!out)
        return ha_fail(NULL, HASHATTN_STATUS_INVALID_ARGUMENT, "context_create: out is NULL");
    *out = NULL;
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    hashattn_status_t st = ha_read_struct(NULL, &config_desc, config, &cfg);
    if (st != HASHATTN_STATUS_OK)
        return st;
    ha_backend_t backend = HA_BACKEND_CPU;
    ha_dtype_t dtype = HA_DTYPE_F32;
    st = check_config(&cfg, &backend, &dtype);
    if (st != HASHATTN_STATUS_OK)
        return st;

    hashattn_context_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx)
        return ha_fail(NULL, HASHATTN_STATUS_OUT_OF_MEMORY, "context_create: out of host memory");
    atomic_flag_clear(&ctx->error_lock);
    ctx->cfg = cfg;
    ctx->cfg.struct_size = sizeof cfg;
    ctx->dense_below = resolve_dense_below(&cfg, backend, dtype);
    /* tensor parallelism: the context computes on its rank's heads only */
    ctx->tp_size = cfg.tp_size > 1 ? cfg.tp_size : 1;
    ctx->tp_rank = cfg.tp_rank;
    ctx->full_q_heads = cfg.num_q_heads;
    ctx->full_kv_heads = cfg.num_kv_heads;
    ctx->cfg.num_q_heads = cfg.num_q_heads / ctx->tp_size;
    ctx->cfg.num_kv_heads = cfg.num_kv_heads / ctx->tp_size;
    cfg = ctx->cfg;
    ctx->backend = backend;
    ctx->dtype = dtype;
    ctx->group = cfg.num_q_heads / cfg.num_kv_heads;
    ctx->num_sig_heads =
        cfg.signature_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? cfg.num_kv_heads : cfg.num_q_heads;
    ctx->scale = cfg.softmax_scale > 0.0f ? cfg.softmax_scale : 1.0f / sqrtf((float)cfg.head_dim);
    *out = ctx;
    return HASHATTN_STATUS_OK;
}

hashattn_status_t ha_context_destroy(hashattn_context_t *ctx)
{
    if (!ctx)
        return HASHATTN_STATUS_OK;
    ha_comm_release(ctx);
#ifdef HASHATTN_WITH_CUDA
    if (ctx->device_weights)
        ha_cuda_free(ctx->cfg.device.device_id, ctx->device_weights);
#endif
    free(ctx->host_weights);
    free(ctx);
    return HASHATTN_STATUS_OK;
}
