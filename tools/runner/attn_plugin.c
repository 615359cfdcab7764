/*
 * attn_plugin.c - attention through libhashattn.so on the CPU (float32): the
 * runner owns the paged caches, the plugin writes K/V (and key signatures in
 * hash mode) into them and attends (see attn.h).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn/hashattn.h>

#include "attn.h"
#include "matmul.h"

enum { RN_ATTN_MAX_PARTS = 32 };

typedef struct plugin {
    rn_attn_t base;
    rn_plugin_t pl;
    int dense;                /* 1: dense decode, no signatures written */
    float *k_cache, *v_cache; /* [L, num_blocks, block_size, Hkv, D] (NHD) */
    uint32_t *sig_cache;      /* [L, num_blocks, Hsig, block_size]; NULL when dense-only */
    int32_t *counts;          /* [max_seqs, Hsel] */
    void *workspace;          /* [parts] workspaces, workspace_stride bytes apart */
    size_t workspace_size, workspace_stride;
    int parts;                /* threads a prefill call is split over */
    double min_work;          /* keys read by a step's prefill rows below which it is not split */
    int32_t *part_qsl, *part_lens;                  /* [parts, max_seqs (+1)] */
    hashattn_status_t part_status[RN_ATTN_MAX_PARTS];
} plugin_t;

static int g_split_parts;            /* 0 = rn_matmul_threads() */
static double g_split_min_work = 2e5; /* keys read; below it one call */

void rn_attn_plugin_split_defaults(int parts, double min_work)
{
    g_split_parts = parts < 0 ? 0 : parts;
    g_split_min_work = min_work;
}

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

/* One prefill call for query rows [ra, rb) of the plan (all in its prefill
 * part), which may cut a sequence's chunk: a row's attention depends only on
 * its own position, so the part's sequences end where their last row ends. */
static int prefill_rows(plugin_t *s, int layer, const rn_plan_t *plan, const float *q, float *out, DLTensor *kc,
                        DLTensor *vc, int ra, int rb, int part)
{
    const rn_attn_t *a = &s->base;
    const int64_t hq = a->num_q_heads, d = a->head_dim;
    int32_t *qsl = s->part_qsl + (size_t)part * (a->max_seqs + 1);
    int32_t *sl = s->part_lens + (size_t)part * a->max_seqs;
    int first = -1, n = 0;
    for (int i = plan->n_decode; i < plan->n_seqs; i++) {
        const int b = plan->q_start[i], e = plan->q_start[i + 1];
        const int lo = b > ra ? b : ra, hi = e < rb ? e : rb;
        if (lo >= hi)
            continue;
        if (first < 0)
            first = i;
        qsl[n] = lo - ra;
        sl[n] = plan->seq_lens[i] - (e - hi); /* tokens up to this part's last row */
        n++;
        qsl[n] = hi - ra;
    }
    if (n == 0)
        return 0;
    int64_t sh_q[3] = { rb - ra, hq, d }, sh_bt[2] = { n, plan->width }, sh_sl[1] = { n }, sh_qsl[1] = { n + 1 };
    DLTensor tq = rn_dl_tensor(&s->pl, (void *)(q + (size_t)ra * hq * d), k_f32, 3, sh_q, NULL);
    DLTensor to = rn_dl_tensor(&s->pl, out + (size_t)ra * hq * d, k_f32, 3, sh_q, NULL);
    DLTensor bt = rn_dl_tensor(&s->pl, plan->tables + (size_t)first * plan->width, k_i32, 2, sh_bt, NULL);
    DLTensor tsl = rn_dl_tensor(&s->pl, sl, k_i32, 1, sh_sl, NULL);
    DLTensor tqsl = rn_dl_tensor(&s->pl, qsl, k_i32, 1, sh_qsl, NULL);
    hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
    pa.layer = layer;
    pa.query = &tq;
    pa.key_cache = kc;
    pa.value_cache = vc;
    pa.block_tables = &bt;
    pa.seq_lens = &tsl;
    pa.query_start_loc = &tqsl;
    pa.output = &to;
    pa.workspace = (char *)s->workspace + (size_t)part * s->workspace_stride;
    pa.workspace_size = s->workspace_size;
    hashattn_status_t st = s->pl.api->prefill(s->pl.ctx, &pa);
    s->part_status[part] = st;
    return st == HASHATTN_STATUS_OK ? 0 : -1;
}

typedef struct part_job {
    plugin_t *s;
    int layer, ra, rb, part;
    const rn_plan_t *plan;
    const float *q;
    float *out;
    DLTensor *kc, *vc;
} part_job_t;

static void *part_main(void *arg)
{
    part_job_t *j = arg;
    prefill_rows(j->s, j->layer, j->plan, j->q, j->out, j->kc, j->vc, j->ra, j->rb, j->part);
    return NULL;
}

/* The plan's prefill rows, split into parts of about equal work (a row at
 * position p reads p + 1 keys) run on threads at once: the ABI allows
 * concurrent run-path calls on one context with a workspace each. The
 * outputs are the same as one call's, row for row. */
static int prefill_split(plugin_t *s, int layer, const rn_plan_t *plan, const float *q, float *out, DLTensor *kc,
                         DLTensor *vc)
{
    const int r0 = plan->q_start[plan->n_decode], r1 = plan->n_tokens;
    double work = 0;
    for (int r = r0; r < r1; r++)
        work += (double)plan->pos[r] + 1;
    int parts = s->parts;
    if (work * s->base.num_q_heads < s->min_work || r1 - r0 < parts) /* not worth a thread */
        parts = 1;
    part_job_t jobs[RN_ATTN_MAX_PARTS];
    pthread_t tid[RN_ATTN_MAX_PARTS];
    int started[RN_ATTN_MAX_PARTS] = { 0 };
    double acc = 0;
    int ra = r0;
    for (int p = 0; p < parts; p++) {
        int rb = r1;
        if (p + 1 < parts) { /* cut where the running work passes (p + 1) / parts */
            const double goal = work * (p + 1) / parts;
            rb = ra;
            while (rb < r1 && acc + (double)plan->pos[rb] + 1 <= goal)
                acc += (double)plan->pos[rb++] + 1;
        }
        jobs[p] = (part_job_t){ s, layer, ra, rb, p, plan, q, out, kc, vc };
        s->part_status[p] = HASHATTN_STATUS_OK;
        ra = rb;
    }
    for (int p = 1; p < parts; p++)
        started[p] = pthread_create(&tid[p], NULL, part_main, &jobs[p]) == 0;
    for (int p = 0; p < parts; p++)
        if (p == 0 || !started[p])
            part_main(&jobs[p]); /* this thread, and any part a thread could not take */
    for (int p = 1; p < parts; p++)
        if (started[p])
            pthread_join(tid[p], NULL);
    for (int p = 0; p < parts; p++)
        if (s->part_status[p] != HASHATTN_STATUS_OK)
            return fail(s, "prefill", s->part_status[p]);
    return 0;
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
    if (np > 0 && prefill_split(s, layer, plan, q, out, &kc, &vc))
        return -1;
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
    free(s->part_qsl);
    free(s->part_lens);
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
    s->parts = g_split_parts > 0 ? g_split_parts : rn_matmul_threads();
    s->min_work = g_split_min_work;
    if (s->parts > RN_ATTN_MAX_PARTS)
        s->parts = RN_ATTN_MAX_PARTS;
    s->workspace_stride = (s->workspace_size + 255) & ~(size_t)255;
    s->part_qsl = malloc((size_t)s->parts * (a->max_seqs + 1) * sizeof(int32_t));
    s->part_lens = malloc((size_t)s->parts * a->max_seqs * sizeof(int32_t));
    if ((s->workspace_size && !(s->workspace = malloc(s->workspace_stride * s->parts))) || !s->part_qsl ||
        !s->part_lens) {
        snprintf(err, errlen, "out of memory for %d %zu-byte workspaces", s->parts, s->workspace_size);
        plugin_destroy(a);
        return -1;
    }
    snprintf(a->desc, sizeof a->desc, "%s", s->pl.desc);
    *out = a;
    return 0;
}
