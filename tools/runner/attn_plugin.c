/*
 * attn_plugin.c - attention through libhashattn.so, loaded like a serving
 * stack loads it: dlopen + dlsym("hashattn_get_api"), then only the function
 * table. The runner owns the paged caches (blocks.h hands out the blocks);
 * the plugin writes K/V/signatures into them and attends (see attn.h).
 */
#define _POSIX_C_SOURCE 200809L

#include <dlfcn.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn/hashattn.h>

#include "attn.h"
#include "blocks.h"

typedef struct plugin {
    rn_attn_t base;
    void *dl;
    const hashattn_api_t *api;
    hashattn_context_t *ctx;
    int block_size, num_blocks, sig_heads, sel_heads, max_chunk, dense, random_weights;
    rn_block_pool_t pool;
    rn_seq_t seq;
    float *k_cache, *v_cache; /* [L, num_blocks, block_size, Hkv, D] (NHD) */
    uint32_t *sig_cache;      /* [L, num_blocks, Hsig, block_size] */
    int64_t *slots;           /* [max_chunk] slots of the newest tokens */
    int32_t seq_len;          /* [1] */
    int32_t qstart[2];
    int32_t *counts;          /* [Hsel] */
    void *workspace;
    size_t workspace_size;
} plugin_t;

static const DLDataType k_f32 = { kDLFloat, 32, 1 };
static const DLDataType k_i32 = { kDLInt, 32, 1 };
static const DLDataType k_i64 = { kDLInt, 64, 1 };
static const DLDataType k_u32 = { kDLUInt, 32, 1 };

static DLTensor tensor(void *data, DLDataType dt, int ndim, int64_t *shape)
{
    DLTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.device.device_type = kDLCPU;
    t.device.device_id = 0;
    t.ndim = ndim;
    t.dtype = dt;
    t.shape = shape;
    t.strides = NULL;
    t.byte_offset = 0;
    return t;
}

static int fail(plugin_t *s, const char *what, hashattn_status_t st)
{
    snprintf(s->base.err, sizeof s->base.err, "hashattn %s: %s: %s", what, s->api->status_string(st),
             s->api->last_error(s->ctx));
    return -1;
}

/* ---- hash weights ------------------------------------------------------------- */

/* Read mlp_width and signature_layout from a hash-weights safetensors file's
 * __metadata__ (the context must be created with them before weights_load). */
static int read_weights_meta(const char *path, int *mlp_width, int *sig_layout, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "--hash-weights %s: cannot open", path);
        return -1;
    }
    unsigned char lenb[8];
    uint64_t hlen = 0;
    if (fread(lenb, 1, 8, fp) != 8) {
        fclose(fp);
        snprintf(err, errlen, "--hash-weights %s: too short for safetensors", path);
        return -1;
    }
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | lenb[i];
    if (hlen == 0 || hlen > (64u << 20)) {
        fclose(fp);
        snprintf(err, errlen, "--hash-weights %s: header length %llu is not plausible", path,
                 (unsigned long long)hlen);
        return -1;
    }
    char *hdr = malloc(hlen + 1);
    if (!hdr || fread(hdr, 1, hlen, fp) != hlen) {
        free(hdr);
        fclose(fp);
        snprintf(err, errlen, "--hash-weights %s: truncated header", path);
        return -1;
    }
    fclose(fp);
    hdr[hlen] = 0;
    json_object *root = json_tokener_parse(hdr);
    free(hdr);
    json_object *meta = NULL, *w = NULL, *l = NULL;
    if (!root || !json_object_object_get_ex(root, "__metadata__", &meta) ||
        !json_object_object_get_ex(meta, "mlp_width", &w)) {
        if (root)
            json_object_put(root);
        snprintf(err, errlen, "--hash-weights %s: no __metadata__.mlp_width", path);
        return -1;
    }
    *mlp_width = atoi(json_object_get_string(w));
    *sig_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    if (json_object_object_get_ex(meta, "signature_layout", &l) &&
        strcmp(json_object_get_string(l), "per_kv_head") == 0)
        *sig_layout = HASHATTN_SIGNATURE_PER_KV_HEAD;
    json_object_put(root);
    return 0;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform(-b, b) like torch.nn.Linear's default init, b = 1/sqrt(fan_in) */
static void fill_uniform(float *p, size_t n, float b, uint64_t *rng)
{
    for (size_t i = 0; i < n; i++)
        p[i] = b * (2.0f * (float)((splitmix(rng) >> 40) * (1.0 / 16777216.0)) - 1.0f);
}

static int bind_random(plugin_t *s, int heads_q, int heads_k, int m, uint64_t seed)
{
    rn_attn_t *a = &s->base;
    const int64_t L = a->num_layers, D = a->head_dim;
    hashattn_weights_bind_args_t args = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    int64_t shapes[2][6][4];
    DLTensor t[2][6];
    float *bufs[2][6] = { { 0 } };
    uint64_t rng = seed;
    int rc = 0;
    for (int side = 0; side < 2; side++) {
        int64_t H = side == 0 ? heads_q : heads_k;
        const int64_t dims[6][4] = { { L, H, m, D }, { L, H, m, 1 }, { L, H, m, m },
                                     { L, H, m, 1 }, { L, H, 32, m }, { L, H, 32, 1 } };
        const int nd[6] = { 4, 3, 4, 3, 4, 3 };
        const float fan[6] = { (float)D, (float)D, (float)m, (float)m, (float)m, (float)m };
        for (int i = 0; i < 6; i++) {
            size_t n = 1;
            for (int j = 0; j < nd[i]; j++) {
                shapes[side][i][j] = dims[i][j];
                n *= (size_t)dims[i][j];
            }
            bufs[side][i] = malloc(n * sizeof(float));
            if (!bufs[side][i]) {
                snprintf(a->err, sizeof a->err, "out of memory for random hash weights");
                rc = -1;
                goto done;
            }
            fill_uniform(bufs[side][i], n, 1.0f / sqrtf(fan[i]), &rng);
            t[side][i] = tensor(bufs[side][i], k_f32, nd[i], shapes[side][i]);
        }
        hashattn_mlp_weights_t *w = side == 0 ? &args.query : &args.key;
        w->w1 = &t[side][0];
        w->b1 = &t[side][1];
        w->w2 = &t[side][2];
        w->b2 = &t[side][3];
        w->w3 = &t[side][4];
        w->b3 = &t[side][5];
    }
    hashattn_status_t st = s->api->weights_bind(s->ctx, &args);
    if (st != HASHATTN_STATUS_OK)
        rc = fail(s, "weights_bind", st);
done:
    for (int side = 0; side < 2; side++)
        for (int i = 0; i < 6; i++)
            free(bufs[side][i]);
    return rc;
}

/* ---- ops ---------------------------------------------------------------------------- */

static int plugin_append(rn_attn_t *a, int n)
{
    plugin_t *s = (plugin_t *)a;
    if (n < 1 || n > s->max_chunk) {
        snprintf(a->err, sizeof a->err, "append of %d tokens: 1..%d per step", n, s->max_chunk);
        return -1;
    }
    int64_t start = s->seq.len;
    if (start + n > a->max_len || rn_seq_append(&s->pool, &s->seq, n)) {
        snprintf(a->err, sizeof a->err, "KV cache full: %lld + %d tokens, capacity %lld",
                 (long long)start, n, (long long)a->max_len);
        return -1;
    }
    for (int i = 0; i < n; i++)
        s->slots[i] = rn_seq_slot(&s->pool, &s->seq, start + i);
    a->len = s->seq.len;
    return 0;
}

static int plugin_attend(rn_attn_t *a, int layer, const float *q, const float *k, const float *v, int n,
                         int decode, float *out)
{
    plugin_t *s = (plugin_t *)a;
    const hashattn_api_t *api = s->api;
    const int64_t L = layer, hq = a->num_q_heads, hkv = a->num_kv_heads, d = a->head_dim;
    const int64_t nb = s->num_blocks, bs = s->block_size;
    const size_t kv_layer = (size_t)(nb * bs * hkv * d), sig_layer = (size_t)(nb * s->sig_heads * bs);

    int64_t sh_kv[3] = { n, hkv, d }, sh_q[3] = { n, hq, d };
    int64_t sh_cache[4] = { nb, bs, hkv, d }, sh_sig[3] = { nb, s->sig_heads, bs };
    int64_t sh_slots[1] = { n }, sh_bt[2] = { 1, s->seq.max_blocks }, sh_one[1] = { 1 };
    int64_t sh_qsl[1] = { 2 }, sh_cnt[2] = { 1, s->sel_heads };
    DLTensor tk = tensor((void *)k, k_f32, 3, sh_kv), tv = tensor((void *)v, k_f32, 3, sh_kv);
    DLTensor kc = tensor(s->k_cache + L * kv_layer, k_f32, 4, sh_cache);
    DLTensor vc = tensor(s->v_cache + L * kv_layer, k_f32, 4, sh_cache);
    DLTensor sc = tensor(s->sig_cache + L * sig_layer, k_u32, 3, sh_sig);
    DLTensor slots = tensor(s->slots, k_i64, 1, sh_slots);
    DLTensor bt = tensor(s->seq.table, k_i32, 2, sh_bt);
    DLTensor tq = tensor((void *)q, k_f32, 3, sh_q), to = tensor(out, k_f32, 3, sh_q);
    s->seq_len = (int32_t)s->seq.len;
    DLTensor sl = tensor(&s->seq_len, k_i32, 1, sh_one);

    hashattn_cache_write_args_t w = HASHATTN_CACHE_WRITE_ARGS_INIT;
    w.layer = layer;
    w.key = &tk;
    w.value = &tv;
    w.key_cache = &kc;
    w.value_cache = &vc;
    w.signature_cache = &sc;
    w.slot_mapping = &slots;
    w.workspace = s->workspace;
    w.workspace_size = s->workspace_size;
    hashattn_status_t st = api->cache_write(s->ctx, &w);
    if (st != HASHATTN_STATUS_OK)
        return fail(s, "cache_write", st);

    if (!decode) {
        s->qstart[0] = 0;
        s->qstart[1] = n;
        DLTensor qsl = tensor(s->qstart, k_i32, 1, sh_qsl);
        hashattn_prefill_args_t p = HASHATTN_PREFILL_ARGS_INIT;
        p.layer = layer;
        p.query = &tq;
        p.key_cache = &kc;
        p.value_cache = &vc;
        p.block_tables = &bt;
        p.seq_lens = &sl;
        p.query_start_loc = &qsl;
        p.output = &to;
        p.workspace = s->workspace;
        p.workspace_size = s->workspace_size;
        st = api->prefill(s->ctx, &p);
        return st == HASHATTN_STATUS_OK ? 0 : fail(s, "prefill", st);
    }

    if (n != 1) {
        snprintf(a->err, sizeof a->err, "decode takes one token, got %d", n);
        return -1;
    }
    for (int h = 0; h < s->sel_heads; h++)
        s->counts[h] = -1;
    DLTensor cnt = tensor(s->counts, k_i32, 2, sh_cnt);
    hashattn_decode_args_t dargs = HASHATTN_DECODE_ARGS_INIT;
    dargs.flags = s->dense ? HASHATTN_DECODE_DENSE : 0u;
    dargs.layer = layer;
    dargs.query = &tq;
    dargs.key_cache = &kc;
    dargs.value_cache = &vc;
    dargs.signature_cache = &sc;
    dargs.block_tables = &bt;
    dargs.seq_lens = &sl;
    dargs.output = &to;
    dargs.selected_counts = &cnt;
    dargs.workspace = s->workspace;
    dargs.workspace_size = s->workspace_size;
    st = api->decode(s->ctx, &dargs);
    if (st != HASHATTN_STATUS_OK)
        return fail(s, "decode", st);

    rn_attn_stats_t *stt = &a->stats;
    if (layer == 0) {
        stt->decode_steps++;
        stt->context_sum += (double)s->seq.len;
    }
    double sum = 0;
    for (int h = 0; h < s->sel_heads; h++) {
        int64_t c = s->counts[h];
        if (c < 0) { /* not reported: dense means every token */
            stt->counts_known = 0;
            c = s->seq.len;
        }
        sum += (double)c;
        if (stt->attended_min < 0 || c < stt->attended_min)
            stt->attended_min = c;
        if (c > stt->attended_max)
            stt->attended_max = c;
    }
    stt->attended_sum += sum / s->sel_heads / a->num_layers;
    return 0;
}

static void plugin_reset(rn_attn_t *a)
{
    plugin_t *s = (plugin_t *)a;
    rn_seq_clear(&s->pool, &s->seq);
    a->len = 0;
}

static void plugin_destroy(rn_attn_t *a)
{
    plugin_t *s = (plugin_t *)a;
    if (s->api && s->ctx)
        s->api->context_destroy(s->ctx);
    /* the library stays loaded: a host may not unload a library it called */
    rn_seq_destroy(&s->seq);
    rn_block_pool_destroy(&s->pool);
    free(s->k_cache);
    free(s->v_cache);
    free(s->sig_cache);
    free(s->slots);
    free(s->counts);
    free(s->workspace);
    free(s);
}

static const rn_attn_ops_t k_plugin_ops = { "plugin", plugin_append, plugin_attend, plugin_reset,
                                            plugin_destroy };

int rn_attn_plugin_random_weights(const rn_attn_t *a)
{
    return a->ops == &k_plugin_ops && ((const plugin_t *)a)->random_weights;
}

int rn_attn_plugin_create(const rn_plugin_config_t *cfg, rn_attn_t **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!cfg->path) {
        snprintf(err, errlen, "no plugin path");
        return -1;
    }
    if (cfg->num_layers < 1 || cfg->num_kv_heads < 1 || cfg->num_q_heads % cfg->num_kv_heads ||
        cfg->head_dim < 1 || cfg->block_size < 1 || cfg->max_len < 1 || cfg->max_chunk < 1) {
        snprintf(err, errlen, "plugin attention: bad configuration");
        return -1;
    }
    void *dl = dlopen(cfg->path, RTLD_NOW | RTLD_LOCAL);
    if (!dl) {
        snprintf(err, errlen, "dlopen %s: %s", cfg->path, dlerror());
        return -1;
    }
    hashattn_get_api_fn get = NULL;
    *(void **)(&get) = dlsym(dl, "hashattn_get_api");
    if (!get) {
        snprintf(err, errlen, "%s has no hashattn_get_api", cfg->path);
        return -1;
    }
    const hashattn_api_t *api = get(HASHATTN_ABI_MAJOR);
    if (!api) {
        snprintf(err, errlen, "%s does not implement ABI major %d", cfg->path, HASHATTN_ABI_MAJOR);
        return -1;
    }
    if (api->struct_size < offsetof(hashattn_api_t, hash) + sizeof api->hash) {
        snprintf(err, errlen, "%s: function table too short (%zu bytes)", cfg->path, api->struct_size);
        return -1;
    }

    plugin_t *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    rn_attn_t *a = &s->base;
    a->ops = &k_plugin_ops;
    a->num_layers = cfg->num_layers;
    a->num_q_heads = cfg->num_q_heads;
    a->num_kv_heads = cfg->num_kv_heads;
    a->head_dim = cfg->head_dim;
    a->max_len = cfg->max_len;
    a->stats.attended_min = -1;
    a->stats.counts_known = 1;
    s->dl = dl;
    s->api = api;
    s->block_size = cfg->block_size;
    s->max_chunk = cfg->max_chunk;
    s->dense = cfg->dense;

    int mlp_width = cfg->mlp_width > 0 ? cfg->mlp_width : 128;
    int sig_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    if (cfg->hash_weights && read_weights_meta(cfg->hash_weights, &mlp_width, &sig_layout, err, errlen))
        goto fail_quiet;

    hashattn_context_config_t cc = HASHATTN_CONTEXT_CONFIG_INIT;
    cc.num_layers = cfg->num_layers;
    cc.num_q_heads = cfg->num_q_heads;
    cc.num_kv_heads = cfg->num_kv_heads;
    cc.head_dim = cfg->head_dim;
    cc.block_size = cfg->block_size;
    cc.dtype = k_f32;
    cc.device.device_type = kDLCPU;
    cc.device.device_id = 0;
    cc.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    cc.mlp_width = mlp_width;
    cc.selection = cfg->selection;
    cc.signature_layout = sig_layout;
    cc.budget.sink_tokens = cfg->sink;
    cc.budget.recent_tokens = cfg->recent;
    cc.budget.heavy_count = cfg->heavy_count;
    cc.budget.heavy_fraction = cfg->heavy_fraction;
    hashattn_status_t st = api->context_create(&cc, &s->ctx);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "hashattn context_create: %s: %s", api->status_string(st), api->last_error(NULL));
        goto fail_quiet;
    }
    s->sig_heads = sig_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? cfg->num_kv_heads : cfg->num_q_heads;
    s->sel_heads = cfg->selection == HASHATTN_SELECTION_GROUP ? cfg->num_kv_heads : cfg->num_q_heads;

    if (cfg->hash_weights) {
        hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
        la.path = cfg->hash_weights;
        st = api->weights_load(s->ctx, &la);
        if (st != HASHATTN_STATUS_OK) {
            fail(s, "weights_load", st);
            goto fail;
        }
    } else {
        if (bind_random(s, cfg->num_q_heads, s->sig_heads, mlp_width, cfg->seed))
            goto fail;
        s->random_weights = 1;
    }

    s->num_blocks = (int)((cfg->max_len + cfg->block_size - 1) / cfg->block_size);
    if (rn_block_pool_init(&s->pool, s->num_blocks, cfg->block_size) || rn_seq_init(&s->seq, s->num_blocks)) {
        snprintf(a->err, sizeof a->err, "out of memory for the block tables");
        goto fail;
    }
    if (cfg->shuffle_blocks)
        rn_block_pool_shuffle(&s->pool, cfg->seed);
    const size_t kv = (size_t)cfg->num_layers * s->num_blocks * cfg->block_size * cfg->num_kv_heads * cfg->head_dim;
    const size_t sig = (size_t)cfg->num_layers * s->num_blocks * s->sig_heads * cfg->block_size;
    s->k_cache = calloc(kv, sizeof(float));
    s->v_cache = calloc(kv, sizeof(float));
    s->sig_cache = calloc(sig, sizeof(uint32_t));
    s->slots = calloc((size_t)cfg->max_chunk, sizeof *s->slots);
    s->counts = calloc((size_t)s->sel_heads, sizeof *s->counts);
    if (!s->k_cache || !s->v_cache || !s->sig_cache || !s->slots || !s->counts) {
        snprintf(a->err, sizeof a->err, "out of memory for KV caches of %lld tokens", (long long)cfg->max_len);
        goto fail;
    }

    /* one workspace that serves every op within the bounds */
    const int ops[3] = { HASHATTN_OP_CACHE_WRITE, HASHATTN_OP_DECODE, HASHATTN_OP_PREFILL };
    for (int i = 0; i < 3; i++) {
        hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
        wa.op = ops[i];
        wa.max_num_seqs = 1;
        wa.max_num_tokens = cfg->max_chunk;
        wa.max_blocks_per_seq = s->num_blocks;
        size_t bytes = 0;
        st = api->workspace_size(s->ctx, &wa, &bytes);
        if (st != HASHATTN_STATUS_OK) {
            fail(s, "workspace_size", st);
            goto fail;
        }
        if (bytes > s->workspace_size)
            s->workspace_size = bytes;
    }
    if (s->workspace_size && !(s->workspace = malloc(s->workspace_size))) {
        snprintf(a->err, sizeof a->err, "out of memory for a %zu-byte workspace", s->workspace_size);
        goto fail;
    }
    if (cfg->dense)
        snprintf(a->desc, sizeof a->desc,
                 "libhashattn %s (%s), dense decode (key signatures still written, from %s hash weights)",
                 api->version(), cfg->path, cfg->hash_weights ? cfg->hash_weights : "random");
    else
        snprintf(a->desc, sizeof a->desc, "libhashattn %s (%s), hash decode, %s selection, %s hash weights (m %d)",
                 api->version(), cfg->path, cfg->selection == HASHATTN_SELECTION_GROUP ? "group" : "per-head",
                 cfg->hash_weights ? cfg->hash_weights : "random", mlp_width);
    *out = a;
    return 0;
fail:
    snprintf(err, errlen, "%s", a->err);
fail_quiet:
    plugin_destroy(a);
    return -1;
}
