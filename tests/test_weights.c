/*
 * test_weights.c - hash weights and signatures: bind from DLTensors, load
 * from safetensors files written here, malformed files, api->hash and the
 * signatures cache_write stores, all against a double-precision MLP.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ha_test.h"

#define DONTCARE_EPS 1e-4

static const hashattn_api_t *api_or_fail(void)
{
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    return api;
}

typedef struct wcfg {
    int hq, hkv, d, m, sig_per_kv, layers, layer;
    DLDataType wdtype, dtype;
} wcfg_t;

static const wcfg_t k_cfgs[] = {
    {4, 4, 64, 32, 0, 1, 0, {kDLFloat, 32, 1}, {kDLFloat, 32, 1}},
    {8, 2, 128, 128, 0, 3, 2, {kDLBfloat, 16, 1}, {kDLBfloat, 16, 1}},
    {6, 2, 64, 64, 1, 2, 1, {kDLFloat, 32, 1}, {kDLFloat, 16, 1}},
    {8, 1, 64, 16, 1, 1, 0, {kDLBfloat, 16, 1}, {kDLBfloat, 16, 1}},
    {9, 3, 64, 64, 0, 2, 0, {kDLFloat, 32, 1}, {kDLBfloat, 16, 1}},
};
#define NCFG ((int)(sizeof k_cfgs / sizeof k_cfgs[0]))

static void cfg_name(const char *what, const wcfg_t *c, char *buf, size_t n)
{
    snprintf(buf, n, "%s(dtype=%s,w=%s,hq=%d,hkv=%d,d=%d,m=%d,sig=%s,layers=%d,layer=%d)", what,
             ht_dtype_name(c->dtype), ht_dtype_name(c->wdtype), c->hq, c->hkv, c->d, c->m,
             c->sig_per_kv ? "compact" : "paper", c->layers, c->layer);
}

static hashattn_context_t *make_ctx(const hashattn_api_t *api, const wcfg_t *c, int layout)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = c->layers;
    cfg.num_q_heads = c->hq;
    cfg.num_kv_heads = c->hkv;
    cfg.head_dim = c->d;
    cfg.mlp_width = c->m;
    cfg.dtype = c->dtype;
    cfg.kv_layout = layout;
    cfg.block_size = 4;
    cfg.signature_layout = c->sig_per_kv ? HASHATTN_SIGNATURE_PER_KV_HEAD : HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    hashattn_context_t *ctx = NULL;
    hashattn_status_t st = api->context_create(&cfg, &ctx);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "context_create: %s: %s", api->status_string(st),
                  api->last_error(NULL));
    return ctx;
}

/* api->hash of one side on input [n, H_in, D]; returns a [n, H_out] tensor. */
static ht_tensor_t *run_hash(const hashattn_api_t *api, hashattn_context_t *ctx, int side, int layer,
                             const ht_tensor_t *in, int hout, ht_rng_t *r, hashattn_status_t *st)
{
    int64_t n = in->shape[0];
    ht_tensor_t *out = ht_tensor_new(HT_U32, 2, HT_IDX(n, hout), HT_PAD | HT_OFFSET, r);
    ht_workspace_t ws;
    *st = ht_workspace_alloc(api, ctx, HASHATTN_OP_HASH, 0, n, 0, &ws);
    if (*st != HASHATTN_STATUS_OK)
        return out;
    hashattn_hash_args_t a = HASHATTN_HASH_ARGS_INIT;
    a.layer = layer;
    a.side = side;
    a.input = &in->t;
    a.signatures = &out->t;
    a.workspace = ws.ptr;
    a.workspace_size = ws.size;
    *st = api->hash(ctx, &a);
    ht_workspace_free(&ws);
    return out;
}

/* Compare signatures [n, hout] with the MLP of (side, layer) on input rows;
 * output head o reads input head o / (hout / hin). */
static void check_sigs(const ht_model_t *mo, int side, int layer, const ht_tensor_t *in,
                       const ht_tensor_t *sig, const char *name)
{
    int64_t n = in->shape[0];
    int hin = (int)in->shape[1], hout = (int)sig->shape[1], D = (int)in->shape[2];
    int ratio = hout / hin;
    double *x = malloc(sizeof(double) * (size_t)D);
    int dontcare = 0;
    for (int64_t t = 0; t < n; t++)
        for (int o = 0; o < hout; o++) {
            int ih = ratio > 0 ? o / ratio : o;
            for (int i = 0; i < D; i++)
                x[i] = HT_GET(in, t, ih, i);
            double out[32];
            uint32_t dc;
            ht_mlp_eval(mo, side, layer, o, x, out);
            uint32_t want = ht_sig_of(out, DONTCARE_EPS, &dc, NULL);
            uint32_t got = (uint32_t)HT_GET(sig, t, o);
            dontcare += __builtin_popcount(dc);
            ck_assert_msg(((got ^ want) & ~dc) == 0,
                          "%s: %s signature of token %lld head %d = 0x%08x, MLP gives 0x%08x "
                          "(don't-care 0x%08x)",
                          name, side ? "key" : "query", (long long)t, o, got, want, dc);
        }
    free(x);
    if (dontcare)
        printf("  %d don't-care bits\n", dontcare);
}

START_TEST(weights_bind_hash)
{
    const wcfg_t *c = &k_cfgs[_i];
    char name[256];
    cfg_name("hash", c, name, sizeof name);
    uint64_t seed = ht_seed(0x1000 + (uint64_t)_i);
    if (!ht_case_begin(name, seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_rng_t r;
    ht_rng_seed(&r, seed);
    hashattn_context_t *ctx = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    ht_model_t *mo = ht_model_random(c->layers, c->hq, c->hkv, c->d, c->m, c->sig_per_kv, c->wdtype, &r);
    hashattn_status_t st = ht_model_bind(api, ctx, mo, 0, &r);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "bind: %s: %s", api->status_string(st), api->last_error(ctx));
    int n = 7;
    ht_tensor_t *q = ht_tensor_new(c->dtype, 3, HT_IDX(n, c->hq, c->d), HT_PAD | HT_OFFSET, &r);
    ht_tensor_t *k = ht_tensor_new(c->dtype, 3, HT_IDX(n, c->hkv, c->d), HT_PAD | HT_SWAP, &r);
    ht_tensor_fill_uniform(q, &r, -1, 1);
    ht_tensor_fill_uniform(k, &r, -1, 1);
    ht_tensor_t *qs = run_hash(api, ctx, HASHATTN_HASH_QUERY, c->layer, q, c->hq, &r, &st);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "hash query: %s: %s", api->status_string(st), api->last_error(ctx));
    check_sigs(mo, HT_SIDE_QUERY, c->layer, q, qs, name);
    int hsig = c->sig_per_kv ? c->hkv : c->hq;
    ht_tensor_t *ks = run_hash(api, ctx, HASHATTN_HASH_KEY, c->layer, k, hsig, &r, &st);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "hash key: %s: %s", api->status_string(st), api->last_error(ctx));
    check_sigs(mo, HT_SIDE_KEY, c->layer, k, ks, name);

    /* strided weight tensors give the same signatures, bit for bit */
    hashattn_context_t *ctx2 = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    st = ht_model_bind(api, ctx2, mo, HT_PAD | HT_OFFSET, &r);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "bind strided weights: %s: %s", api->status_string(st),
                  api->last_error(ctx2));
    ht_tensor_t *qs2 = run_hash(api, ctx2, HASHATTN_HASH_QUERY, c->layer, q, c->hq, &r, &st);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    ck_assert_msg(ht_tensor_cmp_bits(qs, qs2, NULL) == 0, "%s: strided weights give other signatures", name);

    ht_tensor_free(q);
    ht_tensor_free(k);
    ht_tensor_free(qs);
    ht_tensor_free(ks);
    ht_tensor_free(qs2);
    ht_model_free(mo);
    api->context_destroy(ctx);
    api->context_destroy(ctx2);
}
END_TEST

START_TEST(weights_rebind)
{
    const wcfg_t *c = &k_cfgs[2];
    uint64_t seed = ht_seed(0x2000);
    if (!ht_case_begin("weights(rebind)", seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_rng_t r;
    ht_rng_seed(&r, seed);
    hashattn_context_t *ctx = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    ht_model_t *a = ht_model_random(c->layers, c->hq, c->hkv, c->d, c->m, c->sig_per_kv, c->wdtype, &r);
    ht_model_t *b = ht_model_random(c->layers, c->hq, c->hkv, c->d, c->m, c->sig_per_kv, c->wdtype, &r);
    ck_assert_int_eq(ht_model_bind(api, ctx, a, 0, &r), HASHATTN_STATUS_OK);
    ck_assert_int_eq(ht_model_bind(api, ctx, b, 0, &r), HASHATTN_STATUS_OK);
    ht_tensor_t *q = ht_tensor_new(c->dtype, 3, HT_IDX(5, c->hq, c->d), 0, &r);
    ht_tensor_fill_uniform(q, &r, -1, 1);
    hashattn_status_t st;
    ht_tensor_t *qs = run_hash(api, ctx, HASHATTN_HASH_QUERY, 1, q, c->hq, &r, &st);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    check_sigs(b, HT_SIDE_QUERY, 1, q, qs, "weights(rebind)");
    ht_tensor_free(q);
    ht_tensor_free(qs);
    ht_model_free(a);
    ht_model_free(b);
    api->context_destroy(ctx);
}
END_TEST

static void tmp_path(char *buf, size_t n, const char *tag)
{
    const char *dir = getenv("TMPDIR");
    snprintf(buf, n, "%s/hashattn_test_%ld_%s.safetensors", dir && *dir ? dir : "/tmp", (long)getpid(), tag);
}

/* weights_load gives the same signatures as weights_bind, for F32 and BF16 files. */
START_TEST(weights_load_equals_bind)
{
    const wcfg_t *c = &k_cfgs[_i];
    char name[256];
    cfg_name("weights_load", c, name, sizeof name);
    uint64_t seed = ht_seed(0x3000 + (uint64_t)_i);
    if (!ht_case_begin(name, seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_rng_t r;
    ht_rng_seed(&r, seed);
    ht_model_t *mo = ht_model_random(c->layers, c->hq, c->hkv, c->d, c->m, c->sig_per_kv, c->wdtype, &r);
    char path[512];
    tmp_path(path, sizeof path, "ok");
    ck_assert_int_eq(ht_st_write(path, mo, HT_ST_OK), 0);
    hashattn_context_t *bound = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    hashattn_context_t *loaded = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    ck_assert_int_eq(ht_model_bind(api, bound, mo, 0, &r), HASHATTN_STATUS_OK);
    hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    la.path = path;
    hashattn_status_t st = api->weights_load(loaded, &la);
    unlink(path);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: weights_load: %s: %s", name, api->status_string(st),
                  api->last_error(loaded));
    int hsig = c->sig_per_kv ? c->hkv : c->hq;
    for (int layer = 0; layer < c->layers; layer++) {
        ht_tensor_t *q = ht_tensor_new(c->dtype, 3, HT_IDX(6, c->hq, c->d), 0, &r);
        ht_tensor_t *k = ht_tensor_new(c->dtype, 3, HT_IDX(6, c->hkv, c->d), 0, &r);
        ht_tensor_fill_uniform(q, &r, -1, 1);
        ht_tensor_fill_uniform(k, &r, -1, 1);
        hashattn_status_t s1, s2, s3, s4;
        ht_tensor_t *qa = run_hash(api, bound, HASHATTN_HASH_QUERY, layer, q, c->hq, &r, &s1);
        ht_tensor_t *qb = run_hash(api, loaded, HASHATTN_HASH_QUERY, layer, q, c->hq, &r, &s2);
        ht_tensor_t *ka = run_hash(api, bound, HASHATTN_HASH_KEY, layer, k, hsig, &r, &s3);
        ht_tensor_t *kb = run_hash(api, loaded, HASHATTN_HASH_KEY, layer, k, hsig, &r, &s4);
        ck_assert(s1 == HASHATTN_STATUS_OK && s2 == HASHATTN_STATUS_OK && s3 == HASHATTN_STATUS_OK &&
                  s4 == HASHATTN_STATUS_OK);
        ck_assert_msg(ht_tensor_cmp_bits(qa, qb, NULL) == 0, "%s layer %d: query signatures differ", name, layer);
        ck_assert_msg(ht_tensor_cmp_bits(ka, kb, NULL) == 0, "%s layer %d: key signatures differ", name, layer);
        check_sigs(mo, HT_SIDE_QUERY, layer, q, qb, name);
        check_sigs(mo, HT_SIDE_KEY, layer, k, kb, name);
        ht_tensor_free(q);
        ht_tensor_free(k);
        ht_tensor_free(qa);
        ht_tensor_free(qb);
        ht_tensor_free(ka);
        ht_tensor_free(kb);
    }
    ht_model_free(mo);
    api->context_destroy(bound);
    api->context_destroy(loaded);
}
END_TEST

static const struct {
    const char *name;
    ht_st_fault_t fault;
} k_faults[] = {
    {"truncated_data", HT_ST_TRUNCATE},
    {"truncated_header", HT_ST_TRUNCATE_HEADER},
    {"bad_json", HT_ST_BAD_JSON},
    {"header_length_past_eof", HT_ST_HEADER_TOO_LONG},
    {"missing_tensor", HT_ST_MISSING_TENSOR},
    {"wrong_shape", HT_ST_WRONG_SHAPE},
    {"dtype_f16", HT_ST_WRONG_DTYPE},
    {"data_offsets_mismatch", HT_ST_BAD_OFFSETS},
    {"format_not_hashattn", HT_ST_WRONG_FORMAT},
    {"num_q_heads_mismatch", HT_ST_WRONG_META},
    {"signature_layout_mismatch", HT_ST_WRONG_LAYOUT},
    {"no_metadata", HT_ST_NO_METADATA},
};
#define NFAULT ((int)(sizeof k_faults / sizeof k_faults[0]))

START_TEST(weights_load_bad_file)
{
    char name[160];
    snprintf(name, sizeof name, "weights_load(fault=%s)", k_faults[_i].name);
    uint64_t seed = ht_seed(0x4000);
    if (!ht_case_begin(name, seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    const wcfg_t *c = &k_cfgs[2];
    ht_rng_t r;
    ht_rng_seed(&r, seed);
    ht_model_t *mo = ht_model_random(c->layers, c->hq, c->hkv, c->d, c->m, c->sig_per_kv, c->wdtype, &r);
    char path[512];
    tmp_path(path, sizeof path, k_faults[_i].name);
    ck_assert_int_eq(ht_st_write(path, mo, k_faults[_i].fault), 0);
    hashattn_context_t *ctx = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    la.path = path;
    hashattn_status_t st = api->weights_load(ctx, &la);
    unlink(path);
    printf("  -> %s: %s\n", api->status_string(st), api->last_error(ctx));
    ck_assert_msg(st == HASHATTN_STATUS_FORMAT_ERROR, "%s: got %s, want FORMAT_ERROR (%s)", name,
                  api->status_string(st), api->last_error(ctx));
    ck_assert_msg(api->last_error(ctx)[0] != 0, "%s: empty message", name);
    /* a failed load binds nothing */
    ht_tensor_t *q = ht_tensor_new(c->dtype, 3, HT_IDX(2, c->hq, c->d), 0, &r);
    ht_tensor_fill_uniform(q, &r, -1, 1);
    ht_tensor_t *qs = run_hash(api, ctx, HASHATTN_HASH_QUERY, 0, q, c->hq, &r, &st);
    ck_assert_msg(st == HASHATTN_STATUS_NOT_READY, "%s: hash after a failed load: %s, want NOT_READY",
                  name, api->status_string(st));
    ht_tensor_free(q);
    ht_tensor_free(qs);
    ht_model_free(mo);
    api->context_destroy(ctx);
}
END_TEST

START_TEST(weights_load_io)
{
    uint64_t seed = ht_seed(0x5000);
    if (!ht_case_begin("weights_load(io)", seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    const wcfg_t *c = &k_cfgs[0];
    hashattn_context_t *ctx = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    la.path = "/nonexistent-dir/hashattn-weights.safetensors";
    hashattn_status_t st = api->weights_load(ctx, &la);
    ck_assert_msg(st == HASHATTN_STATUS_IO_ERROR, "missing file: %s", api->status_string(st));
    ck_assert_msg(strstr(api->last_error(ctx), "nonexistent-dir") != NULL,
                  "message \"%s\" does not name the path", api->last_error(ctx));
    char path[512];
    tmp_path(path, sizeof path, "empty");
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    la.path = path;
    st = api->weights_load(ctx, &la);
    unlink(path);
    ck_assert_msg(st == HASHATTN_STATUS_FORMAT_ERROR || st == HASHATTN_STATUS_IO_ERROR,
                  "empty file: %s", api->status_string(st));
    ck_assert_str_ne(api->last_error(ctx), "");
    la.path = "/";
    st = api->weights_load(ctx, &la);
    ck_assert_msg(st == HASHATTN_STATUS_IO_ERROR && strstr(api->last_error(ctx), "/ is not a regular file"),
                  "a directory: %s: %s", api->status_string(st), api->last_error(ctx));
    api->context_destroy(ctx);
}
END_TEST

/* ---- bad weight tensors ---- */

enum { BW_W1_SHAPE, BW_KEY_HEADS, BW_DTYPE_F16, BW_NULL_B3, BW_LAYERS, BW_INNER_STRIDE, BW_DEVICE,
       BW_B2_NDIM, BW_COUNT };
static const char *k_bw_names[] = {"w1_shape", "key_heads_hq_for_compact", "dtype_f16", "b3_null",
                                   "layers_plus_1", "inner_stride_2", "device_cuda", "b2_ndim"};

START_TEST(weights_bind_bad)
{
    char name[160];
    snprintf(name, sizeof name, "weights_bind(bad=%s)", k_bw_names[_i]);
    uint64_t seed = ht_seed(0x6000);
    if (!ht_case_begin(name, seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    const wcfg_t *c = &k_cfgs[2]; /* compact: key H = Hkv */
    ht_rng_t r;
    ht_rng_seed(&r, seed);
    hashattn_context_t *ctx = make_ctx(api, c, HASHATTN_KV_LAYOUT_NHD);
    int L = c->layers, hq = c->hq, hkv = c->hkv, m = c->m, D = c->d;
    DLDataType wdt = _i == BW_DTYPE_F16 ? HT_F16 : HT_F32;
    ht_tensor_t *t[2][6];
    for (int side = 0; side < 2; side++) {
        int64_t H = side ? hkv : hq;
        if (_i == BW_KEY_HEADS && side == 1)
            H = hq;
        int64_t Ls = _i == BW_LAYERS ? L + 1 : L;
        int64_t shapes[6][4] = {{Ls, H, m, D}, {Ls, H, m}, {Ls, H, m, m}, {Ls, H, m}, {Ls, H, 32, m}, {Ls, H, 32}};
        int nds[6] = {4, 3, 4, 3, 4, 3};
        if (_i == BW_W1_SHAPE && side == 0)
            shapes[0][2] = m + 1;
        for (int p = 0; p < 6; p++) {
            t[side][p] = ht_tensor_new(wdt, nds[p], shapes[p], 0, &r);
            ht_tensor_fill_uniform(t[side][p], &r, -0.1, 0.1);
        }
    }
    hashattn_weights_bind_args_t a = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_mlp_weights_t *w[2] = {&a.query, &a.key};
    DLTensor mod;
    int64_t mshape[4], mstrides[4];
    for (int side = 0; side < 2; side++) {
        w[side]->w1 = &t[side][0]->t;
        w[side]->b1 = &t[side][1]->t;
        w[side]->w2 = &t[side][2]->t;
        w[side]->b2 = &t[side][3]->t;
        w[side]->w3 = &t[side][4]->t;
        w[side]->b3 = &t[side][5]->t;
    }
    const char *word = "w1";
    switch (_i) {
    case BW_W1_SHAPE: word = "w1"; break;
    case BW_KEY_HEADS: word = "key"; break;
    case BW_DTYPE_F16: word = "dtype"; break;
    case BW_NULL_B3: a.key.b3 = NULL; word = "b3"; break;
    case BW_LAYERS: word = "w1"; break;
    case BW_INNER_STRIDE:
    case BW_DEVICE:
    case BW_B2_NDIM:
        mod = t[0][3]->t;
        memcpy(mshape, mod.shape, sizeof(int64_t) * 3);
        ht_tensor_strides(t[0][3], mstrides);
        mod.shape = mshape;
        mod.strides = mstrides;
        if (_i == BW_INNER_STRIDE) {
            mstrides[2] = 2; /* refused before anything is read */
        } else if (_i == BW_DEVICE) {
            mod.device.device_type = kDLCUDA;
        } else {
            mod.ndim = 2;
        }
        a.query.b2 = &mod;
        word = "b2";
        break;
    }
    hashattn_status_t st = api->weights_bind(ctx, &a);
    const char *msg = api->last_error(ctx);
    printf("  -> %s: %s\n", api->status_string(st), msg);
    if (_i == BW_DEVICE)
        ck_assert_msg(st != HASHATTN_STATUS_OK, "%s: accepted", name);
    else
        ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "%s: %s, want INVALID_ARGUMENT", name,
                      api->status_string(st));
    ck_assert_msg(msg[0] != 0, "%s: empty message", name);
    if (_i != BW_DEVICE && _i != BW_DTYPE_F16)
        ck_assert_msg(strstr(msg, word) != NULL, "%s: message \"%s\" does not name %s", name, msg, word);
    for (int side = 0; side < 2; side++)
        for (int p = 0; p < 6; p++)
            ht_tensor_free(t[side][p]);
    api->context_destroy(ctx);
}
END_TEST

/* ---- cache_write: stored K/V and signatures ---- */

typedef struct wr_cfg {
    int layout, sig_per_kv, only_sigs;
    DLDataType dtype;
    int hq, hkv, d, block;
} wr_cfg_t;

static const wr_cfg_t k_wr[] = {
    {HASHATTN_KV_LAYOUT_NHD, 0, 0, {kDLBfloat, 16, 1}, 8, 2, 64, 16},
    {HASHATTN_KV_LAYOUT_HND, 0, 0, {kDLFloat, 32, 1}, 6, 2, 128, 1},
    {HASHATTN_KV_LAYOUT_NHD, 1, 0, {kDLFloat, 16, 1}, 8, 2, 64, 32},
    {HASHATTN_KV_LAYOUT_HND, 1, 0, {kDLBfloat, 16, 1}, 4, 4, 64, 3},
    {HASHATTN_KV_LAYOUT_NHD, 0, 1, {kDLBfloat, 16, 1}, 8, 2, 64, 16},
    {HASHATTN_KV_LAYOUT_HND, 1, 1, {kDLFloat, 32, 1}, 6, 3, 64, 5},
};
#define NWR ((int)(sizeof k_wr / sizeof k_wr[0]))

static void cidx(int layout, int64_t b, int64_t o, int64_t g, int64_t i, int64_t *idx)
{
    idx[0] = b;
    idx[3] = i;
    idx[1] = layout == HASHATTN_KV_LAYOUT_NHD ? o : g;
    idx[2] = layout == HASHATTN_KV_LAYOUT_NHD ? g : o;
}

START_TEST(weights_cache_write)
{
    const wr_cfg_t *w = &k_wr[_i];
    char name[256];
    snprintf(name, sizeof name,
             "cache_write(dtype=%s,hq=%d,hkv=%d,d=%d,block=%d,layout=%s,sig=%s%s)", ht_dtype_name(w->dtype),
             w->hq, w->hkv, w->d, w->block, w->layout ? "hnd" : "nhd", w->sig_per_kv ? "compact" : "paper",
             w->only_sigs ? ",signatures_only" : "");
    uint64_t seed = ht_seed(0x7000 + (uint64_t)_i);
    if (!ht_case_begin(name, seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_rng_t r;
    ht_rng_seed(&r, seed);
    wcfg_t c = {w->hq, w->hkv, w->d, 32, w->sig_per_kv, 2, 1, HT_F32, w->dtype};
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 2;
    cfg.num_q_heads = c.hq;
    cfg.num_kv_heads = c.hkv;
    cfg.head_dim = c.d;
    cfg.mlp_width = c.m;
    cfg.dtype = c.dtype;
    cfg.kv_layout = w->layout;
    cfg.block_size = w->block;
    cfg.signature_layout = c.sig_per_kv ? HASHATTN_SIGNATURE_PER_KV_HEAD : HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    hashattn_context_t *ctx = NULL;
    ck_assert_int_eq(api->context_create(&cfg, &ctx), HASHATTN_STATUS_OK);
    ht_model_t *mo = ht_model_random(2, c.hq, c.hkv, c.d, c.m, c.sig_per_kv, HT_F32, &r);
    ck_assert_int_eq(ht_model_bind(api, ctx, mo, 0, &r), HASHATTN_STATUS_OK);
    const int hsig = c.sig_per_kv ? c.hkv : c.hq, nb = 7, bs = w->block, hkv = c.hkv, D = c.d;
    int64_t cshape[4] = {nb, w->layout ? hkv : bs, w->layout ? bs : hkv, D};
    ht_tensor_t *kc = ht_tensor_new(c.dtype, 4, cshape, HT_PAD, &r);
    ht_tensor_t *vc = ht_tensor_new(c.dtype, 4, cshape, HT_PAD | HT_OFFSET, &r);
    ht_tensor_t *sc = ht_tensor_new(HT_U32, 3, HT_IDX(nb, hsig, bs), HT_PAD, &r);
    const int n = 40;
    ht_tensor_t *key = ht_tensor_new(c.dtype, 3, HT_IDX(n, hkv, D), HT_PAD | HT_SWAP, &r);
    ht_tensor_t *val = ht_tensor_new(c.dtype, 3, HT_IDX(n, hkv, D), HT_PAD, &r);
    ht_tensor_t *sm = ht_tensor_new(HT_I64, 1, HT_IDX(n), HT_OFFSET, &r);
    ht_tensor_fill_uniform(key, &r, -1, 1);
    ht_tensor_fill_uniform(val, &r, -1, 1);
    /* random slots with repeats and skips; last[slot] = the token that wins */
    int nslots = nb * bs;
    int *last = malloc(sizeof(int) * (size_t)nslots);
    for (int s = 0; s < nslots; s++)
        last[s] = -1;
    for (int t = 0; t < n; t++) {
        int64_t slot = ht_rng_int(&r, -1, nslots < 12 ? nslots : 12);
        if (t % 9 == 4)
            slot = -(int64_t)ht_rng_int(&r, 1, 1000); /* any negative skips */
        HT_SET(sm, (double)slot, t);
        if (slot >= 0)
            last[slot] = t;
    }
    uint64_t kc0 = ht_checksum(kc), vc0 = ht_checksum(vc);
    ht_tensor_t *kc_before = ht_tensor_new(c.dtype, 4, cshape, 0, NULL);
    ht_workspace_t ws;
    ck_assert_int_eq(ht_workspace_alloc(api, ctx, HASHATTN_OP_CACHE_WRITE, 0, n, 0, &ws), HASHATTN_STATUS_OK);
    hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
    a.flags = w->only_sigs ? HASHATTN_CACHE_WRITE_SIGNATURES_ONLY : 0;
    a.layer = 1;
    a.key = &key->t;
    a.value = w->only_sigs ? NULL : &val->t;
    a.key_cache = &kc->t;
    a.value_cache = &vc->t;
    a.signature_cache = &sc->t;
    a.slot_mapping = &sm->t;
    a.workspace = ws.ptr;
    a.workspace_size = ws.size;
    hashattn_status_t st = api->cache_write(ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: %s: %s", name, api->status_string(st), api->last_error(ctx));
    ht_workspace_free(&ws);

    /* key signatures straight from api->hash for comparison */
    ht_tensor_t *hs = run_hash(api, ctx, HASHATTN_HASH_KEY, 1, key, hsig, &r, &st);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    check_sigs(mo, HT_SIDE_KEY, 1, key, hs, name);

    if (w->only_sigs) {
        ck_assert_msg(ht_checksum(kc) == kc0 && ht_checksum(vc) == vc0,
                      "%s: SIGNATURES_ONLY wrote the K/V caches", name);
    }
    int G = c.hq / c.hkv;
    double *x = malloc(sizeof(double) * (size_t)D);
    for (int s = 0; s < nslots; s++) {
        int b = s / bs, o = s % bs, t = last[s];
        int64_t idx[4];
        for (int h = 0; h < hsig; h++) {
            uint32_t got = (uint32_t)HT_GET(sc, b, h, o);
            if (t < 0) {
                ck_assert_msg(got == 0xffffffffu, "%s: untouched slot %d sig head %d written", name, s, h);
                continue;
            }
            uint32_t want = (uint32_t)HT_GET(hs, t, h);
            ck_assert_msg(got == want, "%s: slot %d (token %d) sig head %d = 0x%08x, api->hash gives 0x%08x",
                          name, s, t, h, got, want);
            int g = c.sig_per_kv ? h : h / G;
            for (int i = 0; i < D; i++)
                x[i] = HT_GET(key, t, g, i);
            double out[32];
            uint32_t dc;
            ht_mlp_eval(mo, HT_SIDE_KEY, 1, h, x, out);
            uint32_t ref = ht_sig_of(out, DONTCARE_EPS, &dc, NULL);
            ck_assert_msg(((got ^ ref) & ~dc) == 0, "%s: slot %d sig head %d = 0x%08x, MLP 0x%08x", name, s,
                          h, got, ref);
        }
        if (w->only_sigs)
            continue;
        for (int g = 0; g < hkv; g++)
            for (int i = 0; i < D; i++) {
                cidx(w->layout, b, o, g, i, idx);
                if (t < 0) {
                    /* untouched: still the 0xff fill */
                    unsigned char *p = ht_ptr(kc, idx);
                    ck_assert_msg(p[0] == 0xff, "%s: untouched slot %d written", name, s);
                    continue;
                }
                ck_assert_msg(ht_get(kc, idx) == HT_GET(key, t, g, i) && ht_get(vc, idx) == HT_GET(val, t, g, i),
                              "%s: K/V of slot %d head %d [%d] differ from token %d (last writer)", name, s, g,
                              i, t);
            }
    }
    free(x);
    free(last);
    ht_tensor_free(kc_before);
    ht_tensor_free(kc);
    ht_tensor_free(vc);
    ht_tensor_free(sc);
    ht_tensor_free(key);
    ht_tensor_free(val);
    ht_tensor_free(sm);
    ht_tensor_free(hs);
    ht_model_free(mo);
    api->context_destroy(ctx);
}
END_TEST

/* ---- cache_write with the step's queries (1.2): query_signatures are
 * api->hash's (query side) bit for bit, and the caches are what a call
 * without the queries writes ---- */

typedef struct wq_cfg {
    DLDataType dtype;
    int hq, hkv, d, layout, sig_per_kv;
    int n_keys, n_queries;
    int sig_cache;    /* 0: signature_cache NULL (K/V only) */
    int only_sigs;    /* flags = SIGNATURES_ONLY */
    int qsig_pad;     /* extra words between query_signatures rows, 0: compact */
    unsigned qflags;  /* HT_PAD / HT_OFFSET / HT_SWAP on query */
} wq_cfg_t;

/* clang-format off */
static const wq_cfg_t k_wq[] = {
    {{kDLBfloat, 16, 1}, 8, 2, 64, HASHATTN_KV_LAYOUT_NHD, 0, 5, 3, 1, 0, 0, HT_PAD},
    {{kDLFloat, 32, 1}, 6, 2, 128, HASHATTN_KV_LAYOUT_HND, 1, 0, 7, 1, 0, 5, HT_OFFSET},  /* no keys */
    {{kDLFloat, 16, 1}, 4, 4, 64, HASHATTN_KV_LAYOUT_NHD, 0, 9, 0, 1, 0, 2, 0},           /* no query rows */
    {{kDLBfloat, 16, 1}, 8, 1, 64, HASHATTN_KV_LAYOUT_HND, 1, 12, 17, 0, 0, 1, HT_SWAP},  /* K/V only */
    {{kDLBfloat, 16, 1}, 8, 2, 64, HASHATTN_KV_LAYOUT_NHD, 0, 4, 1, 1, 1, 3, HT_PAD | HT_OFFSET},
    {{kDLFloat, 32, 1}, 9, 3, 64, HASHATTN_KV_LAYOUT_NHD, 0, 0, 1, 0, 0, 0, 0},           /* queries alone */
    {{kDLBfloat, 16, 1}, 4, 2, 64, HASHATTN_KV_LAYOUT_NHD, 0, 40, 33, 1, 0, 7, HT_PAD},
    {{kDLFloat, 16, 1}, 6, 3, 64, HASHATTN_KV_LAYOUT_HND, 1, 2, 20, 1, 1, 0, HT_SWAP | HT_OFFSET},
};
/* clang-format on */
#define NWQ ((int)(sizeof k_wq / sizeof k_wq[0]))

/* Every byte of t's allocation outside its logical elements is still the
 * 0xFF fill (the elements themselves are overwritten with 0xFF here). */
static int only_elements_written(ht_tensor_t *t)
{
    int64_t n = ht_tensor_numel(t);
    for (int64_t f = 0; f < n; f++)
        HT_SET(t, 4294967295.0, f / t->shape[1], f % t->shape[1]);
    const unsigned char *p = t->base;
    for (size_t i = 0; i < t->bytes; i++)
        if (p[i] != 0xff)
            return 0;
    return 1;
}

START_TEST(weights_cache_write_query)
{
    const wq_cfg_t *w = &k_wq[_i];
    char name[256];
    snprintf(name, sizeof name,
             "cache_write_query(dtype=%s,hq=%d,hkv=%d,d=%d,layout=%s,sig=%s,keys=%d,queries=%d%s%s,qsig_pad=%d)",
             ht_dtype_name(w->dtype), w->hq, w->hkv, w->d, w->layout ? "hnd" : "nhd",
             w->sig_per_kv ? "compact" : "paper", w->n_keys, w->n_queries, w->sig_cache ? "" : ",no_sig_cache",
             w->only_sigs ? ",signatures_only" : "", w->qsig_pad);
    uint64_t seed = ht_seed(0x7800 + (uint64_t)_i);
    if (!ht_case_begin(name, seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_rng_t r;
    ht_rng_seed(&r, seed);
    const int hq = w->hq, hkv = w->hkv, D = w->d, m = 32, bs = 4, nb = 16, layer = 1;
    const int hsig = w->sig_per_kv ? hkv : hq, nk = w->n_keys, nq = w->n_queries;
    const wcfg_t wc = {hq, hkv, D, m, w->sig_per_kv, 2, layer, HT_F32, w->dtype};
    hashattn_context_t *ctx = make_ctx(api, &wc, w->layout); /* its block size is bs */
    ht_model_t *mo = ht_model_random(2, hq, hkv, D, m, w->sig_per_kv, HT_F32, &r);
    ck_assert_int_eq(ht_model_bind(api, ctx, mo, 0, &r), HASHATTN_STATUS_OK);

    int64_t cshape[4] = {nb, w->layout ? hkv : bs, w->layout ? bs : hkv, D};
    ht_tensor_t *kc = ht_tensor_new(w->dtype, 4, cshape, HT_PAD, &r);
    ht_tensor_t *vc = ht_tensor_new(w->dtype, 4, cshape, HT_PAD | HT_OFFSET, &r);
    ht_tensor_t *sc = ht_tensor_new(HT_U32, 3, HT_IDX(nb, hsig, bs), HT_PAD, &r);
    ht_tensor_t *key = ht_tensor_new(w->dtype, 3, HT_IDX(nk, hkv, D), HT_PAD, &r);
    ht_tensor_t *val = ht_tensor_new(w->dtype, 3, HT_IDX(nk, hkv, D), 0, NULL);
    ht_tensor_t *sm = ht_tensor_new(HT_I64, 1, HT_IDX(nk), 0, NULL);
    ht_tensor_t *q = ht_tensor_new(w->dtype, 3, HT_IDX(nq, hq, D), w->qflags, &r);
    ht_tensor_t *qs = w->qsig_pad ? ht_tensor_strided(HT_U32, 2, HT_IDX(nq, hq), HT_IDX(hq + w->qsig_pad, 1), 3)
                                  : ht_tensor_new(HT_U32, 2, HT_IDX(nq, hq), 0, NULL);
    ht_tensor_fill_uniform(key, &r, -1, 1);
    ht_tensor_fill_uniform(val, &r, -1, 1);
    ht_tensor_fill_uniform(q, &r, -1, 1);
    for (int t = 0; t < nk; t++) /* distinct slots, every 5th token skipped */
        HT_SET(sm, t % 5 == 3 ? -1.0 : (double)((t * 7 + 2) % (nb * bs)), t);

    ht_workspace_t ws;
    ck_assert_int_eq(ht_workspace_alloc(api, ctx, HASHATTN_OP_CACHE_WRITE, 0, nk > nq ? nk : nq, 0, &ws),
                     HASHATTN_STATUS_OK);
    hashattn_cache_write_args_t a = HASHATTN_CACHE_WRITE_ARGS_INIT;
    a.flags = w->only_sigs ? HASHATTN_CACHE_WRITE_SIGNATURES_ONLY : 0;
    a.layer = layer;
    a.key = &key->t;
    a.value = w->only_sigs ? NULL : &val->t;
    a.key_cache = &kc->t;
    a.value_cache = &vc->t;
    a.signature_cache = w->sig_cache ? &sc->t : NULL;
    a.slot_mapping = &sm->t;
    a.workspace = ws.ptr;
    a.workspace_size = ws.size;

    /* without the queries: the caches to expect */
    hashattn_status_t st = api->cache_write(ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: without queries: %s: %s", name, api->status_string(st),
                  api->last_error(ctx));
    ht_tensor_t *kc0 = ht_tensor_clone(kc), *vc0 = ht_tensor_clone(vc), *sc0 = ht_tensor_clone(sc);
    const uint64_t ck0[3] = {ht_checksum(kc), ht_checksum(vc), ht_checksum(sc)};
    memset(kc->base, 0xff, kc->bytes);
    memset(vc->base, 0xff, vc->bytes);
    memset(sc->base, 0xff, sc->bytes);
    /* the premise of the comparison below: with keys, that call wrote */
    ck_assert_msg(nk == 0 || ck0[0] != ht_checksum(kc) || ck0[2] != ht_checksum(sc),
                  "%s: the call without queries wrote nothing", name);

    /* with them */
    a.query = &q->t;
    a.query_signatures = &qs->t;
    st = api->cache_write(ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: with queries: %s: %s", name, api->status_string(st),
                  api->last_error(ctx));
    int64_t first = -1;
    ck_assert_msg(ht_tensor_cmp_bits(kc0, kc, &first) == 0 && ht_tensor_cmp_bits(vc0, vc, &first) == 0,
                  "%s: K/V caches differ from the call without queries (flat %lld)", name, (long long)first);
    ck_assert_msg(ht_tensor_cmp_bits(sc0, sc, &first) == 0,
                  "%s: signature cache differs from the call without queries (flat %lld)", name, (long long)first);
    ck_assert_msg(ht_checksum(kc) == ck0[0] && ht_checksum(vc) == ck0[1] && ht_checksum(sc) == ck0[2],
                  "%s: the queries changed bytes of the caches (padding included)", name);

    /* the query signatures: api->hash's bit for bit, and the MLP's */
    ht_tensor_t *hs = run_hash(api, ctx, HASHATTN_HASH_QUERY, layer, q, hq, &r, &st);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: hash: %s", name, api->status_string(st));
    const int64_t bad = ht_tensor_cmp_bits(hs, qs, &first);
    ck_assert_msg(bad == 0, "%s: %lld query signatures differ from api->hash (first flat %lld: 0x%08x vs 0x%08x)",
                  name, (long long)bad, (long long)first,
                  bad ? (uint32_t)HT_GET(qs, first / hq, first % hq) : 0u,
                  bad ? (uint32_t)HT_GET(hs, first / hq, first % hq) : 0u);
    check_sigs(mo, HT_SIDE_QUERY, layer, q, qs, name);
    ck_assert_msg(only_elements_written(qs), "%s: cache_write wrote query_signatures outside its elements", name);

    ht_workspace_free(&ws);
    ht_tensor_free(hs);
    ht_tensor_free(kc0);
    ht_tensor_free(vc0);
    ht_tensor_free(sc0);
    ht_tensor_free(kc);
    ht_tensor_free(vc);
    ht_tensor_free(sc);
    ht_tensor_free(key);
    ht_tensor_free(val);
    ht_tensor_free(sm);
    ht_tensor_free(q);
    ht_tensor_free(qs);
    ht_model_free(mo);
    api->context_destroy(ctx);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("weights");
    TCase *tc = tcase_create("weights");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, weights_bind_hash, 0, NCFG);
    tcase_add_test(tc, weights_rebind);
    tcase_add_loop_test(tc, weights_load_equals_bind, 0, NCFG);
    tcase_add_loop_test(tc, weights_load_bad_file, 0, NFAULT);
    tcase_add_test(tc, weights_load_io);
    tcase_add_loop_test(tc, weights_bind_bad, 0, BW_COUNT);
    tcase_add_loop_test(tc, weights_cache_write, 0, NWR);
    tcase_add_loop_test(tc, weights_cache_write_query, 0, NWQ);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return ht_run_suite(suite(), "test_weights"); }
