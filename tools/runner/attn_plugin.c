/*
 * attn_plugin.c - attention through libhashattn.so on the CPU (float32): the
 * runner owns the paged caches, the plugin writes K/V (and key signatures in
 * hash mode) into them and attends (see attn.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn/hashattn.h>

#include "attn.h"

typedef struct plugin {
    rn_attn_t base;
    rn_plugin_t pl;
    int dense;                /* 1: dense decode, no signatures written */
    float *k_cache, *v_cache; /* [L, num_blocks, block_size, Hkv, D] (NHD) */
    uint32_t *sig_cache;      /* [L, num_blocks, Hsig, block_size]; NULL when dense-only */
    int32_t *counts;          /* [max_seqs, Hsel] */
    void *workspace;
    size_t workspace_size;
} plugin_t;

static const DLDataType k_f32 = { kDLFloat, 32, 1 };
static const DLDataType k_i32 = { kDLInt, 32, 1 };
static const DLDataType k_i64 = { kDLInt, 64, 1 };
static const DLDataType k_u32 = { kDLUInt, 32, 1 };

void rn_attn_stats_reset(rn_attn_stats_t *s)
{
    memset(s, 0, sizeof *s);
    s->attended_min = -1;
    s->counts_known = 1;
}

void rn_attn_stats_add(rn_attn_stats_t *s, int layer, int num_layers, const int32_t *counts, int hsel, int64_t len)
{
    if (layer == 0) {
        s->decode_steps++;
        s->context_sum += (double)len;
    }
    double sum = 0;
    for (int h = 0; h < hsel; h++) {
        int64_t c = counts ? counts[h] : -1;
        if (c < 0) { /* not reported: dense means every token */
            s->counts_known = 0;
            c = len;
        }
        sum += (double)c;
        if (s->attended_min < 0 || c < s->attended_min)
            s->attended_min = c;
        if (c > s->attended_max)
            s->attended_max = c;
    }
    s->attended_sum += sum / hsel / num_layers;
}

static int fail(plugin_t *s, const char *what, hashattn_status_t st)
{
    return rn_plugin_fail(&s->pl, what, st, s->base.err, sizeof s->base.err);
}

static int plugin_attend(rn_attn_t *a, int layer, const rn_plan_t *plan, const float *q, const float *k,
                         const float *v, float *out)
{
    plugin_t *s = (plugin_t *)a;
    const hashattn_api_t *api = s->pl.api;
    const int64_t hq = a->num_q_heads, hkv = a->num_kv_heads, d = a->head_dim;
    const int64_t nb = a->num_blocks, bs = a->block_size, hsig = s->pl.sig_heads;
    const size_t kv_layer = (size_t)(nb * bs * hkv * d), sig_layer = (size_t)(nb * hsig * bs);
    const int T = plan->n_tokens, nd = plan->n_decode, np = plan->n_seqs - plan->n_decode;
    const int sigs = s->sig_cache && !s->dense;

    int64_t sh_kv[3] = { T, hkv, d }, sh_cache[4] = { nb, bs, hkv, d }, sh_sig[3] = { nb, hsig, bs };
    int64_t sh_slots[1] = { T };
    DLTensor tk = rn_dl_tensor(&s->pl, (void *)k, k_f32, 3, sh_kv, NULL);
    DLTensor tv = rn_dl_tensor(&s->pl, (void *)v, k_f32, 3, sh_kv, NULL);
    DLTensor kc = rn_dl_tensor(&s->pl, s->k_cache + layer * kv_layer, k_f32, 4, sh_cache, NULL);
    DLTensor vc = rn_dl_tensor(&s->pl, s->v_cache + layer * kv_layer, k_f32, 4, sh_cache, NULL);
    DLTensor sc = rn_dl_tensor(&s->pl, sigs ? s->sig_cache + layer * sig_layer : NULL, k_u32, 3, sh_sig, NULL);
    DLTensor slots = rn_dl_tensor(&s->pl, plan->slots, k_i64, 1, sh_slots, NULL);

    hashattn_cache_write_args_t w = HASHATTN_CACHE_WRITE_ARGS_INIT;
    w.layer = layer;
    w.key = &tk;
    w.value = &tv;
    w.key_cache = &kc;
    w.value_cache = &vc;
    w.signature_cache = sigs ? &sc : NULL; /* dense: K/V only */
    w.slot_mapping = &slots;
    w.workspace = s->workspace;
    w.workspace_size = s->workspace_size;
    hashattn_status_t st = api->cache_write(s->pl.ctx, &w);
    if (st != HASHATTN_STATUS_OK)
        return fail(s, "cache_write", st);

    if (nd > 0) {
        int64_t sh_q[3] = { nd, hq, d }, sh_bt[2] = { nd, plan->width }, sh_sl[1] = { nd };
        int64_t sh_cnt[2] = { nd, s->pl.sel_heads };
        DLTensor tq = rn_dl_tensor(&s->pl, (void *)q, k_f32, 3, sh_q, NULL);
        DLTensor to = rn_dl_tensor(&s->pl, out, k_f32, 3, sh_q, NULL);
        DLTensor bt = rn_dl_tensor(&s->pl, plan->tables, k_i32, 2, sh_bt, NULL);
        DLTensor sl = rn_dl_tensor(&s->pl, plan->seq_lens, k_i32, 1, sh_sl, NULL);
        for (int i = 0; i < nd * s->pl.sel_heads; i++)
            s->counts[i] = -1;
        DLTensor cnt = rn_dl_tensor(&s->pl, s->counts, k_i32, 2, sh_cnt, NULL);
        hashattn_decode_args_t da = HASHATTN_DECODE_ARGS_INIT;
        da.flags = sigs ? 0u : HASHATTN_DECODE_DENSE;
        da.layer = layer;
        da.query = &tq;
        da.key_cache = &kc;
        da.value_cache = &vc;
        da.signature_cache = sigs ? &sc : NULL; /* dense needs none */
        da.block_tables = &bt;
        da.seq_lens = &sl;
        da.output = &to;
        da.selected_counts = &cnt;
        da.workspace = s->workspace;
        da.workspace_size = s->workspace_size;
        st = api->decode(s->pl.ctx, &da);
        if (st != HASHATTN_STATUS_OK)
            return fail(s, "decode", st);
        for (int i = 0; i < nd; i++)
            rn_attn_stats_add(&a->stats, layer, a->num_layers, s->counts + (size_t)i * s->pl.sel_heads,
                              s->pl.sel_heads, plan->seq_lens[i]);
    }
    if (np > 0) {
        const int r0 = plan->q_start[nd], rows = T - r0;
        int64_t sh_q[3] = { rows, hq, d }, sh_bt[2] = { np, plan->width }, sh_sl[1] = { np };
        int64_t sh_qsl[1] = { np + 1 };
        DLTensor tq = rn_dl_tensor(&s->pl, (void *)(q + (size_t)r0 * hq * d), k_f32, 3, sh_q, NULL);
        DLTensor to = rn_dl_tensor(&s->pl, out + (size_t)r0 * hq * d, k_f32, 3, sh_q, NULL);
        DLTensor bt = rn_dl_tensor(&s->pl, plan->tables + (size_t)nd * plan->width, k_i32, 2, sh_bt, NULL);
        DLTensor sl = rn_dl_tensor(&s->pl, plan->seq_lens + nd, k_i32, 1, sh_sl, NULL);
        DLTensor qsl = rn_dl_tensor(&s->pl, plan->qsl_prefill, k_i32, 1, sh_qsl, NULL);
        hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
        pa.layer = layer;
        pa.query = &tq;
        pa.key_cache = &kc;
        pa.value_cache = &vc;
        pa.block_tables = &bt;
        pa.seq_lens = &sl;
        pa.query_start_loc = &qsl;
        pa.output = &to;
        pa.workspace = s->workspace;
        pa.workspace_size = s->workspace_size;
        st = api->prefill(s->pl.ctx, &pa);
        if (st != HASHATTN_STATUS_OK)
            return fail(s, "prefill", st);
    }
    return 0;
}

static int plugin_set_dense(rn_attn_t *a, int dense)
{
    plugin_t *s = (plugin_t *)a;
    if (!dense && !s->sig_cache) {
        snprintf(a->err, sizeof a->err, "hash decode needs a context created for hash mode");
        return -1;
    }
    s->dense = dense != 0;
    return 0;
}

static void plugin_destroy(rn_attn_t *a)
{
    plugin_t *s = (plugin_t *)a;
    rn_plugin_close(&s->pl);
    free(s->k_cache);
    free(s->v_cache);
    free(s->sig_cache);
    free(s->counts);
    free(s->workspace);
    free(s);
}

static const rn_attn_ops_t k_plugin_ops = { "plugin", plugin_attend, plugin_set_dense, plugin_destroy };

int rn_attn_plugin_random_weights(const rn_attn_t *a)
{
    return a->ops == &k_plugin_ops && ((const plugin_t *)a)->pl.random_weights;
}

int rn_attn_plugin_create(const rn_plugin_config_t *cfg, const rn_attn_shape_t *shape, rn_attn_t **out, char *err,
                          size_t errlen)
{
    *out = NULL;
    if (shape->num_blocks < 1 || shape->max_seqs < 1 || shape->max_tokens < 1 || shape->max_blocks < 1) {
        snprintf(err, errlen, "plugin attention: bad capacities");
        return -1;
    }
    plugin_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rn_attn_t *a = &s->base;
    a->ops = &k_plugin_ops;
    a->num_layers = shape->num_layers;
    a->num_q_heads = shape->num_q_heads;
    a->num_kv_heads = shape->num_kv_heads;
    a->head_dim = shape->head_dim;
    a->block_size = shape->block_size;
    a->num_blocks = shape->num_blocks;
    a->max_seqs = shape->max_seqs;
    a->max_tokens = shape->max_tokens;
    a->max_blocks = shape->max_blocks;
    rn_attn_stats_reset(&a->stats);

    rn_plugin_config_t pc = *cfg;
    pc.num_layers = shape->num_layers;
    pc.num_q_heads = shape->num_q_heads;
    pc.num_kv_heads = shape->num_kv_heads;
    pc.head_dim = shape->head_dim;
    pc.block_size = shape->block_size;
    pc.cuda = 0;
    pc.dtype = RN_DT_F32;
    if (rn_plugin_open(&s->pl, &pc, err, errlen)) {
        free(s);
        return -1;
    }
    s->dense = !pc.hash;
    const size_t kv = (size_t)a->num_layers * a->num_blocks * a->block_size * a->num_kv_heads * a->head_dim;
    s->k_cache = calloc(kv, sizeof(float));
    s->v_cache = calloc(kv, sizeof(float));
    if (pc.hash)
        s->sig_cache = calloc((size_t)a->num_layers * a->num_blocks * s->pl.sig_heads * a->block_size,
                              sizeof(uint32_t));
    s->counts = calloc((size_t)a->max_seqs * s->pl.sel_heads, sizeof *s->counts);
    if (!s->k_cache || !s->v_cache || (pc.hash && !s->sig_cache) || !s->counts) {
        snprintf(err, errlen, "out of memory for KV caches of %d blocks", a->num_blocks);
        plugin_destroy(a);
        return -1;
    }
    if (rn_plugin_workspace(&s->pl, a->max_seqs, a->max_tokens, a->max_blocks, &s->workspace_size, err, errlen)) {
        plugin_destroy(a);
        return -1;
    }
    if (s->workspace_size && !(s->workspace = malloc(s->workspace_size))) {
        snprintf(err, errlen, "out of memory for a %zu-byte workspace", s->workspace_size);
        plugin_destroy(a);
        return -1;
    }
    snprintf(a->desc, sizeof a->desc, "%s", s->pl.desc);
    *out = a;
    return 0;
}
