/*
 * fuzz_loader.c - libFuzzer target: the safetensors weight loader
 * (api->weights_load) on random, truncated and mutated files.
 *
 * Input: byte 0 picks one of three CPU contexts (paper or compact
 * signatures, one or two layers, float32 or bfloat16 compute); the rest is
 * the file, written to an in-memory file (memfd) and loaded through its
 * /proc/self/fd path. The seed corpus holds valid files for each context
 * (F32 and BF16 tensors) and truncated and malformed ones.
 *
 * Invariants (abort on violation):
 *   - the status is OK, IO_ERROR, FORMAT_ERROR, INVALID_ARGUMENT (non-finite
 *     weights) or OUT_OF_MEMORY, and a refusal comes with a message;
 *   - a refused load leaves the bound weights as they were: the signatures of
 *     a fixed probe (api->hash, both sides) are bit-identical to those
 *     computed before;
 *   - an accepted load gives usable weights: hash succeeds on the probe (the
 *     weights are then restored for the next input).
 */
#define _GNU_SOURCE /* memfd_create */
#include <hashattn/hashattn.h>

#include "fuzz_common.h"
#include "fuzz_memfd.h"

typedef struct lctx {
    int layers, hq, hkv, d, m, per_kv;
    DLDataType dt;
    hashattn_context_t *ctx;
    uint32_t probe_q[2][8], probe_k[2][8]; /* [layer][head] per side, before */
} lctx_t;

static lctx_t lcontexts[] = {
    {1, 2, 1, 8, 4, 0, {kDLFloat, 32, 1}, NULL, {{0}}, {{0}}},
    {2, 2, 1, 8, 4, 1, {kDLFloat, 32, 1}, NULL, {{0}}, {{0}}},
    {1, 4, 2, 8, 8, 1, {kDLBfloat, 16, 1}, NULL, {{0}}, {{0}}},
};
#define NUM_LCONTEXTS ((int)(sizeof lcontexts / sizeof lcontexts[0]))

static const hashattn_api_t *api;
static void *workspace;
static size_t workspace_size;
static int verbose; /* HASHATTN_FUZZ_VERBOSE=1: one line per input (replay) */

static int hsig_of(const lctx_t *c)
{
    return c->per_kv ? c->hkv : c->hq;
}

static hashattn_status_t bind_known(lctx_t *c)
{
    hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_mlp_weights_t *sides[2] = {&a.query, &a.key};
    DLTensor t[2][6];
    int64_t shapes[2][6][4];
    float *bufs[2][6];
    for (int s = 0; s < 2; s++) {
        int64_t h = s == 0 ? c->hq : hsig_of(c);
        int64_t dims[6][4] = {{c->layers, h, c->m, c->d}, {c->layers, h, c->m, 0}, {c->layers, h, c->m, c->m},
                              {c->layers, h, c->m, 0},    {c->layers, h, 32, c->m}, {c->layers, h, 32, 0}};
        const DLTensor **slot[6] = {&sides[s]->w1, &sides[s]->b1, &sides[s]->w2,
                                    &sides[s]->b2, &sides[s]->w3, &sides[s]->b3};
        for (int p = 0; p < 6; p++) {
            int nd = p % 2 ? 3 : 4;
            size_t n = 1;
            for (int i = 0; i < nd; i++)
                n *= (size_t)(shapes[s][p][i] = dims[p][i]);
            bufs[s][p] = (float *)malloc(n * sizeof(float));
            for (size_t i = 0; i < n; i++)
                bufs[s][p][i] = (float)((int)((i * 104729u + (size_t)p * 17u + (size_t)s * 5u) % 37u) - 18) / 19.0f;
            memset(&t[s][p], 0, sizeof t[s][p]);
            t[s][p].data = bufs[s][p];
            t[s][p].device.device_type = kDLCPU;
            t[s][p].ndim = nd;
            t[s][p].dtype.code = kDLFloat, t[s][p].dtype.bits = 32, t[s][p].dtype.lanes = 1;
            t[s][p].shape = shapes[s][p];
            *slot[p] = &t[s][p];
        }
    }
    hashattn_status_t st = api->weights_bind(c->ctx, &a);
    for (int s = 0; s < 2; s++)
        for (int p = 0; p < 6; p++)
            free(bufs[s][p]);
    return st;
}

/* Signatures of a fixed probe vector for every layer, head and side. */
static hashattn_status_t probe(lctx_t *c, uint32_t q[2][8], uint32_t k[2][8])
{
    size_t el = c->dt.bits / 8;
    unsigned char in[8 * 8 * 4];
    for (int i = 0; i < c->hq * c->d; i++) {
        float v = (float)((i * 37) % 23 - 11) / 7.0f;
        if (el == 4) {
            memcpy(in + 4 * i, &v, 4);
        } else {
            uint32_t u;
            memcpy(&u, &v, 4);
            uint16_t h = (uint16_t)(u >> 16);
            memcpy(in + 2 * i, &h, 2);
        }
    }
    for (int layer = 0; layer < c->layers; layer++) {
        for (int side = 0; side < 2; side++) {
            int64_t ishape[3] = {1, side ? c->hkv : c->hq, c->d};
            int64_t oshape[2] = {1, side ? hsig_of(c) : c->hq};
            DLTensor ti, to;
            memset(&ti, 0, sizeof ti), memset(&to, 0, sizeof to);
            ti.data = in, ti.device.device_type = kDLCPU, ti.ndim = 3, ti.dtype = c->dt, ti.shape = ishape;
            to.data = side ? k[layer] : q[layer], to.device.device_type = kDLCPU, to.ndim = 2;
            to.dtype.code = kDLUInt, to.dtype.bits = 32, to.dtype.lanes = 1, to.shape = oshape;
            hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
            h.layer = layer, h.side = side, h.input = &ti, h.signatures = &to;
            h.workspace = workspace, h.workspace_size = workspace_size;
            hashattn_status_t st = api->hash(c->ctx, &h);
            if (st != HASHATTN_STATUS_OK)
                return st;
        }
    }
    return HASHATTN_STATUS_OK;
}

static void setup(void)
{
    if (api)
        return;
    api = hashattn_get_api(HASHATTN_ABI_MAJOR);
    FZ_ASSERT(api, "hashattn_get_api(1) is NULL");
    verbose = getenv("HASHATTN_FUZZ_VERBOSE") != NULL;
    workspace_size = 1 << 16;
    workspace = malloc(workspace_size);
    for (int i = 0; i < NUM_LCONTEXTS; i++) {
        lctx_t *c = &lcontexts[i];
        hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
        cfg.num_layers = c->layers, cfg.num_q_heads = c->hq, cfg.num_kv_heads = c->hkv, cfg.head_dim = c->d;
        cfg.mlp_width = c->m, cfg.dtype = c->dt;
        cfg.signature_layout = c->per_kv ? HASHATTN_SIGNATURE_PER_KV_HEAD : HASHATTN_SIGNATURE_PER_QUERY_HEAD;
        FZ_ASSERT(api->context_create(&cfg, &c->ctx) == HASHATTN_STATUS_OK, "context %d: %s", i,
                  api->last_error(NULL));
        FZ_ASSERT(bind_known(c) == HASHATTN_STATUS_OK, "bind %d: %s", i, api->last_error(c->ctx));
        FZ_ASSERT(probe(c, c->probe_q, c->probe_k) == HASHATTN_STATUS_OK, "probe %d: %s", i,
                  api->last_error(c->ctx));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    setup();
    if (size < 1)
        return 0;
    lctx_t *c = &lcontexts[data[0] % NUM_LCONTEXTS];
    hashattn_weights_load_args_t a = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    a.path = fz_memfd_path(data + 1, size - 1);
    hashattn_status_t st = api->weights_load(c->ctx, &a);
    FZ_ASSERT(st == HASHATTN_STATUS_OK || st == HASHATTN_STATUS_IO_ERROR || st == HASHATTN_STATUS_FORMAT_ERROR ||
                  st == HASHATTN_STATUS_INVALID_ARGUMENT || st == HASHATTN_STATUS_OUT_OF_MEMORY,
              "weights_load returned %s", api->status_string(st));
    if (verbose)
        fprintf(stderr, "  weights_load(context %d, %zu bytes): %s %s\n", (int)(data[0] % NUM_LCONTEXTS), size - 1,
                api->status_string(st), api->last_error(c->ctx));
    uint32_t q[2][8], k[2][8];
    memset(q, 0, sizeof q), memset(k, 0, sizeof k);
    if (st != HASHATTN_STATUS_OK) {
        const char *msg = api->last_error(c->ctx);
        FZ_ASSERT(msg && msg[0], "weights_load refused (%s) without a message", api->status_string(st));
        FZ_ASSERT(probe(c, q, k) == HASHATTN_STATUS_OK, "hash after a refused load: %s", api->last_error(c->ctx));
        FZ_ASSERT(memcmp(q, c->probe_q, sizeof q) == 0 && memcmp(k, c->probe_k, sizeof k) == 0,
                  "a refused weights_load (%s: %s) changed the bound weights", api->status_string(st),
                  api->last_error(c->ctx));
    } else {
        FZ_ASSERT(probe(c, q, k) == HASHATTN_STATUS_OK, "hash after an accepted load: %s", api->last_error(c->ctx));
        FZ_ASSERT(bind_known(c) == HASHATTN_STATUS_OK, "re-bind: %s", api->last_error(c->ctx));
    }
    return 0;
}
