/*
 * test_tp_cpu.c - tensor parallelism without a GPU (runs in CI): the head
 * split, the weight slicing and every argument check of the 1.1 entries that
 * does not need NCCL.
 *
 * A CPU context may have tp_size > 1: it computes its rank's heads, and its
 * decode leaves the output sharded (HASHATTN_DECODE_TP_SHARDED; the gathered
 * form needs a CUDA context and a communicator). So the slicing is tested
 * here, bit for bit: for every selection x signature layout and tp in {2, 4},
 * each rank's context gets the whole model's weights and strided views of the
 * whole model's caches (its heads only, no copies) and must give the same
 * outputs and selections as one context over all heads, for those heads.
 *
 * The missing-NCCL case points HASHATTN_NCCL_LIBRARY at a file that does not
 * exist before anything loads NCCL (each Check test runs in its own process
 * unless CK_FORK=no; the case also works as the first one without a fork).
 */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ha_test.h"

#define OKS HASHATTN_STATUS_OK
#define BADS HASHATTN_STATUS_INVALID_ARGUMENT

static const hashattn_api_t *api_or_fail(void)
{
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    ck_assert_uint_ge(api->abi_minor, 1);
    ck_assert_uint_ge(api->struct_size, offsetof(hashattn_api_t, all_reduce) + sizeof(void *));
    return api;
}

static hashattn_context_config_t base_config(int hq, int hkv)
{
    hashattn_context_config_t cfg = HASHATTN_CONTEXT_CONFIG_INIT;
    cfg.num_layers = 2;
    cfg.num_q_heads = hq;
    cfg.num_kv_heads = hkv;
    cfg.head_dim = 16;
    cfg.block_size = 4;
    cfg.dtype = HT_F32;
    cfg.mlp_width = 16;
    return cfg;
}

#define EXPECT(call, want, what)                                                                            \
    do {                                                                                                    \
        hashattn_status_t st_ = (call);                                                                     \
        ck_assert_msg(st_ == (want), "%s: got %s, expected %s: %s", what, api->status_string(st_),         \
                      api->status_string(want), api->last_error(NULL));                                    \
    } while (0)

/* ---- context config ---- */

START_TEST(tp_config_refusals)
{
    const hashattn_api_t *api = api_or_fail();
    struct {
        int rank, size;
        const char *needle;
    } bad[] = {{2, 2, "tp_rank = 2"}, {-1, 2, "tp_rank = -1"}, {0, 3, "tp_size = 3"}, {0, -1, "tp_size = -1"},
               {1, 0, "tp_rank = 1"}, {0, 8, "tp_size = 8"}, {0, 2000, "tp_size = 2000"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ht_case_begin("tp_config_refusals", 0);
        hashattn_context_config_t cfg = base_config(8, 4);
        cfg.tp_rank = bad[i].rank;
        cfg.tp_size = bad[i].size;
        hashattn_context_t *ctx = (hashattn_context_t *)1;
        hashattn_status_t st = api->context_create(&cfg, &ctx);
        ck_assert_msg(st == BADS && ctx == NULL, "rank %d size %d: %s", bad[i].rank, bad[i].size,
                      api->status_string(st));
        ck_assert_msg(strstr(api->last_error(NULL), bad[i].needle), "message '%s' lacks '%s'",
                      api->last_error(NULL), bad[i].needle);
    }
    /* accepted: 0 and 1 mean no split; every rank of every divisor */
    int sizes[] = {0, 1, 2, 4};
    for (int i = 0; i < 4; i++) {
        int n = sizes[i] > 1 ? sizes[i] : 1;
        for (int r = 0; r < n; r++) {
            hashattn_context_config_t cfg = base_config(8, 4);
            cfg.tp_rank = r;
            cfg.tp_size = sizes[i];
            hashattn_context_t *ctx = NULL;
            EXPECT(api->context_create(&cfg, &ctx), OKS, "context_create");
            api->context_destroy(ctx);
        }
    }
    /* a 1.0-sized config (no tp fields) is still accepted */
    hashattn_context_config_t cfg = base_config(8, 4);
    cfg.struct_size = offsetof(hashattn_context_config_t, tp_rank);
    hashattn_context_t *ctx = NULL;
    EXPECT(api->context_create(&cfg, &ctx), OKS, "1.0-sized config");
    api->context_destroy(ctx);
}
END_TEST

/* ---- the split against the whole model ---- */

/* A view of heads [first, first + count) of dimension `dim` of a tensor. */
typedef struct view {
    DLTensor t;
    int64_t shape[HT_MAX_DIMS], strides[HT_MAX_DIMS];
} view_t;

static DLTensor *head_view(view_t *v, const ht_tensor_t *full, int dim, int64_t first, int64_t count)
{
    v->t = full->t;
    memcpy(v->shape, full->shape, sizeof v->shape);
    ht_tensor_strides(full, v->strides);
    v->shape[dim] = count;
    v->t.shape = v->shape;
    v->t.strides = v->strides;
    v->t.byte_offset += (uint64_t)(first * v->strides[dim] * (int64_t)ht_dtype_size(full->t.dtype));
    return &v->t;
}

typedef struct variant {
    int selection, sig_layout, kv_layout;
} variant_t;

static const variant_t variants[] = {
    {HASHATTN_SELECTION_PER_HEAD, HASHATTN_SIGNATURE_PER_QUERY_HEAD, HASHATTN_KV_LAYOUT_NHD},
    {HASHATTN_SELECTION_GROUP, HASHATTN_SIGNATURE_PER_KV_HEAD, HASHATTN_KV_LAYOUT_HND},
    {HASHATTN_SELECTION_GROUP, HASHATTN_SIGNATURE_PER_QUERY_HEAD, HASHATTN_KV_LAYOUT_NHD},
    {HASHATTN_SELECTION_PER_HEAD, HASHATTN_SIGNATURE_PER_KV_HEAD, HASHATTN_KV_LAYOUT_HND},
};

static void build_full(const hashattn_api_t *api, const variant_t *v, int fill, ht_decode_case_t *c)
{
    ht_decode_desc_t d;
    memset(&d, 0, sizeof d);
    d.dtype = HT_F32;
    d.hq = 8;
    d.hkv = 4;
    d.d = 16;
    d.block = 4;
    d.batch = 5;
    d.m = 16;
    d.kv_layout = v->kv_layout;
    d.selection = v->selection;
    d.sig_layout = v->sig_layout;
    d.sink = 3;
    d.recent = 4;
    d.heavy_count = 9;
    d.max_seq = 70;
    d.fill = fill;
    d.layers = 2;
    d.layer = 1;
    d.seed = ht_seed(0x7e57 + (uint64_t)fill);
    char err[512];
    ck_assert_msg(ht_decode_case_build(api, &d, c, err, sizeof err) == 0, "%s", err);
    c->desc.layers = 2;
}

static hashattn_context_t *rank_ctx(const hashattn_api_t *api, const ht_decode_case_t *c, int rank, int size)
{
    hashattn_context_config_t cfg = ht_decode_case_config(c);
    cfg.tp_rank = rank;
    cfg.tp_size = size;
    hashattn_context_t *ctx = NULL;
    EXPECT(api->context_create(&cfg, &ctx), OKS, "TP context_create");
    return ctx;
}

/* Decode rank `rank` of `size` and compare with the whole model's run. */
static void check_rank(const hashattn_api_t *api, ht_decode_case_t *c, hashattn_context_t *ctx, int rank, int size,
                       const ht_tensor_t *full_out, const ht_tensor_t *full_idx, const ht_tensor_t *full_cnt)
{
    const int B = c->desc.batch, D = c->desc.d;
    const int hq = c->desc.hq / size, hkv = c->desc.hkv / size, hsig = c->hsig / size, hsel = c->hsel / size;
    const int hnd = c->desc.kv_layout == HASHATTN_KV_LAYOUT_HND;
    view_t vq, vk, vv, vs;
    hashattn_decode_args_t a;
    ht_decode_case_args(c, &a);
    a.query = head_view(&vq, c->query, 1, (int64_t)rank * hq, hq);
    a.key_cache = head_view(&vk, c->key_cache, hnd ? 1 : 2, (int64_t)rank * hkv, hkv);
    a.value_cache = head_view(&vv, c->value_cache, hnd ? 1 : 2, (int64_t)rank * hkv, hkv);
    a.signature_cache = head_view(&vs, c->sig_cache, 1, (int64_t)rank * hsig, hsig);
    a.budget = &c->budget;
    ht_tensor_t *out = ht_tensor_new(HT_F32, 3, HT_IDX(B, hq, D), 0, NULL);
    ht_tensor_t *idx = ht_tensor_new(HT_I32, 3, HT_IDX(B, hsel, c->sel_cap), 0, NULL);
    ht_tensor_t *cnt = ht_tensor_new(HT_I32, 2, HT_IDX(B, hsel), 0, NULL);
    a.output = &out->t;
    a.selected_indices = &idx->t;
    a.selected_counts = &cnt->t;
    ht_workspace_t ws;
    EXPECT(ht_workspace_alloc(api, ctx, HASHATTN_OP_DECODE, B, 0, c->max_blocks, &ws), OKS, "workspace");
    a.workspace = ws.ptr;
    a.workspace_size = ws.size;
    a.flags = HASHATTN_DECODE_TP_SHARDED;
    hashattn_status_t st = api->decode(ctx, &a);
    ck_assert_msg(st == OKS, "rank %d/%d decode: %s: %s", rank, size, api->status_string(st),
                  api->last_error(ctx));
    for (int s = 0; s < B; s++) {
        for (int h = 0; h < hq; h++)
            for (int e = 0; e < D; e++) {
                const float *g = ht_ptr(out, HT_IDX(s, h, e)), *w = ht_ptr(full_out, HT_IDX(s, rank * hq + h, e));
                ck_assert_msg(memcmp(g, w, 4) == 0, "rank %d/%d output[%d][%d][%d] = %.9g, whole model %.9g", rank,
                              size, s, h, e, (double)*g, (double)*w);
            }
        for (int h = 0; h < hsel; h++) {
            const int n = (int)HT_GET(cnt, s, h);
            ck_assert_msg(n == (int)HT_GET(full_cnt, s, rank * hsel + h), "rank %d/%d count[%d][%d] = %d vs %d",
                          rank, size, s, h, n, (int)HT_GET(full_cnt, s, rank * hsel + h));
            for (int j = 0; j < n && j < c->sel_cap; j++)
                ck_assert_msg(HT_GET(idx, s, h, j) == HT_GET(full_idx, s, rank * hsel + h, j),
                              "rank %d/%d selected[%d][%d][%d] differs", rank, size, s, h, j);
        }
    }
    ht_workspace_free(&ws);
    ht_tensor_free(out);
    ht_tensor_free(idx);
    ht_tensor_free(cnt);
}

START_TEST(tp_sharded_equals_whole)
{
    const hashattn_api_t *api = api_or_fail();
    const variant_t *v = &variants[_i % 4];
    const int fill = _i < 4 ? HT_FILL_WRITE : HT_FILL_TIES;
    ht_decode_case_t c;
    build_full(api, v, fill, &c);
    char name[400];
    ht_decode_case_name(&c.desc, name, sizeof name);
    char tname[480];
    snprintf(tname, sizeof tname, "tp_sharded(%s)", name);
    ht_case_begin(tname, c.desc.seed);
    hashattn_status_t st = ht_decode_case_run(&c, 0, NULL);
    ck_assert_msg(st == OKS, "whole decode: %s: %s", api->status_string(st), api->last_error(c.ctx));
    ht_decode_case_reference(&c, NULL, 0);
    char msg[512];
    ck_assert_msg(ht_decode_case_check(&c, msg, sizeof msg) == 0, "whole model vs reference: %s", msg);
    ht_tensor_t *full_out = ht_tensor_clone(c.output), *full_idx = ht_tensor_clone(c.sel_idx),
                *full_cnt = ht_tensor_clone(c.sel_cnt);
    for (int size = 2; size <= 4; size *= 2) {
        for (int r = 0; r < size; r++) {
            hashattn_context_t *ctx = rank_ctx(api, &c, r, size);
            EXPECT(ht_model_bind(api, ctx, c.model, 0, NULL), OKS, "whole-model weights_bind on a rank");
            check_rank(api, &c, ctx, r, size, full_out, full_idx, full_cnt);
            api->context_destroy(ctx);
        }
    }
    /* the same from the whole model's file, on the last rank of 4 */
    char path[] = "/tmp/hashattn-tp-XXXXXX";
    int fd = mkstemp(path);
    ck_assert(fd >= 0);
    close(fd);
    ck_assert_int_eq(ht_st_write(path, c.model, HT_ST_OK), 0);
    hashattn_context_t *ctx = rank_ctx(api, &c, 3, 4);
    hashattn_weights_load_args_t la = HASHATTN_WEIGHTS_LOAD_ARGS_INIT;
    la.path = path;
    hashattn_status_t lst = api->weights_load(ctx, &la);
    ck_assert_msg(lst == OKS, "weights_load: %s", api->last_error(ctx));
    check_rank(api, &c, ctx, 3, 4, full_out, full_idx, full_cnt);
    api->context_destroy(ctx);
    unlink(path);
    ht_tensor_free(full_out);
    ht_tensor_free(full_idx);
    ht_tensor_free(full_cnt);
    ht_decode_case_free(&c);
}
END_TEST

/* hash on a rank: its heads' signatures, bit for bit. */
START_TEST(tp_hash)
{
    const hashattn_api_t *api = api_or_fail();
    const variant_t *v = &variants[_i];
    ht_decode_case_t c;
    build_full(api, v, HT_FILL_WRITE, &c);
    ht_case_begin("tp_hash", c.desc.seed);
    const int n = 7, D = c.desc.d, hq = c.desc.hq, hkv = c.desc.hkv, hsig = c.hsig;
    ht_rng_t r;
    ht_rng_seed(&r, 99);
    ht_tensor_t *qin = ht_tensor_new(HT_F32, 3, HT_IDX(n, hq, D), 0, NULL);
    ht_tensor_t *kin = ht_tensor_new(HT_F32, 3, HT_IDX(n, hkv, D), 0, NULL);
    ht_tensor_fill_uniform(qin, &r, -1, 1);
    ht_tensor_fill_uniform(kin, &r, -1, 1);
    ht_tensor_t *qsig = ht_tensor_new(HT_U32, 2, HT_IDX(n, hq), 0, NULL);
    ht_tensor_t *ksig = ht_tensor_new(HT_U32, 2, HT_IDX(n, hsig), 0, NULL);
    ht_workspace_t ws;
    EXPECT(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_HASH, 0, n, 0, &ws), OKS, "workspace");
    hashattn_hash_args_t h = HASHATTN_HASH_ARGS_INIT;
    h.workspace = ws.ptr;
    h.workspace_size = ws.size;
    h.layer = 1;
    h.input = &qin->t;
    h.signatures = &qsig->t;
    EXPECT(api->hash(c.ctx, &h), OKS, "whole hash query");
    h.side = HASHATTN_HASH_KEY;
    h.input = &kin->t;
    h.signatures = &ksig->t;
    EXPECT(api->hash(c.ctx, &h), OKS, "whole hash key");
    const int size = 2;
    for (int rank = 0; rank < size; rank++) {
        hashattn_context_t *ctx = rank_ctx(api, &c, rank, size);
        EXPECT(ht_model_bind(api, ctx, c.model, 0, NULL), OKS, "weights_bind");
        view_t vi;
        ht_tensor_t *qs = ht_tensor_new(HT_U32, 2, HT_IDX(n, hq / size), 0, NULL);
        ht_tensor_t *ks = ht_tensor_new(HT_U32, 2, HT_IDX(n, hsig / size), 0, NULL);
        hashattn_hash_args_t a = HASHATTN_HASH_ARGS_INIT;
        a.workspace = ws.ptr; /* a rank needs no more than the whole model */
        a.workspace_size = ws.size;
        a.layer = 1;
        a.input = head_view(&vi, qin, 1, rank * hq / size, hq / size);
        a.signatures = &qs->t;
        EXPECT(api->hash(ctx, &a), OKS, "rank hash query");
        a.side = HASHATTN_HASH_KEY;
        a.input = head_view(&vi, kin, 1, rank * hkv / size, hkv / size);
        a.signatures = &ks->t;
        EXPECT(api->hash(ctx, &a), OKS, "rank hash key");
        for (int t = 0; t < n; t++) {
            for (int j = 0; j < hq / size; j++)
                ck_assert_uint_eq((uint32_t)HT_GET(qs, t, j), (uint32_t)HT_GET(qsig, t, rank * hq / size + j));
            for (int j = 0; j < hsig / size; j++)
                ck_assert_uint_eq((uint32_t)HT_GET(ks, t, j), (uint32_t)HT_GET(ksig, t, rank * hsig / size + j));
        }
        ht_tensor_free(qs);
        ht_tensor_free(ks);
        api->context_destroy(ctx);
    }
    ht_workspace_free(&ws);
    ht_tensor_free(qin);
    ht_tensor_free(kin);
    ht_tensor_free(qsig);
    ht_tensor_free(ksig);
    ht_decode_case_free(&c);
}
END_TEST

/* ---- refusals of the 1.1 entries that need no NCCL ---- */

START_TEST(tp_entry_refusals)
{
    const hashattn_api_t *api = api_or_fail();
    ht_case_begin("tp_entry_refusals", 0);
    hashattn_context_config_t cfg = base_config(8, 4);
    cfg.tp_rank = 1;
    cfg.tp_size = 2;
    hashattn_context_t *ctx = NULL;
    EXPECT(api->context_create(&cfg, &ctx), OKS, "context_create");
    hashattn_comm_id_t id;
    memset(&id, 0xab, sizeof id);

    EXPECT(api->comm_unique_id(NULL), BADS, "comm_unique_id(NULL)");
    EXPECT(api->comm_create(NULL, NULL), BADS, "comm_create(NULL ctx)");
    EXPECT(api->comm_create(ctx, NULL), BADS, "comm_create(NULL args)");
    hashattn_comm_create_args_t ca = HASHATTN_COMM_CREATE_ARGS_INIT;
    EXPECT(api->comm_create(ctx, &ca), BADS, "comm_create(unique_id NULL)");
    ck_assert(strstr(api->last_error(ctx), "unique_id"));
    ca.unique_id = &id;
    ca.timeout_ms = -5;
    EXPECT(api->comm_create(ctx, &ca), BADS, "comm_create(timeout -5)");
    ck_assert(strstr(api->last_error(ctx), "timeout_ms = -5"));
    ca.timeout_ms = 0;
    ca.flags = 4;
    EXPECT(api->comm_create(ctx, &ca), BADS, "comm_create(flags 4)");
    ca.flags = 0;
    ca.struct_size = 12;
    EXPECT(api->comm_create(ctx, &ca), BADS, "comm_create(struct_size 12)");
    ca.struct_size = sizeof ca;
    EXPECT(api->comm_create(ctx, &ca), HASHATTN_STATUS_UNSUPPORTED, "comm_create on a CPU context");
    ck_assert(strstr(api->last_error(ctx), "CPU"));

    hashattn_comm_bind_args_t ba = HASHATTN_COMM_BIND_ARGS_INIT;
    ba.nccl_comm = (void *)&id;
    EXPECT(api->comm_bind(ctx, &ba), HASHATTN_STATUS_UNSUPPORTED, "comm_bind on a CPU context");
    ba.flags = 1;
    EXPECT(api->comm_bind(ctx, &ba), BADS, "comm_bind(flags 1)");
    EXPECT(api->comm_abort(NULL), BADS, "comm_abort(NULL)");
    EXPECT(api->comm_abort(ctx), OKS, "comm_abort without a communicator");

    ht_tensor_t *t = ht_tensor_new(HT_F32, 2, HT_IDX(3, 5), 0, NULL);
    hashattn_all_reduce_args_t ra = HASHATTN_ALL_REDUCE_ARGS_INIT;
    EXPECT(api->all_reduce(ctx, &ra), BADS, "all_reduce(tensor NULL)");
    ra.tensor = &t->t;
    EXPECT(api->all_reduce(ctx, &ra), HASHATTN_STATUS_UNSUPPORTED, "all_reduce on a CPU context");
    ht_tensor_free(t);

    /* the gathered decode needs CUDA + a communicator: refused before anything is read */
    hashattn_decode_args_t da = HASHATTN_DECODE_ARGS_INIT;
    EXPECT(api->decode(ctx, &da), HASHATTN_STATUS_UNSUPPORTED, "gathered decode on a CPU TP context");
    ck_assert(strstr(api->last_error(ctx), "HASHATTN_DECODE_TP_SHARDED"));
    /* the flag is accepted on a context without a split (the whole output is the rank's) */
    da.flags = HASHATTN_DECODE_TP_SHARDED | 8u;
    hashattn_context_config_t c1 = base_config(8, 4);
    hashattn_context_t *plain = NULL;
    EXPECT(api->context_create(&c1, &plain), OKS, "context_create");
    EXPECT(api->decode(plain, &da), BADS, "unknown bit 8 with TP_SHARDED");
    ck_assert_msg(strstr(api->last_error(plain), "0x8"), "%s", api->last_error(plain));
    api->context_destroy(plain);

    /* the rank's share of weights is not what a TP context takes */
    ht_rng_t r;
    ht_rng_seed(&r, 5);
    ht_model_t *half = ht_model_random(2, 4, 2, 16, 16, 0, HT_F32, &r);
    hashattn_status_t st = ht_model_bind(api, ctx, half, 0, NULL);
    ck_assert_msg(st == BADS, "a rank-sized model bound: %s", api->status_string(st));
    ck_assert_msg(strstr(api->last_error(ctx), "whole model"), "%s", api->last_error(ctx));
    ht_model_free(half);
    api->context_destroy(ctx);
}
END_TEST

/* workspace_size of a CPU TP context is that of a context of the rank's heads. */
START_TEST(tp_workspace)
{
    const hashattn_api_t *api = api_or_fail();
    ht_case_begin("tp_workspace", 0);
    hashattn_context_config_t cfg = base_config(16, 8);
    cfg.tp_rank = 2;
    cfg.tp_size = 4;
    hashattn_context_t *tp = NULL, *small = NULL;
    EXPECT(api->context_create(&cfg, &tp), OKS, "tp");
    hashattn_context_config_t c2 = base_config(4, 2);
    EXPECT(api->context_create(&c2, &small), OKS, "small");
    for (int op = 0; op < 4; op++) {
        size_t a = 1, b = 2;
        hashattn_workspace_args_t w = HASHATTN_WORKSPACE_ARGS_INIT;
        w.op = op;
        w.max_num_seqs = 9;
        w.max_num_tokens = 300;
        w.max_blocks_per_seq = 40;
        EXPECT(api->workspace_size(tp, &w, &a), OKS, "tp workspace");
        EXPECT(api->workspace_size(small, &w, &b), OKS, "small workspace");
        ck_assert_uint_eq(a, b);
    }
    api->context_destroy(tp);
    api->context_destroy(small);
}
END_TEST

/* No libnccl: a status and a message, never a crash. */
START_TEST(tp_missing_nccl)
{
    ht_case_begin("tp_missing_nccl", 0);
    setenv("HASHATTN_NCCL_LIBRARY", "/nonexistent/libnccl-for-tests.so.2", 1);
    const hashattn_api_t *api = api_or_fail();
    hashattn_comm_id_t id;
    hashattn_status_t st = api->comm_unique_id(&id);
    /* COMM_ERROR where the library has NCCL support, UNSUPPORTED where it was built without it */
    ck_assert_msg(st == HASHATTN_STATUS_COMM_ERROR || st == HASHATTN_STATUS_UNSUPPORTED, "%s",
                  api->status_string(st));
    if (st == HASHATTN_STATUS_COMM_ERROR)
        ck_assert_msg(strstr(api->last_error(NULL), "libnccl-for-tests"), "%s", api->last_error(NULL));
    ck_assert_str_eq(api->status_string(HASHATTN_STATUS_COMM_ERROR), "COMM_ERROR");
    unsetenv("HASHATTN_NCCL_LIBRARY");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("multigpu_cpu");
    TCase *tc = tcase_create("tp");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, tp_missing_nccl); /* first: before anything loads NCCL */
    tcase_add_test(tc, tp_config_refusals);
    tcase_add_loop_test(tc, tp_sharded_equals_whole, 0, 8);
    tcase_add_loop_test(tc, tp_hash, 0, 4);
    tcase_add_test(tc, tp_entry_refusals);
    tcase_add_test(tc, tp_workspace);
    suite_add_tcase(s, tc);
    return ht_run_suite(s, "multigpu_cpu");
}
