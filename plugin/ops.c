/*
 * ops.c - the run-path operations: read args, validate, fill kernel params,
 * dispatch to the context's backend.
 *
 * Every check happens before the first write. On the CPU backend index
 * values (slots, block ids, sequence lengths, query_start_loc) are checked
 * too, since they are readable; on CUDA they live on the device and are not
 * read on the host (no synchronisation on the run path).
 */
#include <string.h>

#include "plugin/budget.h"
#include "plugin/internal.h"

typedef hashattn_status_t status_t;
#define OK HASHATTN_STATUS_OK
#define BAD HASHATTN_STATUS_INVALID_ARGUMENT
#define TRY(x)                \
    do {                      \
        status_t st_ = (x);   \
        if (st_ != OK)        \
            return st_;       \
    } while (0)

/* ---- args struct descriptions ---- */

#define T hashattn_cache_write_args_t
static const ha_field_t write_fields[] = {
    HA_F(T, struct_size), HA_F(T, flags), HA_F(T, layer), HA_F(T, key), HA_F(T, value),
    HA_F(T, key_cache), HA_F(T, value_cache), HA_F(T, signature_cache), HA_F(T, slot_mapping),
    HA_F(T, workspace), HA_F(T, workspace_size), HA_F(T, stream), HA_F(T, query), HA_F(T, query_signatures)};
static const ha_struct_desc_t write_desc = {"cache_write_args", write_fields, 14, HA_END(T, slot_mapping), sizeof(T)};
#undef T
#define T hashattn_decode_args_t
static const ha_field_t decode_fields[] = {
    HA_F(T, struct_size), HA_F(T, flags), HA_F(T, layer), HA_F(T, query), HA_F(T, key_cache),
    HA_F(T, value_cache), HA_F(T, signature_cache), HA_F(T, block_tables), HA_F(T, seq_lens),
    HA_F(T, output), HA_F(T, budget), HA_F(T, selected_indices), HA_F(T, selected_counts),
    HA_F(T, workspace), HA_F(T, workspace_size), HA_F(T, stream), HA_F(T, query_signatures)};
const ha_struct_desc_t ha_decode_desc = {"decode_args", decode_fields, 17, HA_END(T, output), sizeof(T)};
#undef T
#define T hashattn_prefill_args_t
static const ha_field_t prefill_fields[] = {
    HA_F(T, struct_size), HA_F(T, flags), HA_F(T, layer), HA_F(T, query), HA_F(T, key_cache),
    HA_F(T, value_cache), HA_F(T, block_tables), HA_F(T, seq_lens), HA_F(T, query_start_loc),
    HA_F(T, output), HA_F(T, workspace), HA_F(T, workspace_size), HA_F(T, stream)};
static const ha_struct_desc_t prefill_desc = {"prefill_args", prefill_fields, 13, HA_END(T, output), sizeof(T)};
#undef T
#define T hashattn_hash_args_t
static const ha_field_t hash_fields[] = {HA_F(T, struct_size), HA_F(T, flags), HA_F(T, layer),
                                   HA_F(T, side), HA_F(T, input), HA_F(T, signatures),
                                   HA_F(T, workspace), HA_F(T, workspace_size), HA_F(T, stream)};
static const ha_struct_desc_t hash_desc = {"hash_args", hash_fields, 9, HA_END(T, signatures), sizeof(T)};
#undef T
#define T hashattn_workspace_args_t
static const ha_field_t ws_fields[] = {HA_F(T, struct_size), HA_F(T, op), HA_F(T, max_num_seqs),
                                 HA_F(T, max_num_tokens), HA_F(T, max_blocks_per_seq)};
static const ha_struct_desc_t ws_desc = {"workspace_args", ws_fields, 5, HA_END(T, max_blocks_per_seq), sizeof(T)};
#undef T

/* ---- shared checks ---- */

static status_t check_common(hashattn_context_t *ctx, const char *op, uint32_t flags, uint32_t known,
                             int32_t layer)
{
    if (flags & ~known)
        return ha_fail(ctx, BAD, "%s: flags = 0x%x has unknown bits 0x%x", op, flags, flags & ~known);
    if (layer < 0 || layer >= ctx->cfg.num_layers)
        return ha_fail(ctx, BAD, "%s: layer = %d is outside [0, %d)", op, layer, ctx->cfg.num_layers);
#ifdef HASHATTN_WITH_CUDA
    if (ctx->backend == HA_BACKEND_CUDA) {
        char err[512] = "";
        if (ha_cuda_check(ctx->cfg.device.device_id, err, sizeof err) != HA_KERNEL_OK)
            return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "%s: the device reports an earlier error: %s",
                           op, err);
    }
#endif
    return OK;
}

static status_t need_weights(hashattn_context_t *ctx, const char *op)
{
    if (!ctx->weights_bound)
        return ha_fail(ctx, HASHATTN_STATUS_NOT_READY,
                       "%s: hash weights are not bound (call weights_bind or weights_load first)", op);
    return OK;
}

static const float *weights_base(const hashattn_context_t *ctx)
{
    return ctx->backend == HA_BACKEND_CUDA ? (const float *)ctx->device_weights : ctx->host_weights;
}

/* K or V cache: shape by layout; num_blocks taken from the first one seen. */
static status_t check_kv_cache(hashattn_context_t *ctx, const char *op, const char *name, const DLTensor *t,
                               int64_t *num_blocks, ha_tensor_t *v, ha_paged_view_t *view)
{
    const hashattn_context_config_t *c = &ctx->cfg;
    int hnd = c->kv_layout == HASHATTN_KV_LAYOUT_HND;
    int64_t e[4] = {*num_blocks, hnd ? c->num_kv_heads : c->block_size,
                    hnd ? c->block_size : c->num_kv_heads, c->head_dim};
    TRY(ha_check_tensor(ctx, op, name, t, 4, e, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, v));
    *num_blocks = v->shape[0];
    view->data = v->data;
    view->stride_block = v->strides[0];
    view->stride_token = hnd ? v->strides[2] : v->strides[1];
    view->stride_head = hnd ? v->strides[1] : v->strides[2];
    return OK;
}

static status_t check_sig_cache(hashattn_context_t *ctx, const char *op, const DLTensor *t, int64_t num_blocks,
                                ha_paged_view_t *view)
{
    ha_tensor_t v;
    int64_t e[3] = {num_blocks, ctx->num_sig_heads, ctx->cfg.block_size};
    TRY(ha_check_tensor(ctx, op, "signature_cache", t, 3, e, HA_DL_UINT32, HA_ON_CONTEXT, &v));
    view->data = v.data;
    view->stride_block = v.strides[0];
    view->stride_head = v.strides[1];
    view->stride_token = 1;
    return OK;
}

static ha_rows_view_t rows_of(const ha_tensor_t *v)
{
    ha_rows_view_t r = {v->data, v->strides[0], v->strides[1]};
    return r;
}

/* The cache slots a batch's tables can address, num_seqs x max_blocks x
 * block_size, at most 2^40: far past any server, and low enough that no
 * workspace size (CPU or CUDA) computed from them overflows 64 bits. */
static status_t check_slots(hashattn_context_t *ctx, const char *op, const char *what, int64_t num_seqs,
                            int64_t max_blocks)
{
    const int64_t bs = ctx->cfg.block_size;
    if (num_seqs > 0 && max_blocks > 0 && num_seqs > (((int64_t)1 << 40) / bs) / max_blocks)
        return ha_fail(ctx, BAD, "%s: %s = [%lld, %lld] with block_size %lld address more than 2^40 cache slots",
                       op, what, (long long)num_seqs, (long long)max_blocks, (long long)bs);
    return OK;
}

/* Block tables and sequence lengths; on the CPU also their values. */
static status_t check_tables(hashattn_context_t *ctx, const char *op, const DLTensor *bt, const DLTensor *sl,
                             int64_t num_seqs, int64_t num_blocks, ha_tensor_t *vbt, ha_tensor_t *vsl)
{
    int64_t ebt[2] = {num_seqs, -1}, esl[1] = {num_seqs};
    TRY(ha_check_tensor(ctx, op, "block_tables", bt, 2, ebt, HA_DL_INT32, HA_ON_CONTEXT, vbt));
    TRY(ha_check_tensor(ctx, op, "seq_lens", sl, 1, esl, HA_DL_INT32, HA_ON_CONTEXT, vsl));
    int64_t max_blocks = vbt->shape[1];
    if (max_blocks > INT32_MAX)
        return ha_fail(ctx, BAD, "%s: block_tables.shape[1] = %lld is too large", op, (long long)max_blocks);
    TRY(check_slots(ctx, op, "block_tables.shape", num_seqs, max_blocks));
    if (ctx->backend != HA_BACKEND_CPU)
        return OK;
    const int32_t bs = ctx->cfg.block_size;
    for (int64_t s = 0; s < num_seqs; s++) {
        int32_t n = *(const int32_t *)(vsl->data + 4 * s * vsl->strides[0]);
        if (n < 0 || (int64_t)n > max_blocks * bs)
            return ha_fail(ctx, BAD, "%s: seq_lens[%lld] = %d is outside [0, %lld] (block_tables.shape[1] "
                           "= %lld blocks of %d tokens)", op, (long long)s, n, (long long)(max_blocks * bs),
                           (long long)max_blocks, bs);
        if (n == 0)
            continue; /* no block is read; the table may be empty (data NULL) */
        const char *row = vbt->data + 4 * s * vbt->strides[0];
        for (int64_t b = 0; b < (n + bs - 1) / bs; b++) {
            int32_t id = *(const int32_t *)(row + 4 * b * vbt->strides[1]);
            if (id < 0 || id >= num_blocks)
                return ha_fail(ctx, BAD, "%s: block_tables[%lld][%lld] = %d is outside num_blocks = %lld", op,
                               (long long)s, (long long)b, id, (long long)num_blocks);
        }
    }
    return OK;
}

/* Block tables rows are passed to kernels as a base pointer and row stride;
 * their column stride must be 1 (the innermost rule). */
static status_t check_workspace(hashattn_context_t *ctx, const char *op, int which,
                                const ha_workspace_bounds_t *b, const void *ws, size_t ws_size)
{
    size_t need;
#ifdef HASHATTN_WITH_CUDA
    need = ctx->backend == HA_BACKEND_CUDA ? ha_cuda_workspace_need(which, b) : ha_cpu_workspace_size(which, b);
#else
    need = ha_cpu_workspace_size(which, b);
#endif
    if (ws_size < need)
        return ha_fail(ctx, HASHATTN_STATUS_WORKSPACE_TOO_SMALL,
                       "%s: workspace_size = %zu, this call needs %zu bytes (ask workspace_size)", op, ws_size,
                       need);
    if (need > 0 && !ws)
        return ha_fail(ctx, BAD, "%s: workspace is NULL but %zu bytes are needed", op, need);
    return OK;
}

static ha_workspace_bounds_t bounds_of(const hashattn_context_t *ctx)
{
    ha_workspace_bounds_t b;
    memset(&b, 0, sizeof b);
    b.num_q_heads = ctx->cfg.num_q_heads;
    b.num_kv_heads = ctx->cfg.num_kv_heads;
    b.num_sig_heads = ctx->num_sig_heads;
    b.head_dim = ctx->cfg.head_dim;
    b.block_size = ctx->cfg.block_size;
    b.mlp_width = ctx->cfg.mlp_width;
    b.group_selection = ctx->cfg.selection == HASHATTN_SELECTION_GROUP;
    return b;
}

static status_t from_kernel(hashattn_context_t *ctx, const char *op, ha_kernel_status_t ks)
{
    switch (ks) {
    case HA_KERNEL_OK: return OK;
    case HA_KERNEL_UNSUPPORTED:
        return ha_fail(ctx, HASHATTN_STATUS_UNSUPPORTED, "%s: this shape or dtype has no kernel on this backend",
                       op);
    case HA_KERNEL_WORKSPACE_TOO_SMALL:
        return ha_fail(ctx, HASHATTN_STATUS_WORKSPACE_TOO_SMALL, "%s: the kernel found the workspace too small",
                       op);
    default: break;
    }
#ifdef HASHATTN_WITH_CUDA
    char err[512] = "";
    ha_cuda_check(ctx->cfg.device.device_id, err, sizeof err);
    return ha_fail(ctx, HASHATTN_STATUS_DEVICE_ERROR, "%s: kernel launch failed: %s", op, err);
#else
    return ha_fail(ctx, HASHATTN_STATUS_INTERNAL, "%s: kernel failed", op);
#endif
}

#ifdef HASHATTN_WITH_CUDA
#define DISPATCH(ctx, name, p) \
    ((ctx)->backend == HA_BACKEND_CUDA ? ha_cuda_##name(p) : ha_cpu_##name(p))
#else
#define DISPATCH(ctx, name, p) ha_cpu_##name(p)
#endif

/* ---- workspace_size ---- */

status_t ha_workspace_size(const hashattn_context_t *cctx, const hashattn_workspace_args_t *args, size_t *bytes)
{
    hashattn_context_t *ctx = (hashattn_context_t *)cctx; /* only last_error is written */
    if (!ctx)
        return ha_fail(NULL, BAD, "workspace_size: ctx is NULL");
    if (!bytes)
        return ha_fail(ctx, BAD, "workspace_size: bytes is NULL");
    hashattn_workspace_args_t a = HASHATTN_WORKSPACE_ARGS_INIT;
    TRY(ha_read_struct(ctx, &ws_desc, args, &a));
    if (a.op < HASHATTN_OP_CACHE_WRITE || a.op > HASHATTN_OP_HASH)
        return ha_fail(ctx, BAD, "workspace_size: op = %d is not a hashattn_op_t", a.op);
    if (a.max_num_seqs < 0 || a.max_num_tokens < 0 || a.max_blocks_per_seq < 0 ||
        a.max_num_tokens > ((int64_t)1 << 31))
        return ha_fail(ctx, BAD, "workspace_size: max_num_seqs = %d, max_num_tokens = %lld, max_blocks_per_seq = "
                       "%d: each must be >= 0, and max_num_tokens <= 2^31", a.max_num_seqs,
                       (long long)a.max_num_tokens, a.max_blocks_per_seq);
    if (a.op == HASHATTN_OP_DECODE || a.op == HASHATTN_OP_PREFILL)
        TRY(check_slots(ctx, "workspace_size", "[max_num_seqs, max_blocks_per_seq]", a.max_num_seqs,
                        a.max_blocks_per_seq));
    ha_workspace_bounds_t b = bounds_of(ctx);
    b.max_num_seqs = a.max_num_seqs;
    b.max_num_tokens = a.max_num_tokens;
    b.max_blocks_per_seq = a.max_blocks_per_seq;
#ifdef HASHATTN_WITH_CUDA
    *bytes = ctx->backend == HA_BACKEND_CUDA ? ha_cuda_workspace_size(a.op, &b) : ha_cpu_workspace_size(a.op, &b);
#else
    *bytes = ha_cpu_workspace_size(a.op, &b);
#endif
    return OK;
}

/* ---- cache_write ---- */

/* cache_write's optional query hashing (1.2): the hash operation's params for
 * query [n, Hq, D] -> query_signatures [n, Hq], checked as `hash` checks them
 * (the names are cache_write's fields). workspace and stream: the caller's. */
static status_t query_hash_params(hashattn_context_t *ctx, const char *op, int32_t layer, const DLTensor *query,
                                  DLTensor *sigs, ha_hash_params_t *p)
{
    const hashattn_context_config_t *c = &ctx->cfg;
    ha_tensor_t vq, vs;
    int64_t eq[3] = {-1, c->num_q_heads, c->head_dim};
    TRY(ha_check_tensor(ctx, op, "query", query, 3, eq, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vq));
    const int64_t n = vq.shape[0];
    int64_t es[2] = {n, c->num_q_heads};
    TRY(ha_check_tensor(ctx, op, "query_signatures", sigs, 2, es, HA_DL_UINT32, HA_ON_CONTEXT, &vs));
    if (n > INT32_MAX)
        return ha_fail(ctx, BAD, "%s: query.shape[0] = %lld is too many", op, (long long)n);
    p->dtype = ctx->dtype;
    p->num_tokens = (int32_t)n;
    p->num_in_heads = c->num_q_heads;
    p->num_out_heads = c->num_q_heads;
    p->group = 1;
    p->head_dim = c->head_dim;
    p->input = rows_of(&vq);
    p->signatures = (uint32_t *)vs.data;
    p->sig_stride_token = vs.strides[0];
    p->sig_stride_head = vs.strides[1];
    p->mlp = ha_weights_mlp(ctx, weights_base(ctx), HA_SIDE_QUERY, layer);
    p->device = c->device.device_id;
    return OK;
}

status_t ha_cache_write(hashattn_context_t *ctx, const hashattn_cache_write_args_t *args)
{
    static const char op[] = "cache_write";
    if (!ctx)
        return ha_fail(NULL, BAD, "cache_write: ctx is NULL");
    hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
    TRY(ha_read_struct(ctx, &write_desc, args, &a));
    TRY(check_common(ctx, op, a.flags, HASHATTN_CACHE_WRITE_SIGNATURES_ONLY, a.layer));
    const hashattn_context_config_t *c = &ctx->cfg;
    const int write_kv = !(a.flags & HASHATTN_CACHE_WRITE_SIGNATURES_ONLY);
    if (!write_kv && !a.signature_cache)
        return ha_fail(ctx, BAD, "cache_write: flags = SIGNATURES_ONLY but signature_cache is NULL");
    if (!a.query != !a.query_signatures)
        return ha_fail(ctx, BAD, "cache_write: query is %s but query_signatures is %s (both or neither)",
                       a.query ? "set" : "NULL", a.query_signatures ? "set" : "NULL");
    if (a.signature_cache || a.query)
        TRY(need_weights(ctx, op));

    ha_tensor_t vk, vv, vkc, vvc, vslot;
    int64_t ek[3] = {-1, c->num_kv_heads, c->head_dim};
    TRY(ha_check_tensor(ctx, op, "key", a.key, 3, ek, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vk));
    const int64_t n = vk.shape[0];
    ek[0] = n;
    int64_t eslot[1] = {n};
    TRY(ha_check_tensor(ctx, op, "slot_mapping", a.slot_mapping, 1, eslot, HA_DL_INT64, HA_ON_CONTEXT, &vslot));
    if (n > INT32_MAX)
        return ha_fail(ctx, BAD, "cache_write: key.shape[0] = %lld tokens is too many", (long long)n);

    ha_cache_write_params_t p;
    memset(&p, 0, sizeof p);
    if (a.query)
        TRY(query_hash_params(ctx, op, a.layer, a.query, a.query_signatures, &p.query_hash));
    int64_t num_blocks = -1;
    if (write_kv) {
        TRY(ha_check_tensor(ctx, op, "value", a.value, 3, ek, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vv));
        TRY(check_kv_cache(ctx, op, "key_cache", a.key_cache, &num_blocks, &vkc, &p.key_cache));
        TRY(check_kv_cache(ctx, op, "value_cache", a.value_cache, &num_blocks, &vvc, &p.value_cache));
        p.value = rows_of(&vv);
    }
    if (a.signature_cache) {
        if (num_blocks < 0) {
            ha_tensor_t probe;
            int64_t e[3] = {-1, ctx->num_sig_heads, c->block_size};
            TRY(ha_check_tensor(ctx, op, "signature_cache", a.signature_cache, 3, e, HA_DL_UINT32,
                                HA_ON_CONTEXT, &probe));
            num_blocks = probe.shape[0];
        }
        TRY(check_sig_cache(ctx, op, a.signature_cache, num_blocks, &p.sig_cache));
    }
    if (ctx->backend == HA_BACKEND_CPU) {
        const int64_t *slots = (const int64_t *)vslot.data;
        const int64_t limit = num_blocks * c->block_size;
        for (int64_t t = 0; t < n; t++)
            if (slots[t] >= limit)
                return ha_fail(ctx, BAD, "cache_write: slot_mapping[%lld] = %lld is outside num_blocks * "
                               "block_size = %lld", (long long)t, (long long)slots[t], (long long)limit);
    }
    ha_workspace_bounds_t b = bounds_of(ctx);
    b.max_num_tokens = n;
    TRY(check_workspace(ctx, op, HASHATTN_OP_CACHE_WRITE, &b, a.workspace, a.workspace_size));
    if (n == 0 && p.query_hash.num_tokens == 0)
        return OK;

    p.dtype = ctx->dtype;
    p.num_tokens = (int32_t)n;
    p.num_kv_heads = c->num_kv_heads;
    p.num_sig_heads = a.signature_cache ? ctx->num_sig_heads : 0;
    p.group = ctx->group;
    p.sig_per_kv_head = c->signature_layout == HASHATTN_SIGNATURE_PER_KV_HEAD;
    p.head_dim = c->head_dim;
    p.block_size = c->block_size;
    p.write_kv = write_kv;
    p.key = rows_of(&vk);
    p.slot_mapping = (const int64_t *)vslot.data;
    if (a.signature_cache)
        p.key_mlp = ha_weights_mlp(ctx, weights_base(ctx), HA_SIDE_KEY, a.layer);
    p.workspace = a.workspace;
    p.workspace_size = a.workspace_size;
    p.stream = a.stream;
    p.device = c->device.device_id;
    p.num_blocks = num_blocks;
    p.query_hash.workspace = a.workspace;
    p.query_hash.workspace_size = a.workspace_size;
    p.query_hash.stream = a.stream;
    return from_kernel(ctx, op, DISPATCH(ctx, cache_write, &p));
}

/* ---- decode ---- */

/* The fields that decode's and prefill's parameters share, by name (two struct
 * types, so a macro): the context's shape and the call's checked query, output,
 * tables, workspace and stream. */
#define FILL_ATTENTION(p, ctx, num_seqs, vq, vo, vbt, vsl, a, num_blocks) \
    do {                                                                  \
        (p).dtype = (ctx)->dtype;                                         \
        (p).num_seqs = (int32_t)(num_seqs);                               \
        (p).num_q_heads = (ctx)->cfg.num_q_heads;                         \
        (p).num_kv_heads = (ctx)->cfg.num_kv_heads;                       \
        (p).group = (ctx)->group;                                         \
        (p).head_dim = (ctx)->cfg.head_dim;                               \
        (p).block_size = (ctx)->cfg.block_size;                           \
        (p).scale = (ctx)->scale;                                         \
        (p).query = rows_of(&(vq));                                       \
        (p).output = rows_of(&(vo));                                      \
        (p).block_tables = (const int32_t *)(vbt).data;                   \
        (p).block_table_stride = (vbt).strides[0];                        \
        (p).max_blocks_per_seq = (int32_t)(vbt).shape[1];                 \
        (p).seq_lens = (const int32_t *)(vsl).data;                       \
        (p).workspace = (a).workspace;                                    \
        (p).workspace_size = (a).workspace_size;                          \
        (p).stream = (a).stream;                                          \
        (p).device = (ctx)->cfg.device.device_id;                         \
        (p).num_blocks = (num_blocks);                                    \
    } while (0)

status_t ha_decode(hashattn_context_t *ctx, const hashattn_decode_args_t *args)
{
    static const char op[] = "decode";
    if (!ctx)
        return ha_fail(NULL, BAD, "decode: ctx is NULL");
    hashattn_decode_args_t a = HASHATTN_DECODE_ARGS_INIT;
    TRY(ha_read_struct(ctx, &ha_decode_desc, args, &a));
    TRY(check_common(ctx, op, a.flags, HASHATTN_DECODE_DENSE, a.layer));
    const hashattn_context_config_t *c = &ctx->cfg;
    const int dense = (a.flags & HASHATTN_DECODE_DENSE) != 0;
    if (!dense)
        TRY(need_weights(ctx, op));

    ha_decode_params_t p;
    memset(&p, 0, sizeof p);
    ha_tensor_t vq, vo, vkc, vvc, vbt, vsl;
    int64_t eq[3] = {-1, c->num_q_heads, c->head_dim};
    TRY(ha_check_tensor(ctx, op, "query", a.query, 3, eq, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vq));
    const int64_t num_seqs = vq.shape[0];
    if (num_seqs > INT32_MAX) /* before any tensor's values are read (the tables' on the CPU) */
        return ha_fail(ctx, BAD, "decode: query.shape[0] = %lld is too many sequences", (long long)num_seqs);
    eq[0] = num_seqs;
    TRY(ha_check_tensor(ctx, op, "output", a.output, 3, eq, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vo));
    int64_t num_blocks = -1;
    TRY(check_kv_cache(ctx, op, "key_cache", a.key_cache, &num_blocks, &vkc, &p.key_cache));
    TRY(check_kv_cache(ctx, op, "value_cache", a.value_cache, &num_blocks, &vvc, &p.value_cache));
    if (!dense || a.signature_cache)
        TRY(check_sig_cache(ctx, op, a.signature_cache, num_blocks, &p.sig_cache));
    if (a.query_signatures) {
        ha_tensor_t v;
        int64_t e[2] = {num_seqs, c->num_q_heads};
        TRY(ha_check_tensor(ctx, op, "query_signatures", a.query_signatures, 2, e, HA_DL_UINT32, HA_ON_CONTEXT,
                            &v));
        p.query_sigs = (const uint32_t *)v.data;
        p.qsig_stride = v.strides[0];
    }
    TRY(ha_read_budget(ctx, op, a.budget, &p.budget));

    const int group_sel = c->selection == HASHATTN_SELECTION_GROUP;
    const int64_t hsel = group_sel ? c->num_kv_heads : c->num_q_heads;
    if (a.selected_indices) {
        ha_tensor_t v;
        int64_t e[3] = {num_seqs, hsel, -1};
        TRY(ha_check_tensor(ctx, op, "selected_indices", a.selected_indices, 3, e, HA_DL_INT32, HA_ON_CONTEXT,
                            &v));
        if (v.shape[2] > INT32_MAX)
            return ha_fail(ctx, BAD, "decode: selected_indices.shape[2] = %lld is too large",
                           (long long)v.shape[2]);
        p.sel_indices = (int32_t *)v.data;
        p.sel_stride_seq = v.strides[0];
        p.sel_stride_head = v.strides[1];
        p.sel_cap = (int32_t)v.shape[2];
    }
    if (a.selected_counts) {
        ha_tensor_t v;
        int64_t e[2] = {num_seqs, hsel};
        TRY(ha_check_tensor(ctx, op, "selected_counts", a.selected_counts, 2, e, HA_DL_INT32, HA_ON_CONTEXT, &v));
        p.sel_counts = (int32_t *)v.data;
        p.cnt_stride_seq = v.strides[0];
        p.cnt_stride_head = v.strides[1];
    }
    TRY(check_tables(ctx, op, a.block_tables, a.seq_lens, num_seqs, num_blocks, &vbt, &vsl));

    ha_workspace_bounds_t b = bounds_of(ctx);
    b.max_num_seqs = (int32_t)num_seqs;
    b.max_blocks_per_seq = (int32_t)vbt.shape[1];
    TRY(check_workspace(ctx, op, HASHATTN_OP_DECODE, &b, a.workspace, a.workspace_size));
    if (num_seqs == 0)
        return OK;

    FILL_ATTENTION(p, ctx, num_seqs, vq, vo, vbt, vsl, a, num_blocks);
    p.num_sig_heads = ctx->num_sig_heads;
    p.sig_per_kv_head = c->signature_layout == HASHATTN_SIGNATURE_PER_KV_HEAD;
    p.group_selection = group_sel;
    p.dense = dense;
    /* every sequence below dense_below (its table bounds n): the dense path,
     * which is what the per-sequence rule gives, without the sparse launches */
    if ((int64_t)p.max_blocks_per_seq * p.block_size < p.budget.dense_below)
        p.dense = 1;
    if (ctx->weights_bound)
        p.query_mlp = ha_weights_mlp(ctx, weights_base(ctx), HA_SIDE_QUERY, a.layer);
    return from_kernel(ctx, op, DISPATCH(ctx, decode, &p));
}

/* ---- prefill ---- */

status_t ha_prefill(hashattn_context_t *ctx, const hashattn_prefill_args_t *args)
{
    static const char op[] = "prefill";
    if (!ctx)
        return ha_fail(NULL, BAD, "prefill: ctx is NULL");
    hashattn_prefill_args_t a = HASHATTN_PREFILL_ARGS_INIT;
    TRY(ha_read_struct(ctx, &prefill_desc, args, &a));
    TRY(check_common(ctx, op, a.flags, 0, a.layer));
    const hashattn_context_config_t *c = &ctx->cfg;

    ha_prefill_params_t p;
    memset(&p, 0, sizeof p);
    ha_tensor_t vq, vo, vkc, vvc, vbt, vsl, vqsl;
    int64_t eq[3] = {-1, c->num_q_heads, c->head_dim};
    TRY(ha_check_tensor(ctx, op, "query", a.query, 3, eq, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vq));
    const int64_t num_tokens = vq.shape[0];
    if (num_tokens > INT32_MAX)
        return ha_fail(ctx, BAD, "prefill: query.shape[0] = %lld is too many tokens", (long long)num_tokens);
    eq[0] = num_tokens;
    TRY(ha_check_tensor(ctx, op, "output", a.output, 3, eq, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vo));
    int64_t num_blocks = -1;
    TRY(check_kv_cache(ctx, op, "key_cache", a.key_cache, &num_blocks, &vkc, &p.key_cache));
    TRY(check_kv_cache(ctx, op, "value_cache", a.value_cache, &num_blocks, &vvc, &p.value_cache));
    int64_t eqsl[1] = {-1};
    TRY(ha_check_tensor(ctx, op, "query_start_loc", a.query_start_loc, 1, eqsl, HA_DL_INT32, HA_ON_CONTEXT,
                        &vqsl));
    if (vqsl.shape[0] < 1)
        return ha_fail(ctx, BAD, "prefill: query_start_loc.shape[0] = 0, expected num_seqs + 1 >= 1");
    const int64_t num_seqs = vqsl.shape[0] - 1;
    if (num_seqs > INT32_MAX)
        return ha_fail(ctx, BAD, "prefill: query_start_loc.shape[0] = %lld is too many sequences (num_seqs + 1)",
                       (long long)vqsl.shape[0]);
    TRY(check_tables(ctx, op, a.block_tables, a.seq_lens, num_seqs, num_blocks, &vbt, &vsl));
    if (ctx->backend == HA_BACKEND_CPU) {
        const int32_t *q = (const int32_t *)vqsl.data, *sl = (const int32_t *)vsl.data;
        if (q[0] != 0)
            return ha_fail(ctx, BAD, "prefill: query_start_loc[0] = %d, expected 0", q[0]);
        for (int64_t s = 0; s < num_seqs; s++) {
            if (q[s + 1] < q[s])
                return ha_fail(ctx, BAD, "prefill: query_start_loc[%lld] = %d is below query_start_loc[%lld] "
                               "= %d (must not decrease)", (long long)(s + 1), q[s + 1], (long long)s, q[s]);
            if (q[s + 1] - q[s] > sl[s])
                return ha_fail(ctx, BAD, "prefill: sequence %lld has %d query rows but seq_lens[%lld] = %d "
                               "(the chunk must be in the cache)", (long long)s, q[s + 1] - q[s],
                               (long long)s, sl[s]);
        }
        if (q[num_seqs] != num_tokens)
            return ha_fail(ctx, BAD, "prefill: query_start_loc[%lld] = %d, expected num_tokens = %lld",
                           (long long)num_seqs, q[num_seqs], (long long)num_tokens);
    }
    ha_workspace_bounds_t b = bounds_of(ctx);
    b.max_num_seqs = (int32_t)num_seqs;
    b.max_num_tokens = num_tokens;
    b.max_blocks_per_seq = (int32_t)vbt.shape[1];
    TRY(check_workspace(ctx, op, HASHATTN_OP_PREFILL, &b, a.workspace, a.workspace_size));
    if (num_tokens == 0 || num_seqs == 0)
        return OK;

    FILL_ATTENTION(p, ctx, num_seqs, vq, vo, vbt, vsl, a, num_blocks);
    p.num_tokens = (int32_t)num_tokens;
    p.query_start_loc = (const int32_t *)vqsl.data;
    return from_kernel(ctx, op, DISPATCH(ctx, prefill, &p));
}

/* ---- hash ---- */

status_t ha_hash(hashattn_context_t *ctx, const hashattn_hash_args_t *args)
{
    static const char op[] = "hash";
    if (!ctx)
        return ha_fail(NULL, BAD, "hash: ctx is NULL");
    hashattn_hash_args_t a = HASHATTN_HASH_ARGS_INIT;
    TRY(ha_read_struct(ctx, &hash_desc, args, &a));
    TRY(check_common(ctx, op, a.flags, 0, a.layer));
    if (a.side != HASHATTN_HASH_QUERY && a.side != HASHATTN_HASH_KEY)
        return ha_fail(ctx, BAD, "hash: side = %d is not a hashattn_hash_side_t", a.side);
    TRY(need_weights(ctx, op));
    const hashattn_context_config_t *c = &ctx->cfg;
    const int query = a.side == HASHATTN_HASH_QUERY;
    const int64_t hin = query ? c->num_q_heads : c->num_kv_heads;
    const int64_t hout = query ? c->num_q_heads : ctx->num_sig_heads;
    ha_tensor_t vin, vout;
    int64_t ein[3] = {-1, hin, c->head_dim};
    TRY(ha_check_tensor(ctx, op, "input", a.input, 3, ein, ha_dl_dtype(ctx->dtype), HA_ON_CONTEXT, &vin));
    const int64_t n = vin.shape[0];
    int64_t eout[2] = {n, hout};
    TRY(ha_check_tensor(ctx, op, "signatures", a.signatures, 2, eout, HA_DL_UINT32, HA_ON_CONTEXT, &vout));
    if (n > INT32_MAX)
        return ha_fail(ctx, BAD, "hash: input.shape[0] = %lld is too many", (long long)n);
    ha_workspace_bounds_t b = bounds_of(ctx);
    b.max_num_tokens = n;
    TRY(check_workspace(ctx, op, HASHATTN_OP_HASH, &b, a.workspace, a.workspace_size));
    if (n == 0)
        return OK;

    ha_hash_params_t p;
    memset(&p, 0, sizeof p);
    p.dtype = ctx->dtype;
    p.num_tokens = (int32_t)n;
    p.num_in_heads = (int32_t)hin;
    p.num_out_heads = (int32_t)hout;
    p.group = (int32_t)(hout / hin);
    p.head_dim = c->head_dim;
    p.input = rows_of(&vin);
    p.signatures = (uint32_t *)vout.data;
    p.sig_stride_token = vout.strides[0];
    p.sig_stride_head = vout.strides[1];
    p.mlp = ha_weights_mlp(ctx, weights_base(ctx), query ? HA_SIDE_QUERY : HA_SIDE_KEY, a.layer);
    p.workspace = a.workspace;
    p.workspace_size = a.workspace_size;
    p.stream = a.stream;
    p.device = c->device.device_id;
    return from_kernel(ctx, op, DISPATCH(ctx, hash, &p));
}
