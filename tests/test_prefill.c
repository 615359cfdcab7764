/*
 * test_prefill.c - chunked prefill (a prefix already cached + a new chunk,
 * both written with cache_write) against a naive causal attention in double;
 * NHD vs HND bit for bit; every row against a dense decode bit for bit; every
 * case run twice for determinism.
 */
#include <check.h>
#include <stdio.h>
#include <string.h>

#include "ha_test.h"

#define F32 {kDLFloat, 32, 1}
#define F16 {kDLFloat, 16, 1}
#define BF16 {kDLBfloat, 16, 1}

static const hashattn_api_t *api_or_fail(void)
{
    const hashattn_api_t *api = ht_api();
    ck_assert_msg(api != NULL, "%s", ht_load_error());
    return api;
}

typedef struct pcase {
    int fast;
    ht_prefill_desc_t d;
} pcase_t;

static const pcase_t k_grid[] = {
    {1, {.dtype = BF16, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 3, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_NHD, .max_prefix = 40, .max_chunk = 20}},
    {1, {.dtype = F32, .hq = 4, .hkv = 4, .d = 128, .block = 1, .batch = 12, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_HND, .max_prefix = 10, .max_chunk = 7, .tensor_flags = HT_PAD}},
    {0, {.dtype = F16, .hq = 6, .hkv = 2, .d = 64, .block = 32, .batch = 17, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_NHD, .max_prefix = 50, .max_chunk = 9,
         .tensor_flags = HT_PAD | HT_OFFSET | HT_SWAP}},
    {1, {.dtype = BF16, .hq = 32, .hkv = 8, .d = 128, .block = 16, .batch = 1, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_NHD, .prefix_lens = (const int[]){0}, .chunk_lens = (const int[]){97}}},
    {0, {.dtype = F32, .hq = 8, .hkv = 2, .d = 64, .block = 16, .batch = 4, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_HND, .prefix_lens = (const int[]){16, 0, 31, 5},
         .chunk_lens = (const int[]){16, 0, 1, 33}}},
    {0, {.dtype = F32, .hq = 9, .hkv = 3, .d = 64, .block = 7, .batch = 5, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_HND, .max_prefix = 30, .max_chunk = 30, .softmax_scale = 0.2f}},
    {0, {.dtype = BF16, .hq = 8, .hkv = 1, .d = 64, .block = 16, .batch = 12, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_HND, .max_prefix = 100, .max_chunk = 1, .tensor_flags = HT_PAD}},
    {0, {.dtype = F16, .hq = 16, .hkv = 4, .d = 128, .block = 16, .batch = 4, .m = 16,
         .kv_layout = HASHATTN_KV_LAYOUT_HND, .max_prefix = 64, .max_chunk = 48, .tensor_flags = HT_OFFSET}},
};
#define NGRID ((int)(sizeof k_grid / sizeof k_grid[0]))

START_TEST(prefill_grid)
{
    if (!k_grid[_i].fast && !ht_full_level())
        return;
    ht_prefill_desc_t d = k_grid[_i].d;
    d.seed = ht_seed(0x9f00 + (uint64_t)_i);
    char name[512];
    ht_prefill_case_name(&d, name, sizeof name);
    if (!ht_case_begin(name, d.seed))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_prefill_case_t c;
    char err[512], msg[512];
    ck_assert_msg(ht_prefill_case_build(api, &d, &c, err, sizeof err) == 0, "%s: %s", name, err);
    printf("  seqs (prefix+chunk):");
    for (int s = 0; s < d.batch; s++)
        printf(" %d+%d", c.prefix[s], c.chunk[s]);
    printf("\n");
    hashattn_status_t st = ht_prefill_case_run(&c);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: prefill: %s: %s", name, api->status_string(st),
                  api->last_error(c.ctx));
    ck_assert_msg(ht_prefill_case_check(&c, msg, sizeof msg) == 0, "%s: %s", name, msg);
    ht_tensor_t *o1 = ht_tensor_clone(c.output);
    ck_assert_int_eq(ht_prefill_case_run(&c), HASHATTN_STATUS_OK);
    ck_assert_msg(ht_tensor_cmp_bits(o1, c.output, NULL) == 0, "%s: second run differs", name);
    ht_tensor_free(o1);
    ht_prefill_case_free(&c);
}
END_TEST

/* ht_case_begin for a case of one of the checks below: its name is the
 * check's prefix and the desc's canonical name (written to name). */
static int begin_check(const char *prefix, const ht_prefill_desc_t *d, char *name, size_t len)
{
    char full[600];
    ht_prefill_case_name(d, name, len);
    snprintf(full, sizeof full, "%s:%s", prefix, name);
    return ht_case_begin(full, d->seed);
}

START_TEST(prefill_nhd_vs_hnd)
{
    ht_prefill_desc_t d = k_grid[_i == 0 ? 0 : 4].d;
    d.seed = ht_seed(0x9a00 + (uint64_t)_i);
    d.kv_layout = HASHATTN_KV_LAYOUT_NHD;
    char name[512];
    if (!begin_check("nhd_vs_hnd", &d, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_prefill_case_t a, b;
    char err[512], msg[512];
    ck_assert_msg(ht_prefill_case_build(api, &d, &a, err, sizeof err) == 0, "%s", err);
    d.kv_layout = HASHATTN_KV_LAYOUT_HND;
    ck_assert_msg(ht_prefill_case_build(api, &d, &b, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ht_prefill_case_run(&a), HASHATTN_STATUS_OK);
    ck_assert_int_eq(ht_prefill_case_run(&b), HASHATTN_STATUS_OK);
    ck_assert_msg(ht_prefill_case_check(&a, msg, sizeof msg) == 0, "NHD: %s", msg);
    ck_assert_msg(ht_prefill_case_check(&b, msg, sizeof msg) == 0, "HND: %s", msg);
    int64_t first = -1;
    ck_assert_msg(ht_tensor_cmp_bits(a.output, b.output, &first) == 0, "%s: NHD and HND differ (flat %lld)",
                  name, (long long)first);
    ht_prefill_case_free(&a);
    ht_prefill_case_free(&b);
}
END_TEST

/* Every prefill row against a dense decode of the same query over the same
 * cache, cut at the row's position (one decode "sequence" per row, its
 * sequence's block table, seq_len = position + 1): the CPU backend's prefill
 * and decode share attention.c's order of operations, so the outputs must
 * agree bit for bit, however the prefill groups its rows (kernels/cpu/prefill.c
 * serves them in tiles). Cases: G = 4 bf16; G = 3, f32, blocks of 7, a given
 * scale; one sequence of 97 rows at G = 4 (tiles that span rows); G = 1, f32,
 * blocks of 1 (decode attends each head alone, four positions side by side). */
START_TEST(prefill_rows_as_decode)
{
    static const int cases[] = {0, 5, 3, 1};
    ht_prefill_desc_t d = k_grid[cases[_i]].d;
    d.seed = ht_seed(0x9b00 + (uint64_t)_i);
    char name[512];
    if (!begin_check("rows_as_decode", &d, name, sizeof name))
        return;
    const hashattn_api_t *api = api_or_fail();
    ht_prefill_case_t c;
    char err[512];
    ck_assert_msg(ht_prefill_case_build(api, &d, &c, err, sizeof err) == 0, "%s", err);
    ck_assert_int_eq(ht_prefill_case_run(&c), HASHATTN_STATUS_OK);

    const int T = c.num_tokens;
    const DLDataType i32 = {kDLInt, 32, 1};
    ht_tensor_t *bt = ht_tensor_new(i32, 2, (const int64_t[]){T, c.max_blocks}, 0, NULL);
    ht_tensor_t *lens = ht_tensor_new(i32, 1, (const int64_t[]){T}, 0, NULL);
    ht_tensor_t *out = ht_tensor_new(d.dtype, 3, (const int64_t[]){T, d.hq, d.d}, 0, NULL);
    ck_assert(bt && lens && out);
    for (int s = 0, t = 0; s < d.batch; s++)
        for (int i = 0; i < c.chunk[s]; i++, t++) {
            for (int b = 0; b < c.max_blocks; b++)
                HT_SET(bt, HT_GET(c.block_tables, s, b), t, b);
            HT_SET(lens, c.lens[s] - c.chunk[s] + i + 1, t);
        }
    ht_workspace_t ws;
    ck_assert_int_eq(ht_workspace_alloc(api, c.ctx, HASHATTN_OP_DECODE, T, T, c.max_blocks, &ws),
                     HASHATTN_STATUS_OK);
    hashattn_decode_args_t a = HASHATTN_DECODE_ARGS_INIT;
    a.flags = HASHATTN_DECODE_DENSE;
    a.query = &c.query->t;
    a.key_cache = &c.key_cache->t;
    a.value_cache = &c.value_cache->t;
    a.block_tables = &bt->t;
    a.seq_lens = &lens->t;
    a.output = &out->t;
    a.workspace = ws.ptr;
    a.workspace_size = ws.size;
    hashattn_status_t st = api->decode(c.ctx, &a);
    ck_assert_msg(st == HASHATTN_STATUS_OK, "%s: decode: %s", name, api->last_error(c.ctx));
    int64_t first = -1;
    const int64_t ndiff = ht_tensor_cmp_bits(c.output, out, &first);
    ck_assert_msg(ndiff == 0, "%s: %lld prefill outputs differ from the row's dense decode (first flat %lld)",
                  name, (long long)ndiff, (long long)first);
    ht_workspace_free(&ws);
    ht_tensor_free(bt);
    ht_tensor_free(lens);
    ht_tensor_free(out);
    ht_prefill_case_free(&c);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("prefill");
    TCase *tc = tcase_create("prefill");
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, prefill_grid, 0, NGRID);
    tcase_add_loop_test(tc, prefill_nhd_vs_hnd, 0, 2);
    tcase_add_loop_test(tc, prefill_rows_as_decode, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return ht_run_suite(suite(), "test_prefill"); }
