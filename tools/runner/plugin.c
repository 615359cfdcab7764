/*
 * plugin.c - dlopen the plugin, create its context, bind hash weights (see
 * plugin.h).
 */
#define _POSIX_C_SOURCE 200809L

#include "plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef PATH_MAX
#define PATH_MAX 4096
#endif

static int is_file(const char *path)
{
    return access(path, R_OK) == 0;
}

int rn_find_default_hash_weights(const char *name, char *out, size_t cap)
{
    char exe[PATH_MAX], cand[PATH_MAX + 128];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        for (int up = 0; slash && up <= 4; up++) { /* EXE_DIR, its parent, ... */
            *slash = 0;
            snprintf(cand, sizeof cand, "%s/weights/%s", exe, name);
            if (is_file(cand))
                goto found;
            if (up == 0) {
                snprintf(cand, sizeof cand, "%s/../share/hashattn/weights/%s", exe, name);
                if (is_file(cand))
                    goto found;
            }
            slash = strrchr(exe, '/');
        }
    }
#ifdef HASHATTN_RUNNER_SOURCE_DIR
    snprintf(cand, sizeof cand, "%s/weights/%s", HASHATTN_RUNNER_SOURCE_DIR, name);
    if (is_file(cand))
        goto found;
#endif
    return -1;
found:
    if (strlen(cand) >= cap)
        return -1;
    memcpy(out, cand, strlen(cand) + 1);
    return 0;
}

DLDataType rn_dl_dtype(int rn_dt)
{
    DLDataType t = { kDLFloat, 32, 1 };
    if (rn_dt == RN_DT_BF16)
        t.code = kDLBfloat, t.bits = 16;
    else if (rn_dt == RN_DT_F16)
        t.bits = 16;
    return t;
}

DLTensor rn_dl_tensor(const rn_plugin_t *p, void *data, DLDataType dt, int ndim, int64_t *shape, int64_t *strides)
{
    DLTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.device.device_type = p->cfg.cuda ? kDLCUDA : kDLCPU;
    t.device.device_id = p->cfg.cuda ? p->cfg.device_id : 0;
    t.ndim = ndim;
    t.dtype = dt;
    t.shape = shape;
    t.strides = strides;
    return t;
}

/* hash weights are host tensors whatever the context's device */
static DLTensor host_tensor(void *data, int ndim, int64_t *shape)
{
    DLTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.device.device_type = kDLCPU;
    t.ndim = ndim;
    t.dtype.code = kDLFloat;
    t.dtype.bits = 32;
    t.dtype.lanes = 1;
    t.shape = shape;
    return t;
}

int rn_plugin_fail(const rn_plugin_t *p, const char *what, hashattn_status_t st, char *err, size_t errlen)
{
    snprintf(err, errlen, "hashattn %s: %s: %s", what, p->api->status_string(st), p->api->last_error(p->ctx));
    return -1;
}

/* Read mlp_width and signature_layout from a hash-weights safetensors file's
 * __metadata__ (the context must be created with them before weights_load),
 * and into objective (unless NULL) its training_objective, "" when absent. */
static int read_weights_meta(const char *path, int *mlp_width, int *sig_layout, char *objective, size_t objcap,
                             char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "--hash-weights %s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    struct stat sb;
    if (fstat(fileno(fp), &sb) == 0 && !S_ISREG(sb.st_mode)) { /* a folder opens, then reads nothing */
        fclose(fp);
        snprintf(err, errlen, "--hash-weights %s: not a regular file", path);
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
    /* safetensors metadata values are strings; anything else (JSON null
     * included, for which json-c gives NULL) is refused here, not read */
    const char *ws = json_object_is_type(w, json_type_string) ? json_object_get_string(w) : "";
    char *end = NULL;
    const long width = strtol(ws, &end, 10);
    if (end == ws || *end || width < 1 || width > 1024) {
        snprintf(err, errlen, "--hash-weights %s: __metadata__.mlp_width is %s, not a string holding 1..1024", path,
                 json_object_to_json_string(w));
        json_object_put(root);
        return -1;
    }
    *mlp_width = (int)width;
    *sig_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    if (json_object_object_get_ex(meta, "signature_layout", &l) && json_object_is_type(l, json_type_string) &&
        strcmp(json_object_get_string(l), "per_kv_head") == 0)
        *sig_layout = HASHATTN_SIGNATURE_PER_KV_HEAD;
    json_object *ob = NULL;
    if (objective) {
        objective[0] = 0;
        if (json_object_object_get_ex(meta, "training_objective", &ob) && json_object_is_type(ob, json_type_string))
            snprintf(objective, objcap, "%s", json_object_get_string(ob));
    }
    json_object_put(root);
    return 0;
}

int rn_weights_objective(const char *path, char *out, size_t cap, char *err, size_t errlen)
{
    int mlp_width, sig_layout;
    return read_weights_meta(path, &mlp_width, &sig_layout, out, cap, err, errlen);
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

static int bind_random(rn_plugin_t *s, int heads_q, int heads_k, int m, uint64_t seed, char *err, size_t errlen)
{
    const int64_t L = s->cfg.num_layers, D = s->cfg.head_dim;
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
                snprintf(err, errlen, "out of memory for random hash weights");
                rc = -1;
                goto done;
            }
            fill_uniform(bufs[side][i], n, 1.0f / sqrtf(fan[i]), &rng);
            t[side][i] = host_tensor(bufs[side][i], nd[i], shapes[side][i]);
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
        rc = rn_plugin_fail(s, "weights_bind", st, err, errlen);
done:
    for (int side = 0; side < 2; side++)
        for (int i = 0; i < 6; i++)
            free(bufs[side][i]);
    return rc;
}

int rn_plugin_open(rn_plugin_t *p, const rn_plugin_config_t *cfg, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->cfg = *cfg;
    if (!cfg->path || !*cfg->path) {
        snprintf(err, errlen, "no plugin path");
        return -1;
    }
    if (cfg->num_layers < 1 || cfg->num_kv_heads < 1 || cfg->num_q_heads % cfg->num_kv_heads ||
        cfg->head_dim < 1 || cfg->block_size < 1) {
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
    p->dl = dl;
    p->api = api;

    int mlp_width = cfg->mlp_width > 0 ? cfg->mlp_width : 128;
    int sig_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    if (cfg->hash && cfg->hash_weights &&
        read_weights_meta(cfg->hash_weights, &mlp_width, &sig_layout, NULL, 0, err, errlen))
        return -1;
    hashattn_context_config_t cc = HASHATTN_CONTEXT_CONFIG_INIT;
    cc.num_layers = cfg->num_layers;
    cc.num_q_heads = cfg->num_q_heads;
    cc.num_kv_heads = cfg->num_kv_heads;
    cc.head_dim = cfg->head_dim;
    cc.block_size = cfg->block_size;
    cc.dtype = rn_dl_dtype(cfg->dtype);
    cc.device.device_type = cfg->cuda ? kDLCUDA : kDLCPU;
    cc.device.device_id = cfg->cuda ? cfg->device_id : 0;
    cc.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    cc.mlp_width = mlp_width;
    cc.selection = cfg->selection;
    cc.signature_layout = sig_layout;
    cc.budget.sink_tokens = cfg->sink;
    cc.budget.recent_tokens = cfg->recent;
    cc.budget.heavy_count = cfg->heavy_count;
    cc.budget.heavy_fraction = cfg->heavy_fraction;
    cc.dense_below = cfg->dense_below;
    hashattn_status_t st = api->context_create(&cc, &p->ctx);
    if (st != HASHATTN_STATUS_OK) {
        snprintf(err, errlen, "hashattn context_create: %s: %s", api->status_string(st), api->last_error(NULL));
        p->ctx = NULL;
        return -1;
    }
    p->mlp_width = mlp_width;
    p->sel_heads = cfg->selection == HASHATTN_SELECTION_GROUP ? cfg->num_kv_heads : cfg->num_q_heads;
    if (cfg->hash) {
        p->sig_heads = sig_layout == HASHATTN_SIGNATURE_PER_KV_HEAD ? cfg->num_kv_heads : cfg->num_q_heads;
        if (cfg->hash_weights) {
            hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
            la.path = cfg->hash_weights;
            st = api->weights_load(p->ctx, &la);
            if (st != HASHATTN_STATUS_OK) {
                rn_plugin_fail(p, "weights_load", st, err, errlen);
                rn_plugin_close(p);
                return -1;
            }
        } else {
            if (bind_random(p, cfg->num_q_heads, p->sig_heads, mlp_width, cfg->seed, err, errlen)) {
                rn_plugin_close(p);
                return -1;
            }
            p->random_weights = 1;
        }
        snprintf(p->desc, sizeof p->desc, "libhashattn %s (%s), %s, %s selection, %s hash weights (m %d)",
                 api->version(), cfg->path, cfg->cuda ? "CUDA" : "CPU",
                 cfg->selection == HASHATTN_SELECTION_GROUP ? "group" : "per-head",
                 cfg->hash_weights ? cfg->hash_weights : "random", mlp_width);
    } else {
        snprintf(p->desc, sizeof p->desc, "libhashattn %s (%s), %s, dense: no hash weights, no signatures",
                 api->version(), cfg->path, cfg->cuda ? "CUDA" : "CPU");
    }
    return 0;
}

void rn_plugin_close(rn_plugin_t *p)
{
    if (p->api && p->ctx)
        p->api->context_destroy(p->ctx);
    p->ctx = NULL;
}

static int ws_query(rn_plugin_t *p, int op, int seqs, int64_t tokens, int32_t blocks, size_t *bytes, char *err,
                    size_t errlen)
{
    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = op;
    wa.max_num_seqs = seqs;
    wa.max_num_tokens = tokens;
    wa.max_blocks_per_seq = blocks;
    hashattn_status_t st = p->api->workspace_size(p->ctx, &wa, bytes);
    return st == HASHATTN_STATUS_OK ? 0 : rn_plugin_fail(p, "workspace_size", st, err, errlen);
}

int rn_plugin_workspace(rn_plugin_t *p, int max_seqs, int64_t max_tokens, int32_t max_blocks, size_t *bytes,
                        char *err, size_t errlen)
{
    const int ops[3] = { HASHATTN_OP_CACHE_WRITE, HASHATTN_OP_DECODE, HASHATTN_OP_PREFILL };
    *bytes = 0;
    for (int i = 0; i < 3; i++) {
        size_t b = 0;
        if (ws_query(p, ops[i], max_seqs, max_tokens, max_blocks, &b, err, errlen))
            return -1;
        if (b > *bytes)
            *bytes = b;
    }
    /* Every prefill call has its own row count (a chunk, or the prompts'
     * tails beside a decode batch). The CUDA backend's prefill needs split
     * partials only below a row threshold, so a query at max_tokens can
     * answer less than a smaller call checks for: ask for every row count
     * the runner can call with, here at setup and never per step. */
    for (int64_t t = 1; t < max_tokens; t++) {
        size_t b = 0;
        if (ws_query(p, HASHATTN_OP_PREFILL, max_seqs, t, max_blocks, &b, err, errlen))
            return -1;
        if (b > *bytes)
            *bytes = b;
    }
    return 0;
}
