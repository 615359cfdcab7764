/*
 * test_abi.c - the stable ABI as a host sees it: loading, the function table,
 * versions, status strings, struct_size rules (short, long, truncated, and
 * a 1.1 caller's decode and cache_write args without 1.2's fields),
 * unknown flags and NULL pointers.
 */
#include <check.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ha_test.h"

static const hashattn_api_t *api_or_fail(void)
{
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    return api;
}

static hashattn_context_t *small_ctx(const hashattn_api_t *api, int bind)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 2;
    cfg.num_q_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.block_size = 4;
    cfg.mlp_width = 16;
    hashattn_context_t *ctx = NULL;
    hashattn_status_t st = api->context_create(&cfg, &ctx);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "context_create: %s: %s", api->status_string(st),
                  api->last_error(NULL));
    ck_assert_ptr_nonnull(ctx);
    if (bind) {
        ht_rng_t r;
        ht_rng_seed(&r, 1);
        ht_model_t *mo = ht_model_random(2, 4, 2, 64, 16, 0, HT_F32, &r);
        st = ht_model_bind(api, ctx, mo, 0, NULL);
        ht_model_free(mo);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "weights_bind: %s: %s", api->status_string(st),
                      api->last_error(ctx));
    }
    return ctx;
}

/* A small decode case every struct-size test can point at. */
static const int k_lens[3] = {37, 0, 300};
static void small_case(const hashattn_api_t *api, ht_decode_case_t *c, uint64_t seed)
{
    ht_decode_desc_t d = {0};
    d.dtype = HT_BF16;
    d.hq = 4;
    d.hkv = 2;
    d.d = 64;
    d.block = 16;
    d.batch = 3;
    d.m = 16;
    d.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    d.selection = HASHATTN_SELECTION_GROUP;
    d.sig_layout = HASHATTN_SIGNATURE_PER_QUERY_HEAD;
    d.sink = 4;
    d.recent = 4;
    d.heavy_count = 8;
    d.seq_lens = k_lens;
    d.fill = HT_FILL_DIRECT;
    d.seed = seed;
    char err[512];
    int rc = ht_decode_case_build(api, &d, c, err, sizeof err);
    ck_assert_msg(rc == 0, "build: %s", err);
}

static void expect_msg(const char *msg, const char *word)
{
    ck_assert_ptr_nonnull(msg);
    ck_assert_msg(strstr(msg, word) != NULL, "message \"%s\" does not name %s", msg, word);
}

/* ------------------------------------------------------------------------- */

START_TEST(abi_load)
{
    ht_case_begin("abi(load)", 0);
    const hashattn_api_t *api = api_or_fail();
    ck_assert_ptr_nonnull(ht_dl_handle());
    ck_assert_uint_eq(api->abi_major, HASHATTN_ABI_MAJOR);
    ck_assert_uint_ge(api->abi_minor, HASHATTN_ABI_MINOR);
    ck_assert_uint_ge(api->struct_size, offsetof(hashattn_api_t, hash) + sizeof(void *));
    ck_assert_uint_lt(api->struct_size, 4096);
    ck_assert_ptr_nonnull(api->version);
    ck_assert_ptr_nonnull(api->status_string);
    ck_assert_ptr_nonnull(api->last_error);
    ck_assert_ptr_nonnull(api->context_create);
    ck_assert_ptr_nonnull(api->context_destroy);
    ck_assert_ptr_nonnull(api->weights_bind);
    ck_assert_ptr_nonnull(api->weights_load);
    ck_assert_ptr_nonnull(api->workspace_size);
    ck_assert_ptr_nonnull(api->cache_write);
    ck_assert_ptr_nonnull(api->decode);
    ck_assert_ptr_nonnull(api->prefill);
    ck_assert_ptr_nonnull(api->hash);
    const char *v = api->version();
    ck_assert_ptr_nonnull(v);
    printf("version: %s\n", v);
    unsigned ma = 0, mi = 0, pa = 0;
    int used = 0;
    ck_assert_msg(sscanf(v, "%u.%u.%u%n", &ma, &mi, &pa, &used) == 3, "version \"%s\" is not M.m.p+...", v);
    ck_assert_msg(ma == api->abi_major, "version %s: major differs from abi_major %u", v, api->abi_major);
    ck_assert_msg(mi == api->abi_minor, "version %s: minor differs from abi_minor %u", v, api->abi_minor);
    ck_assert_msg(v[used] == '+' && strstr(v + used, "cpu") != NULL,
                  "version \"%s\" does not list its backends (+cpu...)", v);
    /* the same static table on every call */
    ck_assert_ptr_eq(ht_get_api_fn()(HASHATTN_ABI_MAJOR), api);
}
END_TEST

START_TEST(abi_other_majors)
{
    ht_case_begin("abi(other_majors)", 0);
    api_or_fail();
    hashattn_get_api_fn get = ht_get_api_fn();
    ck_assert_ptr_null(get(0));
    ck_assert_ptr_null(get(2));
    ck_assert_ptr_null(get(HASHATTN_ABI_MAJOR + 1));
    ck_assert_ptr_null(get(UINT32_MAX));
}
END_TEST

START_TEST(abi_exports)
{
    ht_case_begin("abi(exports)", 0);
    api_or_fail();
    void *h = ht_dl_handle();
    const char *hidden[] = {"ha_cpu_decode", "ha_cpu_hash", "ha_cpu_cache_write", "ha_cpu_prefill",
                            "ha_cpu_workspace_size", "ha_cuda_device_count", "ha_cuda_decode"};
    for (size_t i = 0; i < sizeof hidden / sizeof hidden[0]; i++)
        ck_assert_msg(dlsym(h, hidden[i]) == NULL, "internal symbol %s is exported", hidden[i]);
    ck_assert_ptr_nonnull(dlsym(h, "hashattn_get_api"));
}
END_TEST

START_TEST(abi_status_strings)
{
    ht_case_begin("abi(status_strings)", 0);
    const hashattn_api_t *api = api_or_fail();
    static const char *names[] = {"OK", "INVALID_ARGUMENT", "UNSUPPORTED", "OUT_OF_MEMORY",
                                  "WORKSPACE_TOO_SMALL", "NOT_READY", "IO_ERROR", "FORMAT_ERROR",
                                  "DEVICE_ERROR", "INTERNAL", "COMM_ERROR"};
    for (int s = 0; s <= HASHATTN_STATUS_COMM_ERROR; s++) {
        const char *n = api->status_string((hashattn_status_t)s);
        ck_assert_ptr_nonnull(n);
        ck_assert_msg(strcmp(n, names[s]) == 0, "status_string(%d) = \"%s\", want \"%s\"", s, n, names[s]);
    }
    int unknown[] = {11, 12, 100, -1, 0x7fffffff};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *n = api->status_string((hashattn_status_t)unknown[i]);
        ck_assert_ptr_nonnull(n);
        ck_assert_str_eq(n, "UNKNOWN_STATUS");
    }
}
END_TEST

START_TEST(abi_context_lifecycle)
{
    ht_case_begin("abi(context_lifecycle)", 0);
    const hashattn_api_t *api = api_or_fail();
    ck_assert_ptr_nonnull(api->last_error(NULL));
    hashattn_context_t *a = small_ctx(api, 0), *b = small_ctx(api, 1);
    ck_assert_ptr_ne(a, b);
    ck_assert_str_eq(api->last_error(a), "");
    ck_assert_str_eq(api->last_error(b), "");
    ck_assert_int_eq(api->context_destroy(a), HASHATTN_STATUS_OK);
    ck_assert_int_eq(api->context_destroy(b), HASHATTN_STATUS_OK);
    ck_assert_int_eq(api->context_destroy(NULL), HASHATTN_STATUS_OK);
}
END_TEST

/* ---- struct_size too short: 0, 8 and sizeof - 1 for every struct ---- */

static void check_short(const hashattn_api_t *api, const hashattn_context_t *ctx, hashattn_status_t st,
                        const char *what, size_t size)
{
    ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "%s with struct_size %zu: %s, want INVALID_ARGUMENT",
                  what, size, api->status_string(st));
    const char *m1 = api->last_error(ctx), *m2 = api->last_error(NULL);
    ck_assert_msg(strstr(m1, "struct_size") || strstr(m2, "struct_size"),
                  "%s with struct_size %zu: message \"%s\" does not name struct_size", what, size, m1);
}

START_TEST(abi_short_struct_size)
{
    ht_case_begin("abi(short_struct_size)", 0);
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    small_case(api, &c, 11);
    ht_tensor_t *slots = ht_tensor_new(HT_I64, 1, HT_IDX(1), 0, NULL);
    HT_SET(slots, -1, 0);
    ht_tensor_t *keys = ht_tensor_new(HT_BF16, 3, HT_IDX(1, 2, 64), 0, NULL);
    ht_tensor_fill_uniform(keys, &(ht_rng_t){3}, -1, 1);
    ht_tensor_t *sigs = ht_tensor_new(HT_U32, 2, HT_IDX(1, 2), 0, NULL);
    uint64_t ck = ht_checksum(c.key_cache) ^ ht_checksum(c.sig_cache);

    for (int v = 0; v < 3; v++) {
        /* context config */
        hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
        cfg.num_layers = 1;
        cfg.num_q_heads = 4;
        cfg.num_kv_heads = 2;
        cfg.head_dim = 64;
        /* inside the last field (sizeof - 1 may fall in trailing padding, which is allowed) */
        size_t sizes[3] = {0, 8, offsetof(hashattn_context_config_t, dense_below) + 1};
        cfg.struct_size = sizes[v];
        hashattn_context_t *out = (hashattn_context_t *)&cfg;
        hashattn_status_t st = api->context_create(&cfg, &out);
        ck_assert_ptr_null(out);
        check_short(api, NULL, st, "context_create", sizes[v]);

        hashattn_decode_args_t da;
        ht_decode_case_args(&c, &da);
        size_t ds[3] = {0, 8, sizeof da - 1};
        da.struct_size = ds[v];
        check_short(api, c.ctx, api->decode(c.ctx, &da), "decode", ds[v]);

        hashattn_cache_write_args_t wa = HASHATTN_CACHE_WRITE_ARGS_INIT;
        wa.key = &keys->t;
        wa.value = &keys->t;
        wa.key_cache = &c.key_cache->t;
        wa.value_cache = &c.value_cache->t;
        wa.signature_cache = &c.sig_cache->t;
        wa.slot_mapping = &slots->t;
        size_t ws[3] = {0, 8, sizeof wa - 1};
        wa.struct_size = ws[v];
        check_short(api, c.ctx, api->cache_write(c.ctx, &wa), "cache_write", ws[v]);

        hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
        size_t ps[3] = {0, 8, sizeof pa - 1};
        pa.struct_size = ps[v];
        check_short(api, c.ctx, api->prefill(c.ctx, &pa), "prefill", ps[v]);

        hashattn_hash_args_t ha = HASHATTN_HASH_ARGS_INIT;
        ha.side = HASHATTN_HASH_KEY;
        ha.input = &keys->t;
        ha.signatures = &sigs->t;
        size_t hs[3] = {0, 8, sizeof ha - 1};
        ha.struct_size = hs[v];
        check_short(api, c.ctx, api->hash(c.ctx, &ha), "hash", hs[v]);

        hashattn_weights_bind_args_t ba = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
        size_t bs[3] = {0, 8, sizeof ba - 1};
        ba.struct_size = bs[v];
        check_short(api, c.ctx, api->weights_bind(c.ctx, &ba), "weights_bind", bs[v]);

        hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
        la.path = "/nonexistent/weights.safetensors";
        size_t ls[3] = {0, 8, sizeof la - 1};
        la.struct_size = ls[v];
        check_short(api, c.ctx, api->weights_load(c.ctx, &la), "weights_load", ls[v]);

        hashattn_workspace_args_t wsa = HASHATTN_WORKSPACE_ARGS_INIT;
        wsa.op = HASHATTN_OP_DECODE;
        wsa.max_num_seqs = 1;
        wsa.max_blocks_per_seq = 1;
        /* sizeof - 1 would end in trailing padding: cut the last field instead */
        size_t ss[3] = {0, 8, offsetof(hashattn_workspace_args_t, max_blocks_per_seq) + 3};
        wsa.struct_size = ss[v];
        size_t bytes = 12345;
        check_short(api, c.ctx, api->workspace_size(c.ctx, &wsa, &bytes), "workspace_size", ss[v]);
    }
    ck_assert_msg((ht_checksum(c.key_cache) ^ ht_checksum(c.sig_cache)) == ck, "caches changed");
    ht_tensor_free(slots);
    ht_tensor_free(keys);
    ht_tensor_free(sigs);
    ht_decode_case_free(&c);
}
END_TEST

/* ---- struct longer than the library knows: zero tail ok, non-zero refused ---- */

START_TEST(abi_long_struct)
{
    ht_case_begin("abi(long_struct)", 0);
    const hashattn_api_t *api = api_or_fail();
    struct {
        hashattn_context_config_t c;
        unsigned char tail[16];
    } big;
    memset(&big, 0, sizeof big);
    big.c = (hashattn_context_config_t)HASHATTN_CONTEXT_CONFIG_INIT;
    big.c.struct_size = sizeof big;
    big.c.num_layers = 1;
    big.c.num_q_heads = 4;
    big.c.num_kv_heads = 2;
    big.c.head_dim = 64;
    hashattn_context_t *ctx = NULL;
    hashattn_status_t st = api->context_create(&big.c, &ctx);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "config with zero tail: %s: %s", api->status_string(st),
                  api->last_error(NULL));
    api->context_destroy(ctx);
    big.tail[9] = 1;
    ctx = NULL;
    st = api->context_create(&big.c, &ctx);
    ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "config with non-zero tail: %s",
                  api->status_string(st));
    ck_assert_ptr_null(ctx);
    ck_assert_str_ne(api->last_error(NULL), "");

    ht_decode_case_t c;
    small_case(api, &c, 12);
    struct {
        hashattn_decode_args_t a;
        unsigned char tail[24];
    } bd;
    memset(&bd, 0, sizeof bd);
    ht_decode_case_args(&c, &bd.a);
    bd.a.struct_size = sizeof bd;
    st = api->decode(c.ctx, &bd.a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "decode args with zero tail: %s: %s",
                  api->status_string(st), api->last_error(c.ctx));
    uint64_t ck = ht_checksum(c.output);
    bd.tail[23] = 0x80;
    st = api->decode(c.ctx, &bd.a);
    ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "decode args with non-zero tail: %s",
                  api->status_string(st));
    ck_assert_str_ne(api->last_error(c.ctx), "");
    ck_assert_msg(ht_checksum(c.output) == ck, "refused decode wrote its output");

    /* nested budget struct */
    struct {
        hashattn_budget_t b;
        unsigned char tail[8];
    } bb;
    memset(&bb, 0, sizeof bb);
    bb.b = c.budget;
    bb.b.struct_size = sizeof bb;
    hashattn_decode_args_t a;
    ht_decode_case_args(&c, &a);
    a.budget = &bb.b;
    st = api->decode(c.ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "budget with zero tail: %s: %s", api->status_string(st),
                  api->last_error(c.ctx));
    bb.tail[0] = 1;
    st = api->decode(c.ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "budget with non-zero tail: %s",
                  api->status_string(st));

    struct {
        hashattn_workspace_args_t a;
        unsigned char tail[8];
    } bw;
    memset(&bw, 0, sizeof bw);
    bw.a = (hashattn_workspace_args_t)HASHATTN_WORKSPACE_ARGS_INIT;
    bw.a.struct_size = sizeof bw;
    bw.a.op = HASHATTN_OP_DECODE;
    bw.a.max_num_seqs = 3;
    bw.a.max_blocks_per_seq = 4;
    size_t bytes = 0;
    st = api->workspace_size(c.ctx, &bw.a, &bytes);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "workspace args with zero tail: %s", api->status_string(st));
    bw.tail[3] = 7;
    st = api->workspace_size(c.ctx, &bw.a, &bytes);
    ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "workspace args with non-zero tail: %s",
                  api->status_string(st));
    ht_decode_case_free(&c);
}
END_TEST

/* ---- padding inside the library's own struct is not an "unknown tail" ---- */

START_TEST(abi_struct_padding)
{
    ht_case_begin("abi(struct_padding)", 0);
    const hashattn_api_t *api = api_or_fail();
    hashattn_context_t *ctx = small_ctx(api, 1);
    /* hashattn_workspace_args_t ends with 4 bytes of padding on LP64: a host
     * that fills it from the _INIT macro leaves them indeterminate */
    union {
        hashattn_workspace_args_t a;
        unsigned char raw[sizeof(hashattn_workspace_args_t)];
    } u;
    memset(&u, 0xff, sizeof u);
    u.a.struct_size = sizeof u.a;
    u.a.op = HASHATTN_OP_DECODE;
    u.a.max_num_seqs = 2;
    u.a.max_num_tokens = 2;
    u.a.max_blocks_per_seq = 2;
    size_t bytes = 0;
    hashattn_status_t st = api->workspace_size(ctx, &u.a, &bytes);
    ck_assert_msg(st == HASHATTN_STATUS_OK,
                  "workspace_size with struct_size = sizeof = %zu and non-zero trailing padding: %s: %s",
                  sizeof u.a, api->status_string(st), api->last_error(ctx));
    /* interior padding (after hash args' side, after load args' flags) */
    ht_tensor_t *in = ht_tensor_new(HT_BF16, 3, HT_IDX(2, 4, 64), 0, NULL);
    ht_tensor_fill_uniform(in, &(ht_rng_t){5}, -1, 1);
    ht_tensor_t *sig = ht_tensor_new(HT_U32, 2, HT_IDX(2, 4), 0, NULL);
    ht_workspace_t ws;
    ck_assert_int_eq(ht_workspace_alloc(api, ctx, HASHATTN_OP_HASH, 0, 2, 0, &ws), HASHATTN_STATUS_OK);
    union {
        hashattn_hash_args_t a;
        unsigned char raw[sizeof(hashattn_hash_args_t)];
    } h;
    memset(&h, 0xff, sizeof h);
    h.a.struct_size = sizeof h.a;
    h.a.flags = 0;
    h.a.layer = 1;
    h.a.side = HASHATTN_HASH_QUERY;
    h.a.input = &in->t;
    h.a.signatures = &sig->t;
    h.a.workspace = ws.ptr;
    h.a.workspace_size = ws.size;
    h.a.stream = NULL;
    st = api->hash(ctx, &h.a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "hash args with non-zero interior padding: %s: %s",
                  api->status_string(st), api->last_error(ctx));
    ht_workspace_free(&ws);
    ht_tensor_free(in);
    ht_tensor_free(sig);
    api->context_destroy(ctx);
}
END_TEST

/* ---- an older (shorter) struct gets the documented defaults ---- */

/* Decode the case on a second context created from a config truncated at
 * `cut` (garbage after it) with budget NULL: the context's default budget
 * (128/128/fraction 1/16) and scale must apply. */
static void truncated_config_run(const hashattn_api_t *api, size_t cut)
{
    ht_decode_case_t c;
    small_case(api, &c, 13);
    unsigned char buf[sizeof(hashattn_context_config_t) + 16];
    memset(buf, 0x5a, sizeof buf);
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.block_size = 16;
    cfg.mlp_width = 16;
    cfg.struct_size = cut;
    memcpy(buf, &cfg, cut);
    hashattn_context_t *ctx = NULL;
    hashattn_status_t st = api->context_create((const hashattn_context_config_t *)buf, &ctx);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "config truncated at %zu: %s: %s", cut,
                  api->status_string(st), api->last_error(NULL));
    st = ht_model_bind(api, ctx, c.model, 0, NULL);
    ck_assert_int_eq(st, HASHATTN_STATUS_OK);
    hashattn_context_t *own = c.ctx;
    c.ctx = ctx;
    hashattn_budget_t def = HASHATTN_BUDGET_INIT;
    ht_decode_case_reference(&c, &def, 0);
    ht_decode_case_prepare(&c);
    hashattn_decode_args_t a;
    ht_decode_case_args(&c, &a);
    a.budget = NULL; /* the context's default */
    st = api->decode(ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "decode: %s: %s", api->status_string(st), api->last_error(ctx));
    char msg[512];
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "config cut at %zu: %s", cut, msg);
    /* the 300-token sequence is sparse under the default budget */
    ck_assert_int_eq((int)HT_GET(c.sel_cnt, 2, 0), 128 + 128 + 300 / 16);
    c.ctx = own;
    api->context_destroy(ctx);
    ht_decode_case_free(&c);
}

/* Cuts of the config: before `budget` (sizeof an older config without it,
 * as the brief's example), before softmax_scale, before selection. */
static const size_t k_cuts[] = {offsetof(hashattn_context_config_t, budget),
                                offsetof(hashattn_context_config_t, softmax_scale),
                                offsetof(hashattn_context_config_t, selection)};
static const char *k_cut_names[] = {"budget", "softmax_scale", "selection"};

START_TEST(abi_truncated_config)
{
    char name[128];
    snprintf(name, sizeof name, "abi(truncated_config,cut=%s,struct_size=%zu)", k_cut_names[_i], k_cuts[_i]);
    ht_case_begin(name, 13);
    truncated_config_run(api_or_fail(), k_cuts[_i]);
}
END_TEST

/* ---- 1.2's appended fields: a 1.1 caller's shorter decode and cache_write
 * args get their default (no query signatures), nothing past struct_size is
 * read, and a size that cuts one of them is refused ---- */

/* The first `size` bytes of args a in a heap block of exactly that size,
 * struct_size = size (the caller frees it). */
static void *sized_copy(const void *a, size_t size)
{
    unsigned char *blk = malloc(size);
    ck_assert_ptr_nonnull(blk);
    memcpy(blk, a, size);
    memcpy(blk, &size, sizeof size);
    return blk;
}

static hashattn_status_t decode_sized(const hashattn_api_t *api, hashattn_context_t *ctx,
                                      const hashattn_decode_args_t *a, size_t size)
{
    void *blk = sized_copy(a, size);
    hashattn_status_t st = api->decode(ctx, blk);
    free(blk);
    return st;
}

static hashattn_status_t write_sized(const hashattn_api_t *api, hashattn_context_t *ctx,
                                     const hashattn_cache_write_args_t *a, size_t size)
{
    void *blk = sized_copy(a, size);
    hashattn_status_t st = api->cache_write(ctx, blk);
    free(blk);
    return st;
}

static uint64_t caches_checksum(const ht_decode_case_t *c)
{
    return ht_checksum(c->key_cache) * 31u ^ ht_checksum(c->value_cache) * 7u ^ ht_checksum(c->sig_cache);
}

START_TEST(abi_minor_1_1_args)
{
    ht_case_begin("abi(minor_1_1_args)", 17);
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    small_case(api, &c, 17);
    const size_t d11 = offsetof(hashattn_decode_args_t, query_signatures); /* sizeof in 1.1 */
    const size_t w11 = offsetof(hashattn_cache_write_args_t, query);
    ck_assert_uint_eq(d11, 120);
    ck_assert_uint_eq(w11, 88);

    /* decode: the full struct without query signatures is the reference */
    ck_assert_int_eq(ht_decode_case_run(&c, 0, NULL), HASHATTN_STATUS_OK);
    ht_tensor_t *o0 = ht_tensor_clone(c.output), *n0 = ht_tensor_clone(c.sel_cnt), *s0 = ht_tensor_clone(c.sel_idx);
    /* query signatures that select otherwise: every query's bits inverted */
    ht_tensor_t *inv = ht_tensor_new(HT_U32, 2, HT_IDX(3, 4), 0, NULL);
    for (int s = 0; s < 3; s++)
        for (int h = 0; h < 4; h++)
            HT_SET(inv, (double)(uint32_t)~c.qsig[s * 4 + h], s, h);
    hashattn_decode_args_t da;
    ht_decode_case_args(&c, &da);
    da.query_signatures = &inv->t;
    ht_decode_case_prepare(&c);
    ck_assert_int_eq(api->decode(c.ctx, &da), HASHATTN_STATUS_OK);
    ck_assert_msg(ht_tensor_cmp_bits(s0, c.sel_idx, NULL) != 0,
                  "premise: inverted query signatures select the same tokens");
    /* 1.1-sized, in a block of exactly that size */
    ht_decode_case_prepare(&c);
    hashattn_status_t st = decode_sized(api, c.ctx, &da, d11);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "decode, struct_size %zu (1.1): %s: %s", d11, api->status_string(st),
                  api->last_error(c.ctx));
    ck_assert_msg(ht_tensor_cmp_bits(o0, c.output, NULL) == 0 && ht_tensor_cmp_bits(n0, c.sel_cnt, NULL) == 0 &&
                      ht_tensor_cmp_bits(s0, c.sel_idx, NULL) == 0,
                  "decode, struct_size %zu (1.1): not the result without query signatures", d11);
    /* 1.1-sized inside the caller's full struct: query_signatures past the size is not read */
    da.struct_size = d11;
    ht_decode_case_prepare(&c);
    ck_assert_int_eq(api->decode(c.ctx, &da), HASHATTN_STATUS_OK);
    ck_assert_msg(ht_tensor_cmp_bits(s0, c.sel_idx, NULL) == 0 && ht_tensor_cmp_bits(o0, c.output, NULL) == 0,
                  "decode, struct_size %zu: query_signatures past struct_size was used", d11);
    da.query_signatures = (const DLTensor *)0x1;
    ht_decode_case_prepare(&c);
    ck_assert_int_eq(api->decode(c.ctx, &da), HASHATTN_STATUS_OK);
    /* a size that cuts query_signatures */
    da.struct_size = d11 + 4;
    uint64_t out_ck = ht_checksum(c.output);
    check_short(api, c.ctx, api->decode(c.ctx, &da), "decode", d11 + 4);
    ck_assert_msg(ht_checksum(c.output) == out_ck, "refused decode wrote its output");

    /* cache_write: 2 keys into the last block, 3 queries */
    ht_rng_t r;
    ht_rng_seed(&r, 18);
    ht_tensor_t *k = ht_tensor_new(HT_BF16, 3, HT_IDX(2, 2, 64), 0, NULL);
    ht_tensor_t *sm = ht_tensor_new(HT_I64, 1, HT_IDX(2), 0, NULL);
    ht_tensor_t *q = ht_tensor_new(HT_BF16, 3, HT_IDX(3, 4, 64), 0, NULL);
    ht_tensor_t *qs = ht_tensor_new(HT_U32, 2, HT_IDX(3, 4), 0, NULL);
    ht_tensor_t *qs2 = ht_tensor_new(HT_U32, 2, HT_IDX(3, 4), 0, NULL);
    ht_tensor_fill_uniform(k, &r, -1, 1);
    ht_tensor_fill_uniform(q, &r, -1, 1);
    HT_SET(sm, (double)c.num_blocks * 16 - 1, 0);
    HT_SET(sm, (double)c.num_blocks * 16 - 2, 1);
    const uint64_t fresh = ht_checksum(qs2);
    hashattn_cache_write_args_t wa = HASHATTN_CACHE_WRITE_ARGS_INIT;
    wa.key = &k->t;
    wa.value = &k->t;
    wa.key_cache = &c.key_cache->t;
    wa.value_cache = &c.value_cache->t;
    wa.signature_cache = &c.sig_cache->t;
    wa.slot_mapping = &sm->t;
    ht_workspace_t ws;
    ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_CACHE_WRITE, 0, 3, 0, &ws), HASHATTN_STATUS_OK);
    wa.workspace = ws.ptr;
    wa.workspace_size = ws.size;
    wa.query = &q->t;
    wa.query_signatures = &qs->t;
    st = api->cache_write(c.ctx, &wa);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "cache_write with queries: %s: %s", api->status_string(st),
                  api->last_error(c.ctx));
    ck_assert_msg(ht_checksum(qs) != fresh, "premise: the full-size call wrote no query signatures");
    const uint64_t ck = caches_checksum(&c);
    /* 1.1-sized, exact block and caller's struct: the same caches, no query signatures */
    wa.query_signatures = &qs2->t;
    st = write_sized(api, c.ctx, &wa, w11);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "cache_write, struct_size %zu (1.1): %s: %s", w11,
                  api->status_string(st), api->last_error(c.ctx));
    wa.struct_size = w11;
    ck_assert_int_eq(api->cache_write(c.ctx, &wa), HASHATTN_STATUS_OK);
    ck_assert_msg(caches_checksum(&c) == ck, "cache_write, struct_size %zu: other caches", w11);
    ck_assert_msg(ht_checksum(qs2) == fresh, "cache_write, struct_size %zu: query_signatures past the size written",
                  w11);
    /* query covered, query_signatures not: that one is NULL, so "both or neither" */
    wa.struct_size = offsetof(hashattn_cache_write_args_t, query_signatures);
    st = api->cache_write(c.ctx, &wa);
    ck_assert_msg(st == HASHATTN_STATUS_INVALID_ARGUMENT, "cache_write, struct_size %zu with query: %s",
                  wa.struct_size, api->status_string(st));
    expect_msg(api->last_error(c.ctx), "query_signatures is NULL");
    ck_assert_msg(caches_checksum(&c) == ck && ht_checksum(qs2) == fresh, "refused cache_write wrote");
    wa.query = NULL;
    st = api->cache_write(c.ctx, &wa);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "cache_write, struct_size %zu, query NULL: %s: %s", wa.struct_size,
                  api->status_string(st), api->last_error(c.ctx));
    /* sizes that cut query or query_signatures */
    wa.query = &q->t;
    static const size_t cuts[2] = {offsetof(hashattn_cache_write_args_t, query) + 4,
                                   offsetof(hashattn_cache_write_args_t, query_signatures) + 4};
    for (int i = 0; i < 2; i++) {
        wa.struct_size = cuts[i];
        check_short(api, c.ctx, api->cache_write(c.ctx, &wa), "cache_write", cuts[i]);
    }
    ck_assert_msg(caches_checksum(&c) == ck && ht_checksum(qs2) == fresh, "refused cache_write wrote");

    ht_workspace_free(&ws);
    ht_tensor_t *all[] = {o0, n0, s0, inv, k, sm, q, qs, qs2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ht_tensor_free(all[i]);
    ht_decode_case_free(&c);
}
END_TEST

/* ---- unknown flags ---- */

START_TEST(abi_unknown_flags)
{
    ht_case_begin("abi(unknown_flags)", 0);
    const hashattn_api_t *api = api_or_fail();
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.flags = 1u;
    hashattn_context_t *ctx = NULL;
    ck_assert_int_eq(api->context_create(&cfg, &ctx), HASHATTN_STATUS_INVALID_ARGUMENT);
    expect_msg(api->last_error(NULL), "flags");
    cfg.flags = 1u << 31;
    ck_assert_int_eq(api->context_create(&cfg, &ctx), HASHATTN_STATUS_INVALID_ARGUMENT);

    ht_decode_case_t c;
    small_case(api, &c, 15);
    hashattn_decode_args_t da;
    ht_decode_case_args(&c, &da);
    uint32_t dflags[] = {1u << 3, 1u << 7, 1u << 31, HASHATTN_DECODE_DENSE | (1u << 2)}; /* 1u << 1: TP_SHARDED (1.1) */
    for (size_t i = 0; i < 4; i++) {
        da.flags = dflags[i];
        ck_assert_int_eq(api->decode(c.ctx, &da), HASHATTN_STATUS_INVALID_ARGUMENT);
        expect_msg(api->last_error(c.ctx), "flags");
    }
    hashattn_cache_write_args_t wa = HASHATTN_CACHE_WRITE_ARGS_INIT;
    wa.flags = 1u << 1;
    ck_assert_int_eq(api->cache_write(c.ctx, &wa), HASHATTN_STATUS_INVALID_ARGUMENT);
    hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
    pa.flags = 1u;
    ck_assert_int_eq(api->prefill(c.ctx, &pa), HASHATTN_STATUS_INVALID_ARGUMENT);
    hashattn_hash_args_t ha = HASHATTN_HASH_ARGS_INIT;
    ha.flags = 1u;
    ck_assert_int_eq(api->hash(c.ctx, &ha), HASHATTN_STATUS_INVALID_ARGUMENT);
    hashattn_weights_bind_args_t ba = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    ba.flags = 4u;
    ck_assert_int_eq(api->weights_bind(c.ctx, &ba), HASHATTN_STATUS_INVALID_ARGUMENT);
    hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    la.flags = 1u;
    la.path = "/nonexistent";
    ck_assert_int_eq(api->weights_load(c.ctx, &la), HASHATTN_STATUS_INVALID_ARGUMENT);
    expect_msg(api->last_error(c.ctx), "flags");
    ht_decode_case_free(&c);
}
END_TEST

/* ---- NULL pointers ---- */

START_TEST(abi_null_pointers)
{
    ht_case_begin("abi(null_pointers)", 0);
    const hashattn_api_t *api = api_or_fail();
    const hashattn_status_t IA = HASHATTN_STATUS_INVALID_ARGUMENT;
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    hashattn_context_t *out = NULL;
    ck_assert_int_eq(api->context_create(NULL, &out), IA);
    ck_assert_str_ne(api->last_error(NULL), "");
    ck_assert_int_eq(api->context_create(&cfg, NULL), IA);
    ck_assert_str_ne(api->last_error(NULL), "");

    hashattn_decode_args_t da = HASHATTN_DECODE_ARGS_INIT;
    hashattn_cache_write_args_t wa = HASHATTN_CACHE_WRITE_ARGS_INIT;
    hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
    hashattn_hash_args_t ha = HASHATTN_HASH_ARGS_INIT;
    hashattn_weights_bind_args_t ba = HASHATTN_WEIGHTS_BIND_ARGS_INIT;
    hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    hashattn_workspace_args_t wsa = HASHATTN_WORKSPACE_ARGS_INIT;
    size_t bytes;
    /* NULL context */
    ck_assert_int_eq(api->decode(NULL, &da), IA);
    ck_assert_int_eq(api->cache_write(NULL, &wa), IA);
    ck_assert_int_eq(api->prefill(NULL, &pa), IA);
    ck_assert_int_eq(api->hash(NULL, &ha), IA);
    ck_assert_int_eq(api->weights_bind(NULL, &ba), IA);
    ck_assert_int_eq(api->weights_load(NULL, &la), IA);
    ck_assert_int_eq(api->workspace_size(NULL, &wsa, &bytes), IA);
    ck_assert_ptr_nonnull(api->last_error(NULL));

    /* NULL args on a live context */
    hashattn_context_t *ctx = small_ctx(api, 1);
    ck_assert_int_eq(api->decode(ctx, NULL), IA);
    ck_assert_str_ne(api->last_error(ctx), "");
    ck_assert_int_eq(api->cache_write(ctx, NULL), IA);
    ck_assert_str_ne(api->last_error(ctx), "");
    ck_assert_int_eq(api->prefill(ctx, NULL), IA);
    ck_assert_int_eq(api->hash(ctx, NULL), IA);
    ck_assert_int_eq(api->weights_bind(ctx, NULL), IA);
    ck_assert_int_eq(api->weights_load(ctx, NULL), IA);
    ck_assert_int_eq(api->workspace_size(ctx, NULL, &bytes), IA);
    wsa.op = HASHATTN_OP_DECODE;
    wsa.max_num_seqs = 1;
    wsa.max_blocks_per_seq = 1;
    ck_assert_int_eq(api->workspace_size(ctx, &wsa, NULL), IA);
    /* NULL tensors in otherwise empty args */
    ck_assert_int_eq(api->decode(ctx, &da), IA);
    ck_assert_str_ne(api->last_error(ctx), "");
    ck_assert_int_eq(api->cache_write(ctx, &wa), IA);
    ck_assert_int_eq(api->prefill(ctx, &pa), IA);
    ck_assert_int_eq(api->hash(ctx, &ha), IA);
    ck_assert_int_eq(api->weights_bind(ctx, &ba), IA);
    ck_assert_str_ne(api->last_error(ctx), "");
    ck_assert_int_eq(api->weights_load(ctx, &la), IA); /* path NULL */
    expect_msg(api->last_error(ctx), "path");
    api->context_destroy(ctx);
}
END_TEST

START_TEST(abi_workspace_query)
{
    ht_case_begin("abi(workspace_query)", 0);
    const hashattn_api_t *api = api_or_fail();
    hashattn_context_t *ctx = small_ctx(api, 0);
    for (int op = HASHATTN_OP_CACHE_WRITE; op <= HASHATTN_OP_HASH; op++) {
        hashattn_workspace_args_t a = HASHATTN_WORKSPACE_ARGS_INIT;
        a.op = op;
        a.max_num_seqs = 17;
        a.max_num_tokens = 1000;
        a.max_blocks_per_seq = 64;
        size_t bytes = (size_t)-1;
        hashattn_status_t st = api->workspace_size(ctx, &a, &bytes);
        ck_assert_msg(st == HASHATTN_STATUS_OK, "op %d: %s: %s", op, api->status_string(st),
                      api->last_error(ctx));
        ck_assert_msg(bytes < ((size_t)1 << 34), "op %d: %zu bytes", op, bytes);
        printf("workspace(op=%d,seqs=17,tokens=1000,blocks=64) = %zu bytes\n", op, bytes);
    }
    api->context_destroy(ctx);
}
END_TEST

/* ---- calls with nothing to do (0 sequences, 0 tokens) succeed ---- */

START_TEST(abi_empty_calls)
{
    ht_case_begin("abi(empty_calls)", 0);
    const hashattn_api_t *api = api_or_fail();
    ht_decode_case_t c;
    small_case(api, &c, 16);
    uint64_t ck = ht_checksum(c.key_cache) ^ ht_checksum(c.value_cache) ^ ht_checksum(c.sig_cache);
    ht_tensor_t *q = ht_tensor_new(HT_BF16, 3, HT_IDX(0, 4, 64), 0, NULL);
    ht_tensor_t *o = ht_tensor_new(HT_BF16, 3, HT_IDX(0, 4, 64), 0, NULL);
    ht_tensor_t *bt = ht_tensor_new(HT_I32, 2, HT_IDX(0, c.max_blocks), 0, NULL);
    ht_tensor_t *sl = ht_tensor_new(HT_I32, 1, HT_IDX(0), 0, NULL);
    ht_tensor_t *si = ht_tensor_new(HT_I32, 3, HT_IDX(0, 2, 8), 0, NULL);
    ht_tensor_t *sc = ht_tensor_new(HT_I32, 2, HT_IDX(0, 2), 0, NULL);
    ht_tensor_t *k = ht_tensor_new(HT_BF16, 3, HT_IDX(0, 2, 64), 0, NULL);
    ht_tensor_t *sm = ht_tensor_new(HT_I64, 1, HT_IDX(0), 0, NULL);
    ht_tensor_t *hs = ht_tensor_new(HT_U32, 2, HT_IDX(0, 4), 0, NULL);
    ht_tensor_t *qsl = ht_tensor_new(HT_I32, 1, HT_IDX(2), 0, NULL);
    ht_tensor_t *bt1 = ht_tensor_new(HT_I32, 2, HT_IDX(1, 1), 0, NULL);
    ht_tensor_t *sl1 = ht_tensor_new(HT_I32, 1, HT_IDX(1), 0, NULL);
    HT_SET(qsl, 0, 0);
    HT_SET(qsl, 0, 1);
    HT_SET(bt1, 0, 0, 0);
    HT_SET(sl1, 0, 0);

    /* workspaces sized for exactly these (empty) calls */
    ht_workspace_t wsd, wsw, wsh, wsp;
    ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_DECODE, 0, 0, c.max_blocks, &wsd), HASHATTN_STATUS_OK);
    ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_CACHE_WRITE, 0, 0, 0, &wsw), HASHATTN_STATUS_OK);
    ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_HASH, 0, 0, 0, &wsh), HASHATTN_STATUS_OK);
    ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_PREFILL, 1, 0, 1, &wsp), HASHATTN_STATUS_OK);
    printf("  workspace bytes for empty calls: decode %zu, cache_write %zu, hash %zu, prefill %zu\n", wsd.size,
           wsw.size, wsh.size, wsp.size);

    hashattn_decode_args_t da;
    ht_decode_case_args(&c, &da);
    da.workspace = wsd.ptr;
    da.workspace_size = wsd.size;
    da.query = &q->t;
    da.output = &o->t;
    da.block_tables = &bt->t;
    da.seq_lens = &sl->t;
    da.selected_indices = &si->t;
    da.selected_counts = &sc->t;
    hashattn_status_t st = api->decode(c.ctx, &da);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "decode of 0 sequences: %s: %s", api->status_string(st),
                  api->last_error(c.ctx));

    hashattn_cache_write_args_t wa = HASHATTN_CACHE_WRITE_ARGS_INIT;
    wa.key = &k->t;
    wa.value = &k->t;
    wa.key_cache = &c.key_cache->t;
    wa.value_cache = &c.value_cache->t;
    wa.signature_cache = &c.sig_cache->t;
    wa.slot_mapping = &sm->t;
    wa.workspace = wsw.ptr;
    wa.workspace_size = wsw.size;
    st = api->cache_write(c.ctx, &wa);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "cache_write of 0 tokens: %s: %s", api->status_string(st),
                  api->last_error(c.ctx));

    hashattn_hash_args_t ha = HASHATTN_HASH_ARGS_INIT;
    ha.side = HASHATTN_HASH_QUERY;
    ha.input = &q->t;
    ha.signatures = &hs->t;
    ha.workspace = wsh.ptr;
    ha.workspace_size = wsh.size;
    st = api->hash(c.ctx, &ha);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "hash of 0 tokens: %s: %s", api->status_string(st),
                  api->last_error(c.ctx));

    hashattn_prefill_args_t pa = HASHATTN_PREFILL_ARGS_INIT;
    pa.query = &q->t;
    pa.key_cache = &c.key_cache->t;
    pa.value_cache = &c.value_cache->t;
    pa.block_tables = &bt1->t;
    pa.seq_lens = &sl1->t;
    pa.query_start_loc = &qsl->t;
    pa.output = &o->t;
    pa.workspace = wsp.ptr;
    pa.workspace_size = wsp.size;
    st = api->prefill(c.ctx, &pa);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "prefill of 0 tokens: %s: %s", api->status_string(st),
                  api->last_error(c.ctx));
    ck_assert_msg((ht_checksum(c.key_cache) ^ ht_checksum(c.value_cache) ^ ht_checksum(c.sig_cache)) == ck,
                  "empty calls changed the caches");
    ht_tensor_t *all[] = {q, o, bt, sl, si, sc, k, sm, hs, qsl, bt1, sl1};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        ht_tensor_free(all[i]);
    ht_workspace_free(&wsd);
    ht_workspace_free(&wsw);
    ht_workspace_free(&wsh);
    ht_workspace_free(&wsp);
    ht_decode_case_free(&c);
}
END_TEST

/* ---- last_error(NULL) belongs to the calling thread ---- */

#include <pthread.h>

static void *bad_create_thread(void *p)
{
    const hashattn_api_t *api = p;
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 64;
    cfg.hash_bits = 16;
    hashattn_context_t *out = NULL;
    hashattn_status_t st = api->context_create(&cfg, &out);
    return (void *)(intptr_t)(st == HASHATTN_STATUS_INVALID_ARGUMENT && strstr(api->last_error(NULL), "hash_bits"));
}

START_TEST(abi_thread_last_error)
{
    ht_case_begin("abi(thread_last_error)", 0);
    const hashattn_api_t *api = api_or_fail();
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 1;
    cfg.num_q_heads = 4;
    cfg.num_kv_heads = 2;
    cfg.head_dim = 0;
    hashattn_context_t *out = NULL;
    ck_assert_int_eq(api->context_create(&cfg, &out), HASHATTN_STATUS_INVALID_ARGUMENT);
    expect_msg(api->last_error(NULL), "head_dim");
    pthread_t th;
    void *ok = NULL;
    ck_assert_int_eq(pthread_create(&th, NULL, bad_create_thread, (void *)api), 0);
    pthread_join(th, &ok);
    ck_assert_msg(ok != NULL, "the other thread did not see its own hash_bits message");
    expect_msg(api->last_error(NULL), "head_dim");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("abi");
    TCase *tc = tcase_create("abi");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, abi_load);
    tcase_add_test(tc, abi_other_majors);
    tcase_add_test(tc, abi_exports);
    tcase_add_test(tc, abi_status_strings);
    tcase_add_test(tc, abi_context_lifecycle);
    tcase_add_test(tc, abi_short_struct_size);
    tcase_add_test(tc, abi_long_struct);
    tcase_add_test(tc, abi_struct_padding);
    tcase_add_loop_test(tc, abi_truncated_config, 0, 3);
    tcase_add_test(tc, abi_minor_1_1_args);
    tcase_add_test(tc, abi_unknown_flags);
    tcase_add_test(tc, abi_null_pointers);
    tcase_add_test(tc, abi_workspace_query);
    tcase_add_test(tc, abi_empty_calls);
    tcase_add_test(tc, abi_thread_last_error);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return ht_run_suite(suite(), "test_abi"); }
