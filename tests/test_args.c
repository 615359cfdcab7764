/*
 * test_args.c - argument validation. Every bad-argument case starts from a
 * valid call (checked by args(baseline)), breaks one thing and expects the
 * right status, a last_error message naming the argument, and caches and
 * outputs bit-identical to before (checksums over whole allocations).
 * Then context_create with bad configs.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ha_test.h"

enum { OP_DECODE, OP_WRITE, OP_PREFILL, OP_HASH, OP_WS };
static const char *k_op_names[] = {"decode", "cache_write", "prefill", "hash", "workspace_size"};

typedef struct tmod {
    DLTensor t;
    int64_t shape[HT_MAX_DIMS], strides[HT_MAX_DIMS];
} tmod_t;

typedef struct env {
    const hashattn_api_t *api;
    ht_decode_case_t dc;
    ht_prefill_case_t pc;
    hashattn_context_t *ctx;    /* the context the call goes to */
    hashattn_context_t *unbound;/* a context without weights (NOT_READY) */
    hashattn_decode_args_t da;
    hashattn_budget_t budget;
    hashattn_cache_write_args_t wa;
    ht_tensor_t *wkey, *wval, *wslots;
    ht_tensor_t *wq, *wqs; /* cache_write's query / query_signatures (1.2), set by mutations */
    DLTensor *wq_t, *wqs_t;/* their mutable descriptors once set */
    ht_tensor_t *dqs;      /* decode's query_signatures (1.2), set by mutations */
    ht_workspace_t wws;
    hashattn_prefill_args_t pa;
    hashattn_hash_args_t ha;
    ht_tensor_t *hin, *hout;
    ht_workspace_t hws;
    hashattn_workspace_args_t wsa;
    tmod_t mods[8];
    int nmods;
    int not_applicable;
} env_t;

/* A mutable copy of a tensor's descriptor (same data). */
static DLTensor *mod(env_t *e, const DLTensor *src)
{
    tmod_t *m = &e->mods[e->nmods++];
    m->t = *src;
    memcpy(m->shape, src->shape, sizeof(int64_t) * (size_t)src->ndim);
    if (src->strides) {
        memcpy(m->strides, src->strides, sizeof(int64_t) * (size_t)src->ndim);
    } else {
        int64_t acc = 1;
        for (int i = src->ndim - 1; i >= 0; i--) {
            m->strides[i] = acc;
            acc *= src->shape[i];
        }
    }
    m->t.shape = m->shape;
    m->t.strides = m->strides;
    return &m->t;
}

static const int k_lens[3] = {9, 17, 5};

static void env_setup(env_t *e, int op)
{
    memset(e, 0, sizeof *e);
    e->api = ht_api();
    ck_assert_msg(e->api != NULL, "%s", ht_load_error());
    const hashattn_api_t *api = e->api;
    char err[512];
    ht_decode_desc_t d = {0};
    d.dtype = HT_BF16;
    d.hq = 4;
    d.hkv = 2;
    d.d = 64;
    d.block = 4;
    d.batch = 3;
    d.m = 16;
    d.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    d.selection = HASHATTN_SELECTION_GROUP;
    d.sig_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    d.sink = 2;
    d.recent = 2;
    d.heavy_count = 3;
    d.seq_lens = k_lens;
    d.fill = HT_FILL_WRITE;
    d.layers = 2;
    d.seed = 77;
    ck_assert_msg(ht_decode_case_build(api, &d, &e->dc, err, sizeof err) == 0, "%s", err);
    e->ctx = e->dc.ctx;
    ht_decode_case_args(&e->dc, &e->da);
    e->budget = e->dc.budget;
    e->da.budget = &e->budget;

    ht_rng_t r;
    ht_rng_seed(&r, 78);
    /* cache_write of 3 tokens into valid slots */
    e->wkey = ht_tensor_new(HT_BF16, 3, HT_IDX(3, 2, 64), 0, NULL);
    e->wval = ht_tensor_new(HT_BF16, 3, HT_IDX(3, 2, 64), 0, NULL);
    e->wslots = ht_tensor_new(HT_I64, 1, HT_IDX(3), 0, NULL);
    ht_tensor_fill_uniform(e->wkey, &r, -1, 1);
    ht_tensor_fill_uniform(e->wval, &r, -1, 1);
    HT_SET(e->wslots, 0, 0);
    HT_SET(e->wslots, 5, 1);
    HT_SET(e->wslots, (double)e->dc.num_blocks * 4 - 1, 2);
    ck_assert_int_eq(ht_workspace_alloc(api, e->ctx, HASHATTN_OP_CACHE_WRITE, 0, 3, 0, &e->wws),
                     HASHATTN_STATUS_OK);
    e->wa = (hashattn_cache_write_args_t)HASHATTN_CACHE_WRITE_ARGS_INIT;
    e->wa.key = &e->wkey->t;
    e->wa.value = &e->wval->t;
    e->wa.key_cache = &e->dc.key_cache->t;
    e->wa.value_cache = &e->dc.value_cache->t;
    e->wa.signature_cache = &e->dc.sig_cache->t;
    e->wa.slot_mapping = &e->wslots->t;
    e->wa.workspace = e->wws.ptr;
    e->wa.workspace_size = e->wws.size;
    /* 2 queries (not the 3 keys: their counts are independent) */
    e->wq = ht_tensor_new(HT_BF16, 3, HT_IDX(2, 4, 64), 0, NULL);
    ht_tensor_fill_uniform(e->wq, &r, -1, 1);
    e->wqs = ht_tensor_new(HT_U32, 2, HT_IDX(2, 4), 0, NULL);
    /* decode's: any values will do here */
    e->dqs = ht_tensor_new(HT_U32, 2, HT_IDX(3, 4), 0, NULL);
    ht_tensor_zero(e->dqs);

    /* hash: key side, 5 keys */
    e->hin = ht_tensor_new(HT_BF16, 3, HT_IDX(5, 2, 64), 0, NULL);
    ht_tensor_fill_uniform(e->hin, &r, -1, 1);
    e->hout = ht_tensor_new(HT_U32, 2, HT_IDX(5, 4), 0, NULL);
    ck_assert_int_eq(ht_workspace_alloc(api, e->ctx, HASHATTN_OP_HASH, 0, 5, 0, &e->hws),
                     HASHATTN_STATUS_OK);
    e->ha = (hashattn_hash_args_t)HASHATTN_HASH_ARGS_INIT;
    e->ha.side = HASHATTN_HASH_KEY;
    e->ha.input = &e->hin->t;
    e->ha.signatures = &e->hout->t;
    e->ha.workspace = e->hws.ptr;
    e->ha.workspace_size = e->hws.size;

    memset(&e->wsa, 0, sizeof e->wsa);
    e->wsa.struct_size = sizeof e->wsa;
    e->wsa.op = HASHATTN_OP_DECODE;
    e->wsa.max_num_seqs = 3;
    e->wsa.max_num_tokens = 3;
    e->wsa.max_blocks_per_seq = 8;

    if (op == OP_PREFILL) {
        ht_prefill_desc_t p = {0};
        p.dtype = HT_BF16;
        p.hq = 4;
        p.hkv = 2;
        p.d = 64;
        p.block = 4;
        p.batch = 3;
        p.m = 16;
        p.max_prefix = 6;
        p.max_chunk = 5;
        p.seed = 79;
        ck_assert_msg(ht_prefill_case_build(api, &p, &e->pc, err, sizeof err) == 0, "%s", err);
        ht_prefill_case_args(&e->pc, &e->pa);
        e->ctx = e->pc.ctx;
    }
}

static void env_teardown(env_t *e)
{
    if (e->unbound)
        e->api->context_destroy(e->unbound);
    ht_tensor_free(e->wkey);
    ht_tensor_free(e->wval);
    ht_tensor_free(e->wslots);
    ht_tensor_free(e->wq);
    ht_tensor_free(e->wqs);
    ht_tensor_free(e->dqs);
    ht_tensor_free(e->hin);
    ht_tensor_free(e->hout);
    ht_workspace_free(&e->wws);
    ht_workspace_free(&e->hws);
    ht_decode_case_free(&e->dc);
    if (e->pc.api)
        ht_prefill_case_free(&e->pc);
}

static hashattn_context_t *unbound_ctx(env_t *e, int prefill)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = prefill ? 1 : 2;
    cfg.num_q_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.block_size = 4;
    cfg.mlp_width = 16;
    hashattn_status_t st = e->api->context_create(&cfg, &e->unbound);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    return e->unbound;
}

static hashattn_status_t env_call(env_t *e, int op)
{
    size_t bytes = 0;
    switch (op) {
    case OP_DECODE: return e->api->decode(e->ctx, &e->da);
    case OP_WRITE: return e->api->cache_write(e->ctx, &e->wa);
    case OP_PREFILL: return e->api->prefill(e->ctx, &e->pa);
    case OP_HASH: return e->api->hash(e->ctx, &e->ha);
    default: return e->api->workspace_size(e->ctx, &e->wsa, &bytes);
    }
}

/* Checksum of everything a refused call must leave alone. */
static uint64_t env_checksum(env_t *e, int op)
{
    uint64_t h = 0;
    ht_tensor_t *ts[] = {e->dc.key_cache, e->dc.value_cache, e->dc.sig_cache, e->dc.output,
                         e->dc.sel_idx, e->dc.sel_cnt, e->hout, e->pc.key_cache,
                         e->pc.value_cache, e->pc.sig_cache, e->pc.output, e->wqs, e->dqs};
    for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++)
        if (ts[i])
            h = h * 1099511628211ull ^ ht_checksum(ts[i]);
    (void)op;
    return h;
}

/* ---- mutations ---- */
#define MUT(fn, body) static void fn(env_t *e) { body; }
#define DA e->da
#define WA e->wa
#define PA e->pa
#define HA e->ha

/* decode */
MUT(d_query_dtype, { DLTensor *t = mod(e, DA.query); t->dtype = HT_F16; DA.query = t; })
MUT(d_query_ndim, { DLTensor *t = mod(e, DA.query); t->ndim = 2; t->shape[1] = 4 * 64; t->strides[1] = 1; DA.query = t; })
MUT(d_query_shape, { DLTensor *t = mod(e, DA.query); t->shape[1] = 3; DA.query = t; })
MUT(d_query_dim, { DLTensor *t = mod(e, DA.query); t->shape[2] = 128; DA.query = t; })
MUT(d_query_inner_stride, { DLTensor *t = mod(e, DA.query); t->strides[2] = 2; DA.query = t; })
MUT(d_query_null, { DA.query = NULL; })
MUT(d_query_device, { DLTensor *t = mod(e, DA.query); t->device.device_type = kDLCUDA; DA.query = t; })
MUT(d_query_rows, { DLTensor *t = mod(e, DA.query); t->shape[0] = 2; DA.query = t; })
MUT(d_kc_dtype, { DLTensor *t = mod(e, DA.key_cache); t->dtype = HT_F32; DA.key_cache = t; })
MUT(d_kc_heads, { DLTensor *t = mod(e, DA.key_cache); t->shape[2] = 3; DA.key_cache = t; })
MUT(d_kc_inner_stride, { DLTensor *t = mod(e, DA.key_cache); t->strides[3] = 2; DA.key_cache = t; })
MUT(d_kc_block_size, { DLTensor *t = mod(e, DA.key_cache); t->shape[1] = 8; DA.key_cache = t; })
MUT(d_kc_ndim, { DLTensor *t = mod(e, DA.key_cache); t->ndim = 3; DA.key_cache = t; })
MUT(d_kc_device, { DLTensor *t = mod(e, DA.key_cache); t->device.device_type = kDLCUDA; DA.key_cache = t; })
MUT(d_kc_null, { DA.key_cache = NULL; })
MUT(d_vc_blocks, { DLTensor *t = mod(e, DA.value_cache); t->shape[0] -= 1; DA.value_cache = t; })
MUT(d_vc_dtype, { DLTensor *t = mod(e, DA.value_cache); t->dtype = HT_F16; DA.value_cache = t; })
MUT(d_vc_null, { DA.value_cache = NULL; })
MUT(d_sc_hsig, { DLTensor *t = mod(e, DA.signature_cache); t->shape[1] = 2; DA.signature_cache = t; })
MUT(d_sc_dtype, { DLTensor *t = mod(e, DA.signature_cache); t->dtype = HT_I32; DA.signature_cache = t; })
MUT(d_sc_blocks, { DLTensor *t = mod(e, DA.signature_cache); t->shape[0] -= 1; DA.signature_cache = t; })
MUT(d_sc_inner_stride, { DLTensor *t = mod(e, DA.signature_cache); t->strides[2] = 2; DA.signature_cache = t; })
MUT(d_sc_block_size, { DLTensor *t = mod(e, DA.signature_cache); t->shape[2] = 2; DA.signature_cache = t; })
MUT(d_sc_null, { DA.signature_cache = NULL; })
MUT(d_bt_negative, { HT_SET(e->dc.block_tables, -1, 1, 2); })
MUT(d_bt_too_big, { HT_SET(e->dc.block_tables, e->dc.num_blocks, 2, 1); })
MUT(d_bt_huge, { HT_SET(e->dc.block_tables, 0x7fffffff, 0, 0); })
MUT(d_bt_dtype, { DLTensor *t = mod(e, DA.block_tables); t->dtype = HT_I64; DA.block_tables = t; })
MUT(d_bt_rows, { DLTensor *t = mod(e, DA.block_tables); t->shape[0] = 2; DA.block_tables = t; })
MUT(d_bt_ndim, { DLTensor *t = mod(e, DA.block_tables); t->ndim = 1; DA.block_tables = t; })
MUT(d_bt_null, { DA.block_tables = NULL; })
MUT(d_sl_too_long, { HT_SET(e->dc.seq_lens, (double)e->dc.max_blocks * 4 + 1, 1); })
MUT(d_sl_negative, { HT_SET(e->dc.seq_lens, -1, 0); })
MUT(d_sl_dtype, { DLTensor *t = mod(e, DA.seq_lens); t->dtype = HT_I64; DA.seq_lens = t; })
MUT(d_sl_shape, { DLTensor *t = mod(e, DA.seq_lens); t->shape[0] = 4; DA.seq_lens = t; })
MUT(d_sl_null, { DA.seq_lens = NULL; })
MUT(d_sl_stride, { DLTensor *t = mod(e, DA.seq_lens); t->strides[0] = 2; DA.seq_lens = t; })
MUT(d_out_shape, { DLTensor *t = mod(e, DA.output); t->shape[1] = 8; DA.output = t; })
MUT(d_out_dtype, { DLTensor *t = mod(e, DA.output); t->dtype = HT_F32; DA.output = t; })
MUT(d_out_null, { DA.output = NULL; })
MUT(d_layer_high, { DA.layer = 2; })
MUT(d_layer_negative, { DA.layer = -1; })
MUT(d_flags, { DA.flags = 1u << 2; }) /* bit 1 is TP_SHARDED since 1.1 */
MUT(d_size_short, { DA.struct_size = sizeof(hashattn_decode_args_t) - 1; })
MUT(d_size_zero, { DA.struct_size = 0; })
MUT(d_size_field, { DA.struct_size = offsetof(hashattn_decode_args_t, output); })
MUT(d_ctx_null, { e->ctx = NULL; })
MUT(d_ws_small, {
    if (e->dc.ws.size == 0) e->not_applicable = 1;
    else DA.workspace_size = e->dc.ws.size - 1;
})
MUT(d_ws_null, {
    if (e->dc.ws.size == 0) e->not_applicable = 1;
    else { DA.workspace = NULL; DA.workspace_size = 0; }
})
MUT(d_ws_null_sized, {
    if (e->dc.ws.size == 0) e->not_applicable = 1;
    else DA.workspace = NULL; /* workspace_size still says enough */
})
MUT(d_not_ready, { e->ctx = unbound_ctx(e, 0); })
/* Counts past int32 and spans past 64-bit offsets: refused from the descriptors
 * alone (the data behind them is the small valid tensors', never read). */
#define E31 ((int64_t)1 << 31)
#define E40 ((int64_t)1 << 40)
MUT(d_query_seqs_2e31, { DLTensor *t = mod(e, DA.query); t->shape[0] = E31; DA.query = t; })
MUT(d_bt_cols_2e31, { DLTensor *t = mod(e, DA.block_tables); t->shape[1] = E31; DA.block_tables = t; })
MUT(d_si_cap_2e31, { DLTensor *t = mod(e, DA.selected_indices); t->shape[2] = E31; DA.selected_indices = t; })
/* 2^31 - 1 sequences and 2^40 entries each: the element count's product
 * (2^72) overflowed int64 before it was checked */
static void d_si_elements(env_t *e)
{
    DLTensor *q = mod(e, DA.query), *o = mod(e, DA.output), *t = mod(e, DA.selected_indices);
    q->shape[0] = o->shape[0] = t->shape[0] = E31 - 1;
    t->shape[2] = E40;
    DA.query = q;
    DA.output = o;
    DA.selected_indices = t;
}
/* 256 sequences of 2^31 - 1 blocks of 4 tokens (2^41 cache slots), every
 * per-sequence tensor resized to match: refused before the tables' values
 * (3 rows here) are read */
static void d_slots(env_t *e)
{
    DLTensor *q = mod(e, DA.query), *o = mod(e, DA.output), *bt = mod(e, DA.block_tables);
    DLTensor *sl = mod(e, DA.seq_lens), *si = mod(e, DA.selected_indices), *sc = mod(e, DA.selected_counts);
    q->shape[0] = o->shape[0] = bt->shape[0] = sl->shape[0] = si->shape[0] = sc->shape[0] = 256;
    bt->shape[1] = E31 - 1;
    DA.query = q;
    DA.output = o;
    DA.block_tables = bt;
    DA.seq_lens = sl;
    DA.selected_indices = si;
    DA.selected_counts = sc;
}
MUT(d_query_stride_2e61, { DLTensor *t = mod(e, DA.query); t->strides[0] = (int64_t)1 << 61; DA.query = t; })
MUT(d_kc_stride_span, {
    DLTensor *t = mod(e, DA.key_cache); /* the last block starts past element 2^56 */
    t->strides[0] = ((int64_t)1 << 56) / (t->shape[0] - 1) + 1;
    DA.key_cache = t;
})
MUT(d_out_offset_2e62, { DLTensor *t = mod(e, DA.output); t->byte_offset = (uint64_t)1 << 62; DA.output = t; })
MUT(d_si_dtype, { DLTensor *t = mod(e, DA.selected_indices); t->dtype = HT_I64; DA.selected_indices = t; })
MUT(d_si_heads, { DLTensor *t = mod(e, DA.selected_indices); t->shape[1] = 4; DA.selected_indices = t; })
MUT(d_si_rows, { DLTensor *t = mod(e, DA.selected_indices); t->shape[0] = 1; DA.selected_indices = t; })
MUT(d_sc_cnt_shape, { DLTensor *t = mod(e, DA.selected_counts); t->shape[1] = 1; DA.selected_counts = t; })
MUT(d_sc_cnt_dtype, { DLTensor *t = mod(e, DA.selected_counts); t->dtype = HT_U32; DA.selected_counts = t; })
MUT(d_b_sink, { e->budget.sink_tokens = -1; })
MUT(d_b_recent, { e->budget.recent_tokens = 0; })
MUT(d_b_fraction, { e->budget.heavy_count = -1; e->budget.heavy_fraction = 1.5f; })
MUT(d_b_fraction_neg, { e->budget.heavy_count = -1; e->budget.heavy_fraction = -0.25f; })
MUT(d_b_fraction_nan, { e->budget.heavy_count = -1; e->budget.heavy_fraction = NAN; })
MUT(d_b_count, { e->budget.heavy_count = -2; })
MUT(d_b_size, { e->budget.struct_size = 0; })
/* decode's query_signatures (1.2): given, then one thing broken */
static DLTensor *d_qs(env_t *e)
{
    DLTensor *t = mod(e, &e->dqs->t);
    DA.query_signatures = t;
    return t;
}
MUT(d_qs_valid, { d_qs(e); })
MUT(d_qs_dtype, { d_qs(e)->dtype = HT_I32; })
MUT(d_qs_cols, { d_qs(e)->shape[1] = 3; })
MUT(d_qs_rows, { d_qs(e)->shape[0] = 2; })
MUT(d_qs_inner_stride, { d_qs(e)->strides[1] = 2; })
MUT(d_qs_ndim, { d_qs(e)->ndim = 3; })
MUT(d_qs_device, { d_qs(e)->device.device_type = kDLCUDA; })
MUT(d_qs_query_dim, { d_qs(e); DLTensor *t = mod(e, DA.query); t->shape[2] = 128; DA.query = t; })

/* cache_write */
MUT(w_slot_high, { HT_SET(e->wslots, (double)e->dc.num_blocks * 4, 1); })
MUT(w_slot_huge, { HT_SET(e->wslots, 1e15, 2); })
MUT(w_slot_dtype, { DLTensor *t = mod(e, WA.slot_mapping); t->dtype = HT_I32; WA.slot_mapping = t; })
MUT(w_slot_len, { DLTensor *t = mod(e, WA.slot_mapping); t->shape[0] = 2; WA.slot_mapping = t; })
MUT(w_slot_null, { WA.slot_mapping = NULL; })
MUT(w_slot_stride, { DLTensor *t = mod(e, WA.slot_mapping); t->strides[0] = 2; WA.slot_mapping = t; })
MUT(w_key_heads, { DLTensor *t = mod(e, WA.key); t->shape[1] = 3; WA.key = t; })
MUT(w_key_dtype, { DLTensor *t = mod(e, WA.key); t->dtype = HT_F16; WA.key = t; })
MUT(w_key_inner_stride, { DLTensor *t = mod(e, WA.key); t->strides[2] = 2; WA.key = t; })
MUT(w_key_null, { WA.key = NULL; })
MUT(w_value_null, { WA.value = NULL; })
MUT(w_value_rows, { DLTensor *t = mod(e, WA.value); t->shape[0] = 2; WA.value = t; })
MUT(w_sc_null, { WA.signature_cache = NULL; WA.flags = HASHATTN_CACHE_WRITE_SIGNATURES_ONLY; })
MUT(w_sc_hsig, { DLTensor *t = mod(e, WA.signature_cache); t->shape[1] = 2; WA.signature_cache = t; })
MUT(w_kc_shape, { DLTensor *t = mod(e, WA.key_cache); t->shape[1] = 5; WA.key_cache = t; })
MUT(w_vc_dtype, { DLTensor *t = mod(e, WA.value_cache); t->dtype = HT_F32; WA.value_cache = t; })
MUT(w_flags, { WA.flags = 1u << 3; })
MUT(w_layer, { WA.layer = 2; })
MUT(w_size, { WA.struct_size = 8; })
MUT(w_not_ready, { e->ctx = unbound_ctx(e, 0); })
static void w_key_rows_2e31(env_t *e)
{
    DLTensor *k = mod(e, WA.key), *sl = mod(e, WA.slot_mapping);
    k->shape[0] = sl->shape[0] = E31;
    WA.key = k;
    WA.slot_mapping = sl;
}
MUT(w_ws_small, {
    if (e->wws.size == 0) e->not_applicable = 1;
    else WA.workspace_size = e->wws.size - 1;
})
/* cache_write's query and query_signatures (1.2): both given, then one thing broken */
static void w_q(env_t *e)
{
    WA.query = e->wq_t = mod(e, &e->wq->t);
    WA.query_signatures = e->wqs_t = mod(e, &e->wqs->t);
}
MUT(w_q_valid, { w_q(e); })
MUT(w_q_only, { w_q(e); WA.query_signatures = NULL; })
MUT(w_qs_only, { w_q(e); WA.query = NULL; })
MUT(w_qs_dtype, { w_q(e); e->wqs_t->dtype = HT_I32; })
MUT(w_qs_cols, { w_q(e); e->wqs_t->shape[1] = 3; })
MUT(w_qs_rows, { w_q(e); e->wqs_t->shape[0] = 3; }) /* = the key count, not the query count */
MUT(w_qs_inner_stride, { w_q(e); e->wqs_t->strides[1] = 2; })
MUT(w_q_dim, { w_q(e); e->wq_t->shape[2] = 128; })
MUT(w_q_heads, { w_q(e); e->wq_t->shape[1] = 2; })
MUT(w_q_dtype, { w_q(e); e->wq_t->dtype = HT_F32; })
MUT(w_q_rows_2e31, { w_q(e); e->wq_t->shape[0] = e->wqs_t->shape[0] = E31; })
MUT(w_q_not_ready, { w_q(e); WA.signature_cache = NULL; e->ctx = unbound_ctx(e, 0); })
/* no keys, 2 queries: the shapes are still checked */
static void w_no_keys(env_t *e)
{
    DLTensor *k = mod(e, WA.key), *v = mod(e, WA.value), *sl = mod(e, WA.slot_mapping);
    k->shape[0] = v->shape[0] = sl->shape[0] = 0;
    WA.key = k, WA.value = v, WA.slot_mapping = sl;
}
MUT(w_q_no_keys_valid, { w_q(e); w_no_keys(e); })
MUT(w_q_no_keys_rows, { w_q(e); w_no_keys(e); e->wqs_t->shape[0] = 1; })
MUT(w_q_no_keys_only, { w_q(e); w_no_keys(e); WA.query = NULL; })
/* the premise of w_q_not_ready: K/V alone need no weights */
MUT(w_kv_unbound, { WA.signature_cache = NULL; e->ctx = unbound_ctx(e, 0); })

/* prefill */
MUT(p_qsl_order, { HT_SET(e->pc.qsl, HT_GET(e->pc.qsl, 2) + 1, 1); })
MUT(p_qsl_first, { HT_SET(e->pc.qsl, 1, 0); })
MUT(p_qsl_last, { HT_SET(e->pc.qsl, HT_GET(e->pc.qsl, 3) - 1, 3); })
MUT(p_qsl_shape, { DLTensor *t = mod(e, PA.query_start_loc); t->shape[0] = 3; PA.query_start_loc = t; })
MUT(p_qsl_dtype, { DLTensor *t = mod(e, PA.query_start_loc); t->dtype = HT_I64; PA.query_start_loc = t; })
MUT(p_qsl_null, { PA.query_start_loc = NULL; })
MUT(p_qsl_stride, { DLTensor *t = mod(e, PA.query_start_loc); t->strides[0] = 2; PA.query_start_loc = t; })
MUT(p_sl_stride, { DLTensor *t = mod(e, PA.seq_lens); t->strides[0] = 2; PA.seq_lens = t; })
MUT(p_rows_gt_len, { HT_SET(e->pc.seq_lens, e->pc.chunk[0] - 1, 0); })
MUT(p_flags, { PA.flags = 1u; })
MUT(p_query_null, { PA.query = NULL; })
MUT(p_query_heads, { DLTensor *t = mod(e, PA.query); t->shape[1] = 2; PA.query = t; })
MUT(p_bt_range, { HT_SET(e->pc.block_tables, e->pc.num_blocks, 0, 0); })
MUT(p_sl_long, { HT_SET(e->pc.seq_lens, (double)e->pc.max_blocks * 4 + 1, 1); })
MUT(p_out_shape, { DLTensor *t = mod(e, PA.output); t->shape[0] += 1; PA.output = t; })
MUT(p_layer, { PA.layer = 1; })
MUT(p_query_rows_2e31, { DLTensor *t = mod(e, PA.query); t->shape[0] = E31; PA.query = t; })
MUT(p_qsl_seqs_2e31, { DLTensor *t = mod(e, PA.query_start_loc); t->shape[0] = E31 + 1; PA.query_start_loc = t; })
MUT(p_ws_small, {
    if (e->pc.ws.size == 0) e->not_applicable = 1;
    else PA.workspace_size = e->pc.ws.size - 1;
})

/* hash */
MUT(h_side, { HA.side = 2; })
MUT(h_input_heads, { DLTensor *t = mod(e, HA.input); t->shape[1] = 4; HA.input = t; })
MUT(h_input_dtype, { DLTensor *t = mod(e, HA.input); t->dtype = HT_F32; HA.input = t; })
MUT(h_input_null, { HA.input = NULL; })
MUT(h_sig_dtype, { DLTensor *t = mod(e, HA.signatures); t->dtype = HT_I32; HA.signatures = t; })
MUT(h_sig_shape, { DLTensor *t = mod(e, HA.signatures); t->shape[1] = 2; HA.signatures = t; })
MUT(h_sig_rows, { DLTensor *t = mod(e, HA.signatures); t->shape[0] = 4; HA.signatures = t; })
MUT(h_layer, { HA.layer = 5; })
MUT(h_not_ready, { e->ctx = unbound_ctx(e, 0); })
static void h_rows_2e31(env_t *e)
{
    DLTensor *in = mod(e, HA.input), *out = mod(e, HA.signatures);
    in->shape[0] = out->shape[0] = E31;
    HA.input = in;
    HA.signatures = out;
}

/* workspace_size */
MUT(s_op, { e->wsa.op = 9; })
MUT(s_seqs, { e->wsa.max_num_seqs = -1; })
MUT(s_tokens, { e->wsa.op = HASHATTN_OP_PREFILL; e->wsa.max_num_tokens = -5; })
MUT(s_tokens_2e31, { e->wsa.op = HASHATTN_OP_HASH; e->wsa.max_num_tokens = ((int64_t)1 << 31) + 1; })
/* 2^20 sequences of 2^19 blocks of 4 tokens: 2^41 cache slots */
MUT(s_slots, { e->wsa.max_num_seqs = 1 << 20; e->wsa.max_blocks_per_seq = 1 << 19; })

#define IA HASHATTN_STATUS_INVALID_ARGUMENT
typedef struct bad_case {
    const char *name;
    int op;
    void (*mutate)(env_t *);
    hashattn_status_t want;
    const char *words; /* '|'-separated: the message must contain one; NULL: no context */
} bad_case_t;

static const bad_case_t k_bad[] = {
    {"query_dtype_f16", OP_DECODE, d_query_dtype, IA, "query"},
    {"query_ndim_2", OP_DECODE, d_query_ndim, IA, "query"},
    {"query_hq_3", OP_DECODE, d_query_shape, IA, "query"},
    {"query_d_128", OP_DECODE, d_query_dim, IA, "query"},
    {"query_inner_stride_2", OP_DECODE, d_query_inner_stride, IA, "query"},
    {"query_null", OP_DECODE, d_query_null, IA, "query"},
    {"query_device_cuda", OP_DECODE, d_query_device, IA, "query|device"},
    {"query_rows_ne_num_seqs", OP_DECODE, d_query_rows, IA, "query|seq_lens|block_tables|output"},
    {"key_cache_dtype_f32", OP_DECODE, d_kc_dtype, IA, "key_cache"},
    {"key_cache_hkv_3", OP_DECODE, d_kc_heads, IA, "key_cache"},
    {"key_cache_inner_stride_2", OP_DECODE, d_kc_inner_stride, IA, "key_cache"},
    {"key_cache_block_size_8", OP_DECODE, d_kc_block_size, IA, "key_cache|block_size"},
    {"key_cache_ndim_3", OP_DECODE, d_kc_ndim, IA, "key_cache"},
    {"key_cache_device_cuda", OP_DECODE, d_kc_device, IA, "key_cache|device"},
    {"key_cache_null", OP_DECODE, d_kc_null, IA, "key_cache"},
    {"value_cache_num_blocks", OP_DECODE, d_vc_blocks, IA, "value_cache"},
    {"value_cache_dtype_f16", OP_DECODE, d_vc_dtype, IA, "value_cache"},
    {"value_cache_null", OP_DECODE, d_vc_null, IA, "value_cache"},
    {"signature_cache_hsig_wrong", OP_DECODE, d_sc_hsig, IA, "signature_cache"},
    {"signature_cache_dtype_i32", OP_DECODE, d_sc_dtype, IA, "signature_cache"},
    {"signature_cache_num_blocks", OP_DECODE, d_sc_blocks, IA, "signature_cache"},
    {"signature_cache_token_stride_2", OP_DECODE, d_sc_inner_stride, IA, "signature_cache"},
    {"signature_cache_block_size", OP_DECODE, d_sc_block_size, IA, "signature_cache"},
    {"signature_cache_null", OP_DECODE, d_sc_null, IA, "signature_cache"},
    {"block_tables_id_negative", OP_DECODE, d_bt_negative, IA, "block_tables"},
    {"block_tables_id_eq_num_blocks", OP_DECODE, d_bt_too_big, IA, "block_tables"},
    {"block_tables_id_int_max", OP_DECODE, d_bt_huge, IA, "block_tables"},
    {"block_tables_dtype_i64", OP_DECODE, d_bt_dtype, IA, "block_tables"},
    {"block_tables_rows", OP_DECODE, d_bt_rows, IA, "block_tables|seq_lens|query"},
    {"block_tables_ndim_1", OP_DECODE, d_bt_ndim, IA, "block_tables"},
    {"block_tables_null", OP_DECODE, d_bt_null, IA, "block_tables"},
    {"seq_len_gt_capacity", OP_DECODE, d_sl_too_long, IA, "seq_lens"},
    {"seq_len_negative", OP_DECODE, d_sl_negative, IA, "seq_lens"},
    {"seq_lens_dtype_i64", OP_DECODE, d_sl_dtype, IA, "seq_lens"},
    {"seq_lens_shape", OP_DECODE, d_sl_shape, IA, "seq_lens|query|block_tables"},
    {"seq_lens_null", OP_DECODE, d_sl_null, IA, "seq_lens"},
    {"seq_lens_stride_2", OP_DECODE, d_sl_stride, IA, "seq_lens.strides[0] = 2"},
    {"output_shape", OP_DECODE, d_out_shape, IA, "output"},
    {"output_dtype_f32", OP_DECODE, d_out_dtype, IA, "output"},
    {"output_null", OP_DECODE, d_out_null, IA, "output"},
    {"layer_eq_num_layers", OP_DECODE, d_layer_high, IA, "layer"},
    {"layer_negative", OP_DECODE, d_layer_negative, IA, "layer"},
    {"unknown_flags", OP_DECODE, d_flags, IA, "flags"},
    {"struct_size_sizeof_minus_1", OP_DECODE, d_size_short, IA, "struct_size"},
    {"struct_size_0", OP_DECODE, d_size_zero, IA, "struct_size"},
    {"struct_size_before_output", OP_DECODE, d_size_field, IA, "struct_size"},
    {"ctx_null", OP_DECODE, d_ctx_null, IA, NULL},
    {"workspace_size_minus_1", OP_DECODE, d_ws_small, HASHATTN_STATUS_WORKSPACE_TOO_SMALL, "workspace"},
    {"workspace_null", OP_DECODE, d_ws_null, HASHATTN_STATUS_WORKSPACE_TOO_SMALL, "workspace"},
    {"workspace_null_size_kept", OP_DECODE, d_ws_null_sized, IA, "workspace is NULL"},
    {"query_rows_2e31", OP_DECODE, d_query_seqs_2e31, IA, "query.shape[0] = 2147483648 is too many"},
    {"block_tables_cols_2e31", OP_DECODE, d_bt_cols_2e31, IA, "block_tables.shape[1] = 2147483648"},
    {"selected_indices_cap_2e31", OP_DECODE, d_si_cap_2e31, IA, "selected_indices.shape[2] = 2147483648"},
    {"selected_indices_2e71_elements", OP_DECODE, d_si_elements, IA, "selected_indices has too many elements"},
    {"slots_2e41", OP_DECODE, d_slots, IA, "block_tables.shape = [256, 2147483647]"},
    {"query_stride_2e61", OP_DECODE, d_query_stride_2e61, IA, "query.strides[0] = 2305843009213693952"},
    {"key_cache_stride_span", OP_DECODE, d_kc_stride_span, IA, "key_cache.strides[0]"},
    {"output_byte_offset_2e62", OP_DECODE, d_out_offset_2e62, IA, "output.byte_offset = 4611686018427387904"},
    {"weights_not_bound", OP_DECODE, d_not_ready, HASHATTN_STATUS_NOT_READY, "weight"},
    {"selected_indices_dtype_i64", OP_DECODE, d_si_dtype, IA, "selected_indices"},
    {"selected_indices_hsel_hq", OP_DECODE, d_si_heads, IA, "selected_indices"},
    {"selected_indices_rows", OP_DECODE, d_si_rows, IA, "selected_indices"},
    {"selected_counts_shape", OP_DECODE, d_sc_cnt_shape, IA, "selected_counts"},
    {"selected_counts_dtype_u32", OP_DECODE, d_sc_cnt_dtype, IA, "selected_counts"},
    {"budget_sink_negative", OP_DECODE, d_b_sink, IA, "sink"},
    {"budget_recent_0", OP_DECODE, d_b_recent, IA, "recent"},
    {"budget_fraction_1.5", OP_DECODE, d_b_fraction, IA, "fraction"},
    {"budget_fraction_negative", OP_DECODE, d_b_fraction_neg, IA, "fraction"},
    {"budget_fraction_nan", OP_DECODE, d_b_fraction_nan, IA, "fraction"},
    {"budget_heavy_count_-2", OP_DECODE, d_b_count, IA, "heavy_count"},
    {"budget_struct_size_0", OP_DECODE, d_b_size, IA, "struct_size"},
    {"query_signatures_dtype_i32", OP_DECODE, d_qs_dtype, IA, "query_signatures.dtype = int32"},
    {"query_signatures_hq_minus_1", OP_DECODE, d_qs_cols, IA, "query_signatures.shape[1] = 3"},
    {"query_signatures_rows_ne_num_seqs", OP_DECODE, d_qs_rows, IA, "query_signatures.shape[0] = 2"},
    {"query_signatures_inner_stride_2", OP_DECODE, d_qs_inner_stride, IA, "query_signatures.strides[1] = 2"},
    {"query_signatures_ndim_3", OP_DECODE, d_qs_ndim, IA, "query_signatures.ndim = 3"},
    {"query_signatures_device_cuda", OP_DECODE, d_qs_device, IA, "query_signatures.device"},
    {"query_d_128_with_query_signatures", OP_DECODE, d_qs_query_dim, IA, "query.shape[2] = 128"},

    {"slot_eq_num_slots", OP_WRITE, w_slot_high, IA, "slot"},
    {"slot_1e15", OP_WRITE, w_slot_huge, IA, "slot"},
    {"slot_mapping_dtype_i32", OP_WRITE, w_slot_dtype, IA, "slot_mapping"},
    {"slot_mapping_len", OP_WRITE, w_slot_len, IA, "slot_mapping|key"},
    {"slot_mapping_null", OP_WRITE, w_slot_null, IA, "slot_mapping"},
    {"slot_mapping_stride_2", OP_WRITE, w_slot_stride, IA, "slot_mapping.strides[0] = 2"},
    {"key_hkv_3", OP_WRITE, w_key_heads, IA, "key"},
    {"key_dtype_f16", OP_WRITE, w_key_dtype, IA, "key"},
    {"key_inner_stride_2", OP_WRITE, w_key_inner_stride, IA, "key"},
    {"key_null", OP_WRITE, w_key_null, IA, "key"},
    {"value_null", OP_WRITE, w_value_null, IA, "value"},
    {"value_rows", OP_WRITE, w_value_rows, IA, "value"},
    {"signatures_only_signature_cache_null", OP_WRITE, w_sc_null, IA, "signature_cache"},
    {"signature_cache_hsig", OP_WRITE, w_sc_hsig, IA, "signature_cache"},
    {"key_cache_block_size_5", OP_WRITE, w_kc_shape, IA, "key_cache|block_size"},
    {"value_cache_dtype_f32", OP_WRITE, w_vc_dtype, IA, "value_cache"},
    {"unknown_flags", OP_WRITE, w_flags, IA, "flags"},
    {"layer_eq_num_layers", OP_WRITE, w_layer, IA, "layer"},
    {"struct_size_8", OP_WRITE, w_size, IA, "struct_size"},
    {"key_rows_2e31", OP_WRITE, w_key_rows_2e31, IA, "key.shape[0] = 2147483648 tokens is too many"},
    {"weights_not_bound", OP_WRITE, w_not_ready, HASHATTN_STATUS_NOT_READY, "weight"},
    {"workspace_size_minus_1", OP_WRITE, w_ws_small, HASHATTN_STATUS_WORKSPACE_TOO_SMALL, "workspace"},
    {"query_without_query_signatures", OP_WRITE, w_q_only, IA, "query is set but query_signatures is NULL"},
    {"query_signatures_without_query", OP_WRITE, w_qs_only, IA, "query is NULL but query_signatures is set"},
    {"query_signatures_dtype_i32", OP_WRITE, w_qs_dtype, IA, "query_signatures.dtype = int32"},
    {"query_signatures_hq_minus_1", OP_WRITE, w_qs_cols, IA, "query_signatures.shape[1] = 3"},
    {"query_signatures_rows_ne_query_rows", OP_WRITE, w_qs_rows, IA, "query_signatures.shape[0] = 3"},
    {"query_signatures_inner_stride_2", OP_WRITE, w_qs_inner_stride, IA, "query_signatures.strides[1] = 2"},
    {"query_d_128", OP_WRITE, w_q_dim, IA, "query.shape[2] = 128"},
    {"query_hq_2", OP_WRITE, w_q_heads, IA, "query.shape[1] = 2"},
    {"query_dtype_f32", OP_WRITE, w_q_dtype, IA, "query.dtype = float32"},
    {"query_weights_not_bound", OP_WRITE, w_q_not_ready, HASHATTN_STATUS_NOT_READY, "weight"},
    {"query_rows_2e31", OP_WRITE, w_q_rows_2e31, IA, "query.shape[0] = 2147483648 is too many"},
    {"no_keys_query_signatures_rows", OP_WRITE, w_q_no_keys_rows, IA, "query_signatures.shape[0] = 1"},
    {"no_keys_query_signatures_without_query", OP_WRITE, w_q_no_keys_only, IA,
     "query is NULL but query_signatures is set"},

    {"query_start_loc_not_monotonic", OP_PREFILL, p_qsl_order, IA, "query_start_loc"},
    {"query_start_loc_first_ne_0", OP_PREFILL, p_qsl_first, IA, "query_start_loc"},
    {"query_start_loc_last_ne_num_tokens", OP_PREFILL, p_qsl_last, IA, "query_start_loc"},
    {"query_start_loc_shape", OP_PREFILL, p_qsl_shape, IA, "query_start_loc|block_tables|seq_lens"},
    {"query_start_loc_dtype_i64", OP_PREFILL, p_qsl_dtype, IA, "query_start_loc"},
    {"query_start_loc_null", OP_PREFILL, p_qsl_null, IA, "query_start_loc"},
    {"query_start_loc_stride_2", OP_PREFILL, p_qsl_stride, IA, "query_start_loc.strides[0] = 2"},
    {"seq_lens_stride_2", OP_PREFILL, p_sl_stride, IA, "seq_lens.strides[0] = 2"},
    {"chunk_longer_than_seq_len", OP_PREFILL, p_rows_gt_len, IA, "seq_lens|query_start_loc"},
    {"unknown_flags", OP_PREFILL, p_flags, IA, "flags"},
    {"query_null", OP_PREFILL, p_query_null, IA, "query"},
    {"query_hq_2", OP_PREFILL, p_query_heads, IA, "query"},
    {"block_tables_id_eq_num_blocks", OP_PREFILL, p_bt_range, IA, "block_tables"},
    {"seq_len_gt_capacity", OP_PREFILL, p_sl_long, IA, "seq_lens"},
    {"output_rows", OP_PREFILL, p_out_shape, IA, "output"},
    {"layer_eq_num_layers", OP_PREFILL, p_layer, IA, "layer"},
    {"query_rows_2e31", OP_PREFILL, p_query_rows_2e31, IA, "query.shape[0] = 2147483648 is too many"},
    {"query_start_loc_2e31_seqs", OP_PREFILL, p_qsl_seqs_2e31, IA, "query_start_loc.shape[0] = 2147483649"},
    {"workspace_size_minus_1", OP_PREFILL, p_ws_small, HASHATTN_STATUS_WORKSPACE_TOO_SMALL, "workspace"},

    {"side_2", OP_HASH, h_side, IA, "side"},
    {"key_input_hq_heads", OP_HASH, h_input_heads, IA, "input"},
    {"input_dtype_f32", OP_HASH, h_input_dtype, IA, "input"},
    {"input_null", OP_HASH, h_input_null, IA, "input"},
    {"signatures_dtype_i32", OP_HASH, h_sig_dtype, IA, "signatures"},
    {"signatures_hsig_2", OP_HASH, h_sig_shape, IA, "signatures"},
    {"signatures_rows", OP_HASH, h_sig_rows, IA, "signatures|input"},
    {"layer_5", OP_HASH, h_layer, IA, "layer"},
    {"weights_not_bound", OP_HASH, h_not_ready, HASHATTN_STATUS_NOT_READY, "weight"},
    {"input_rows_2e31", OP_HASH, h_rows_2e31, IA, "input.shape[0] = 2147483648 is too many"},

    {"op_9", OP_WS, s_op, IA, "op"},
    {"max_num_seqs_negative", OP_WS, s_seqs, IA, "max_num_seqs"},
    {"max_num_tokens_negative", OP_WS, s_tokens, IA, "max_num_tokens = -5"},
    {"max_num_tokens_2e31_plus_1", OP_WS, s_tokens_2e31, IA, "max_num_tokens = 2147483649"},
    {"slots_2e41", OP_WS, s_slots, IA, "more than 2^40 cache slots"},
};
#define NBAD ((int)(sizeof k_bad / sizeof k_bad[0]))

static int msg_names(const char *msg, const char *words)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", words);
    for (char *w = strtok(buf, "|"); w; w = strtok(NULL, "|"))
        if (strstr(msg, w))
            return 1;
    return 0;
}

START_TEST(args_bad)
{
    const bad_case_t *bc = &k_bad[_i];
    char name[160];
    snprintf(name, sizeof name, "bad_arg(op=%s,case=%s)", k_op_names[bc->op], bc->name);
    if (!ht_case_begin(name, 0))
        return;
    env_t e;
    env_setup(&e, bc->op);
    bc->mutate(&e);
    if (e.not_applicable) {
        printf("  not applicable: the library needs no workspace for this call\n");
        env_teardown(&e);
        return;
    }
    uint64_t before = env_checksum(&e, bc->op);
    hashattn_status_t st = env_call(&e, bc->op);
    uint64_t after = env_checksum(&e, bc->op);
    const char *msg = e.ctx ? e.api->last_error(e.ctx) : e.api->last_error(NULL);
    char msgcopy[512];
    snprintf(msgcopy, sizeof msgcopy, "%s", msg ? msg : "(null)");
    /* workspace_size takes a const context: its message may be the thread's */
    if (bc->op == OP_WS && e.ctx && !msg_names(msgcopy, bc->words ? bc->words : ""))
        snprintf(msgcopy, sizeof msgcopy, "%s", e.api->last_error(NULL));
    printf("  -> %s: %s\n", e.api->status_string(st), msgcopy);
    ck_assert_msg(st == bc->want, "%s: got %s (%s), want %s", name, e.api->status_string(st), msgcopy,
                  e.api->status_string(bc->want));
    if (bc->words) {
        ck_assert_msg(msgcopy[0] != 0, "%s: empty last_error", name);
        ck_assert_msg(msg_names(msgcopy, bc->words), "%s: message \"%s\" does not name %s", name,
                      msgcopy, bc->words);
    }
    ck_assert_msg(before == after, "%s: a refused call changed the caches or outputs", name);
    env_teardown(&e);
}
END_TEST

/* The valid calls the 1.2 bad cases start from (their fields set, nothing
 * broken), and the premise of query_weights_not_bound. */
static const struct {
    const char *name;
    int op;
    void (*mutate)(env_t *);
} k_valid[] = {
    {"cache_write+query", OP_WRITE, w_q_valid},
    {"cache_write+query,no_keys", OP_WRITE, w_q_no_keys_valid},
    {"cache_write,kv_only,weights_not_bound", OP_WRITE, w_kv_unbound},
    {"decode+query_signatures", OP_DECODE, d_qs_valid},
};

/* The unmodified calls of args_bad succeed: each bad case breaks one thing. */
START_TEST(args_baseline)
{
    ht_case_begin("bad_arg(baseline)", 0);
    for (int op = OP_DECODE; op <= OP_WS; op++) {
        env_t e;
        env_setup(&e, op);
        hashattn_status_t st = env_call(&e, op);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "baseline %s: %s: %s", k_op_names[op],
                      e.api->status_string(st), e.api->last_error(e.ctx));
        env_teardown(&e);
    }
    for (size_t i = 0; i < sizeof k_valid / sizeof k_valid[0]; i++) {
        env_t e;
        env_setup(&e, k_valid[i].op);
        k_valid[i].mutate(&e);
        hashattn_status_t st = env_call(&e, k_valid[i].op);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "baseline %s: %s: %s", k_valid[i].name,
                      e.api->status_string(st), e.api->last_error(e.ctx));
        env_teardown(&e);
    }
}
END_TEST

/* ------------------------------------------------------------------------- */
/* context_create with bad configs                                            */
/* ------------------------------------------------------------------------- */

typedef struct bad_cfg {
    const char *name;
    void (*mutate)(hashattn_context_config_t *);
    const char *words; /* NULL: any failing status with a message (device cases) */
} bad_cfg_t;

#define CMUT(fn, body) static void fn(hashattn_context_config_t *c) { body; }
CMUT(c_group, { c->num_q_heads = 6; c->num_kv_heads = 4; })
CMUT(c_hkv_gt_hq, { c->num_q_heads = 2; c->num_kv_heads = 4; })
CMUT(c_hq_zero, { c->num_q_heads = 0; })
CMUT(c_hkv_negative, { c->num_kv_heads = -1; })
CMUT(c_d_zero, { c->head_dim = 0; })
CMUT(c_d_12, { c->head_dim = 12; })
CMUT(c_d_264, { c->head_dim = 264; })
CMUT(c_bits_16, { c->hash_bits = 16; })
CMUT(c_bits_64, { c->hash_bits = 64; })
CMUT(c_selection, { c->selection = 7; })
CMUT(c_selection_neg, { c->selection = -1; })
CMUT(c_sig_layout, { c->signature_layout = 5; })
CMUT(c_kv_layout, { c->kv_layout = 2; })
CMUT(c_width_0, { c->mlp_width = 0; })
CMUT(c_width_1025, { c->mlp_width = 1025; })
CMUT(c_layers_0, { c->num_layers = 0; })
CMUT(c_block_0, { c->block_size = 0; })
CMUT(c_dtype_i8, { c->dtype = HT_I8; })
CMUT(c_dtype_f64, { c->dtype = HT_F64; })
CMUT(c_dtype_lanes, { c->dtype.lanes = 2; })
CMUT(c_device_opencl, { c->device.device_type = kDLOpenCL; })
CMUT(c_flags, { c->flags = 1u; })
CMUT(c_size_0, { c->struct_size = 0; })
CMUT(c_size_mid, { c->struct_size = offsetof(hashattn_context_config_t, head_dim) + 2; })
CMUT(c_budget_recent, { c->budget.recent_tokens = 0; })
CMUT(c_budget_sink, { c->budget.sink_tokens = -5; })
CMUT(c_budget_fraction, { c->budget.heavy_fraction = 2.0f; })
CMUT(c_scale_negative, { c->softmax_scale = -1.0f; })
CMUT(c_scale_nan, { c->softmax_scale = NAN; })
CMUT(c_dense_below, { c->dense_below = -2; })
CMUT(c_cuda, { c->device.device_type = kDLCUDA; c->device.device_id = 0; })
CMUT(c_cuda_f32, { c->device.device_type = kDLCUDA; c->dtype = HT_F32; })
CMUT(c_cuda_id, { c->device.device_type = kDLCUDA; c->device.device_id = 4096; })

static const bad_cfg_t k_cfg[] = {
    {"hq_6_hkv_4", c_group, "num_kv_heads|num_q_heads"},
    {"hkv_gt_hq", c_hkv_gt_hq, "num_kv_heads|num_q_heads"},
    {"hq_0", c_hq_zero, "num_q_heads"},
    {"hkv_negative", c_hkv_negative, "num_kv_heads"},
    {"head_dim_0", c_d_zero, "head_dim"},
    {"head_dim_12", c_d_12, "head_dim"},
    {"head_dim_264", c_d_264, "head_dim"},
    {"hash_bits_16", c_bits_16, "hash_bits"},
    {"hash_bits_64", c_bits_64, "hash_bits"},
    {"selection_7", c_selection, "selection"},
    {"selection_negative", c_selection_neg, "selection"},
    {"signature_layout_5", c_sig_layout, "signature_layout"},
    {"kv_layout_2", c_kv_layout, "kv_layout"},
    {"mlp_width_0", c_width_0, "mlp_width"},
    {"mlp_width_1025", c_width_1025, "mlp_width"},
    {"num_layers_0", c_layers_0, "num_layers"},
    {"block_size_0", c_block_0, "block_size"},
    {"dtype_i8", c_dtype_i8, "dtype"},
    {"dtype_f64", c_dtype_f64, "dtype"},
    {"dtype_lanes_2", c_dtype_lanes, "dtype"},
    {"device_opencl", c_device_opencl, "device"},
    {"flags_1", c_flags, "flags"},
    {"struct_size_0", c_size_0, "struct_size"},
    {"struct_size_mid_field", c_size_mid, "struct_size"},
    {"budget_recent_0", c_budget_recent, "recent"},
    {"budget_sink_negative", c_budget_sink, "sink"},
    {"budget_fraction_2", c_budget_fraction, "fraction"},
    {"softmax_scale_negative", c_scale_negative, "softmax_scale"},
    {"softmax_scale_nan", c_scale_nan, "softmax_scale"},
    {"dense_below_-2", c_dense_below, "dense_below = -2"},
    {"device_cuda_0", c_cuda, NULL},
    {"device_cuda_f32", c_cuda_f32, NULL},
    {"device_cuda_4096", c_cuda_id, NULL},
};
#define NCFG ((int)(sizeof k_cfg / sizeof k_cfg[0]))

START_TEST(args_bad_config)
{
    const bad_cfg_t *bc = &k_cfg[_i];
    char name[160];
    snprintf(name, sizeof name, "bad_config(case=%s)", bc->name);
    if (!ht_case_begin(name, 0))
        return;
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 2;
    cfg.num_q_heads = 8;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.dtype = HT_BF16;
    bc->mutate(&cfg);
    hashattn_context_t *out = (hashattn_context_t *)&cfg; /* must become NULL */
    hashattn_status_t st = api->context_create(&cfg, &out);
    const char *msg = api->last_error(NULL);
    printf("  -> %s: %s\n", api->status_string(st), msg);
    if (!bc->words) {
        /* a CUDA device: a status, never a crash; succeeds only with a GPU */
        if (st == HASHATTN_STATUS_OK) {
            ck_assert_ptr_nonnull(out);
            ck_assert_msg(bc->mutate == c_cuda, "%s: created a context", name);
            api->context_destroy(out);
            return;
        }
        ck_assert_msg(st == HASHATTN_STATUS_UNSUPPORTED || st == HASHATTN_STATUS_DEVICE_ERROR ||
                          st == HASHATTN_STATUS_INVALID_ARGUMENT,
                      "%s: %s", name, api->status_string(st));
        ck_assert_ptr_null(out);
        ck_assert_msg(msg && msg[0], "%s: empty last_error(NULL)", name);
        return;
    }
    ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "%s: got %s (%s), want INVALID_ARGUMENT",
                  name, api->status_string(st), msg);
    ck_assert_msg(out == NULL, "%s: *out not set to NULL on failure", name);
    ck_assert_msg(msg_names(msg, bc->words), "%s: message \"%s\" does not name %s", name, msg, bc->words);
}
END_TEST

/* The base config of args_bad_config is valid. */
START_TEST(args_config_baseline)
{
    ht_case_begin("bad_config(baseline)", 0);
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 2;
    cfg.num_q_heads = 8;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    hashattn_context_t *out = NULL;
    hashattn_status_t st = api->context_create(&cfg, &out);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: %s", api->status_string(st), api->last_error(NULL));
    api->context_destroy(out);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("args");
    TCase *tc = tcase_create("bad_args");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, args_baseline);
    tcase_add_loop_test(tc, args_bad, 0, NBAD);
    suite_add_tcase(s, tc);
    TCase *tc2 = tcase_create("bad_config");
    tcase_set_timeout(tc2, 60);
    tcase_add_test(tc2, args_config_baseline);
    tcase_add_loop_test(tc2, args_bad_config, 0, NCFG);
    suite_add_tcase(s, tc2);
    return s;
}

int main(void)
{
    printf("bad-argument cases: %d run-path + %d context_create\n", NBAD, NCFG);
    return ht_run_suite(suite(), "test_args");
}
