/*
 * plugin_check.c - see plugin_check.h.
 */
#define _POSIX_C_SOURCE 200809L
#include "plugin_check.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hashattn/hashattn.h>

#include "mlp.h"
#include "tools/common/tool_util.h"

struct tr_plugin {
    void *dl;
    const hashattn_api_t *api;
    hashattn_context_t *ctx;
    int32_t hq, hkv, hsig, d;
};

void tr_plugin_close(tr_plugin_t *p)
{
    if (!p)
        return;
    if (p->ctx)
        p->api->context_destroy(p->ctx);
    if (p->dl)
        dlclose(p->dl);
    free(p);
}

const char *tr_plugin_version(const tr_plugin_t *p) { return p->api->version(); }

int tr_plugin_open(const char *library, const tr_model_t *m, tr_plugin_t **out, char *err, size_t errlen)
{
    *out = NULL;
    tr_plugin_t *p = calloc(1, sizeof *p);
    if (!p)
        return tool_err(err, errlen, "out of memory");
    p->dl = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        tool_err(err, errlen, "cannot load %s: %s", library, dlerror());
        free(p);
        return -1;
    }
    hashattn_get_api_fn get = (hashattn_get_api_fn)dlsym(p->dl, "hashattn_get_api");
    p->api = get ? get(HASHATTN_ABI_MAJOR) : NULL;
    if (!p->api) {
        tool_err(err, errlen, "%s has no hashattn_get_api for ABI %d", library, HASHATTN_ABI_MAJOR);
        tr_plugin_close(p);
        return -1;
    }
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = m->num_layers;
    cfg.num_q_heads = m->num_q_heads;
    cfg.num_kv_heads = m->num_kv_heads;
    cfg.head_dim = m->head_dim;
    cfg.mlp_width = m->mlp_width;
    cfg.dtype.code = kDLFloat;
    cfg.dtype.bits = 32;
    cfg.dtype.lanes = 1;
    cfg.device.device_type = kDLCPU;
    cfg.device.device_id = 0;
    cfg.signature_layout = m->compact ? HASHATTN_SIGNATURE_PER_KV_HEAD : HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    hashattn_status_t st = p->api->context_create(&cfg, &p->ctx);
    if (st != HASHATTN_STATUS_OK) {
        tool_err(err, errlen, "context_create: %s: %s", p->api->status_string(st), p->api->last_error(NULL));
        tr_plugin_close(p);
        return -1;
    }
    p->hq = m->num_q_heads;
    p->hkv = m->num_kv_heads;
    p->hsig = tr_model_sig_heads(m);
    p->d = m->head_dim;
    *out = p;
    return 0;
}

int tr_plugin_load(tr_plugin_t *p, const char *weights_path, char *err, size_t errlen)
{
    hashattn_weights_load_args_t a = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    a.path = weights_path;
    hashattn_status_t st = p->api->weights_load(p->ctx, &a);
    if (st != HASHATTN_STATUS_OK)
        return tool_err(err, errlen, "weights_load: %s: %s", p->api->status_string(st), p->api->last_error(p->ctx));
    return 0;
}

int tr_plugin_hash(tr_plugin_t *p, int32_t layer, int side, const float *x, int64_t n, uint32_t *sig,
                   char *err, size_t errlen)
{
    int64_t in_shape[3] = {n, side == TR_SIDE_QUERY ? p->hq : p->hkv, p->d};
    int64_t out_shape[2] = {n, side == TR_SIDE_QUERY ? p->hq : p->hsig};
    DLTensor in = {0}, out = {0};
    in.data = (void *)x;
    in.device.device_type = kDLCPU;
    in.ndim = 3;
    in.dtype.code = kDLFloat;
    in.dtype.bits = 32;
    in.dtype.lanes = 1;
    in.shape = in_shape;
    out.data = sig;
    out.device.device_type = kDLCPU;
    out.ndim = 2;
    out.dtype.code = kDLUInt;
    out.dtype.bits = 32;
    out.dtype.lanes = 1;
    out.shape = out_shape;
    hashattn_workspace_args_t wa = HASHATTN_WORKSPACE_ARGS_INIT;
    wa.op = HASHATTN_OP_HASH;
    wa.max_num_tokens = n;
    size_t bytes = 0;
    hashattn_status_t st = p->api->workspace_size(p->ctx, &wa, &bytes);
    if (st != HASHATTN_STATUS_OK)
        return tool_err(err, errlen, "workspace_size: %s: %s", p->api->status_string(st), p->api->last_error(p->ctx));
    void *ws = bytes ? malloc(bytes) : NULL;
    if (bytes && !ws)
        return tool_err(err, errlen, "out of memory");
    hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
    h.layer = layer;
    h.side = side == TR_SIDE_QUERY ? HASHATTN_HASH_QUERY : HASHATTN_HASH_KEY;
    h.input = &in;
    h.signatures = &out;
    h.workspace = ws;
    h.workspace_size = bytes;
    st = p->api->hash(p->ctx, &h);
    free(ws);
    if (st != HASHATTN_STATUS_OK)
        return tool_err(err, errlen, "hash: %s: %s", p->api->status_string(st), p->api->last_error(p->ctx));
    return 0;
}

/* own signatures of head slot `head` of x [n, heads, D] */
static int own(const tr_model_t *m, int side, int32_t layer, int32_t head, int32_t in_head, int32_t in_heads,
               const float *x, int64_t n, uint32_t *sig)
{
    size_t d = (size_t)m->head_dim;
    return tr_mlp_signatures(tr_model_mlp(m, side, layer, head), m->head_dim, m->mlp_width,
                             x + (size_t)in_head * d, n, (size_t)in_heads * d, sig);
}

int tr_plugin_compare(tr_plugin_t *p, const tr_model_t *m, int32_t layer, const float *q, const float *k,
                      int64_t n, int64_t *compared, int64_t *differ, char *err, size_t errlen)
{
    int32_t g = m->num_q_heads / m->num_kv_heads;
    uint32_t *ps = malloc((size_t)n * (size_t)p->hq * sizeof(uint32_t) + 1);
    uint32_t *os = malloc((size_t)n * sizeof(uint32_t) + 1);
    int rc = -1;
    if (!ps || !os) {
        tool_err(err, errlen, "out of memory");
        goto done;
    }
    for (int side = 0; side < 2; side++) {
        int32_t heads = side == TR_SIDE_QUERY ? p->hq : p->hsig, in_heads = side == TR_SIDE_QUERY ? p->hq : p->hkv;
        const float *x = side == TR_SIDE_QUERY ? q : k;
        if (tr_plugin_hash(p, layer, side, x, n, ps, err, errlen))
            goto done;
        for (int32_t h = 0; h < heads; h++) {
            int32_t in_head = side == TR_SIDE_QUERY ? h : (m->compact ? h : h / g);
            if (own(m, side, layer, h, in_head, in_heads, x, n, os)) {
                tool_err(err, errlen, "out of memory");
                goto done;
            }
            for (int64_t i = 0; i < n; i++) {
                *compared += 1;
                *differ += os[i] != ps[(size_t)i * (size_t)heads + (size_t)h];
            }
        }
    }
    rc = 0;
done:
    free(ps);
    free(os);
    return rc;
}
